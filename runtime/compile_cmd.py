"""`netc compile FILE [--emit ast|ir|plan|triton] [--json]`: a .net file -> its table or one stage."""

from __future__ import annotations

import argparse
import json
import os
import sys

from netc.dsl.check import CheckResult, check_program
from netc.dsl.errors import Loc, NetError
from netc.dsl.parser import parse_program
from netc.dsl.report import format_ast, format_ir, format_table, table_dict


def _read(path: str) -> str:
    if not os.path.isfile(path):
        what = "is a directory, not a .net file" if os.path.isdir(path) else "does not exist"
        raise NetError(f"{path} {what}", Loc(path, 0, 0))
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise NetError(f"cannot read {path}: {error}", Loc(path, 0, 0)) from None


def _check(path: str, source: str) -> CheckResult:
    result = check_program(parse_program(source, path))
    for warning in result.warnings:
        print(warning.render(), file=sys.stderr)
    return result


def _emit_lowered(stage: str, result: CheckResult) -> int:
    """--emit plan / triton: the runtime renders them; the front end only hands over the Graph."""
    try:
        from netc.runtime.plan import format_plan, format_triton
    except ImportError as error:
        print(f"error: --emit {stage} needs netc.runtime.plan, which could not be imported ({error})",
              file=sys.stderr)
        return 1
    render = format_plan if stage == "plan" else format_triton
    print(render(result.graph))
    return 0


def run(args: argparse.Namespace) -> int:
    """Carry out `netc compile`; a NetError propagates to runtime.cli, which prints it and exits 1."""
    try:
        source = _read(args.file)
    except NetError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 1
    if args.emit == "ast":
        program = parse_program(source, args.file)
        print(json.dumps(_ast_dict(program), indent=2) if args.json else format_ast(program))
        return 0
    result = _check(args.file, source)
    if args.emit in ("plan", "triton"):
        return _emit_lowered(args.emit, result)
    if args.emit == "ir":
        print(json.dumps(table_dict(result.graph), indent=2) if args.json else format_ir(result.graph))
        return 0
    print(json.dumps(table_dict(result.graph), indent=2) if args.json else format_table(result.graph))
    return 0


def _ast_dict(node: object) -> object:
    """A syntax tree as plain data: dataclasses become dicts tagged with their type."""
    import dataclasses

    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = {f.name: _ast_dict(getattr(node, f.name)) for f in dataclasses.fields(node)}
        fields.pop("source", None)
        return {"type": type(node).__name__, **fields}
    if isinstance(node, (tuple, list)):
        return [_ast_dict(item) for item in node]
    return node
