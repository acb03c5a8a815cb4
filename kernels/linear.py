"""Fully connected layer: input (..., in), weight (out, in), bias (out,) -> (..., out), with autograd.

`linear` is torch.nn.functional.linear; `linear_act` fuses bias and an
activation ("relu", "tanh", "sigmoid", "leaky_relu") into the GEMM epilogue.
Any number of leading dimensions is flattened to rows, e.g. a [T, F] sequence
per sample (N, T, F) becomes (N*T, F).

All three GEMMs (forward, grad input, grad weight) run one kernel,
`_linear_gemm_kernel`, with arbitrary strides, so transposes are free. Its
`tl.dot` uses input_precision "ieee" (PyTorch's float32 result) unless
`ALLOW_TF32` is set on a CUDA device; float64 inputs always dot in float64.
Accumulation is float32 for float32 inputs, float64 for float64. The bias
gradient is a column-sum kernel, `_bias_grad_kernel`.

Backward of `linear_act` saves the activation's OUTPUT y (not the
pre-activation): dL/dz = act'(y) * dL/dy, as PyTorch's own relu/tanh/sigmoid
backward do. leaky_relu's derivative is read off y, which needs
negative_slope >= 0 (a negative slope raises NotImplementedError).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config
from netc.kernels.activation import (
    ACT_LEAKY_RELU,
    ACT_NONE,
    ACTIVATIONS,
    activation_backward,
    apply_activation,
    backward_needs_input,
    check_dtype,
)

# tf32 dots are faster on Ampere+ GPUs but lose ~3 decimal digits; off by default.
ALLOW_TF32 = False


def launch_config() -> dict[str, int]:
    """GEMM tile and launch settings: one config per target, dot blocks >= 16."""
    if config.interpreting():  # few large programs; numpy does the dot
        return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4, "num_stages": 1}
    return {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 4, "num_stages": 3}


def reduce_config() -> dict[str, int]:
    """Column-sum (bias gradient) tile: BLOCK_R rows at a time, BLOCK_N columns per program."""
    if config.interpreting():
        return {"BLOCK_R": 256, "BLOCK_N": 64, "num_warps": 1}
    return {"BLOCK_R": 64, "BLOCK_N": 64, "num_warps": 4}


@triton.jit
def _linear_gemm_kernel(
    a_ptr,  # A (M, K), any strides
    b_ptr,  # B (K, N), any strides
    bias_ptr,  # bias (N,), contiguous; unused unless HAS_BIAS
    c_ptr,  # C = act(A @ B + bias) (M, N), any strides
    M, N, K,  # problem sizes
    stride_am, stride_ak,  # A strides, in elements
    stride_bk, stride_bn,  # B strides
    stride_cm, stride_cn,  # C strides
    HAS_BIAS: tl.constexpr,  # add bias[n] in the epilogue
    ACT: tl.constexpr,  # activation code of activation.py, applied in the epilogue
    SLOPE: tl.constexpr,  # leaky_relu negative slope
    ACC_DTYPE: tl.constexpr,  # tl.float32 or tl.float64
    PRECISION: tl.constexpr,  # tl.dot input_precision: "ieee" or "tf32"
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,  # tile, each >= 16
    GROUP_M: tl.constexpr,  # rows of tiles walked together, for L2 reuse of B
):
    # grouped program order (as in Triton's matmul tutorial): neighbouring
    # programs share B column tiles
    pid = tl.program_id(0)
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    group = pid // (GROUP_M * tiles_n)
    first_m = group * GROUP_M
    group_rows = min(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group_rows)
    pid_n = (pid % (GROUP_M * tiles_n)) // group_rows

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,)
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        a_mask = (rows[:, None] < M) & (kk[None, :] < K)
        b_mask = (kk[:, None] < K) & (cols[None, :] < N)
        a = tl.load(a_ptr + rows[:, None] * stride_am + kk[None, :] * stride_ak, mask=a_mask, other=0.0)
        b = tl.load(b_ptr + kk[:, None] * stride_bk + cols[None, :] * stride_bn, mask=b_mask, other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(ACC_DTYPE)[None, :]
    acc = apply_activation(acc, ACT, SLOPE)
    c_mask = (rows[:, None] < M) & (cols[None, :] < N)
    c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :] * stride_cn
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _bias_grad_kernel(
    g_ptr,  # dL/dz (R, N), contiguous rows
    out_ptr,  # dL/dbias (N,)
    R, N,  # rows, columns
    ACC_DTYPE: tl.constexpr,  # tl.float32 or tl.float64
    BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr,  # rows per step, columns per program
):
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_N,), dtype=ACC_DTYPE)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        mask = (rows[:, None] < R) & (cols[None, :] < N)
        tile = tl.load(g_ptr + rows[:, None].to(tl.int64) * N + cols[None, :], mask=mask, other=0.0)
        acc += tl.sum(tile.to(ACC_DTYPE), axis=0)
    tl.store(out_ptr + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < N)


def _dot_settings(like: torch.Tensor) -> tuple[tl.dtype, str]:
    """(accumulator dtype, tl.dot input_precision) for this input dtype and device."""
    if like.dtype == torch.float64:
        return tl.float64, "ieee"
    tf32 = ALLOW_TF32 and like.is_cuda
    return tl.float32, "tf32" if tf32 else "ieee"


def gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    act: int = ACT_NONE,
    slope: float = 0.0,
) -> torch.Tensor:
    """act(a @ b + bias) for 2-D a (M, K), b (K, N) of any strides; returns a contiguous (M, N)."""
    (m, k), n = a.shape, b.shape[1]
    out = config.new_empty((m, n), a)
    if m == 0 or n == 0:
        return out
    # k == 0 runs too: the K loop is empty and the epilogue gives act(bias)
    cfg = launch_config()
    acc_dtype, precision = _dot_settings(a)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _linear_gemm_kernel[grid](
        a, b, bias if bias is not None else out, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        HAS_BIAS=bias is not None, ACT=act, SLOPE=slope, ACC_DTYPE=acc_dtype, PRECISION=precision, **cfg,
    )
    return out


def bias_grad(grad: torch.Tensor) -> torch.Tensor:
    """Column sums of a contiguous (R, N) gradient -> (N,)."""
    rows, n = grad.shape
    out = config.new_empty((n,), grad)
    cfg = reduce_config()
    acc_dtype = tl.float64 if grad.dtype == torch.float64 else tl.float32
    _bias_grad_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](grad, out, rows, n, ACC_DTYPE=acc_dtype, **cfg)
    return out


class _LinearAct(torch.autograd.Function):
    """z = x @ W^T + b, y = act(z) over 2-D x (M, K); saves x, W and y (when act is not None)."""

    @staticmethod
    def forward(
        ctx: Ctx,
        x: torch.Tensor,  # (M, K)
        weight: torch.Tensor,  # (N, K)
        bias: torch.Tensor | None,  # (N,)
        act: int,
        slope: float,
    ) -> torch.Tensor:
        y = gemm(x, weight.t(), bias, act, slope)  # (M, N)
        ctx.save_for_backward(x, weight, y if act != ACT_NONE else None)
        ctx.act, ctx.slope, ctx.has_bias = act, slope, bias is not None
        return y

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, y = ctx.saved_tensors
        if ctx.act != ACT_NONE:  # dL/dz = act'(y) * dL/dy
            grad = activation_backward(grad, y, ctx.act, ctx.slope)
        grad = grad.contiguous()  # (M, N)
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = gemm(grad, weight) if need_x else None  # (M, N) @ (N, K)
        grad_w = gemm(grad.t(), x) if need_w else None  # (N, M) @ (M, K)
        grad_b = bias_grad(grad) if need_b and ctx.has_bias else None
        return grad_x, grad_w, grad_b, None, None


def _check_args(name: str, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    tensors = (input, weight) if bias is None else (input, weight, bias)
    check_dtype(name, *tensors)
    if weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}: input {tuple(input.shape)} and weight {tuple(weight.shape)} do not match "
            "(expected input (..., in_features), weight (out_features, in_features))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias {tuple(bias.shape)} should be ({weight.shape[0]},)")


def linear_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    slope: float = 0.01,
) -> torch.Tensor:
    """act(input @ weight^T + bias) in one GEMM; `slope` is leaky_relu's negative slope (>= 0)."""
    if activation not in ACTIVATIONS:
        known = sorted(map(str, ACTIVATIONS))
        raise NotImplementedError(f"linear_act: activation {activation!r} (known: {known})")
    act = ACTIVATIONS[activation]
    if backward_needs_input(act, slope):  # the backward reads the output y, which does not determine these
        what = "leaky_relu with a negative slope" if act == ACT_LEAKY_RELU else activation
        raise NotImplementedError(f"linear_act: {what} (its backward needs the pre-activation)")
    _check_args("linear_act" if activation else "linear", input, weight, bias)
    lead = input.shape[:-1]
    x2d = input.reshape(math.prod(lead), input.shape[-1])  # (M, K); a view when the layout allows
    y = _LinearAct.apply(x2d, weight, bias, act, float(slope) if act == ACT_LEAKY_RELU else 0.0)
    return y.reshape(*lead, weight.shape[0])


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """input @ weight^T + bias, like torch.nn.functional.linear (any leading dimensions)."""
    return linear_act(input, weight, bias, None)
