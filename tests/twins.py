"""Test helpers: (op, attrs) lists -> hand-built IR graphs and their torch.nn twins; twin comparison."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from netc.dsl.errors import Loc
from netc.dsl.ir import INPUT, Graph, Node, TrainConfig
from netc.dsl.ops import OPS
from netc.runtime.check import full_float32

LOC = Loc("<test>", 1, 1)
DEFAULTS: dict[str, dict[str, Any]] = {
    "conv2d": {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "bias": True},
    "maxpool2d": {"padding": (0, 0), "dilation": (1, 1), "ceil_mode": False},
    "avgpool2d": {"padding": (0, 0), "ceil_mode": False, "count_include_pad": True},
    "linear": {"bias": True},
    "leaky_relu": {"slope": 0.01},
    "rnn": {"activation": "tanh", "layers": 1, "output": "last", "bias": True, "bidirectional": False,
            "dropout": 0.0},
    "lstm": {"layers": 1, "output": "last", "bias": True, "bidirectional": False, "dropout": 0.0},
    "gru": {"layers": 1, "output": "last", "bias": True, "bidirectional": False, "dropout": 0.0},
}


# ---- the twins: the equivalent stack written directly with torch.nn ----------------------------

class ResidualTwin(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def recurrent_twin(base: type[nn.RNNBase], last: bool) -> type[nn.RNNBase]:
    class Twin(base):  # type: ignore[valid-type, misc]
        def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            output = super().forward(x)[0]
            return output[:, -1] if last else output

    return Twin


def twin_layer(op: str, a: dict[str, Any], in_shape: tuple[int, ...]) -> nn.Module:
    if op == "conv2d":
        return nn.Conv2d(in_shape[0], a["out_channels"], a["kernel"], a["stride"], a["padding"],
                         a["dilation"], a["groups"], a["bias"])
    if op == "maxpool2d":
        return nn.MaxPool2d(a["kernel"], a["stride"], a["padding"], a["dilation"], ceil_mode=a["ceil_mode"])
    if op == "avgpool2d":
        return nn.AvgPool2d(a["kernel"], a["stride"], a["padding"], a["ceil_mode"], a["count_include_pad"])
    if op == "linear":
        return nn.Linear(in_shape[-1], a["out_features"], a["bias"])
    simple = {"flatten": nn.Flatten, "relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    if op in simple:
        return simple[op]()
    if op == "leaky_relu":
        return nn.LeakyReLU(a["slope"])
    if op == "dropout":
        return nn.Dropout(a["p"])
    base = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[op]
    extra = {"nonlinearity": a["activation"]} if op == "rnn" else {}
    return recurrent_twin(base, a["output"] == "last")(
        in_shape[-1], a["hidden"], a["layers"], bias=a["bias"], batch_first=True, **extra)


# ---- hand-built IR: shapes and parameter shapes taken from the twin ----------------------------

def make_nodes(
    layers: list[tuple], in_shape: tuple[int, ...], prefix: str = "", source: str = INPUT
) -> tuple[list[Node], nn.Module, str]:
    """(op, attrs[, body layers]) tuples -> DAG nodes named and wired as the front end makes them (a
    residual's body, then its `add` node), their twin, and the name of the node holding the output.

    Output shapes come from the twin; state declarations (names, shapes, initialisation) from the op table.
    """
    nodes, twins = [], []
    for index, (op, attrs, *body) in enumerate(layers):
        name = f"{prefix}{index}"
        if op == "residual":
            children, twin, body_out = make_nodes(body[0], in_shape, prefix=f"{name}.", source=source)
            twin = ResidualTwin(*twin.children())
            nodes.extend(children)
            node = Node(name, "add", {"block": "residual"}, (source, body_out), (in_shape, in_shape),
                        in_shape, (), 0, LOC)
        else:
            full = {**DEFAULTS.get(op, {}), **attrs}
            twin = twin_layer(op, full, in_shape)
            with torch.no_grad():
                out_shape = tuple(twin.eval()(torch.zeros(2, *in_shape)).shape[1:])
            state = OPS[op].state(full, in_shape)
            node = Node(name, op, full, (source,), (in_shape,), out_shape, state, 0, LOC)
        nodes.append(node)
        twins.append(twin)
        in_shape, source = node.out_shape, name
    return nodes, nn.Sequential(*twins), source


def make_graph(in_shape: tuple[int, ...], layers: list[tuple]) -> tuple[Graph, nn.Module]:
    nodes, twin, _ = make_nodes(layers, in_shape)
    return Graph("test", "<test>", "", in_shape, tuple(nodes), TrainConfig(), LOC), twin


STACKS: dict[str, tuple[tuple[int, ...], list[tuple]]] = {
    "conv_pool": ((2, 9, 8), [
        ("conv2d", {"out_channels": 3, "kernel": (3, 3), "padding": (1, 1)}),
        ("relu", {}),
        ("maxpool2d", {"kernel": (2, 2), "stride": (2, 2)}),
        ("conv2d", {"out_channels": 4, "kernel": (2, 3), "stride": (1, 2), "bias": False}),
        ("leaky_relu", {"slope": 0.2}),
        ("avgpool2d", {"kernel": (2, 2), "stride": (1, 1), "padding": (1, 1), "count_include_pad": False}),
        ("flatten", {}),
        ("linear", {"out_features": 5}),
    ]),
    "conv_same_groups": ((4, 7, 6), [
        ("conv2d", {"out_channels": 6, "kernel": (2, 3), "padding": "same", "groups": 2}),
        ("sigmoid", {}),
        ("conv2d", {"out_channels": 3, "kernel": (3, 3), "dilation": (2, 1)}),
        ("tanh", {}),
        ("maxpool2d", {"kernel": (2, 2), "stride": (2, 2), "ceil_mode": True}),
        ("flatten", {}),
    ]),
    "mlp_dropout": ((3, 5), [
        ("flatten", {}),
        ("linear", {"out_features": 7}),
        ("sigmoid", {}),
        ("dropout", {"p": 0.3}),
        ("linear", {"out_features": 6, "bias": False}),
        ("tanh", {}),
        ("linear", {"out_features": 3}),
    ]),
    "residual_repeat": ((5,), [
        ("linear", {"out_features": 6}),
        ("residual", {}, [("linear", {"out_features": 6}), ("relu", {}), ("linear", {"out_features": 6})]),
        ("relu", {}),
        # what the front end makes of `repeat 2 { linear 6  tanh }`: two copies, each its own weights
        ("linear", {"out_features": 6}), ("tanh", {}),
        ("linear", {"out_features": 6}), ("tanh", {}),
        ("linear", {"out_features": 4}),
    ]),
    "rnn": ((3, 4), [
        ("linear", {"out_features": 5}),  # per step: [T, F] -> [T, 5]
        ("relu", {}),
        ("rnn", {"hidden": 6, "layers": 2, "output": "sequence"}),
        ("rnn", {"hidden": 5, "activation": "relu"}),
        ("linear", {"out_features": 3}),
    ]),
    "lstm": ((3, 4), [("lstm", {"hidden": 5, "layers": 2, "output": "sequence"}),
                      ("lstm", {"hidden": 4, "bias": False}), ("linear", {"out_features": 3})]),
    "gru": ((3, 4), [("gru", {"hidden": 5, "output": "sequence"}), ("gru", {"hidden": 4, "layers": 2}),
                     ("linear", {"out_features": 3})]),
}


def run_both(net: nn.Module, twin: nn.Module, x: torch.Tensor) -> None:
    """Same input, same output gradient: outputs, input gradients and every parameter gradient agree."""
    x_net, x_twin = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with full_float32():  # cuDNN's TF32 default would make the twin the inexact one on a GPU
        out, want = net(x_net), twin(x_twin)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(want)
    with full_float32():
        out.backward(grad_out)
        want.backward(grad_out)
    torch.testing.assert_close(x_net.grad, x_twin.grad, rtol=1e-4, atol=1e-5)
    twin_params = dict(twin.named_parameters())
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, twin_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)


