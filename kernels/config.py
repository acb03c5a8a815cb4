"""Where Triton runs (compiled on CUDA, or its interpreter on the CPU) and per-target launch settings."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def ensure_backend(device: str | None = None) -> None:
    """Choose Triton's interpreter when no CUDA GPU will run the kernels.

    Must run before `triton` is first imported: kernels bind to the
    interpreter at decoration. A `TRITON_INTERPRET` already in the
    environment wins. `device="cpu"` forces the interpreter even on a GPU
    machine; `None` picks it only when torch sees no CUDA device.
    """
    if "triton" in sys.modules or "TRITON_INTERPRET" in os.environ:
        return
    if device is None:
        import torch

        use_interpreter = not torch.cuda.is_available()
    else:
        use_interpreter = device == "cpu"
    if use_interpreter:
        os.environ["TRITON_INTERPRET"] = "1"


def interpreting() -> bool:
    """True when kernels run through Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Tests set this to fill every kernel output with NaN before launch, so an
# element that a kernel forgets to write shows up as NaN instead of stale memory.
POISON_OUTPUTS = False


def new_empty(
    shape: tuple[int, ...] | list[int], like: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Allocate a kernel output on `like`'s device (NaN-filled when POISON_OUTPUTS is set)."""
    import torch

    out = torch.empty(tuple(shape), device=like.device, dtype=dtype or like.dtype)
    if POISON_OUTPUTS:
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out
