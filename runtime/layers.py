"""IR Node -> one torch.nn.Module layer, bound to the Triton kernels or to PyTorch's operators.

Layers with parameters subclass the equivalent `torch.nn` layer, so their
parameter names, shapes and initialisation are PyTorch's by construction;
only `forward` differs between the backends. Inputs carry a batch dimension:
(N, *node.in_shape).
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from netc.dsl.ir import Node

ACTIVATIONS = ("relu", "tanh", "sigmoid", "leaky_relu")


def kernel(name: str) -> Callable[..., Any]:
    """The public Triton kernel `name`, looked up in its family module on every call.

    Not `getattr(netc.kernels, name)`: once `netc.kernels.linear` (the module)
    is imported, Python binds it as the package attribute `linear`, which
    then shadows the lazily exported function of the same name.
    """
    return getattr(_family(name), name)


@functools.cache
def _family(name: str) -> ModuleType:
    import netc.kernels  # decides TRITON_INTERPRET before triton loads

    return importlib.import_module(f"netc.kernels.{netc.kernels._EXPORTS[name]}")


def torch_activation(x: torch.Tensor, op: str, slope: float) -> torch.Tensor:
    """PyTorch's version of one of ACTIVATIONS (the reference backend)."""
    if op == "relu":
        return F.relu(x)
    if op == "tanh":
        return torch.tanh(x)
    if op == "sigmoid":
        return torch.sigmoid(x)
    if op == "leaky_relu":
        return F.leaky_relu(x, slope)
    raise NotImplementedError(f"activation {op!r}")


class Conv2d(nn.Conv2d):
    """conv2d (+ an activation folded in by the fusion pass): (N, C, H, W) -> (N, K, OH, OW)."""

    def __init__(self, node: Node, backend: str) -> None:
        attrs = node.attrs
        super().__init__(
            node.in_shape[0], attrs["out_channels"], attrs["kernel"], stride=attrs["stride"],
            padding=attrs["padding"], dilation=attrs["dilation"], groups=attrs["groups"],
            bias=attrs["bias"],
        )
        self.backend = backend
        self.activation: str | None = None  # set by the fusion pass (triton only)
        self.slope = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        args = (x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.backend == "torch":
            return F.conv2d(*args)
        if self.activation is None:
            return kernel("conv2d")(*args)  # padding "same" included: the kernel pads as PyTorch does
        return kernel("conv2d_act")(*args, self.activation, self.slope)

    def extra_repr(self) -> str:
        return super().extra_repr() + _fused_repr(self.activation, self.slope)


def _fused_repr(activation: str | None, slope: float) -> str:
    if activation is None:
        return ""
    return f", fused={activation}" + (f"(slope={slope})" if activation == "leaky_relu" else "")


class Linear(nn.Linear):
    """linear (+ a fused activation) on the last dimension: (N, F) -> (N, O), (N, T, F) -> (N, T, O)."""

    def __init__(self, node: Node, backend: str) -> None:
        super().__init__(node.in_shape[-1], node.attrs["out_features"], bias=node.attrs["bias"])
        self.backend = backend
        self.activation: str | None = None
        self.slope = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch":
            return F.linear(x, self.weight, self.bias)
        rows = x.reshape(-1, x.shape[-1])  # (N*T, F): every step is one row of the matmul
        if self.activation is None:
            out = kernel("linear")(rows, self.weight, self.bias)
        else:
            out = kernel("linear_act")(rows, self.weight, self.bias, self.activation, self.slope)
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def extra_repr(self) -> str:
        return super().extra_repr() + _fused_repr(self.activation, self.slope)


class Activation(nn.Module):
    """relu / tanh / sigmoid / leaky_relu; an identity once fused into the layer before it."""

    def __init__(self, node: Node, backend: str) -> None:
        super().__init__()
        self.op = node.op
        self.slope = float(node.attrs.get("slope", 0.0))
        self.backend = backend
        self.fused = False  # set by the fusion pass: the conv/linear before already applied it

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return x
        if self.backend == "torch":
            return torch_activation(x, self.op, self.slope)
        if self.op == "leaky_relu":
            return kernel("leaky_relu")(x, self.slope)
        return kernel(self.op)(x)

    def extra_repr(self) -> str:
        return f"{self.op}{', fused' if self.fused else ''}"


class Pool2d(nn.Module):
    """maxpool2d / avgpool2d: (N, C, H, W) -> (N, C, OH, OW)."""

    def __init__(self, node: Node, backend: str) -> None:
        super().__init__()
        self.op = node.op
        self.attrs = dict(node.attrs)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        if self.op == "maxpool2d":
            pool = F.max_pool2d if self.backend == "torch" else kernel("max_pool2d")
            return pool(x, a["kernel"], a["stride"], a["padding"], a["dilation"], a["ceil_mode"])
        pool = F.avg_pool2d if self.backend == "torch" else kernel("avg_pool2d")
        return pool(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])

    def extra_repr(self) -> str:
        return f"{self.op}, kernel={self.attrs['kernel']}, stride={self.attrs['stride']}"


class Flatten(nn.Module):
    """flatten: (N, d1, ..., dn) -> (N, d1*...*dn), a view whenever the input allows one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class Dropout(nn.Module):
    """dropout with probability p while training; the identity in eval mode."""

    def __init__(self, node: Node, backend: str) -> None:
        super().__init__()
        self.p = float(node.attrs["p"])
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.backend == "torch":
            return F.dropout(x, self.p, True)
        return kernel("dropout")(x, self.p, True)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _Recurrent:
    """Shared forward for rnn/lstm/gru: (N, T, F) -> (N, H) (output=last) or (N, T, H)."""

    backend: str
    last_only: bool

    def _run_triton(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "torch":
            output = super().forward(x)[0]  # type: ignore[misc]  # the torch.nn RNN base class
        else:
            output = self._run_triton(x)
        return output[:, -1] if self.last_only else output  # (N, H): the top layer's last step


class RNN(_Recurrent, nn.RNN):
    """rnn (tanh or relu), batch first; parameters named and drawn as torch.nn.RNN's."""

    def __init__(self, node: Node, backend: str) -> None:
        a = node.attrs
        nn.RNN.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"],
                        nonlinearity=a["activation"], bias=a["bias"], batch_first=True)
        self.backend, self.last_only = backend, a["output"] == "last"

    def _run_triton(self, x: torch.Tensor) -> torch.Tensor:
        return kernel("rnn")(x, list(self._flat_weights), self.num_layers, self.nonlinearity, self.bias)[0]


class LSTM(_Recurrent, nn.LSTM):
    """lstm, batch first, gate order i, f, g, o as torch.nn.LSTM."""

    def __init__(self, node: Node, backend: str) -> None:
        a = node.attrs
        nn.LSTM.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"],
                         bias=a["bias"], batch_first=True)
        self.backend, self.last_only = backend, a["output"] == "last"

    def _run_triton(self, x: torch.Tensor) -> torch.Tensor:
        return kernel("lstm")(x, list(self._flat_weights), self.num_layers, self.bias)[0]


class GRU(_Recurrent, nn.GRU):
    """gru, batch first, gate order r, z, n as torch.nn.GRU."""

    def __init__(self, node: Node, backend: str) -> None:
        a = node.attrs
        nn.GRU.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"],
                        bias=a["bias"], batch_first=True)
        self.backend, self.last_only = backend, a["output"] == "last"

    def _run_triton(self, x: torch.Tensor) -> torch.Tensor:
        return kernel("gru")(x, list(self._flat_weights), self.num_layers, self.bias)[0]


class Residual(nn.Module):
    """residual: x + body(x); the body's layers are submodules "0", "1", ..."""

    def __init__(self, node: Node, backend: str) -> None:
        super().__init__()
        for child in node.body:
            self.add_module(child.name.rsplit(".", 1)[-1], build_layer(child, backend))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.children():
            out = layer(out)
        return x + out


_LAYERS: dict[str, Callable[[Node, str], nn.Module]] = {
    "conv2d": Conv2d,
    "maxpool2d": Pool2d,
    "avgpool2d": Pool2d,
    "linear": Linear,
    "flatten": lambda node, backend: Flatten(),
    "dropout": Dropout,
    "rnn": RNN,
    "lstm": LSTM,
    "gru": GRU,
    "residual": Residual,
    **{op: Activation for op in ACTIVATIONS},
}


def build_layer(node: Node, backend: str) -> nn.Module:
    """The module for one node; its parameters are drawn from the global torch RNG (PyTorch's init)."""
    factory = _LAYERS.get(node.op)
    if factory is None:
        raise NotImplementedError(f"no lowering for layer {node.op!r}")
    layer = factory(node, backend)
    if node.op != "residual":
        # The IR promises PyTorch's names and shapes; a mismatch is a front-end/runtime bug.
        own = {name: tuple(param.shape) for name, param in layer.named_parameters()}
        assert own == {k: tuple(v) for k, v in node.params.items()}, (node.name, own, dict(node.params))
    return layer
