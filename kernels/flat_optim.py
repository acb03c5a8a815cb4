"""Flat-buffer optimizer base: parameters and state -> views into flat buffers; .grad read where it lies.

At construction every trainable parameter is copied into one flat buffer and
its `.data` becomes a view into it; the state (momentum_buffer, exp_avg,
exp_avg_sq, max_exp_avg_sq) lives in flat buffers too, and Adam's step
counts in one float32 device vector. `self.state` holds views with
torch.optim's key names, so state_dict()/load_state_dict() and LR schedulers
work. Subclasses (kernels/optim.py) launch one fused kernel per parameter
group (per SEGMENTS parameters of a group).

Gradients are written, never accumulated: `zero_grad()` sets `.grad` to None
(as torch does), so autograd's AccumulateGrad hands each parameter the
gradient tensor its backward made (no copy, no add, no zeroing), and the
kernels read each `.grad` where it lies: a launch takes up to SEGMENTS
gradient pointers and a (segments, 2) int64 table of (flat offset, numel),
program (b, s) updating block b of parameter s. Under a CUDA graph the
gradients come from the graph's pool, at the same addresses every replay.

Each group's lr is kept in a float64 device tensor that the kernels read,
refreshed by `push_lr` (a fill when it changed; no host sync), so a captured
CUDA graph follows a scheduler's lr without re-capture.

`clip_grad_norm_(max_norm)` is torch.nn.utils.clip_grad_norm_ in one launch:
each program writes the sum of squares of its gradient block, and the next
`step()` folds min(1, max_norm / (norm + 1e-6)) into its update (each
program sums the partials itself), so the .grad tensors keep their values.

Unlike torch.optim: a `.grad` that is None at `step` raises
NotImplementedError (torch skips it); requires_grad=False parameters are
left out; all trainable parameters share one device and dtype (float32 or
float64). No `tl.dot` here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
import triton
import triton.language as tl

from netc.kernels import costs

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
Clip = tuple[torch.Tensor, int, float, float]  # the kernels' (part_ptr, n_parts, max_hi, max_lo)
SEGMENTS = 8  # gradient pointers per launch (a group with more parameters takes more launches)


def _capturing() -> bool:
    """True while the current CUDA stream is recording a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


@triton.jit
def pick_grad(s, g0, g1, g2, g3, g4, g5, g6, g7):
    """The gradient pointer of segment s (a runtime index) among the launch's SEGMENTS pointers."""
    g = g0
    if s == 1:
        g = g1
    if s == 2:
        g = g2
    if s == 3:
        g = g3
    if s == 4:
        g = g4
    if s == 5:
        g = g5
    if s == 6:
        g = g6
    if s == 7:
        g = g7
    return g


@triton.jit
def segment_block(seg_ptr, seg_base, BLOCK: tl.constexpr):
    """(flat offsets, offsets in the parameter, mask) of program (b, s): block b of segment s."""
    row = seg_base + tl.program_id(1)
    offset = tl.load(seg_ptr + 2 * row)  # the parameter's start in the flat buffers
    numel = tl.load(seg_ptr + 2 * row + 1)
    local = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = local < numel
    return offset + local, local, mask


@triton.jit
def clip_scale(part_ptr, n_parts, max_hi, max_lo, DTYPE: tl.constexpr, PART_BLOCK: tl.constexpr):
    """min(1, max_norm / (sqrt(sum of the partial sums of squares) + 1e-6)), as torch's clip_grad_norm_."""
    total = tl.zeros((PART_BLOCK,), dtype=DTYPE)
    for begin in range(0, n_parts, PART_BLOCK):
        index = begin + tl.arange(0, PART_BLOCK)
        total += tl.load(part_ptr + index, mask=index < n_parts, other=0.0)
    norm = tl.sqrt(tl.sum(total, axis=0))
    max_norm = tl.cast(max_hi, DTYPE) + tl.cast(max_lo, DTYPE)  # float32 (hi, lo): float64 keeps ~1e-15
    return tl.minimum(max_norm / (norm + 1e-6), 1.0)


@triton.jit(launch_metadata=costs.flat_update(2))
def _grad_sumsq_kernel(
    g0, g1, g2, g3, g4, g5, g6, g7,  # gradient of each segment (unused ones: any pointer)
    seg_ptr,  # (parameters, 2) int64: each parameter's (flat offset, numel)
    seg_base,  # this launch's first row of the table
    part_ptr,  # partial sums of squares, one per program: (launches' programs,) in the grads' dtype
    part_base,  # this launch's first partial
    BLOCK: tl.constexpr,  # elements per program
):
    _, local, mask = segment_block(seg_ptr, seg_base, BLOCK)
    g = tl.load(pick_grad(tl.program_id(1), g0, g1, g2, g3, g4, g5, g6, g7) + local, mask=mask, other=0.0)
    index = part_base + tl.program_id(1) * tl.num_programs(0) + tl.program_id(0)
    tl.store(part_ptr + index, tl.sum(g * g, axis=0))  # every program writes: no zeroing needed


class FlatOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer whose parameters and state are views into flat buffers."""

    _STATE_KEYS: tuple[str, ...] = ()  # per-parameter state held in flat buffers

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._flatten()

    def _flatten(self) -> None:
        """Copy trainable parameters into a flat buffer; point .data at views; build the segment table."""
        trainable = [p for group in self.param_groups for p in group["params"] if p.requires_grad]
        if not trainable:
            raise ValueError(f"{type(self).__name__}: no parameter requires a gradient")
        first = trainable[0]
        for p in trainable:
            same = p.dtype == first.dtype and p.device == first.device
            if p.dtype not in (torch.float32, torch.float64) or not same:
                raise NotImplementedError(
                    f"{type(self).__name__}: parameters must share one device and dtype (float32/float64); "
                    f"got {first.dtype} on {first.device} and {p.dtype} on {p.device}"
                )
        # each group's lr, read by the kernels; push_lr() refreshes it from param_groups
        self._lr = torch.zeros(len(self.param_groups), dtype=torch.float64, device=first.device)
        self._lr_pushed: list[float | None] = [None] * len(self.param_groups)
        total = sum(p.numel() for p in trainable)
        self._flat_param = torch.empty(total, dtype=first.dtype, device=first.device)
        self._flat_state: dict[str, torch.Tensor] = {}
        self._slots: list[tuple[torch.Tensor, int, int]] = []  # (param, offset, numel)
        self._chunks: list[list[tuple[int, int]]] = []  # per group: (first slot, slots) of each launch
        offset = 0
        for group in self.param_groups:
            params = [p for p in group["params"] if p.requires_grad]
            first_slot = len(self._slots)
            for p in params:
                self._slots.append((p, offset, p.numel()))
                offset += p.numel()
            self._chunks.append([(begin, min(SEGMENTS, len(self._slots) - begin))
                                 for begin in range(first_slot, len(self._slots), SEGMENTS)])
        table = [[slot_offset, numel] for _, slot_offset, numel in self._slots]
        self._segments = torch.tensor(table, dtype=torch.int64).to(first.device)  # (slots, 2)
        self._clip_pending: tuple[torch.Tensor, float] | None = None
        with torch.no_grad():
            for p, slot_offset, numel in self._slots:
                self._flat_param[slot_offset : slot_offset + numel].copy_(p.reshape(-1))
                p.data = self._flat_param[slot_offset : slot_offset + numel].view_as(p)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """torch's, while constructing; afterwards the flat buffers are fixed, so it is refused."""
        if hasattr(self, "_flat_param"):
            raise NotImplementedError(f"{type(self).__name__}: add_param_group after construction")
        super().add_param_group(param_group)

    def _buffer(self, key: str) -> torch.Tensor:
        """The flat state buffer for `key`, zero-initialised on first use (as torch's zeros_like)."""
        if key not in self._flat_state:
            self._flat_state[key] = torch.zeros_like(self._flat_param)
        return self._flat_state[key]

    def _sync_data(self) -> None:
        """Re-adopt a .data that user code replaced (load_state_dict of the module keeps views)."""
        for p, offset, numel in self._slots:
            flat = self._flat_param[offset : offset + numel]
            if p.data_ptr() != flat.data_ptr():
                flat.copy_(p.detach().reshape(-1))
                p.data = flat.view_as(p)

    def _grad(self, index: int) -> torch.Tensor:
        """Slot `index`'s gradient as the kernels read it: contiguous, the parameter's dtype."""
        p = self._slots[index][0]
        if p.grad is None:
            raise NotImplementedError(
                f"{type(self).__name__}: parameter {index} {tuple(p.shape)} has no gradient (None); "
                "the flat-buffer step cannot skip single parameters"
            )
        if p.grad.is_sparse:
            raise NotImplementedError(f"{type(self).__name__}: sparse gradients")
        if not p.grad.is_contiguous() or p.grad.dtype != p.dtype or p.grad.device != p.device:
            p.grad = p.grad.to(p.device, p.dtype).contiguous()  # rare (a hand-set .grad): one copy
        return p.grad

    def _chunk_args(self, first: int, count: int) -> tuple[list[torch.Tensor], int]:
        """The launch's SEGMENTS gradient pointers (padding repeats the first) and its blocks per segment."""
        grads = [self._grad(index) for index in range(first, first + count)]
        grads += [grads[0]] * (SEGMENTS - count)
        longest = max(numel for _, _, numel in self._slots[first : first + count])
        return grads, longest

    def _expose_state(self, slots: list[tuple[torch.Tensor, int, int]], keys: Iterable[str]) -> None:
        """Point each slot's state[key] at its slice of the flat buffer."""
        for p, offset, numel in slots:
            state = self.state[p]
            for key in keys:
                state[key] = self._buffer(key)[offset : offset + numel].view_as(p)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, then copy the loaded per-parameter state into the flat buffers."""
        super().load_state_dict(state_dict)
        for p, offset, numel in self._slots:
            state = self.state.get(p, {})
            for key in self._STATE_KEYS:
                if state.get(key) is not None:
                    flat = self._buffer(key)[offset : offset + numel]
                    flat.copy_(state[key].reshape(-1))
                    state[key] = flat.view_as(p)
        self._check_steps()

    def _check_steps(self) -> None:
        """Subclasses with a step count check it after a load."""

    @torch.no_grad()
    def push_lr(self) -> None:
        """Copy each group's lr into the device tensor the kernels read: a fill per changed lr, no sync.

        `step` calls it, except while a CUDA graph is being captured: a captured fill would
        write the capture-time lr back at every replay. Whoever replays calls it before each
        replay instead, so a scheduler's new lr reaches a captured step without re-capture.
        """
        for index, group in enumerate(self.param_groups):
            lr = float(group["lr"])
            if lr != self._lr_pushed[index]:
                self._lr[index].fill_(lr)
                self._lr_pushed[index] = lr

    @torch.no_grad()
    def copy_lr_from(self, lrs: torch.Tensor) -> None:
        """Set the kernels' lr from (groups,) float64 device values: a device copy, so a multi-step
        CUDA graph can give each step its own lr; the next push_lr refills from param_groups."""
        self._lr.copy_(lrs)
        self.forget_pushed_lr()

    def forget_pushed_lr(self) -> None:
        """The device lr was written behind push_lr's back (a replayed copy_lr_from): refill next time."""
        self._lr_pushed = [None] * len(self.param_groups)

    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> None:
        """Make the next `step()` use the gradients scaled to a global 2-norm of at most `max_norm`.

        torch.nn.utils.clip_grad_norm_ over this optimizer's parameters, in one
        launch now (the partial sums of squares) plus nothing: `step()` applies
        the scale. Call it after backward, right before `step()`; the .grad
        tensors keep their unscaled values, and no norm is returned (reading it
        would sync with the host).
        """
        from netc.kernels.optim import launch_config

        cfg = launch_config()
        launches = [(first, count, *self._chunk_args(first, count))
                    for chunks in self._chunks for first, count in chunks]
        grids = [(triton.cdiv(longest, cfg["BLOCK"]), count) for _, count, _, longest in launches]
        partials = torch.empty(sum(blocks * count for blocks, count in grids),
                               dtype=self._flat_param.dtype, device=self._flat_param.device)
        base = 0
        for (first, _, grads, _), grid in zip(launches, grids, strict=True):
            _grad_sumsq_kernel[grid](*grads, self._segments, first, partials, base, BLOCK=cfg["BLOCK"],
                                     num_warps=cfg["num_warps"])
            base += grid[0] * grid[1]
        self._clip_pending = (partials, float(max_norm))

    def _take_clip(self) -> Clip:
        """(partials, count, max_norm hi, lo) for a step's kernels, and forget them; count 0: no clipping."""
        pending, self._clip_pending = self._clip_pending, None
        if pending is None:
            return self._flat_param, 0, 0.0, 0.0
        hi = float(np.float32(pending[1]))
        return pending[0], pending[0].numel(), hi, float(np.float32(pending[1] - hi))

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter: one kernel launch per parameter group (per SEGMENTS parameters)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not _capturing():
            self.push_lr()
        self._sync_data()
        clip = self._take_clip()
        for group_index, group in enumerate(self.param_groups):
            for first, count in self._chunks[group_index]:
                grads, longest = self._chunk_args(first, count)
                self._update(group_index, group, first, count, grads, longest, clip)
        return loss

    def _update(self, group_index: int, group: dict[str, Any], first: int, count: int,
                grads: list[torch.Tensor], longest: int, clip: Clip) -> None:
        """Launch the fused update of slots [first, first + count) of the group (see optim.py)."""
        raise NotImplementedError
