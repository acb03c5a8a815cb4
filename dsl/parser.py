"""`.net` source text -> syntax tree (dsl.ast.Program); syntax errors -> NetError in plain English."""

from __future__ import annotations

import functools
import hashlib
import os
import re
from pathlib import Path

import lark
from lark import Token, Transformer

from netc.dsl import ast
from netc.dsl.errors import Diagnostic, Loc, NetError

_GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_NESTING = 32  # blocks, tuples and shapes inside each other (deeper would exhaust Python's stack)
_BRACKETS = re.compile(r'"[^"\n]*"|#[^\n]*|[{}()\[\]]')  # strings and comments match whole, then skip
MAX_SYNTAX_ERRORS = 20  # syntax errors reported per file; the rest are likely consequences

# Every terminal, in words, for "expected ..." and "unexpected ..." messages.
_WORDS: dict[str, str] = {
    "NET": "`net`", "TRAIN": "`train`", "INPUT": "`input`", "REPEAT": "`repeat`",
    "RESIDUAL": "`residual`", "PARALLEL": "`parallel`", "BRANCH": "`branch`", "TRUE": "`true`",
    "FALSE": "`false`", "LBRACE": "`{`", "RBRACE": "`}`",
    "LPAR": "`(`", "RPAR": "`)`", "LSQB": "`[`", "RSQB": "`]`", "COMMA": "`,`", "EQUALS": "`=`",
    "NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
    "_NL": "the end of the line", "$END": "the end of the file",
}
# The terminals that can start a value: when all are expected, say "a value" once.
_VALUE_STARTS = frozenset({"INT", "FLOAT", "TRUE", "FALSE", "NAME", "STRING", "LPAR", "LSQB"})
# Their order in messages: what a reader looks for first.
_ORDER = ["NAME", "INPUT", "REPEAT", "RESIDUAL", "PARALLEL", "BRANCH", "NET", "TRAIN", "INT", "FLOAT",
          "STRING", "TRUE", "FALSE", "LPAR", "LSQB", "EQUALS", "COMMA", "RPAR", "RSQB", "LBRACE", "RBRACE",
          "_NL", "$END"]


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    # Strict mode only adds build-time checks (terminal collisions, conflicts): the grammar test
    # builds it strict, so the command line skips them.
    grammar = _GRAMMAR.read_text()
    # The basic lexer keeps reserved words reserved everywhere (a contextual one would let
    # `net` pass as a layer name inside a net). Building the LALR tables takes ~0.6 s: Lark
    # keeps them in a cache file (keyed by the grammar and options), rebuilt when missing or stale.
    return lark.Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True,
                     cache=_cache_file(grammar))


def _cache_file(grammar: str) -> str | bool:
    """A private file for Lark's parser tables in the user's cache directory, or False (no cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "netc")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        # Lark's cache is a pickle: read it only from a directory nobody else can write to
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return False
    except (OSError, AttributeError):  # read-only home, no getuid (Windows): parse without a cache
        return False
    key = hashlib.sha256(f"{grammar}\0{lark.__version__}".encode()).hexdigest()[:16]
    return os.path.join(directory, f"grammar-{key}.lark-cache")


def parse_program(source: str, path: str = "<string>") -> ast.Program:
    """Parse source text into a Program; syntax errors raise NetError with every one found, in order."""
    text = source if source.endswith("\n") else source + "\n"
    _check_nesting(text, path)
    tree = _parse_tree(text, path)
    try:
        return _ToAst(path, source).transform(tree)
    except lark.exceptions.VisitError as error:  # Lark wraps what a transformer raises: unwrap it
        raise error.orig_exc from None


def _parse_tree(text: str, path: str) -> lark.Tree:
    """The syntax tree, or NetError with every syntax error found.

    After an error, its line is blanked and the text parsed again, so each later line gets
    its own message; this stops at MAX_SYNTAX_ERRORS, at an error that blanking cannot get
    past (an unclosed block, a line with a brace), or when an error comes no later than the last.
    """
    found: list[Diagnostic] = []
    lines = text.split("\n")
    while True:
        try:
            tree = _parser().parse("\n".join(lines))
        except lark.exceptions.UnexpectedInput as error:
            diagnostic = _syntax_diagnostic(error, "\n".join(lines), path)
            if found and diagnostic.loc.line <= found[-1].loc.line:
                break  # no progress: what follows is a consequence of an earlier mistake
            found.append(diagnostic)
            if len(found) >= MAX_SYNTAX_ERRORS or not _blank(lines, error.line, diagnostic.loc.line):
                break
        else:
            if not found:
                return tree
            break
    raise NetError(found)


def _blank(lines: list[str], line: int | None, reported: int) -> bool:
    """Blank the line of an error, so parsing can go on after it; False when that cannot help."""
    if not isinstance(line, int) or not 0 < line <= len(lines) or line != reported:
        return False  # an error at the end of the file, or moved to an unclosed `{`
    if "{" in lines[line - 1] or "}" in lines[line - 1]:
        return False  # blanking it would unbalance the blocks
    lines[line - 1] = ""
    return True


def _check_nesting(text: str, path: str) -> None:
    """NetError at the first `{`, `(` or `[` nested deeper than MAX_NESTING (strings, comments skipped)."""
    depth = 0
    for match in _BRACKETS.finditer(text):
        char = match.group()
        if char in "{([":
            depth += 1
            if depth > MAX_NESTING:
                start = text.rfind("\n", 0, match.start()) + 1
                end = text.find("\n", match.start())
                loc = Loc(path, text.count("\n", 0, match.start()) + 1, match.start() - start + 1)
                message = f"nesting too deep: more than {MAX_NESTING} blocks, tuples or shapes in each other"
                raise NetError(Diagnostic("error", message, loc, text[start:end]))
        elif char in "})]":
            depth = max(depth - 1, 0)


class _ToAst(Transformer):
    """Lark tree -> ast dataclasses; every node takes the Loc of its first token."""

    def __init__(self, path: str, source: str):
        super().__init__()
        self._path, self._source = path, source

    def _loc(self, token: Token) -> Loc:
        return Loc(self._path, token.line or 1, token.column or 1)

    def int_value(self, children: list) -> ast.Value:
        return ast.Value("int", int(children[0]), self._loc(children[0]))

    def float_value(self, children: list) -> ast.Value:
        return ast.Value("float", float(children[0]), self._loc(children[0]))

    def bool_value(self, children: list) -> ast.Value:
        return ast.Value("bool", children[0] == "true", self._loc(children[0]))

    def name_value(self, children: list) -> ast.Value:
        return ast.Value("name", str(children[0]), self._loc(children[0]))

    def string_value(self, children: list) -> ast.Value:
        return ast.Value("string", str(children[0])[1:-1], self._loc(children[0]))

    def tuple_value(self, children: list) -> ast.Value:
        items = tuple(child for child in children if isinstance(child, ast.Value))
        return ast.Value("tuple", items, self._loc(children[0]))

    def shape_value(self, children: list) -> ast.Value:
        items = tuple(child for child in children if isinstance(child, ast.Value))
        return ast.Value("shape", items, self._loc(children[0]))

    def keyword_arg(self, children: list) -> ast.Arg:
        return ast.Arg(str(children[0]), children[2], self._loc(children[0]))

    def _args(self, children: list) -> tuple[ast.Arg, ...]:
        return tuple(c if isinstance(c, ast.Arg) else ast.Arg(None, c, c.loc)
                     for c in children if isinstance(c, (ast.Arg, ast.Value)))

    def input_stmt(self, children: list) -> ast.Input:
        return ast.Input(self._args(children[1:]), self._loc(children[0]))

    def layer_stmt(self, children: list) -> ast.Layer:
        return ast.Layer(str(children[0]), self._args(children[1:]), self._loc(children[0]))

    def setting(self, children: list) -> ast.Setting:
        return ast.Setting(str(children[0]), self._args(children[1:]), self._loc(children[0]))

    @staticmethod
    def _body(children: list) -> tuple:
        return tuple(c for c in children if isinstance(c, (ast.Input, ast.Layer, ast.Repeat, ast.Residual,
                                                             ast.Parallel)))

    def repeat_stmt(self, children: list) -> ast.Repeat:
        return ast.Repeat(children[1], self._body(children[2:]), self._loc(children[0]))

    def residual_stmt(self, children: list) -> ast.Residual:
        return ast.Residual(self._body(children), self._loc(children[0]))

    def parallel_stmt(self, children: list) -> ast.Parallel:
        branches = tuple(c for c in children if isinstance(c, ast.Branch))
        return ast.Parallel(str(children[1]), self._loc(children[1]), branches, self._loc(children[0]))

    def branch(self, children: list) -> ast.Branch:
        return ast.Branch(self._body(children), self._loc(children[0]))

    def net_block(self, children: list) -> ast.NetBlock:
        return ast.NetBlock(str(children[1]), self._body(children), self._loc(children[0]),
                            self._loc(children[1]))

    def train_block(self, children: list) -> ast.TrainBlock:
        settings = tuple(c for c in children if isinstance(c, ast.Setting))
        return ast.TrainBlock(settings, self._loc(children[0]))

    def start(self, children: list) -> ast.Program:
        blocks = tuple(c for c in children if isinstance(c, (ast.NetBlock, ast.TrainBlock)))
        return ast.Program(self._path, self._source, blocks)


def _syntax_diagnostic(error: lark.exceptions.UnexpectedInput, text: str, path: str) -> Diagnostic:
    """One plain-English diagnostic for Lark's error: what was found, what was expected, where."""
    lines = text.split("\n")
    line, column = error.line, error.column
    if line is None or line < 1:  # Lark gives end-of-input errors no position: use the last line
        line, column = len(lines) - 1 or 1, 1
    if isinstance(error, lark.exceptions.UnexpectedCharacters):
        message = _unexpected_character(error)
        kind = None
    else:
        kind = error.token.type
        message = f"unexpected {_describe_token(error.token)}: expected {_expected(_accepted(error))}"
    unclosed = None
    if kind == "$END" or (kind in ("NET", "TRAIN") and _unclosed_brace(text, len(lines) + 1, 1)):
        unclosed = _unclosed_brace(text, line, column)
    if unclosed is not None:
        line, column = unclosed
        message = "this `{` is never closed: add a `}` on its own line at the end of the block"
    elif kind is not None and kind != "_NL" and _follows_closing_brace(lines, line, column):
        message = f"unexpected {_describe_token(error.token)} after `}}`: `}}` must end its line"
    elif kind == "RBRACE" and "_NL" in _accepted(error):
        message = "unexpected `}`: put `}` on a line of its own"
    source_line = lines[line - 1].rstrip("\r") if 0 < line <= len(lines) else ""
    return Diagnostic("error", message, Loc(path, line, max(column, 1)), source_line)


def _unexpected_character(error: lark.exceptions.UnexpectedCharacters) -> str:
    char = error.char
    if char == '"':
        return 'unterminated string: close it with `"` on the same line'
    shown = repr(char) if char.isprintable() and char != "'" else f"U+{ord(char):04X}"
    if char == "'":
        shown = "\"'\" (strings use double quotes)"
    return f"unexpected character {shown}"


def _accepted(error: lark.exceptions.UnexpectedToken) -> set[str]:
    """The terminals the parser would really take here (Lark's `expected` can be a superset)."""
    try:
        return set(error.interactive_parser.accepts())
    except Exception:  # noqa: BLE001 - fall back to Lark's own list if the replay fails
        return set(error.expected)


def _describe_token(token: Token) -> str:
    if token.type == "NAME":
        return f"name '{token.value}'"
    if token.type in ("INT", "FLOAT"):
        return f"number {token.value}"
    if token.type == "STRING":
        return f"string {token.value}"
    if token.type in ("_NL", "$END"):
        return "end of line" if token.type == "_NL" else "end of file"
    return _WORDS.get(token.type, repr(str(token.value)))


def _expected(terminals: set[str] | frozenset[str]) -> str:
    """Terminal names -> 'a layer name, `repeat`, `residual` or `}`'."""
    names = set(terminals)
    if "NET" in names:  # between blocks, blank lines and the end are fine but not what to suggest
        names -= {"_NL", "$END"}
    if "REPEAT" in names:  # `input` parses here, but the checker only takes it first
        names.discard("INPUT")
    words: list[str] = []
    if {"INT", "NAME", "LPAR", "LSQB"} <= names:
        names -= _VALUE_STARTS
        words.append("an argument" if "_NL" in names else "a value (number, name, string, tuple or shape)")
    for terminal in sorted(names, key=lambda t: _ORDER.index(t) if t in _ORDER else len(_ORDER)):
        word = _WORDS.get(terminal, terminal.lower())
        if terminal == "NAME":
            word = "a layer name" if "REPEAT" in names else "a setting name" if "RBRACE" in names else word
        if terminal == "_NL" and "RBRACE" in names:
            continue  # after `{`, "a new line" adds nothing to "a layer name ... or `}`"
        words.append(word)
    if not words:
        return "something else"
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _unclosed_brace(text: str, line: int, column: int) -> tuple[int, int] | None:
    """The (line, column) of the innermost `{` still open before the given position, if any."""
    stack: list[tuple[int, int]] = []
    for number, row in enumerate(text.split("\n")[:line], start=1):
        in_string = False
        for index, char in enumerate(row, start=1):
            if number == line and index >= column:
                break
            if char == '"':
                in_string = not in_string
            elif in_string:
                continue
            elif char == "#":
                break
            elif char == "{":
                stack.append((number, index))
            elif char == "}" and stack:
                stack.pop()
    return stack[-1] if stack else None


def _follows_closing_brace(lines: list[str], line: int, column: int) -> bool:
    before = lines[line - 1][: column - 1].rstrip() if 0 < line <= len(lines) else ""
    return before.endswith("}")
