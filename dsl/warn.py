"""A checked Graph -> warnings (Loc, message): legal programs that probably do not mean what they say."""

from __future__ import annotations

from netc.dsl.errors import Loc
from netc.dsl.ir import Graph, Node

_ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")


def find_warnings(graph: Graph) -> list[tuple[Loc, str]]:
    """Every warning, in source order (each source line warned about once)."""
    found: list[tuple[Loc, str]] = []
    _walk(graph.nodes, found)
    if graph.nodes:
        last = graph.nodes[-1]
        if last.op == "dropout":
            found.append((last.loc, "`dropout` as the last layer zeroes logits at random in training; "
                          "put it before the last `linear`"))
        elif last.op in _ACTIVATIONS:
            found.append((last.loc, f"the last layer `{last.op}` squashes the logits before "
                          "cross_entropy; end with `linear` instead"))
    unique = sorted(set(found), key=lambda item: (item[0].line, item[0].column, item[1]))
    return unique


def _walk(nodes: tuple[Node, ...], found: list[tuple[Loc, str]]) -> None:
    previous: Node | None = None
    for node in nodes:
        if node.op in _ACTIVATIONS and previous is not None and previous.op in _ACTIVATIONS:
            found.append((node.loc, f"`{node.op}` right after `{previous.op}`: two activations in a row "
                          "are rarely wanted"))
        if node.op == "flatten" and len(node.in_shape) == 1:
            found.append((node.loc, "`flatten` on a vector does nothing; remove it"))
        if node.op == "dropout" and node.attrs["p"] == 0:
            found.append((node.loc, "`dropout 0` does nothing; remove it"))
        if node.op == "residual":
            _walk(node.body, found)
        previous = node
