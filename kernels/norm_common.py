"""Pieces shared by the normalization kernels: split-reduction tickets, float64 scalars, rsqrt, outputs.

A split reduction has CTA (block, split) write partial sums to scratch, then
take a ticket from the block's int32 arrival counter (`last_arrival`); the
last CTA combines the partials (`sum_splits`, `combine_moments`) and resets the
counter to 0, so the cached counters (`tickets`) need no memset between launches.
"""

from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from netc.kernels import config

_TICKETS: dict[torch.device, torch.Tensor] = {}  # device -> int32 arrival counters, all 0 between launches


def tickets(device: torch.device, count: int) -> torch.Tensor:
    """At least `count` zeroed int32 arrival counters on `device` (the kernels leave them at 0)."""
    have = _TICKETS.get(device)
    if have is None or have.numel() < count:
        have = torch.zeros(max(count, 256), dtype=torch.int32, device=device)
        _TICKETS[device] = have
    return have


def split_float(value: float) -> tuple[float, float]:
    """A float as a float32 (hi, lo) pair summing to it within ~2^-48 (kernel float args are float32)."""
    hi = float(np.float32(value))
    return hi, float(np.float32(value - hi))


@triton.jit
def join_float(hi, lo, DTYPE: tl.constexpr):
    return tl.cast(hi, DTYPE) + tl.cast(lo, DTYPE)


@triton.jit
def last_arrival(ticket_ptr, splits):
    """True in the last of `splits` CTAs to finish; its loads then see every other CTA's stores."""
    tl.debug_barrier()  # all warps' partial stores are issued before the release below
    return tl.atomic_add(ticket_ptr, 1, sem="acq_rel") == splits - 1


@triton.jit
def rsqrt(value):
    """1 / sqrt(value), IEEE-rounded in float32 (plain / and sqrt are approximate there), as PyTorch."""
    if value.dtype == tl.float32:
        return tl.div_rn(1.0, tl.sqrt_rn(value))
    else:
        return 1.0 / tl.sqrt(value)


@triton.jit
def sum_splits(part_ptr, cols, col_ok, C, splits, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr):
    """(splits, C) partial sums -> (BLOCK_C,) totals, in a fixed order (deterministic)."""
    acc = tl.zeros([BLOCK_S, BLOCK_C], part_ptr.dtype.element_ty)
    for first in range(0, splits, BLOCK_S):
        split = first + tl.arange(0, BLOCK_S)
        ok = (split < splits)[:, None] & col_ok[None, :]
        offs = split[:, None] * C + cols[None, :]
        acc += tl.load(part_ptr + offs, mask=ok, other=0.0, cache_modifier=".cg")  # L2: written by other SMs
    return tl.sum(acc, axis=0)


@triton.jit
def combine_moments(
    part_ptr, cols, col_ok, C, R, chunk, splits, BLOCK_S: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """(2, splits, C) per-chunk (sum, M2 about the chunk mean) -> (mean, M2) of each channel."""
    mean = sum_splits(part_ptr, cols, col_ok, C, splits, BLOCK_S, BLOCK_C) / R
    acc = tl.zeros([BLOCK_S, BLOCK_C], part_ptr.dtype.element_ty)
    for first in range(0, splits, BLOCK_S):
        split = first + tl.arange(0, BLOCK_S)
        ok = (split < splits)[:, None] & col_ok[None, :]
        offs = split[:, None] * C + cols[None, :]
        count = tl.maximum(tl.minimum(chunk, R - split * chunk), 1).to(acc.dtype)[:, None]
        total = tl.load(part_ptr + offs, mask=ok, other=0.0, cache_modifier=".cg")
        m2 = tl.load(part_ptr + splits * C + offs, mask=ok, other=0.0, cache_modifier=".cg")
        delta = total / count - mean[None, :]
        acc += tl.where(ok, m2 + count * delta * delta, 0.0)
    return mean, tl.sum(acc, axis=0)


def new_like(tensor: torch.Tensor) -> torch.Tensor:
    """An output laid out like `tensor` if it is dense, else contiguous (NaN-filled under POISON_OUTPUTS)."""
    out = torch.empty_like(tensor)
    if config.POISON_OUTPUTS:
        out.fill_(float("nan"))
    return out
