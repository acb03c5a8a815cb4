"""Backend name -> Backend: the Triton kernels or PyTorch's operators, behind the same functions.

Every layer module (runtime/layers.py) is written once against this
interface: it calls `self.ops.conv2d(...)`, `self.ops.batch_norm(...)`, ...
with `torch.nn.functional` signatures, and never asks which backend it runs
on. This file is the only place that knows. The functions each backend
provides are the union of the op table's `kernels` (dsl/ops.py) plus
`cross_entropy`; tests/test_op_table.py fails when either backend lacks one.

Beyond `torch.nn.functional`:
- `conv2d_act(..., activation, slope)` and `linear_act(input, weight, bias,
  activation, slope)`: the layer with an activation in its epilogue (the
  fusion pass in runtime/passes.py produces them); `slope` is leaky_relu's.
- `optimizers`: where `SGD`, `Adam` and `AdamW` live (netc.kernels or torch.optim,
  the same signatures); `fusable_optimizers`: whether they take torch's `fused=`.
- `rnn`, `lstm`, `gru(input, weights, hx=None, num_layers=1, [nonlinearity,]
  bias=True, dropout=0.0, training=True, bidirectional=False)`: batch first,
  `weights` in the torch module's `_flat_weights` order, returning what the
  torch module's `forward` returns (spec/CLI.md, the kernel API).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import _VF

from netc.dsl.errors import DataError

BACKENDS = ("triton", "torch")

# the activations an epilogue applies, by op name; torch's twins of the fused kernels use these
_TORCH_ACTIVATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "relu": lambda x, slope: F.relu(x),
    "tanh": lambda x, slope: torch.tanh(x),
    "sigmoid": lambda x, slope: torch.sigmoid(x),
    "leaky_relu": lambda x, slope: F.leaky_relu(x, slope),
}


class Backend(SimpleNamespace):
    """One backend: `name`, and each function of the interface as an attribute."""

    name: str


def get(name: str) -> Backend:
    """The backend called `name` ("triton" or "torch"); the Triton one imports the kernels on first use."""
    if name == "torch":
        return _torch_backend()
    if name == "triton":
        return _triton_backend()
    raise ValueError(f"unknown backend {name!r}: use one of {BACKENDS}")


def choose(name: str, device: torch.device) -> tuple[str, str | None]:
    """(backend, note): "auto" is triton on cuda, else torch, with a one-line note saying so."""
    if name == "auto":
        if device.type == "cuda":
            return "triton", None
        return "torch", ("note: no CUDA device in use, running on the torch backend (PyTorch's operators) on "
                         "cpu; --backend triton runs the Triton kernels through the interpreter (slow)")
    if name not in BACKENDS:
        raise DataError(f"unknown backend {name!r}: use auto, triton or torch")
    return name, None


def prepare(name: str, device: torch.device) -> None:
    """Get the backend ready for the device before anything imports triton (the Triton one on the CPU:
    its interpreter); DataError when that is no longer possible."""
    if name != "triton":
        return
    from netc.kernels.config import ensure_backend, interpreting

    ensure_backend(device.type)
    if device.type == "cpu" and not interpreting():
        # triton was imported for the GPU before we could choose its interpreter
        raise DataError("the triton backend on cpu needs Triton's interpreter, but triton was already "
                        "loaded for the GPU; set TRITON_INTERPRET=1 before starting")


# ---- PyTorch's operators: the reference ---------------------------------------------------------

def _epilogue(x: torch.Tensor, activation: str | None, slope: float) -> torch.Tensor:
    return x if activation is None else _TORCH_ACTIVATIONS[activation](x, slope)


def _torch_conv2d_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      stride: Any = 1, padding: Any = 0, dilation: Any = 1, groups: int = 1,
                      activation: str | None = None, slope: float = 0.01) -> torch.Tensor:
    return _epilogue(F.conv2d(input, weight, bias, stride, padding, dilation, groups), activation, slope)


def _torch_linear_act(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                      activation: str | None = None, slope: float = 0.01) -> torch.Tensor:
    return _epilogue(F.linear(input, weight, bias), activation, slope)


def _torch_recurrent(kind: str) -> Callable[..., Any]:
    """torch.nn.RNN/LSTM/GRU's forward as a function of the flat weights (what the modules call)."""

    def run(input: torch.Tensor, weights: Sequence[torch.Tensor], hx: Any = None, num_layers: int = 1,
            nonlinearity: str = "tanh", bias: bool = True, dropout: float = 0.0, training: bool = True,
            bidirectional: bool = False) -> Any:
        batched = input.dim() == 3
        x = input if batched else input.unsqueeze(0)
        directions = 2 if bidirectional else 1
        hidden = weights[1].shape[1]  # weight_hh_l0: (gates * H, H)
        zeros = x.new_zeros(num_layers * directions, x.shape[0], hidden)
        if hx is not None and not batched:
            hx = tuple(h.unsqueeze(1) for h in hx) if isinstance(hx, tuple) else hx.unsqueeze(1)
        if kind == "lstm":
            state = hx if hx is not None else (zeros, zeros.clone())
            output, h_n, c_n = _VF.lstm(x, state, list(weights), bias, num_layers, dropout, training,
                                        bidirectional, True)
            hidden_out: Any = (h_n, c_n)
        else:
            call = _VF.gru if kind == "gru" else (_VF.rnn_tanh if nonlinearity == "tanh" else _VF.rnn_relu)
            output, hidden_out = call(x, zeros if hx is None else hx, list(weights), bias, num_layers,
                                      dropout, training, bidirectional, True)
        if batched:
            return output, hidden_out
        squeeze = (lambda h: h.squeeze(1))  # noqa: E731
        return output.squeeze(0), (tuple(map(squeeze, hidden_out)) if kind == "lstm" else squeeze(hidden_out))

    if kind != "rnn":  # lstm/gru take no nonlinearity: keep their signatures honest
        def fixed(input: torch.Tensor, weights: Sequence[torch.Tensor], hx: Any = None, num_layers: int = 1,
                  bias: bool = True, dropout: float = 0.0, training: bool = True,
                  bidirectional: bool = False) -> Any:
            return run(input, weights, hx, num_layers, "tanh", bias, dropout, training, bidirectional)
        return fixed
    return run


@functools.cache
def _torch_backend() -> Backend:
    return Backend(
        name="torch",
        conv2d=F.conv2d, conv2d_act=_torch_conv2d_act, linear=F.linear, linear_act=_torch_linear_act,
        max_pool2d=F.max_pool2d, avg_pool2d=F.avg_pool2d,
        relu=F.relu, tanh=torch.tanh, sigmoid=torch.sigmoid, leaky_relu=F.leaky_relu, gelu=F.gelu,
        silu=F.silu, dropout=F.dropout, cross_entropy=F.cross_entropy, batch_norm=F.batch_norm,
        layer_norm=F.layer_norm, adaptive_avg_pool2d=F.adaptive_avg_pool2d,
        rnn=_torch_recurrent("rnn"), lstm=_torch_recurrent("lstm"), gru=_torch_recurrent("gru"),
        optimizers=torch.optim, fusable_optimizers=True,  # SGD, Adam, AdamW; fused=True on CUDA
    )


# ---- the Triton kernels ---------------------------------------------------------------------------

@functools.cache
def _triton_backend() -> Backend:
    import netc.kernels as kernels  # decides TRITON_INTERPRET before triton loads

    return Backend(
        name="triton",
        conv2d=kernels.conv2d, conv2d_act=kernels.conv2d_act, linear=kernels.linear,
        linear_act=kernels.linear_act, max_pool2d=kernels.max_pool2d, avg_pool2d=kernels.avg_pool2d,
        relu=kernels.relu, tanh=kernels.tanh, sigmoid=kernels.sigmoid, leaky_relu=kernels.leaky_relu,
        gelu=kernels.gelu, silu=kernels.silu, dropout=kernels.dropout, cross_entropy=kernels.cross_entropy,
        batch_norm=kernels.batch_norm, layer_norm=kernels.layer_norm,
        adaptive_avg_pool2d=kernels.adaptive_avg_pool2d,
        rnn=kernels.rnn, lstm=kernels.lstm, gru=kernels.gru,
        optimizers=kernels, fusable_optimizers=False,  # netc's SGD, Adam, AdamW: fused already
    )
