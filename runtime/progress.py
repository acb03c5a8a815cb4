"""Training progress (step, loss, samples) -> a progress bar on stderr, or one line per epoch.

On a terminal the bar redraws in place with a carriage return, at most a few
times a second; elsewhere (a log file, a pipe, a test) nothing is drawn
during an epoch and only the epoch summaries print.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24
REDRAW_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    seconds = max(int(seconds + 0.5), 0)
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """One epoch's bar: `start`, then `update` as losses are read, then `finish` with a summary line."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self.epoch, self.epochs, self.total = 0, 0, 0
        self.started = self.last_draw = 0.0
        self.first_step = 0
        self.width = 0  # length of the last bar drawn, to blank it out

    def start(self, epoch: int, epochs: int, total_steps: int, first_step: int = 0) -> None:
        self.epoch, self.epochs, self.total, self.first_step = epoch, epochs, total_steps, first_step
        self.started = self.last_draw = time.perf_counter()

    def due(self) -> bool:
        """Whether a redraw is due (callers read the loss from the device only then)."""
        return self.interactive and time.perf_counter() - self.last_draw >= REDRAW_SECONDS

    def update(self, step: int, loss: float, samples: int) -> None:
        """Draw the bar after `step` of `total` steps; `samples` seen this epoch so far."""
        if not self.interactive:
            return
        now = time.perf_counter()
        self.last_draw = now
        elapsed = max(now - self.started, 1e-9)
        done = step - self.first_step
        rate = samples / elapsed
        eta = elapsed / max(done, 1) * (self.total - step)
        filled = int(BAR_WIDTH * step / max(self.total, 1))
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        text = (f"epoch {self.epoch}/{self.epochs} [{bar}] {step}/{self.total} "
                f"loss {loss:.4f}  {rate:,.0f} samples/s  ETA {format_duration(eta)}")
        self.stream.write("\r" + text.ljust(self.width))
        self.stream.flush()
        self.width = len(text)

    def finish(self, line: str) -> None:
        """Replace the bar with the epoch's summary line."""
        if self.interactive and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
        self.width = 0
        self.stream.write(line + "\n")
        self.stream.flush()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
