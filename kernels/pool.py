"""2-D max and average pooling: tensors in, Triton forward and backward kernels, tensors (and indices) out.

One program handles a block of output elements (forward) or input elements
(backward) and walks the kernel window itself, so no atomics are needed:
the backward gathers, for each input element, the windows that cover it.
Pooling does no multiplication, so there is no precision choice: values
are compared and summed in the input's dtype (float32 or float64). Adaptive pooling: adaptive_pool.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config, costs, policy

__all__ = ["max_pool2d", "avg_pool2d"]

IntPair = int | tuple[int, int]


def _launch_config(elements: int) -> tuple[int, int]:
    """(elements per program, warps) for a launch over `elements`: policy.py's pool section."""
    return policy.pool_block(elements)


@triton.jit(launch_metadata=costs.window("total"))
def _max_pool2d_fwd_kernel(
    x_ptr,  # (N, C, H, W) input, any strides
    y_ptr,  # (N, C, OH, OW) output, contiguous
    idx_ptr,  # (N, C, OH, OW) int64 argmax, flat into H*W, contiguous (written if STORE_INDICES)
    sxn, sxc, sxh, sxw,  # input strides, in elements
    C, H, W, OH, OW,  # channels, input and output spatial sizes
    total,  # output elements: N * C * OH * OW
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, STORE_INDICES: tl.constexpr, BLOCK: tl.constexpr,
):
    """Window max and its flat H*W index, compared in the input dtype (no arithmetic)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, oh, ow)
    ok = offs < total
    ow = offs % OW
    oh = (offs // OW) % OH
    plane = offs // (OW * OH)
    base = (plane // C).to(tl.int64) * sxn + (plane % C) * sxc
    best = tl.full((BLOCK,), float("-inf"), dtype=y_ptr.dtype.element_ty)
    best_idx = tl.full((BLOCK,), -1, dtype=tl.int64)
    for kh in range(KH):
        ih = oh * stride_h - pad_h + kh * dil_h
        for kw in range(KW):
            iw = ow * stride_w - pad_w + kw * dil_w
            inside = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            value = tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=inside, other=float("-inf"))
            # PyTorch's rule: a strictly larger value or any NaN wins, so ties keep the first
            # element in scan order and NaN keeps the last NaN; the first element seeds the argmax
            take = inside & ((value > best) | (value != value) | (best_idx < 0))
            best = tl.where(take, value, best)
            best_idx = tl.where(take, (ih * W + iw).to(tl.int64), best_idx)
    tl.store(y_ptr + offs, best, mask=ok)
    if STORE_INDICES:
        tl.store(idx_ptr + offs, best_idx, mask=ok)


@triton.jit(launch_metadata=costs.elementwise("total"))
def _max_pool2d_bwd_kernel(
    dy_ptr,  # (N, C, OH, OW) output gradient, any strides
    idx_ptr,  # (N, C, OH, OW) int64 argmax from the forward, contiguous
    dx_ptr,  # (N, C, H, W) input gradient, contiguous
    sdn, sdc, sdh, sdw,  # output-gradient strides
    C, H, W, OH, OW,
    total,  # input elements: N * C * H * W
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    KH: tl.constexpr, KW: tl.constexpr, BLOCK: tl.constexpr,
):
    """Each input element gathers the gradients of the windows whose argmax it is (input-dtype sums)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, h, w)
    ok = offs < total
    w_in = offs % W
    h_in = (offs // W) % H
    plane = offs // (W * H)
    dy_base = (plane // C).to(tl.int64) * sdn + (plane % C) * sdc
    idx_base = plane.to(tl.int64) * (OH * OW)
    acc = tl.zeros((BLOCK,), dtype=dx_ptr.dtype.element_ty)
    for kh in range(KH):
        # tap kh of output row oh covers input row h when oh = (h + pad - kh*dil) / stride divides
        th = h_in + pad_h - kh * dil_h
        oh = th // stride_h
        row_hit = ok & (th >= 0) & (th % stride_h == 0) & (oh < OH)
        for kw in range(KW):
            tw = w_in + pad_w - kw * dil_w
            ow = tw // stride_w
            hit = row_hit & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
            argmax = tl.load(idx_ptr + idx_base + oh * OW + ow, mask=hit, other=-1)
            chosen = hit & (argmax == h_in * W + w_in)
            acc += tl.load(dy_ptr + dy_base + oh * sdh + ow * sdw, mask=chosen, other=0.0)
    tl.store(dx_ptr + offs, acc, mask=ok)


@triton.jit
def _avg_divisor(
    oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, divisor,
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr,
):
    """PyTorch's divisor for window (oh, ow): override, window size clipped to the padded input, or
    the count of real elements; also whether the window holds any real element."""
    h0 = oh * stride_h - pad_h
    w0 = ow * stride_w - pad_w
    h1 = tl.minimum(h0 + KH, H + pad_h)
    w1 = tl.minimum(w0 + KW, W + pad_w)
    padded_size = (h1 - h0) * (w1 - w0)
    rows = tl.minimum(h1, H) - tl.maximum(h0, 0)
    cols = tl.minimum(w1, W) - tl.maximum(w0, 0)
    nonempty = (rows > 0) & (cols > 0)
    if COUNT_PAD:
        count = padded_size
    else:
        count = tl.where(nonempty, rows * cols, 1)
    return tl.where(divisor > 0, divisor, count), nonempty


@triton.jit(launch_metadata=costs.window("total"))
def _avg_pool2d_fwd_kernel(
    x_ptr,  # (N, C, H, W) input, any strides
    y_ptr,  # (N, C, OH, OW) output, contiguous
    sxn, sxc, sxh, sxw,  # input strides, in elements
    C, H, W, OH, OW,
    total,  # output elements: N * C * OH * OW
    stride_h, stride_w, pad_h, pad_w,
    divisor,  # divisor_override, or 0 for none
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Window sums in the input dtype, divided as PyTorch divides."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, oh, ow)
    ok = offs < total
    ow = offs % OW
    oh = (offs // OW) % OH
    plane = offs // (OW * OH)
    base = (plane // C).to(tl.int64) * sxn + (plane % C) * sxc
    acc = tl.zeros((BLOCK,), dtype=y_ptr.dtype.element_ty)
    for kh in range(KH):
        ih = oh * stride_h - pad_h + kh
        for kw in range(KW):
            iw = ow * stride_w - pad_w + kw
            inside = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            acc += tl.load(x_ptr + base + ih * sxh + iw * sxw, mask=inside, other=0.0)
    div, nonempty = _avg_divisor(oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, divisor, KH, KW, COUNT_PAD)
    tl.store(y_ptr + offs, tl.where(nonempty, acc / div, 0.0), mask=ok)


@triton.jit(launch_metadata=costs.window("total"))
def _avg_pool2d_bwd_kernel(
    dy_ptr,  # (N, C, OH, OW) output gradient, any strides
    dx_ptr,  # (N, C, H, W) input gradient, contiguous
    sdn, sdc, sdh, sdw,  # output-gradient strides
    C, H, W, OH, OW,
    total,  # input elements: N * C * H * W
    stride_h, stride_w, pad_h, pad_w,
    divisor,  # divisor_override, or 0 for none
    KH: tl.constexpr, KW: tl.constexpr, COUNT_PAD: tl.constexpr, BLOCK: tl.constexpr,
):
    """Each input element gathers grad / divisor from the windows that cover it (input-dtype sums)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, h, w)
    ok = offs < total
    w_in = offs % W
    h_in = (offs // W) % H
    plane = offs // (W * H)
    dy_base = (plane // C).to(tl.int64) * sdn + (plane % C) * sdc
    acc = tl.zeros((BLOCK,), dtype=dx_ptr.dtype.element_ty)
    for kh in range(KH):
        th = h_in + pad_h - kh
        oh = th // stride_h
        row_hit = ok & (th >= 0) & (th % stride_h == 0) & (oh < OH)
        for kw in range(KW):
            tw = w_in + pad_w - kw
            ow = tw // stride_w
            hit = row_hit & (tw >= 0) & (tw % stride_w == 0) & (ow < OW)
            grad = tl.load(dy_ptr + dy_base + oh * sdh + ow * sdw, mask=hit, other=0.0)
            div, _ = _avg_divisor(oh, ow, H, W, stride_h, stride_w, pad_h, pad_w, divisor, KH, KW, COUNT_PAD)
            acc += grad / div
    tl.store(dx_ptr + offs, acc, mask=ok)


@dataclass(frozen=True)
class _PoolGeometry:
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]

    def args(self) -> tuple[int, ...]:
        """stride_h, stride_w, pad_h, pad_w (+ dil_h, dil_w for max pooling) as the kernels take them."""
        return (*self.stride, *self.pad, *self.dilation)


def _pair(value: object, name: str, op: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)  # type: ignore[arg-type]
    if len(pair) == 1:
        pair = (pair[0], pair[0])
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """PyTorch's pooling_output_shape: with ceil_mode, a last window starting in the padding is dropped."""
    out = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (out - 1) * s >= size + p:
        out -= 1
    return out


def _geometry(
    x: torch.Tensor, op: str, kernel_size: IntPair, stride: IntPair | None, padding: IntPair,
    dilation: IntPair, ceil_mode: bool,
) -> _PoolGeometry:
    kernel = _pair(kernel_size, "kernel_size", op)
    empty = isinstance(stride, (tuple, list)) and len(stride) == 0  # PyTorch: () or [] means the kernel size
    stride_hw = kernel if stride is None or empty else _pair(stride, "stride", op)
    pad, dil = _pair(padding, "padding", op), _pair(dilation, "dilation", op)
    if min(kernel) < 1 or min(stride_hw) < 1 or min(dil) < 1 or min(pad) < 0:
        raise ValueError(f"{op}: kernel_size, stride, dilation must be >= 1 and padding >= 0")
    if pad[0] > kernel[0] // 2 or pad[1] > kernel[1] // 2:  # PyTorch's limit, dilation or not
        raise ValueError(f"{op}: padding {pad} exceeds half the kernel {kernel}")
    out_hw = tuple(
        _out_size(size, k, s, p, d, ceil_mode)
        for size, k, s, p, d in zip(x.shape[-2:], kernel, stride_hw, pad, dil, strict=True)
    )
    if min(out_hw) < 1:
        raise ValueError(f"{op}: output size {out_hw} is too small for input {tuple(x.shape)}")
    return _PoolGeometry(kernel, stride_hw, pad, dil, out_hw)  # type: ignore[arg-type]


def _as_batched(x: torch.Tensor, op: str) -> torch.Tensor:
    if x.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"{op}: dtype {x.dtype} (float32 and float64 only)")
    if x.dim() not in (3, 4):
        raise ValueError(f"{op}: expected a 3-D or 4-D input, got shape {tuple(x.shape)}")
    return x if x.dim() == 4 else x.unsqueeze(0)


def _sizes(x_shape: torch.Size, geo: _PoolGeometry) -> tuple[int, ...]:
    """C, H, W, OH, OW as the kernels take them."""
    return (x_shape[1], x_shape[2], x_shape[3], *geo.out_hw)


def _max_pool_forward(
    x: torch.Tensor, geo: _PoolGeometry, store_indices: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(y, int64 indices, or None when not stored: inference needs only y)."""
    out_shape = (x.shape[0], x.shape[1], *geo.out_hw)
    y = config.new_empty(out_shape, x)
    indices = config.new_empty(out_shape, x, torch.int64) if store_indices else None
    block, warps = _launch_config(y.numel())
    _max_pool2d_fwd_kernel[(triton.cdiv(y.numel(), block),)](
        x, y, y if indices is None else indices, *x.stride(), *_sizes(x.shape, geo), y.numel(),
        *geo.args(), KH=geo.kernel[0], KW=geo.kernel[1], STORE_INDICES=store_indices, BLOCK=block,
        num_warps=warps,
    )  # fmt: skip
    return y, indices


class _MaxPool2dFunction(torch.autograd.Function):
    """max pooling; saves the argmax indices and routes each output gradient back to its argmax."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, geo: _PoolGeometry) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        y, indices = _max_pool_forward(x, geo, store_indices=True)
        ctx.save_for_backward(indices)
        ctx.geo, ctx.x_shape = geo, x.shape
        ctx.mark_non_differentiable(indices)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for the indices (a GPU op per step)
        return y, indices

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor | None, _dindices: Any) -> tuple[torch.Tensor | None, None]:  # type: ignore[override]
        if dy is None:  # only the indices were used downstream: x gets no gradient
            return None, None
        (indices,) = ctx.saved_tensors
        geo = ctx.geo
        dx = config.new_empty(ctx.x_shape, dy)
        block, warps = _launch_config(dx.numel())
        _max_pool2d_bwd_kernel[(triton.cdiv(dx.numel(), block),)](
            dy, indices, dx, *dy.stride(), *_sizes(ctx.x_shape, geo), dx.numel(), *geo.args(),
            KH=geo.kernel[0], KW=geo.kernel[1], BLOCK=block, num_warps=warps,
        )  # fmt: skip
        return dx, None


class _AvgPool2dFunction(torch.autograd.Function):
    """average pooling; the backward spreads each output gradient over its window with the same divisor."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, geo: _PoolGeometry, count_pad: bool, divisor: int
    ) -> torch.Tensor:
        y = config.new_empty((x.shape[0], x.shape[1], *geo.out_hw), x)
        block, warps = _launch_config(y.numel())
        _avg_pool2d_fwd_kernel[(triton.cdiv(y.numel(), block),)](
            x, y, *x.stride(), *_sizes(x.shape, geo), y.numel(), *geo.args()[:4], divisor,
            KH=geo.kernel[0], KW=geo.kernel[1], COUNT_PAD=count_pad, BLOCK=block, num_warps=warps,
        )  # fmt: skip
        ctx.geo, ctx.x_shape, ctx.count_pad, ctx.divisor = geo, x.shape, count_pad, divisor
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        geo = ctx.geo
        dx = config.new_empty(ctx.x_shape, dy)
        block, warps = _launch_config(dx.numel())
        _avg_pool2d_bwd_kernel[(triton.cdiv(dx.numel(), block),)](
            dy, dx, *dy.stride(), *_sizes(ctx.x_shape, geo), dx.numel(), *geo.args()[:4], ctx.divisor,
            KH=geo.kernel[0], KW=geo.kernel[1], COUNT_PAD=ctx.count_pad, BLOCK=block, num_warps=warps,
        )  # fmt: skip
        return dx, None, None, None


def max_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    ceil_mode: bool = False,
    return_indices: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`torch.nn.functional.max_pool2d`: same ties (first max), NaN propagation and indices (flat in H*W)."""
    x = _as_batched(input, "max_pool2d")
    geo = _geometry(x, "max_pool2d", kernel_size, stride, padding, dilation, ceil_mode)
    if not return_indices and not (torch.is_grad_enabled() and x.requires_grad):
        y = _max_pool_forward(x, geo, store_indices=False)[0]  # inference: no indices to write
        return y if input.dim() == 4 else y.squeeze(0)
    y, indices = _MaxPool2dFunction.apply(x, geo)
    if input.dim() == 3:
        y, indices = y.squeeze(0), indices.squeeze(0)
    return (y, indices) if return_indices else y


def avg_pool2d(
    input: torch.Tensor,
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
    ceil_mode: bool = False,
    count_include_pad: bool = True,
    divisor_override: int | None = None,
) -> torch.Tensor:
    """`torch.nn.functional.avg_pool2d`, divisors as PyTorch computes them (padding counts, override)."""
    x = _as_batched(input, "avg_pool2d")
    geo = _geometry(x, "avg_pool2d", kernel_size, stride, padding, 1, ceil_mode)
    if divisor_override is not None and divisor_override < 1:
        raise ValueError(f"avg_pool2d: divisor_override must be >= 1, got {divisor_override}")
    y = _AvgPool2dFunction.apply(x, geo, bool(count_include_pad), int(divisor_override or 0))
    return y if input.dim() == 4 else y.squeeze(0)
