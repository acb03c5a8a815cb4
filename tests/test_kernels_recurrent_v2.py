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
PROJ_CASES = [  # step by step: the slowest in the interpreter
    pytest.param(Case("lstm", 2, 3, 4, 5, layers=2, bidirectional=True, with_hx=True, proj=3),
                 marks=pytest.mark.slow),
    Case("lstm", None, 3, 3, 4, layers=1, proj=2, bias=False),
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


@pytest.mark.parametrize("kind", [pytest.param("rnn_relu", marks=pytest.mark.slow),
                                  pytest.param("lstm", marks=pytest.mark.slow), "gru"])
def test_per_step_fallback_bidirectional(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above max_hidden, each direction runs per step (the reverse one flipped); hx and dh_n included."""
    _small_tiles(monkeypatch, max_hidden=4, step_block=(4, 16))
    _compare(Case(kind, 3, 4, 3, 6, layers=2, bidirectional=True, with_hx=True), device)


CELLS = {"rnn_tanh": torch.nn.RNNCell, "rnn_relu": torch.nn.RNNCell, "lstm": torch.nn.LSTMCell,
         "gru": torch.nn.GRUCell}


def _cell_call(kind: str, x: torch.Tensor, hx: Any, weights: list[torch.Tensor | None]) -> Any:
    if kind.startswith("rnn"):
        return kernels.rnn_cell(x, hx, *weights, nonlinearity=kind[4:])
    return getattr(kernels, f"{kind}_cell")(x, hx, *weights)


@pytest.mark.parametrize("kind", list(CELLS))
@pytest.mark.parametrize(("batch", "with_hx", "bias"),
                         [(3, True, True), (None, False, True), (2, False, False), (None, True, False)])
def test_cells_match_torch(kind: str, batch: int | None, with_hx: bool, bias: bool, device: str) -> None:
    """rnn_cell / lstm_cell / gru_cell as torch.nn.RNNCell / LSTMCell / GRUCell: batched or not, hx or
    zeros, with or without bias; the output and the gradients of input, hx and every weight."""
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    module = CELLS[kind](5, 7, bias=bias, **extra).to(device=device, dtype=torch.float64)
    lead = () if batch is None else (batch,)
    x = torch.randn(*lead, 5, device=device, dtype=torch.float64, requires_grad=True)
    hx: Any = None
    if with_hx:
        states = [torch.randn(*lead, 7, device=device, dtype=torch.float64, requires_grad=True)
                  for _ in range(2 if kind == "lstm" else 1)]
        hx = tuple(states) if kind == "lstm" else states[0]
    weights = [w.detach().clone().requires_grad_() for w in module.parameters()]
    ours = _flat(_cell_call(kind, x, hx, weights + [None] * (4 - len(weights))))
    theirs = _flat(module(x, hx))
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, **F64)
    seeds = [torch.randn_like(ref) for ref in theirs]
    leaves = [x, *_flat(hx if hx is not None else ())]
    grads = torch.autograd.grad(sum((o * s).sum() for o, s in zip(ours, seeds, strict=True)),
                                leaves + weights)
    refs = torch.autograd.grad(sum((o * s).sum() for o, s in zip(theirs, seeds, strict=True)),
                               leaves + list(module.parameters()))
    for mine, ref in zip(grads, refs, strict=True):
        torch.testing.assert_close(mine, ref, **F64)


def test_cell_with_one_bias_matches_torch_functional(device: str) -> None:
    """b_ih without b_hh (the functional form allows it), against torch's own rnn_tanh_cell / gru_cell."""
    x = torch.randn(3, 4, device=device, dtype=torch.float64)
    h = torch.randn(3, 5, device=device, dtype=torch.float64)
    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, device=device, dtype=torch.float64)

    pairs = ((1, kernels.rnn_cell, torch.rnn_tanh_cell), (3, kernels.gru_cell, torch.gru_cell))
    for gates, ours, theirs in pairs:
        w_ih, w_hh, b = rand(gates * 5, 4), rand(gates * 5, 5), rand(gates * 5)
        torch.testing.assert_close(ours(x, h, w_ih, w_hh, b), theirs(x, h, w_ih, w_hh, b, None), **F64)
        torch.testing.assert_close(ours(x, h, w_ih, w_hh, None, b), theirs(x, h, w_ih, w_hh, None, b), **F64)


def _layerwise_with_dropout(case: Case, module: torch.nn.Module, x: torch.Tensor, p: float,
                            seed: int) -> torch.Tensor:
    """The reference for dropout between layers: torch's one-layer modules with the stacked module's
    weights, and netc's dropout between them, drawn after torch.manual_seed(seed) as the stacked
    call draws its masks (so the same ones)."""
    per_layer = len(module._flat_weights) // case.layers
    singles = []
    for layer in range(case.layers):
        width = case.features if layer == 0 else case.hidden * (2 if case.bidirectional else 1)
        single = _module(dataclasses.replace(case, layers=1, features=width), x.device.type)
        with torch.no_grad():
            own = module._flat_weights[layer * per_layer:(layer + 1) * per_layer]
            for mine, theirs in zip(single._flat_weights, own, strict=True):
                mine.copy_(theirs)
        singles.append(single)
    torch.manual_seed(seed)
    for layer, single in enumerate(singles):
        x = single(x)[0]
        if layer < case.layers - 1:
            x = kernels.dropout(x, p, True)
    return x


@pytest.mark.parametrize("kind", ["rnn_tanh", "lstm", "gru"])
def test_dropout_between_layers_reproduces_its_masks(kind: str, device: str) -> None:
    """With the same torch seed, the stacked call equals the layer-by-layer reference with netc's
    dropout kernel between layers (so the masks are drawn on the device from torch's generator)."""
    case = Case(kind, 4, 3, 5, 6, layers=3, bidirectional=kind == "lstm")
    module = _module(case, device)
    x, _ = _inputs(case, device)
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]
    torch.manual_seed(7)
    output = _flat(_ours(case, x, None, weights, dropout=0.4, training=True))[0]
    ref = _layerwise_with_dropout(case, module, x, 0.4, seed=7)
    torch.testing.assert_close(output, ref, **F64)
    dropped = (output == 0).float().mean().item()
    assert dropped < 0.05  # the last layer's output is not dropped out
    seed = torch.randn_like(ref)
    (grad,) = torch.autograd.grad((output * seed).sum(), [x])
    (ref_grad,) = torch.autograd.grad((ref * seed).sum(), [x])
    torch.testing.assert_close(grad, ref_grad, **F64)
    torch.manual_seed(8)  # another draw: other masks, another output
    assert not torch.allclose(_flat(_ours(case, x, None, weights, dropout=0.4, training=True))[0], output)


@pytest.mark.parametrize(("p", "training"), [(0.5, False), (0.0, True)])
def test_dropout_off_in_eval_and_at_zero(p: float, training: bool, device: str) -> None:
    """training=False or p=0: exactly the module without dropout, and no generator draw."""
    case = Case("gru", 3, 4, 3, 5, layers=2)
    module = _module(case, device)
    x, _ = _inputs(case, device)
    state = torch.get_rng_state()
    output, h_n = kernels.gru(x, list(module._flat_weights), num_layers=2, dropout=p, training=training)
    assert torch.equal(state, torch.get_rng_state())
    ref_output, ref_h = module(x)
    torch.testing.assert_close(output, ref_output, **F64)
    torch.testing.assert_close(h_n, ref_h, **F64)


def test_dropout_fraction_is_p(device: str) -> None:
    """The first layer's outputs reach layer 2 dropped with probability p: with W_ih = I and W_hh = 0
    in layer 2, each dropped unit is an exact zero of the output."""
    hidden, p = 64, 0.3
    x = torch.randn(8, 4, 3, device=device, dtype=torch.float64)
    zeros = torch.zeros(hidden, hidden, dtype=torch.float64, device=device)
    weights = [torch.randn(hidden, 3, dtype=torch.float64, device=device), zeros,
               torch.eye(hidden, dtype=torch.float64, device=device), zeros]
    output, _ = kernels.rnn(x, weights, num_layers=2, bias=False, dropout=p, training=True)
    # layer 2 is tanh(dropout(tanh(x W^T)) I): an exact zero where the mask dropped the unit
    zero_fraction = (output == 0).double().mean().item()
    assert abs(zero_fraction - p) < 0.05, zero_fraction


def test_legacy_positional_arguments(device: str) -> None:
    """rnn(x, weights, num_layers, nonlinearity, bias) and lstm/gru(x, weights, num_layers, bias), the
    pre-v2 positional calls, still mean what they meant."""
    x = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    calls = {"rnn_relu": lambda w: kernels.rnn(x, w, 2, "relu", False),
             "lstm": lambda w: kernels.lstm(x, w, 2, False), "gru": lambda w: kernels.gru(x, w, 2, False)}
    for kind, call in calls.items():
        module = _module(Case(kind, 2, 3, 4, 5, layers=2, bias=False), device)
        for mine, ref in zip(_flat(call(list(module._flat_weights))), _flat(module(x)), strict=True):
            torch.testing.assert_close(mine, ref, **F64)


def _gradcheck_with_states(kind: str, shape: tuple[int, int, int, int], device: str) -> bool:
    """gradcheck (fast mode) of a bidirectional layer w.r.t. x, its initial states and every weight."""
    batch, steps, features, hidden = shape
    module = _module(Case(kind, batch, steps, features, hidden, bidirectional=True), device)
    x = torch.randn(batch, steps, features, device=device, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(2, batch, hidden, device=device, dtype=torch.float64, requires_grad=True)
              for _ in range(2 if kind == "lstm" else 1)]
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]

    def run(x: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hx = tuple(rest[:2]) if kind == "lstm" else rest[0]
        own = list(rest[len(states):])
        case = Case(kind, batch, steps, features, hidden, bidirectional=True)
        return tuple(_flat(_ours(case, x, hx, own)))

    return torch.autograd.gradcheck(run, (x, *states, *weights), eps=1e-6, atol=1e-7, fast_mode=True)


def test_gradcheck_bidirectional_with_states(device: str) -> None:
    assert _gradcheck_with_states("rnn_tanh", (1, 2, 2, 3), device)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gradcheck_bidirectional_with_states_gated(kind: str, device: str) -> None:
    assert _gradcheck_with_states(kind, (2, 3, 2, 3), device)


def test_gradcheck_gru_cell(device: str) -> None:
    cell = torch.nn.GRUCell(3, 4).to(device=device, dtype=torch.float64)
    x = torch.randn(2, 3, device=device, dtype=torch.float64, requires_grad=True)
    h = torch.randn(2, 4, device=device, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in cell.parameters()]
    assert torch.autograd.gradcheck(lambda x, h, *w: kernels.gru_cell(x, h, *w), (x, h, *weights),
                                    eps=1e-6, atol=1e-7, fast_mode=True)


def test_rejects_bad_states_and_options(device: str) -> None:
    x = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    weights = list(_module(Case("gru", 2, 3, 4, 5, bidirectional=True), device)._flat_weights)
    with pytest.raises(ValueError, match=r"hx of shape \(2, 2, 5\)"):
        kernels.gru(x, weights, torch.zeros(1, 2, 5, dtype=torch.float64), bidirectional=True)
    with pytest.raises(ValueError, match="expected 4 weight tensors"):
        kernels.gru(x, weights)  # a bidirectional layer's 8 tensors without bidirectional=True
    with pytest.raises(ValueError, match="dropout"):
        kernels.gru(x, weights, bidirectional=True, dropout=1.5)
    with pytest.raises(ValueError, match="proj_size"):
        kernels.lstm(x, weights, proj_size=-1)
    with pytest.raises(ValueError, match=r"\(N, F\) or \(F,\)"):
        kernels.gru_cell(x, None, *weights[:4])
    with pytest.raises(ValueError, match="hx"):
        kernels.rnn_cell(x[:, 0], torch.zeros(3, 5, dtype=torch.float64, device=device),
                         torch.randn(5, 4, dtype=torch.float64, device=device),
                         torch.randn(5, 5, dtype=torch.float64, device=device))
