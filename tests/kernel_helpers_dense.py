"""Shared checks for dense-kernel tests: (kernel result, torch reference) -> assertion; largest errors logged.

Errors are measured relative to the reference's largest magnitude, so small
entries near zero do not inflate them. Set NETC_ERROR_LOG=path to append one
JSON line per comparison (name, dtype, error); `python tests/kernel_helpers_dense.py
path` then prints the largest error per function.
"""

from __future__ import annotations

import json
import os
import sys
from types import ModuleType
from typing import Any

import pytest
import torch

def record_launches(monkeypatch: pytest.MonkeyPatch, module: ModuleType, name: str) -> list[tuple[Any, ...]]:
    """Wrap the @triton.jit kernel `module.name`: every launch still runs, and (grid, args, kwargs) is
    appended to the returned list, so a test can count launches or compare their arguments."""
    kernel = getattr(module, name)
    launches: list[tuple[Any, ...]] = []

    class Recording:
        def __getitem__(self, grid: Any) -> Any:
            def launch(*args: Any, **kwargs: Any) -> Any:
                launches.append((grid, args, kwargs))
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(module, name, Recording())
    return launches


# tolerance on max|actual - expected| / max|expected| per compute dtype
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """max |a - e| / max |e| over finite entries; NaN/inf positions must agree exactly."""
    actual, expected = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    finite = torch.isfinite(expected)
    assert torch.equal(torch.isnan(actual), torch.isnan(expected)), "NaN positions differ"
    assert torch.equal(actual[~finite & ~torch.isnan(expected)], expected[~finite & ~torch.isnan(expected)])
    if not finite.any():
        return 0.0
    scale = expected[finite].abs().max().clamp_min(1e-30)
    return float((actual[finite] - expected[finite]).abs().max() / scale)


def check(name: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """Assert actual matches expected within the tolerance of `dtype` (default: actual's dtype)."""
    dtype = dtype or actual.dtype
    error = relative_error(actual, expected)
    log = os.environ.get("NETC_ERROR_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"name": name, "dtype": str(dtype), "error": error}) + "\n")
    assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.3g} > {TOLERANCE[dtype]:.0e}"
    return error


def summarize(path: str) -> None:
    """Print the largest recorded error per (function, dtype)."""
    worst: dict[tuple[str, str], float] = {}
    with open(path) as handle:
        for line in handle:
            row = json.loads(line)
            key = (row["name"].split(":")[0], row["dtype"])
            worst[key] = max(worst.get(key, 0.0), row["error"])
    for (name, dtype), error in sorted(worst.items()):
        print(f"{name:28s} {dtype:14s} {error:.3g}")


if __name__ == "__main__":
    summarize(sys.argv[1])
