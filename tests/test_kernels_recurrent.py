"""netc.kernels rnn / lstm / gru against torch.nn.RNN / LSTM / GRU: forward, every gradient, gradcheck."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from netc import kernels
from netc.kernels import policy, recurrent, recurrent_layer

MODULES = {"rnn_tanh": torch.nn.RNN, "rnn_relu": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}
F64 = {"rtol": 1e-9, "atol": 1e-10}


def _reference(kind: str, features: int, hidden: int, layers: int, bias: bool, device: str,
               dtype: torch.dtype = torch.float64) -> torch.nn.Module:
    """A batch-first torch module with fresh weights in U(-0.6, 0.6) (wider than torch's init, so
    gates leave their linear range)."""
    extra = {"nonlinearity": kind[4:]} if kind.startswith("rnn") else {}
    module = MODULES[kind](features, hidden, num_layers=layers, bias=bias, batch_first=True, **extra)
    module = module.to(device=device, dtype=dtype)
    with torch.no_grad():
        for weight in module._flat_weights:
            weight.uniform_(-0.6, 0.6)
    return module


def _ours(kind: str, x: torch.Tensor, weights: list[torch.Tensor], layers: int, bias: bool) -> Any:
    """Call the netc kernel of `kind` the way the module would be called."""
    if kind.startswith("rnn"):
        return kernels.rnn(x, weights, num_layers=layers, nonlinearity=kind[4:], bias=bias)
    return getattr(kernels, kind)(x, weights, num_layers=layers, bias=bias)


def _flatten(kind: str, result: Any) -> list[torch.Tensor]:
    """(output, h_n) or (output, (h_n, c_n)) -> [output, h_n(, c_n)]."""
    output, state = result
    return [output, *state] if kind == "lstm" else [output, state]


def _loss(outputs: list[torch.Tensor], weights: list[torch.Tensor], mode: str) -> torch.Tensor:
    """"last": only output[:, -1] feeds the loss (the runtime's output=last); "sequence": every
    output and the final states do, each against its own random weighting."""
    if mode == "last":
        return (outputs[0][..., -1, :] * weights[0]).sum()
    return sum((out * w).sum() for out, w in zip(outputs, weights, strict=True))


def _compare(kind: str, shape: tuple[int, int, int, int], layers: int, bias: bool, mode: str,
             device: str, batched: bool = True, tol: dict[str, float] = F64) -> None:
    """Forward outputs and the gradients of the input and every weight, ours against torch's."""
    batch, steps, features, hidden = shape
    module = _reference(kind, features, hidden, layers, bias, device)
    x_shape = (batch, steps, features) if batched else (steps, features)
    x = torch.randn(x_shape, device=device, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]
    ours = _flatten(kind, _ours(kind, x, weights, layers, bias))
    theirs = _flatten(kind, module(x))
    for mine, ref in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, ref, **tol)
    loss_weights = [torch.randn_like(ref) for ref in theirs]
    if mode == "last":
        loss_weights[0] = torch.randn_like(theirs[0][..., -1, :])
    grads = torch.autograd.grad(_loss(ours, loss_weights, mode), [x, *weights])
    ref_grads = torch.autograd.grad(_loss(theirs, loss_weights, mode), [x, *module._flat_weights])
    for name, mine, ref in zip(["input", *module._flat_weights_names], grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, ref, **tol, msg=lambda m, name=name: f"d/d {name}: {m}")


# (kind, (N, T, F, H), layers, bias, mode): every kind meets T in {1, 2, 7, 28}, odd sizes,
# 1-3 layers, bias on and off and both loss modes, without the full cross product.
CASES = [
    ("rnn_tanh", (3, 1, 7, 5), 1, True, "sequence"),
    ("rnn_tanh", (5, 7, 3, 9), 2, False, "last"),
    ("rnn_tanh", (1, 28, 5, 17), 1, True, "sequence"),
    ("rnn_relu", (1, 2, 5, 17), 3, True, "sequence"),
    ("rnn_relu", (3, 28, 11, 7), 1, True, "last"),
    ("rnn_relu", (5, 7, 3, 3), 2, False, "sequence"),
    ("lstm", (5, 1, 4, 9), 2, True, "last"),
    ("lstm", (3, 7, 7, 5), 1, False, "sequence"),
    ("lstm", (3, 2, 3, 11), 1, True, "sequence"),
    ("gru", (5, 2, 7, 9), 1, False, "last"),
    ("gru", (3, 7, 5, 17), 3, True, "sequence"),
    ("gru", (1, 1, 11, 7), 1, True, "sequence"),
]
SLOW_CASES = [
    ("lstm", (1, 28, 5, 17), 3, True, "sequence"),
    ("gru", (5, 28, 3, 5), 2, True, "last"),
]


@pytest.mark.parametrize(("kind", "shape", "layers", "bias", "mode"), CASES)
def test_matches_torch(kind: str, shape: tuple[int, int, int, int], layers: int, bias: bool, mode: str,
                       device: str) -> None:
    _compare(kind, shape, layers, bias, mode, device)


@pytest.mark.slow
@pytest.mark.parametrize(("kind", "shape", "layers", "bias", "mode"), SLOW_CASES)
def test_matches_torch_long(kind: str, shape: tuple[int, int, int, int], layers: int, bias: bool,
                            mode: str, device: str) -> None:
    _compare(kind, shape, layers, bias, mode, device)


@pytest.mark.parametrize("kind", list(MODULES))
def test_unbatched_input(kind: str, device: str) -> None:
    _compare(kind, (1, 6, 5, 7), 2, True, "sequence", device, batched=False)
    _compare(kind, (1, 4, 3, 5), 1, True, "last", device, batched=False)


def _small_blocks(monkeypatch: pytest.MonkeyPatch, **changes: Any) -> None:
    """Shrink the launch settings of both targets, so small tests reach multi-program and fallback paths."""
    for name in ("RECURRENT_GPU", "RECURRENT_INTERPRETER"):
        monkeypatch.setattr(policy, name, dataclasses.replace(getattr(policy, name), **changes))


class _RefusingKernel:
    """Stands in for a persistent kernel that the GPU refuses for want of shared memory."""

    def __init__(self) -> None:
        self.launches = 0

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        def launch(*args: Any, **kwargs: Any) -> None:
            self.launches += 1
            raise recurrent_layer.OutOfResources(300_000, 232_448, "shared memory")

        return launch


class _RecordingKernel:
    """Wraps a persistent kernel and records each launch's grid."""

    def __init__(self, kernel: Any) -> None:
        self.kernel, self.grids = kernel, []

    def __getitem__(self, grid: tuple[int, ...]) -> Any:
        self.grids.append(grid)
        return self.kernel[grid]


@pytest.mark.parametrize("kind", list(MODULES))
def test_per_step_fallback(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hidden sizes above max_hidden take two launches per step; results must not change."""
    _small_blocks(monkeypatch, max_hidden=8, step_block=(4, 16))
    forward, backward = _RefusingKernel(), _RefusingKernel()  # a persistent launch would be counted
    monkeypatch.setattr(recurrent_layer, "seq_fwd_kernel", forward)
    monkeypatch.setattr(recurrent_layer, "seq_bwd_kernel", backward)
    monkeypatch.setattr(recurrent_layer, "_PERSISTENT_TOO_BIG", set())
    _compare(kind, (5, 7, 3, 9), 2, True, "sequence", device)  # layer 0 and 1 both fall back
    _compare(kind, (3, 1, 4, 17), 1, False, "last", device)
    assert (forward.launches, backward.launches) == (0, 0)  # the per-step path, never tried persistent


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_falls_back_when_shared_memory_runs_out(kind: str, device: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A persistent kernel too big for the GPU runs per step instead, and is not retried."""
    forward, backward = _RefusingKernel(), _RefusingKernel()
    monkeypatch.setattr(recurrent_layer, "seq_fwd_kernel", forward)
    monkeypatch.setattr(recurrent_layer, "seq_bwd_kernel", backward)
    monkeypatch.setattr(recurrent_layer, "_PERSISTENT_TOO_BIG", set())
    _compare(kind, (3, 4, 5, 6), 2, True, "sequence", device)
    assert (forward.launches, backward.launches) == (1, 1)  # both layers share one (cell, dtype, BLOCK_J)


@pytest.mark.parametrize("kind", ["rnn_relu", "lstm", "gru"])
def test_batch_split_over_programs(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """19 rows at 16 per program: two programs, the second mostly masked."""
    _small_blocks(monkeypatch, seq_block_n=16)
    forward = _RecordingKernel(recurrent_layer.seq_fwd_kernel)
    backward = _RecordingKernel(recurrent_layer.seq_bwd_kernel)
    monkeypatch.setattr(recurrent_layer, "seq_fwd_kernel", forward)
    monkeypatch.setattr(recurrent_layer, "seq_bwd_kernel", backward)
    _compare(kind, (19, 5, 3, 6), 1, True, "sequence", device)
    assert forward.grids == backward.grids == [(2, 1)]  # the persistent kernels ran, over two programs


def _gradcheck(kind: str, shape: tuple[int, int, int, int], layers: int, device: str, fast: bool) -> bool:
    batch, steps, features, hidden = shape
    module = _reference(kind, features, hidden, layers, True, device)
    x = torch.randn(batch, steps, features, device=device, dtype=torch.float64, requires_grad=True)
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]

    def run(x: torch.Tensor, *weights: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(_flatten(kind, _ours(kind, x, list(weights), layers, True)))

    return torch.autograd.gradcheck(run, (x, *weights), eps=1e-6, atol=1e-7, fast_mode=fast)


@pytest.mark.parametrize("kind", list(MODULES))
def test_gradcheck(kind: str, device: str) -> None:
    # fast mode checks random projections of the Jacobian: the full one costs minutes in the interpreter
    assert _gradcheck(kind, (2, 3, 3, 4), 2, device, fast=True)


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(MODULES))
def test_gradcheck_full_jacobian(kind: str, device: str) -> None:
    assert _gradcheck(kind, (1, 2, 2, 2), 1, device, fast=False)


@pytest.mark.parametrize("kind", list(MODULES))
def test_float32_against_float64_reference(kind: str, device: str) -> None:
    """Float32 kernels stay within float32 rounding of the float64 reference, forward and backward."""
    module = _reference(kind, 7, 20, 2, True, device)
    x64 = torch.randn(5, 12, 7, device=device, dtype=torch.float64, requires_grad=True)
    x32 = x64.detach().float().requires_grad_()
    weights32 = [w.detach().float().requires_grad_() for w in module._flat_weights]
    ours = _flatten(kind, _ours(kind, x32, weights32, 2, True))
    theirs = _flatten(kind, module(x64))
    for mine, ref in zip(ours, theirs, strict=True):
        assert mine.dtype == torch.float32
        torch.testing.assert_close(mine.double(), ref, rtol=1e-4, atol=2e-5)
    grads = torch.autograd.grad(ours[0].sum(), [x32, *weights32])
    ref_grads = torch.autograd.grad(theirs[0].sum(), [x64, *module._flat_weights], retain_graph=True)
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine.double(), ref, rtol=1e-4, atol=1e-4)
    # the final states feed the loss too (their gradients enter the backward at the last step)
    ours = _flatten(kind, _ours(kind, x32, weights32, 2, True))
    loss_weights = [torch.randn_like(ref) for ref in theirs]
    grads = torch.autograd.grad(_loss(ours, [w.float() for w in loss_weights], "sequence"), [x32, *weights32])
    ref_grads = torch.autograd.grad(_loss(theirs, loss_weights, "sequence"), [x64, *module._flat_weights])
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine.double(), ref, rtol=1e-4, atol=1e-4)


def test_non_contiguous_input_weights_and_gradient(device: str) -> None:
    """Strided views of the input, the weights and the incoming gradient read as their values."""
    module = _reference("lstm", 5, 7, 1, True, device)
    x = torch.randn(6, 3, 5, device=device, dtype=torch.float64).transpose(0, 1).requires_grad_()
    weights = [w.detach().clone() for w in module._flat_weights]
    weights[0] = weights[0].t().contiguous().t()  # column-major W_ih
    weights[1] = weights[1].t().contiguous().t()  # column-major W_hh
    weights[2] = torch.stack([weights[2], weights[2]], dim=1)[:, 0]  # stride-2 bias
    for w in weights:
        w.requires_grad_()
    assert not (x.is_contiguous() or weights[0].is_contiguous() or weights[1].is_contiguous())
    output, (h_n, c_n) = kernels.lstm(x, weights)
    ref_output, (ref_h, ref_c) = module(x)
    torch.testing.assert_close(output, ref_output, **F64)
    seed = torch.randn(6, 3, 7, device=device, dtype=torch.float64).transpose(0, 1)  # strided dy
    grads = torch.autograd.grad((output * seed).sum() + c_n.sum(), [x, *weights])
    ref_grads = torch.autograd.grad((ref_output * seed).sum() + ref_c.sum(), [x, *module._flat_weights])
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, ref, **F64)


def test_only_input_needs_grad(device: str) -> None:
    """Frozen weights: the input gradient alone is computed, and still right."""
    module = _reference("gru", 4, 5, 2, True, device)
    x = torch.randn(3, 4, 4, device=device, dtype=torch.float64, requires_grad=True)
    weights = [w.detach() for w in module._flat_weights]
    output, _ = kernels.gru(x, weights, num_layers=2)
    (grad,) = torch.autograd.grad(output.sum(), [x])
    (ref,) = torch.autograd.grad(module(x)[0].sum(), [x])
    torch.testing.assert_close(grad, ref, **F64)


def test_only_weights_need_grad(device: str) -> None:
    """An input without grad (a first layer's data): the weight gradients alone, still right."""
    module = _reference("lstm", 4, 5, 2, False, device)
    x = torch.randn(3, 4, 4, device=device, dtype=torch.float64)
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]
    output, (h_n, c_n) = kernels.lstm(x, weights, num_layers=2, bias=False)
    grads = torch.autograd.grad(output.sum() + c_n.sum(), weights)
    ref_output, (_, ref_c) = module(x)
    ref_grads = torch.autograd.grad(ref_output.sum() + ref_c.sum(), module._flat_weights)
    for mine, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(mine, ref, **F64)


def test_exported_from_package() -> None:
    names = ("rnn", "lstm", "gru", "rnn_cell", "lstm_cell", "gru_cell")
    assert all(getattr(kernels, name) is getattr(recurrent, name) for name in names)
    assert all(name in kernels.__all__ for name in names)


def _weights(device: str, *shapes: tuple[int, ...], dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
    return [torch.randn(shape, device=device, dtype=dtype) for shape in shapes]


def test_rejects_bad_arguments(device: str) -> None:
    x = torch.randn(2, 3, 4, device=device, dtype=torch.float64)
    good = _weights(device, (5, 4), (5, 5), (5,), (5,))
    with pytest.raises(ValueError, match="nonlinearity"):
        kernels.rnn(x, good, nonlinearity="sigmoid")
    with pytest.raises(ValueError, match="expected 8 weight tensors"):
        kernels.rnn(x, good, num_layers=2)
    with pytest.raises(ValueError, match="expected 2 weight tensors"):
        kernels.rnn(x, good, bias=False)
    with pytest.raises(ValueError, match="do not fit"):
        kernels.lstm(x, good)  # an lstm needs 4 * H rows
    with pytest.raises(ValueError, match="bias of shape"):
        kernels.rnn(x, _weights(device, (5, 4), (5, 5), (4,), (5,)))
    with pytest.raises(ValueError, match="dtype and device"):
        kernels.rnn(x, _weights(device, (5, 4), (5, 5), (5,), (5,), dtype=torch.float32))
    with pytest.raises(ValueError, match=r"\(N, T, F\)"):
        kernels.gru(torch.randn(3, device=device, dtype=torch.float64), good)
    with pytest.raises(ValueError, match="non-empty"):
        kernels.rnn(x[:, :0], good)  # T = 0
    with pytest.raises(NotImplementedError, match="float16"):
        kernels.rnn(x.half(), [w.half() for w in good])


# Compiles the persistent kernels as the examples' training steps launch them (batch 100, H = 128,
# one direction, float32 at tf32 and ieee; the bidirectional lstm with h0 too), with the launchers'
# GPU settings (maxnreg included), for sm_90 without a GPU, and prints each one's resource usage.
_COMPILE_PERSISTENT = """
import importlib, json, os, re, subprocess, sys, tempfile
os.environ["TRITON_INTERPRET"] = "0"
sys.path.insert(0, sys.argv[1])
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import compile_helpers
cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
usage = {}
for v in compile_helpers.variants():
    if not v.name.startswith("recurrent seq_") or " fp32 " not in v.name:
        continue
    fn = getattr(importlib.import_module("netc.kernels." + v.module), v.kernel)
    signature = {name: v.pointers.get(name, "i32") for name in fn.arg_names}
    signature.update({name: "constexpr" for name in v.constexprs})
    consts = {(fn.arg_names.index(name),): value for name, value in v.constexprs.items()}
    options = {"num_warps": v.warps, "num_stages": v.stages, "maxnreg": v.maxnreg}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options=options)
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as handle:
        handle.write(compiled.asm["cubin"])
    text = subprocess.run([cuobjdump, "--dump-resource-usage", handle.name], capture_output=True,
                          text=True).stdout
    usage[v.name] = {key: int(value) for key, value in re.findall(r"(REG|STACK|LOCAL):(\\d+)", text)}
print(json.dumps(usage))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NETC_TEST_GPU") == "1", reason="the GPU suite launches the kernels")
def test_persistent_kernels_compile_without_spills() -> None:
    """Issue 10: zero spilled bytes (no stack frame, no local memory) in every persistent kernel the
    examples' training steps launch, as compiled for sm_90 with the launchers' settings."""
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-c", _COMPILE_PERSISTENT, str(Path(__file__).parent)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    usage = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(usage) >= 12, usage
    assert all(facts["STACK"] == 0 and facts["LOCAL"] == 0 for facts in usage.values()), usage
