"""Batch normalization: (N, C, *) input and running statistics -> normalized output, with autograd.

The input is viewed as (N, C, S), S the product of the spatial sizes, and each
channel reduces over its R = N*S values. That reduction is split across CTAs
so a few channels still fill the GPU: CTA (channel block, split) reduces one
chunk of rows, writes its partial sums, and takes a ticket from a per-block
arrival counter; the last CTA to arrive combines the partials, writes the
per-channel results, updates the running statistics and resets the counter
to 0 for the next launch. One launch, no host sync, no memset.

- forward statistics: one read of x; each lane of a tile keeps Welford's running
  mean and M2 (no cancellation, unlike sum(x^2) - sum(x)^2), lanes and then chunks
  combine by Chan et al.'s formula M2 = sum_j (M2_j + n_j (mean_j - mean)^2);
- backward: per-channel sums of dy and dy * (x - mean), then an elementwise pass
  dx = (dy - sum(dy)/R - (x - mean) * sum(dy (x - mean)) * invstd^2 / R) * invstd * w
  (training) or dx = dy * invstd * w (eval, running statistics).

Tiles are (BLOCK_R rows of the N*S positions) x (BLOCK_C channels); channels-minor
layouts ((N, C), channels_last) get wide channel blocks so loads coalesce. Sums run
in float32 for float32 inputs and in float64 for float64 ones; no `tl.dot`, so no
precision choice applies. Launch settings: policy.py's normalization section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from netc.kernels import config, costs, policy
from netc.kernels.norm_common import (
    combine_moments, join_float, last_arrival, new_like, rsqrt, split_float, sum_splits, tickets,
)

__all__ = ["batch_norm"]


@triton.jit
def _offsets(rows, cols, S, s_n, s_c, s_s):
    """(BLOCK_R,) flat (n, s) positions and (BLOCK_C,) channels -> (BLOCK_R, BLOCK_C) element offsets."""
    n = rows // S
    s = rows - n * S
    return (n.to(tl.int64) * s_n + s.to(tl.int64) * s_s)[:, None] + cols.to(tl.int64)[None, :] * s_c


@triton.jit(launch_metadata=costs.rows("R", "C", 4))
def _bn_stats_kernel(
    x_ptr,  # (N, C, S) input, any strides
    part_ptr,  # (2, splits, C) scratch: per-chunk sums and centred sums of squares (accumulation dtype)
    ticket_ptr,  # (channel blocks,) int32 arrival counters, 0 on entry and on exit
    stats_ptr,  # (2, C) out: batch mean and 1 / sqrt(biased var + eps) (accumulation dtype)
    rmean_ptr, rvar_ptr,  # (C,) running mean and variance, updated in place if UPDATE_RUNNING
    s_n, s_c, s_s,  # input strides, in elements
    s_rm, s_rv,  # running statistics' strides
    C, S, R,  # channels, spatial size, rows per channel (N * S)
    chunk, splits,  # rows per split (a multiple of BLOCK_R) and splits per channel block
    mom_hi, mom_lo, eps_hi, eps_lo,  # momentum and eps as float32 (hi, lo) pairs
    UPDATE_RUNNING: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    block = tl.program_id(0)
    split = tl.program_id(1)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    row0 = split * chunk
    row_end = tl.minimum(row0 + chunk, R)
    acc_ty = stats_ptr.dtype.element_ty
    # one pass, Welford per lane: in step k every lane still in the chunk takes its (k+1)-th value
    lane_mean = tl.zeros([BLOCK_R, BLOCK_C], acc_ty)
    lane_m2 = tl.zeros([BLOCK_R, BLOCK_C], acc_ty)
    for start in range(row0, row_end, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        ok = (rows < row_end)[:, None] & col_ok[None, :]
        x = tl.load(x_ptr + _offsets(rows, cols, S, s_n, s_c, s_s), mask=ok, other=0.0).to(acc_ty)
        delta = x - lane_mean
        step_weight = 1.0 / ((start - row0) // BLOCK_R + 1).to(acc_ty)  # 1 / (k + 1): one division a step
        lane_mean = tl.where(ok, lane_mean + delta * step_weight, lane_mean)
        lane_m2 = tl.where(ok, lane_m2 + delta * (x - lane_mean), lane_m2)
    # lanes -> the chunk's (sum, M2 about its mean) by Chan's formula; lane i saw n_i values (0..steps)
    length = row_end - row0
    seen = ((tl.maximum(length - tl.arange(0, BLOCK_R), 0) + BLOCK_R - 1) // BLOCK_R).to(acc_ty)[:, None]
    total = tl.sum(seen * lane_mean, axis=0)
    spread = lane_mean - (total / length.to(acc_ty))[None, :]
    tl.store(part_ptr + split * C + cols, total, mask=col_ok)
    chunk_m2 = tl.sum(lane_m2 + seen * spread * spread, axis=0)
    tl.store(part_ptr + (splits + split) * C + cols, chunk_m2, mask=col_ok)
    if last_arrival(ticket_ptr + block, splits):
        mean, m2 = combine_moments(part_ptr, cols, col_ok, C, R, chunk, splits, BLOCK_R, BLOCK_C)
        eps = join_float(eps_hi, eps_lo, acc_ty)
        tl.store(stats_ptr + cols, mean, mask=col_ok)
        tl.store(stats_ptr + C + cols, rsqrt(m2 / R + eps), mask=col_ok)
        if UPDATE_RUNNING:  # PyTorch: (1 - m) * running + m * batch, with the unbiased variance
            momentum = join_float(mom_hi, mom_lo, acc_ty)
            run_mean = tl.load(rmean_ptr + cols * s_rm, mask=col_ok, other=0.0).to(acc_ty)
            run_var = tl.load(rvar_ptr + cols * s_rv, mask=col_ok, other=0.0).to(acc_ty)
            new_mean = momentum * mean + (1.0 - momentum) * run_mean
            new_var = momentum * (m2 / (R - 1)) + (1.0 - momentum) * run_var
            tl.store(rmean_ptr + cols * s_rm, new_mean.to(rmean_ptr.dtype.element_ty), mask=col_ok)
            tl.store(rvar_ptr + cols * s_rv, new_var.to(rvar_ptr.dtype.element_ty), mask=col_ok)
        tl.store(ticket_ptr + block, 0)


@triton.jit
def _mean_invstd(
    mean_ptr, spread_ptr, s_mean, s_spread, cols, col_ok, eps_hi, eps_lo, IS_VAR: tl.constexpr, acc_ty,
):
    """Per-channel (mean, invstd): saved batch statistics, or running mean and variance (IS_VAR) with eps."""
    mean = tl.load(mean_ptr + cols * s_mean, mask=col_ok, other=0.0).to(acc_ty)
    spread = tl.load(spread_ptr + cols * s_spread, mask=col_ok, other=1.0).to(acc_ty)
    if IS_VAR:
        spread = rsqrt(spread + join_float(eps_hi, eps_lo, acc_ty))
    return mean, spread


@triton.jit
def _channel_scale(invstd, w_ptr, cols, col_ok, HAS_W: tl.constexpr):
    if HAS_W:
        invstd = invstd * tl.load(w_ptr + cols, mask=col_ok, other=0.0)
    return invstd


@triton.jit(launch_metadata=costs.rows("R", "C", 2))
def _bn_apply_kernel(
    x_ptr, y_ptr,  # (N, C, S) input and output, any strides
    mean_ptr, spread_ptr,  # (C,) mean and invstd (batch) or running mean and variance (IS_VAR)
    w_ptr, b_ptr,  # (C,) contiguous weight and bias (read if HAS_W / HAS_B)
    s_n, s_c, s_s,  # input strides
    t_n, t_c, t_s,  # output strides
    s_mean, s_spread,  # strides of the two statistics
    C, S, R,  # channels, spatial size, N * S
    eps_hi, eps_lo,  # eps as a float32 (hi, lo) pair (used if IS_VAR)
    IS_VAR: tl.constexpr, HAS_W: tl.constexpr, HAS_B: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """y = (x - mean) * invstd * w + b on one (BLOCK_R, BLOCK_C) tile."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    ok = (rows < R)[:, None] & col_ok[None, :]
    acc_ty = y_ptr.dtype.element_ty
    mean, invstd = _mean_invstd(mean_ptr, spread_ptr, s_mean, s_spread, cols, col_ok, eps_hi, eps_lo, IS_VAR,
                                acc_ty)
    scale = _channel_scale(invstd, w_ptr, cols, col_ok, HAS_W)
    x = tl.load(x_ptr + _offsets(rows, cols, S, s_n, s_c, s_s), mask=ok, other=0.0)
    y = (x - mean[None, :]) * scale[None, :]
    if HAS_B:
        y += tl.load(b_ptr + cols, mask=col_ok, other=0.0)[None, :]
    tl.store(y_ptr + _offsets(rows, cols, S, t_n, t_c, t_s), y, mask=ok)


@triton.jit(launch_metadata=costs.rows("R", "C", 4))
def _bn_grad_stats_kernel(
    dy_ptr, x_ptr,  # (N, C, S) output gradient and input, any strides
    mean_ptr, spread_ptr,  # as in _bn_apply_kernel
    part_ptr,  # (2, splits, C) scratch: per-chunk sums of dy and of dy * (x - mean)
    ticket_ptr,  # (channel blocks,) int32 arrival counters, 0 on entry and on exit
    coef_ptr,  # (2, C) out if TRAINING: sum(dy) / R and sum(dy (x - mean)) * invstd^2 / R
    dw_ptr, db_ptr,  # (C,) out if HAS_DW / HAS_DB: sum(dy * xhat) and sum(dy)
    g_n, g_c, g_s,  # output-gradient strides
    s_n, s_c, s_s,  # input strides
    s_mean, s_spread,
    C, S, R,
    chunk, splits,  # as in _bn_stats_kernel
    eps_hi, eps_lo,
    IS_VAR: tl.constexpr, TRAINING: tl.constexpr, HAS_DW: tl.constexpr, HAS_DB: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    block = tl.program_id(0)
    split = tl.program_id(1)
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc_ty = part_ptr.dtype.element_ty
    mean, invstd = _mean_invstd(mean_ptr, spread_ptr, s_mean, s_spread, cols, col_ok, eps_hi, eps_lo, IS_VAR,
                                acc_ty)
    row0 = split * chunk
    row_end = tl.minimum(row0 + chunk, R)
    acc_g = tl.zeros([BLOCK_R, BLOCK_C], acc_ty)
    acc_gx = tl.zeros([BLOCK_R, BLOCK_C], acc_ty)
    for start in range(row0, row_end, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        ok = (rows < row_end)[:, None] & col_ok[None, :]
        dy = tl.load(dy_ptr + _offsets(rows, cols, S, g_n, g_c, g_s), mask=ok, other=0.0).to(acc_ty)
        x = tl.load(x_ptr + _offsets(rows, cols, S, s_n, s_c, s_s), mask=ok, other=0.0).to(acc_ty)
        acc_g += dy
        acc_gx += dy * tl.where(ok, x - mean[None, :], 0.0)
    tl.store(part_ptr + split * C + cols, tl.sum(acc_g, axis=0), mask=col_ok)
    tl.store(part_ptr + (splits + split) * C + cols, tl.sum(acc_gx, axis=0), mask=col_ok)
    if last_arrival(ticket_ptr + block, splits):
        sum_g = sum_splits(part_ptr, cols, col_ok, C, splits, BLOCK_R, BLOCK_C)
        sum_gx = sum_splits(part_ptr + splits * C, cols, col_ok, C, splits, BLOCK_R, BLOCK_C)
        if HAS_DW:
            tl.store(dw_ptr + cols, sum_gx * invstd, mask=col_ok)
        if HAS_DB:
            tl.store(db_ptr + cols, sum_g, mask=col_ok)
        if TRAINING:
            tl.store(coef_ptr + cols, sum_g / R, mask=col_ok)
            tl.store(coef_ptr + C + cols, sum_gx * invstd * invstd / R, mask=col_ok)
        tl.store(ticket_ptr + block, 0)


@triton.jit(launch_metadata=costs.rows("R", "C", 4))
def _bn_grad_apply_kernel(
    dy_ptr, x_ptr, dx_ptr,  # (N, C, S) output gradient, input (read if TRAINING), input gradient
    mean_ptr, spread_ptr, w_ptr,  # as in _bn_apply_kernel
    coef_ptr,  # (2, C) from _bn_grad_stats_kernel (read if TRAINING)
    g_n, g_c, g_s,  # output-gradient strides
    s_n, s_c, s_s,  # input strides
    t_n, t_c, t_s,  # input-gradient strides
    s_mean, s_spread,
    C, S, R,
    eps_hi, eps_lo,
    IS_VAR: tl.constexpr, TRAINING: tl.constexpr, HAS_W: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """dx = (dy - sum(dy)/R - (x - mean) sum(dy (x - mean)) invstd^2 / R) invstd w; eval: dy invstd w."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    ok = (rows < R)[:, None] & col_ok[None, :]
    acc_ty = dx_ptr.dtype.element_ty
    mean, invstd = _mean_invstd(mean_ptr, spread_ptr, s_mean, s_spread, cols, col_ok, eps_hi, eps_lo, IS_VAR,
                                acc_ty)
    scale = _channel_scale(invstd, w_ptr, cols, col_ok, HAS_W)
    dy = tl.load(dy_ptr + _offsets(rows, cols, S, g_n, g_c, g_s), mask=ok, other=0.0)
    if TRAINING:
        x = tl.load(x_ptr + _offsets(rows, cols, S, s_n, s_c, s_s), mask=ok, other=0.0)
        mean_g = tl.load(coef_ptr + cols, mask=col_ok, other=0.0)
        proj = tl.load(coef_ptr + C + cols, mask=col_ok, other=0.0)
        dy = dy - mean_g[None, :] - (x - mean[None, :]) * proj[None, :]
    tl.store(dx_ptr + _offsets(rows, cols, S, t_n, t_c, t_s), dy * scale[None, :], mask=ok)


@dataclass(frozen=True)
class _Plan:
    """How a (N, C, S) tensor is tiled: (BLOCK_R, BLOCK_C) tiles, and `splits` CTAs of `chunk` rows each."""

    block_r: int
    block_c: int
    warps: int
    splits: int
    chunk: int

    def reduce_grid(self, channels: int) -> tuple[int, int]:
        return triton.cdiv(channels, self.block_c), self.splits

    def tile_grid(self, channels: int, rows: int) -> tuple[int, int]:
        return triton.cdiv(rows, self.block_r), triton.cdiv(channels, self.block_c)


def _plan(x3: torch.Tensor) -> _Plan:
    n, channels, spatial = x3.shape
    rows = n * spatial
    block_r, block_c, warps = policy.norm_tile(channels, x3.stride(1) == 1 and channels > 1)
    splits = policy.norm_splits(triton.cdiv(channels, block_c), rows, block_r)
    chunk = triton.cdiv(triton.cdiv(rows, splits), block_r) * block_r
    return _Plan(block_r, block_c, warps, triton.cdiv(rows, chunk), chunk)


def _sizes(x3: torch.Tensor) -> tuple[int, int, int]:
    """C, S, R as the kernels take them."""
    return x3.shape[1], x3.shape[2], x3.shape[0] * x3.shape[2]


def _statistics(x3: torch.Tensor, running: tuple[torch.Tensor, torch.Tensor] | None, momentum: float,
                eps: float) -> torch.Tensor:
    """(2, C) batch mean and invstd of a training forward; updates the running statistics in place."""
    plan = _plan(x3)
    acc_dtype = x3.dtype
    part = torch.empty((2, plan.splits, x3.shape[1]), dtype=acc_dtype, device=x3.device)
    stats = config.new_empty((2, x3.shape[1]), x3, acc_dtype)
    grid = plan.reduce_grid(x3.shape[1])
    run_mean, run_var = running if running is not None else (stats, stats)
    _bn_stats_kernel[grid](
        x3, part, tickets(x3.device, grid[0]), stats, run_mean, run_var, *x3.stride(),
        run_mean.stride(0), run_var.stride(0), *_sizes(x3), plan.chunk, plan.splits,
        *split_float(momentum), *split_float(eps), UPDATE_RUNNING=running is not None,
        BLOCK_R=plan.block_r, BLOCK_C=plan.block_c, num_warps=plan.warps,
    )  # fmt: skip
    return stats


def _normalize(x3: torch.Tensor, mean: torch.Tensor, spread: torch.Tensor, is_var: bool,
               weight: torch.Tensor | None, bias: torch.Tensor | None, eps: float) -> torch.Tensor:
    plan = _plan(x3)
    y3 = new_like(x3)
    _bn_apply_kernel[plan.tile_grid(x3.shape[1], x3.shape[0] * x3.shape[2])](
        x3, y3, mean, spread, x3 if weight is None else weight, x3 if bias is None else bias,
        *x3.stride(), *y3.stride(), mean.stride(0), spread.stride(0), *_sizes(x3), *split_float(eps),
        IS_VAR=is_var, HAS_W=weight is not None, HAS_B=bias is not None, BLOCK_R=plan.block_r,
        BLOCK_C=plan.block_c, num_warps=plan.warps,
    )  # fmt: skip
    return y3


def _grad_statistics(dy3: torch.Tensor, x3: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor, bool],
                     eps: float, training: bool, need_w: bool, need_b: bool) -> tuple[torch.Tensor, ...]:
    """(coefficients (2, C) for the dx pass, grad weight, grad bias) from one split reduction."""
    plan = _plan(x3)
    channels = x3.shape[1]
    mean, spread, is_var = stats
    part = torch.empty((2, plan.splits, channels), dtype=x3.dtype, device=x3.device)
    coef = config.new_empty((2, channels), x3)
    dw, db = config.new_empty((channels,), x3), config.new_empty((channels,), x3)
    grid = plan.reduce_grid(channels)
    _bn_grad_stats_kernel[grid](
        dy3, x3, mean, spread, part, tickets(x3.device, grid[0]), coef, dw, db, *dy3.stride(), *x3.stride(),
        mean.stride(0), spread.stride(0), *_sizes(x3), plan.chunk, plan.splits, *split_float(eps),
        IS_VAR=is_var, TRAINING=training, HAS_DW=need_w, HAS_DB=need_b, BLOCK_R=plan.block_r,
        BLOCK_C=plan.block_c, num_warps=plan.warps,
    )  # fmt: skip
    return coef, dw, db


def _grad_input(dy3: torch.Tensor, x3: torch.Tensor, stats: tuple[torch.Tensor, torch.Tensor, bool],
                weight: torch.Tensor | None, coef: torch.Tensor | None, eps: float) -> torch.Tensor:
    plan = _plan(x3)
    mean, spread, is_var = stats
    dx3 = new_like(x3)
    _bn_grad_apply_kernel[plan.tile_grid(x3.shape[1], x3.shape[0] * x3.shape[2])](
        dy3, x3, dx3, mean, spread, x3 if weight is None else weight, x3 if coef is None else coef,
        *dy3.stride(), *x3.stride(), *dx3.stride(), mean.stride(0), spread.stride(0), *_sizes(x3),
        *split_float(eps), IS_VAR=is_var, TRAINING=coef is not None, HAS_W=weight is not None,
        BLOCK_R=plan.block_r, BLOCK_C=plan.block_c, num_warps=plan.warps,
    )  # fmt: skip
    return dx3


class _BatchNorm(torch.autograd.Function):
    """y = (x - mean) * invstd * w + b over (N, C, S); saves x and the statistics it normalized with."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x3: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
        running: tuple[torch.Tensor, torch.Tensor] | None, batch_stats: bool, momentum: float, eps: float,
    ) -> torch.Tensor:
        if x3.numel() == 0:  # nothing to normalize; PyTorch leaves the running statistics alone too
            ctx.save_for_backward(None, weight, None, None)
            return new_like(x3)
        if batch_stats:
            stats = _statistics(x3, running, momentum, eps)
            mean, spread, is_var = stats[0], stats[1], False
        else:
            assert running is not None
            (mean, spread), is_var = running, True
        ctx.save_for_backward(x3, weight, mean, spread)
        ctx.is_var, ctx.batch_stats, ctx.eps = is_var, batch_stats, eps
        return _normalize(x3, mean, spread, is_var, weight, bias, eps)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, dy3: torch.Tensor) -> tuple[torch.Tensor | None, ...]:  # type: ignore[override]
        x3, weight, mean, spread = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        if x3 is None:  # an empty input: empty dx, zero dw and db (sums over nothing)
            zeros = None if weight is None else torch.zeros_like(weight)
            return new_like(dy3), zeros if need_w else None, zeros if need_b else None, None, None, None, None
        stats = (mean, spread, ctx.is_var)
        coef = dw = db = None
        if need_w or need_b or (need_x and ctx.batch_stats):
            coef, dw, db = _grad_statistics(dy3, x3, stats, ctx.eps, ctx.batch_stats, need_w, need_b)
        dx = None
        if need_x:
            dx = _grad_input(dy3, x3, stats, weight, coef if ctx.batch_stats else None, ctx.eps)
        return dx, dw if need_w else None, db if need_b else None, None, None, None, None


def _check(input: torch.Tensor, named: dict[str, torch.Tensor | None]) -> None:
    """float32/float64 of one dtype on one device, and (C,) per-channel tensors."""
    channels = input.shape[1]
    for name, tensor in named.items():
        if tensor is None:
            continue
        if tensor.dtype != input.dtype or tensor.device != input.device:
            raise NotImplementedError(
                f"batch_norm: {name} is {tensor.dtype} on {tensor.device}, input {input.dtype} on "
                f"{input.device} (one dtype and device only)"
            )
        if tuple(tensor.shape) != (channels,):
            raise ValueError(f"batch_norm: {name} should have shape ({channels},), got {tuple(tensor.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"batch_norm: dtype {input.dtype} is not supported (float32, float64)")


def batch_norm(
    input: torch.Tensor,
    running_mean: torch.Tensor | None,
    running_var: torch.Tensor | None,
    weight: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> torch.Tensor:
    """`torch.nn.functional.batch_norm` on (N, C, *) inputs: batch statistics in training (the running
    ones updated in place with the unbiased variance), running statistics in eval.

    As in PyTorch, `momentum` is a number here; BatchNorm's `momentum=None` (a cumulative average)
    is the caller passing 1 / num_batches_tracked.
    """
    if momentum is None:
        raise TypeError("batch_norm: momentum must be a float (a cumulative average passes 1 / batches)")
    shape = input.shape
    if input.dim() < 2:
        if input.numel() == 0:  # PyTorch returns an empty result for an empty 1-D input
            input = input.reshape(0, 0)
        else:
            raise ValueError(f"batch_norm: expected 2 or more dimensions, got shape {tuple(input.shape)}")
    _check(input, {"running_mean": running_mean, "running_var": running_var, "weight": weight, "bias": bias})
    if (running_mean is None) != (running_var is None):
        raise ValueError("batch_norm: running_mean and running_var must both be given or both be None")
    if not training and running_mean is None:
        raise ValueError("batch_norm: running_mean must be defined in evaluation mode")
    if training and input.shape[0] * math.prod(input.shape[2:]) == 1:
        raise ValueError(f"batch_norm: expected more than 1 value per channel when training, got input size "
                         f"{tuple(input.shape)}")
    running = None if running_mean is None else (running_mean, running_var)
    x3 = input.reshape(input.shape[0], input.shape[1], math.prod(input.shape[2:]))  # a view when it can be
    weight, bias = (None if t is None else t.contiguous() for t in (weight, bias))  # kernels index them flat
    y3 = _BatchNorm.apply(x3, weight, bias, running, training, float(momentum), float(eps))
    return y3.view(shape)
