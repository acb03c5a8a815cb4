"""Layer normalization: (..., *normalized_shape) input -> normalized over the trailing dims, with autograd.

The input is viewed as (M, N) rows, N = prod(normalized_shape). Forward: one
program per BLOCK_M rows computes each row's mean, then its variance about
that mean (two passes, no cancellation), writes y and saves (mean, rstd).
A row of up to BLOCK_N values stays in registers (ONE_BLOCK); longer rows loop
over BLOCK_N columns. Backward, per row:
    dx = rstd * (w dy - mean(w dy * xhat) * xhat - mean(w dy)),  xhat = (x - mean) * rstd,
and dw = sum over rows of dy * xhat, db = sum of dy: a column reduction over M
rows, split across CTAs and combined by the last CTA to arrive (see
norm_common.py), so a short normalized_shape with many rows still fills the
GPU. Sums run in the input's dtype (float32 or float64); no `tl.dot`.
Launch settings: policy.py's normalization section.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config, costs, policy
from netc.kernels.norm_common import join_float, last_arrival, rsqrt, split_float, sum_splits, tickets

__all__ = ["layer_norm"]


@triton.jit
def _affine(y, w_ptr, b_ptr, cols, col_ok, HAS_W: tl.constexpr, HAS_B: tl.constexpr):
    if HAS_W:
        y = y * tl.load(w_ptr + cols, mask=col_ok, other=0.0)[None, :]
    if HAS_B:
        y = y + tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    return y


@triton.jit(launch_metadata=costs.rows("M", "N", 8))
def _ln_fwd_kernel(
    x_ptr,  # (M, N) input, unit column stride
    y_ptr,  # (M, N) output, contiguous
    w_ptr, b_ptr,  # (N,) contiguous weight and bias (read if HAS_W / HAS_B)
    stats_ptr,  # (2, M) out: each row's mean and 1 / sqrt(var + eps)
    s_xm,  # input row stride
    M, N,  # rows, row length
    eps_hi, eps_lo,  # eps as a float32 (hi, lo) pair
    HAS_W: tl.constexpr, HAS_B: tl.constexpr, ONE_BLOCK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    x_row = x_ptr + rows.to(tl.int64)[:, None] * s_xm
    y_row = y_ptr + rows.to(tl.int64)[:, None] * N
    acc_ty = y_ptr.dtype.element_ty
    eps = join_float(eps_hi, eps_lo, acc_ty)
    if ONE_BLOCK:  # the whole row in registers: one read, one write
        cols = tl.arange(0, BLOCK_N)
        ok = row_ok[:, None] & (cols < N)[None, :]
        x = tl.load(x_row + cols[None, :], mask=ok, other=0.0)
        mean = tl.sum(x, axis=1) / N
        centred = tl.where(ok, x - mean[:, None], 0.0)
        rstd = rsqrt(tl.sum(centred * centred, axis=1) / N + eps)
        y = _affine(centred * rstd[:, None], w_ptr, b_ptr, cols, cols < N, HAS_W, HAS_B)
        tl.store(y_row + cols[None, :], y, mask=ok)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], acc_ty)
        for first in range(0, N, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            acc += tl.load(x_row + cols[None, :], mask=row_ok[:, None] & (cols < N)[None, :], other=0.0)
        mean = tl.sum(acc, axis=1) / N
        acc = tl.zeros([BLOCK_M, BLOCK_N], acc_ty)
        for first in range(0, N, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            ok = row_ok[:, None] & (cols < N)[None, :]
            centred = tl.where(ok, tl.load(x_row + cols[None, :], mask=ok, other=0.0) - mean[:, None], 0.0)
            acc += centred * centred
        rstd = rsqrt(tl.sum(acc, axis=1) / N + eps)
        for first in range(0, N, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            ok = row_ok[:, None] & (cols < N)[None, :]
            x = tl.load(x_row + cols[None, :], mask=ok, other=0.0)
            y = _affine((x - mean[:, None]) * rstd[:, None], w_ptr, b_ptr, cols, cols < N, HAS_W, HAS_B)
            tl.store(y_row + cols[None, :], y, mask=ok)
    tl.store(stats_ptr + rows, mean, mask=row_ok)
    tl.store(stats_ptr + M + rows, rstd, mask=row_ok)


@triton.jit
def _ln_tile_grads(dy_row, x_row, w_ptr, mean, rstd, row_ok, cols, HAS_W: tl.constexpr, N):
    """(xhat, w * dy) on one (BLOCK_M, BLOCK_N) tile, 0 outside the rows and columns."""
    ok = row_ok[:, None] & (cols < N)[None, :]
    x = tl.load(x_row + cols[None, :], mask=ok, other=0.0)
    wdy = tl.load(dy_row + cols[None, :], mask=ok, other=0.0)
    if HAS_W:
        wdy = wdy * tl.load(w_ptr + cols, mask=cols < N, other=0.0)[None, :]
    return tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0), wdy


@triton.jit(launch_metadata=costs.rows("M", "N", 10))
def _ln_bwd_kernel(
    dy_ptr, x_ptr,  # (M, N) output gradient and input, unit column strides
    w_ptr,  # (N,) weight (read if HAS_W)
    stats_ptr,  # (2, M) mean and rstd from the forward
    dx_ptr,  # (M, N) out: input gradient, contiguous
    s_gm, s_xm,  # row strides of dy and x
    M, N,
    HAS_W: tl.constexpr, ONE_BLOCK: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < M
    mean = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
    rstd = tl.load(stats_ptr + M + rows, mask=row_ok, other=0.0)
    dy_row = dy_ptr + rows.to(tl.int64)[:, None] * s_gm
    x_row = x_ptr + rows.to(tl.int64)[:, None] * s_xm
    dx_row = dx_ptr + rows.to(tl.int64)[:, None] * N
    if ONE_BLOCK:
        cols = tl.arange(0, BLOCK_N)
        xhat, wdy = _ln_tile_grads(dy_row, x_row, w_ptr, mean, rstd, row_ok, cols, HAS_W, N)
        proj = tl.sum(xhat * wdy, axis=1) / N
        shift = tl.sum(wdy, axis=1) / N
        dx = (wdy - xhat * proj[:, None] - shift[:, None]) * rstd[:, None]
        tl.store(dx_row + cols[None, :], dx, mask=row_ok[:, None] & (cols < N)[None, :])
    else:
        acc_proj = tl.zeros([BLOCK_M, BLOCK_N], dx_ptr.dtype.element_ty)
        acc_shift = tl.zeros([BLOCK_M, BLOCK_N], dx_ptr.dtype.element_ty)
        for first in range(0, N, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            xhat, wdy = _ln_tile_grads(dy_row, x_row, w_ptr, mean, rstd, row_ok, cols, HAS_W, N)
            acc_proj += xhat * wdy
            acc_shift += wdy
        proj = tl.sum(acc_proj, axis=1) / N
        shift = tl.sum(acc_shift, axis=1) / N
        for first in range(0, N, BLOCK_N):
            cols = first + tl.arange(0, BLOCK_N)
            xhat, wdy = _ln_tile_grads(dy_row, x_row, w_ptr, mean, rstd, row_ok, cols, HAS_W, N)
            dx = (wdy - xhat * proj[:, None] - shift[:, None]) * rstd[:, None]
            tl.store(dx_row + cols[None, :], dx, mask=row_ok[:, None] & (cols < N)[None, :])


@triton.jit(launch_metadata=costs.rows("M", "N", 4))
def _ln_param_grad_kernel(
    dy_ptr, x_ptr,  # (M, N) output gradient and input, unit column strides
    stats_ptr,  # (2, M) mean and rstd from the forward
    part_ptr,  # (2, splits, N) scratch: per-split sums of dy * xhat and of dy
    ticket_ptr,  # (column blocks,) int32 arrival counters, 0 on entry and on exit
    dw_ptr, db_ptr,  # (N,) out if HAS_DW / HAS_DB
    s_gm, s_xm,  # row strides of dy and x
    M, N,
    chunk, splits,  # rows per split (a multiple of BLOCK_R), splits per column block
    HAS_DW: tl.constexpr, HAS_DB: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    block = tl.program_id(0)
    split = tl.program_id(1)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < N
    acc_w = tl.zeros([BLOCK_R, BLOCK_C], part_ptr.dtype.element_ty)
    acc_b = tl.zeros([BLOCK_R, BLOCK_C], part_ptr.dtype.element_ty)
    row_end = tl.minimum(split * chunk + chunk, M)
    for start in range(split * chunk, row_end, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        row_ok = rows < row_end
        mean = tl.load(stats_ptr + rows, mask=row_ok, other=0.0)
        rstd = tl.load(stats_ptr + M + rows, mask=row_ok, other=0.0)
        ok = row_ok[:, None] & col_ok[None, :]
        dy = tl.load(dy_ptr + rows.to(tl.int64)[:, None] * s_gm + cols[None, :], mask=ok, other=0.0)
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * s_xm + cols[None, :], mask=ok, other=0.0)
        acc_w += dy * tl.where(ok, (x - mean[:, None]) * rstd[:, None], 0.0)
        acc_b += dy
    tl.store(part_ptr + split * N + cols, tl.sum(acc_w, axis=0), mask=col_ok)
    tl.store(part_ptr + (splits + split) * N + cols, tl.sum(acc_b, axis=0), mask=col_ok)
    if last_arrival(ticket_ptr + block, splits):
        if HAS_DW:
            total = sum_splits(part_ptr, cols, col_ok, N, splits, BLOCK_R, BLOCK_C)
            tl.store(dw_ptr + cols, total, mask=col_ok)
        if HAS_DB:
            total = sum_splits(part_ptr + splits * N, cols, col_ok, N, splits, BLOCK_R, BLOCK_C)
            tl.store(db_ptr + cols, total, mask=col_ok)
        tl.store(ticket_ptr + block, 0)


def _rows(t: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """t as (m, n) with a unit column stride: a view when the layout allows, else a contiguous copy."""
    t2 = t.reshape(m, n)
    return t2 if t2.stride(1) == 1 or n <= 1 else t2.contiguous()


def _row_tiles(x2: torch.Tensor) -> tuple[dict[str, Any], tuple[int]]:
    block_m, block_n, warps = policy.layer_norm_tile(x2.shape[1], x2.element_size())
    cfg = {"ONE_BLOCK": x2.shape[1] <= block_n, "BLOCK_M": block_m, "BLOCK_N": block_n, "num_warps": warps}
    return cfg, (triton.cdiv(x2.shape[0], block_m),)


def _param_grads(dy2: torch.Tensor, x2: torch.Tensor, stats: torch.Tensor, need_w: bool,
                 need_b: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dw, db) over all M rows by one split column reduction."""
    m, n = x2.shape
    block_r, block_c, warps = policy.norm_tile(n, channels_minor=True)
    splits = policy.norm_splits(triton.cdiv(n, block_c), m, block_r)
    chunk = triton.cdiv(triton.cdiv(m, splits), block_r) * block_r
    splits = triton.cdiv(m, chunk)
    part = torch.empty((2, splits, n), dtype=x2.dtype, device=x2.device)
    dw, db = config.new_empty((n,), x2), config.new_empty((n,), x2)
    grid = (triton.cdiv(n, block_c), splits)
    _ln_param_grad_kernel[grid](
        dy2, x2, stats, part, tickets(x2.device, grid[0]), dw, db, dy2.stride(0), x2.stride(0), m, n,
        chunk, splits, HAS_DW=need_w, HAS_DB=need_b, BLOCK_R=block_r, BLOCK_C=block_c, num_warps=warps,
    )  # fmt: skip
    return dw, db


class _LayerNorm(torch.autograd.Function):
    """y = (x - mean) * rstd * w + b per row of (M, N); saves x, w and the (mean, rstd) of every row."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x2: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float
    ) -> torch.Tensor:
        m, n = x2.shape
        y2 = config.new_empty((m, n), x2)
        stats = config.new_empty((2, m), x2)
        if x2.numel():
            cfg, grid = _row_tiles(x2)
            _ln_fwd_kernel[grid](
                x2, y2, x2 if weight is None else weight, x2 if bias is None else bias, stats, x2.stride(0),
                m, n, *split_float(eps), HAS_W=weight is not None, HAS_B=bias is not None, **cfg,
            )  # fmt: skip
        ctx.save_for_backward(x2, weight, stats)
        return y2

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x2, weight, stats = ctx.saved_tensors
        m, n = x2.shape
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dy2 = _rows(dy, m, n)
        dx = dw = db = None
        if need_x:
            dx = config.new_empty((m, n), x2)
            if x2.numel():
                cfg, grid = _row_tiles(x2)
                _ln_bwd_kernel[grid](
                    dy2, x2, x2 if weight is None else weight, stats, dx, dy2.stride(0), x2.stride(0), m, n,
                    HAS_W=weight is not None, **cfg,
                )  # fmt: skip
        if need_w or need_b:
            if x2.numel():
                dw, db = _param_grads(dy2, x2, stats, need_w, need_b)
            else:  # sums over no rows
                dw = db = torch.zeros((n,), dtype=x2.dtype, device=x2.device)
        return dx, dw if need_w else None, db if need_b else None, None


def layer_norm(
    input: torch.Tensor,
    normalized_shape: int | list[int] | tuple[int, ...] | torch.Size,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`torch.nn.functional.layer_norm`: normalize over the trailing `normalized_shape` dims of any input."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if not shape or tuple(input.shape[input.dim() - len(shape):]) != shape or input.dim() < len(shape):
        raise ValueError(f"layer_norm: normalized_shape {list(shape)} does not end input shape "
                         f"{list(input.shape)}")
    for name, tensor in (("input", input), ("weight", weight), ("bias", bias)):
        if tensor is None:
            continue
        if tensor.dtype not in (torch.float32, torch.float64) or tensor.dtype != input.dtype:
            raise NotImplementedError(f"layer_norm: {name} dtype {tensor.dtype} (float32 or float64, one)")
        if tensor.device != input.device:
            raise NotImplementedError(f"layer_norm: {name} on {tensor.device}, input on {input.device}")
        if name != "input" and tuple(tensor.shape) != shape:
            raise ValueError(f"layer_norm: {name} shape {list(tensor.shape)}, expected {list(shape)}")
    n = math.prod(shape)
    m = math.prod(input.shape[: input.dim() - len(shape)])
    flat = [None if t is None else t.reshape(n).contiguous() for t in (weight, bias)]
    y2 = _LayerNorm.apply(_rows(input, m, n), flat[0], flat[1], float(eps))
    return y2.view(input.shape)
