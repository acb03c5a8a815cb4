"""Node list -> the activation fusions the Triton backend applies (conv2d/linear + activation -> one kernel).

A conv2d or linear immediately followed by relu, tanh, sigmoid or leaky_relu
in the same stack (the top level, or one residual body) runs as a single
conv2d_act / linear_act launch: the activation is applied in the epilogue,
so its output never makes a round trip through memory. The activation's
node keeps its place (and its submodule becomes an identity), so layer
names and indices do not move. Nothing fuses across a residual boundary:
`x + body(x)` sits between a body's last layer and whatever follows it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from netc.dsl.ir import Node

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
        if previous is not None and previous.op in FUSABLE_PRODUCERS and node.op in FUSABLE_ACTIVATIONS:
            fusions.append(Fusion(previous, node))
            previous = None  # the activation is consumed; a second one after it stays on its own
        else:
            previous = node
    return fusions


def walk(nodes: Sequence[Node]) -> Iterator[Node]:
    """Every node in order, each residual followed by its body's nodes (depth first)."""
    for node in nodes:
        yield node
        yield from walk(node.body)
