"""Sizes no machine can run -> checker errors; a net's memory estimate -> refused before allocating."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from netc.dsl import DataError, NetError, parse
from netc.dsl.limits import (
    MAX_LAYERS, estimate_memory, expanded_layers, format_bytes, layer_count_problem, node_problem,
)
from netc.runtime import memory

LENET = "examples/lenet.net"


def test_integers_beyond_int64_are_refused_where_written() -> None:
    with pytest.raises(NetError) as caught:
        parse("net a {\n    input [784]\n    linear 9223372036854775808\n}\n")
    assert (caught.value.line, caught.value.column) == (3, 12)
    assert caught.value.message == ("'out_features' is too large: integers must be at most "
                                    "9,223,372,036,854,775,807 (2**63 - 1), got 9223372036854775808")


def test_tensors_beyond_pytorchs_limits_are_named() -> None:
    assert node_problem((10,), {"weight": (10, 784)}) is None
    assert node_problem((3_000_000_000,), {}) == (
        "the output [3000000000] has a dimension of 3,000,000,000; netc allows at most 2,147,483,647 "
        "(2**31 - 1) per dimension")
    huge = (2_000_000_000,) * 3
    assert node_problem((10,), {"weight": huge}) == (
        f"parameter 'weight' {list(huge)} would hold about 10^27 values; a tensor "
        "holds at most 9,223,372,036,854,775,807 (2**63 - 1)")


def test_layers_are_counted_through_every_block_without_expanding() -> None:
    from netc.dsl.parser import parse_program

    inner = "repeat 1000 {\n residual {\n repeat 1000 {\n relu\n }\n }\n }\n"
    program = parse_program(f"net a {{\n input [784]\n repeat 1000 {{\n {inner} }}\n linear 10\n}}\n")
    body = program.blocks[0].body
    assert expanded_layers(body) == 1000 * 1000 * (1000 + 1) + 1  # each residual adds its `add`
    statement, message = layer_count_problem(body)
    assert statement.loc.line == 4  # the innermost block too large on its own: the middle repeat
    assert message == ("this `repeat` makes the net 1,001,000 layers long after expansion; netc allows at "
                       f"most {MAX_LAYERS:,} (every repeat, residual and parallel counted)")
    branch = " branch {\n repeat 60000 {\n relu\n }\n }\n"
    parallel = parse_program(f"net a {{\n input [784]\n parallel add {{\n{branch}{branch} }}\n}}\n")
    assert expanded_layers(parallel.blocks[0].body) == 120_001  # both branches and the merge
    assert layer_count_problem(parallel.blocks[0].body)[0].loc.line == 3
    many = parse_program("net a {\n input [784]\n" + " relu\n" * 10 + " repeat 99995 {\n relu\n }\n}\n")
    statement, message = layer_count_problem(many.blocks[0].body)
    assert statement.loc.line == 13 and "makes the net 100,005 layers long" in message


@pytest.mark.parametrize(("source", "where", "message"), [
    ("    lstm 10 layers=1000000", (3, 20), "'layers' must be at most 100, got 1000000"),
    ("    linear 3000000000", (3, 5), "the output [28, 3000000000] has a dimension of 3,000,000,000; netc "
     "allows at most 2,147,483,647 (2**31 - 1) per dimension"),
    ("    repeat 1000 {\n    residual {\n    repeat 1000 {\n    relu\n}\n}\n}", (3, 5),
     "this `repeat` makes the net 1,001,000 layers long after expansion; netc allows at most 100,000 (every "
     "repeat, residual and parallel counted)"),
])
def test_the_checker_rejects_what_cannot_exist(source: str, where: tuple[int, int], message: str) -> None:
    with pytest.raises(NetError) as caught:
        parse(f"net a {{\n    input [28, 28]\n{source}\n    linear 10\n}}\n")
    assert ((caught.value.line, caught.value.column), caught.value.message) == (where, message)


def test_an_input_dimension_beyond_the_limit_is_refused() -> None:
    expected = "the input shape \\[99999999999, 1\\] has a dimension of 99,999,999,999"
    with pytest.raises(NetError, match=expected):
        parse("net a {\n    input [99999999999, 1]\n    flatten\n    linear 10\n}\n")


def test_compile_prints_the_memory_estimate_and_its_table_is_linear() -> None:
    from netc.dsl import report

    graph = parse(LENET)
    assert format_bytes(estimate_memory(graph, 100, "sgd", 0.9).total) in report.format_table(graph)
    assert "memory to train with batch 100 (estimate): 233 MB (parameters 291 KB" in report.format_table(
        graph)
    assert report.table_dict(graph)["memory"]["total"] == estimate_memory(graph, 100, "sgd", 0.9).total
    big = parse("net big {\n    input [784]\n" + "    relu\n" * 3000 + "    linear 10\n}\n")
    report._source_lines.cache_clear()
    assert len(report.rows(big)) == 3001
    assert report._source_lines.cache_info().misses == 1  # the source is split once, not once per row


def test_memory_estimate_of_lenet_counts_every_part() -> None:
    graph = parse(LENET)
    estimate = estimate_memory(graph, 100, "sgd", momentum=0.9)
    params = graph.param_count * 4
    assert (estimate.parameters, estimate.gradients, estimate.optimizer) == (params, params, params)
    outputs = 784 + sum(torch.Size(node.out_shape).numel() for node in graph.nodes)
    assert estimate.activations == 100 * outputs * 4 * 2
    assert estimate.data == 70_000 * (784 * 4 + 8)
    assert estimate_memory(graph, 100, "adam").optimizer == 2 * params
    assert estimate_memory(graph, 100, "sgd", momentum=0).optimizer == 0
    assert [format_bytes(n) for n in (999, 1234, 3_100_000_000_000, 23 * 10**9)] == [
        "999 bytes", "1.2 KB", "3.1 TB", "23.0 GB"]


def test_a_net_that_cannot_fit_is_refused_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = parse("net big {\n    input [784]\n    linear 1000000000\n    relu\n    linear 10\n}\n")
    monkeypatch.setattr(memory, "_host_available", lambda: 23 * 10**9)
    expected = ("big with batch 64 needs about 10.6 TB \\(parameters 3.2 TB, gradients 3.2 TB, optimizer "
                "state 3.2 TB, .*\\); cpu has 23.0 GB available: use a smaller batch")
    with pytest.raises(DataError, match=expected):
        memory.check_fits(graph, 64, "cpu", "sgd", 0.9)
    small = parse(LENET)
    assert memory.check_fits(small, 64, "cpu", "sgd", 0.9).total < 23 * 10**9
    with pytest.raises(DataError, match="with batch 100,000,000 needs about .* TB"):
        memory.check_fits(small, 100_000_000, "cpu")


@pytest.mark.parametrize("command", ["train", "bench", "check"])
def test_train_bench_and_check_refuse_before_allocating(tmp_path: Path, command: str) -> None:
    from test_cli_train import netc

    net = tmp_path / "big.net"
    net.write_text("net big {\n    input [784]\n    linear 1000000000\n    relu\n    linear 10\n}\n")
    out = ["--out", str(tmp_path / "run")] if command == "train" else []
    result = netc(command, str(net), "--device", "cpu", *out)
    assert result.returncode == 1
    assert f"error: {net}: big with batch " in result.stderr and " needs about " in result.stderr
    assert not (tmp_path / "run").exists()
