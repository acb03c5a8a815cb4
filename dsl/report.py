"""Checked Graph (or syntax tree) -> the compile table as text or a JSON-able dict; --emit ast/ir text."""

from __future__ import annotations

import dataclasses
from typing import Any

from netc.dsl import ast
from netc.dsl.ir import Graph, Node
from netc.dsl.ops import fmt_shape

_HEADER = ("line", "name", "layer", "output", "params", "FLOPs")


def layer_text(graph: Graph, node: Node) -> str:
    """The statement as written in the source (from its column to the end of the line, without comment)."""
    lines = graph.source.split("\n")
    if not 0 < node.loc.line <= len(lines):
        return node.op
    text = lines[node.loc.line - 1][node.loc.column - 1:]
    text = text.split("#", 1)[0] if '"' not in text else text  # strings may hold '#'
    return " ".join(text.replace("{", " ").split()) or node.op


def rows(graph: Graph) -> list[dict[str, Any]]:
    """One row per expanded layer, residual bodies after their `residual` row; own params and FLOPs."""
    out: list[dict[str, Any]] = []

    def visit(nodes: tuple[Node, ...], depth: int) -> None:
        for node in nodes:
            own_flops = node.flops - sum(child.flops for child in node.body)
            own_params = node.param_count - sum(child.param_count for child in node.body)
            out.append({
                "line": node.loc.line, "name": node.name, "op": node.op, "depth": depth,
                "layer": layer_text(graph, node), "output_shape": list(node.out_shape),
                "params": own_params, "flops": own_flops,
                "attrs": {key: _jsonable(value) for key, value in node.attrs.items()},
                "param_shapes": {key: list(shape) for key, shape in node.params.items()},
            })
            visit(node.body, depth + 1)

    visit(graph.nodes, 0)
    return out


def table_dict(graph: Graph) -> dict[str, Any]:
    """The compile table as plain data (for `netc compile --json`)."""
    train = dataclasses.asdict(graph.train)
    train.pop("locs", None)
    return {
        "net": graph.name, "path": graph.path, "input_shape": list(graph.input_shape),
        "output_shape": list(graph.output_shape), "layers": rows(graph),
        "total_params": graph.param_count, "total_flops": graph.flops, "train": _jsonable(train),
    }


def format_table(graph: Graph) -> str:
    """The compile table as text: one row per expanded layer, then the totals."""
    body = [(str(row["line"]), row["name"], "  " * row["depth"] + row["layer"],
             fmt_shape(tuple(row["output_shape"])), f"{row['params']:,}", f"{row['flops']:,}")
            for row in rows(graph)]
    widths = [max(len(cells[i]) for cells in [_HEADER, *body]) for i in range(len(_HEADER))]
    right = {0, 4, 5}  # numbers align right

    def line(cells: tuple[str, ...]) -> str:
        padded = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                  for i, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    text = [f"net {graph.name} ({graph.path})", line(_HEADER), rule, *(line(cells) for cells in body), rule]
    text.append(f"input {fmt_shape(graph.input_shape)} -> output {fmt_shape(graph.output_shape)}: "
                f"{len(body)} layers, {graph.param_count:,} parameters, "
                f"{graph.flops:,} forward FLOPs per sample")
    return "\n".join(text)


def format_ir(graph: Graph) -> str:
    """Every resolved node with its attributes, parameter shapes and FLOPs, then the train config."""
    out = [f"graph {graph.name} ({graph.path}): input {fmt_shape(graph.input_shape)} -> "
           f"{fmt_shape(graph.output_shape)}"]

    def visit(nodes: tuple[Node, ...], indent: str) -> None:
        for node in nodes:
            shapes = f"{fmt_shape(node.in_shape)} -> {fmt_shape(node.out_shape)}"
            where = f"line {node.loc.line}, column {node.loc.column}"
            out.append(f"{indent}{node.name}: {node.op} {shapes}  ({where})")
            if node.attrs:
                out.append(f"{indent}    attrs: " + ", ".join(f"{k}={v!r}" for k, v in node.attrs.items()))
            if node.params:
                out.append(f"{indent}    params: " + ", ".join(f"{k} {v}" for k, v in node.params.items()))
            out.append(f"{indent}    flops: {node.flops:,}")
            visit(node.body, indent + "    ")

    visit(graph.nodes, "  ")
    train = graph.train
    out.append("train:")
    for field in dataclasses.fields(train):
        if field.name != "locs":
            out.append(f"  {field.name}: {getattr(train, field.name)!r}")
    return "\n".join(out)


def format_ast(program: ast.Program) -> str:
    """The syntax tree as indented text, one node per line with its line:column."""
    out = [f"program {program.path}"]
    for block in program.blocks:
        if isinstance(block, ast.NetBlock):
            out.append(f"  net {block.name}  @{_at(block.loc)}")
            _statements(block.body, "    ", out)
        else:
            out.append(f"  train  @{_at(block.loc)}")
            for setting in block.settings:
                words = " ".join([setting.name, *_args(setting.args)])
                out.append(f"    setting {words}  @{_at(setting.loc)}")
    return "\n".join(out)


def _statements(statements: tuple, indent: str, out: list[str]) -> None:
    for statement in statements:
        if isinstance(statement, ast.Input):
            out.append(f"{indent}input {' '.join(_args(statement.args))}  @{_at(statement.loc)}")
        elif isinstance(statement, ast.Layer):
            out.append(f"{indent}layer {statement.text()}  @{_at(statement.loc)}")
        elif isinstance(statement, ast.Repeat):
            out.append(f"{indent}repeat {statement.count.text()}  @{_at(statement.loc)}")
            _statements(statement.body, indent + "  ", out)
        else:
            out.append(f"{indent}residual  @{_at(statement.loc)}")
            _statements(statement.body, indent + "  ", out)


def _args(args: tuple[ast.Arg, ...]) -> list[str]:
    return [arg.text() for arg in args]


def _at(loc: Any) -> str:
    return f"{loc.line}:{loc.column}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(item) for item in value]
    return value
