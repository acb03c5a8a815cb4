"""The op table is the one list of layers: every row has a layer module, a backend entry on both
backends, a FLOP rule and a test case here; blocks (residual, parallel) as DAG nodes on both backends."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
from torch import nn
from twins import run_both

import netc
import netc.kernels
from netc.dsl.ops import OPS
from netc.runtime import backends
from netc.runtime.layers import LAYERS
from netc.runtime.lower import compile

# One small program per layer of the table: (input shape, the layer as written). A new row without a
# case here fails test_every_op_has_a_test_case.
CASES: dict[str, tuple[tuple[int, ...], str]] = {
    "conv2d": ((2, 5, 6), "conv2d 3 kernel=(3, 2) padding=1"),
    "maxpool2d": ((2, 5, 6), "maxpool2d 2 ceil_mode=true"),
    "avgpool2d": ((2, 5, 6), "avgpool2d 3 stride=1 padding=1"),
    "linear": ((3, 5), "linear 4"),
    "flatten": ((2, 3, 3), "flatten"),
    "relu": ((7,), "relu"),
    "tanh": ((7,), "tanh"),
    "sigmoid": ((7,), "sigmoid"),
    "leaky_relu": ((7,), "leaky_relu slope=0.2"),
    "dropout": ((7,), "dropout 0.3"),
    "gelu": ((7,), "gelu approximate=tanh"),
    "silu": ((2, 3, 3), "silu"),
    "batchnorm": ((3, 4, 5), "batchnorm momentum=0.2"),
    "layernorm": ((3, 6), "layernorm eps=1e-3"),
    "global_avgpool": ((3, 4, 5), "global_avgpool"),
    "rnn": ((3, 4), "rnn 5 activation=relu output=sequence"),
    "lstm": ((3, 4), "lstm 5 layers=2"),
    "gru": ((3, 4), "gru 5"),
}
TRAIN = 'train {\n    data mnist path="/nowhere"\n}\n'  # path=: any input and output shape is fine


def _program(shape: tuple[int, ...], *lines: str) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"net t {{\n    input [{', '.join(map(str, shape))}]\n{body}}}\n{TRAIN}"


def test_every_op_has_a_test_case() -> None:
    assert set(CASES) == set(OPS)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_has_a_module_both_backends_and_a_flop_rule(op: str) -> None:
    spec = OPS[op]
    assert op in LAYERS, f"runtime/layers.py has no module for {op}"
    for name in ("torch", "triton"):
        for function in spec.kernels:
            assert callable(getattr(backends.get(name), function, None)), f"{name} backend lacks {function}"
    shape, layer = CASES[op]
    node = netc.parse(_program(shape, layer)).nodes[0]
    assert node.op == op and node.flops >= 0
    if op not in ("flatten",):
        assert node.flops > 0, f"{op}: no FLOP rule"


def test_both_backends_expose_the_same_interface() -> None:
    torch_ops, triton_ops = vars(backends.get("torch")), vars(backends.get("triton"))
    assert set(torch_ops) == set(triton_ops)
    assert (torch_ops["name"], triton_ops["name"]) == ("torch", "triton")
    assert {"cross_entropy", "conv2d_act", "linear_act"} <= set(torch_ops)


@pytest.mark.parametrize("op", sorted(OPS))
def test_every_op_runs_on_both_backends_alike(op: str) -> None:
    shape, layer = CASES[op]
    graph = netc.parse(_program(shape, layer))
    reference = compile(graph, device="cpu", backend="torch", seed=1).eval()
    candidate = compile(graph, device="cpu", backend="triton", seed=1).eval()
    assert list(candidate.state_dict()) == list(reference.state_dict())
    x = torch.randn(2, *shape)
    torch.testing.assert_close(candidate(x), reference(x), rtol=1e-4, atol=1e-5)


def test_kernel_functions_are_not_shadowed_by_family_modules() -> None:
    """Importing every module of netc.kernels leaves each public name a function, not a module."""
    for info in pkgutil.iter_modules(netc.kernels.__path__):
        importlib.import_module(f"netc.kernels.{info.name}")
    for name in netc.kernels.__all__:
        assert not isinstance(getattr(netc.kernels, name), type(netc.kernels)), name
    assert {module.__name__.rsplit(".", 1)[1] for module in netc.kernels.family_modules()} == set(
        netc.kernels.FAMILIES)


# ---- blocks: the DAG on both backends --------------------------------------------------------

PARALLEL = _program(
    (3, 6, 6),
    "conv2d 4 kernel=3 padding=1",
    "parallel add {", "    branch {", "        conv2d 4 kernel=3 padding=1", "        relu", "    }",
    "    branch { }", "    branch {", "        conv2d 4 kernel=1", "    }", "}",
    "parallel concat {", "    branch {", "        conv2d 2 kernel=1", "    }", "    branch { }", "}",
    "flatten", "linear 5",
)


class _Parallel(nn.ModuleList):
    """The spec's naming model: an nn.ModuleList of nn.Sequential branches."""

    def __init__(self, merge: str, *branches: nn.Module) -> None:
        super().__init__(branches)
        self.merge = merge

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = [branch(x) for branch in self]
        return torch.cat(outs, 1) if self.merge == "concat" else sum(outs[1:], outs[0])


def _twin() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        _Parallel("add", nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU()), nn.Sequential(),
                  nn.Sequential(nn.Conv2d(4, 4, 1))),
        _Parallel("concat", nn.Sequential(nn.Conv2d(4, 2, 1)), nn.Sequential()),
        nn.Flatten(), nn.Linear(6 * 36, 5))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_parallel_blocks_equal_a_torch_twin(backend: str) -> None:
    graph = netc.parse(PARALLEL)
    names = ["0", "1.0.0", "1.0.1", "1.2.0", "1", "2.0.0", "2", "3", "4"]
    assert [node.name for node in graph.nodes] == names
    assert graph.node("1").inputs == ("1.0.1", "0", "1.2.0") and graph.node("2").inputs == ("2.0.0", "1")
    assert graph.node("2").out_shape == (6, 6, 6)
    net = compile(graph, device="cpu", backend=backend, seed=0).eval()
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.0.0.weight", "1.0.0.bias", "1.2.0.weight",
                                      "1.2.0.bias", "2.0.0.weight", "2.0.0.bias", "4.weight", "4.bias"]
    twin = _twin()
    twin.load_state_dict(net.state_dict())  # strict: the same names
    run_both(net, twin, torch.randn(2, 3, 6, 6))


def test_parallel_errors_name_each_branch_shape() -> None:
    source = _program((3, 6, 6), "parallel add {", "    branch {", "        conv2d 4 kernel=3", "    }",
                      "    branch { }", "}")
    with pytest.raises(netc.NetError) as caught:
        netc.parse(source)
    assert caught.value.line == 3
    assert "branch 0: [4, 4, 4], branch 1: [3, 6, 6]" in caught.value.message
    with pytest.raises(netc.NetError, match=r"unknown merge 'sum' for `parallel` \(use add or concat\)"):
        netc.parse(_program((3,), "parallel sum {", "    branch { }", "}"))
    with pytest.raises(netc.NetError, match="without branches"):
        netc.parse(_program((3,), "parallel add {", "}"))
    with pytest.raises(netc.NetError, match="every other dimension must agree, got branch 0: "):
        netc.parse(_program((3, 6, 6), "parallel concat {", "    branch {", "        maxpool2d 2",
                            "    }", "    branch { }", "}"))
