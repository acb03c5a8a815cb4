"""Language version 2 layers through the whole stack: batchnorm (buffers, training, the eval-mode fold),
layernorm, global_avgpool, gelu/silu, bidirectional and stacked-dropout recurrent layers, their errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from twins import recurrent_twin, run_both

import netc
from netc.runtime.lower import compile

TRAIN = 'train {\n    data mnist path="/nowhere"\n}\n'  # path=: any input and output shape is fine


def _program(shape: tuple[int, ...], *lines: str) -> str:
    body = "".join(f"    {line}\n" for line in lines)
    return f"net t {{\n    input [{', '.join(map(str, shape))}]\n{body}}}\n{TRAIN}"


CONV_BN = _program((2, 5, 4), "conv2d 3 kernel=3 padding=1", "batchnorm momentum=0.3", "relu", "flatten",
                   "linear 6", "batchnorm affine=false eps=1e-3", "gelu", "linear 2")


def _conv_bn_twin() -> nn.Module:
    return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3, momentum=0.3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(60, 6), nn.BatchNorm1d(6, eps=1e-3, affine=False), nn.GELU(),
                         nn.Linear(6, 2))


def test_batchnorm_state_is_pytorch_s_with_buffers() -> None:
    graph = netc.parse(CONV_BN)
    assert graph.node("1").buffers == {"running_mean": (3,), "running_var": (3,), "num_batches_tracked": ()}
    assert graph.node("5").params == {} and graph.param_count == sum(
        p.numel() for p in _conv_bn_twin().parameters())
    net = compile(graph, device="cpu", backend="torch", seed=0)
    assert list(net.state_dict()) == list(_conv_bn_twin().state_dict())  # buffers included, in order
    assert net.state_dict()["1.num_batches_tracked"].dtype == torch.long


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_batchnorm_net_trains_and_evaluates_as_torch(backend: str) -> None:
    net = compile(CONV_BN, device="cpu", backend=backend, seed=0)
    twin = _conv_bn_twin()
    twin.load_state_dict(net.state_dict())
    x = torch.randn(4, 2, 5, 4)
    run_both(net.train(), twin.train(), x)  # batch statistics; running ones updated
    for name, value in twin.state_dict().items():
        torch.testing.assert_close(net.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    assert int(net.state_dict()["5.num_batches_tracked"]) == 1
    run_both(net.eval(), twin.eval(), x)  # running statistics (folded into conv/linear on triton)


def test_triton_eval_folds_batchnorm_into_the_layer_before() -> None:
    net = compile(CONV_BN, device="cpu", backend="triton", seed=0)
    evaluated = {node.name: node for node in net.lowered[False].nodes}
    trained = {node.name: node for node in net.lowered[True].nodes}
    assert "1" not in evaluated and "5" not in evaluated and "1" in trained
    assert evaluated["0"].attrs["batchnorm"] == "1" and evaluated["0"].attrs["activation"] == "relu"
    assert evaluated["4"].attrs["batchnorm"] == "5" and evaluated["6"].inputs == ("4",)
    torch_net = compile(CONV_BN, device="cpu", backend="torch", seed=0)
    assert {node.name for node in torch_net.lowered[False].nodes} == {node.name for node in netc.parse(
        CONV_BN).nodes}


@pytest.mark.parametrize("shape,twin", [
    ((3, 4), lambda: nn.LayerNorm(4)),  # [T, F]: each step over F
    ((2, 3, 4), lambda: nn.LayerNorm([2, 3, 4])),
])
def test_layernorm_matches_torch(shape: tuple[int, ...], twin) -> None:  # noqa: ANN001
    graph = netc.parse(_program(shape, "layernorm"))
    normalized = tuple(twin().normalized_shape)
    assert graph.node("0").params == {"weight": normalized, "bias": normalized}
    net = compile(graph, device="cpu", backend="torch", seed=0)
    reference = nn.Sequential(twin())
    with torch.no_grad():
        reference[0].weight.uniform_(0.5, 1.5)
        reference[0].bias.uniform_(-0.5, 0.5)
    net.load_state_dict(reference.state_dict())
    run_both(net, reference, torch.randn(3, *shape))


def test_global_avgpool_and_silu_match_torch() -> None:
    net = compile(_program((3, 4, 5), "silu", "global_avgpool", "linear 2"), device="cpu", backend="torch")
    twin = nn.Sequential(nn.SiLU(), nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), nn.Linear(3, 2))
    twin.load_state_dict(net.state_dict())
    run_both(net, twin, torch.randn(2, 3, 4, 5))
    assert netc.parse(_program((3, 4, 5), "global_avgpool")).node("0").out_shape == (3,)


class _BiLast(nn.LSTM):
    """PyTorch's h_n of the last layer, both directions side by side (forward first)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        h_n = super().forward(x)[1][0]
        return torch.cat((h_n[-2], h_n[-1]), dim=1)


@pytest.mark.parametrize("output,backend", [("last", "torch"), ("sequence", "torch"), ("last", "triton")])
def test_bidirectional_lstm_matches_torch(output: str, backend: str) -> None:
    source = _program((5, 3), f"lstm 4 layers=2 bidirectional=true output={output}", "flatten", "linear 2")
    graph = netc.parse(source)
    assert graph.node("0").out_shape == ((8,) if output == "last" else (5, 8))
    assert list(graph.node("0").params)[:6] == ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0",
                                                "weight_ih_l0_reverse", "weight_hh_l0_reverse"]
    assert graph.node("0").params["weight_ih_l1"] == (16, 8)
    net = compile(graph, device="cpu", backend=backend, seed=0).eval()
    lstm = _BiLast if output == "last" else recurrent_twin(nn.LSTM, last=False)
    twin = nn.Sequential(lstm(3, 4, 2, batch_first=True, bidirectional=True), nn.Flatten(),
                         nn.Linear(8 if output == "last" else 40, 2))
    twin.load_state_dict(net.state_dict())
    run_both(net, twin.eval(), torch.randn(2, 5, 3))


def test_recurrent_dropout_between_layers_only_in_training() -> None:
    net = compile(_program((4, 3), "gru 5 layers=2 dropout=0.5"), device="cpu", backend="torch", seed=0)
    x = torch.randn(3, 4, 3)
    assert torch.equal(net.eval()(x), net(x))  # eval: deterministic
    torch.manual_seed(1)
    first = net.train()(x)
    torch.manual_seed(2)
    assert not torch.equal(first, net(x))  # training: a fresh mask between the layers


def test_triton_stacked_dropout_is_identity_in_eval_and_random_in_training() -> None:
    source = _program((3, 2), "gru 3 layers=2 dropout=0.5 bidirectional=true")
    net = compile(source, device="cpu", backend="triton", seed=0)
    reference = compile(source, device="cpu", backend="torch", seed=0).eval()
    x = torch.randn(2, 3, 2)
    torch.testing.assert_close(net.eval()(x), reference(x), rtol=1e-4, atol=1e-5)
    net.train()
    assert not torch.equal(net(x), net(x))  # a fresh mask between the layers each step


@pytest.mark.parametrize("lines,shape,message", [
    (["batchnorm"], (5, 3), "use `layernorm` to normalize each step"),
    (["batchnorm"], (2, 2, 2, 2), "`batchnorm` needs an image [C, H, W] or a vector [F]"),
    (["lstm 4 dropout=0.2"], (5, 3), "dropout=0.2 acts between stacked layers, and this one has layers=1"),
    (["linear 4 bidirectional=true"], (5,), "`linear` takes no 'bidirectional' argument: only rnn"),
    (["linear 4 dropout=0.5"], (5,), "elsewhere add a `dropout p` layer"),
    (["gelu approximate=fast"], (5,), "unknown approximation 'fast'"),
    (["global_avgpool"], (5, 3), "`global_avgpool` needs an image [C, H, W], got [5, 3]"),
    (["batchnorm momentum=1.5"], (5,), "'momentum' must be at most 1"),
    (["layernorm eps=0"], (5,), "'eps' must be positive"),
])
def test_v2_errors(lines: list[str], shape: tuple[int, ...], message: str) -> None:
    with pytest.raises(netc.NetError) as caught:
        netc.parse(_program(shape, *lines))
    assert message in caught.value.message and caught.value.line == 3
