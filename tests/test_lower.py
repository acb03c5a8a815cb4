"""Lowering: hand-built IR graphs -> Network on both backends, compared with hand-built PyTorch twins."""

from __future__ import annotations

import importlib
import inspect
from typing import Any

import pytest
import torch
from torch import nn

import netc
from netc.dsl.errors import DataError, Loc
from netc.dsl.ir import Graph, Node, TrainConfig
from netc.runtime.lower import Network, compile, find_fusions, resolve_target

LOC = Loc("<test>", 1, 1)
DEFAULTS: dict[str, dict[str, Any]] = {
    "conv2d": {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1, "bias": True},
    "maxpool2d": {"padding": (0, 0), "dilation": (1, 1), "ceil_mode": False},
    "avgpool2d": {"padding": (0, 0), "ceil_mode": False, "count_include_pad": True},
    "linear": {"bias": True},
    "leaky_relu": {"slope": 0.01},
    "rnn": {"activation": "tanh", "layers": 1, "output": "last", "bias": True},
    "lstm": {"layers": 1, "output": "last", "bias": True},
    "gru": {"layers": 1, "output": "last", "bias": True},
}


# ---- the twins: the equivalent stack written directly with torch.nn ----------------------------

class ResidualTwin(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + super().forward(x)


def _recurrent_twin(base: type[nn.RNNBase], last: bool) -> type[nn.RNNBase]:
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
    return _recurrent_twin(base, a["output"] == "last")(
        in_shape[-1], a["hidden"], a["layers"], bias=a["bias"], batch_first=True, **extra)


# ---- hand-built IR: shapes and parameter shapes taken from the twin ----------------------------

def make_nodes(
    layers: list[tuple], in_shape: tuple[int, ...], prefix: str = ""
) -> tuple[list[Node], nn.Module]:
    """(op, attrs[, body layers]) tuples -> IR nodes named like the front end names them, and their twin."""
    nodes, twins = [], []
    for index, (op, attrs, *body) in enumerate(layers):
        name = f"{prefix}{index}"
        if op == "residual":
            children, twin = make_nodes(body[0], in_shape, prefix=f"{name}.")
            twin = ResidualTwin(*twin.children())
        else:
            children, twin = [], twin_layer(op, {**DEFAULTS.get(op, {}), **attrs}, in_shape)
        with torch.no_grad():
            out_shape = tuple(twin.eval()(torch.zeros(2, *in_shape)).shape[1:])
        params = {} if op == "residual" else {k: tuple(v.shape) for k, v in twin.named_parameters()}
        nodes.append(Node(name, op, {**DEFAULTS.get(op, {}), **attrs}, in_shape, out_shape, params, 0, LOC,
                          tuple(children)))
        twins.append(twin)
        in_shape = out_shape
    return nodes, nn.Sequential(*twins)


def make_graph(in_shape: tuple[int, ...], layers: list[tuple]) -> tuple[Graph, nn.Module]:
    nodes, twin = make_nodes(layers, in_shape)
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
    out, want = net(x_net), twin(x_twin)
    torch.testing.assert_close(out, want, rtol=1e-4, atol=1e-5)
    grad_out = torch.randn_like(want)
    out.backward(grad_out)
    want.backward(grad_out)
    torch.testing.assert_close(x_net.grad, x_twin.grad, rtol=1e-4, atol=1e-5)
    twin_params = dict(twin.named_parameters())
    for name, param in net.named_parameters():
        assert param.grad is not None, name
        torch.testing.assert_close(param.grad, twin_params[name].grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("stack", list(STACKS))
def test_network_equals_torch_twin(stack: str, backend: str, device: str) -> None:
    in_shape, layers = STACKS[stack]
    graph, twin = make_graph(in_shape, layers)
    net = compile(graph, device=device, backend=backend, seed=3).eval()
    assert isinstance(net, Network) and net.backend == backend and net.device.type == device
    twin = twin.to(device).eval()
    twin.load_state_dict(net.state_dict())  # strict: the same names and shapes
    run_both(net, twin, torch.randn(3, *in_shape, device=device))


def test_state_dict_round_trip_and_names() -> None:
    graph, twin = make_graph(*STACKS["residual_repeat"])
    net = compile(graph, device="cpu", backend="torch", seed=0)
    assert list(net.state_dict()) == list(twin.state_dict())
    assert "1.0.weight" in net.state_dict() and "1.2.bias" in net.state_dict()
    net.load_state_dict(twin.state_dict())  # the twin's fresh weights, back into the network
    for name, value in twin.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name
    x = torch.randn(4, 5)
    torch.testing.assert_close(net(x), twin(x), rtol=0, atol=0)


def test_recurrent_parameter_names_follow_torch() -> None:
    graph, _ = make_graph(*STACKS["lstm"])
    names = list(compile(graph, device="cpu", backend="torch", seed=0).state_dict())
    assert names[:4] == ["0.weight_ih_l0", "0.weight_hh_l0", "0.bias_ih_l0", "0.bias_hh_l0"]
    assert "0.weight_ih_l1" in names and "1.weight_ih_l0" in names and "1.bias_ih_l0" not in names


def test_same_seed_same_weights_on_both_backends() -> None:
    graph, _ = make_graph(*STACKS["conv_pool"])
    on_torch = compile(graph, device="cpu", backend="torch", seed=7).state_dict()
    on_triton = compile(graph, device="cpu", backend="triton", seed=7).state_dict()
    other_seed = compile(graph, device="cpu", backend="torch", seed=8).state_dict()
    for name, value in on_torch.items():
        assert torch.equal(value, on_triton[name]), name
    assert not torch.equal(on_torch["0.weight"], other_seed["0.weight"])


def test_initialisation_is_pytorch_default() -> None:
    graph, twin = make_graph(*STACKS["conv_pool"])
    torch.manual_seed(11)
    twin = make_graph(*STACKS["conv_pool"])[1]  # built in node order under the same seed
    net = compile(graph, device="cpu", backend="torch", seed=11)
    for name, value in twin.state_dict().items():
        assert torch.equal(net.state_dict()[name], value), name


# ---- the fusion pass -------------------------------------------------------------------------

FUSION_LAYERS: list[tuple] = [
    ("conv2d", {"out_channels": 2, "kernel": (3, 3)}), ("relu", {}),  # 0+1 fuse
    ("conv2d", {"out_channels": 2, "kernel": (1, 1)}), ("maxpool2d", {"kernel": (2, 2), "stride": (2, 2)}),
    ("relu", {}),  # 4: after a pool, stays alone
    ("flatten", {}),
    ("linear", {"out_features": 4}), ("leaky_relu", {"slope": 0.1}), ("tanh", {}),  # 6+7 fuse, 8 alone
    ("residual", {}, [("linear", {"out_features": 4}), ("sigmoid", {}),  # 9.0+9.1 fuse
                      ("linear", {"out_features": 4})]),
    ("relu", {}),  # 10: after x + body(x), not fusable into 9.2
    ("linear", {"out_features": 4}), ("dropout", {"p": 0.2}), ("relu", {}),  # dropout between: no fusion
    ("linear", {"out_features": 3}), ("sigmoid", {}),  # 14+15 fuse
]


def test_fusion_pass_fuses_exactly_conv_or_linear_then_activation() -> None:
    graph, _ = make_graph((1, 6, 6), FUSION_LAYERS)
    pairs = [(f.producer.name, f.activation.name, f.kernel) for f in find_fusions(graph.nodes)]
    assert pairs == [("0", "1", "conv2d_act"), ("6", "7", "linear_act"), ("9.0", "9.1", "linear_act"),
                     ("14", "15", "linear_act")]
    assert find_fusions(graph.nodes)[1].slope == 0.1


def test_fused_network_runs_fused_kernels_and_equals_twin(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    graph, twin = make_graph((1, 6, 6), FUSION_LAYERS)
    net = compile(graph, device=device, backend="triton", seed=0).eval()
    assert [(f.producer.name, f.activation.name) for f in net.fusions] == [
        ("0", "1"), ("6", "7"), ("9.0", "9.1"), ("14", "15")]
    assert net.get_submodule("1").fused and net.get_submodule("9.1").fused
    assert not net.get_submodule("4").fused and not net.get_submodule("10").fused
    calls: list[str] = []  # the kernels the network itself calls (not the ones they call inside)
    depth = [0]
    act_module, conv_module, linear_module = (importlib.import_module(f"netc.kernels.{family}")
                                              for family in ("activation", "conv", "linear"))

    for module, name in [(conv_module, "conv2d"), (conv_module, "conv2d_act"), (linear_module, "linear"),
                         (linear_module, "linear_act"), (act_module, "relu"), (act_module, "tanh"),
                         (act_module, "sigmoid"), (act_module, "leaky_relu")]:
        original = getattr(module, name)

        def counting(*args: Any, _name: str = name, _original: Any = original, **kwargs: Any) -> Any:
            if depth[0] == 0:
                fused = inspect.signature(_original).bind(*args, **kwargs).arguments.get("activation")
                calls.append(f"{_name}:{fused}" if fused else _name)
            depth[0] += 1
            try:
                return _original(*args, **kwargs)
            finally:
                depth[0] -= 1

        monkeypatch.setattr(module, name, counting)
    twin = twin.to(device).eval()
    twin.load_state_dict(net.state_dict())
    run_both(net, twin, torch.randn(2, 1, 6, 6, device=device))
    assert calls == ["conv2d_act:relu", "conv2d", "relu", "linear_act:leaky_relu", "tanh",
                     "linear_act:sigmoid", "linear", "relu", "linear", "relu", "linear_act:sigmoid"]


def test_torch_backend_does_not_fuse() -> None:
    graph, _ = make_graph((1, 6, 6), FUSION_LAYERS)
    net = compile(graph, device="cpu", backend="torch", seed=0)
    assert net.fusions == [] and not net.get_submodule("1").fused


# ---- targets, modes, misuse --------------------------------------------------------------------

def test_resolve_target_auto_and_explicit() -> None:
    device, backend, note = resolve_target("auto", "auto")
    if torch.cuda.is_available():
        assert (device.type, backend, note) == ("cuda", "triton", None)
    else:
        assert (device.type, backend) == ("cpu", "torch")
        assert note is not None and "torch backend" in note and "\n" not in note
    assert resolve_target("cpu", "torch") == (torch.device("cpu"), "torch", None)
    device, backend, note = resolve_target("cpu", "triton")
    from netc.kernels.config import interpreting

    assert (device.type, backend, note) == ("cpu", "triton", None) and interpreting()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_gpu_is_a_clear_error() -> None:
    with pytest.raises(DataError, match="no CUDA device"):
        resolve_target("cuda", "auto")
    with pytest.raises(DataError, match="unknown backend"):
        resolve_target("cpu", "tensorflow")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dropout_trains_and_is_identity_in_eval(backend: str, device: str) -> None:
    graph, _ = make_graph((40, 50), [("dropout", {"p": 0.25})])
    net = compile(graph, device=device, backend=backend, seed=0)
    x = torch.randn(2, 40, 50, device=device, requires_grad=True)
    y = net.train()(x)
    kept = y != 0
    assert 0.70 < kept.float().mean().item() < 0.80  # 4000 draws of keep-probability 0.75
    torch.testing.assert_close(y[kept], x[kept] / 0.75)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert torch.equal(net.eval()(x), x)


def test_wrong_input_shape_is_rejected() -> None:
    graph, _ = make_graph((3, 5), [("flatten", {}), ("linear", {"out_features": 2})])
    net = compile(graph, device="cpu", backend="torch")
    with pytest.raises(ValueError, match=r"expects input \(N, 3, 5\)"):
        net(torch.randn(4, 15))


def test_loss_matches_cross_entropy_on_both_backends(device: str) -> None:
    graph, _ = make_graph((4,), [("linear", {"out_features": 5})])
    logits = torch.randn(6, 5, device=device)
    targets = torch.randint(0, 5, (6,), device=device)
    want = torch.nn.functional.cross_entropy(logits, targets, label_smoothing=0.1)
    for backend in ("torch", "triton"):
        net = compile(graph, device=device, backend=backend)
        torch.testing.assert_close(net.loss(logits, targets, label_smoothing=0.1), want)


def test_summary_and_netc_compile_entry_point() -> None:
    graph, _ = make_graph((3, 5), [("flatten", {}), ("linear", {"out_features": 2})])
    net = netc.compile(graph, device="cpu", backend="torch")
    text = net.summary()
    assert "linear" in text and "flatten" in text and "32" in text  # 15*2 + 2 parameters
