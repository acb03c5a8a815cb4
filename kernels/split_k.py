"""Split-K in one launch: partial results and per-tile tickets -> the last CTA's deterministic sum.

A reduction split across CTAs (a weight gradient's long K, a loss summed over
row blocks) finishes in the same launch: each CTA writes its partial to a
workspace, then takes a ticket from a per-tile counter (`tl.atomic_add`,
acq_rel, after a barrier so every thread's store is out); the CTA that draws
the last ticket adds the partials in split order (L2 loads, `.cg`), so the
result does not depend on which CTA finished last, and puts the counter back
to 0 for the next launch and for every replay of a captured CUDA graph.
Counters and workspaces are cached per device and shared by every launch:
launches on one stream run one after another, and each leaves them zeroed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import triton
import triton.language as tl


@triton.jit
def last_arrival(ticket_ptr, index, arrivals):
    """True in the CTA that arrives last (of `arrivals`) at counter `index`, which it then resets to 0."""
    tl.debug_barrier()  # every thread's partial is written before the ticket releases it
    ticket = tl.atomic_add(ticket_ptr + index, 1, sem="acq_rel")
    last = ticket == arrivals - 1
    if last:
        tl.store(ticket_ptr + index, 0)
    return last


@triton.jit
def gather_splits(
    acc, sums, tile, pid_m, sums_here, split, splits, tiles,  # this CTA's partials and place
    ws_ptr, ticket_ptr,  # workspace (accumulator dtype), per-tile tickets (int32, zero between launches)
    ROW_SUMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Store this split's partials; the last CTA of the tile to arrive returns their sum in split order.

    pid_m numbers the tile rows (the row sums' owner), `tiles` counts all output tiles."""
    # workspace: [tiles][splits][BLOCK_M * BLOCK_N] partial tiles, then [tile rows][splits][BLOCK_M] row sums
    tile_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tile_base = ws_ptr + tile.to(tl.int64) * splits * (BLOCK_M * BLOCK_N)
    tl.store(tile_base + split * (BLOCK_M * BLOCK_N) + tile_offsets, acc)
    sums_base = ws_ptr + tiles.to(tl.int64) * splits * (BLOCK_M * BLOCK_N) + pid_m * splits * BLOCK_M
    if ROW_SUMS:
        if sums_here:
            tl.store(sums_base + split * BLOCK_M + tl.arange(0, BLOCK_M), sums)
    last = last_arrival(ticket_ptr, tile, splits)
    if last:  # a fixed order, whichever split came last: the result is deterministic
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc.dtype)
        sums = tl.zeros((BLOCK_M,), dtype=acc.dtype)
        for s in range(0, splits):
            acc += tl.load(tile_base + s * (BLOCK_M * BLOCK_N) + tile_offsets, cache_modifier=".cg")
            if ROW_SUMS:
                if sums_here:
                    sums += tl.load(sums_base + s * BLOCK_M + tl.arange(0, BLOCK_M), cache_modifier=".cg")
    return acc, sums, last


# (device, dtype) -> split-K workspace; device -> ticket counters (int32, zero between launches).
# Grown, never shrunk, so a training step allocates nothing after its first (eager) run.
_WORKSPACES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_TICKETS: dict[torch.device, torch.Tensor] = {}


def _cached(cache: dict, key: object, numel: int, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """A buffer of at least `numel` elements from `cache`, grown (doubling) when too small. While a CUDA
    graph is being captured a too-small buffer is not replaced: the new one lives in the graph's pool."""
    buffer = cache.get(key)
    if buffer is not None and buffer.numel() >= numel:
        return buffer
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    buffer = make(max(numel, 2 * buffer.numel() if buffer is not None else 0))
    if not capturing:
        cache[key] = buffer
    return buffer


def split_buffers(device: torch.device, dtype: torch.dtype, ws_numel: int,
                   tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    workspace = _cached(_WORKSPACES, (device, dtype), ws_numel,
                        lambda n: torch.empty(n, device=device, dtype=dtype))
    tickets = _cached(_TICKETS, device, tiles, lambda n: torch.zeros(n, device=device, dtype=torch.int32))
    return workspace, tickets
