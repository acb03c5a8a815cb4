"""A checked Graph + batch + device -> refused with a clear message when training it cannot fit in memory.

`netc train`, `check` and `bench` call `check_fits` before allocating anything,
so a net or a batch no machine can hold is one line ("needs 3.1 TB; cpu has
23 GB available") instead of an allocator traceback minutes later. The
estimate itself is `netc.dsl.limits.estimate_memory` (plain arithmetic).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from netc.dsl.errors import DataError
from netc.dsl.limits import MemoryEstimate, estimate_memory, format_bytes


def device_memory(device: torch.device) -> tuple[int, str]:
    """(bytes the device can still give, how to say so): free GPU memory, or available host RAM."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free, f"{device} has {format_bytes(free)} free"
    available = _host_available()
    return available, f"cpu has {format_bytes(available)} available"


def _host_available() -> int:
    """MemAvailable from /proc/meminfo (Linux), else the physical memory."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 2**63 - 1  # unknown: never refuse on a guess


def resolve_device(device: str | torch.device) -> torch.device:
    """`auto` as runtime.lower resolves it: cuda when PyTorch sees a GPU, else cpu."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def check_fits(graph: Any, batch: int, device: str | torch.device, optimizer: str = "none",
               momentum: float = 0.0, training: bool = True, copies: int = 1) -> MemoryEstimate:
    """The estimate of `graph` at `batch`; DataError when it exceeds what `device` has.

    `copies`: networks held at once (`netc check` and `bench` build one per backend or contender).
    """
    estimate = estimate_memory(graph, batch, optimizer, momentum, training)
    needed = estimate.total * copies
    resolved = resolve_device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        return estimate  # runtime.lower refuses a missing GPU with its own message
    available, said = device_memory(resolved)
    if needed > available:
        copies_said = f" ({copies} copies of the net)" if copies > 1 else ""
        raise DataError(f"{graph.path}: {graph.name} with batch {batch:,} needs about {format_bytes(needed)}"
                        f"{copies_said} ({estimate.describe()}); {said}: use a smaller batch (--batch) or "
                        "smaller layers")
    return estimate
