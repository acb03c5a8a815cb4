"""Parsed `.net` text -> its syntax tree: frozen dataclasses, each node with the Loc where it was written."""

from __future__ import annotations

from typing import Any

from netc.dsl.errors import Loc
from netc.dsl.record import record


@record
class Value:
    """A literal argument value.

    kind is "int", "float", "bool", "name", "string", "tuple" or "shape";
    for "tuple" and "shape", `value` is a tuple of Values.
    """

    kind: str
    value: Any
    loc: Loc

    def plain(self) -> Any:
        """The Python value, with tuples and shapes as tuples of plain values."""
        if self.kind in ("tuple", "shape"):
            return tuple(item.plain() for item in self.value)
        return self.value

    def text(self) -> str:
        """The value as it would be written in a `.net` file."""
        if self.kind == "tuple":
            return "(" + ", ".join(item.text() for item in self.value) + ")"
        if self.kind == "shape":
            return "[" + ", ".join(item.text() for item in self.value) + "]"
        if self.kind == "bool":
            return "true" if self.value else "false"
        if self.kind == "string":
            return f'"{self.value}"'
        return str(self.value)


@record
class Arg:
    """A positional (`name` is None) or keyword argument."""

    name: str | None
    value: Value
    loc: Loc

    def text(self) -> str:
        return self.value.text() if self.name is None else f"{self.name}={self.value.text()}"


@record
class Input:
    """`input [d1, ..., dn]`; the arguments are checked later, so mistakes get precise messages."""

    args: tuple[Arg, ...]
    loc: Loc


@record
class Layer:
    """`NAME arg*` inside a net: a layer, resolved in the op table by the checker."""

    name: str
    args: tuple[Arg, ...]
    loc: Loc

    def text(self) -> str:
        return " ".join([self.name, *(arg.text() for arg in self.args)])


@record
class Repeat:
    """`repeat N { ... }`: the body written N times."""

    count: Value
    body: tuple[Statement, ...]
    loc: Loc


@record
class Residual:
    """`residual { ... }`: x + body(x)."""

    body: tuple[Statement, ...]
    loc: Loc


@record
class Branch:
    """`branch { ... }` inside a `parallel`; an empty body is the identity."""

    body: tuple[Statement, ...]
    loc: Loc


@record
class Parallel:
    """`parallel MERGE { branch {...} ... }`: every branch reads the input; add or concat merges them."""

    merge: str
    merge_loc: Loc
    branches: tuple[Branch, ...]
    loc: Loc


Statement = Input | Layer | Repeat | Residual | Parallel


@record
class Setting:
    """`NAME arg*` inside a train block."""

    name: str
    args: tuple[Arg, ...]
    loc: Loc


@record
class NetBlock:
    """`net NAME { ... }`: the network's statements, in order."""

    name: str
    body: tuple[Statement, ...]
    loc: Loc
    name_loc: Loc


@record
class TrainBlock:
    """`train { ... }`: its settings, in order."""

    settings: tuple[Setting, ...]
    loc: Loc


Block = NetBlock | TrainBlock


@record
class Program:
    """A whole file: its blocks in source order (the checker enforces one net, at most one train)."""

    path: str
    source: str
    blocks: tuple[Block, ...]
