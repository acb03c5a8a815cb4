"""PyTorch's ModuleInfo samples for nn.RNN / LSTM / GRU / RNNCell / LSTMCell / GRUCell -> netc's functions.

Each sample (torch.testing._internal.common_modules.module_db) builds the torch
module in float64, runs it, and runs netc's function on clones of the same
inputs and the module's own weights (`_flat_weights`, or the cell's parameters)
with the module's settings; outputs and the gradients of every input and weight
must agree. batch_first=False inputs are transposed to netc's batch-first
layout and back. A sample netc does not support must raise NotImplementedError
(counted as "not supported"); any other difference fails. torch's samples are
all unbatched, 2 layers (and repeat each configuration for batch_first True
and False, the same call for an unbatched input): the fast test runs one
sample per (bidirectional, hx given) of each module in training mode (each cell
nonlinearity), the
slow one every sample (164: the projected lstm's included) in training and
eval mode.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from netc import kernels

MODULES = ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell")
F64 = {"rtol": 1e-10, "atol": 1e-12}


@pytest.fixture(scope="module")
def module_db() -> list[Any]:
    """torch's module_db. Importing it freezes torch.backends flags for the process; undo that."""
    pytest.importorskip("expecttest", reason="torch's internal test modules need expecttest")
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_modules import module_db

    if not frozen:  # torch.backends is a module wrapper: set the flag in the functions' own globals
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert torch.backends.flags_frozen() == frozen
    return module_db


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


def _clone(value: Any) -> Any:
    """Fresh leaves with the same values and requires_grad."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone().requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item) for item in value)
    return value


def _ours(module: torch.nn.Module, args: tuple[Any, ...], weights: list[torch.Tensor]) -> Any:
    """netc's function for this module, called with its settings on `args` (the module's forward args)."""
    name = type(module).__name__
    if name.endswith("Cell"):
        full = weights + [None] * (4 - len(weights))
        hx = args[1] if len(args) > 1 else None
        if name == "RNNCell":
            return kernels.rnn_cell(args[0], hx, *full, nonlinearity=module.nonlinearity)
        return getattr(kernels, name[:-4].lower() + "_cell")(args[0], hx, *full)
    x, hx = args[0], args[1] if len(args) > 1 else None
    flip = not module.batch_first and x.dim() == 3  # netc is batch first
    options = {"num_layers": module.num_layers, "bias": module.bias, "dropout": module.dropout,
               "training": module.training, "bidirectional": module.bidirectional}
    if name == "RNN":
        options["nonlinearity"] = module.nonlinearity
    if name == "LSTM":
        options["proj_size"] = module.proj_size
    output, state = getattr(kernels, name.lower())(x.transpose(0, 1) if flip else x, weights, hx, **options)
    return output.transpose(0, 1) if flip else output, state


def _run_sample(info: Any, sample: Any, training: bool) -> str:
    """'pass', or 'unsupported' when netc raised NotImplementedError."""
    ref = info.module_cls(*sample.constructor_input.args, **sample.constructor_input.kwargs).double()
    ref.train(training)
    args = _clone(tuple(sample.forward_input.args))
    ref_params = list(ref._flat_weights) if hasattr(ref, "_flat_weights") else list(ref.parameters())
    theirs = list(_tensors(ref(*args, **sample.forward_input.kwargs)))
    our_args = _clone(args)
    weights = [w.detach().clone().requires_grad_() for w in ref_params]
    try:
        ours = list(_tensors(_ours(ref, our_args, weights)))
    except NotImplementedError:
        return "unsupported"
    for mine, expected in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, expected, **F64)
    seeds = [torch.randn_like(t) for t in theirs]
    leaves = [t for t in _tensors(args) if t.requires_grad]
    our_leaves = [t for t in _tensors(our_args) if t.requires_grad]
    refs = torch.autograd.grad(sum((t * s).sum() for t, s in zip(theirs, seeds, strict=True)),
                               leaves + ref_params)
    grads = torch.autograd.grad(sum((t * s).sum() for t, s in zip(ours, seeds, strict=True)),
                                our_leaves + weights)
    for mine, expected in zip(grads, refs, strict=True):
        torch.testing.assert_close(mine, expected, **F64)
    return "pass"


def _representative(sample: Any) -> tuple[Any, ...]:
    """One sample per (bidirectional, hx given; a cell's nonlinearity) for the fast test; the
    projected lstm's are slow."""
    kwargs = sample.constructor_input.kwargs
    if kwargs.get("proj_size", 0):
        return ("slow",)
    cell_kind = kwargs.get("nonlinearity") if "num_layers" not in kwargs else None
    return kwargs.get("bidirectional"), len(sample.forward_input.args), cell_kind


def _outcomes(module_db: list[Any], name: str, training: bool, fast: bool) -> list[str]:
    (info,) = [info for info in module_db if info.module_cls.__name__ == name]
    samples = list(info.module_inputs_func(info, device="cpu", dtype=torch.float64, requires_grad=True,
                                           training=training))
    if fast:  # the first sample of each kind (torch's samples are deterministic in order)
        chosen: dict[tuple[Any, ...], Any] = {}
        for sample in samples:
            chosen.setdefault(_representative(sample), sample)
        samples = [sample for key, sample in chosen.items() if key != ("slow",)]
    outcomes = [_run_sample(info, sample, training) for sample in samples]
    print(f"ModuleInfo {name} ({'train' if training else 'eval'}): {outcomes.count('pass')} passed, "
          f"{outcomes.count('unsupported')} not supported (NotImplementedError)")
    return outcomes


@pytest.mark.parametrize("name", MODULES)
def test_moduleinfo_representative_samples(name: str, module_db: list[Any]) -> None:
    outcomes = _outcomes(module_db, name, training=True, fast=True)
    assert outcomes and set(outcomes) == {"pass"}


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", MODULES)
def test_moduleinfo_every_sample(name: str, training: bool, module_db: list[Any]) -> None:
    outcomes = _outcomes(module_db, name, training=training, fast=False)
    assert outcomes and set(outcomes) == {"pass"}
