"""(TrainStep, images and labels on the device, count) -> `count` training steps replayed as one CUDA graph.

`netc train` on CUDA runs its epochs through these (runtime/train.py, in
chunks between progress reads), and `netc bench` times a whole epoch as
one. See StepSequence.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from netc.runtime.fastpath import TrainStep, _device_lr, hyperparameters, push_lr


def record_graph(body: Callable[[], None]) -> Any:
    """Capture `body` into a CUDA graph (returned; `.replay()` runs it). Tests swap in a CPU stand-in."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        body()
    return graph


class StepSequence:
    """`count` training steps as one CUDA graph: step k trains on images[index[k*B:(k+1)*B]].

    `run(index) -> loss sum` replays them all at once, so the host does
    nothing per step: a whole epoch can be one launch. It shares the
    TrainStep's warm-up, input buffers and settings watch; when that step
    runs eagerly (the CPU, or a capture blocker), the same steps run eagerly
    here, one after another. The returned sum (sample-weighted, a device
    tensor) is overwritten by the next run.

    `per_step_lr=True` gives each step its own lr (a per-step schedule):
    `run(index, lrs)` takes lrs[k][group] for step k. Captured, each step
    copies its row of a device table into the optimizer's device lr (netc's
    optimizers only: a host-number lr would be frozen into the graph).
    """

    def __init__(self, step: TrainStep, images: torch.Tensor, labels: torch.Tensor, count: int,
                 per_step_lr: bool = False) -> None:
        self.step, self.images, self.labels, self.count = step, images, labels, count
        self.batch = step.static_x.shape[0]
        self.per_step_lr = per_step_lr
        self.index = torch.zeros(count * self.batch, dtype=torch.int64, device=images.device)
        self.total = torch.zeros((), device=images.device)  # float32 loss sum of the run
        groups = len(step.optimizer.param_groups)
        self.lrs = torch.zeros((count, groups), dtype=torch.float64, device=images.device)  # per_step_lr
        self._host_lrs: list[list[float]] = []
        self._graph: Any = None
        self._hyper: tuple[Any, ...] = ()
        self.reason = "" if step.mode == "graph" else f"eager like its step: {step.reason}"
        if per_step_lr and step.mode == "graph" and not _device_lr(step.optimizer):
            self.reason = "a per-step lr is a host number in this optimizer: a graph would freeze it"
        elif step.mode == "graph":
            self._capture()

    @property
    def captured(self) -> bool:
        """True when a run replays one graph (False: the steps run eagerly)."""
        return self._graph is not None

    def _body(self, recording: bool = False) -> None:
        """The steps, eagerly or (`recording`) as record_graph captures them."""
        step, batch = self.step, self.batch
        self.total.zero_()
        for k in range(self.count):
            if self.per_step_lr:
                self._set_lr(k, recording)
            index = self.index[k * batch:(k + 1) * batch]
            torch.index_select(self.images, 0, index, out=step.static_x)
            torch.index_select(self.labels, 0, index, out=step.static_y)
            self.total.add_(step._eager_step(step.static_x, step.static_y), alpha=batch)

    def _set_lr(self, k: int, recording: bool) -> None:
        """Step k's lr: from the device table in a graph, into param_groups when eager."""
        if recording:
            self.step.optimizer.copy_lr_from(self.lrs[k])  # type: ignore[attr-defined]
        else:
            for group, lr in zip(self.step.optimizer.param_groups, self._host_lrs[k], strict=True):
                group["lr"] = lr

    def _capture(self) -> None:
        self._graph = None
        self.step.optimizer.zero_grad(set_to_none=True)  # fresh grads from this graph's pool
        try:
            graph = record_graph(lambda: self._body(recording=True))
        except Exception as error:  # as for a single step: say why and run eagerly
            self.reason = f"capture failed: {error}"
            self.step.optimizer.zero_grad(set_to_none=True)
            return
        self._graph, self._hyper = graph, hyperparameters(self.step.optimizer)

    def run(self, index: torch.Tensor, lrs: list[list[float]] | None = None) -> torch.Tensor:
        """Train on the `count` batches that `index` ((count * batch,) int64, on the device) picks,
        step k at lrs[k] (per group) when per_step_lr."""
        self.index.copy_(index)
        if self.per_step_lr:
            if lrs is None or len(lrs) != self.count:
                raise ValueError(f"StepSequence.run: per_step_lr needs {self.count} rows of lrs")
            self._host_lrs = [list(row) for row in lrs]
        if self._graph is not None and hyperparameters(self.step.optimizer) != self._hyper:
            self._capture()  # a new setting: the graph holds the old one
        if self._graph is None:
            self._body()
            return self.total
        if self.per_step_lr:  # from pinned memory on CUDA: the copy waits for nothing on the host
            table = torch.tensor(self._host_lrs, dtype=torch.float64, pin_memory=self.lrs.is_cuda)
            self.lrs.copy_(table, non_blocking=self.lrs.is_cuda)
        else:
            push_lr(self.step.optimizer)
        self._graph.replay()
        if self.per_step_lr:
            self.step.optimizer.forget_pushed_lr()  # type: ignore[attr-defined]
        return self.total
