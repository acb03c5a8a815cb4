"""The `.net` front end: source text -> checked IR (`Graph`). Imports neither torch nor triton."""

from __future__ import annotations

from netc.dsl.errors import DataError, Diagnostic, Loc, NetError
from netc.dsl.ir import Graph, Node, TrainConfig

__all__ = ["parse", "NetError", "DataError", "Diagnostic", "Loc", "Graph", "Node", "TrainConfig"]


def parse(path_or_source: str, *, path: str | None = None) -> Graph:
    """Parse and check a `.net` program: a file path, or the source text itself.

    Raises `NetError` with every diagnostic found. Warnings are available on
    the returned graph's checker output (see `netc.dsl.check`).
    """
    from netc.dsl.check import parse_file

    return parse_file(path_or_source, path=path)
