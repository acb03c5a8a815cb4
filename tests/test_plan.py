"""Kernel plan and Triton listing (`netc compile --emit plan|triton`) for lenet and a residual/dropout net."""

from __future__ import annotations

import importlib
import math
from pathlib import Path

import pytest
import torch

import netc
from netc.runtime import cli
from netc.runtime.plan import format_plan, format_triton, is_jit, trace

ROOT = Path(__file__).resolve().parents[1]
LENET = str(ROOT / "examples" / "lenet.net")

RESIDUAL_NET = """
net res {
    input [784]
    linear 16
    dropout 0.5
    residual {
        linear 16
        relu
    }
    tanh
    linear 10
}
train {
    batch 8
}
"""


def test_lenet_plan_launches_fused_kernels_with_consistent_grids() -> None:
    graph = netc.parse(LENET)
    launches, kernels = trace(graph)  # the train block's batch: 100
    by_layer: dict[str, list[str]] = {}
    for launch in launches:
        by_layer.setdefault(f"{launch.layer} {launch.phase}", []).append(launch.kernel)
    assert by_layer["0 forward"] == ["_conv2d_fwd_kernel"]  # conv + relu in one launch
    # the network input needs no gradient: no input-gradient convolution for layer 0; the fused
    # relu's derivative is applied by conv kernels (in their own epilogue or a conv-family pass)
    assert "_conv2d_bwd_weight_kernel" in by_layer["0 backward"]
    assert "_conv2d_bwd_input_kernel" not in by_layer["0 backward"]
    assert all(name.startswith("_conv2d_") for name in by_layer["0 backward"])
    assert "1 forward" not in by_layer and "1 backward" not in by_layer  # relu fused into layer 0
    assert by_layer["2 forward"] == ["_max_pool2d_fwd_kernel"]
    assert "3 forward" not in by_layer  # flatten is a view
    assert by_layer["4 forward"] == ["_gemm_kernel"]
    # dL/dx and dL/dW (with the bias gradient and the relu's derivative fused in)
    assert by_layer["4 backward"] == ["_gemm_kernel", "_gemm_kernel"]
    assert by_layer["loss forward"] == ["_cross_entropy_fwd_kernel"]
    assert "netc.kernels.conv._conv2d_fwd_kernel" in kernels
    assert "netc.kernels.activation._activation_fwd_kernel" not in kernels  # both relus are fused away

    conv = next(x for x in launches if x.kernel == "_conv2d_fwd_kernel")
    rows = 100 * 24 * 24  # N * OH * OW output pixels
    assert conv.grid == (math.ceil(rows / conv.blocks["BLOCK_M"]), math.ceil(10 / conv.blocks["BLOCK_N"]), 1)
    assert conv.flops == 2 * rows * 10 * 25
    assert conv.bytes == 4 * (100 * 28 * 28 + 10 * 25 + 10 + 100 * 10 * 24 * 24)
    linear = next(x for x in launches if x.kernel == "_gemm_kernel" and x.layer == "4")
    assert linear.flops == 2 * 100 * 1440 * 50
    blocks = linear.blocks
    assert linear.grid[0] == math.ceil(100 / blocks["BLOCK_M"]) * math.ceil(50 / blocks["BLOCK_N"])
    assert linear.grid[1] > 1  # split-K: 2 output tiles over a 1440-long reduction
    assert {"num_warps", "num_stages"} <= set(conv.blocks)


def test_plan_follows_the_target_launch_settings() -> None:
    graph = netc.parse(LENET)
    gpu = {x.kernel: x.blocks for x in trace(graph, 10, "gpu")[0]}
    interpreter = {x.kernel: x.blocks for x in trace(graph, 10, "interpreter")[0]}
    assert gpu["_gemm_kernel"]["BLOCK_K"] != interpreter["_gemm_kernel"]["BLOCK_K"]
    config = importlib.import_module("netc.kernels.config")
    policy = importlib.import_module("netc.kernels.policy")
    here = interpreter if config.interpreting() else gpu  # the settings come from the policy module
    assert {k: here["_gemm_kernel"][k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")} == {
        k: policy.gemm_config(torch.float32)[k] for k in ("BLOCK_M", "BLOCK_N", "BLOCK_K")}
    with pytest.raises(ValueError, match="target"):
        trace(graph, 10, "tpu")


def test_emit_plan_and_triton_for_lenet(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["compile", LENET, "--emit", "plan"]) == 0
    plan = capsys.readouterr().out
    assert "batch 100" in plan and "0 conv2d + 1 relu -> conv2d_act(relu)" in plan
    assert "4 linear + 5 relu -> linear_act(relu)" in plan
    assert "fused into layer 0's epilogue" in plan and "a view: no launch" in plan
    assert "_conv2d_fwd_kernel" in plan and "grid=(" in plan and "BLOCK_M=" in plan and "MFLOP" in plan

    assert cli.main(["compile", LENET, "--emit", "triton"]) == 0
    source = capsys.readouterr().out
    for kernel in ("_conv2d_fwd_kernel", "_conv2d_bwd_weight_kernel", "_max_pool2d_fwd_kernel",
                   "_gemm_kernel", "_cross_entropy_fwd_kernel"):
        assert f"def {kernel}(" in source
    assert source.count("@triton.jit") >= 10
    assert "def _activation_fwd_kernel(" not in source  # fused: never launched
    assert "def apply_activation(" in source  # the epilogue helper linear's GEMM calls
    compile(source, "<emitted>", "exec")  # the listing is valid Python


def test_plan_of_residual_and_dropout_net() -> None:
    graph = netc.parse(RESIDUAL_NET)
    text = format_plan(graph)
    assert "batch 8" in text and "2.0 linear + 2.1 relu -> linear_act(relu)" in text
    assert "x + body(x)" in text
    launches, _ = trace(graph)
    dropout = [x for x in launches if x.layer == "1"]
    assert [x.kernel for x in dropout] == ["_dropout_kernel", "_dropout_kernel"]  # training mask, both ways
    assert [x.phase for x in dropout] == ["forward", "backward"]
    tanh = [x.kernel for x in launches if x.layer == "3"]
    assert tanh == ["_activation_fwd_kernel", "_activation_bwd_kernel"]  # after x + body(x): not fused
    listing = format_triton(graph)
    assert "def _dropout_kernel(" in listing and "def _conv2d_fwd_kernel(" not in listing


def test_is_jit_tells_kernels_from_plain_functions() -> None:
    activation = importlib.import_module("netc.kernels.activation")
    assert is_jit(activation._activation_fwd_kernel) and not is_jit(activation.relu)


def test_trace_leaves_rng_and_launching_as_they_were(device: str) -> None:
    graph = netc.parse(RESIDUAL_NET)
    state = torch.get_rng_state()
    trace(graph, 4)
    assert torch.equal(torch.get_rng_state(), state)
    activation = importlib.import_module("netc.kernels.activation")
    x = torch.randn(37, device=device)
    torch.testing.assert_close(activation.relu(x), torch.relu(x))  # kernels launch for real again


def test_listing_keeps_same_named_helpers_of_different_modules() -> None:
    graph = netc.parse("net t {\n    input [28, 28]\n    rnn 16\n    tanh\n    linear 10\n}\n")
    headers = [line for line in format_triton(graph, 4).splitlines() if line.startswith("# ---- ")]
    assert any(".recurrent" in line and "._tanh " in line for line in headers)  # the cell's tanh
    assert any("netc.kernels.activation._tanh " in line for line in headers)  # the tanh layer's
    assert len(headers) == len(set(headers))
