"""max_pool2d / avg_pool2d kernels vs torch.nn.functional in float64: outputs, indices, input gradients."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_conv import compare_with_torch, strided_like

from netc.kernels import pool as pool_module
from netc.kernels.pool import avg_pool2d, max_pool2d

# id -> (input shape, max_pool2d keywords); odd sizes, overlapping and strided windows
MAX_CASES: dict[str, tuple[tuple[int, ...], dict]] = {
    "k2": ((2, 3, 9, 11), {"kernel_size": 2}),
    "k3-s2-p1": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "padding": 1}),
    "overlap-s1": ((1, 2, 7, 9), {"kernel_size": 3, "stride": 1}),
    "asymmetric": ((2, 3, 10, 9), {"kernel_size": (3, 2), "stride": (1, 2), "padding": (1, 1)}),
    "dilation": ((2, 2, 11, 9), {"kernel_size": 3, "dilation": (2, 1), "padding": (1, 1), "stride": (2, 1)}),
    "ceil": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    "ceil-drops-padding-window": (
        (1, 2, 5, 5),
        {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True},
    ),
    "ceil-pad-dilated": (
        (2, 1, 8, 7),
        {"kernel_size": 3, "stride": 3, "padding": 1, "dilation": 2, "ceil_mode": True},
    ),
    "batch1-single-channel": ((1, 1, 7, 5), {"kernel_size": 2}),
    "global": ((2, 3, 5, 7), {"kernel_size": (5, 7)}),
    "unbatched": ((3, 9, 7), {"kernel_size": 2, "stride": 1, "padding": 1}),
}
# id -> (input shape, avg_pool2d keywords)
AVG_CASES: dict[str, tuple[tuple[int, ...], dict]] = {
    "k2": ((2, 3, 9, 11), {"kernel_size": 2}),
    "k3-s2-p1": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "padding": 1}),
    "k3-s2-p1-exclude-pad": (
        (2, 3, 9, 11),
        {"kernel_size": 3, "stride": 2, "padding": 1, "count_include_pad": False},
    ),
    "overlap-s1": ((1, 2, 7, 9), {"kernel_size": 3, "stride": 1}),
    "asymmetric": ((2, 3, 10, 9), {"kernel_size": (3, 4), "stride": (2, 1), "padding": (1, 2)}),
    "ceil": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "ceil_mode": True}),
    "ceil-pad": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}),
    "ceil-pad-exclude": (
        (2, 3, 9, 10),
        {
            "kernel_size": (3, 4),
            "stride": (2, 3),
            "padding": (1, 2),
            "ceil_mode": True,
            "count_include_pad": False,
        },
    ),
    "ceil-drops-padding-window": (
        (1, 2, 5, 5),
        {"kernel_size": 2, "stride": 2, "padding": 1, "ceil_mode": True},
    ),
    "divisor": ((2, 3, 9, 11), {"kernel_size": 3, "stride": 2, "padding": 1, "divisor_override": 5}),
    "divisor-ceil-exclude": (
        (2, 2, 9, 8),
        {
            "kernel_size": 2,
            "padding": 1,
            "ceil_mode": True,
            "count_include_pad": False,
            "divisor_override": 3,
        },
    ),
    "batch1-single-channel": ((1, 1, 7, 5), {"kernel_size": 2}),
    "global": ((2, 3, 5, 7), {"kernel_size": (5, 7)}),
    "unbatched": ((3, 9, 7), {"kernel_size": 3, "padding": 1, "stride": 2}),
}


def _max(**kwargs):
    return lambda x: max_pool2d(x, **kwargs, return_indices=True)


def _max_reference(**kwargs):
    return lambda x: F.max_pool2d(x, **kwargs, return_indices=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", MAX_CASES)
def test_max_pool2d_matches_torch(device: str, name: str, dtype: torch.dtype) -> None:
    shape, kwargs = MAX_CASES[name]
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", AVG_CASES)
def test_avg_pool2d_matches_torch(device: str, name: str, dtype: torch.dtype) -> None:
    shape, kwargs = AVG_CASES[name]
    x = torch.randn(*shape, dtype=dtype, device=device, requires_grad=True)
    compare_with_torch(
        "avg_pool2d", lambda x: avg_pool2d(x, **kwargs), lambda x: F.avg_pool2d(x, **kwargs), [x]
    )


def _random_pool(seed: int, with_dilation: bool) -> tuple[tuple[int, ...], dict]:
    """A random valid pooling: per-axis kernel / stride / padding (<= kernel // 2), maybe ceil_mode."""
    rng = random.Random(seed)
    kernel = (rng.randint(1, 4), rng.randint(1, 4))
    kwargs = {
        "kernel_size": kernel,
        "stride": rng.choice([None, (rng.randint(1, 3), rng.randint(1, 3))]),
        "padding": (rng.randint(0, kernel[0] // 2), rng.randint(0, kernel[1] // 2)),
        "ceil_mode": rng.random() < 0.5,
    }
    if with_dilation:
        kwargs["dilation"] = (rng.randint(1, 2), rng.randint(1, 2))
    reach = [kwargs.get("dilation", (1, 1))[i] * (kernel[i] - 1) + 1 for i in range(2)]
    return (rng.randint(1, 3), rng.randint(1, 3), *(r + rng.randint(0, 6) for r in reach)), kwargs


@pytest.mark.parametrize("seed", range(6))
def test_max_pool2d_random_geometry(device: str, seed: int) -> None:
    shape, kwargs = _random_pool(seed, with_dilation=True)
    x = torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])


@pytest.mark.parametrize("seed", range(6))
def test_avg_pool2d_random_geometry(device: str, seed: int) -> None:
    shape, kwargs = _random_pool(seed, with_dilation=False)
    kwargs["count_include_pad"] = seed % 2 == 0
    kwargs["divisor_override"] = None if seed % 3 else seed + 1
    x = torch.randn(*shape, dtype=torch.float64, device=device, requires_grad=True)
    compare_with_torch(
        "avg_pool2d", lambda x: avg_pool2d(x, **kwargs), lambda x: F.avg_pool2d(x, **kwargs), [x]
    )


def test_max_pool2d_without_indices_returns_a_tensor(device: str) -> None:
    x = torch.randn(2, 3, 7, 9, dtype=torch.float64, device=device, requires_grad=True)
    y = max_pool2d(x, 3, 2, 1)
    assert isinstance(y, torch.Tensor)
    compare_with_torch(
        "max_pool2d", lambda x: max_pool2d(x, 3, 2, 1), lambda x: F.max_pool2d(x, 3, 2, 1), [x]
    )


@pytest.mark.parametrize("shape", [(2, 3, 9, 11), (3, 8, 7)])
def test_max_pool2d_inference_path(device: str, shape: tuple[int, ...]) -> None:
    """Without grad and indices the kernel skips writing indices; the values must not change."""
    x = torch.randn(*shape, dtype=torch.float64, device=device)
    x[..., 0, 0] = float("nan")
    with torch.no_grad():
        y = max_pool2d(x, 3, 2, 1, ceil_mode=True)
    torch.testing.assert_close(y, F.max_pool2d(x, 3, 2, 1, ceil_mode=True), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("pool", ["max", "avg"])
def test_non_contiguous_input_and_gradient(device: str, pool: str) -> None:
    x = strided_like((2, 3, 9, 7), torch.float64, device).requires_grad_()
    assert not x.is_contiguous()
    kwargs = {"kernel_size": (3, 2), "stride": (2, 1), "padding": 1, "ceil_mode": True}
    ours, ref = (
        (_max(**kwargs), _max_reference(**kwargs))
        if pool == "max"
        else (
            lambda x: avg_pool2d(x, **kwargs),
            lambda x: F.avg_pool2d(x, **kwargs),
        )
    )
    compare_with_torch(f"{pool}_pool2d", ours, ref, [x], strided_grad=True)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool2d_ties_pick_the_first_max(device: str, stride: int) -> None:
    """Few distinct values make ties in most windows; indices and gradients must follow PyTorch's choice."""
    x = torch.randint(0, 3, (2, 3, 9, 8), device=device).double().requires_grad_()
    kwargs = {"kernel_size": 3, "stride": stride, "padding": 1}
    compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool2d_propagates_nan_like_torch(device: str, stride: int) -> None:
    """NaN wins its window; with several NaNs the index (and so the gradient) is the one PyTorch picks."""
    x = torch.randn(2, 2, 9, 8, dtype=torch.float64, device=device)
    x[torch.rand_like(x) < 0.15] = float("nan")
    x.requires_grad_()
    kwargs = {"kernel_size": 3, "stride": stride, "padding": 1}
    (y, _indices) = compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])
    assert y.isnan().any() and not y.isnan().all()


def test_max_pool2d_all_minus_infinity_windows(device: str) -> None:
    """Windows with nothing above -inf still point at their first real element, as PyTorch's do."""
    x = torch.full((1, 2, 5, 6), float("-inf"), dtype=torch.float64, device=device)
    x[0, 1, 2:, 3:] = torch.randn(3, 3, dtype=torch.float64, device=device)
    x.requires_grad_()
    kwargs = {"kernel_size": 2, "padding": 1, "stride": 2}
    compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_pools_many_programs(
    device: str, pool: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Blocks of 64 elements, so several programs share the work and the last block is partial."""
    monkeypatch.setattr(pool_module, "_launch_config", lambda elements: (64, 4))
    x = torch.randn(2, 3, 9, 11, dtype=dtype, device=device, requires_grad=True)
    kwargs = {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True}
    ours, ref = (
        (_max(**kwargs), _max_reference(**kwargs))
        if pool == "max"
        else (
            lambda x: avg_pool2d(x, **kwargs),
            lambda x: F.avg_pool2d(x, **kwargs),
        )
    )
    compare_with_torch(f"{pool}_pool2d", ours, ref, [x])


def test_unsupported_and_bad_arguments_raise(device: str) -> None:
    x = torch.randn(1, 2, 6, 6, device=device)
    with pytest.raises(NotImplementedError, match="float16"):
        max_pool2d(x.half(), 2)
    with pytest.raises(NotImplementedError, match="int64"):
        avg_pool2d(x.long(), 2)
    with pytest.raises(ValueError, match="half"):
        max_pool2d(x, 2, padding=2)
    with pytest.raises(ValueError, match="half"):
        avg_pool2d(x, 3, padding=2)
    with pytest.raises(ValueError, match="too small"):
        max_pool2d(x, 7)
    with pytest.raises(ValueError, match="divisor_override"):
        avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        max_pool2d(x[0, 0], 2)


@pytest.mark.parametrize("empty", [(), []], ids=["tuple", "list"])
@pytest.mark.parametrize("pool", ["max", "avg"])
def test_empty_stride_means_the_kernel_size(device: str, pool: str, empty: tuple | list) -> None:
    """PyTorch reads stride=() (or []) as stride=kernel_size; its OpInfo samples pass it."""
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64, device=device, requires_grad=True)
    kwargs = {"kernel_size": (3, 2), "stride": empty, "padding": 1}
    if pool == "max":
        compare_with_torch("max_pool2d", _max(**kwargs), _max_reference(**kwargs), [x])
    else:
        ours, reference = (lambda x: avg_pool2d(x, **kwargs)), (lambda x: F.avg_pool2d(x, **kwargs))
        compare_with_torch("avg_pool2d", ours, reference, [x])
    assert avg_pool2d(x, 2, stride=empty).shape == (2, 3, 4, 4)


def test_max_pool2d_backward_makes_no_zero_gradient_for_the_indices(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The indices output is not differentiable: its gradient is never materialized as a zero-filled
    tensor (one GPU op per training step), so the backward is the one gradient kernel."""
    from netc.kernels import config
    from netc.runtime.opcount import count_step_ops

    monkeypatch.setattr(config, "POISON_OUTPUTS", False)  # NaN fills are the tests' own ops
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64, device=device, requires_grad=True)
    y, _indices = max_pool2d(x, 2, return_indices=True)
    grad = torch.randn_like(y)
    ops = count_step_ops(lambda: y.backward(grad))
    assert (ops.total, dict(ops.triton)) == (1, {"_max_pool2d_bwd_kernel": 1}), ops.summary()
    reference = x.detach().requires_grad_()
    F.max_pool2d(reference, 2).backward(grad)
    assert torch.equal(x.grad, reference.grad)
