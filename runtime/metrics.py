"""A run's per-epoch history (list of dicts) -> `metrics.jsonl` and a PNG of the loss and accuracy curves."""

from __future__ import annotations

import json
import os
from typing import Any

from netc.runtime.checkpoint import strict_json  # NaN -> "NaN": every line stays standard JSON

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "curves.png"


def write_jsonl(directory: str, history: list[dict[str, Any]]) -> str:
    """One JSON object per line: each epoch, then the final test result if there is one."""
    path = os.path.join(directory, METRICS_FILE)
    with open(path, "w", encoding="utf-8") as handle:
        for record in history:
            handle.write(json.dumps(strict_json(record), sort_keys=True, allow_nan=False) + "\n")
    return path


def plot(directory: str, history: list[dict[str, Any]], title: str) -> str | None:
    """Loss (train, val) and accuracy (val, test) per epoch; None when there is no epoch to draw."""
    epochs = [record for record in history if "epoch" in record and "train_loss" in record]
    if not epochs:
        return None
    import matplotlib

    matplotlib.use("Agg")  # no display on a training machine
    from matplotlib import pyplot

    figure, (loss_axes, acc_axes) = pyplot.subplots(1, 2, figsize=(10, 4))
    x = [record["epoch"] for record in epochs]
    loss_axes.plot(x, [record["train_loss"] for record in epochs], marker="o", label="train")
    _plot_optional(loss_axes, epochs, "val_loss", "validation")
    loss_axes.set(xlabel="epoch", ylabel="cross-entropy loss", title=f"{title}: loss")
    _plot_optional(acc_axes, epochs, "val_acc", "validation", scale=100)
    tests = [record for record in history if "test_acc" in record]
    if tests:
        acc_axes.axhline(100 * tests[-1]["test_acc"], color="black", linestyle="--",
                         label=f"test {100 * tests[-1]['test_acc']:.2f}%")
    acc_axes.set(xlabel="epoch", ylabel="accuracy (%)", title=f"{title}: accuracy")
    for axes in (loss_axes, acc_axes):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend()
    figure.tight_layout()
    path = os.path.join(directory, PLOT_FILE)
    figure.savefig(path, dpi=80)
    pyplot.close(figure)
    return path


def _plot_optional(axes: Any, epochs: list[dict[str, Any]], key: str, label: str, scale: float = 1.0) -> None:
    points = [(record["epoch"], scale * record[key]) for record in epochs if record.get(key) is not None]
    if points:
        axes.plot(*zip(*points, strict=True), marker="o", label=label)


def write_all(directory: str, history: list[dict[str, Any]], title: str) -> None:
    write_jsonl(directory, history)
    plot(directory, history, title)


TENSORBOARD_HINT = "--tensorboard needs the optional TensorBoard package: pip install 'netc[tensorboard]'"


class TensorBoard:
    """Scalars for TensorBoard through torch.utils.tensorboard: per read of the loss, and per epoch.

    Tags: train/loss (running mean of the epoch so far), train/lr, train/samples_per_s at global
    steps; epoch/train_loss, epoch/val_loss, epoch/val_acc, epoch/seconds per epoch; test/loss,
    test/acc at the end.
    """

    def __init__(self, directory: str) -> None:
        from netc.dsl.errors import DataError

        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise DataError(TENSORBOARD_HINT) from None
        try:
            self.writer = SummaryWriter(log_dir=directory)
        except OSError as error:
            why = error.strerror or error
            raise DataError(f"cannot write TensorBoard logs in {directory}: {why}") from None

    def step(self, step: int, loss: float, lr: float, samples_per_s: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)
        self.writer.add_scalar("train/lr", lr, step)
        self.writer.add_scalar("train/samples_per_s", samples_per_s, step)

    def record(self, record: dict[str, Any]) -> None:
        """An epoch's record (epoch, step, train_loss, val_*, seconds) or the final test record."""
        if "test_acc" in record:
            step = int(record.get("step", record.get("epoch", 0)))
            self.writer.add_scalar("test/loss", record["test_loss"], step)
            self.writer.add_scalar("test/acc", record["test_acc"], step)
        else:
            for key in ("train_loss", "val_loss", "val_acc", "lr", "seconds"):
                if key in record:
                    self.writer.add_scalar(f"epoch/{key}", record[key], record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
