"""Training progress (step, loss, samples) -> a tqdm bar on stderr, or one line per epoch.

On a terminal the bar is tqdm's (steps, ETA) with the loss and samples/s
beside it, redrawn at most a few times a second: the trainer reads the loss
from the device only when `due()` says a redraw is wanted. Elsewhere (a log
file, a pipe, a test) nothing is drawn during an epoch and only the epoch
summaries print.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from tqdm import tqdm

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
        self.bar: tqdm | None = None
        self.started = self.last_draw = 0.0

    def start(self, epoch: int, epochs: int, total_steps: int, first_step: int = 0) -> None:
        self.started = self.last_draw = time.perf_counter()
        self._close()
        if self.interactive:
            self.bar = tqdm(total=total_steps, initial=first_step, desc=f"epoch {epoch}/{epochs}",
                            unit="step", file=self.stream, leave=False, dynamic_ncols=True,
                            mininterval=0.0, bar_format="{desc} [{bar:24}] {n}/{total}{postfix} "
                            "ETA {remaining}")
        self.first_step = first_step

    def due(self) -> bool:
        """Whether a redraw is due (callers read the loss from the device only then)."""
        return self.bar is not None and time.perf_counter() - self.last_draw >= REDRAW_SECONDS

    def update(self, step: int, loss: float, samples: int) -> None:
        """Draw the bar after `step` of the epoch's steps; `samples` seen this epoch so far."""
        if self.bar is None:
            return
        now = time.perf_counter()
        self.last_draw = now
        rate = samples / max(now - self.started, 1e-9)
        self.bar.set_postfix_str(f"loss {loss:.4f}  {rate:,.0f} samples/s", refresh=False)
        self.bar.update(step - self.bar.n)

    def finish(self, line: str) -> None:
        """Replace the bar with the epoch's summary line."""
        self._close()
        self.stream.write(line + "\n")
        self.stream.flush()

    def _close(self) -> None:
        if self.bar is not None:
            self.bar.close()  # leave=False: tqdm blanks its line
            self.bar = None

    def elapsed(self) -> float:
        return time.perf_counter() - self.started
