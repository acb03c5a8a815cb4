"""Flat-buffer optimizer base: parameters, grads and state -> views into flat buffers, one launch per group.

At construction every trainable parameter is copied into one flat buffer and
its `.data` becomes a view into it; `.grad` becomes a view into one flat
gradient buffer (autograd accumulates into an existing `.grad` in place), and
the state (momentum_buffer, exp_avg, exp_avg_sq, max_exp_avg_sq) lives in
flat buffers too. `self.state` holds views with torch.optim's key names, so
state_dict()/load_state_dict(), LR schedulers and clip_grad_norm_ work.
Subclasses (kernels/optim.py) launch one fused kernel per parameter group.

Each group's lr is also kept in a float64 device tensor that the kernels
read, refreshed by `push_lr` (a fill when it changed; no host sync), so a
captured CUDA graph follows a scheduler's lr without re-capture.

By design, unlike torch.optim: `zero_grad` zeroes the flat gradient and never
sets None, so a parameter absent from a backward gets a zero-gradient update;
a `.grad` that is None at `step` raises NotImplementedError (torch skips it).
requires_grad=False parameters are left out. All trainable parameters share
one device and dtype (float32 or float64).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]


def _capturing() -> bool:
    """True while the current CUDA stream is recording a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


class FlatOptimizer(torch.optim.Optimizer):
    """A torch.optim.Optimizer whose parameters, grads and state are views into flat buffers."""

    _STATE_KEYS: tuple[str, ...] = ()  # per-parameter state held in flat buffers

    def __init__(self, params: Params, defaults: dict[str, Any]) -> None:
        super().__init__(params, defaults)
        self._flatten()

    def _flatten(self) -> None:
        """Copy trainable parameters (and grads) into flat buffers; point .data/.grad at views."""
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
        total = sum(p.numel() for p in trainable)
        # each group's lr, read by the kernels; push_lr() refreshes it from param_groups
        self._lr = torch.zeros(len(self.param_groups), dtype=torch.float64, device=first.device)
        self._lr_pushed: list[float | None] = [None] * len(self.param_groups)
        self._flat_param = torch.empty(total, dtype=first.dtype, device=first.device)
        self._flat_grad = torch.zeros(total, dtype=first.dtype, device=first.device)
        self._flat_state: dict[str, torch.Tensor] = {}
        self._slots: list[tuple[torch.Tensor, int, int]] = []  # (param, offset, numel)
        self._ranges: list[tuple[int, int]] = []  # per group: [start, end) in the flat buffers
        offset = 0
        for group in self.param_groups:
            start = offset
            for p in group["params"]:
                if p.requires_grad:
                    self._slots.append((p, offset, p.numel()))
                    offset += p.numel()
            self._ranges.append((start, offset))
        with torch.no_grad():
            for p, offset, numel in self._slots:
                self._flat_param[offset : offset + numel].copy_(p.reshape(-1))
                if p.grad is not None:
                    self._flat_grad[offset : offset + numel].copy_(p.grad.reshape(-1))
                p.data = self._flat_param[offset : offset + numel].view_as(p)
                p.grad = self._flat_grad[offset : offset + numel].view_as(p)

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

    def _sync_views(self) -> None:
        """Re-adopt a .data or .grad that user code replaced (e.g. model.zero_grad() then backward)."""
        for index, (p, offset, numel) in enumerate(self._slots):
            flat = self._flat_param[offset : offset + numel]
            if p.data_ptr() != flat.data_ptr():
                flat.copy_(p.detach().reshape(-1))
                p.data = flat.view_as(p)
            if p.grad is None:
                raise NotImplementedError(
                    f"{type(self).__name__}: parameter {index} {tuple(p.shape)} has no gradient (None); "
                    "the flat-buffer step cannot skip single parameters"
                )
            if p.grad.is_sparse:
                raise NotImplementedError(f"{type(self).__name__}: sparse gradients")
            flat_grad = self._flat_grad[offset : offset + numel]
            if p.grad.data_ptr() != flat_grad.data_ptr():
                flat_grad.copy_(p.grad.reshape(-1))
                p.grad = flat_grad.view_as(p)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the flat gradient buffer; grads stay views into it whatever `set_to_none` says."""
        self._flat_grad.zero_()
        for p, offset, numel in self._slots:
            view = self._flat_grad[offset : offset + numel]
            if p.grad is None or p.grad.data_ptr() != view.data_ptr():
                p.grad = view.view_as(p)

    def _group_slots(self, group_index: int) -> list[tuple[torch.Tensor, int, int]]:
        start, end = self._ranges[group_index]
        return [slot for slot in self._slots if start <= slot[1] < end]

    def _expose_state(self, group_index: int, keys: Iterable[str]) -> None:
        """Point each parameter's state[key] at its slice of the flat buffer."""
        for p, offset, numel in self._group_slots(group_index):
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
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every parameter: one kernel launch per parameter group."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not _capturing():
            self.push_lr()
        self._sync_views()
        for group_index, group in enumerate(self.param_groups):
            start, end = self._ranges[group_index]
            if end > start:
                self._update(group_index, group, start, end)
        return loss

    def _update(self, group_index: int, group: dict[str, Any], start: int, end: int) -> None:
        """Launch the group's fused update on the flat range [start, end)."""
        raise NotImplementedError
