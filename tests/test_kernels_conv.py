"""conv2d / conv2d_act kernels vs torch.nn.functional in float64: forward, input, weight, bias gradients."""

from __future__ import annotations

import functools
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import record_launches
from kernel_helpers_conv import EXAMPLE_CONVS, strided_like
from kernel_helpers_conv import compare_with_torch as compare_any

from netc.kernels import conv, conv_weight, gemm, policy
from netc.kernels.conv import conv2d, conv2d_act

# every comparison here: tolerances follow the conv dot precision that ran (tf32 on a GPU by default)
compare_with_torch = functools.partial(compare_any, dot="conv")

# PyTorch warns that its 'same' padding with even kernels copies the input: the reference's concern
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

# id -> (input shape, out_channels, kernel, conv keywords); sizes are odd and off every block size
CASES: dict[str, tuple[tuple[int, ...], int, tuple[int, int], dict]] = {
    "plain": ((2, 3, 9, 11), 5, (3, 3), {}),
    "stride-pad": ((2, 3, 9, 11), 5, (3, 3), {"stride": 2, "padding": 1}),
    "asymmetric": ((2, 3, 10, 9), 5, (3, 2), {"stride": (2, 3), "padding": (1, 2), "dilation": (2, 1)}),
    "dilation": ((1, 2, 11, 9), 3, (3, 3), {"dilation": 2, "padding": 2}),
    "stride-over-kernel": ((2, 2, 11, 9), 3, (2, 2), {"stride": 3}),
    "groups": ((2, 4, 7, 9), 6, (3, 3), {"groups": 2, "padding": 1}),
    "groups-3-stride": ((2, 6, 9, 7), 9, (3, 2), {"groups": 3, "stride": (1, 2), "padding": (0, 1)}),
    "depthwise": ((2, 3, 9, 7), 3, (3, 3), {"groups": 3, "padding": 1}),
    "depthwise-x2": ((2, 3, 9, 7), 6, (3, 3), {"groups": 3, "stride": 2}),
    "batch1-single-channel": ((1, 1, 7, 9), 1, (3, 3), {}),
    "1x1": ((2, 5, 7, 5), 3, (1, 1), {}),
    "same-odd": ((2, 3, 9, 7), 4, (3, 5), {"padding": "same"}),
    "same-even": ((2, 3, 9, 7), 4, (4, 2), {"padding": "same"}),
    "same-even-dilated": ((1, 2, 9, 8), 3, (4, 3), {"padding": "same", "dilation": (1, 2)}),
    "same-dilated-odd-total": ((1, 2, 9, 8), 3, (2, 3), {"padding": "same", "dilation": (3, 1)}),
    "valid": ((2, 3, 9, 7), 4, (4, 3), {"padding": "valid"}),
    "kernel-fills-padded-input": ((2, 2, 5, 4), 3, (7, 6), {"padding": 1}),
    "kernel-fills-input": ((3, 2, 5, 7), 3, (5, 7), {}),
}
CASES["multi-block"] = ((2, 5, 7, 6), 19, (3, 3), {"padding": (0, 1), "stride": (1, 2)})
# run with 16x16x16 tiles, so every grid axis has several programs, every K loop several steps and
# partial last tiles (the interpreter's own tiles cover these small problems in one program)
TILED = ["multi-block", "asymmetric", "groups-3-stride", "depthwise-x2", "same-even", "kernel-fills-input"]
SLOW_TILED_CASES = {
    "wide-groups": ((2, 36, 6, 5), 34, (3, 3), {"groups": 2, "padding": 1}),
    "many-depthwise": ((3, 8, 7, 6), 8, (3, 3), {"groups": 8, "stride": 2, "padding": 1}),
}


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the GPU-sized minimum tiles (every dot side 16) on whatever runs the kernels."""
    monkeypatch.setattr(policy, "conv_tiles", lambda *args: policy.ConvTiles(16, 16, 16, 4, 1))


@pytest.fixture
def three_splits(monkeypatch: pytest.MonkeyPatch, small_tiles: None) -> None:
    """Split every weight-gradient reduction three ways (the interpreter's policy never splits)."""
    monkeypatch.setattr(policy, "split_k", lambda *args, **kwargs: 3)


def _tensors(device: str, shape, out_channels, kernel, kwargs, dtype=torch.float64, bias=True):
    groups = kwargs.get("groups", 1)
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    w = torch.randn(
        out_channels, shape[-3] // groups, *kernel, dtype=dtype, device=device, requires_grad=True
    )
    b = torch.randn(out_channels, dtype=dtype, device=device, requires_grad=True) if bias else None
    return x, w, b


def _check(device: str, case, dtype=torch.float64, bias=True, strided_grad=False) -> None:
    shape, out_channels, kernel, kwargs = case
    tensors = _tensors(device, shape, out_channels, kernel, kwargs, dtype, bias)
    compare_with_torch(
        "conv2d",
        lambda x, w, b: conv2d(x, w, b, **kwargs),
        lambda x, w, b: F.conv2d(x, w, b, **kwargs),
        tensors,
        strided_grad=strided_grad,
    )


@pytest.mark.parametrize("name", CASES)
def test_conv2d_matches_torch(device: str, name: str) -> None:
    _check(device, CASES[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW_TILED_CASES)
def test_conv2d_many_tiles(device: str, name: str, small_tiles: None) -> None:
    _check(device, SLOW_TILED_CASES[name])
    _check(device, SLOW_TILED_CASES[name], torch.float32)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", TILED)
def test_conv2d_small_tiles(device: str, name: str, dtype: torch.dtype, small_tiles: None) -> None:
    _check(device, CASES[name], dtype)


@pytest.mark.parametrize(
    "name, dtype",
    [("groups", torch.float64), ("groups", torch.float32), ("depthwise-x2", torch.float64)],
)
def test_conv2d_split_k_weight_gradient(
    device: str, name: str, dtype: torch.dtype, three_splits: None
) -> None:
    """Each tile's reduction over three CTAs: partials, tickets, the last CTA's sum (and the bias's)."""
    _check(device, CASES[name], dtype)


def test_conv2d_split_k_without_bias_with_activation(device: str, three_splits: None) -> None:
    shape, out_channels, kernel, kwargs = CASES["multi-block"]
    x, w, _ = _tensors(device, shape, out_channels, kernel, kwargs, bias=False)
    compare_with_torch(
        "conv2d_act[leaky_relu]",
        lambda x, w, b: conv2d_act(x, w, b, **kwargs, activation="leaky_relu", slope=-0.3),
        lambda x, w, b: F.leaky_relu(F.conv2d(x, w, b, **kwargs), -0.3),
        [x, w, None],
    )


def test_split_k_is_one_deterministic_launch_that_rezeroes_its_tickets(
    device: str, three_splits: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dW and db in ONE launch; two runs agree bit for bit; every ticket is back at 0 afterwards (what a
    CUDA-graph replay needs), and no split is empty."""
    launches = record_launches(monkeypatch, conv_weight, "_conv2d_bwd_weight_kernel")
    shape, out_channels, kernel, kwargs = CASES["groups"]  # K = 2 * 7 * 9: 8 steps of 16, splits of 3, 3, 2
    x, w, b = _tensors(device, shape, out_channels, kernel, kwargs, dtype=torch.float32)
    x.requires_grad_(False)
    grads = []
    for _ in range(2):
        y = conv2d_act(x, w, b, **kwargs, activation="relu")
        grads.append(torch.autograd.grad(y, [w, b], torch.ones_like(y)))
    assert len(launches) == 2  # weight + bias, no column-sum launch, no input-gradient launch
    grid, args, kwargs_launched = launches[0]
    assert kwargs_launched["SPLIT"] and grid[2] == 2 * 3  # groups x splits
    assert all(torch.equal(first, second) for first, second in zip(*grads, strict=True))
    assert not gemm._TICKETS[x.device].any()


def _random_case(seed: int) -> tuple[tuple[int, ...], int, tuple[int, int], dict]:
    """A random valid conv: groups, per-axis kernel / stride / padding / dilation, odd-ish sizes."""
    rng = random.Random(seed)
    groups = rng.choice([1, 1, 2, 3])
    channels, out_channels = groups * rng.randint(1, 3), groups * rng.randint(1, 3)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    dilation = (rng.randint(1, 2), rng.randint(1, 2))
    if rng.random() < 0.3:
        stride, padding = (1, 1), rng.choice(["same", "valid"])
    else:
        stride, padding = (rng.randint(1, 3), rng.randint(1, 3)), (rng.randint(0, 2), rng.randint(0, 2))
    reach = [d * (k - 1) + 1 for d, k in zip(dilation, kernel, strict=True)]
    size = [r + rng.randint(0, 6) for r in reach]
    kwargs = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    return (rng.randint(1, 3), channels, *size), out_channels, kernel, kwargs


@pytest.mark.parametrize("seed", range(8))
def test_conv2d_random_geometry(device: str, seed: int) -> None:
    _check(device, _random_case(seed), bias=seed % 2 == 0)


@pytest.mark.parametrize("name", ["plain", "groups", "same-even"])
def test_conv2d_without_bias(device: str, name: str) -> None:
    _check(device, CASES[name], bias=False)


@pytest.mark.parametrize("name", ["plain", "asymmetric", "depthwise", "kernel-fills-padded-input"])
def test_conv2d_float32_within_float32_tolerance(device: str, name: str) -> None:
    _check(device, CASES[name], dtype=torch.float32)


def test_conv2d_unbatched_input(device: str) -> None:
    shape, out_channels, kernel, kwargs = CASES["groups"]
    _check(device, (shape[1:], out_channels, kernel, kwargs))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_non_contiguous_everything(device: str, dtype: torch.dtype) -> None:
    """Strided input, weight and output gradient (as from a permute or a slice) go through the index math."""
    x = strided_like((2, 4, 9, 7), dtype, device).requires_grad_()
    w = strided_like((6, 2, 3, 2), dtype, device).requires_grad_()
    b = torch.randn(12, dtype=dtype, device=device)[::2].requires_grad_()
    assert not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous())
    kwargs = {"groups": 2, "stride": (2, 1), "padding": (1, 0), "dilation": (1, 2)}
    compare_with_torch(
        "conv2d",
        lambda x, w, b: conv2d(x, w, b, **kwargs),
        lambda x, w, b: F.conv2d(x, w, b, **kwargs),
        [x, w, b],
        strided_grad=True,
    )


@pytest.mark.parametrize("needs", ["input", "weight", "bias", "weight+bias"])
def test_conv2d_partial_gradients(device: str, needs: str) -> None:
    """Only the requested gradients are computed, and they are still right."""
    x, w, b = _tensors(device, (2, 3, 8, 7), 5, (3, 3), {})
    for tensor, label in ((x, "input"), (w, "weight"), (b, "bias")):
        tensor.requires_grad_(label in needs.split("+"))
    compare_with_torch(
        "conv2d", lambda *t: conv2d(*t, padding=1), lambda *t: F.conv2d(*t, padding=1), [x, w, b]
    )


_REFERENCE_ACTIVATIONS = {
    None: lambda z, slope: z,
    "relu": lambda z, slope: F.relu(z),
    "tanh": lambda z, slope: torch.tanh(z),
    "sigmoid": lambda z, slope: torch.sigmoid(z),
    "leaky_relu": lambda z, slope: F.leaky_relu(z, slope),
}


@pytest.mark.parametrize("activation", list(_REFERENCE_ACTIVATIONS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_conv2d_act_matches_torch(device: str, activation: str | None, dtype: torch.dtype) -> None:
    shape, out_channels, kernel, kwargs = CASES["groups-3-stride"]
    tensors = _tensors(device, shape, out_channels, kernel, kwargs, dtype)
    slope, act = 0.2, _REFERENCE_ACTIVATIONS[activation]
    compare_with_torch(
        f"conv2d_act[{activation}]",
        lambda x, w, b: conv2d_act(x, w, b, **kwargs, activation=activation, slope=slope),
        lambda x, w, b: act(F.conv2d(x, w, b, **kwargs), slope),
        tensors,
    )


@pytest.mark.parametrize("activation, slope", [("sigmoid", 0.0), ("leaky_relu", 0.1), ("leaky_relu", -0.4)])
@pytest.mark.parametrize("name", ["multi-block", "groups-3-stride"])
def test_conv2d_act_small_tiles(
    device: str, name: str, activation: str, slope: float, small_tiles: None
) -> None:
    """The backward kernels read the saved output (or pre-activation) at the right place on every tile."""
    shape, out_channels, kernel, kwargs = CASES[name]
    tensors = _tensors(device, shape, out_channels, kernel, kwargs)
    act = _REFERENCE_ACTIVATIONS[activation]
    compare_with_torch(
        f"conv2d_act[{activation}]",
        lambda x, w, b: conv2d_act(x, w, b, **kwargs, activation=activation, slope=slope),
        lambda x, w, b: act(F.conv2d(x, w, b, **kwargs), slope),
        tensors,
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("slope", [-0.5, 0.0, -1.5])
def test_conv2d_act_leaky_relu_any_slope(device: str, slope: float, dtype: torch.dtype) -> None:
    """A negative slope makes y > 0 on both sides of zero, so the backward must use the pre-activation."""
    shape, out_channels, kernel, kwargs = CASES["asymmetric"]
    compare_with_torch(
        "conv2d_act[leaky_relu]",
        lambda x, w, b: conv2d_act(x, w, b, **kwargs, activation="leaky_relu", slope=slope),
        lambda x, w, b: F.leaky_relu(F.conv2d(x, w, b, **kwargs), slope),
        _tensors(device, shape, out_channels, kernel, kwargs, dtype),
    )


@pytest.mark.parametrize("activation, slope", [("relu", 0.0), ("tanh", 0.0), ("leaky_relu", -0.3)])
def test_conv2d_act_without_bias_unbatched_same(device: str, activation: str, slope: float) -> None:
    """bias=None with an activation (the fused epilogue without its bias load), padding='same',
    an unbatched input: forward, input and weight gradients."""
    x, w, _ = _tensors(device, (3, 7, 9), 4, (3, 2), {}, bias=False)
    kwargs = {"padding": "same", "dilation": (1, 2)}
    act = _REFERENCE_ACTIVATIONS[activation]
    compare_with_torch(
        f"conv2d_act[{activation}]",
        lambda x, w, b: conv2d_act(x, w, b, **kwargs, activation=activation, slope=slope),
        lambda x, w, b: act(F.conv2d(x, w, b, **kwargs), slope),
        [x, w, None],
    )


def test_conv2d_act_positional_signature(device: str) -> None:
    """conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation, slope)."""
    x, w, b = _tensors(device, (1, 2, 7, 6), 3, (2, 3), {})
    compare_with_torch(
        "conv2d_act[leaky_relu]",
        lambda x, w, b: conv2d_act(x, w, b, (1, 2), (1, 0), (2, 1), 1, "leaky_relu", 0.3),
        lambda x, w, b: F.leaky_relu(F.conv2d(x, w, b, (1, 2), (1, 0), (2, 1), 1), 0.3),
        [x, w, b],
    )


def test_unsupported_inputs_raise(device: str) -> None:
    x = torch.randn(1, 2, 5, 5, device=device)
    w = torch.randn(3, 2, 3, 3, device=device)
    with pytest.raises(NotImplementedError, match="float16"):
        conv2d(x.half(), w.half())
    with pytest.raises(NotImplementedError, match="mixed"):
        conv2d(x, w.double())
    with pytest.raises(NotImplementedError, match="softplus"):  # gelu and silu joined the epilogues
        conv2d_act(x, w, activation="softplus")


@pytest.mark.parametrize(
    "kwargs, weight_shape, match",
    [
        ({"padding": "same", "stride": 2}, (3, 2, 3, 3), "stride 1"),
        ({"padding": "full"}, (3, 2, 3, 3), "padding"),
        ({"groups": 2}, (3, 1, 3, 3), "groups"),
        ({}, (3, 2, 7, 3), "does not fit"),
        ({"stride": 0}, (3, 2, 3, 3), ">= 1"),
    ],
)
def test_bad_arguments_raise_value_error(device: str, kwargs: dict, weight_shape, match: str) -> None:
    x = torch.randn(1, 2, 5, 5, device=device)
    with pytest.raises(ValueError, match=match):
        conv2d(x, torch.randn(*weight_shape, device=device), **kwargs)


def test_dot_precision_follows_the_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 dots run tf32 on CUDA while cudnn.allow_tf32 is set (PyTorch's default), else ieee;
    the interpreter is always ieee and float64 never uses tl.dot."""
    gemm, cpu, cuda = (40, 20, 30), torch.device("cpu"), torch.device("cuda")
    assert conv._dot_args(torch.float32, cpu, "fwd", gemm)["PRECISION"] == "ieee"
    assert conv._dot_args(torch.float64, cpu, "fwd", gemm)["USE_DOT"] is False  # float64: sums of products
    interpreted = conv_weight.launch_settings(torch.float32, cuda, 10, 25, 900, 1)
    assert interpreted["PRECISION"] == "ieee"
    monkeypatch.setattr(policy, "interpreting", lambda: False)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert conv._dot_args(torch.float32, cuda, "bwd_input", gemm)["PRECISION"] == "tf32"
    assert conv_weight.launch_settings(torch.float32, cuda, 10, 25, 900, 1)["PRECISION"] == "tf32"
    assert conv._dot_args(torch.float64, cuda, "fwd", gemm)["PRECISION"] == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert conv._dot_args(torch.float32, cuda, "fwd", gemm)["PRECISION"] == "ieee"


def test_lenet_weight_gradient_splits_across_the_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """LeNet's first conv (10 x 25 output, 57,600-long reduction at batch 100) fills the SMs on the GPU;
    the interpreter (programs run one after another) never splits."""
    args = conv_weight.launch_settings(torch.float32, torch.device("cpu"), 10, 25, 57_600, 1)
    assert args["splits"] == 1
    monkeypatch.setattr(policy, "interpreting", lambda: False)
    args = conv_weight.launch_settings(torch.float32, torch.device("cuda"), 10, 25, 57_600, 1)
    assert (args["BLOCK_M"], args["BLOCK_N"]) == (16, 32)  # one output tile
    assert args["splits"] == policy.SM_COUNT


@pytest.mark.parametrize("interpreted", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_launch_configs_fit_triton(
    monkeypatch: pytest.MonkeyPatch, interpreted: bool, dtype: torch.dtype
) -> None:
    """Power-of-two tiles, dot sides >= 16, and no block over Triton's 2**20-element limit."""
    monkeypatch.setattr(policy, "interpreting", lambda: interpreted)
    for kind in policy.CONV_KINDS:
        for sizes in [(1, 1, 1), (50176, 6, 25), (6, 25, 50176), (10**6, 512, 4608), (17, 300, 9)]:
            cfg = policy.conv_tiles(kind, dtype, sizes)
            sides = (cfg.block_m, cfg.block_n, cfg.block_k)
            assert all(side & (side - 1) == 0 for side in sides), (kind, sizes, cfg)
            if dtype == torch.float32:
                assert min(sides) >= 16, (kind, sizes, cfg)
                assert max(cfg.block_m * cfg.block_k, cfg.block_k * cfg.block_n) <= 1 << 20
            else:
                assert cfg.block_m * cfg.block_k * cfg.block_n <= 1 << 20, (kind, sizes, cfg)


@pytest.mark.slow
def test_kernels_compile_for_a_cuda_target() -> None:
    """Every conv and pool kernel variant compiles for sm_90 with its GPU launch config (no GPU needed),
    the convolutions of the example nets at tf32 and ieee and their cross-entropy, without a spilled byte."""
    helper = Path(__file__).with_name("kernel_helpers_conv.py")
    env = dict(
        os.environ, TRITON_INTERPRET="0"
    )  # a compiler run: the kernels must not bind to the interpreter
    result = subprocess.run(
        [sys.executable, str(helper)], env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-4000:]
    compiled = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(compiled) == 3 * len(EXAMPLE_CONVS) + 8 + 8  # fp32 at 2 precisions, fp64; pool; loss
    spilling = {name: spilled for name, (_registers, spilled) in compiled.items() if spilled}
    assert not spilling, f"spilled bytes: {spilling}"


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "leaky_relu"])
def test_fused_activation_propagates_nan_like_the_unfused_one(activation: str, device: str) -> None:
    """The epilogue uses the elementwise kernels' activation code, so a NaN stays NaN through a
    fused relu exactly as through torch.relu (a `z > 0 ? z : 0` epilogue would turn it into 0)."""
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64, device=device)
    x[0, 1, 2, 3] = float("nan")
    weight = torch.randn(5, 3, 3, 3, dtype=torch.float64, device=device)
    bias = torch.randn(5, dtype=torch.float64, device=device)
    fused = conv2d_act(x, weight, bias, activation=activation)
    expected = getattr(F, activation)(F.conv2d(x, weight, bias))
    assert expected.isnan().any()
    assert torch.equal(fused.isnan(), expected.isnan())
    torch.testing.assert_close(fused, expected, rtol=1e-12, atol=1e-12, equal_nan=True)
