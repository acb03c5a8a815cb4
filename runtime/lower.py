"""Graph (or .net path/source) -> Network: a torch.nn.Module on the Triton kernels or on PyTorch's operators.

`compile` parses when given text, resolves the device and backend, seeds the
RNG, builds one submodule per node ("0", "1", ...; a residual's body as
"i.0", "i.1", ...) with PyTorch's initialisation in node order, then, on the
Triton backend, applies the fusion pass (`find_fusions`, below). Weights are
always drawn on the CPU and then moved, so a seed gives the same weights on
every device and backend.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netc.dsl.errors import DataError
from netc.dsl.ir import Graph, Node
from netc.runtime.layers import Activation, build_layer, kernel

BACKENDS = ("triton", "torch")

# ---- the fusion pass (Triton backend only) ----------------------------------------------------
# A conv2d or linear immediately followed by relu, tanh, sigmoid or leaky_relu in the same stack
# (the top level, or one residual body) runs as a single conv2d_act / linear_act launch: the
# activation is applied in the GEMM epilogue, so its output makes no extra round trip through
# memory. The activation's node keeps its place (its module becomes an identity), so layer names
# and indices do not move. Nothing fuses across a residual boundary: x + body(x) sits between a
# body's last layer and whatever follows it. A leaky_relu with a negative slope stays on its own:
# the fused backward reads the derivative off the output's sign, which needs slope >= 0.

FUSABLE_PRODUCERS = {"conv2d": "conv2d_act", "linear": "linear_act"}
FUSABLE_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")


@dataclass(frozen=True)
class Fusion:
    """One producer (conv2d/linear) whose epilogue applies the activation node after it."""

    producer: Node
    activation: Node

    @property
    def kernel(self) -> str:
        return FUSABLE_PRODUCERS[self.producer.op]

    @property
    def slope(self) -> float:
        return float(self.activation.attrs.get("slope", 0.0))

    def describe(self) -> str:
        return f"{self.producer.name} {self.producer.op} + {self.activation.name} {self.activation.op} " \
               f"-> {self.kernel}({self.activation.op})"


def find_fusions(nodes: Sequence[Node]) -> list[Fusion]:
    """Every fusable (producer, activation) pair, in node order, residual bodies included."""
    fusions: list[Fusion] = []
    previous: Node | None = None
    for node in nodes:
        if node.op == "residual":
            fusions.extend(find_fusions(node.body))
        if previous is not None and previous.op in FUSABLE_PRODUCERS and _fusable_activation(node):
            fusions.append(Fusion(previous, node))
            previous = None  # the activation is consumed; a second one after it stays on its own
        else:
            previous = node
    return fusions


def _fusable_activation(node: Node) -> bool:
    return node.op in FUSABLE_ACTIVATIONS and float(node.attrs.get("slope", 0.0)) >= 0.0


def walk(nodes: Sequence[Node]) -> Iterator[Node]:
    """Every node in order, each residual followed by its body's nodes (depth first)."""
    for node in nodes:
        yield node
        yield from walk(node.body)


class Network(nn.Module):
    """A compiled `.net` network: (N, *graph.input_shape) -> (N, *graph.output_shape)."""

    def __init__(self, graph: Graph, backend: str, device: torch.device) -> None:
        super().__init__()
        self.graph = graph
        self.backend = backend
        self._device = device
        for node in graph.nodes:
            self.add_module(node.name, build_layer(node, backend))
        self.fusions: list[Fusion] = []
        self.note: str | None = None

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
        for layer in self.children():
            x = layer(x)
        return x

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Mean cross-entropy of (N, classes) logits against (N,) class indices."""
        if self.backend == "torch":
            return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        return kernel("cross_entropy")(logits, targets, label_smoothing=label_smoothing)

    def summary(self) -> str:
        """The `netc compile` table: one row per layer, and totals."""
        try:
            from netc.dsl.report import format_table
        except ImportError:  # the report module is optional for the runtime
            return _plain_summary(self.graph)
        return format_table(self.graph)

    def apply_fusions(self, fusions: list[Fusion]) -> None:
        """Fold each fusion's activation into its producer; the activation's module becomes an identity."""
        for fusion in fusions:
            fold(fusion, self.get_submodule(fusion.producer.name), self.get_submodule(fusion.activation.name))
        self.fusions = list(fusions)


def fold(fusion: Fusion, producer: nn.Module, activation: nn.Module) -> None:
    """Make `producer` (a triton Conv2d/Linear) apply the activation, and `activation` an identity."""
    assert isinstance(activation, Activation) and hasattr(producer, "activation")
    producer.activation, producer.slope = fusion.activation.op, fusion.slope
    activation.fused = True


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
    note = None
    if backend == "auto":
        backend = "triton" if resolved.type == "cuda" else "torch"
        if backend == "torch":
            note = ("note: no CUDA device in use, running on the torch backend (PyTorch's operators) on cpu; "
                    "--backend triton runs the Triton kernels through the interpreter (slow)")
    if backend not in BACKENDS:
        raise DataError(f"unknown backend {backend!r}: use auto, triton or torch")
    if backend == "triton":
        _prepare_triton(resolved)
    return resolved, backend, note


def _prepare_triton(device: torch.device) -> None:
    from netc.kernels.config import ensure_backend, interpreting

    ensure_backend(device.type)
    if device.type == "cpu" and not interpreting():
        # triton was imported for the GPU before we could choose its interpreter
        raise DataError("the triton backend on cpu needs Triton's interpreter, but triton was already "
                        "loaded for the GPU; set TRITON_INTERPRET=1 before starting")


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
    if backend_name == "triton":
        network.apply_fusions(find_fusions(graph.nodes))
    network.note = note  # the CLI prints it (one line) when auto fell back to the torch backend
    return network.to(target)


def _as_graph(value: Any) -> Graph:
    if isinstance(value, Graph):
        return value
    from netc.dsl import parse

    return parse(os.fspath(value))
