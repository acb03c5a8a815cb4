"""The checker's shapes, parameter shapes/names and FLOPs against torch.nn built from the same settings."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netc.dsl import parse
from netc.dsl.errors import NetError
from netc.dsl.ir import Graph, Node

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same'")

torch = pytest.importorskip("torch")
nn = torch.nn

# path= lets any input and output shape through: only the layer itself is under test
_TRAIN = 'train {\n    data mnist path="/nowhere"\n}\n'
_FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _graph(input_shape: tuple[int, ...], *layers: str) -> Graph:
    body = "\n".join(f"    {layer}" for layer in layers)
    dims = ", ".join(map(str, input_shape))
    return parse(f"net t {{\n    input [{dims}]\n{body}\n}}\n{_TRAIN}")


def _torch_params(module: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    return {name: tuple(p.shape) for name, p in module.named_parameters()}


def _pair_text(pair: tuple[int, int]) -> str:
    return str(pair[0]) if pair[0] == pair[1] else f"({pair[0]}, {pair[1]})"


def _compare(input_shape: tuple[int, ...], layer: str, module: torch.nn.Module,
             owner: torch.nn.Module | None = None) -> Node | None:
    """Our verdict on `layer` must match torch's: the same output shape, or both refuse.

    `owner` is the torch layer whose parameters ours must equal (default: `module`).
    """
    owner = module if owner is None else owner
    try:
        with torch.no_grad():
            expected = tuple(module(torch.zeros(1, *input_shape)).shape[1:])
    except (RuntimeError, ValueError):
        expected = None
    try:
        node = _graph(input_shape, layer).nodes[0]
    except NetError as error:
        assert expected is None, f"{layer} on {input_shape}: torch gives {expected}, we say {error}"
        return None
    assert expected is not None, f"{layer} on {input_shape}: we give {node.out_shape}, torch refuses"
    assert node.out_shape == expected, layer
    assert dict(node.params) == _torch_params(owner), layer
    assert list(node.params) == list(_torch_params(owner)), "parameter order differs from PyTorch's"
    return node


_pairs = st.tuples(st.integers(1, 5), st.integers(1, 5))


@_FAST
@given(channels=st.integers(1, 6), group_split=st.sampled_from([1, 2, 3]), out_per_group=st.integers(1, 3),
       size=st.tuples(st.integers(1, 17), st.integers(1, 17)), kernel=_pairs,
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.one_of(st.just("same"), st.tuples(st.integers(0, 3), st.integers(0, 3))),
       dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)), bias=st.booleans())
def test_conv2d_matches_torch(channels, group_split, out_per_group, size, kernel, stride, padding, dilation,
                              bias):
    groups = group_split if channels % group_split == 0 else 1
    out_channels = out_per_group * groups
    pad_text = padding if padding == "same" else _pair_text(padding)
    layer = (f"conv2d {out_channels} kernel={_pair_text(kernel)} stride={_pair_text(stride)} "
             f"padding={pad_text} dilation={_pair_text(dilation)} groups={groups} "
             f"bias={'true' if bias else 'false'}")
    try:
        module = nn.Conv2d(channels, out_channels, kernel, stride, padding, dilation, groups, bias)
    except ValueError:  # padding='same' with a stride: we must refuse it too
        with pytest.raises(NetError, match="padding=same needs stride=1"):
            _graph((channels, *size), layer)
        return
    node = _compare((channels, *size), layer, module)
    if node is not None:
        assert node.attrs["kernel"] == kernel and node.attrs["padding"] == padding


@_FAST
@given(channels=st.integers(1, 3), size=st.tuples(st.integers(1, 15), st.integers(1, 15)), kernel=_pairs,
       stride=st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))),
       padding=st.tuples(st.integers(0, 3), st.integers(0, 3)),
       dilation=st.tuples(st.integers(1, 3), st.integers(1, 3)), ceil_mode=st.booleans())
def test_maxpool2d_matches_torch(channels, size, kernel, stride, padding, dilation, ceil_mode):
    layer = (f"maxpool2d {_pair_text(kernel)} padding={_pair_text(padding)} dilation={_pair_text(dilation)} "
             f"ceil_mode={'true' if ceil_mode else 'false'}")
    if stride is not None:
        layer += f" stride={_pair_text(stride)}"
    module = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil_mode)
    node = _compare((channels, *size), layer, module)
    if node is not None:
        assert node.attrs["stride"] == (stride or kernel)


@_FAST
@given(channels=st.integers(1, 3), size=st.tuples(st.integers(1, 15), st.integers(1, 15)), kernel=_pairs,
       stride=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.tuples(st.integers(0, 3), st.integers(0, 3)), ceil_mode=st.booleans(),
       count_include_pad=st.booleans())
def test_avgpool2d_matches_torch(channels, size, kernel, stride, padding, ceil_mode, count_include_pad):
    layer = (f"avgpool2d {_pair_text(kernel)} stride={_pair_text(stride)} padding={_pair_text(padding)} "
             f"ceil_mode={str(ceil_mode).lower()} count_include_pad={str(count_include_pad).lower()}")
    module = nn.AvgPool2d(kernel, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
    _compare((channels, *size), layer, module)


@_FAST
@given(shape=st.one_of(st.tuples(st.integers(1, 9)), st.tuples(st.integers(1, 5), st.integers(1, 9))),
       out_features=st.integers(1, 9), bias=st.booleans())
def test_linear_matches_torch(shape, out_features, bias):
    layer = f"linear {out_features} bias={str(bias).lower()}"
    _compare(shape, layer, nn.Linear(shape[-1], out_features, bias=bias))


_RECURRENT = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class _Last(nn.Module):
    """torch's recurrent module -> our layer's output: the last step, or every step."""

    def __init__(self, inner: torch.nn.Module, output: str):
        super().__init__()
        self.inner, self.output = inner, output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sequence = self.inner(x)[0]  # (N, T, H)
        return sequence[:, -1] if self.output == "last" else sequence


@_FAST
@given(op=st.sampled_from(sorted(_RECURRENT)), steps=st.integers(1, 6), features=st.integers(1, 7),
       hidden=st.integers(1, 7), layers=st.integers(1, 3), output=st.sampled_from(["last", "sequence"]),
       bias=st.booleans(), activation=st.sampled_from(["tanh", "relu"]))
def test_recurrent_matches_torch(op, steps, features, hidden, layers, output, bias, activation):
    extra = {"nonlinearity": activation} if op == "rnn" else {}
    layer = f"{op} {hidden} layers={layers} output={output} bias={str(bias).lower()}"
    if op == "rnn":
        layer += f" activation={activation}"
    inner = _RECURRENT[op](features, hidden, num_layers=layers, bias=bias, batch_first=True, **extra)
    node = _compare((steps, features), layer, _Last(inner, output), owner=inner)
    assert node is not None and node.attrs["layers"] == layers


@pytest.mark.parametrize("input_shape", [(1, 1), (3, 4), (2, 3, 5)])
def test_flatten_and_activations_keep_torch_shapes(input_shape):
    for layer, module in [("flatten", nn.Flatten(0)), ("relu", nn.ReLU()), ("tanh", nn.Tanh()),
                          ("sigmoid", nn.Sigmoid()), ("leaky_relu slope=0.2", nn.LeakyReLU(0.2)),
                          ("dropout 0.3", nn.Dropout(0.3))]:
        node = _graph(input_shape, layer).nodes[0]
        expected = tuple(module(torch.zeros(*input_shape)).shape)
        assert node.out_shape == expected, layer


def _torch_layer(node: Node) -> torch.nn.Module:
    """The torch.nn layer a node stands for (recurrent layers only for their parameters)."""
    a, shape = node.attrs, node.in_shape
    if node.op == "conv2d":
        return nn.Conv2d(shape[0], a["out_channels"], a["kernel"], a["stride"], a["padding"], a["dilation"],
                         a["groups"], a["bias"])
    if node.op == "linear":
        return nn.Linear(shape[-1], a["out_features"], a["bias"])
    if node.op in _RECURRENT:
        extra = {"nonlinearity": a["activation"]} if node.op == "rnn" else {}
        return _RECURRENT[node.op](shape[-1], a["hidden"], a["layers"], bias=a["bias"], **extra)
    return nn.Identity()  # no parameters


def _body(graph: Graph, block: Node) -> list[Node]:
    """The nodes of a residual block's body: its statements j, named "block.j"."""
    depth = block.name.count(".") + 1
    return [node for node in graph.nodes
            if node.name.startswith(block.name + ".") and node.name.count(".") == depth]


def _torch_stack(graph: Graph) -> torch.nn.Module:
    """nn.Sequential of the top-level statements, a residual as an nn.Sequential of its body."""
    def module(node: Node) -> torch.nn.Module:
        if node.op == "add":
            return nn.Sequential(*(module(child) for child in _body(graph, node)))
        return _torch_layer(node)
    return nn.Sequential(*(module(node) for node in graph.nodes if "." not in node.name))


_BIG = """
net everything {
    input [1, 28, 28]
    conv2d 4 kernel=3 padding=same
    residual {
        conv2d 4 kernel=(3, 1) padding=(1, 0) groups=2
        relu
        conv2d 4 kernel=1 bias=false
    }
    repeat 2 {
        conv2d 4 kernel=3 padding=1
        leaky_relu slope=0.1
    }
    maxpool2d 2 ceil_mode=true
    avgpool2d 3 stride=1 padding=1 count_include_pad=false
    conv2d 8 kernel=14
    flatten
    repeat 2 {
        residual {
            linear 8
            tanh
        }
    }
    dropout 0.25
    linear 10
}
"""

_SEQUENCE = """
net seq {
    input [28, 28]
    lstm 6 layers=2 output=sequence
    gru 5 output=sequence bias=false
    linear 7
    rnn 4 activation=relu layers=3
    linear 10
}
"""


@pytest.mark.parametrize("source", [_BIG, _SEQUENCE], ids=["image", "sequence"])
def test_state_dict_keys_and_shapes_equal_torch_sequential(source):
    graph = parse(source)
    reference = _torch_stack(graph)
    expected = {key: tuple(value.shape) for key, value in reference.state_dict().items()}
    ours = {f"{node.name}.{param}": shape for node in graph.nodes for param, shape in node.params.items()}
    assert ours == expected
    assert graph.param_count == sum(p.numel() for p in reference.parameters())


def test_repeat_copies_are_separate_layers():
    graph = parse(_BIG)
    by_name = {node.name: node for node in graph.nodes}
    assert [by_name[str(i)].op for i in range(2, 6)] == ["conv2d", "leaky_relu", "conv2d", "leaky_relu"]
    residuals = [node for node in graph.nodes if node.op == "add"]
    body = _body(graph, residuals[1])
    assert [child.name for child in body] == [f"{residuals[1].name}.0", f"{residuals[1].name}.1"]
    assert residuals[1].inputs == (str(int(residuals[1].name) - 1), body[-1].name)  # x and body(x)
    assert body[0].inputs == (str(int(residuals[1].name) - 1),)


@pytest.mark.parametrize("layer,input_shape,module", [
    ("conv2d 6 kernel=(3, 2) stride=2 padding=1 groups=3 bias=false", (3, 11, 9),
     lambda: nn.Conv2d(3, 6, (3, 2), 2, 1, groups=3, bias=False)),
    ("conv2d 5 kernel=3 dilation=2 bias=false", (2, 13, 7),
     lambda: nn.Conv2d(2, 5, 3, dilation=2, bias=False)),
    ("linear 7 bias=false", (13,), lambda: nn.Linear(13, 7, bias=False)),
    ("linear 7 bias=false", (5, 13), lambda: nn.Linear(13, 7, bias=False)),
])
def test_matmul_flops_equal_torch_flop_counter(layer, input_shape, module):
    """Without bias our count is exactly the multiply-adds times 2, which is what torch counts."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        module()(torch.zeros(1, *input_shape))
    assert _graph(input_shape, layer).nodes[0].flops == counter.get_total_flops()


def test_bias_adds_one_flop_per_output_and_recurrent_flops_scale_with_steps():
    with_bias = _graph((13,), "linear 7").nodes[0]
    without = _graph((13,), "linear 7 bias=false").nodes[0]
    assert with_bias.flops - without.flops == 7
    short, long = (_graph((steps, 5), "lstm 4 layers=2").nodes[0] for steps in (3, 6))
    assert long.flops == 2 * short.flops
