"""2-D convolution (+ fused bias and activation): tensors in, Triton implicit-GEMM kernels, tensors out.

Each direction (forward, input gradient, weight + bias gradient) is an
implicit GEMM whose operand tiles are gathered with the convolution's index
math (stride, padding, dilation, groups); nothing calls PyTorch's
convolution. Precision of every GEMM kernel here: float32 inputs multiply
with `tl.dot(input_precision="ieee")`, PyTorch's float32 numbers, and
accumulate in float32 (`"tf32"` instead when `ALLOW_TF32` is set and the
kernels are compiled for a GPU); float64 inputs use a float64 sum of
products, not `tl.dot`, so they run on GPUs without float64 MMA too.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config
from netc.kernels.activation import ACTIVATIONS, activation_grad, apply_activation, backward_needs_input
from netc.kernels.conv_geometry import Geometry, check_tensors, geometry

__all__ = ["conv2d", "conv2d_act"]

# True lets float32 dots use TF32 on the GPU (faster, ~1e-3 relative error). The interpreter ignores it.
ALLOW_TF32 = False

Tensor = torch.Tensor

# activation name -> the code the kernels branch on at compile time (shared with activation.py)
_ACTIVATIONS = ACTIVATIONS


@dataclass(frozen=True)
class _LaunchConfig:
    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


@functools.cache
def _launch_config(
    kind: str, dtype: torch.dtype, interpreted: bool, gemm: tuple[int, int, int]
) -> _LaunchConfig:
    """The one place that picks tiles per kernel ("fwd", "bwd_input", "bwd_weight") and GEMM (M, N, K).

    GPU: fixed tiles. float32 tiles feed `tl.dot` (every side >= 16);
    float64 tiles feed a broadcast product (BLOCK_M x BLOCK_K x BLOCK_N values
    live at once), so they stay small. The interpreter runs programs and loop
    steps one after another at a high fixed cost each, so it gets tiles sized
    to the problem, as few programs and K steps as a memory budget allows.
    """
    if interpreted:
        return _interpreter_config(dtype, *gemm)
    if dtype == torch.float64:
        return _LaunchConfig(32, 32, 8, 4, 1)
    if kind == "bwd_weight":  # few output tiles and a long K (= N*OH*OW): wide K steps
        return _LaunchConfig(32, 64, 64, 4, 3)
    return _LaunchConfig(64, 32, 32, 4, 3)


def _interpreter_config(dtype: torch.dtype, rows: int, cols: int, depth: int) -> _LaunchConfig:
    def fit(size: int, cap: int) -> int:
        return max(16, min(cap, triton.next_power_of_2(size)))

    block_m, block_n, block_k = fit(rows, 1 << 14), fit(cols, 64), fit(depth, 1 << 14)
    product_cap = 1 << 20 if dtype == torch.float64 else 1 << 30  # float64's 3-D product; Triton's max
    while block_m * block_k > 1 << 18 or block_m * block_k * block_n > product_cap:
        if block_m >= block_k:
            block_m //= 2
        else:
            block_k //= 2
    return _LaunchConfig(block_m, block_n, block_k, 1, 1)


@triton.jit
def _mac(acc, a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc (BM, BN) += a (BM, BK) @ b (BK, BN)."""
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit
def _activation_grad(y_ptr, y_off, ok, grad, ACT: tl.constexpr, slope):
    """grad w.r.t. the activation's output -> grad w.r.t. its input, from the saved output y.

    For leaky_relu with a negative slope, y_ptr holds the pre-activation instead: y > 0
    tells the sign of the input only when slope >= 0.
    """
    if ACT != 0:
        grad = activation_grad(grad, tl.load(y_ptr + y_off, mask=ok, other=0.0), ACT, slope)
    return grad


@triton.jit
def _conv2d_fwd_kernel(
    x_ptr,  # (N, C, H, W) input, any strides
    w_ptr,  # (OC, CG, KH, KW) weight, any strides
    b_ptr,  # (OC,) bias (unused unless HAS_BIAS)
    y_ptr,  # (N, OC, OH, OW) output, contiguous
    pre_ptr,  # (N, OC, OH, OW) pre-activation, contiguous (written only when STORE_PRE)
    sxn, sxc, sxh, sxw,  # input strides, in elements
    swo, swc, swh, sww,  # weight strides, in elements
    H, W, OH, OW,  # input and output spatial sizes
    M,  # GEMM rows: N * OH * OW
    CG, OCG,  # input / output channels per group
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,  # pads are the top / left ones
    slope,  # leaky_relu's negative slope
    KH: tl.constexpr, KW: tl.constexpr,  # kernel size
    HAS_BIAS: tl.constexpr, ACT: tl.constexpr, STORE_PRE: tl.constexpr,  # epilogue: bias, activation
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,  # tl.dot or sum of products; dot precision
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y = act(x * w + b), a GEMM (N*OH*OW) x OC/groups x (C/groups*KH*KW) per group.

    Precision: float32 tl.dot at PRECISION ("ieee" unless ALLOW_TF32), float32 accumulator;
    float64 inputs: float64 sum of products."""
    group = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # flat (n, oh, ow)
    row_ok = rows < M
    ow = rows % OW
    oh = (rows // OW) % OH
    n = (rows // (OW * OH)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # output channel within the group
    col_ok = cols < OCG
    oc = group * OCG + cols
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=y_ptr.dtype.element_ty)
    for k0 in range(0, CG * KH * KW, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # flat (c, kh, kw)
        k_ok = ks < CG * KH * KW
        kw = ks % KW
        kh = (ks // KW) % KH
        c = ks // (KW * KH)
        ih = oh[:, None] * stride_h - pad_h + kh[None, :] * dil_h
        iw = ow[:, None] * stride_w - pad_w + kw[None, :] * dil_w
        a_ok = row_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        a_off = n[:, None] * sxn + (group * CG + c)[None, :] * sxc + ih * sxh + iw * sxw
        a = tl.load(x_ptr + a_off, mask=a_ok, other=0.0)
        b_off = oc[None, :] * swo + c[:, None] * swc + kh[:, None] * swh + kw[:, None] * sww
        b = tl.load(w_ptr + b_off, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _mac(acc, a, b, USE_DOT, PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=col_ok, other=0.0)[None, :]
    y_off = (n[:, None] * (OCG * tl.num_programs(2)) + oc[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]
    if STORE_PRE:
        tl.store(pre_ptr + y_off, acc, mask=row_ok[:, None] & col_ok[None, :])
    acc = apply_activation(acc, ACT, slope)
    tl.store(y_ptr + y_off, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv2d_bwd_input_kernel(
    dy_ptr,  # (N, OC, OH, OW) gradient w.r.t. the output (after the activation), any strides
    y_ptr,  # (N, OC, OH, OW) forward output, contiguous (read only when ACT != 0)
    w_ptr,  # (OC, CG, KH, KW) weight, any strides
    dx_ptr,  # (N, C, H, W) input gradient, contiguous
    sdn, sdc, sdh, sdw,  # output-gradient strides
    swo, swc, swh, sww,  # weight strides
    H, W, OH, OW,  # input and output spatial sizes
    M,  # GEMM rows: N * H * W
    CG, OCG,  # input / output channels per group
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,  # leaky_relu's negative slope
    KH: tl.constexpr, KW: tl.constexpr, ACT: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dx = dz (*) flipped w, a GEMM (N*H*W) x C/groups x (OC/groups*KH*KW) per group.

    Precision: as _conv2d_fwd_kernel. With stride s, all but 1/s^2 of the (oc, kh, kw) taps
    of a row miss every output position: they are loaded masked, so the K loop does s^2 the work."""
    group = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # flat (n, h, w)
    row_ok = rows < M
    w_in = rows % W
    h_in = (rows // W) % H
    n = (rows // (W * H)).to(tl.int64)
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # input channel within the group
    col_ok = cols < CG
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dx_ptr.dtype.element_ty)
    for k0 in range(0, OCG * KH * KW, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # flat (oc, kh, kw)
        k_ok = ks < OCG * KH * KW
        kw = ks % KW
        kh = (ks // KW) % KH
        oc = group * OCG + ks // (KW * KH)
        # input row h meets tap kh in output row oh = (h + pad - kh*dil) / stride when that divides
        th = h_in[:, None] + pad_h - kh[None, :] * dil_h
        tw = w_in[:, None] + pad_w - kw[None, :] * dil_w
        oh = th // stride_h
        ow = tw // stride_w
        hit = (th >= 0) & (th % stride_h == 0) & (oh < OH) & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
        a_ok = row_ok[:, None] & k_ok[None, :] & hit
        a_off = n[:, None] * sdn + oc[None, :] * sdc + oh * sdh + ow * sdw
        a = tl.load(dy_ptr + a_off, mask=a_ok, other=0.0)
        y_off = ((n[:, None] * (OCG * tl.num_programs(2)) + oc[None, :]) * OH + oh) * OW + ow
        a = _activation_grad(y_ptr, y_off, a_ok, a, ACT, slope)
        b_off = oc[:, None] * swo + cols[None, :] * swc + kh[:, None] * swh + kw[:, None] * sww
        b = tl.load(w_ptr + b_off, mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = _mac(acc, a, b, USE_DOT, PRECISION)
    channels = CG * tl.num_programs(2)
    dx_off = (n[:, None] * channels + (group * CG + cols)[None, :]) * (H * W) + (h_in * W + w_in)[:, None]
    tl.store(dx_ptr + dx_off, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _conv2d_bwd_weight_kernel(
    dy_ptr,  # (N, OC, OH, OW) gradient w.r.t. the output (after the activation), any strides
    y_ptr,  # (N, OC, OH, OW) forward output, contiguous (read only when ACT != 0)
    x_ptr,  # (N, C, H, W) input, any strides
    dw_ptr,  # (OC, CG * KH * KW) weight gradient, contiguous
    db_ptr,  # (OC,) bias gradient (unused unless HAS_BIAS)
    sdn, sdc, sdh, sdw,  # output-gradient strides
    sxn, sxc, sxh, sxw,  # input strides
    H, W, OH, OW,  # input and output spatial sizes
    K,  # GEMM depth: N * OH * OW
    CG, OCG,  # input / output channels per group
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,  # leaky_relu's negative slope
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw = dz^T (*) x, a GEMM OC/groups x (C/groups*KH*KW) x (N*OH*OW) per group; db = row sums of dz.

    Precision: as _conv2d_fwd_kernel; db accumulates in the input dtype."""
    group = tl.program_id(2)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel within the group
    row_ok = rows < OCG
    oc = group * OCG + rows
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # flat (c, kh, kw)
    col_ok = cols < CG * KH * KW
    kw = cols % KW
    kh = (cols // KW) % KH
    c = group * CG + cols // (KW * KH)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dw_ptr.dtype.element_ty)
    bias_acc = tl.zeros((BLOCK_M,), dtype=dw_ptr.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # flat (n, oh, ow)
        k_ok = ks < K
        ow = ks % OW
        oh = (ks // OW) % OH
        n = (ks // (OW * OH)).to(tl.int64)
        a_off = oc[:, None] * sdc + (n * sdn + oh * sdh + ow * sdw)[None, :]
        a_ok = row_ok[:, None] & k_ok[None, :]
        a = tl.load(dy_ptr + a_off, mask=a_ok, other=0.0)
        y_off = (n[None, :] * (OCG * tl.num_programs(2)) + oc[:, None]) * (OH * OW) + (oh * OW + ow)[None, :]
        a = _activation_grad(y_ptr, y_off, a_ok, a, ACT, slope)
        ih = oh[:, None] * stride_h - pad_h + kh[None, :] * dil_h
        iw = ow[:, None] * stride_w - pad_w + kw[None, :] * dil_w
        b_ok = k_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b_off = n[:, None] * sxn + c[None, :] * sxc + ih * sxh + iw * sxw
        b = tl.load(x_ptr + b_off, mask=b_ok, other=0.0)
        acc = _mac(acc, a, b, USE_DOT, PRECISION)
        if HAS_BIAS:
            bias_acc += tl.sum(a, axis=1)
    dw_off = oc[:, None] * (CG * KH * KW) + cols[None, :]
    tl.store(dw_ptr + dw_off, acc, mask=row_ok[:, None] & col_ok[None, :])
    if HAS_BIAS:
        if tl.program_id(1) == 0:  # one column of programs owns the bias
            tl.store(db_ptr + oc, bias_acc, mask=row_ok)


def _dot_args(dtype: torch.dtype, kind: str, gemm: tuple[int, int, int]) -> dict:
    """Launch keywords shared by the three GEMM kernels (GEMM sizes M, N, K): precision, tiles, warps."""
    interpreted = config.interpreting()
    cfg = _launch_config(kind, dtype, interpreted, gemm)
    use_tf32 = ALLOW_TF32 and not interpreted
    return dict(
        USE_DOT=dtype == torch.float32,
        PRECISION="tf32" if use_tf32 else "ieee",
        BLOCK_M=cfg.block_m,
        BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k,
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
    )


def _geometry_args(geo: Geometry) -> tuple[int, ...]:
    return (*geo.stride, *geo.pad, *geo.dilation)


def _forward(x: Tensor, weight: Tensor, bias: Tensor | None, geo: Geometry, act: int, slope: float,
             pre: Tensor | None) -> Tensor:
    batch, channels, height, width = x.shape
    out_channels, kh, kw = weight.shape[0], weight.shape[2], weight.shape[3]
    out_h, out_w = geo.out_hw
    y = config.new_empty((batch, out_channels, out_h, out_w), x)
    rows, ocg = batch * out_h * out_w, out_channels // geo.groups
    args = _dot_args(x.dtype, "fwd", (rows, ocg, channels // geo.groups * kh * kw))
    grid = (triton.cdiv(rows, args["BLOCK_M"]), triton.cdiv(ocg, args["BLOCK_N"]), geo.groups)
    _conv2d_fwd_kernel[grid](
        x, weight, bias.contiguous() if bias is not None else x, y, y if pre is None else pre,
        *x.stride(), *weight.stride(),
        height, width, out_h, out_w, rows, channels // geo.groups, ocg, *_geometry_args(geo), slope,
        KH=kh, KW=kw, HAS_BIAS=bias is not None, ACT=act, STORE_PRE=pre is not None, **args,
    )  # fmt: skip
    return y


def _backward_input(
    dy: Tensor, y: Tensor, weight: Tensor, x_shape: torch.Size, geo: Geometry, act: int, slope: float
) -> Tensor:
    batch, channels, height, width = x_shape
    dx = config.new_empty(x_shape, dy)
    rows, cg = batch * height * width, channels // geo.groups
    kernel_taps = weight.shape[2] * weight.shape[3]
    args = _dot_args(dy.dtype, "bwd_input", (rows, cg, weight.shape[0] // geo.groups * kernel_taps))
    grid = (triton.cdiv(rows, args["BLOCK_M"]), triton.cdiv(cg, args["BLOCK_N"]), geo.groups)
    _conv2d_bwd_input_kernel[grid](
        dy, y, weight, dx, *dy.stride(), *weight.stride(), height, width, *geo.out_hw,
        rows, cg, weight.shape[0] // geo.groups, *_geometry_args(geo), slope,
        KH=weight.shape[2], KW=weight.shape[3], ACT=act, **args,
    )  # fmt: skip
    return dx


def _backward_weight(
    dy: Tensor, y: Tensor, x: Tensor, w_shape: torch.Size, geo: Geometry, act: int, slope: float,
    with_bias: bool,
) -> tuple[Tensor, Tensor | None]:
    out_channels, cg, kh, kw = w_shape
    dw = config.new_empty(w_shape, x)
    db = config.new_empty((out_channels,), x) if with_bias else None
    ocg = out_channels // geo.groups
    args = _dot_args(x.dtype, "bwd_weight", (ocg, cg * kh * kw, x.shape[0] * geo.out_hw[0] * geo.out_hw[1]))
    grid = (triton.cdiv(ocg, args["BLOCK_M"]), triton.cdiv(cg * kh * kw, args["BLOCK_N"]), geo.groups)
    _conv2d_bwd_weight_kernel[grid](
        dy, y, x, dw, db if with_bias else dw, *dy.stride(), *x.stride(), *x.shape[2:], *geo.out_hw,
        x.shape[0] * geo.out_hw[0] * geo.out_hw[1], cg, ocg, *_geometry_args(geo), slope,
        KH=kh, KW=kw, HAS_BIAS=with_bias, ACT=act, **args,
    )  # fmt: skip
    return dw, db


class _Conv2dFunction(torch.autograd.Function):
    """conv2d + bias + activation; the backward kernels apply the activation's derivative from the saved
    output as they load the output gradient."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, geo: Geometry, act: int, slope: float
    ) -> Tensor:
        pre = None  # leaky_relu's derivative needs the input's sign, which y hides when slope < 0;
        if backward_needs_input(act, slope):  # gelu's and silu's are not functions of y at all
            pre = config.new_empty((x.shape[0], weight.shape[0], *geo.out_hw), x)
        y = _forward(x, weight, bias, geo, act, slope, pre)
        ctx.save_for_backward(x, weight, pre if pre is not None else y if act else None)
        ctx.geo, ctx.act, ctx.slope, ctx.has_bias = geo, act, slope, bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, weight, y = ctx.saved_tensors
        y = dy if y is None else y  # without an activation the kernels never read y
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        act_args = (ctx.geo, ctx.act, ctx.slope)
        dx = _backward_input(dy, y, weight, x.shape, *act_args) if need_x else None
        dw = db = None
        if need_w or (need_b and ctx.has_bias):
            dw, db = _backward_weight(dy, y, x, weight.shape, *act_args, ctx.has_bias and need_b)
        return dx, dw if need_w else None, db, None, None, None


def conv2d_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    activation: str | None = None,
    slope: float = 0.01,
) -> torch.Tensor:
    """`activation(F.conv2d(...))` in one kernel; activation is relu, tanh, sigmoid, leaky_relu or None.

    `slope` is leaky_relu's negative slope (any sign; below 0 the forward also keeps the
    pre-activation for the backward). Precision: see the module docstring.
    """
    if activation not in _ACTIVATIONS:
        raise NotImplementedError(f"conv2d_act: activation {activation!r} (one of {list(_ACTIVATIONS)})")
    check_tensors(input, weight, bias)
    batched = input.dim() == 4
    x = input if batched else input.unsqueeze(0)
    geo = geometry(x, weight, stride, padding, dilation, groups)
    y = _Conv2dFunction.apply(x, weight, bias, geo, _ACTIVATIONS[activation], float(slope))
    return y if batched else y.squeeze(0)


def conv2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] | str = 0,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
) -> torch.Tensor:
    """`torch.nn.functional.conv2d` as Triton implicit GEMMs (ieee float32 dots; float64 sums of products)."""
    return conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation=None)
