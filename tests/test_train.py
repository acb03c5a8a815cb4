"""Training: a tiny net on a tiny IDX dataset -> losses, checkpoints, resume, settings, backends, failures."""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from netc.dsl import DataError, parse
from netc.dsl.ir import OptimizerConfig, ScheduleConfig
from netc.runtime import checkpoint as ckpt
from netc.runtime.data import prepare
from netc.runtime.lower import compile as compile_net
from netc.runtime.progress import Progress
from netc.runtime.train import Diverged, Trainer, learning_rate, make_optimizer
from netc.runtime.train_cmd import run_meta
from test_data import write_idx_dir

NET = """net tiny {{
    input [25]
    linear 12
    relu
    dropout 0.25
    linear 4
}}
train {{
    data mnist path="{path}" val=0.2
    batch 8
    epochs 3
    {settings}
}}
"""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from threads, and OpenMP threads spin badly on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    directory = tmp_path / "data"
    write_idx_dir(directory, train=45, test=11, side=5, classes=4)
    return str(directory)


def make_trainer(dataset: str, out: str | None, settings: str = "optimizer sgd lr=0.1 momentum=0.9",
                 backend: str = "torch", **overrides: Any) -> Trainer:
    graph = parse(NET.format(path=dataset, settings=settings))
    config = dataclasses.replace(graph.train, **overrides)
    net = compile_net(graph, device="cpu", backend=backend, seed=config.seed)
    splits = prepare(config.data, graph.input_shape, 4, config.seed, net.device)
    optimizer = make_optimizer(net.parameters(), config.optimizer, backend)
    torch.manual_seed(config.seed)
    meta = run_meta(graph, config, net, None)
    return Trainer(net, optimizer, splits, config, out, meta, progress=Progress(io.StringIO()))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in trainer.net.state_dict().items()}


def train_losses(trainer: Trainer) -> list[float]:
    return [record["train_loss"] for record in trainer.state.history if "train_loss" in record]


# ---- settings ----------------------------------------------------------------------------------

def test_learning_rate_schedules() -> None:
    none, step = ScheduleConfig("none"), ScheduleConfig("step", every=2, gamma=0.5)
    cosine = ScheduleConfig("cosine")
    assert learning_rate(0.1, none, 7, 300, 400) == 0.1
    assert [learning_rate(0.1, step, epoch, 0, 10) for epoch in range(5)] == pytest.approx(
        [0.1, 0.1, 0.05, 0.05, 0.025])
    assert learning_rate(0.1, cosine, 0, 0, 400) == pytest.approx(0.1)
    assert learning_rate(0.1, cosine, 1, 200, 400) == pytest.approx(0.05)
    assert learning_rate(0.1, cosine, 3, 300, 400) == pytest.approx(0.05 * (1 + math.cos(0.75 * math.pi)))
    assert learning_rate(0.1, cosine, 3, 399, 400) < 1e-5  # to 0 at the end


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_make_optimizer_uses_every_setting(backend: str) -> None:
    params = [torch.nn.Parameter(torch.zeros(3))]
    sgd = make_optimizer(params, OptimizerConfig("sgd", lr=0.3, momentum=0.5, nesterov=True,
                                                 weight_decay=0.01), backend)
    group = sgd.param_groups[0]
    settings = (group["lr"], group["momentum"], group["nesterov"], group["weight_decay"])
    assert settings == (0.3, 0.5, True, 0.01)
    adamw = make_optimizer(params, OptimizerConfig("adamw", lr=0.002, betas=(0.8, 0.9), eps=1e-6,
                                                   weight_decay=0.05), backend)
    group = adamw.param_groups[0]
    assert (group["lr"], tuple(group["betas"]), group["eps"], group["weight_decay"]) == (0.002, (0.8, 0.9),
                                                                                          1e-6, 0.05)
    if backend == "triton":
        from netc import kernels

        assert isinstance(sgd, kernels.SGD) and isinstance(adamw, kernels.AdamW)
    else:
        assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    assert type(make_optimizer(params, OptimizerConfig("adam"), backend)).__name__ == "Adam"
    dampened = make_optimizer(params, OptimizerConfig("sgd", lr=0.1, momentum=0.9, dampening=0.2), backend)
    assert dampened.param_groups[0]["dampening"] == 0.2
    with pytest.raises(DataError, match="unknown optimizer 'rmsprop'"):
        make_optimizer(params, OptimizerConfig("rmsprop"), backend)


def test_make_optimizer_fuses_torch_optim_only() -> None:
    # bench asks for torch.optim's fused kernels on CUDA; netc's optimizers are fused already
    params = [torch.nn.Parameter(torch.zeros(3))]
    fused = make_optimizer(params, OptimizerConfig("adam"), "torch", fused=True)
    assert fused.defaults["fused"] is True
    assert not make_optimizer(params, OptimizerConfig("adam"), "torch").defaults["fused"]
    assert "fused" not in make_optimizer(params, OptimizerConfig("sgd"), "triton", fused=True).defaults


# ---- the loop ----------------------------------------------------------------------------------

def test_training_checkpoints_every_epoch_and_logs(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = make_trainer(dataset, str(out), epochs=4)
    final = trainer.fit()
    assert final is not None and 0.0 <= final["test_acc"] <= 1.0
    losses = train_losses(trainer)
    assert len(losses) == 4 and losses[-1] < losses[0]
    assert trainer.state.step == 4 * 5  # 36 training samples in batches of 8
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("epoch") for line in lines] == [1, 2, 3, 4, 4]
    assert lines[0]["train_loss"] == losses[0] and "val_acc" in lines[0] and "test_acc" in lines[-1]
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loaded = ckpt.load(str(out))
    assert loaded.meta["epoch"] == 4 and loaded.meta["step"] == 20
    for name, value in trainer.net.state_dict().items():
        assert torch.equal(loaded.model[name], value)
    # evaluating the checkpoint's weights gives the test accuracy the run reported
    fresh = make_trainer(dataset, None)
    fresh.net.load_state_dict(loaded.model)
    from netc.runtime.train import evaluate
    assert evaluate(fresh.net, fresh.splits.test_x, fresh.splits.test_y)[1] == final["test_acc"]


SETTINGS = {
    "sgd_step": "optimizer sgd lr=0.2 momentum=0.9 nesterov=true\n    schedule step every=1 gamma=0.5",
    "adamw_cosine_clip_smoothing": "optimizer adamw lr=0.01\n    schedule cosine\n    clip 0.5\n"
                                   "    loss cross_entropy label_smoothing=0.1",
}


@pytest.mark.parametrize("settings", SETTINGS.values(), ids=SETTINGS.keys())
@pytest.mark.parametrize("stop_at", [3, 10])  # inside epoch 1, and at the end of epoch 2
def test_resume_is_bit_identical(dataset: str, tmp_path: Path, settings: str, stop_at: int) -> None:
    check_resume(dataset, tmp_path, settings, stop_at, "torch")


def test_resume_on_the_triton_backend(dataset: str, tmp_path: Path) -> None:
    # the interpreter is deterministic too, and the kernels' optimizer state must round-trip
    check_resume(dataset, tmp_path, SETTINGS["adamw_cosine_clip_smoothing"], 7, "triton")


def check_resume(dataset: str, tmp_path: Path, settings: str, stop_at: int, backend: str) -> None:
    whole = make_trainer(dataset, str(tmp_path / "whole"), settings, backend=backend)
    whole.fit()
    first = make_trainer(dataset, str(tmp_path / "split"), settings, backend=backend)
    first.stop_after = stop_at
    assert first.fit() is None
    torch.manual_seed(999)  # the resumed process starts from another RNG state
    second = make_trainer(dataset, str(tmp_path / "split"), settings, backend=backend)
    second.restore(ckpt.load(str(tmp_path / "split")))
    assert second.state.step == stop_at
    second.fit()
    assert train_losses(second) == train_losses(whole)  # exactly, not approximately
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in run.state.history]
                for run in (second, whole)]
    assert timeless[0] == timeless[1]  # validation and test results too
    for name, value in weights(whole).items():
        assert torch.equal(weights(second)[name], value), name
    for saved, live in zip(second.optimizer.state.values(), whole.optimizer.state.values(), strict=True):
        for key, value in live.items():
            assert torch.equal(torch.as_tensor(saved[key]), torch.as_tensor(value)), key


@pytest.mark.parametrize("schedule", ["", "schedule step every=1 gamma=0.5", "schedule cosine"])
def test_every_step_runs_at_its_scheduled_lr(dataset: str, schedule: str) -> None:
    trainer = make_trainer(dataset, None, f"optimizer sgd lr=0.1\n    {schedule}")
    seen: list[float] = []
    make_step = trainer._make_step

    def recording_step() -> Any:
        step = make_step()
        gather = step.gather

        def gather_and_record(*args: Any) -> Any:
            seen.append(trainer.optimizer.param_groups[0]["lr"])
            return gather(*args)

        step.gather = gather_and_record  # type: ignore[method-assign]
        return step

    trainer._make_step = recording_step  # type: ignore[method-assign]
    trainer.fit()
    config = trainer.config.schedule
    assert seen == [learning_rate(0.1, config, step // 5, step, 15) for step in range(15)]  # 3 epochs of 5
    assert len(set(seen)) == {"": 1, "schedule step every=1 gamma=0.5": 3, "schedule cosine": 15}[schedule]


def test_an_unwritable_checkpoint_is_a_clear_error(dataset: str, tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("the user's file")  # the run's parent directory is a file
    trainer = make_trainer(dataset, str(tmp_path / "a_file" / "run"), epochs=1)
    with pytest.raises(DataError, match="cannot write the checkpoint in .*a_file/run: .*a_file"):
        trainer.fit()


def test_backends_give_the_same_losses(dataset: str) -> None:
    runs = {}
    for backend in ("torch", "triton"):
        trainer = make_trainer(dataset, None, "optimizer sgd lr=0.1 momentum=0.9", backend=backend, epochs=1)
        trainer.net.eval()  # the backends draw dropout masks differently; compare the deterministic part
        trainer.net.train = lambda mode=True, _net=trainer.net: _net  # type: ignore[method-assign]
        trainer.fit()
        runs[backend] = (train_losses(trainer), weights(trainer))
    assert runs["triton"][0] == pytest.approx(runs["torch"][0], rel=1e-5, abs=1e-6)
    for name, value in runs["torch"][1].items():
        torch.testing.assert_close(runs["triton"][1][name], value, rtol=1e-5, atol=1e-6)


def test_clip_scales_the_global_gradient_norm(dataset: str) -> None:
    trainer = make_trainer(dataset, None, "optimizer sgd lr=1.0 momentum=0\n    clip 0.001", epochs=1)
    before = weights(trainer)
    trainer.stop_after = 1
    trainer.fit()
    change = torch.cat([(weights(trainer)[name] - value).reshape(-1) for name, value in before.items()])
    assert float(change.norm()) == pytest.approx(0.001, rel=1e-3)  # lr * clip: the raw gradient is larger


def test_label_smoothing_reaches_the_loss(dataset: str) -> None:
    trainer = make_trainer(dataset, None, "optimizer sgd lr=0.1\n    loss cross_entropy label_smoothing=0.3")
    net, splits = trainer.net, trainer.splits
    net.eval()
    logits = net(splits.train_x[:5])
    expected = F.cross_entropy(logits, splits.train_y[:5], label_smoothing=0.3)
    step = trainer._make_step()
    torch.testing.assert_close(step.loss_fn(logits, splits.train_y[:5]), expected)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = make_trainer(dataset, str(out))
    real_loss, calls = trainer.net.loss, []

    def poisoned(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        calls.append(1)
        loss = real_loss(logits, targets, smoothing)
        return loss * math.nan if len(calls) > 7 else loss  # calls: 5 steps, 1 validation, then epoch 2

    trainer.net.loss = poisoned  # type: ignore[method-assign]
    with pytest.raises(Diverged, match="loss became nan in epoch 2 .*good checkpoint \\(step 5\\) is in"):
        trainer.fit()
    loaded = ckpt.load(str(out))
    assert loaded.meta["epoch"] == 1 and all(torch.isfinite(t).all() for t in loaded.model.values())


def test_ctrl_c_saves_where_it_stopped(dataset: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    trainer = make_trainer(dataset, str(out))
    real_loss, calls = trainer.net.loss, []

    def interrupting(logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 7:
            os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C in the middle of a step
        return real_loss(logits, targets, smoothing)

    trainer.net.loss = interrupting  # type: ignore[method-assign]
    assert trainer.fit() is None
    meta = ckpt.load(str(out)).meta
    # calls 1-5 are epoch 1's steps, 6 its validation, 7 epoch 2's first step: it finishes, then the save
    assert (meta["epoch"], meta["state"]["batch"], meta["step"]) == (1, 1, 6)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back


def test_progress_bar_on_a_terminal_and_one_line_per_epoch_elsewhere(dataset: str) -> None:
    from netc.runtime import progress as progress_mod

    for interactive in (True, False):
        stream = io.StringIO()
        trainer = make_trainer(dataset, None, epochs=2)
        trainer.progress = Progress(stream, interactive=interactive)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(progress_mod, "REDRAW_SECONDS", 0.0)  # redraw after every step
            trainer.fit()
        text = stream.getvalue()
        summaries = [line for line in text.replace("\r", "\n").splitlines() if line.startswith("epoch ")
                     and ": train loss" in line]
        assert len(summaries) == 2 and "val accuracy" in summaries[0]
        if interactive:
            # 5 steps per epoch, each redrawn in place: "\r" + bar with loss, speed and ETA
            bars = [part for part in text.split("\r") if "samples/s" in part]
            assert len(bars) == 10 and "epoch 1/2 [" in bars[0]
            assert " 1/5, loss " in bars[0] and "ETA" in bars[0]
        else:
            assert "\r" not in text and len(text.splitlines()) == 2
