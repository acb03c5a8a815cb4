"""Graph -> Graph rewrites a backend runs before executing: activation fusion, eval-mode batchnorm folding.

Each pass returns a new Graph whose rewritten conv2d/linear nodes carry
epilogue attributes (`activation`, `slope`, `batchnorm`) and whose absorbed
nodes are gone (their readers now read the producer). The network keeps one
module per node of the checked graph (so the state and its names never
change) and runs the rewritten graph: a fused activation's module is simply
not called. Pure IR: no torch here, so `netc compile --emit ir` shows them.

- fold_batchnorms (Triton, eval mode only): conv2d/linear -> batchnorm, the
  batchnorm its only reader, runs as one conv/linear with scaled weights and
  a shifted bias, computed from the batchnorm's running statistics at each
  call (so they follow load_state_dict and training).
- fuse_activations (Triton): conv2d/linear -> an epilogue activation (relu,
  tanh, sigmoid, leaky_relu with slope >= 0: the fused backward reads the
  derivative off the output's sign), the activation its only reader, runs as
  one conv2d_act / linear_act launch, so the activation's output makes no
  extra round trip through memory. Nothing fuses across a merge: x + body(x)
  sits between a body's last layer and whatever follows the block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from netc.dsl.ir import INPUT, Graph, Node
from netc.dsl.ops import OPS

FUSABLE_PRODUCERS = {"conv2d": "conv2d_act", "linear": "linear_act"}
FUSABLE_ACTIVATIONS = tuple(name for name, spec in OPS.items() if spec.epilogue)
Pass = Callable[[Graph], Graph]


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


def _sole_reader_pairs(nodes: Sequence[Node],
                       wanted: Callable[[Node, Node], bool]) -> list[tuple[Node, Node]]:
    """(producer, reader) pairs where `reader` is the producer's only reader and reads nothing else."""
    readers: dict[str, list[Node]] = {INPUT: []}
    for node in nodes:
        readers[node.name] = []
        for source in node.inputs:
            readers.setdefault(source, []).append(node)
    pairs = []
    for producer in nodes:
        own = readers[producer.name]
        if len(own) == 1 and own[0].inputs == (producer.name,) and wanted(producer, own[0]):
            pairs.append((producer, own[0]))
    return pairs


def find_fusions(nodes: Sequence[Node]) -> list[Fusion]:
    """Every fusable (producer, activation) pair, in node order."""
    def fusable(producer: Node, reader: Node) -> bool:
        return (producer.op in FUSABLE_PRODUCERS and "activation" not in producer.attrs
                and reader.op in FUSABLE_ACTIVATIONS and float(reader.attrs.get("slope", 0.0)) >= 0.0)
    return [Fusion(producer, reader) for producer, reader in _sole_reader_pairs(nodes, fusable)]


def find_batchnorm_folds(nodes: Sequence[Node]) -> list[tuple[Node, Node]]:
    """Every (conv2d/linear, batchnorm) pair whose batchnorm can fold into the producer's weights."""
    def foldable(producer: Node, reader: Node) -> bool:
        return producer.op in FUSABLE_PRODUCERS and reader.op == "batchnorm" and \
            not {"activation", "batchnorm"} & set(producer.attrs)
    return _sole_reader_pairs(nodes, foldable)


def _absorb(graph: Graph, pairs: list[tuple[Node, Node, dict]]) -> Graph:
    """Drop each pair's reader, give its producer the extra attrs, and point the reader's readers at it."""
    renamed = {reader.name: producer.name for producer, reader, _ in pairs}
    extra = {producer.name: (reader, attrs) for producer, reader, attrs in pairs}
    nodes = []
    for node in graph.nodes:
        if node.name in renamed:
            continue
        inputs = tuple(renamed.get(source, source) for source in node.inputs)
        node = dataclasses.replace(node, inputs=inputs)
        if node.name in extra:
            reader, attrs = extra[node.name]
            node = dataclasses.replace(node, attrs={**node.attrs, **attrs}, out_shape=reader.out_shape,
                                       flops=node.flops + reader.flops)
        nodes.append(node)
    return dataclasses.replace(graph, nodes=tuple(nodes))


def fuse_activations(graph: Graph) -> Graph:
    """conv2d/linear + activation -> one node with `activation` and `slope` attrs (conv2d_act/linear_act)."""
    fusions = find_fusions(graph.nodes)
    pairs = [(f.producer, f.activation, {"activation": f.activation.op, "slope": f.slope}) for f in fusions]
    return _absorb(graph, pairs)


def fold_batchnorms(graph: Graph) -> Graph:
    """conv2d/linear + eval-mode batchnorm -> one node with a `batchnorm` attr (the folded node's name)."""
    folds = find_batchnorm_folds(graph.nodes)
    pairs = [(producer, norm, {"batchnorm": norm.name}) for producer, norm in folds]
    return _absorb(graph, pairs)


# the passes each backend runs, in order, and whether each runs in training too; the torch backend
# (the reference) runs the graph as written
BACKEND_PASSES: dict[str, tuple[tuple[str, Pass, bool], ...]] = {
    "triton": (("fold_batchnorms", fold_batchnorms, False), ("fuse_activations", fuse_activations, True)),
    "torch": (),
}


def passes(backend: str, training: bool) -> list[tuple[str, Pass]]:
    """The passes `backend` runs in that mode, in order."""
    return [(name, rewrite) for name, rewrite, in_training in BACKEND_PASSES[backend]
            if in_training or not training]


def training_fusions(graph: Graph, backend: str) -> list[Fusion]:
    """The (producer, activation) pairs `backend` fuses in training mode."""
    fuses = any(rewrite is fuse_activations for _, rewrite in passes(backend, training=True))
    return find_fusions(graph.nodes) if fuses else []


def lower(graph: Graph, backend: str, training: bool) -> Graph:
    """The graph a backend executes in a mode: the checked graph after its passes."""
    for _, rewrite in passes(backend, training):
        graph = rewrite(graph)
    return graph
