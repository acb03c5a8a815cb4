"""PyTorch's OpInfo and ModuleInfo samples -> batch_norm, layer_norm, gelu, silu, adaptive_avg_pool2d kernels.

Each OpInfo sample (torch.testing._internal.common_methods_invocations.op_db) runs
through our function and through torch's on clones of the same float64 tensors:
outputs, every input gradient and every tensor the call updates in place (running
statistics) must agree. Each ModuleInfo sample (common_modules.module_db) builds the
torch module twice; one copy runs with torch.nn.functional's function swapped for
ours, in training (two steps, so momentum=None's cumulative average moves) and in
eval mode, and outputs, input and parameter gradients and buffers must agree. A
sample our kernels do not support must raise NotImplementedError (counted, reported
as "not supported"); any other difference fails.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import relative_error

from netc.kernels.activation import gelu, silu
from netc.kernels.layer_norm import layer_norm
from netc.kernels.norm import batch_norm
from netc.kernels.adaptive_pool import adaptive_avg_pool2d

OURS: dict[str, Callable[..., torch.Tensor]] = {
    "batch_norm": batch_norm,
    "layer_norm": layer_norm,
    "gelu": gelu,
    "silu": silu,
    "adaptive_avg_pool2d": adaptive_avg_pool2d,
}
# module -> the torch.nn.functional function its forward calls
MODULES = {"BatchNorm1d": "batch_norm", "BatchNorm2d": "batch_norm", "LayerNorm": "layer_norm",
           "GELU": "gelu", "SiLU": "silu", "AdaptiveAvgPool2d": "adaptive_avg_pool2d"}


@pytest.fixture(scope="module")
def torch_testing() -> tuple[list[Any], list[Any]]:
    """(op_db, module_db). Importing them freezes torch.backends flags for the process; undo that."""
    pytest.importorskip("expecttest", reason="torch's internal test modules need expecttest")
    frozen = torch.backends.flags_frozen()
    from torch.testing._internal.common_methods_invocations import op_db
    from torch.testing._internal.common_modules import module_db

    if not frozen:  # torch.backends is a module wrapper: set the flag in the functions' own globals
        torch.backends.flags_frozen.__globals__["__allow_nonbracketed_mutation_flag"] = True
    assert torch.backends.flags_frozen() == frozen
    return op_db, module_db


def _tensors(value: Any) -> Iterator[torch.Tensor]:
    """Every tensor in nested tuples, lists and dicts, in order."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def _clone(value: Any) -> Any:
    """A copy with each tensor a fresh leaf of the same values, strides and requires_grad."""
    if isinstance(value, torch.Tensor):
        copied = torch.empty_strided(value.shape, value.stride(), dtype=value.dtype, device=value.device)
        return copied.copy_(value.detach()).requires_grad_(value.requires_grad)
    if isinstance(value, (list, tuple)):
        return type(value)(_clone(item) for item in value)
    if isinstance(value, dict):
        return {key: _clone(item) for key, item in value.items()}
    return value


def _forward_backward(run: Callable[[], torch.Tensor], leaves: list[torch.Tensor],
                      grad: Callable[[torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, list]:
    """y = run() and dy/dleaf for each leaf (None where y does not depend on it)."""
    y = run()
    if not leaves or not y.requires_grad:
        return y, []
    return y, list(torch.autograd.grad(y, leaves, grad(y), allow_unused=True))


WORST = {"error": 0.0}  # the largest error _agree saw, for the summary lines


def _agree(label: str, ours: list[torch.Tensor | None], ref: list[torch.Tensor | None]) -> None:
    """Equal NaN/inf positions, and max |ours - ref| <= 1e-12 * max(1, max |ref|): relative for large
    values, absolute below 1, where torch's own value can be rounding noise (layer_norm's dx over a
    single element is exactly 0; torch's is ~1e-13)."""
    assert len(ours) == len(ref), label
    for index, (mine, theirs) in enumerate(zip(ours, ref, strict=True)):
        if mine is None or theirs is None:
            assert mine is None or not mine.abs().sum(), f"{label} #{index}: {mine} vs None"
            continue
        relative_error(mine, theirs)  # asserts the shapes and the NaN / inf positions agree
        finite = theirs.isfinite()
        if not finite.any():
            continue
        diff = (mine[finite].double() - theirs[finite]).abs().max().item()
        error = diff / max(1.0, theirs[finite].abs().max().item())
        WORST["error"] = max(WORST["error"], error)
        assert error <= 1e-12, f"{label} #{index}: error {error:.3g}"


class _Grad:
    """One random output gradient, drawn on first use and reused for the second run."""

    def __init__(self) -> None:
        self.value: torch.Tensor | None = None

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.value is None:
            self.value = torch.randn_like(y)
        return self.value


def _op_sample(name: str, op: Any, sample: Any) -> str:
    """Run one OpInfo sample both ways; 'pass', or 'unsupported' if ours raised NotImplementedError."""
    grad = _Grad()
    results = []
    for fn in (op.op, OURS[name]):
        args = _clone((sample.input, sample.args, sample.kwargs))
        leaves = [t for t in _tensors(args) if t.requires_grad]
        try:
            y, grads = _forward_backward(lambda fn=fn, a=args: fn(a[0], *a[1], **a[2]), leaves, grad)
        except NotImplementedError:
            assert fn is not op.op
            return "unsupported"
        results.append((y, grads, list(_tensors(args))))
    (y_ref, grads_ref, after_ref), (y, grads, after) = results
    _agree(f"opinfo {name} output", [y], [y_ref])
    _agree(f"opinfo {name} grads", grads, grads_ref)
    _agree(f"opinfo {name} tensors after the call", after, after_ref)  # running statistics
    return "pass"


@pytest.mark.parametrize("name", OURS)
def test_opinfo_samples(name: str, torch_testing: tuple[list[Any], list[Any]], device: str) -> None:
    op_db, _ = torch_testing
    ops = [op for op in op_db if op.name == f"nn.functional.{name}" and op.variant_test_name == ""]
    assert len(ops) == 1, name
    outcomes = [_op_sample(name, ops[0], sample)
                for sample in ops[0].sample_inputs(device, torch.float64, requires_grad=True)]
    print(f"OpInfo nn.functional.{name}: {outcomes.count('pass')} passed, "
          f"{outcomes.count('unsupported')} not supported (NotImplementedError); largest error so far "
          f"{WORST['error']:.2g}")
    assert outcomes.count("pass") >= 1 and set(outcomes) <= {"pass", "unsupported"}


def _module_sample(info: Any, sample: Any, training: bool, patcher: pytest.MonkeyPatch, device: str) -> str:
    """Run one ModuleInfo sample on a torch module and on its copy that calls our function."""
    constructor = sample.constructor_input
    ref = info.module_cls(*constructor.args, **constructor.kwargs).double().to(device)
    ref.train(training)
    ours = copy.deepcopy(ref)
    grad = _Grad()
    steps = 2 if training else 1
    calls: list[int] = []
    function = OURS[MODULES[info.module_cls.__name__]]

    def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return function(*args, **kwargs)

    for step in range(steps):
        runs = []
        for module in (ref, ours):
            inputs = _clone((sample.forward_input.args, sample.forward_input.kwargs))
            leaves = [t for t in _tensors(inputs) if t.requires_grad] + list(module.parameters())
            with patcher.context() as patch:
                if module is ours:
                    patch.setattr(F, MODULES[info.module_cls.__name__], counted)
                try:
                    runs.append(_forward_backward(lambda m=module, i=inputs: m(*i[0], **i[1]), leaves, grad))
                except NotImplementedError:
                    assert module is ours
                    return "unsupported"
        (y_ref, grads_ref), (y, grads) = runs
        label = f"moduleinfo {info.module_cls.__name__} {sample.desc} step {step}"
        _agree(f"{label} output", [y], [y_ref])
        _agree(f"{label} grads", grads, grads_ref)
        _agree(f"{label} buffers", list(ours.buffers()), list(ref.buffers()))
    assert len(calls) == steps, "the module did not call our function"
    return "pass"


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("module_name", MODULES)
def test_moduleinfo_samples(module_name: str, training: bool, torch_testing: tuple[list[Any], list[Any]],
                            monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    _, module_db = torch_testing
    (info,) = [info for info in module_db if info.module_cls.__name__ == module_name]
    samples = info.module_inputs_func(info, device=device, dtype=torch.float64, requires_grad=True,
                                      training=training)
    outcomes = [_module_sample(info, sample, training, monkeypatch, device) for sample in samples]
    mode = "train" if training else "eval"
    print(f"ModuleInfo {module_name} ({mode}): {outcomes.count('pass')} passed, "
          f"{outcomes.count('unsupported')} not supported (NotImplementedError); largest error so far "
          f"{WORST['error']:.2g}")
    assert outcomes.count("pass") >= 1 and set(outcomes) <= {"pass", "unsupported"}


def test_torch_flags_stay_settable(torch_testing: tuple[list[Any], list[Any]]) -> None:
    """Importing torch's test modules must not freeze torch.backends flags for the other tests."""
    previous = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = not previous
    torch.backends.cudnn.allow_tf32 = previous
