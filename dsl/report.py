"""Checked Graph (or syntax tree) -> the compile table as text or a JSON-able dict; --emit ast/ir text."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from netc.dsl import ast
from netc.dsl.ir import Graph, Node
from netc.dsl.limits import MemoryEstimate, estimate_memory, format_bytes
from netc.dsl.ops import fmt_shape

_HEADER = ("line", "name", "layer", "output", "params", "FLOPs")


def layer_text(graph: Graph, node: Node) -> str:
    """The statement as written in the source (from its column to the end of the line, without comment)."""
    lines = _source_lines(graph.source)  # split once per source: 20,000 rows stay linear
    if not 0 < node.loc.line <= len(lines):
        return node.op
    text = lines[node.loc.line - 1][node.loc.column - 1:]
    text = text.split("#", 1)[0] if '"' not in text else text  # strings may hold '#'
    return " ".join(text.replace("{", " ").split()) or node.op


@functools.lru_cache(maxsize=4)
def _source_lines(source: str) -> tuple[str, ...]:
    return tuple(source.split("\n"))


def name_key(name: str) -> tuple[int, ...]:
    """Statement order: a block's merge node ("3") before its body ("3.0", "3.1.0"), as written."""
    return tuple(int(part) for part in name.split("."))


def _depth(name: str, names: set[str]) -> int:
    """How many blocks (residual, parallel) enclose the node: its ancestors that are nodes themselves."""
    parts = name.split(".")
    return sum(".".join(parts[:end]) in names for end in range(1, len(parts)))


def rows(graph: Graph) -> list[dict[str, Any]]:
    """One row per node in statement order (a block's merge row, then its body); own params and FLOPs."""
    names = {node.name for node in graph.nodes}
    out: list[dict[str, Any]] = []
    for node in sorted(graph.nodes, key=lambda item: name_key(item.name)):
        out.append({
            "line": node.loc.line, "name": node.name, "op": node.op, "depth": _depth(node.name, names),
            "layer": layer_text(graph, node), "inputs": list(node.inputs),
            "output_shape": list(node.out_shape), "params": node.param_count,
            "buffers": sum(_numel(shape) for shape in node.buffers.values()), "flops": node.flops,
            "attrs": {key: _jsonable(value) for key, value in node.attrs.items()},
            "param_shapes": {key: list(shape) for key, shape in node.params.items()},
            "buffer_shapes": {key: list(shape) for key, shape in node.buffers.items()},
        })
    return out


def table_dict(graph: Graph) -> dict[str, Any]:
    """The compile table as plain data (for `netc compile --json`)."""
    train = dataclasses.asdict(graph.train)
    train.pop("locs", None)
    return {
        "net": graph.name, "path": graph.path, "input_shape": list(graph.input_shape),
        "output_shape": list(graph.output_shape), "layers": rows(graph),
        "total_params": graph.param_count, "total_buffers": _buffer_count(graph),
        "total_flops": graph.flops, "train": _jsonable(train),
        "memory": _memory(graph),
    }


def _memory(graph: Graph) -> dict[str, int]:
    """Bytes of one training step at the file's batch, by kind (an estimate)."""
    estimate = _estimate(graph)
    return {"batch": graph.train.batch, "total": estimate.total, **dataclasses.asdict(estimate)}


def _estimate(graph: Graph) -> MemoryEstimate:
    optimizer = graph.train.optimizer
    return estimate_memory(graph, graph.train.batch, optimizer.name, optimizer.momentum)


def format_table(graph: Graph) -> str:
    """The compile table as text: one row per expanded layer, then the totals.

    A `buffers` column (running statistics) appears only for nets that have buffers.
    """
    with_buffers = _buffer_count(graph) > 0
    header = _HEADER[:5] + ("buffers",) + _HEADER[5:] if with_buffers else _HEADER
    body = []
    for row in rows(graph):
        cells = [str(row["line"]), row["name"], "  " * row["depth"] + row["layer"],
                 fmt_shape(tuple(row["output_shape"])), f"{row['params']:,}", f"{row['flops']:,}"]
        if with_buffers:
            cells.insert(5, f"{row['buffers']:,}")
        body.append(tuple(cells))
    widths = [max(len(cells[i]) for cells in [header, *body]) for i in range(len(header))]
    right = {0, *range(4, len(header))}  # numbers align right

    def line(cells: tuple[str, ...]) -> str:
        padded = [cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
                  for i, cell in enumerate(cells)]
        return "  ".join(padded).rstrip()

    rule = "-" * len(line(tuple("-" * w for w in widths)))
    text = [f"net {graph.name} ({graph.path})", line(header), rule, *(line(cells) for cells in body), rule]
    buffers = f", {_buffer_count(graph):,} buffer values" if with_buffers else ""
    text.append(f"input {fmt_shape(graph.input_shape)} -> output {fmt_shape(graph.output_shape)}: "
                f"{len(body)} layers, {graph.param_count:,} parameters{buffers}, "
                f"{graph.flops:,} forward FLOPs per sample")
    memory = _estimate(graph)
    text.append(f"memory to train with batch {graph.train.batch} (estimate): {format_bytes(memory.total)} "
                f"({memory.describe()})")
    return "\n".join(text)


def format_ir(graph: Graph, title: str = "") -> str:
    """The DAG: each node as `name = op(inputs)`, its shapes, attributes, state, FLOPs; then the train config.

    `title` replaces the heading and leaves out the train config (the IR after a pass).
    """
    out = [title or f"graph {graph.name} ({graph.path}): input {fmt_shape(graph.input_shape)} -> "
           f"{fmt_shape(graph.output_shape)}, output node {graph.output}"]
    for node in graph.nodes:
        shapes = " + ".join(fmt_shape(shape) for shape in node.in_shapes) + f" -> {fmt_shape(node.out_shape)}"
        where = f"line {node.loc.line}, column {node.loc.column}"
        out.append(f"  {node.name} = {node.op}({', '.join(node.inputs)})  {shapes}  ({where})")
        if node.attrs:
            out.append("      attrs: " + ", ".join(f"{k}={v!r}" for k, v in node.attrs.items()))
        out.extend(f"      {item.describe()}" for item in node.state)
        out.append(f"      flops: {node.flops:,}")
    if title:
        return "\n".join(out)
    train = graph.train
    out.append("train:")
    for field in dataclasses.fields(train):
        if field.name != "locs":
            out.append(f"  {field.name}: {getattr(train, field.name)!r}")
    return "\n".join(out)


def _buffer_count(graph: Graph) -> int:
    return sum(_numel(shape) for node in graph.nodes for shape in node.buffers.values())


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


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
        elif isinstance(statement, ast.Parallel):
            out.append(f"{indent}parallel {statement.merge}  @{_at(statement.loc)}")
            for branch in statement.branches:
                out.append(f"{indent}  branch  @{_at(branch.loc)}")
                _statements(branch.body, indent + "    ", out)
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
