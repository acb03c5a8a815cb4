"""netc.kernels rnn / lstm / gru (hx, bidirectional, dropout, proj_size, unbatched) and the three cells
against torch.nn in float64: forward and every gradient, the initial states' included."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
import torch

from netc import kernels
from netc.kernels import policy

MODULES = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
F64 = {"rtol": 1e-9, "atol": 1e-10}


@dataclasses.dataclass(frozen=True)
class Case:
    kind: str
    batch: int | None  # None: unbatched
    steps: int
    features: int
    hidden: int
    layers: int = 1
    bidirectional: bool = False
    bias: bool = True
    with_hx: bool = False
    proj: int = 0


def _module(case: Case, device: str) -> torch.nn.Module:
    """A batch-first torch module with weights in U(-0.6, 0.6), so the gates leave their linear range."""
    extra: dict[str, Any] = {"nonlinearity": case.kind[4:]} if case.kind.startswith("rnn") else {}
    if case.proj:
        extra["proj_size"] = case.proj
    module = MODULES[case.kind](case.features, case.hidden, num_layers=case.layers, bias=case.bias,
                                batch_first=True, bidirectional=case.bidirectional, **extra)
    module = module.to(device=device, dtype=torch.float64)
    with torch.no_grad():
        for weight in module._flat_weights:
            weight.uniform_(-0.6, 0.6)
    return module


def _inputs(case: Case, device: str) -> tuple[torch.Tensor, Any]:
    """x (N, T, F) or (T, F), and hx (a pair for the lstm) or None; every tensor a leaf needing grad."""
    lead = () if case.batch is None else (case.batch,)
    x = torch.randn(*lead, case.steps, case.features, device=device, dtype=torch.float64, requires_grad=True)
    if not case.with_hx:
        return x, None
    states = case.layers * (2 if case.bidirectional else 1)

    def state(width: int) -> torch.Tensor:
        return torch.randn(states, *lead, width, device=device, dtype=torch.float64, requires_grad=True)

    if case.kind == "lstm":
        return x, (state(case.proj or case.hidden), state(case.hidden))
    return x, state(case.hidden)


def _ours(case: Case, x: torch.Tensor, hx: Any, weights: list[torch.Tensor], **options: Any) -> Any:
    common = {"num_layers": case.layers, "bias": case.bias, "bidirectional": case.bidirectional, **options}
    if case.kind.startswith("rnn"):
        return kernels.rnn(x, weights, hx, nonlinearity=case.kind[4:], **common)
    if case.kind == "lstm":
        return kernels.lstm(x, weights, hx, proj_size=case.proj, **common)
    return kernels.gru(x, weights, hx, **common)


def _flat(value: Any) -> list[torch.Tensor]:
    """Nested tuples of tensors -> a flat list."""
    if isinstance(value, torch.Tensor):
        return [value]
    return [t for item in value for t in _flat(item)]


def _compare(case: Case, device: str) -> None:
    """Outputs, then the gradients of x, hx and every weight under random output weightings."""
    module = _module(case, device)
    x, hx = _inputs(case, device)
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]
    ours, theirs = _flat(_ours(case, x, hx, weights)), _flat(module(x, hx))
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, **F64)
    seeds = [torch.randn_like(ref) for ref in theirs]
    leaves = [x, *_flat(hx if hx is not None else ())]
    grads = torch.autograd.grad(sum((o * s).sum() for o, s in zip(ours, seeds, strict=True)),
                                leaves + weights)
    refs = torch.autograd.grad(sum((o * s).sum() for o, s in zip(theirs, seeds, strict=True)),
                               leaves + list(module._flat_weights))
    names = [f"input/state {i}" for i in range(len(leaves))] + list(module._flat_weights_names)
    for name, mine, ref in zip(names, grads, refs, strict=True):
        torch.testing.assert_close(mine, ref, **F64, msg=lambda m, name=name: f"d/d {name}: {m}")


# every kind with and without hx, one and two directions, bias on and off, 1-3 layers, unbatched
CASES = [
    Case("rnn_tanh", 3, 5, 4, 7, layers=2, bidirectional=True, with_hx=True),
    Case("rnn_relu", None, 4, 3, 6, layers=1, bidirectional=True, bias=False),
    Case("rnn_tanh", 2, 1, 5, 9, layers=3, with_hx=True, bias=False),
    Case("lstm", 3, 4, 5, 6, layers=2, bidirectional=True, with_hx=True),
    Case("lstm", None, 5, 3, 5, layers=1, with_hx=True, bias=False),
    Case("lstm", 2, 3, 4, 5, layers=2, bidirectional=True, bias=False),
    Case("gru", 3, 5, 4, 7, layers=2, bidirectional=True, with_hx=True),
    Case("gru", None, 3, 5, 6, layers=2, bidirectional=True, with_hx=True, bias=False),
    Case("gru", 1, 7, 3, 5, layers=1, with_hx=True),
]
PROJ_CASES = [
    Case("lstm", 2, 3, 4, 5, layers=2, bidirectional=True, with_hx=True, proj=3),
    Case("lstm", None, 4, 3, 6, layers=1, proj=2, bias=False),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_matches_torch(case: Case, device: str) -> None:
    _compare(case, device)


@pytest.mark.parametrize("case", PROJ_CASES, ids=str)
def test_proj_size_matches_torch(case: Case, device: str) -> None:
    _compare(case, device)


def _small_tiles(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    for name in ("RECURRENT_GPU", "RECURRENT_INTERPRETER"):
        monkeypatch.setattr(policy, name, dataclasses.replace(getattr(policy, name), **changes))


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_column_blocks_and_k_chunks(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """16-unit column blocks and K chunks (the GPU's shape of work) over H = 21: two full blocks and
    a ragged one, in both directions, with initial states."""
    _small_tiles(monkeypatch, seq_tiles={k: (16, 4) for k in ("rnn", "lstm", "gru")}, seq_block_k=16)
    _compare(Case(kind, 3, 4, 5, 21, layers=1, bidirectional=True, with_hx=True), device)


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm", "gru"])
def test_per_step_fallback_bidirectional(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above max_hidden, each direction runs per step (the reverse one flipped); hx and dh_n included."""
    _small_tiles(monkeypatch, max_hidden=4, step_block=(4, 16))
    _compare(Case(kind, 3, 4, 3, 6, layers=2, bidirectional=True, with_hx=True), device)
