"""Adaptive 2-D average pooling (`F.adaptive_avg_pool2d`): Triton forward and backward kernels.

Output (oh, ow) averages input rows [floor(oh*H/OH), ceil((oh+1)*H/OH)) and the same for
columns, PyTorch's windows: exact for any sizes (overlapping when OH does not divide H;
upsampling too). One program handles a block of outputs (forward) or of inputs (backward,
gathering the windows that cover each input), so no atomics are needed.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config, costs, policy
from netc.kernels.pool import _as_batched

__all__ = ["adaptive_avg_pool2d"]


@triton.jit
def _adaptive_window(o, size, out_size):
    """PyTorch's adaptive window [start, end) of output index o along one dimension."""
    return (o * size) // out_size, ((o + 1) * size + out_size - 1) // out_size


@triton.jit(launch_metadata=costs.elementwise("total", per="window"))
def _adaptive_avg_pool2d_fwd_kernel(
    x_ptr,  # (N, C, H, W) input, any strides
    y_ptr,  # (N, C, OH, OW) output, contiguous
    sxn, sxc, sxh, sxw,  # input strides, in elements
    C, H, W, OH, OW,
    total,  # output elements: N * C * OH * OW
    max_kw, window,  # the widest window's columns; max rows * max columns of any window
    BLOCK: tl.constexpr,  # outputs per program
    BLOCK_K: tl.constexpr,  # window elements per step
):
    """Each output sums its window in (BLOCK, BLOCK_K) tiles (a global pool reads whole planes)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, oh, ow)
    ok = offs < total
    ow = offs % OW
    oh = (offs // OW) % OH
    plane = offs // (OW * OH)
    h0, h1 = _adaptive_window(oh, H, OH)
    w0, w1 = _adaptive_window(ow, W, OW)
    base = (plane // C).to(tl.int64) * sxn + (plane % C).to(tl.int64) * sxc + h0 * sxh + w0 * sxw
    acc = tl.zeros((BLOCK, BLOCK_K), dtype=y_ptr.dtype.element_ty)
    for first in range(0, window, BLOCK_K):
        k = first + tl.arange(0, BLOCK_K)
        dh = k // max_kw
        dw = k % max_kw
        inside = ok[:, None] & (dh[None, :] < (h1 - h0)[:, None]) & (dw[None, :] < (w1 - w0)[:, None])
        acc += tl.load(x_ptr + base[:, None] + dh[None, :] * sxh + dw[None, :] * sxw, mask=inside, other=0.0)
    tl.store(y_ptr + offs, tl.sum(acc, axis=1) / ((h1 - h0) * (w1 - w0)), mask=ok)


@triton.jit(launch_metadata=costs.elementwise("total"))
def _adaptive_avg_pool2d_bwd_kernel(
    dy_ptr,  # (N, C, OH, OW) output gradient, any strides
    dx_ptr,  # (N, C, H, W) input gradient, contiguous
    sdn, sdc, sdh, sdw,  # output-gradient strides
    C, H, W, OH, OW,
    total,  # input elements: N * C * H * W
    max_oh, max_ow,  # most output rows / columns whose windows share one input row / column
    BLOCK: tl.constexpr,
):
    """Each input element gathers grad / window size from the outputs whose windows hold it."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (n, c, h, w)
    ok = offs < total
    w_in = offs % W
    h_in = (offs // W) % H
    plane = offs // (W * H)
    dy_base = (plane // C).to(tl.int64) * sdn + (plane % C).to(tl.int64) * sdc
    oh0, oh1 = _adaptive_window(h_in, OH, H)  # the outputs covering h_in: the same formula, sizes swapped
    ow0, ow1 = _adaptive_window(w_in, OW, W)
    acc = tl.zeros((BLOCK,), dtype=dx_ptr.dtype.element_ty)
    for i in range(0, max_oh):
        oh = oh0 + i
        h0, h1 = _adaptive_window(oh, H, OH)
        for j in range(0, max_ow):
            ow = ow0 + j
            w0, w1 = _adaptive_window(ow, W, OW)
            hit = ok & (oh < oh1) & (ow < ow1)
            grad = tl.load(dy_ptr + dy_base + oh * sdh + ow * sdw, mask=hit, other=0.0)
            acc += tl.where(hit, grad / ((h1 - h0) * (w1 - w0)), 0.0)
    tl.store(dx_ptr + offs, acc, mask=ok)


def _most_per_window(size: int, out_size: int) -> int:
    """An upper bound on ceil((o+1)*size/out) - floor(o*size/out) over o: exact when out divides size."""
    return size // out_size if size % out_size == 0 else size // out_size + 2


class _AdaptiveAvgPool2dFunction(torch.autograd.Function):
    """adaptive average pooling; the backward spreads each output gradient evenly over its window."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:  # type: ignore[override]
        (height, width), (oh, ow) = x.shape[2:], out_hw
        y = config.new_empty((x.shape[0], x.shape[1], oh, ow), x)
        max_kh, max_kw = _most_per_window(height, oh), _most_per_window(width, ow)
        block, block_k, warps = policy.adaptive_pool_tile(max_kh * max_kw)
        if y.numel():
            _adaptive_avg_pool2d_fwd_kernel[(triton.cdiv(y.numel(), block),)](
                x, y, *x.stride(), x.shape[1], height, width, oh, ow, y.numel(), max_kw, max_kh * max_kw,
                BLOCK=block, BLOCK_K=block_k, num_warps=warps,
            )  # fmt: skip
        ctx.x_shape, ctx.out_hw = x.shape, out_hw
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        (height, width), (oh, ow) = ctx.x_shape[2:], ctx.out_hw
        dx = config.new_empty(ctx.x_shape, dy)
        block, _, warps = policy.adaptive_pool_tile(1)
        if dx.numel():
            _adaptive_avg_pool2d_bwd_kernel[(triton.cdiv(dx.numel(), block),)](
                dy, dx, *dy.stride(), ctx.x_shape[1], height, width, oh, ow, dx.numel(),
                _most_per_window(oh, height), _most_per_window(ow, width), BLOCK=block, num_warps=warps,
            )  # fmt: skip
        return dx, None


def adaptive_avg_pool2d(input: torch.Tensor, output_size: int | None | tuple[int | None, int | None]
                        ) -> torch.Tensor:
    """`torch.nn.functional.adaptive_avg_pool2d`: any output size (None keeps that input size)."""
    x = _as_batched(input, "adaptive_avg_pool2d")
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    if len(sizes) != 2:
        raise ValueError(f"adaptive_avg_pool2d: output_size must be an int or a pair, got {output_size!r}")
    out_hw = tuple(x.shape[2 + i] if size is None else int(size) for i, size in enumerate(sizes))
    if min(out_hw) < 0 or min(x.shape[2:]) < 1:
        raise ValueError(f"adaptive_avg_pool2d: output size {out_hw} for input {tuple(input.shape)}")
    y = _AdaptiveAvgPool2dFunction.apply(x, out_hw)
    return y if input.dim() == 4 else y.squeeze(0)
