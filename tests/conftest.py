"""Shared test setup: Triton's interpreter on machines without a GPU, float64 references, seeds."""

from __future__ import annotations

import os

# Kernels bind to the interpreter when triton is imported: decide before any test module loads it.
if os.environ.get("NETC_TEST_GPU") != "1":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_everything() -> None:
    """Fresh but repeatable random inputs in every test."""
    try:
        import torch
    except ImportError:  # the front-end tests run without torch
        return
    torch.manual_seed(1234)


@pytest.fixture
def device() -> str:
    """cuda when the GPU suite runs (NETC_TEST_GPU=1), else cpu through the interpreter."""
    return "cuda" if os.environ.get("NETC_TEST_GPU") == "1" else "cpu"


@pytest.fixture(autouse=True)
def _poison_kernel_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every kernel output starts as NaN in tests, so unwritten elements fail comparisons."""
    try:
        from netc.kernels import config
    except ImportError:
        return
    monkeypatch.setattr(config, "POISON_OUTPUTS", True)
