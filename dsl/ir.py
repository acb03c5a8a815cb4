"""The checked program: syntax tree -> Graph (flat Nodes with shapes, parameters, FLOPs) + TrainConfig.

This is the contract between the front end (`netc.dsl`) and the runtime
(`netc.runtime`). Every value here is resolved: defaults filled in, ints
expanded to pairs, `repeat` unrolled, shapes inferred. Shapes are per sample
(no batch dimension).

Node attributes per op (all keys always present):

- conv2d:     out_channels:int, kernel:(kh,kw), stride:(sh,sw),
              padding:(ph,pw) | "same", dilation:(dh,dw), groups:int, bias:bool
- maxpool2d:  kernel:(kh,kw), stride:(sh,sw), padding:(ph,pw),
              dilation:(dh,dw), ceil_mode:bool
- avgpool2d:  kernel:(kh,kw), stride:(sh,sw), padding:(ph,pw),
              ceil_mode:bool, count_include_pad:bool
- linear:     out_features:int, bias:bool      (applies to the last dimension)
- flatten, relu, tanh, sigmoid:  no attributes
- leaky_relu: slope:float
- dropout:    p:float
- rnn:        hidden:int, activation:"tanh"|"relu", layers:int,
              output:"last"|"sequence", bias:bool
- lstm, gru:  hidden:int, layers:int, output:"last"|"sequence", bias:bool
- residual:   no attributes; `body` holds the wrapped nodes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from collections.abc import Mapping

from netc.dsl.errors import Loc

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Node:
    """One layer of the expanded stack.

    `name` is its parameter prefix: "3" for the fourth layer of the net,
    "3.1" for the second layer inside a `residual` at position 3. Parameter
    names and shapes are PyTorch's (`weight`, `bias`, `weight_ih_l0`, ...).
    """

    name: str
    op: str
    attrs: Mapping[str, Any]
    in_shape: Shape
    out_shape: Shape
    params: Mapping[str, Shape]  # parameter name -> shape, in PyTorch's order
    flops: int  # forward FLOPs per sample (a multiply-add counts 2)
    loc: Loc
    body: tuple[Node, ...] = ()  # only for residual

    @property
    def param_count(self) -> int:
        own = sum(_numel(shape) for shape in self.params.values())
        return own + sum(child.param_count for child in self.body)


@dataclass(frozen=True)
class DataConfig:
    name: str = "mnist"  # "mnist" or "fashion_mnist"
    val: float = 0.0  # fraction of the training set held out for validation
    path: str | None = None  # a directory of IDX files, instead of the packaged data
    normalize: bool = False  # subtract the training mean, divide by its std


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "sgd"  # "sgd", "adam" or "adamw"
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    dampening: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # adamw's default is 0.01
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8  # adam, adamw


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "none"  # "none", "step" (per epoch) or "cosine" (per step, to 0 at the end)
    every: int = 1  # step: epochs between decays
    gamma: float = 0.1  # step: the decay factor


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    batch: int = 64
    epochs: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: float | None = None  # max global gradient norm, or off
    seed: int = 0
    locs: Mapping[str, Loc] = field(default_factory=dict)  # setting name -> where it was written


@dataclass(frozen=True)
class Graph:
    """A whole checked `.net` program."""

    name: str  # the net's name
    path: str  # the file it came from ("<string>" for source text)
    source: str  # the full source text (checkpoints record it)
    input_shape: Shape
    nodes: tuple[Node, ...]
    train: TrainConfig
    input_loc: Loc

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape if self.nodes else self.input_shape

    @property
    def param_count(self) -> int:
        return sum(node.param_count for node in self.nodes)

    @property
    def flops(self) -> int:
        return sum(node.flops for node in self.nodes)


def _numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
