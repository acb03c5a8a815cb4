"""Checked Graph -> warnings: legal programs that probably do not mean what they say, as (Loc, message)."""

from __future__ import annotations

from netc.dsl.errors import Loc
from netc.dsl.ir import Graph
from netc.dsl.ops import ACTIVATIONS

def find_warnings(graph: Graph) -> list[tuple[Loc, str]]:
    """Every warning, in source order (each source line warned about once)."""
    found: list[tuple[Loc, str]] = []
    _walk(graph, found)
    if graph.nodes:
        last = graph.nodes[-1]
        if last.op == "dropout":
            found.append((last.loc, "`dropout` as the last layer zeroes logits at random in training; "
                          "put it before the last `linear`"))
        elif last.op in ACTIVATIONS:
            found.append((last.loc, f"the last layer `{last.op}` squashes the logits before "
                          "cross_entropy; end with `linear` instead"))
    unique = sorted(set(found), key=lambda item: (item[0].line, item[0].column, item[1]))
    return unique


def _walk(graph: Graph, found: list[tuple[Loc, str]]) -> None:
    by_name = {node.name: node for node in graph.nodes}
    for node in graph.nodes:
        previous = by_name.get(node.inputs[0]) if len(node.inputs) == 1 else None
        if node.op in ACTIVATIONS and previous is not None and previous.op in ACTIVATIONS:
            found.append((node.loc, f"`{node.op}` right after `{previous.op}`: two activations in a row "
                          "are rarely wanted"))
        if node.op == "flatten" and len(node.in_shape) == 1:
            found.append((node.loc, "`flatten` on a vector does nothing; remove it"))
        if node.op == "dropout" and node.attrs["p"] == 0:
            found.append((node.loc, "`dropout 0` does nothing; remove it"))
