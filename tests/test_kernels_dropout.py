"""dropout kernel: kept fraction and 1/(1-p) scale (binomial bounds), backward mask, seeds, edge cases."""

from __future__ import annotations

import importlib
import math

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import record_launches

from netc.kernels.dropout import dropout, launch_config

N = 20011  # odd, and over one interpreter program (16384) so two programs draw masks


@pytest.mark.parametrize("p", [0.1, 0.5, 0.83])
def test_kept_fraction_and_scale(p: float, device: str) -> None:
    x = torch.randn(N, dtype=torch.float64, device=device)
    y = dropout(x, p)
    kept = y != 0
    # binomial(N, 1 - p): 6 standard deviations
    sigma = math.sqrt(N * p * (1 - p))
    assert abs(kept.sum().item() - N * (1 - p)) < 6 * sigma
    torch.testing.assert_close(y[kept], x[kept] / (1 - p), rtol=1e-15, atol=0)


def test_programs_draw_different_masks(device: str) -> None:
    """The second program's mask is not a copy of the first's (offsets feed the generator)."""
    block = launch_config()["BLOCK"]
    kept = dropout(torch.ones(2 * block, device=device), 0.5) != 0
    assert not torch.equal(kept[:block], kept[block:])
    assert not torch.equal(kept[:-1], kept[1:])


def test_mask_has_no_positional_pattern(device: str) -> None:
    """Each quarter keeps about half, and neighbours agree about half the time (a striped or
    block-wise mask with the right overall fraction fails): binomial bounds at 6 sigma."""
    kept = (dropout(torch.ones(N, dtype=torch.float64, device=device), 0.5) != 0).double()
    quarter = N // 4
    for chunk in kept[: 4 * quarter].view(4, quarter):
        assert abs(chunk.sum().item() - quarter / 2) < 6 * math.sqrt(quarter / 4)
    for lag in (1, 2, 7):
        agree = (kept[lag:] == kept[:-lag]).sum().item()
        pairs = N - lag
        assert abs(agree - pairs / 2) < 6 * math.sqrt(pairs / 4), f"lag {lag}: {agree} of {pairs}"


@pytest.mark.parametrize("shape", [(7, 13), (3, 5, 11)], ids=str)
def test_backward_reuses_forward_mask(shape: tuple[int, ...], device: str) -> None:
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    y = dropout(x, 0.4)
    grad = torch.randn_like(y)
    (dx,) = torch.autograd.grad(y, x, grad)
    mask = (y != 0).double()
    torch.testing.assert_close(dx, grad * mask / 0.6, rtol=1e-15, atol=0)
    assert 0 < mask.mean().item() < 1


def test_reproducible_under_manual_seed(device: str) -> None:
    x = torch.randn(501, device=device)
    torch.manual_seed(7)
    first = dropout(x, 0.5)
    torch.manual_seed(7)
    again = dropout(x, 0.5)
    assert torch.equal(first, again)
    assert not torch.equal(dropout(x, 0.5), first)  # the generator moved on: a new mask


def test_seed_keyword(device: str) -> None:
    x = torch.randn(501, device=device)
    assert torch.equal(dropout(x, 0.3, seed=11), dropout(x, 0.3, seed=11))
    assert not torch.equal(dropout(x, 0.3, seed=11), dropout(x, 0.3, seed=12))
    with pytest.raises(ValueError, match="seed"):
        dropout(x, 0.3, seed=-1)


def test_non_contiguous_input_same_mask_as_contiguous(device: str) -> None:
    base = torch.randn(13, 18, dtype=torch.float64, device=device)
    x = base.t()[::2]  # (9, 13), not contiguous
    y = dropout(x, 0.5, seed=3)
    assert torch.equal(y, dropout(x.contiguous(), 0.5, seed=3))
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] * 2, rtol=1e-15, atol=0)
    # the backward with a strided dL/dy (as a transpose hands it over) applies the same mask
    x = x.detach().requires_grad_(True)
    grad = torch.randn(13, 9, dtype=torch.float64, device=device).t()
    (dx,) = torch.autograd.grad(dropout(x, 0.5, seed=3), x, grad)
    torch.testing.assert_close(dx, grad * kept * 2, rtol=1e-15, atol=0)


def test_float32_scale(device: str) -> None:
    x = torch.randn(999, dtype=torch.float32, device=device)
    y = dropout(x, 0.3)
    kept = y != 0
    torch.testing.assert_close(y[kept], x[kept] / 0.7, rtol=2e-7, atol=0)


def test_identity_when_not_training_or_p_zero(device: str) -> None:
    x = torch.randn(37, device=device)
    assert torch.equal(dropout(x, 0.5, training=False), x)
    assert torch.equal(dropout(x, 0.0), x)


def test_p_one_gives_zeros_and_nan_stays_nan_like_torch(device: str) -> None:
    x = torch.randn(41, dtype=torch.float64, device=device, requires_grad=True)
    y = dropout(x, 1.0)
    assert torch.equal(y, F.dropout(x, 1.0))
    assert torch.equal(y, torch.zeros_like(y))
    (dx,) = torch.autograd.grad(y.sum(), x)
    assert torch.equal(dx, torch.zeros_like(dx))
    nan = torch.full((64,), float("nan"), device=device)
    assert torch.isnan(dropout(nan, 0.5)).all()  # x * 0 keeps NaN, as torch's multiply does
    assert torch.isnan(F.dropout(nan, 0.5)).all()


def test_rejections(device: str) -> None:
    x = torch.randn(5, device=device)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            dropout(x, p)
    with pytest.raises(NotImplementedError, match="inplace"):
        dropout(x, 0.5, inplace=True)
    with pytest.raises(NotImplementedError, match="float16"):
        dropout(x.half(), 0.5)


def test_successive_calls_draw_new_masks_from_identical_launch_arguments(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    """What a CUDA graph would freeze (every launch argument but tensors) is the same in both
    calls, yet the masks differ: the seed comes from a device tensor, drawn on the device."""
    module = importlib.import_module("netc.kernels.dropout")  # the package exports the function
    launches = record_launches(monkeypatch, module, "_dropout_kernel")
    x = torch.randn(N, dtype=torch.float64, device=device)
    host_rng = torch.get_rng_state()
    first, second = dropout(x, 0.5) != 0, dropout(x, 0.5) != 0
    assert not torch.equal(first, second)
    (grid_a, args_a, kw_a), (grid_b, args_b, kw_b) = launches
    frozen = [(a, b) for a, b in zip(args_a, args_b, strict=True) if not isinstance(a, torch.Tensor)]
    assert grid_a == grid_b and kw_a == kw_b and all(a == b for a, b in frozen)
    seeds = [a for a in args_a if isinstance(a, torch.Tensor) and a.dtype == torch.int64]
    assert len(seeds) == 1 and seeds[0].device == x.device and seeds[0].shape == (1,)
    if device == "cuda":  # the CUDA generator drew the seeds; the host generator did not move
        assert torch.equal(torch.get_rng_state(), host_rng)


_COMPILE_FOR_SM90 = """
import importlib
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
fn = importlib.import_module("netc.kernels.dropout")._dropout_kernel
for dtype in ("fp32", "fp64"):
    signature = {"x_ptr": "*" + dtype, "y_ptr": "*" + dtype, "n": "i32", "seed_ptr": "*i64"}
    constexprs = {"P": 0.3, "SCALE": 1 / 0.7, "BLOCK": 1024}
    signature.update({name: "constexpr" for name in constexprs})
    keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=keyed)
    triton.compile(source, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 1})
"""


@pytest.mark.slow
def test_kernel_compiles_for_a_cuda_target() -> None:
    """The kernel, with its seed loaded from a device tensor, compiles for sm_90 (no GPU needed)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0")  # compile: the kernel must not bind to the interpreter
    result = subprocess.run([sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
