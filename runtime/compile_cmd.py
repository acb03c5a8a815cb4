"""`netc compile FILE [--emit ast|ir|plan|triton] [--json]`: a .net file -> its table or one stage."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from netc.dsl.check import CheckResult, check_program, read_file
from netc.dsl.parser import parse_program
from netc.dsl.report import format_ast, format_ir, format_table, table_dict


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
    if args.json and args.emit in ("plan", "triton"):
        print(f"netc compile: error: --json prints the layer table, --emit ast or --emit ir; "
              f"--emit {args.emit} is text only", file=sys.stderr)
        return 2  # a usage error, as argparse's
    source = read_file(args.file)
    if args.emit == "ast":
        program = parse_program(source, args.file)
        print(_json(_ast_dict(program)) if args.json else format_ast(program))
        return 0
    result = _check(args.file, source)
    if args.emit in ("plan", "triton"):
        return _emit_lowered(args.emit, result)
    if args.emit == "ir":
        print(_json(table_dict(result.graph)) if args.json else _ir_after_passes(result))
        return 0
    print(_json(table_dict(result.graph)) if args.json else format_table(result.graph))
    return 0


def _ir_after_passes(result: CheckResult) -> str:
    """The checked graph, then the graph after each pass of the Triton backend, in training and in eval."""
    from netc.runtime.passes import passes

    graph = result.graph
    texts = [format_ir(graph)]
    for training in (True, False):
        lowered = graph
        for name, rewrite in passes("triton", training):
            lowered = rewrite(lowered)
            mode = "training" if training else "eval"
            changed = len(graph.nodes) - len(lowered.nodes)
            title = f"after pass {name} (triton backend, {mode}): {changed} node(s) absorbed so far"
            texts.append(format_ir(lowered, title))
    return "\n\n".join(texts)


def _ast_dict(node: object) -> object:
    """A syntax tree as plain data: dataclasses become dicts tagged with their type."""
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        fields = {f.name: _ast_dict(getattr(node, f.name)) for f in dataclasses.fields(node)}
        fields.pop("source", None)
        return {"type": type(node).__name__, **fields}
    if isinstance(node, (tuple, list)):
        return [_ast_dict(item) for item in node]
    return node


def _json(data: object) -> str:
    import json  # only for --json: the table path stays light (issue 14's start-up budget)

    return json.dumps(data, indent=2)
