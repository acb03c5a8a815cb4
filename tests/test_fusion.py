"""The fusion pass, targets and modes: which activations fold into conv2d_act/linear_act, devices, dropout."""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from twins import make_graph, run_both

import netc
from netc.dsl.errors import DataError, Loc
from netc.dsl.ir import INPUT, Node
from netc.runtime import backends
from netc.runtime.lower import compile, find_fusions, resolve_target

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


def test_negative_leaky_slope_is_not_fused_and_still_right(device: str) -> None:
    layers = [("linear", {"out_features": 5}), ("leaky_relu", {"slope": -0.3}),
              ("linear", {"out_features": 2})]
    graph, twin = make_graph((4,), layers)
    assert find_fusions(graph.nodes) == []  # the fused backward reads the slope's sign off the output
    net = compile(graph, device=device, backend="triton", seed=0)
    twin.to(device).load_state_dict(net.state_dict())
    run_both(net, twin.to(device), torch.randn(6, 4, device=device))


def test_fused_network_runs_fused_kernels_and_equals_twin(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    graph, twin = make_graph((1, 6, 6), FUSION_LAYERS)
    net = compile(graph, device=device, backend="triton", seed=0).eval()
    assert [(f.producer.name, f.activation.name) for f in net.fusions] == [
        ("0", "1"), ("6", "7"), ("9.0", "9.1"), ("14", "15")]
    run = {node.name: node for node in net.lowered[False].nodes}  # what the network executes
    assert "1" not in run and "9.1" not in run and "4" in run and "10" in run
    assert run["0"].attrs["activation"] == "relu" and run["2"].inputs == ("0",)  # 2 reads the fused 0
    calls: list[str] = []  # the kernels the network itself calls (not the ones they call inside)
    depth = [0]
    ops = backends.get("triton")

    for module, name in [(ops, op) for op in ("conv2d", "conv2d_act", "linear", "linear_act", "relu", "tanh",
                                              "sigmoid", "leaky_relu")]:
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
    assert net.fusions == [] and "1" in {node.name for node in net.lowered[False].nodes}


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


def test_summary_falls_back_without_the_report_module(monkeypatch: pytest.MonkeyPatch) -> None:
    graph, _ = make_graph((3, 5), [("flatten", {}), ("linear", {"out_features": 2})])
    net = compile(graph, device="cpu", backend="torch")
    monkeypatch.setitem(sys.modules, "netc.dsl.report", None)  # importing it now raises ImportError
    text = net.summary()
    assert "total parameters 32" in text and "linear" in text




OPS = ["conv2d", "linear", "relu", "tanh", "sigmoid", "leaky_relu", "maxpool2d", "flatten", "dropout"]


def _node(name: str, op: str, source: str, slope: float = 0.01) -> Node:
    attrs = {"slope": slope} if op == "leaky_relu" else {"block": "residual"} if op == "add" else {}
    inputs = (source, name + ".last") if op == "add" else (source,)  # fixed up by _stack
    return Node(name, op, attrs, inputs, tuple((1,) for _ in inputs), (1,), (), 0, Loc("<test>", 1, 1))


def _stack(layers: list) -> tuple[list[Node], list[list[Node]]]:
    """The DAG the front end makes of a stack with residual blocks; also each stack's nodes in order."""
    nodes, stacks, source = [], [[]], INPUT
    for index, (op, body_ops, slope) in enumerate(layers):
        name = str(index)
        if op != "residual":
            nodes.append(_node(name, op, source, slope))
            stacks[0].append(nodes[-1])
            source = name
            continue
        body, inner = [], source
        for j, body_op in enumerate(body_ops):
            body.append(_node(f"{name}.{j}", body_op, inner, slope))
            inner = body[-1].name
        add = _node(name, "add", source)
        nodes.extend([*body, dataclasses.replace(add, inputs=(source, inner))])
        stacks.append(body)
        stacks[0].append(nodes[-1])
        source = name
    return nodes, stacks


@given(st.lists(st.tuples(st.sampled_from(OPS + ["residual"]), st.lists(st.sampled_from(OPS), max_size=4),
                          st.sampled_from([0.0, 0.2, -0.5])), max_size=12))
def test_fusions_are_exactly_adjacent_producer_activation_pairs(layers: list) -> None:
    nodes, stacks = _stack(layers)
    expected = []
    for stack in stacks:
        for first, second in zip(stack, stack[1:], strict=False):
            if first.op in ("conv2d", "linear") and second.op in ("relu", "tanh", "sigmoid", "leaky_relu") \
                    and second.attrs.get("slope", 0.0) >= 0:
                expected.append((first.name, second.name))
    found = [(f.producer.name, f.activation.name) for f in find_fusions(nodes)]
    assert sorted(found) == sorted(expected)
