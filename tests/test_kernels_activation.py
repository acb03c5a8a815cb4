"""relu, tanh, sigmoid, leaky_relu kernels vs torch.nn.functional: forward and gradient, float64/float32."""

from __future__ import annotations

from collections.abc import Callable

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
