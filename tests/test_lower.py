"""Lowering: IR graphs and .net files -> Network on both backends, equal to hand-built PyTorch twins."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn
from twins import STACKS, ResidualTwin, make_graph, recurrent_twin, run_both

import netc
from netc.runtime.lower import Network, compile


@pytest.mark.filterwarnings("ignore:Using padding='same'")  # torch's own note on even kernels
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


# ---- through the front end: files and source text ------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
REPEAT_SOURCE = """
net r {
    input [784]
    linear 16
    repeat 2 {
        linear 16
        tanh
    }
    residual {
        linear 16
        leaky_relu slope=0.2
    }
    linear 10
}
"""


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_lenet_file_equals_handwritten_twin(backend: str, device: str) -> None:
    net = netc.compile(str(EXAMPLES / "lenet.net"), device=device, backend=backend, seed=0).eval()
    twin = nn.Sequential(nn.Conv2d(1, 10, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(1440, 50), nn.ReLU(), nn.Linear(50, 10)).to(device)
    twin.load_state_dict(net.state_dict())
    run_both(net, twin, torch.randn(2, 1, 28, 28, device=device))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_rnn_file_equals_handwritten_twin(backend: str, device: str) -> None:
    net = netc.compile(str(EXAMPLES / "rnn.net"), device=device, backend=backend, seed=0).eval()
    twin = nn.Sequential(recurrent_twin(nn.RNN, last=True)(28, 128, 1, batch_first=True),
                         nn.Linear(128, 10)).to(device)
    twin.load_state_dict(net.state_dict())
    run_both(net, twin, torch.randn(2, 28, 28, device=device))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_repeat_and_residual_source_equals_handwritten_twin(backend: str, device: str) -> None:
    net = netc.compile(REPEAT_SOURCE, device=device, backend=backend, seed=5).eval()
    assert {"1.weight", "3.weight", "5.0.weight", "5.0.bias", "6.weight"} <= set(net.state_dict())
    assert not torch.equal(net.state_dict()["1.weight"], net.state_dict()["3.weight"])  # own weights
    twin = nn.Sequential(nn.Linear(784, 16), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(),
                         ResidualTwin(nn.Linear(16, 16), nn.LeakyReLU(0.2)), nn.Linear(16, 10)).to(device)
    twin.load_state_dict(net.state_dict())
    run_both(net, twin, torch.randn(3, 784, device=device))
    if backend == "triton":
        assert [(f.producer.name, f.activation.name) for f in net.fusions] == [
            ("1", "2"), ("3", "4"), ("5.0", "5.1")]


def test_compile_reports_net_errors() -> None:
    with pytest.raises(netc.NetError) as caught:
        netc.compile("net bad {\n    input [784]\n    linear 10 bias=maybe\n}\n", device="cpu",
                     backend="torch")
    assert caught.value.line == 3
