"""Elementwise activations (relu, tanh, sigmoid, leaky_relu, gelu, silu): tensor -> same shape, autograd.

Every activation is one forward and one backward kernel over the flattened
tensor. Non-contiguous inputs are copied to a contiguous layout by the
launcher (`.contiguous()`), so kernels only see flat 1-D memory; outputs are
contiguous. Supported dtypes: float32 and float64 (others raise
NotImplementedError). No `tl.dot` here, so no precision choice applies.

The `@triton.jit` helpers `apply_activation` and `activation_grad` are shared
with the GEMM epilogues in `linear.py` and `conv.py` (SLOPE may be a
constexpr or a runtime scalar there); activation codes are the `ACT_*`
constants below. gelu (exact and tanh-approximated) and silu differentiate from
their input, not their output: `backward_needs_input` tells an epilogue when
it must keep the pre-activation for the backward.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config, costs, policy

ACT_NONE, ACT_RELU, ACT_TANH, ACT_SIGMOID, ACT_LEAKY_RELU = 0, 1, 2, 3, 4
ACT_GELU, ACT_GELU_TANH, ACT_SILU = 5, 6, 7
ACTIVATIONS: dict[str | None, int] = {
    None: ACT_NONE,
    "relu": ACT_RELU,
    "tanh": ACT_TANH,
    "sigmoid": ACT_SIGMOID,
    "leaky_relu": ACT_LEAKY_RELU,
    "gelu": ACT_GELU,  # F.gelu(x, approximate="none")
    "gelu_tanh": ACT_GELU_TANH,  # F.gelu(x, approximate="tanh")
    "silu": ACT_SILU,
}
# activations whose derivative is a function of the input only (the output does not determine it)
_INPUT_GRAD_ACTIVATIONS = (ACT_GELU, ACT_GELU_TANH, ACT_SILU)
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def launch_config() -> dict[str, int]:
    """Block size and warps for the elementwise kernels (policy.py's elementwise section)."""
    return policy.elementwise_config()


def backward_needs_input(act: int, slope: float = 0.0) -> bool:
    """True when `activation_grad` must get the pre-activation x rather than the output y."""
    return act in _INPUT_GRAD_ACTIVATIONS or (act == ACT_LEAKY_RELU and slope < 0)


@triton.jit
def _tanh(x):
    # No libdevice in the interpreter. (1 - e) / (1 + e) with e = exp(-2|x|) never
    # overflows; below |x| = 0.01 its relative error grows like eps/|x|, so a
    # Taylor series (error < x^11, i.e. below float64 eps there) takes over.
    ax = tl.abs(x)
    e = tl.exp(-2.0 * ax)
    big = (1.0 - e) / (1.0 + e)
    x2 = ax * ax
    small = ax * (1.0 + x2 * (-1.0 / 3.0 + x2 * (2.0 / 15.0 + x2 * (-17.0 / 315.0 + x2 * (62.0 / 2835.0)))))
    t = tl.where(ax < 0.01, small, big)
    return tl.where(x < 0, -t, t)  # NaN falls through to t, which is NaN


@triton.jit
def _sigmoid(x):
    # exp of a non-positive number only: no overflow for large |x|, full precision for x << 0
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _erf_float64(x):
    # float64 erf with only +, *, /, exp (no libdevice in the interpreter; tl.math.erf takes
    # float32 only). |x| < 2: the Maclaurin series, 30 terms (the largest term is 2.4, so under
    # 1e-15 absolute error); |x| >= 2: Laplace's continued fraction for erfc, 40 levels (below
    # 2e-16). Each branch sees a clamped argument so the other branch's range never overflows.
    ax = tl.abs(x)
    small = tl.minimum(ax, 2.0)
    z = small * small
    term = small
    series = small
    for n in tl.static_range(1, 30):
        term = term * (-z) * (1.0 / n)
        series += term * (1.0 / (2 * n + 1))
    series = series * 1.1283791670955126  # 2 / sqrt(pi)
    big = tl.maximum(ax, 2.0)
    fraction = big
    for k in tl.static_range(40, 0, -1):
        fraction = big + (0.5 * k) / fraction
    tail = 1.0 - tl.exp(-big * big) / (fraction * 1.7724538509055159)  # sqrt(pi)
    y = tl.where(ax < 2.0, series, tail)
    y = tl.where(x < 0, -y, y)
    return tl.where(x != x, x, y)  # NaN in, NaN out (the clamps above would hide it)


@triton.jit
def _erf(x):
    if x.dtype == tl.float64:
        return _erf_float64(x)
    else:
        return tl.math.erf(x.to(tl.float32)).to(x.dtype)


@triton.jit
def _gelu_tanh_inner(x):
    # sqrt(2/pi) * (x + 0.044715 x^3): the tanh approximation's argument, as PyTorch writes it
    return 0.7978845608028654 * (x + 0.044715 * x * x * x)


@triton.jit
def _apply_input_activation(x, ACT: tl.constexpr):
    """gelu (exact), gelu (tanh) and silu, in PyTorch's formulas."""
    if ACT == 5:
        y = 0.5 * x * (1.0 + _erf(x * 0.7071067811865476))
    elif ACT == 6:
        y = 0.5 * x * (1.0 + _tanh(_gelu_tanh_inner(x)))
    else:
        y = x * _sigmoid(x)
    return y


@triton.jit
def _input_activation_grad(g, x, ACT: tl.constexpr):
    """dL/dx of gelu / gelu tanh / silu from dL/dy and the input x (PyTorch's backward formulas)."""
    if ACT == 5:  # cdf + x * pdf
        cdf = 0.5 * (1.0 + _erf(x * 0.7071067811865476))
        pdf = tl.exp(-0.5 * x * x) * 0.3989422804014327  # 1 / sqrt(2 pi)
        g = g * (cdf + x * pdf)
    elif ACT == 6:
        t = _tanh(_gelu_tanh_inner(x))
        d_inner = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
        g = g * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * d_inner)
    else:
        s = _sigmoid(x)
        g = g * s * (1.0 + x * (1.0 - s))
    return g


@triton.jit
def apply_activation(x, ACT: tl.constexpr, SLOPE):
    """y = act(x) for an activation code; NaN propagates as in PyTorch."""
    if ACT == 1:  # relu: `x < 0` is False for NaN, so relu(NaN) = NaN like torch.clamp_min
        x = tl.where(x < 0, 0.0, x)
    elif ACT == 2:
        x = _tanh(x)
    elif ACT == 3:
        x = _sigmoid(x)
    elif ACT == 4:
        x = tl.where(x > 0, x, x * SLOPE)
    elif ACT >= 5:
        x = _apply_input_activation(x, ACT)
    return x


@triton.jit
def activation_grad(g, saved, ACT: tl.constexpr, SLOPE):
    """dL/dx from dL/dy = g, in PyTorch's formulas.

    `saved` is the output y for relu, tanh and sigmoid; for leaky_relu it is
    the input x, or the output y when SLOPE >= 0 (then y > 0 exactly when x > 0);
    for gelu, gelu tanh and silu it is the input x (see `backward_needs_input`).
    """
    if ACT == 1:  # torch's threshold_backward: y <= 0 -> 0, so a NaN output passes g through
        g = tl.where(saved <= 0, 0.0, g)
    elif ACT == 2:
        g = g * (1.0 - saved * saved)
    elif ACT == 3:
        g = g * (1.0 - saved) * saved
    elif ACT == 4:
        g = tl.where(saved > 0, g, g * SLOPE)
    elif ACT >= 5:
        g = _input_activation_grad(g, saved, ACT)
    return g


@triton.jit(launch_metadata=costs.elementwise("n"))
def _activation_fwd_kernel(
    x_ptr,  # input, contiguous, n elements
    y_ptr,  # output, contiguous, n elements
    n,  # number of elements
    ACT: tl.constexpr,  # activation code (ACT_*)
    SLOPE: tl.constexpr,  # leaky_relu negative slope
    BLOCK: tl.constexpr,  # elements per program
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    tl.store(y_ptr + offsets, apply_activation(x, ACT, SLOPE), mask=mask)


@triton.jit(launch_metadata=costs.elementwise("n"))
def _activation_bwd_kernel(
    g_ptr,  # dL/dy, contiguous, n elements
    saved_ptr,  # y (relu/tanh/sigmoid) or x (leaky_relu, gelu, silu), contiguous
    dx_ptr,  # dL/dx output, contiguous
    n,  # number of elements
    ACT: tl.constexpr,  # activation code (ACT_*)
    SLOPE: tl.constexpr,  # leaky_relu negative slope
    BLOCK: tl.constexpr,  # elements per program
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    g = tl.load(g_ptr + offsets, mask=mask, other=0.0)
    saved = tl.load(saved_ptr + offsets, mask=mask, other=0.0)
    tl.store(dx_ptr + offsets, activation_grad(g, saved, ACT, SLOPE), mask=mask)


def check_dtype(name: str, *tensors: torch.Tensor) -> None:
    """Raise NotImplementedError unless all tensors are float32/float64 of one dtype on one device."""
    first = tensors[0]
    for tensor in tensors:
        if tensor.dtype not in SUPPORTED_DTYPES:
            raise NotImplementedError(f"{name}: dtype {tensor.dtype} is not supported (float32, float64)")
        if tensor.dtype != first.dtype or tensor.device != first.device:
            raise NotImplementedError(f"{name}: mixed dtypes or devices ({first.dtype}, {tensor.dtype})")


def activation_forward(x: torch.Tensor, act: int, slope: float = 0.0) -> torch.Tensor:
    """Launch the forward kernel on a contiguous copy of x; returns a contiguous tensor of x's shape."""
    x = x.contiguous()
    y = config.new_empty(x.shape, x)
    n = x.numel()
    if n:
        cfg = launch_config()
        grid = (triton.cdiv(n, cfg["BLOCK"]),)
        _activation_fwd_kernel[grid](x, y, n, ACT=act, SLOPE=slope, **cfg)
    return y


def activation_backward(
    grad: torch.Tensor, saved: torch.Tensor, act: int, slope: float = 0.0
) -> torch.Tensor:
    """dL/dx given dL/dy and the saved tensor (see `activation_grad`); contiguous, saved's shape."""
    grad = grad.contiguous()
    saved = saved.contiguous()
    dx = config.new_empty(saved.shape, saved)
    n = saved.numel()
    if n:
        cfg = launch_config()
        grid = (triton.cdiv(n, cfg["BLOCK"]),)
        _activation_bwd_kernel[grid](grad, saved, dx, n, ACT=act, SLOPE=slope, **cfg)
    return dx


class _Activation(torch.autograd.Function):
    """y = act(x); saves y (relu, tanh, sigmoid) or x (leaky_relu: its slope may be negative; gelu, silu)."""

    @staticmethod
    def forward(ctx: Ctx, x: torch.Tensor, act: int, slope: float) -> torch.Tensor:
        y = activation_forward(x, act, slope)
        ctx.save_for_backward(x if act == ACT_LEAKY_RELU or backward_needs_input(act) else y)
        ctx.act, ctx.slope = act, slope
        return y

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (saved,) = ctx.saved_tensors
        return activation_backward(grad, saved, ctx.act, ctx.slope), None, None


def _activate(name: str, x: torch.Tensor, act: int, slope: float, inplace: bool) -> torch.Tensor:
    if inplace:
        raise NotImplementedError(f"{name}: inplace=True is not supported")
    check_dtype(name, x)
    return _Activation.apply(x, act, float(slope))


def relu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """max(x, 0) like torch.nn.functional.relu (NaN stays NaN)."""
    return _activate("relu", input, ACT_RELU, 0.0, inplace)


def tanh(input: torch.Tensor) -> torch.Tensor:
    """Hyperbolic tangent like torch.nn.functional.tanh."""
    return _activate("tanh", input, ACT_TANH, 0.0, False)


def sigmoid(input: torch.Tensor) -> torch.Tensor:
    """Logistic sigmoid like torch.nn.functional.sigmoid."""
    return _activate("sigmoid", input, ACT_SIGMOID, 0.0, False)


def leaky_relu(input: torch.Tensor, negative_slope: float = 0.01, inplace: bool = False) -> torch.Tensor:
    """x if x > 0 else negative_slope * x, like torch.nn.functional.leaky_relu."""
    return _activate("leaky_relu", input, ACT_LEAKY_RELU, negative_slope, inplace)


def gelu(input: torch.Tensor, approximate: str = "none") -> torch.Tensor:
    """x * Phi(x) like torch.nn.functional.gelu; approximate="tanh" uses PyTorch's tanh formula."""
    if approximate not in ("none", "tanh"):
        raise ValueError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return _activate("gelu", input, ACT_GELU if approximate == "none" else ACT_GELU_TANH, 0.0, False)


def silu(input: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """x * sigmoid(x) like torch.nn.functional.silu."""
    return _activate("silu", input, ACT_SILU, 0.0, inplace)
