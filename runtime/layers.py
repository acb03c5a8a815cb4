"""IR Node + Backend -> one torch.nn.Module layer, written once against the backend interface.

A layer's state (parameters and buffers) is made from the node's declaration
(dsl.ir.State: PyTorch's names, shapes and initialisation, drawn in order
from the global RNG), so state_dict, checkpoints and load_state_dict cover
buffers with no extra code. Recurrent layers subclass torch.nn.RNN/LSTM/GRU
instead (PyTorch keeps their weights in one flat buffer for cuDNN); their
state must equal the declaration all the same. Each forward calls
`self.ops.<function>` (runtime/backends.py) and never asks which backend it
is. Inputs carry a batch dimension: (N, *node.in_shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from netc.dsl.ir import Node, State
from netc.dsl.ops import OPS, normalized_shape
from netc.runtime.backends import Backend

_DTYPES = {"float": None, "long": torch.long}  # None: the default float dtype


def make_state(module: nn.Module, state: tuple[State, ...]) -> None:
    """Register each declared parameter and buffer on `module`, initialised as declared, in order."""
    for item in state:
        tensor = torch.empty(item.shape, dtype=_DTYPES[item.dtype])
        with torch.no_grad():
            if item.init == "uniform":
                tensor.uniform_(-item.bound, item.bound)
            elif item.init in ("zeros", "ones"):
                tensor.fill_(0 if item.init == "zeros" else 1)
            else:
                raise NotImplementedError(f"initializer {item.init!r} for {item.name}")
        if item.buffer:
            module.register_buffer(item.name, tensor)
        else:
            module.register_parameter(item.name, nn.Parameter(tensor))


class Layer(nn.Module):
    """A layer with its declared state and its backend (`ops`); `attrs` are the node's resolved arguments."""

    def __init__(self, node: Node, ops: Backend) -> None:
        super().__init__()
        self.op = node.op
        self.attrs = dict(node.attrs)
        self.ops = ops
        make_state(self, node.state)

    def extra_repr(self) -> str:
        return f"{self.op}, " + ", ".join(f"{key}={value}" for key, value in self.attrs.items())


class Conv2d(Layer):
    """conv2d (+ an epilogue chosen by the IR passes): (N, C, H, W) -> (N, K, OH, OW)."""

    weight: torch.Tensor
    bias: torch.Tensor | None

    def forward(self, x: torch.Tensor, activation: str | None = None, slope: float = 0.0,
                batchnorm: nn.Module | None = None) -> torch.Tensor:
        a = self.attrs
        weight, bias = self.weight, getattr(self, "bias", None)
        if batchnorm is not None:  # an eval-mode batchnorm folded into the weights (runtime/passes.py)
            weight, bias = fold_batchnorm(weight, bias, batchnorm)
        args = (x, weight, bias, a["stride"], a["padding"], a["dilation"], a["groups"])
        if activation is None:
            return self.ops.conv2d(*args)  # padding "same" included: the kernel pads as PyTorch does
        return self.ops.conv2d_act(*args, activation, slope)


class Linear(Layer):
    """linear (+ an epilogue) on the last dimension: (N, F) -> (N, O), (N, T, F) -> (N, T, O)."""

    weight: torch.Tensor

    def forward(self, x: torch.Tensor, activation: str | None = None, slope: float = 0.0,
                batchnorm: nn.Module | None = None) -> torch.Tensor:
        weight, bias = self.weight, getattr(self, "bias", None)
        if batchnorm is not None:
            weight, bias = fold_batchnorm(weight, bias, batchnorm)
        if activation is None:
            return self.ops.linear(x, weight, bias)
        return self.ops.linear_act(x, weight, bias, activation, slope)


def fold_batchnorm(weight: torch.Tensor, bias: torch.Tensor | None,
                   norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(weight, bias) of conv/linear followed by an eval-mode batchnorm, as one layer.

    y = gamma * (W x + b - mean) / sqrt(var + eps) + beta = (s W) x + s (b - mean) + beta,
    s = gamma / sqrt(var + eps), per output channel: weight (K, ...) rows scale by s (K,).
    """
    scale = torch.rsqrt(norm.running_var + norm.attrs["eps"])
    if norm.attrs["affine"]:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if norm.attrs["affine"]:
        shift = shift + norm.bias
    return weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), shift


class Activation(Layer):
    """One elementwise op of the table (relu, tanh, leaky_relu, ...): its backend function of (x, **attrs)."""

    def __init__(self, node: Node, ops: Backend) -> None:
        super().__init__(node, ops)
        spec = OPS[node.op]
        self.function = spec.kernels[0]
        self.keywords = spec.call_keywords(self.attrs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self.ops, self.function)(x, **self.keywords)


class Pool2d(Layer):
    """maxpool2d / avgpool2d: (N, C, H, W) -> (N, C, OH, OW)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        if self.op == "maxpool2d":
            return self.ops.max_pool2d(x, a["kernel"], a["stride"], a["padding"], a["dilation"],
                                       a["ceil_mode"])
        return self.ops.avg_pool2d(x, a["kernel"], a["stride"], a["padding"], a["ceil_mode"],
                                   a["count_include_pad"])


class Flatten(Layer):
    """flatten: (N, d1, ..., dn) -> (N, d1*...*dn), a view whenever the input allows one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)


class BatchNorm(Layer):
    """batchnorm as torch.nn.BatchNorm2d ((N, C, H, W)) or BatchNorm1d ((N, F)): batch statistics and
    running-statistic updates in training, the running statistics in eval."""

    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attrs
        if self.training:
            self.num_batches_tracked.add_(1)  # as torch's module counts (unused with a set momentum)
        return self.ops.batch_norm(x, self.running_mean, self.running_var, getattr(self, "weight", None),
                                   getattr(self, "bias", None), self.training, a["momentum"], a["eps"])


class LayerNorm(Layer):
    """layernorm as torch.nn.LayerNorm: each sample over all its dimensions; (N, T, F) each step over F."""

    def __init__(self, node: Node, ops: Backend) -> None:
        super().__init__(node, ops)
        self.normalized_shape = normalized_shape(node.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.layer_norm(x, self.normalized_shape, getattr(self, "weight", None),
                                   getattr(self, "bias", None), self.attrs["eps"])


class GlobalAvgPool(Layer):
    """global_avgpool: (N, C, H, W) -> (N, C), each channel's mean."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.adaptive_avg_pool2d(x, 1).flatten(1)


class Dropout(Layer):
    """dropout with probability p while training; the identity in eval mode."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.attrs["p"] == 0.0:
            return x
        return self.ops.dropout(x, self.attrs["p"], True)


class _Recurrent:
    """Shared forward for rnn/lstm/gru: (N, T, F) -> (N, D*H) (output=last) or (N, T, D*H), D = 2
    when bidirectional (forward direction first)."""

    ops: Backend
    op: str
    last_only: bool
    cell: dict[str, Any]
    num_layers: int
    bias: bool
    bidirectional: bool
    dropout: float
    hidden_size: int
    training: bool
    _flat_weights: list[torch.Tensor]

    def _setup(self, node: Node, ops: Backend) -> None:
        self.ops, self.op, self.last_only, self.cell = ops, node.op, node.attrs["output"] == "last", {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        run = getattr(self.ops, self.op)
        extra: dict[str, Any] = {}
        if self.bidirectional:
            extra["bidirectional"] = True
        if self.dropout > 0:  # between stacked layers, training only
            extra.update(dropout=self.dropout, training=self.training)
        output = run(x, list(self._flat_weights), num_layers=self.num_layers, bias=self.bias, **self.cell,
                     **extra)[0]
        if not self.last_only:
            return output
        if not self.bidirectional:
            return output[:, -1]  # (N, H): the top layer's last step
        # each direction's final state: forward at t = T-1, backward at t = 0 (PyTorch's h_n)
        hidden = self.hidden_size
        return torch.cat((output[:, -1, :hidden], output[:, 0, hidden:]), dim=1)


class RNN(_Recurrent, nn.RNN):
    """rnn (tanh or relu), batch first; parameters named and drawn as torch.nn.RNN's."""

    def __init__(self, node: Node, ops: Backend) -> None:
        a = node.attrs
        nn.RNN.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"],
                        nonlinearity=a["activation"], bias=a["bias"], batch_first=True,
                        bidirectional=a["bidirectional"], dropout=a["dropout"])
        self._setup(node, ops)
        self.cell = {"nonlinearity": a["activation"]}


class LSTM(_Recurrent, nn.LSTM):
    """lstm, batch first, gate order i, f, g, o as torch.nn.LSTM."""

    def __init__(self, node: Node, ops: Backend) -> None:
        a = node.attrs
        nn.LSTM.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"], bias=a["bias"],
                         batch_first=True, bidirectional=a["bidirectional"], dropout=a["dropout"])
        self._setup(node, ops)


class GRU(_Recurrent, nn.GRU):
    """gru, batch first, gate order r, z, n as torch.nn.GRU."""

    def __init__(self, node: Node, ops: Backend) -> None:
        a = node.attrs
        nn.GRU.__init__(self, node.in_shape[-1], a["hidden"], num_layers=a["layers"], bias=a["bias"],
                        batch_first=True, bidirectional=a["bidirectional"], dropout=a["dropout"])
        self._setup(node, ops)


class Block(nn.Module):
    """A residual or parallel block: holds its body's layers ("j", or "b.j" per branch) for their names,
    and merges (add or concat) what the network feeds it: the block's input and body output
    (residual), or every branch's output (parallel). The network runs the body nodes itself."""

    def __init__(self) -> None:
        super().__init__()
        self.merge: str | None = None  # set when the block's merge node is built
        self.axis = 1  # concat: the channel (N, C, H, W) or feature (N, F) dimension; (N, T, F): 2

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        if self.merge == "concat":
            return torch.cat(inputs, dim=self.axis)
        out = inputs[0]
        for other in inputs[1:]:
            out = out + other
        return out

    def extra_repr(self) -> str:
        return self.merge or ""


LAYERS: dict[str, Callable[[Node, Backend], nn.Module]] = {
    "conv2d": Conv2d,
    "maxpool2d": Pool2d,
    "avgpool2d": Pool2d,
    "linear": Linear,
    "flatten": Flatten,
    "dropout": Dropout,
    "batchnorm": BatchNorm,
    "layernorm": LayerNorm,
    "global_avgpool": GlobalAvgPool,
    "rnn": RNN,
    "lstm": LSTM,
    "gru": GRU,
    **{op: Activation for op, spec in OPS.items() if spec.activation},
}


def build_layer(node: Node, ops: Backend) -> nn.Module:
    """The module for one layer node; its state is drawn from the global torch RNG (PyTorch's init)."""
    factory = LAYERS.get(node.op)
    if factory is None:
        raise NotImplementedError(f"no layer module for {node.op!r}")
    layer = factory(node, ops)
    # The IR promises PyTorch's names and shapes; a mismatch is a front-end/runtime bug.
    own = {name: tuple(tensor.shape) for name, tensor in layer.state_dict().items()}
    assert own == {item.name: tuple(item.shape) for item in node.state}, (node.name, own, node.state)
    return layer
