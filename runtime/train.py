"""A Network, its TrainConfig and the data splits -> a trained network, per-epoch metrics and checkpoints.

The loop stays lean: a batch is an index gather on the device, a step is
`netc.runtime.fastpath`'s (a replayed CUDA graph on CUDA, eager elsewhere),
and the loss is summed on the device and read back only when the progress
bar redraws or every CHECK_EVERY steps, to stop a diverged run early.
Learning rates are a function of (epoch, step), and each epoch's order a
function of (seed, epoch), so a resumed run repeats an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from netc.dsl.errors import DataError, NetError
from netc.dsl.ir import OptimizerConfig, ScheduleConfig, TrainConfig
from netc.runtime import checkpoint as ckpt
from netc.runtime import checkpoint_schema as schema
from netc.runtime import distributed
from netc.runtime import metrics
from netc.runtime.augment import augment_batch, step_generator
from netc.runtime.data import Splits, batches, epoch_order, steps_per_epoch
from netc.runtime.fastpath import TrainStep, make_train_step
from netc.runtime.sequence import StepSequence
from netc.runtime.progress import Progress, format_duration

CHECK_EVERY = 100  # steps between reads of the running loss when no bar is drawn
GRAPH_CHUNK = 100  # steps per replayed CUDA graph: the progress bar and loss checks happen between chunks
MAX_SEQUENCES = 3  # captured chunk lengths kept (the chunk, the epoch's remainder, one more)
EVAL_BATCH = 1000


class Diverged(DataError):
    """The loss became NaN or infinite; the last good checkpoint stays on disk."""


@dataclass
class RunState:
    """Where a run stands; everything here goes into the checkpoint's meta.json."""

    epoch: int = 0  # completed epochs
    batch: int = 0  # batches done in the current, unfinished epoch (after an interrupt)
    step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # sample-weighted loss of the unfinished epoch's finished batches
    history: list[dict[str, Any]] = field(default_factory=list)


# netc.kernels and torch.optim name their optimizers alike, with the same signatures
_OPTIMIZER_CLASSES = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW"}


def make_optimizer(
    params: Iterable[nn.Parameter], config: OptimizerConfig, backend: str, fused: bool = False
) -> torch.optim.Optimizer:
    """netc's Triton optimizers on triton, torch.optim on torch (`fused`: torch's one-launch CUDA kernels)."""
    if config.name not in _OPTIMIZER_CLASSES:
        raise DataError(f"unknown optimizer '{config.name}' (sgd, adam or adamw)")
    from netc.runtime import backends

    ops = backends.get(backend)
    kwargs = optimizer_kwargs(config)
    if fused and ops.fusable_optimizers:
        kwargs["fused"] = True
    return getattr(ops.optimizers, _OPTIMIZER_CLASSES[config.name])(params, **kwargs)


def optimizer_kwargs(config: OptimizerConfig) -> dict[str, Any]:
    """The constructor arguments of `config`'s optimizer, as torch.optim names them."""
    if config.name == "sgd":
        return {"lr": config.lr, "momentum": config.momentum, "dampening": config.dampening,
                "nesterov": config.nesterov, "weight_decay": config.weight_decay}
    return {"lr": config.lr, "betas": tuple(config.betas), "eps": config.eps,
            "weight_decay": config.weight_decay}


def learning_rate(base: float, schedule: ScheduleConfig, epoch: int, step: int, total_steps: int) -> float:
    """The lr of global step `step` (0-based) in epoch `epoch`: step decay per epoch, cosine per step."""
    if schedule.name == "step":
        return base * schedule.gamma ** (epoch // schedule.every)
    if schedule.name == "cosine":
        return base * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    return base


@torch.no_grad()
def evaluate(net: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over a whole split, with one host read at the end."""
    count = images.shape[0]
    if count == 0:
        return math.nan, math.nan
    was_training = net.training
    net.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=images.device)
    correct = torch.zeros((), dtype=torch.int64, device=images.device)
    for batch_x, batch_y in batches(images, labels, EVAL_BATCH):
        logits = net(batch_x)  # (B, classes)
        loss_sum += net.loss(logits, batch_y).double() * batch_y.shape[0]
        correct += (logits.argmax(dim=1) == batch_y).sum()
    net.train(was_training)
    return float(loss_sum) / count, int(correct) / count


def _validate_for(checkpoint: ckpt.Checkpoint, net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every file of `checkpoint` fits this run before anything is loaded (nothing is cast silently)."""
    path = checkpoint.path
    schema.check_resumable(checkpoint.meta, f"{path}/{ckpt.META_FILE}")
    schema.check_tensors(checkpoint.model, net.state_dict(), f"{path}/{ckpt.MODEL_FILE}", "weights")
    schema.check_optimizer_state(checkpoint.optimizer, optimizer, f"{path}/{ckpt.OPTIMIZER_FILE}")


class _InterruptFlag:
    """Ctrl-C sets a flag that the loop checks between steps; a second Ctrl-C interrupts at once."""

    def __init__(self) -> None:
        self.raised = False
        self.previous: Any = None

    def __enter__(self) -> _InterruptFlag:
        try:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self.previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.raised = True
        signal.signal(signal.SIGINT, self.previous or signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class Trainer:
    """Trains `net` on `splits` as `config` says, checkpointing into `out` after every epoch."""

    def __init__(self, net: nn.Module, optimizer: torch.optim.Optimizer, splits: Splits, config: TrainConfig,
                 out: str | None, meta: dict[str, Any], progress: Progress | None = None,
                 log: Callable[[str], None] | None = None, world: distributed.World | None = None) -> None:
        self.net, self.optimizer, self.splits, self.config, self.out = net, optimizer, splits, config, out
        self.meta = meta  # source, source_sha256, name, seed, backend, ... (fixed for the run)
        self.progress = progress or Progress()
        self.log = log or self.progress.finish
        self.state = RunState()
        self.steps_per_epoch = steps_per_epoch(splits.train_x.shape[0], config.batch)
        self.total_steps = self.steps_per_epoch * config.epochs
        self.interrupt = _InterruptFlag()
        self.stop_after: int | None = None  # tests: behave as if Ctrl-C came after this global step
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._step: TrainStep | None = None
        self._sequences: dict[int, StepSequence] = {}  # captured multi-step graphs by length (CUDA)
        self.saved_step: int | None = None  # the step of the last checkpoint in `out` (this run's or resumed)
        self.tensorboard: metrics.TensorBoard | None = None  # set by `netc train --tensorboard`
        self.world = world  # data-parallel: this rank's place (runtime.distributed); None: one process
        self._loss_scale = 1.0  # this rank's share of the global batch mean (see runtime.distributed)

    # ---- checkpoints -------------------------------------------------------------------------

    def restore(self, checkpoint: ckpt.Checkpoint) -> None:
        """Continue from `checkpoint`: weights, optimizer state, position, history and RNG."""
        meta = checkpoint.meta
        _validate_for(checkpoint, self.net, self.optimizer)
        if meta["state"]["batch"] and meta["train"]["batch"] != self.config.batch:
            raise DataError(f"the checkpoint in {checkpoint.path} stopped inside an epoch with batch "
                            f"{meta['train']['batch']}; resume with --batch {meta['train']['batch']}")
        try:
            self.net.load_state_dict(checkpoint.model)
            self.optimizer.load_state_dict(checkpoint.optimizer)
        except (RuntimeError, ValueError, KeyError) as error:
            raise DataError(f"the checkpoint in {checkpoint.path} does not fit this net: {error}") from None
        self.base_lrs = list(meta["base_lrs"])
        self.state = RunState(**meta["state"])
        ckpt.set_rng_state(meta["rng"])
        if self.out is not None and os.path.abspath(self.out) == os.path.abspath(checkpoint.path):
            self.saved_step = self.state.step

    def save(self) -> None:
        if self.out is None:
            return
        meta = {**self.meta, "state": vars(self.state), "base_lrs": self.base_lrs, "rng": ckpt.rng_state(),
                "epoch": self.state.epoch, "step": self.state.step,
                "metrics": self.state.history[-1] if self.state.history else {}}
        name = self.meta.get("name", "net")
        try:
            ckpt.save(self.out, self.net.state_dict(), self.optimizer.state_dict(), meta,
                      extras=lambda directory: metrics.write_all(directory, self.state.history, name))
            self.saved_step = self.state.step
        except ckpt.NonFiniteWeights as error:  # the loss was finite, but the last update was not
            raise Diverged(f"the weights became NaN or infinite in epoch {self.state.epoch + 1} "
                           f"(step {self.state.step}), so no checkpoint was written ({error.message})"
                           f"{self._kept()}; try a lower learning rate (--lr) or gradient clipping (clip X)"
                           ) from None
        except OSError as error:  # a full disk, a directory made read-only during the run
            where = f" ({error.filename})" if error.filename else ""
            raise DataError(f"cannot write the checkpoint in {self.out}: {error.strerror or error}{where}"
                            ) from None

    # ---- the loop ----------------------------------------------------------------------------

    def _set_lr(self, epoch: int, step: int) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs, strict=True):
            group["lr"] = learning_rate(base, self.config.schedule, epoch, step, self.total_steps)

    def _make_step(self) -> TrainStep:
        smoothing = self.config.label_smoothing

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return self.net.loss(logits, targets, smoothing)

        example = (self.splits.train_x[: self.config.batch], self.splits.train_y[: self.config.batch])
        if self.world is not None:
            # DDP all-reduces gradients from its backward hooks; the step runs eagerly (no capture)
            def scaled_loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
                return loss_fn(logits, targets) * self._loss_scale

            module = distributed.wrap(self.net, self.splits.train_x.device)
            return make_train_step(module, self.optimizer, scaled_loss_fn, example, capture=False,
                                   clip=self.config.clip)
        # capture on CUDA; fastpath itself replays a per-step lr (netc's optimizers read it from
        # the device) or goes eager when torch.optim's would re-capture every step
        return make_train_step(self.net, self.optimizer, loss_fn, example, clip=self.config.clip)

    def _kept(self) -> str:
        """Where the last checkpoint this run wrote is (every one is finite: `ckpt.save` checks)."""
        if self.out is None or self.saved_step is None:
            return ""
        return f"; the last good checkpoint (step {self.saved_step}) is in {self.out}"
    def _take_step(self, index: torch.Tensor, total: torch.Tensor) -> None:
        """One optimizer step on the global batch `index`; its summed loss (this rank's part) into total."""
        local, share = index, float(index.shape[0])
        if self.world is not None:
            local, self._loss_scale = distributed.local_share(index, self.world)
            share = index.shape[0] / self.world.size  # loss (scaled local mean) * share = local sum
        splits = self.splits
        if self.config.augment is None:
            loss = self._step.gather(splits.train_x, splits.train_y, local)
        else:
            offset = 0 if self.world is None else distributed.share_offset(index.shape[0], self.world)
            offset = min(offset, index.shape[0] - local.shape[0])  # a rank with no share reuses a row
            images = self._augmented(local, index.shape[0], offset)
            loss = self._step(images, splits.train_y.index_select(0, local))
        total.add_(loss, alpha=share)

    def _augmented(self, index: torch.Tensor, batch: int, offset: int) -> torch.Tensor:
        """Training images at `index` (rows offset.. of a batch of `batch`), each with its own random
        affine transform (runtime.augment)."""
        splits, config = self.splits, self.config
        if len(splits.sample_shape) != 2:
            raise NetError(f"`augment` needs image data, but the dataset's samples have shape "
                           f"{list(splits.sample_shape)}; remove `augment`", config.locs.get("augment"))
        generator = step_generator(config.seed, self.state.step, splits.train_x.device)
        images = splits.train_x.index_select(0, index)
        background = -splits.mean / splits.std  # a zero pixel after normalization
        return augment_batch(images, config.augment, splits.sample_shape, generator, background,
                             batch, offset)

    def _epoch_total(self, total: torch.Tensor) -> float:
        """The epoch's summed training loss over every rank (an all-reduce when data-parallel)."""
        if self.world is None:
            return float(total)
        carried = self.state.loss_sum  # every rank restored the same partial sum
        return float(distributed.all_sum(total - carried)) + carried

    def _check(self, total: float, epoch: int) -> None:
        if not math.isfinite(total):
            kept = self._kept()
            raise Diverged(f"the training loss became {total} in epoch {epoch + 1} "
                           f"(step {self.state.step}){kept}; "
                           "try a lower learning rate (--lr) or gradient clipping (clip X)")

    def _train_epoch(self, epoch: int) -> float | None:
        """One epoch from `state.batch` on; the mean training loss, or None if interrupted."""
        splits, size, state = self.splits, self.config.batch, self.state
        order = epoch_order(splits.train_x.shape[0], self.meta["seed"], epoch, splits.train_x.device)
        total = torch.full((), state.loss_sum, dtype=torch.float32, device=splits.train_x.device)
        self.progress.start(epoch + 1, self.config.epochs, self.steps_per_epoch, state.batch)
        samples = 0
        per_step_lr = self.config.schedule.name == "cosine"  # the others change lr between epochs only
        if not per_step_lr:
            self._set_lr(epoch, state.step)
        while state.batch < self.steps_per_epoch:
            steps, seen_now = self._graph_chunk(epoch, order, total, per_step_lr)
            if not steps:  # one step, eagerly or as a single-step replay
                if per_step_lr:
                    self._set_lr(epoch, state.step)
                batch_index = order[state.batch * size:(state.batch + 1) * size]
                self._take_step(batch_index, total)
                steps, seen_now = 1, batch_index.shape[0]
            state.step, state.batch = state.step + steps, state.batch + steps
            samples += seen_now
            if steps > 1 or self.progress.due() or state.batch % CHECK_EVERY == 0:
                seen = min(state.batch * size, splits.train_x.shape[0])
                value = float(total)
                self._check(value, epoch)
                self.progress.update(state.batch, value / seen, samples)
                self._observe_step(value / seen, samples)
            if self.interrupt.raised or (self.stop_after is not None and state.step >= self.stop_after):
                state.loss_sum = float(total)
                self._check(state.loss_sum, epoch)
                return None
        value = self._epoch_total(total)
        self._check(value, epoch)
        return value / splits.train_x.shape[0]

    def _observe_step(self, loss: float, samples: int) -> None:
        if self.tensorboard is not None:
            rate = samples / max(self.progress.elapsed(), 1e-9)
            self.tensorboard.step(self.state.step, loss, self.optimizer.param_groups[0]["lr"], rate)

    # ---- CUDA-graph epochs (netc.runtime.sequence.StepSequence) ----------------------------------

    def _graph_chunk(self, epoch: int, order: torch.Tensor, total: torch.Tensor, per_step_lr: bool
                     ) -> tuple[int, int]:
        """Run the next GRAPH_CHUNK full batches (or the epoch's remainder) as one captured multi-step
        graph; (steps, samples) done, (0, 0) when single steps must run instead (the CPU, a capture
        blocker, the short last batch, a stop point inside the chunk)."""
        size, state = self.config.batch, self.state
        count = min(GRAPH_CHUNK, self.splits.train_x.shape[0] // size - state.batch)
        if self.stop_after is not None:
            count = min(count, self.stop_after - state.step)
        sequence = self._sequence(count, per_step_lr) if count > 1 else None
        if sequence is None:
            return 0, 0
        lrs = None
        if per_step_lr:
            lrs = [self._lrs_at(epoch, state.step + k) for k in range(count)]
        total.add_(sequence.run(order[state.batch * size:(state.batch + count) * size], lrs))
        if per_step_lr:  # param_groups show the last step's lr, as after single steps
            self._set_lr(epoch, state.step + count - 1)
        return count, count * size

    def _sequence(self, count: int, per_step_lr: bool) -> StepSequence | None:
        """The captured StepSequence of `count` steps (made on first use), or None to run single steps."""
        if self._step is None or self._step.mode != "graph" or self.world is not None:
            return None  # data-parallel steps run one by one (runtime.distributed)
        sequences = self._sequences
        if count not in sequences:
            if len(sequences) >= MAX_SEQUENCES:  # odd lengths (a resume, a stop point): not worth a graph
                return None
            sequences[count] = StepSequence(self._step, self.splits.train_x, self.splits.train_y, count,
                                            per_step_lr=per_step_lr)
        return sequences[count] if sequences[count].captured else None

    def _lrs_at(self, epoch: int, step: int) -> list[float]:
        """Every group's lr at global step `step`."""
        schedule = self.config.schedule
        return [learning_rate(base, schedule, epoch, step, self.total_steps) for base in self.base_lrs]

    def _finish_epoch(self, epoch: int, train_loss: float, seconds: float) -> None:
        val_loss, val_acc = evaluate(self.net, self.splits.val_x, self.splits.val_y)
        record: dict[str, Any] = {"epoch": epoch + 1, "step": self.state.step, "train_loss": train_loss,
                                  "lr": self.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3)}
        line = f"epoch {epoch + 1}/{self.config.epochs}: train loss {train_loss:.4f}"
        if self.splits.val_x.shape[0]:
            record.update(val_loss=val_loss, val_acc=val_acc)
            line += f"  val loss {val_loss:.4f}  val accuracy {100 * val_acc:.2f}%"
        self.progress.finish(f"{line}  ({format_duration(seconds)})")
        self.state.history.append(record)
        if self.tensorboard is not None:
            self.tensorboard.record(record)
        self.state.epoch, self.state.batch, self.state.loss_sum = epoch + 1, 0, 0.0
        self.save()

    def fit(self) -> dict[str, Any] | None:
        """Train the remaining epochs and test; the final record, or None when interrupted (saved)."""
        self.net.train()
        self._step = self._make_step()
        with self.interrupt:
            for epoch in range(self.state.epoch, self.config.epochs):
                started = time.perf_counter()
                train_loss = self._train_epoch(epoch)
                if train_loss is None:
                    self.save()
                    return None
                self._finish_epoch(epoch, train_loss, time.perf_counter() - started)
                if self.interrupt.raised:
                    return None
        test_loss, test_acc = evaluate(self.net, self.splits.test_x, self.splits.test_y)
        final = {"test_loss": test_loss, "test_acc": test_acc, "epoch": self.state.epoch}
        self.state.history = [r for r in self.state.history if "test_acc" not in r] + [final]
        if self.tensorboard is not None:
            self.tensorboard.record({**final, "step": self.state.step})
        self.save()
        return final
