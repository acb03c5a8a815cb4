"""`.net` source text -> syntax tree (dsl.ast.Program); syntax errors -> NetError in plain English."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from netc.dsl import ast
from netc.dsl.errors import Diagnostic, Loc, NetError

_GRAMMAR = Path(__file__).with_name("grammar.lark")
MAX_NESTING = 32  # blocks, tuples and shapes inside each other (deeper would exhaust Python's stack)
_BRACKETS = re.compile(r'"[^"\n]*"|#[^\n]*|[{}()\[\]]')  # strings and comments match whole, then skip
MAX_SYNTAX_ERRORS = 20  # syntax errors reported per file; the rest are likely consequences
# The parser's options; they and the grammar decide the tables (and the cache key).
_OPTIONS = {"parser": "lalr", "lexer": "basic", "propagate_positions": True}
_CACHE_FORMAT = "standalone-1"  # bump when what goes into the cached module changes

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


class _Lark:
    """A built parser and the exception classes its errors come as (Lark's own, or the generated module's)."""

    def __init__(self, parser: Any, errors: Any):
        self.parse = parser.parse
        self.UnexpectedInput = errors.UnexpectedInput
        self.UnexpectedCharacters = errors.UnexpectedCharacters


@functools.lru_cache(maxsize=1)
def _parser() -> _Lark:
    """The LALR parser for the grammar: Lark builds its tables once (~0.6 s), on the first run.

    Lark's stand-alone generator writes the tables and the code that runs them as one Python
    module in the user's cache directory (keyed by the grammar, the options and Lark's version);
    later processes import that module and never import Lark itself (~35 ms of a `netc compile`).
    Without a usable cache directory the parser is built in every process.
    """
    grammar = _GRAMMAR.read_text()
    path = _cache_file(grammar)
    if path:
        module = _load_standalone(path) or _write_standalone(grammar, path)
        if module is not None:
            return _Lark(module.Lark_StandAlone(), module)
    import lark  # no cache: build the tables here

    # The basic lexer keeps reserved words reserved everywhere (a contextual one would let
    # `net` pass as a layer name inside a net). Strict mode only adds build-time checks (terminal
    # collisions, conflicts): the grammar test builds it strict, so the command line skips them.
    return _Lark(lark.Lark(grammar, **_OPTIONS), lark.exceptions)


def _cache_file(grammar: str) -> str | bool:
    """A private file for the generated parser in the user's cache directory, or False (no cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    directory = os.path.join(base, "netc")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        # the cache holds Python code: use it only from a directory nobody else can write to
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            return False
    except (OSError, AttributeError):  # read-only home, no getuid (Windows): parse without a cache
        return False
    import zlib  # not hashlib, whose OpenSSL binding costs ~3 ms: the key only tells versions apart

    key_text = f"{grammar}\0{sorted(_OPTIONS.items())}\0{_lark_version()}\0{_CACHE_FORMAT}".encode()
    key = f"{zlib.crc32(key_text):08x}{zlib.adler32(key_text):08x}"
    return os.path.join(directory, f"grammar_{key}.py")


def _lark_version() -> str:
    """The installed Lark's version, read from its package without importing it (that is the cost saved)."""
    import importlib.util

    spec = importlib.util.find_spec("lark")
    try:
        with open(spec.origin, encoding="utf-8") as file:  # type: ignore[union-attr, arg-type]
            found = re.search(r"""^__version__\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", file.read(), re.M)
    except (OSError, TypeError, AttributeError):
        return "unknown"
    return found.group(1) if found else "unknown"


def _load_standalone(path: str) -> Any:
    """The generated parser module at path, or None when it is missing, foreign or broken."""
    import importlib.util

    try:
        if os.stat(path).st_uid != os.getuid():
            return None
        name = "netc_dsl_" + os.path.basename(path)[:-3]
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        module.Lark_StandAlone  # noqa: B018 - a truncated file lacks it: rebuild
        return module
    except Exception:  # noqa: BLE001 - a half-written or damaged file: rebuild it
        return None


def _remove_stale(path: str) -> None:
    """Delete the parsers of earlier grammars, their bytecode (and Lark's older pickle caches) beside path."""
    import importlib.util

    directory, current = os.path.split(path)
    for name in os.listdir(directory):
        stale = name.startswith(("grammar_", "grammar-")) and name.endswith((".py", ".lark-cache"))
        if stale and name != current:
            old = os.path.join(directory, name)
            for file in (old, importlib.util.cache_from_source(old)) if name.endswith(".py") else (old,):
                try:
                    os.unlink(file)
                except OSError:
                    pass


def _write_standalone(grammar: str, path: str) -> Any:
    """Build the tables with Lark, write them as a module next to path (atomically), then load it."""
    import io
    import py_compile

    import lark
    from lark.tools.standalone import gen_standalone

    text = io.StringIO()
    gen_standalone(lark.Lark(grammar, **_OPTIONS), out=text)
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(text.getvalue())
        os.replace(temporary, path)  # a concurrent reader sees the old file or the whole new one
        # its bytecode, written even where PYTHONDONTWRITEBYTECODE stops imports from writing it:
        # compiling the 170 KB module in every process would cost more than not importing Lark saves
        py_compile.compile(path, doraise=True)
        _remove_stale(path)
    except (OSError, py_compile.PyCompileError):
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return None
    return _load_standalone(path)


def parse_program(source: str, path: str = "<string>") -> ast.Program:
    """Parse source text into a Program; syntax errors raise NetError with every one found, in order."""
    text = source if source.endswith("\n") else source + "\n"
    _check_nesting(text, path)
    tree = _parse_tree(text, path)
    return _ToAst(path, source).transform(tree)


def _parse_tree(text: str, path: str) -> Any:
    """The syntax tree, or NetError with every syntax error found.

    After an error, its line is blanked and the text parsed again, so each later line gets
    its own message; this stops at MAX_SYNTAX_ERRORS, at an error that blanking cannot get
    past (an unclosed block, a line with a brace), or when an error comes no later than the last.
    """
    found: list[Diagnostic] = []
    lines = text.split("\n")
    parser = _parser()
    while True:
        try:
            tree = parser.parse("\n".join(lines))
        except parser.UnexpectedInput as error:
            diagnostic = _syntax_diagnostic(error, "\n".join(lines), path, parser)
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


class _ToAst:
    """Lark tree -> ast dataclasses, bottom up; every node takes the Loc of its first token."""

    def __init__(self, path: str, source: str):
        self._path, self._source = path, source

    def transform(self, tree: Any) -> Any:
        """Each rule's method gets its children already transformed (tokens stay tokens)."""
        children = [self.transform(child) if hasattr(child, "children") else child
                    for child in tree.children]
        return getattr(self, str(tree.data))(children)

    def _loc(self, token: Any) -> Loc:
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


def _syntax_diagnostic(error: Any, text: str, path: str, parser: _Lark) -> Diagnostic:
    """One plain-English diagnostic for Lark's error: what was found, what was expected, where."""
    lines = text.split("\n")
    line, column = error.line, error.column
    if line is None or line < 1:  # Lark gives end-of-input errors no position: use the last line
        line, column = len(lines) - 1 or 1, 1
    if isinstance(error, parser.UnexpectedCharacters):
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


def _unexpected_character(error: Any) -> str:
    char = error.char
    if char == '"':
        return 'unterminated string: close it with `"` on the same line'
    shown = repr(char) if char.isprintable() and char != "'" else f"U+{ord(char):04X}"
    if char == "'":
        shown = "\"'\" (strings use double quotes)"
    return f"unexpected character {shown}"


def _accepted(error: Any) -> set[str]:
    """The terminals the parser would really take here (Lark's `expected` can be a superset)."""
    try:
        return set(error.interactive_parser.accepts())
    except Exception:  # noqa: BLE001 - fall back to Lark's own list if the replay fails
        return set(error.expected)


def _describe_token(token: Any) -> str:
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
