"""The op table: layer name -> its arguments, shape rule, PyTorch parameter shapes and FLOPs.

One row per layer of the language; the grammar never changes when a row is added.
Shapes are per sample (no batch dimension). FLOPs are forward FLOPs per sample, a
multiply-add counting 2:
- conv2d, linear: 2 per multiply-add of the product, plus 1 per output for the bias;
- maxpool2d: one comparison per window element; avgpool2d: one add per window element
  (the last one standing for the divide);
- relu, leaky_relu, tanh, sigmoid, gelu, silu: 1 per element; dropout: 1 per element (the
  mask multiply in training); flatten: 0; global_avgpool: 1 per input element;
- batchnorm, layernorm: 3 per element for the statistics (the sum, the squared deviation)
  as training computes them, 2 to normalize, 2 more with affine;
- rnn, lstm, gru: per step, layer and direction, 2 per multiply-add of both matrix
  products, 1 per bias element, and the elementwise gate arithmetic (rnn H, lstm 9H, gru 11H);
- the merge of a residual or parallel block (dsl/blocks.py): add 1 per output element per
  extra input; concat 0.

Each row also names the backend functions its layer calls (`kernels`, the
`torch.nn.functional` names that runtime/backends.py provides on both backends),
how its arguments are passed to them (`keywords`: attr -> keyword, for the
activations), and whether it can run as a conv2d/linear epilogue (`epilogue`).
State (parameters and buffers) is declared with PyTorch's names, shapes and
initialisation (dsl.ir.State).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import field
from typing import Any

from netc.dsl.args import REQUIRED, ArgSpec
from netc.dsl.ir import Shape, State
from netc.dsl.limits import MAX_RECURRENT_LAYERS
from netc.dsl.record import record

Attrs = dict[str, Any]


class ShapeError(Exception):
    """A layer cannot take the shape it gets; the message names that shape."""


@record
class OpSpec:
    """One layer: its arguments (in attr order), three rules over (attrs, input shape), its kernels."""

    name: str
    args: tuple[ArgSpec, ...]
    shape: Callable[[Attrs, Shape], Shape]  # raises ShapeError
    state: Callable[[Attrs, Shape], tuple[State, ...]]  # parameters and buffers
    flops: Callable[[Attrs, Shape, Shape], int]
    kernels: tuple[str, ...] = ()  # the backend functions (F names) its layer module calls
    # fills defaults that depend on other arguments, checks rules between them; a message if broken
    resolve: Callable[[Attrs], str | None] = lambda attrs: None
    activation: bool = False  # elementwise, no state: one backend function of (input, **keywords)
    keywords: Mapping[str, str] = field(default_factory=dict)  # attr -> the function's keyword, if renamed
    epilogue: bool = False  # the conv2d/linear kernels can apply it in their epilogue (the fusion pass)

    def call_keywords(self, attrs: Attrs) -> dict[str, Any]:
        """An activation's attrs as its backend function's keyword arguments."""
        return {self.keywords.get(name, name): value for name, value in attrs.items()}


def fmt_shape(shape: Shape) -> str:
    return "[" + ", ".join(str(dim) for dim in shape) + "]"


def numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def _none(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
    return ()


def _kaiming_bound(fan_in: int) -> float:
    """torch.nn.init.kaiming_uniform_(a=sqrt(5))'s bound, computed as PyTorch computes it (bit for bit)."""
    gain = math.sqrt(2.0 / (1 + math.sqrt(5) ** 2))
    return math.sqrt(3.0) * (gain / math.sqrt(fan_in))


def _weight_and_bias(weight: Shape, fan_in: int, bias: int | None) -> tuple[State, ...]:
    """conv2d/linear: weight kaiming-uniform, bias uniform(±1/sqrt(fan_in)), as torch.nn draws them."""
    state = [State("weight", weight, "uniform", _kaiming_bound(fan_in))]
    if bias is not None:
        state.append(State("bias", (bias,), "uniform", 1 / math.sqrt(fan_in)))
    return tuple(state)


def _same(attrs: Attrs, shape: Shape) -> Shape:
    return shape


def _per_element(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
    return numel(out_shape)


def _image(op: str, shape: Shape) -> tuple[int, int, int]:
    if len(shape) != 3:
        hint = ""
        if len(shape) == 1 and shape[0] == 784:
            hint = "; set `input [1, 28, 28]` to see the digit as an image"
        raise ShapeError(f"`{op}` needs an image [C, H, W], got {fmt_shape(shape)}{hint}")
    return shape[0], shape[1], shape[2]


def window_size(op: str, size: int, kernel: int, stride: int, pad: int, dilation: int,
                ceil_mode: bool, axis: str) -> int:
    """One spatial output size, as PyTorch computes it for convolutions and pooling.

    A convolution's dilated kernel must fit in the padded input; a pool's need not
    under ceil_mode (PyTorch lets the last window hang over), only its output be >= 1.
    """
    span = dilation * (kernel - 1) + 1
    too_big = size + 2 * pad < span
    numerator = size + 2 * pad - span + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1  # PyTorch: the last window must start inside the input or its left padding
    if too_big and (op == "conv2d" or out < 1):
        dilated = f" ({span} with dilation {dilation})" if dilation > 1 else ""
        raise ShapeError(f"`{op}` kernel {kernel}{dilated} is larger than the padded input {axis} "
                         f"{size + 2 * pad} ({size} + 2*{pad})")
    if out < 1:
        raise ShapeError(f"`{op}` output {axis} would be {out}, below 1")
    return out


# --- conv2d -----------------------------------------------------------------------------------------

def _conv_shape(attrs: Attrs, shape: Shape) -> Shape:
    channels, height, width = _image("conv2d", shape)
    groups, out_channels = attrs["groups"], attrs["out_channels"]
    if channels % groups or out_channels % groups:
        raise ShapeError(f"groups={groups} must divide both the input channels ({channels}) and "
                         f"out_channels ({out_channels})")
    if attrs["padding"] == "same":
        return (out_channels, height, width)
    sizes = [window_size("conv2d", size, attrs["kernel"][i], attrs["stride"][i], attrs["padding"][i],
                         attrs["dilation"][i], False, axis)
             for i, (size, axis) in enumerate(((height, "height"), (width, "width")))]
    return (out_channels, sizes[0], sizes[1])


def _conv_resolve(attrs: Attrs) -> str | None:
    if attrs["padding"] == "same" and attrs["stride"] != (1, 1):
        return "padding=same needs stride=1 (PyTorch's rule); give the padding as numbers instead"
    return None


def _conv_state(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
    kh, kw = attrs["kernel"]
    channels = shape[0] // attrs["groups"]
    bias = attrs["out_channels"] if attrs["bias"] else None
    return _weight_and_bias((attrs["out_channels"], channels, kh, kw), channels * kh * kw, bias)


def _conv_flops(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
    kh, kw = attrs["kernel"]
    per_output = 2 * (in_shape[0] // attrs["groups"]) * kh * kw + (1 if attrs["bias"] else 0)
    return numel(out_shape) * per_output


# --- pools -----------------------------------------------------------------------------------------

def _pool_shape(op: str) -> Callable[[Attrs, Shape], Shape]:
    def rule(attrs: Attrs, shape: Shape) -> Shape:
        channels, height, width = _image(op, shape)
        dilation = attrs.get("dilation", (1, 1))
        sizes = [window_size(op, size, attrs["kernel"][i], attrs["stride"][i], attrs["padding"][i],
                             dilation[i], attrs["ceil_mode"], axis)
                 for i, (size, axis) in enumerate(((height, "height"), (width, "width")))]
        return (channels, sizes[0], sizes[1])
    return rule


def _pool_resolve(attrs: Attrs) -> str | None:
    if attrs["stride"] is None:
        attrs["stride"] = attrs["kernel"]  # PyTorch's default: windows side by side
    for pad, kernel in zip(attrs["padding"], attrs["kernel"], strict=True):
        if pad > kernel // 2:
            return f"padding {pad} is more than half the kernel {kernel}; use at most {kernel // 2}"
    return None


def _pool_flops(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
    kh, kw = attrs["kernel"]
    return numel(out_shape) * kh * kw


# --- linear, flatten -----------------------------------------------------------------------------

def _linear_shape(attrs: Attrs, shape: Shape) -> Shape:
    if len(shape) not in (1, 2):
        raise ShapeError(f"`linear` needs [F] or [T, F], got {fmt_shape(shape)}; add `flatten` before it")
    return (*shape[:-1], attrs["out_features"])


def _linear_state(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
    bias = attrs["out_features"] if attrs["bias"] else None
    return _weight_and_bias((attrs["out_features"], shape[-1]), shape[-1], bias)


def _linear_flops(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
    return numel(out_shape) * (2 * in_shape[-1] + (1 if attrs["bias"] else 0))


def _flatten_shape(attrs: Attrs, shape: Shape) -> Shape:
    return (numel(shape),)


# --- recurrent -------------------------------------------------------------------------------------

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}  # stacked weight blocks, PyTorch's order
_ELEMENTWISE = {"rnn": 1, "lstm": 9, "gru": 11}  # per hidden unit and step


def _recurrent_shape(op: str) -> Callable[[Attrs, Shape], Shape]:
    def rule(attrs: Attrs, shape: Shape) -> Shape:
        if len(shape) != 2:
            hint = ""
            if len(shape) == 3 and shape[0] == 1:
                hint = f"; set `input {fmt_shape(shape[1:])}` to read the rows as steps"
            raise ShapeError(f"`{op}` needs a sequence [T, F], got {fmt_shape(shape)}{hint}")
        steps, hidden = shape[0], attrs["hidden"] * _directions(attrs)
        return (hidden,) if attrs["output"] == "last" else (steps, hidden)
    return rule


def _directions(attrs: Attrs) -> int:
    return 2 if attrs["bidirectional"] else 1


def _recurrent_resolve(attrs: Attrs) -> str | None:
    if attrs["dropout"] > 0 and attrs["layers"] == 1:
        return (f"dropout={attrs['dropout']:g} acts between stacked layers, and this one has layers=1: set "
                "layers=2 or more, or put a `dropout p` layer after it")
    return None


def _recurrent_state(op: str) -> Callable[[Attrs, Shape], tuple[State, ...]]:
    def rule(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
        hidden, rows = attrs["hidden"], _GATES[op] * attrs["hidden"]
        bound = 1.0 / math.sqrt(hidden)  # torch.nn.RNNBase: every parameter uniform(±1/sqrt(hidden))
        shapes: dict[str, Shape] = {}
        for layer in range(attrs["layers"]):
            features = shape[-1] if layer == 0 else hidden * _directions(attrs)
            for suffix in ("", "_reverse")[:_directions(attrs)]:  # torch.nn.RNNBase's order
                shapes[f"weight_ih_l{layer}{suffix}"] = (rows, features)
                shapes[f"weight_hh_l{layer}{suffix}"] = (rows, hidden)
                if attrs["bias"]:
                    shapes[f"bias_ih_l{layer}{suffix}"] = (rows,)
                    shapes[f"bias_hh_l{layer}{suffix}"] = (rows,)
        return tuple(State(name, dims, "uniform", bound) for name, dims in shapes.items())
    return rule


def _recurrent_flops(op: str) -> Callable[[Attrs, Shape, Shape], int]:
    def rule(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
        hidden, rows = attrs["hidden"], _GATES[op] * attrs["hidden"]
        per_step = 0
        for layer in range(attrs["layers"]):
            features = in_shape[-1] if layer == 0 else hidden * _directions(attrs)
            per_step += 2 * rows * (features + hidden) + _ELEMENTWISE[op] * hidden
            per_step += 2 * rows if attrs["bias"] else 0
        return in_shape[0] * per_step * _directions(attrs)
    return rule


# --- normalization, global pooling ----------------------------------------------------------------

def _batchnorm_shape(attrs: Attrs, shape: Shape) -> Shape:
    if len(shape) == 2:
        raise ShapeError(f"`batchnorm` normalizes images [C, H, W] or vectors [F], got a sequence "
                         f"{fmt_shape(shape)}; use `layernorm` to normalize each step over its features")
    if len(shape) not in (1, 3):
        raise ShapeError(f"`batchnorm` needs an image [C, H, W] or a vector [F], got {fmt_shape(shape)}")
    return shape


def _affine(size: Shape, attrs: Attrs) -> tuple[State, ...]:
    if not attrs["affine"]:
        return ()
    return (State("weight", size, "ones"), State("bias", size, "zeros"))


def _batchnorm_state(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
    """torch.nn.BatchNorm1d/2d's: weight, bias (affine), then the running statistics' buffers."""
    channels = (shape[0],)
    return (*_affine(channels, attrs), State("running_mean", channels, "zeros", buffer=True),
            State("running_var", channels, "ones", buffer=True),
            State("num_batches_tracked", (), "zeros", buffer=True, dtype="long"))


def normalized_shape(shape: Shape) -> Shape:
    """What `layernorm` normalizes over: each step's features for [T, F], else the whole sample."""
    return shape[-1:] if len(shape) == 2 else shape


def _layernorm_state(attrs: Attrs, shape: Shape) -> tuple[State, ...]:
    return _affine(normalized_shape(shape), attrs)


def _norm_flops(attrs: Attrs, in_shape: Shape, out_shape: Shape) -> int:
    return numel(out_shape) * (7 if attrs["affine"] else 5)


def _global_avgpool_shape(attrs: Attrs, shape: Shape) -> Shape:
    return (_image("global_avgpool", shape)[0],)


_EPS = ArgSpec("eps", "float", 1e-5, above=0.0)
_AFFINE = ArgSpec("affine", "bool", True)


# --- the table -------------------------------------------------------------------------------------

def _size(name: str, positional: bool = False, default: Any = REQUIRED) -> ArgSpec:
    return ArgSpec(name, "int", default, positional=positional, minimum=1)


def _pair(name: str, default: Any = REQUIRED, positional: bool = False, minimum: int = 1) -> ArgSpec:
    return ArgSpec(name, "pair", default, positional=positional, minimum=minimum)


_BIAS = ArgSpec("bias", "bool", True)
_CEIL = ArgSpec("ceil_mode", "bool", False)
_LAYERS = ArgSpec("layers", "int", 1, minimum=1, maximum=MAX_RECURRENT_LAYERS)
_OUTPUT = ArgSpec("output", "choice", "last", choices=("last", "sequence"), noun="output")
_POOL_ARGS = (_pair("kernel", positional=True), _pair("stride", None), _pair("padding", (0, 0), minimum=0))


def _activation(name: str, args: tuple[ArgSpec, ...] = (), keywords: Mapping[str, str] | None = None,
                epilogue: bool = False) -> OpSpec:
    return OpSpec(name, args, _same, _none, _per_element, (name,), activation=True,
                  keywords=keywords or {}, epilogue=epilogue)


def _recurrent(op: str, extra: tuple[ArgSpec, ...]) -> OpSpec:
    args = (_size("hidden", positional=True), *extra, _LAYERS, _OUTPUT, _BIAS,
            ArgSpec("bidirectional", "bool", False), ArgSpec("dropout", "float", 0.0, minimum=0.0, below=1.0))
    return OpSpec(op, args, _recurrent_shape(op), _recurrent_state(op), _recurrent_flops(op), (op,),
                  _recurrent_resolve)


OPS: dict[str, OpSpec] = {
    "conv2d": OpSpec("conv2d", (
        _size("out_channels", positional=True), _pair("kernel"), _pair("stride", (1, 1)),
        ArgSpec("padding", "padding", (0, 0), minimum=0), _pair("dilation", (1, 1)),
        _size("groups", default=1), _BIAS,
    ), _conv_shape, _conv_state, _conv_flops, ("conv2d", "conv2d_act"), _conv_resolve),
    "maxpool2d": OpSpec("maxpool2d", (*_POOL_ARGS, _pair("dilation", (1, 1)), _CEIL),
                        _pool_shape("maxpool2d"), _none, _pool_flops, ("max_pool2d",), _pool_resolve),
    "avgpool2d": OpSpec("avgpool2d", (*_POOL_ARGS, _CEIL, ArgSpec("count_include_pad", "bool", True)),
                        _pool_shape("avgpool2d"), _none, _pool_flops, ("avg_pool2d",), _pool_resolve),
    "linear": OpSpec("linear", (_size("out_features", positional=True), _BIAS),
                     _linear_shape, _linear_state, _linear_flops, ("linear", "linear_act")),
    "flatten": OpSpec("flatten", (), _flatten_shape, _none, lambda attrs, i, o: 0),
    "relu": _activation("relu", epilogue=True),
    "tanh": _activation("tanh", epilogue=True),
    "sigmoid": _activation("sigmoid", epilogue=True),
    "leaky_relu": _activation("leaky_relu", (ArgSpec("slope", "float", 0.01),),
                              keywords={"slope": "negative_slope"}, epilogue=True),
    "gelu": _activation("gelu", (ArgSpec("approximate", "choice", "none", choices=("none", "tanh"),
                                         noun="approximation"),)),
    "silu": _activation("silu"),
    "dropout": OpSpec("dropout", (ArgSpec("p", "float", positional=True, minimum=0.0, below=1.0),),
                      _same, _none, _per_element, ("dropout",)),
    "batchnorm": OpSpec("batchnorm", (ArgSpec("momentum", "float", 0.1, minimum=0.0, maximum=1.0), _EPS,
                                      _AFFINE),
                        _batchnorm_shape, _batchnorm_state, _norm_flops, ("batch_norm",)),
    "layernorm": OpSpec("layernorm", (_EPS, _AFFINE), _same, _layernorm_state, _norm_flops, ("layer_norm",)),
    "global_avgpool": OpSpec("global_avgpool", (), _global_avgpool_shape, _none,
                             lambda attrs, i, o: numel(i), ("adaptive_avg_pool2d",)),
    "rnn": _recurrent("rnn", (ArgSpec("activation", "choice", "tanh", choices=("tanh", "relu"),
                                      noun="activation"),)),
    "lstm": _recurrent("lstm", ()),
    "gru": _recurrent("gru", ()),
}

ACTIVATIONS: tuple[str, ...] = tuple(name for name, spec in OPS.items() if spec.activation)
