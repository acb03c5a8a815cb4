"""relu, tanh, sigmoid, leaky_relu, gelu, silu vs torch.nn.functional: forward, gradient, fp64/fp32."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_conv import strided_like
from kernel_helpers_dense import check

from netc.kernels import activation as A

# name -> (our function, torch's function), each taking (input, **kwargs)
FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "relu": (A.relu, F.relu),
    "tanh": (A.tanh, torch.tanh),
    "sigmoid": (A.sigmoid, torch.sigmoid),
    "leaky_relu": (A.leaky_relu, F.leaky_relu),
    "gelu": (A.gelu, F.gelu),
    "gelu_tanh": (partial(A.gelu, approximate="tanh"), partial(F.gelu, approximate="tanh")),
    "silu": (A.silu, F.silu),
}
SHAPES = [(1,), (7, 13), (3, 5, 17), (20011,)]  # the last spans two interpreter programs


def _forward_backward(fn: Callable, x: torch.Tensor, grad: torch.Tensor, **kwargs) -> tuple:
    x = x.detach().requires_grad_(True)
    y = fn(x, **kwargs)
    (dx,) = torch.autograd.grad(y, x, grad)
    return y, dx


def _compare(
    name: str, x: torch.Tensor, dtype: torch.dtype = torch.float64, strided_grad: bool = False, **kwargs
) -> None:
    ours, ref = FUNCTIONS[name]
    grad = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    ours_grad = grad.to(dtype)
    if strided_grad:  # the same values, laid out as a slice of a transpose: not contiguous
        ours_grad = strided_like(x.shape, dtype, str(x.device)).copy_(grad)
        assert not ours_grad.is_contiguous()
    y, dx = _forward_backward(ours, x.to(dtype), ours_grad, **kwargs)
    y_ref, dx_ref = _forward_backward(ref, x.double(), grad, **kwargs)
    check(f"{name}:forward", y, y_ref, dtype)
    check(f"{name}:grad", dx, dx_ref, dtype)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", FUNCTIONS)
def test_matches_torch_float64(name: str, shape: tuple[int, ...], device: str) -> None:
    _compare(name, torch.randn(shape, dtype=torch.float64, device=device) * 3)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_float32_within_float32_tolerance(name: str, device: str) -> None:
    _compare(name, torch.randn(9, 31, dtype=torch.float64, device=device) * 3, dtype=torch.float32)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_non_contiguous_input(name: str, device: str) -> None:
    base = torch.randn(11, 14, dtype=torch.float64, device=device)
    x = base.t()[::2]  # (7, 11), strides (1, 28)
    assert not x.is_contiguous()
    _compare(name, x)
    _compare(name, x, strided_grad=True)
    _compare(name, x, torch.float32, strided_grad=True)


@pytest.mark.parametrize("slope", [0.0, 0.2, -0.7, 1.5])
def test_leaky_relu_slopes(slope: float, device: str) -> None:
    _compare("leaky_relu", torch.randn(5, 19, dtype=torch.float64, device=device), negative_slope=slope)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_special_values_like_torch(name: str, device: str) -> None:
    """0, -0, +-inf, NaN and huge values: same outputs and gradients as torch (relu(NaN) = NaN)."""
    special = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 800.0, -800.0, 1e-300, -1e-5]
    x = torch.tensor(special, dtype=torch.float64, device=device)
    _compare(name, x)


def test_tanh_small_arguments_keep_relative_precision(device: str) -> None:
    """Around the Taylor/exp switch at |x| = 0.01 the relative error stays near float64 eps."""
    x = torch.tensor([1e-12, -3e-7, 0.0099, 0.01, -0.0101, 0.05, 0.3], dtype=torch.float64, device=device)
    y = A.tanh(x)
    rel = ((y - torch.tanh(x)) / torch.tanh(x)).abs().max().item()
    assert rel < 1e-13


def test_inplace_and_dtype_rejected(device: str) -> None:
    x = torch.randn(4, device=device)
    with pytest.raises(NotImplementedError, match="inplace"):
        A.relu(x, inplace=True)
    with pytest.raises(NotImplementedError, match="inplace"):
        A.leaky_relu(x, inplace=True)
    with pytest.raises(NotImplementedError, match="float16"):
        A.sigmoid(x.half())


def test_outputs_every_element_of_a_poisoned_buffer(device: str) -> None:
    """Outputs start as NaN under the test fixture: a finite result means every element was written."""
    x = torch.randn(16385, dtype=torch.float64, device=device)
    for ours, _ in FUNCTIONS.values():
        assert torch.isfinite(ours(x)).all()


def test_erf_float64_across_both_branches(device: str) -> None:
    """gelu's float64 erf (series below |x| = 2, continued fraction above) stays within a few ulp of 2.

    (An erf good to float32 only, such as Abramowitz-Stegun's 1.5e-7 formula, fails this by 1e8.)"""
    x = torch.cat([torch.linspace(-9, 9, 2001, dtype=torch.float64), torch.tensor([1.999999, 2.0, 2.000001])])
    x = x.to(device)
    y = A.gelu(x)
    cdf = 2 * y / x  # 1 + erf(x / sqrt 2), where x != 0
    reference = 1 + torch.erf(x / 2**0.5)
    keep = x != 0
    assert (cdf[keep] - reference[keep]).abs().max().item() < 4e-15


def test_gelu_rejects_unknown_approximation(device: str) -> None:
    with pytest.raises(ValueError, match="approximate"):
        A.gelu(torch.randn(3, device=device), approximate="sigmoid")
    with pytest.raises(NotImplementedError, match="inplace"):
        A.silu(torch.randn(3, device=device), inplace=True)


@pytest.mark.parametrize("name", ["gelu", "gelu_tanh", "silu"])
def test_backward_reads_the_input(name: str) -> None:
    """Epilogues must keep the pre-activation for these: their derivative is not a function of y."""
    act = A.ACTIVATIONS[name]
    assert A.backward_needs_input(act)
    assert not A.backward_needs_input(A.ACT_RELU) and A.backward_needs_input(A.ACT_LEAKY_RELU, -0.5)
