"""Hostile `.net` files -> bounded, positioned errors: nesting, error counts, long lines, many errors."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netc.dsl import parse
from netc.dsl.errors import MAX_QUOTED, MAX_SHOWN_ERRORS, Diagnostic, Loc, NetError
from netc.dsl.parser import MAX_NESTING, MAX_SYNTAX_ERRORS


def _error(source: str) -> NetError:
    with pytest.raises(NetError) as caught:
        parse(source)
    return caught.value


def test_deeply_nested_blocks_stop_at_the_limit_with_a_position() -> None:
    depth = 1000  # Python's recursion limit: a RecursionError traceback before the limit existed
    body = "".join(f"{'    ' * (i + 1)}residual {{\n" for i in range(depth))
    closing = "".join(f"{'    ' * (depth - i)}}}\n" for i in range(depth))
    error = _error(f"net deep {{\n    input [784]\n{body}        relu\n{closing}    linear 10\n}}\n")
    # the net's `{` is level 1; the residual on source line 2 + MAX_NESTING is level MAX_NESTING + 1
    expected = "nesting too deep: more than 32 blocks, tuples or shapes in each other"
    assert (error.line, error.message) == (MAX_NESTING + 2, expected)
    assert error.column == 4 * MAX_NESTING + len("residual ") + 1


def test_deeply_nested_parentheses_stop_at_the_limit() -> None:
    error = _error("net deep {\n    input [784]\n    linear " + "(" * 5000 + "10" + ")" * 5000 + "\n}\n")
    assert (error.line, error.column) == (3, len("    linear ") + MAX_NESTING)  # the net's `{` is level 1
    assert "nesting too deep" in error.message
    assert len(str(error)) < 600  # the 10,000-character line is quoted around the caret only


def test_nesting_inside_strings_and_comments_does_not_count() -> None:
    text = ("net ok {  # " + "(" * 100 + "\n    input [784]\n    linear 10\n}\n"
            "train {\n    data mnist path=\"" + "[" * 100 + "\"\n}\n")
    assert parse(text).name == "ok"


def test_every_syntax_error_is_reported_in_source_order() -> None:
    error = _error("net a {\n    input [784]\n    linear 10 x=)\n    relu\n    relu 3 (\n"
                   "    conv2d =\n    linear 10\n}\n")
    assert [(d.loc.line, d.loc.column) for d in error.diagnostics] == [(3, 17), (5, 13), (6, 12)]
    assert error.diagnostics[2].message == "unexpected `=`: expected an argument or the end of the line"


def test_syntax_errors_are_capped() -> None:
    lines = "".join(f"    linear {i} )\n" for i in range(200))
    error = _error(f"net a {{\n    input [784]\n{lines}}}\n")
    assert len(error.diagnostics) == MAX_SYNTAX_ERRORS
    assert [d.loc.line for d in error.diagnostics] == list(range(3, 3 + MAX_SYNTAX_ERRORS))


def test_one_long_line_with_thousands_of_mistakes_gives_bounded_output() -> None:
    line = "    linear 10 " + ") " * 50_000  # 100 KB, every `)` a mistake
    text = str(_error(f"net a {{\n    input [784]\n{line}\n    relu (\n}}\n"))
    assert len(text) < 800 and text.count("error:") == 2


def test_rendered_diagnostics_are_capped_and_counted() -> None:
    many = [Diagnostic("error", f"mistake {i}", Loc("a.net", i + 1, 1), "relu")
            for i in range(MAX_SHOWN_ERRORS + 7)]
    text = str(NetError(many))
    assert text.count(": error: mistake") == MAX_SHOWN_ERRORS
    assert text.endswith("... and 7 more errors (fix the first ones, then run again)")


def test_a_long_line_is_quoted_around_the_caret() -> None:
    source_line = "x" * 1000 + "HERE" + "y" * 1000
    lines = Diagnostic("error", "boom", Loc("a.net", 1, 1001), source_line).render().split("\n")
    assert lines[1].startswith("...") and lines[1].endswith("...") and len(lines[1]) == MAX_QUOTED + 6
    assert lines[1][lines[2].index("^"):].startswith("HERE")
    start = Diagnostic("error", "boom", Loc("a.net", 1, 3), source_line).render().split("\n")
    assert start[1] == source_line[:MAX_QUOTED] + "..." and start[2] == "  ^"


def test_parser_tables_are_cached_in_a_private_directory(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from netc.dsl import parser

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "netc" / "static-bench").mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "netc", 0o700)
    for stale in ("grammar-0123.lark-cache", "grammar_0123.py"):  # an older grammar's, or format's
        (tmp_path / "netc" / stale).write_text("old")
    (tmp_path / "netc" / "__pycache__").mkdir()
    stale_bytecode = tmp_path / "netc" / importlib.util.cache_from_source("grammar_0123.py")
    stale_bytecode.write_bytes(b"old")
    parser._parser.cache_clear()
    try:
        assert parse("net a {\n    input [784]\n    linear 10\n}\n").name == "a"
        (cached,) = (tmp_path / "netc").glob("grammar*")  # the stale ones are gone, the rest kept
        assert (tmp_path / "netc" / "static-bench").is_dir() and not stale_bytecode.exists()
        assert cached.stat().st_size > 1000 and "Lark_StandAlone" in cached.read_text()
        assert (tmp_path / "netc").stat().st_mode & 0o777 == 0o700
        written = cached.stat().st_mtime_ns
        parser._parser.cache_clear()  # a second process: the tables come from the file
        assert parse("net b {\n    input [784]\n    linear 10\n}\n").name == "b"
        assert cached.stat().st_mtime_ns == written  # read, not written again
        cached.write_text("DATA = (")  # another process was writing it: rebuilt, not an error
        parser._parser.cache_clear()
        bad = "net c\n    input [784]\n    linear 10 (\n}\n"
        with pytest.raises(NetError, match="1:6: error: unexpected end of line: expected `{`") as generated:
            parse(bad)
        assert cached.stat().st_size > 1000 and "Lark_StandAlone" in cached.read_text()
        os.chmod(tmp_path / "netc", 0o777)  # others could plant code there: not used
        assert parser._cache_file("grammar") is False
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file" / "below"))
        (tmp_path / "a_file").write_text("not a directory")
        assert parser._cache_file("grammar") is False  # no cache directory: parse without one
        parser._parser.cache_clear()
        with pytest.raises(NetError) as built:
            parse(bad)
        assert str(built.value) == str(generated.value)  # the same messages from Lark itself
        assert parse("net d {\n    input [784]\n    linear 10\n}\n").name == "d"
    finally:
        parser._parser.cache_clear()


def test_a_cached_parser_spares_importing_lark(tmp_path: Path) -> None:
    """With the generated parser in the cache, `netc compile` never imports Lark (~35 ms a run)."""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONDONTWRITEBYTECODE": "1"}
    code = ("import sys; from netc.dsl import parse; parse('net a {\\n input [784]\\n linear 10\\n}\\n'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('lark', 'interegular')))")
    first = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "'lark'" in first.stdout  # the first run builds the tables with Lark
    second = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert second.stdout.strip() == "[]"
    # its bytecode is written even where Python is told not to write any (it is read, not compiled)
    assert len(list((tmp_path / "netc" / "__pycache__").glob("grammar_*.pyc"))) == 1


def test_warnings_are_capped_and_counted() -> None:
    from netc.dsl import parse_with_warnings

    result = parse_with_warnings("net a {\n    input [784]\n" + "    relu\n" * 300 + "    linear 10\n}\n")
    assert len(result.warnings) == MAX_SHOWN_ERRORS + 1
    assert result.warnings[-1].message == "... and 249 more warnings like these"
    assert result.warnings[-1].loc.line == 3 + 1 + MAX_SHOWN_ERRORS  # the first one not shown
