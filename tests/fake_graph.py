"""A CPU stand-in for a CUDA graph: a step's aten ops and Triton launches -> replayed on the same tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from triton.runtime.interpreter import InterpretedFunction

from netc.kernels import flat_optim


class FakeGraph(TorchDispatchMode):
    """A CPU stand-in for a CUDA graph: `capture(fn)` runs fn once, recording every aten op and
    Triton launch with its arguments; `replay()` reruns the record on the same tensors.

    As in a real graph, Python numbers are frozen at their capture-time values and every op
    writes into the tensors its capture wrote (a fresh result is copied into the recorded one);
    random ops draw again from their generator, as captured CUDA RNG ops do. A step that read
    host state per call (a seed drawn in Python, a bias correction from a host step count)
    replays its capture-time value here, as it would on the GPU. While capturing, netc's
    optimizers see a capture in progress (as under torch.cuda.graph) and leave lr to push_lr.
    """

    def __init__(self) -> None:
        super().__init__()
        self.record: list[tuple[Callable, tuple, dict, Any]] = []
        self._in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        if not self._in_launch:  # the interpreter's own tensor traffic inside a launch is no op of the step
            self.record.append((func, args, kwargs or {}, out))
        return out

    def capture(self, fn: Callable[[], Any], monkeypatch: pytest.MonkeyPatch) -> Any:
        original = InterpretedFunction.run

        def launch(kernel, *args, grid, warmup, **kwargs):  # noqa: ANN001, ANN202
            self.record.append((original, (kernel, *args), {"grid": grid, "warmup": warmup, **kwargs}, None))
            self._in_launch = True
            try:
                return original(kernel, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                self._in_launch = False

        with monkeypatch.context() as patch:
            patch.setattr(InterpretedFunction, "run", launch)
            patch.setattr(flat_optim, "_capturing", lambda: True)
            with self:
                return fn()

    def replay(self) -> None:
        for func, args, kwargs, out in self.record:
            fresh = func(*args, **kwargs)
            for new, old in zip(tree_leaves(fresh), tree_leaves(out), strict=False):
                if isinstance(old, torch.Tensor) and new.data_ptr() != old.data_ptr():
                    old.copy_(new)  # an out-of-place op: the graph's output lives at the old address
