"""Source locations and user-facing diagnostics: Loc + message -> rendered `path:line:col: error:` text."""

from __future__ import annotations

from netc.dsl.record import record


MAX_SHOWN_ERRORS = 50  # diagnostics rendered per NetError; the rest are counted
MAX_QUOTED = 120  # characters of a source line quoted under a message; longer ones are cut around the caret


@record
class Loc:
    """A position in a `.net` file; line and column count from 1."""

    path: str
    line: int
    column: int


@record
class Diagnostic:
    """One error or warning, with the text of the source line it points into."""

    severity: str  # "error" or "warning"
    message: str
    loc: Loc
    source_line: str = ""

    def render(self) -> str:
        head = f"{self.loc.path}:{self.loc.line}:{self.loc.column}: {self.severity}: {self.message}"
        if not self.source_line:
            return head
        raw = self.source_line.rstrip("\n")
        column = max(self.loc.column - 1, 0)
        prefix = ""
        if len(raw) > MAX_QUOTED:  # a window around the caret, so a long line is never repeated whole
            start = max(0, min(column - MAX_QUOTED // 2, len(raw) - MAX_QUOTED))
            prefix, suffix = ("..." if start else ""), ("..." if start + MAX_QUOTED < len(raw) else "")
            raw, column = raw[start:start + MAX_QUOTED] + suffix, column - start
        line = prefix + raw.expandtabs(4)
        # the line as written (tabs expanded), the caret under the column's character
        caret = " " * (len(prefix) + len(raw[:column].expandtabs(4))) + "^"
        return f"{head}\n{line}\n{caret}"


class NetError(Exception):
    """A mistake in a user's `.net` file or data, with every diagnostic found.

    `.path`, `.line`, `.column` and `.message` describe the first error;
    `str()` is the rendered text of all of them, in source order.
    """

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str, loc: Loc | None = None):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic("error", diagnostics, loc or Loc("<input>", 0, 0))
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        if not diagnostics:
            raise ValueError("NetError needs at least one diagnostic")
        self.diagnostics: list[Diagnostic] = list(diagnostics)
        first = self.diagnostics[0]
        self.path, self.line, self.column = first.loc.path, first.loc.line, first.loc.column
        self.message = first.message
        super().__init__(self.render())

    def render(self) -> str:
        shown = "\n".join(d.render() for d in self.diagnostics[:MAX_SHOWN_ERRORS])
        hidden = len(self.diagnostics) - MAX_SHOWN_ERRORS
        if hidden > 0:
            shown += f"\n... and {hidden} more error{'s' * (hidden > 1)} (fix the first ones, then run again)"
        return shown

    def __str__(self) -> str:
        return self.render()


class DataError(NetError):
    """A problem with a dataset or a checkpoint on disk (not in the `.net` text).

    Raised with a plain message (no source line), e.g. a missing or corrupt
    IDX file; the CLI prints `error: MESSAGE` and exits 1.
    """

    def __init__(self, message: str):
        super().__init__(Diagnostic("error", message, Loc("<data>", 0, 0)))

    def render(self) -> str:
        return f"error: {self.message}"
