"""The `.net` front end: source text -> checked IR (`Graph`). Imports neither torch nor triton."""

from __future__ import annotations

from typing import TYPE_CHECKING

from netc.dsl.errors import DataError, Diagnostic, Loc, NetError
from netc.dsl.ir import Graph, Node, TrainConfig

if TYPE_CHECKING:
    from netc.dsl.check import CheckResult

__all__ = ["parse", "parse_with_warnings", "NetError", "DataError", "Diagnostic", "Loc", "Graph", "Node",
           "TrainConfig"]


def parse(path_or_source: str, *, path: str | None = None) -> Graph:
    """Parse and check a `.net` program: a file path, or the source text itself.

    Raises `NetError` with every diagnostic found. `parse_with_warnings` also returns the warnings.
    """
    from netc.dsl.check import parse_file

    return parse_file(path_or_source, path=path)


def parse_with_warnings(path_or_source: str, *, path: str | None = None) -> CheckResult:
    """Like `parse`, but return a CheckResult: `.graph` and `.warnings` (a list of Diagnostic)."""
    from netc.dsl.check import check_file

    return check_file(path_or_source, path=path)
