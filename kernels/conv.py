"""2-D convolution (+ fused bias and activation): tensors in, Triton implicit-GEMM kernels, tensors out.

Each direction (forward, input gradient, weight + bias gradient) is an
implicit GEMM whose operand tiles are gathered with the convolution's index
math (stride, padding, dilation, groups); nothing calls PyTorch's
convolution. The weight and bias gradients are one split-K launch
(conv_weight.py). Precision of every GEMM kernel here: float32 inputs
multiply with `tl.dot` at `policy.dot_precision("conv", ...)`: "tf32" on a
CUDA device while `torch.backends.cudnn.allow_tf32` is set (PyTorch's own
default for convolutions), "ieee" otherwise and always in the interpreter;
the accumulator is float32. float64 inputs use a float64 sum of products,
not `tl.dot`, so they run on GPUs without float64 MMA too. Tiles and warps
come from `policy.conv_tiles`.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config, costs, policy
from netc.kernels.activation import (
    ACTIVATIONS,
    activation_grad,
    apply_activation,
    backward_needs_input,
)
from netc.kernels.conv_geometry import Geometry, check_tensors, geometry
from netc.kernels.conv_weight import backward_weight, mac

__all__ = ["conv2d", "conv2d_act"]

Tensor = torch.Tensor

# activation name -> the code the kernels branch on at compile time (shared with activation.py)
_ACTIVATIONS = ACTIVATIONS


@triton.jit
def _activation_grad(y_ptr, y_off, ok, grad, ACT: tl.constexpr, slope):
    """grad w.r.t. the activation's output -> grad w.r.t. its input, from the saved output y.

    For leaky_relu with a negative slope, y_ptr holds the pre-activation instead: y > 0
    tells the sign of the input only when slope >= 0.
    """
    if ACT != 0:
        grad = activation_grad(grad, tl.load(y_ptr + y_off, mask=ok, other=0.0), ACT, slope)
    return grad


@triton.jit(launch_metadata=costs.conv2d("fwd"))
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

    Precision: float32 tl.dot at PRECISION (policy.dot_precision), float32 accumulator;
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
        acc = mac(acc, a, b, USE_DOT, PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + oc, mask=col_ok, other=0.0)[None, :]
    y_off = (n[:, None] * (OCG * tl.num_programs(2)) + oc[None, :]) * (OH * OW) + (oh * OW + ow)[:, None]
    if STORE_PRE:
        tl.store(pre_ptr + y_off, acc, mask=row_ok[:, None] & col_ok[None, :])
    acc = apply_activation(acc, ACT, slope)
    tl.store(y_ptr + y_off, acc, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit(launch_metadata=costs.conv2d("bwd_input"))
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
        acc = mac(acc, a, b, USE_DOT, PRECISION)
    channels = CG * tl.num_programs(2)
    dx_off = (n[:, None] * channels + (group * CG + cols)[None, :]) * (H * W) + (h_in * W + w_in)[:, None]
    tl.store(dx_ptr + dx_off, acc, mask=row_ok[:, None] & col_ok[None, :])


def _dot_args(dtype: torch.dtype, device: torch.device, kind: str, gemm: tuple[int, int, int]) -> dict:
    """Launch keywords of the forward and input-gradient GEMMs (sizes M, N, K): precision, tiles, warps."""
    tiles = policy.conv_tiles(kind, dtype, gemm)
    return dict(
        USE_DOT=dtype == torch.float32,
        PRECISION=policy.dot_precision("conv", dtype, device),
        BLOCK_M=tiles.block_m,
        BLOCK_N=tiles.block_n,
        BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps,
        num_stages=tiles.num_stages,
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
    args = _dot_args(x.dtype, x.device, "fwd", (rows, ocg, channels // geo.groups * kh * kw))
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
    depth = weight.shape[0] // geo.groups * weight.shape[2] * weight.shape[3]  # OC/g * KH * KW
    args = _dot_args(dy.dtype, dy.device, "bwd_input", (rows, cg, depth))
    grid = (triton.cdiv(rows, args["BLOCK_M"]), triton.cdiv(cg, args["BLOCK_N"]), geo.groups)
    _conv2d_bwd_input_kernel[grid](
        dy, y, weight, dx, *dy.stride(), *weight.stride(), height, width, *geo.out_hw,
        rows, cg, weight.shape[0] // geo.groups, *_geometry_args(geo), slope,
        KH=weight.shape[2], KW=weight.shape[3], ACT=act, **args,
    )  # fmt: skip
    return dx


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
            dw, db = backward_weight(dy, y, x, weight.shape, *act_args, ctx.has_bias and need_b)
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
    """`torch.nn.functional.conv2d` as Triton implicit GEMMs (float32 dots at the policy's precision;
    float64 sums of products)."""
    return conv2d_act(input, weight, bias, stride, padding, dilation, groups, activation=None)
