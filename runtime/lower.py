"""Graph (or .net path/source) -> Network: a torch.nn.Module on the Triton kernels or on PyTorch's operators.

`compile` parses when given text, resolves the device and backend, seeds the
RNG, and builds one module per node of the checked graph, with PyTorch's
initialisation in node order: a layer at "i" is submodule "i", a residual or
parallel block's layers sit in a `Block` at "i" ("i.j", "i.b.j"), which also
performs the block's merge. Weights are always drawn on the CPU and then
moved, so a seed gives the same weights on every device and backend.

The network runs the graph its backend lowers it to in the current mode
(runtime/passes.py: on Triton, activations fused into conv2d/linear
epilogues, and in eval mode batchnorms folded into the layer before): each
node's module reads the values of the nodes it names as inputs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from netc.dsl.errors import DataError
from netc.dsl.ir import INPUT, Graph, Node
from netc.runtime import backends
from netc.runtime.backends import BACKENDS
from netc.runtime.layers import Block, build_layer
from netc.runtime.passes import Fusion, find_fusions, lower, training_fusions

__all__ = ["BACKENDS", "Fusion", "Network", "compile", "find_fusions", "resolve_target", "walk"]


def walk(nodes: Sequence[Node]) -> Iterator[Node]:
    """Every node of a graph, in topological order (a block's merge node after its body)."""
    yield from nodes


@dataclass(frozen=True)
class _Step:
    """One node as the network runs it: the module, the values it reads, its epilogue keywords."""

    name: str
    module: nn.Module
    inputs: tuple[str, ...]
    keywords: dict[str, Any]
    last_reads: tuple[str, ...]  # values no later step reads: freed after this one


class Network(nn.Module):
    """A compiled `.net` network: (N, *graph.input_shape) -> (N, *graph.output_shape)."""

    def __init__(self, graph: Graph, backend: str, device: torch.device) -> None:
        super().__init__()
        self.graph = graph
        self.backend = backend
        self.ops = backends.get(backend)
        self._device = device
        for node in graph.nodes:
            self._add_node(node)
        # the graph each mode runs, after the backend's passes (see runtime/passes.py)
        self.lowered = {mode: lower(graph, backend, training=mode) for mode in (True, False)}
        self._steps = {mode: self._schedule(lowered) for mode, lowered in self.lowered.items()}
        self.fusions: list[Fusion] = training_fusions(graph, backend)
        self.note: str | None = None

    def _add_node(self, node: Node) -> None:
        """Register the node's module at its name, creating the Blocks that hold it on the way."""
        *path, leaf = node.name.split(".")
        parent: nn.Module = self
        for part in path:
            child = parent._modules.get(part)
            if child is None:
                child = Block()
                parent.add_module(part, child)
            parent = child
        if node.op in ("add", "concat"):
            block = parent._modules.get(leaf) or Block()
            block.merge, block.axis = node.op, 2 if len(node.out_shape) == 2 else 1
            parent.add_module(leaf, block)
        else:
            parent.add_module(leaf, build_layer(node, self.ops))

    def _schedule(self, graph: Graph) -> list[_Step]:
        last_read: dict[str, int] = {}
        for index, node in enumerate(graph.nodes):
            for source in node.inputs:
                last_read[source] = index
        steps = []
        for index, node in enumerate(graph.nodes):
            keywords: dict[str, Any] = {key: node.attrs[key] for key in ("activation", "slope")
                                        if key in node.attrs and node.op in ("conv2d", "linear")}
            if "batchnorm" in node.attrs:
                keywords["batchnorm"] = self.get_submodule(node.attrs["batchnorm"])
            done = tuple(source for source in set(node.inputs)
                         if last_read[source] == index and source != graph.output)
            steps.append(_Step(node.name, self.get_submodule(node.name), node.inputs, keywords, done))
        return steps

    @property
    def device(self) -> torch.device:
        """Where the parameters live (follows `.to()`); the compile target for a parameterless net."""
        for param in self.parameters():
            return param.device
        return self._device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        expected = tuple(self.graph.input_shape)
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"{self.graph.name} expects input (N, {', '.join(map(str, expected))}), "
                             f"got {tuple(x.shape)}")
        values = {INPUT: x}
        for step in self._steps[self.training]:
            values[step.name] = step.module(*(values[name] for name in step.inputs), **step.keywords)
            for name in step.last_reads:  # drop our reference; autograd keeps what backward needs
                del values[name]
        return values[self.lowered[self.training].output]

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of (N, classes) logits against (N,) class indices."""
        return self.ops.cross_entropy(logits, targets, label_smoothing=label_smoothing)

    def summary(self) -> str:
        """The `netc compile` table: one row per layer, and totals."""
        try:
            from netc.dsl.report import format_table
        except ImportError:  # the report module is optional for the runtime
            return _plain_summary(self.graph)
        return format_table(self.graph)


def _plain_summary(graph: Graph) -> str:
    lines = [f"net {graph.name}: input {list(graph.input_shape)}"]
    for node in graph.nodes:
        lines.append(f"  {node.name:>4}  {node.op:<10} {list(node.out_shape)!s:<16} {node.param_count:>9,}")
    lines.append(f"  total parameters {graph.param_count:,}, forward FLOPs/sample {graph.flops:,}")
    return "\n".join(lines)


def _resolve_device(device: str | torch.device) -> torch.device:
    name = str(device)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as error:
        raise DataError(f"unknown device {name!r}: use auto, cuda or cpu") from error
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise DataError("--device cuda asked for a GPU, but PyTorch sees no CUDA device here; "
                        "use --device cpu (or auto)")
    if resolved.type not in ("cuda", "cpu"):
        raise DataError(f"unsupported device {name!r}: use auto, cuda or cpu")
    return resolved


def resolve_target(
    device: str | torch.device = "auto", backend: str = "auto"
) -> tuple[torch.device, str, str | None]:
    """(device, backend, note): auto picks cuda + triton with a GPU, else cpu + torch (and says so).

    Triton on the CPU runs its interpreter: TRITON_INTERPRET is set here, before
    any kernel module imports triton.
    """
    resolved = _resolve_device(device)
    backend, note = backends.choose(backend, resolved)
    backends.prepare(backend, resolved)
    return resolved, backend, note


def compile(
    path_or_source_or_graph: str | os.PathLike[str] | Graph,
    device: str | torch.device = "auto",
    backend: str = "auto",
    seed: int | None = None,
) -> Network:
    """Parse (unless given a Graph), lower and place a network; see the module docstring."""
    graph = _as_graph(path_or_source_or_graph)
    target, backend_name, note = resolve_target(device, backend)
    if seed is not None:
        torch.manual_seed(seed)
    network = Network(graph, backend_name, target)
    network.note = note  # the CLI prints it (one line) when auto fell back to the torch backend
    return network.to(target)


def _as_graph(value: Any) -> Graph:
    if isinstance(value, Graph):
        return value
    from netc.dsl import parse

    return parse(os.fspath(value))
