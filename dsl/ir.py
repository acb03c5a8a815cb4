"""The checked program: syntax tree -> Graph (a DAG of Nodes with shapes, state, FLOPs) + TrainConfig.

This is the contract between the front end (`netc.dsl`) and the runtime
(`netc.runtime`). Every value here is resolved: defaults filled in, ints
expanded to pairs, `repeat` unrolled, shapes inferred. Shapes are per sample
(no batch dimension).

The graph is a DAG in topological order: each Node names the nodes it reads
(`inputs`; `INPUT` is the net's input) and the last node is the output.
`residual { body }` at statement i becomes its body's nodes ("i.0", "i.1", ...)
plus an `add` node named "i" reading the residual's input and the body's
output; `parallel add|concat { branch {...} ... }` becomes each branch's nodes
("i.b.j") plus an `add` or `concat` node "i" reading every branch's output (an
empty branch contributes the parallel's input itself). So a node's name is
also its state's prefix, as an nn.Sequential / nn.ModuleList nesting would
name it.

Node attributes per op (all keys always present) are the op table's
arguments (dsl/ops.py), in its order; `add` and `concat` have
`block: "residual" | "parallel"`. Passes over the graph (runtime/passes.py)
may add epilogue attributes to conv2d/linear nodes: `activation`, `slope`,
`batchnorm` (the name of a batchnorm node folded into the weights).
"""

from __future__ import annotations

from dataclasses import field
from typing import Any
from collections.abc import Mapping

from netc.dsl.errors import Loc
from netc.dsl.record import record

Shape = tuple[int, ...]
INPUT = "input"  # the name by which nodes read the net's input


@record
class State:
    """One tensor a node owns: a parameter (trained) or a buffer (running statistics, counters).

    `init` says how it starts, as PyTorch's layers start it: "uniform" draws from
    [-bound, bound] (in declaration order, from the global RNG), "zeros", "ones".
    `dtype` is "float" (the network's dtype) or "long" (a counter).
    """

    name: str
    shape: Shape
    init: str
    bound: float = 0.0
    buffer: bool = False
    dtype: str = "float"

    def describe(self) -> str:
        start = f"uniform(±{self.bound:.4g})" if self.init == "uniform" else self.init
        kind = "buffer" if self.buffer else "param"
        dtype = "" if self.dtype == "float" else f" {self.dtype}"
        return f"{kind} {self.name} {list(self.shape)}{dtype} = {start}"


@record
class Node:
    """One layer (or merge) of the DAG.

    `name` is its state prefix and its id: "3" for statement 3 of the net,
    "3.1" for statement 1 of a `residual` at 3, "3.0.1" for statement 1 of
    branch 0 of a `parallel` at 3. State names and shapes are PyTorch's
    (`weight`, `bias`, `weight_ih_l0`, `running_mean`, ...).
    """

    name: str
    op: str
    attrs: Mapping[str, Any]
    inputs: tuple[str, ...]  # the names of the nodes it reads, in argument order
    in_shapes: tuple[Shape, ...]  # their output shapes
    out_shape: Shape
    state: tuple[State, ...]  # parameters and buffers, in PyTorch's order
    flops: int  # forward FLOPs per sample (a multiply-add counts 2)
    loc: Loc

    @property
    def in_shape(self) -> Shape:
        return self.in_shapes[0]

    @property
    def params(self) -> dict[str, Shape]:
        """Parameter name -> shape, in PyTorch's order."""
        return {item.name: item.shape for item in self.state if not item.buffer}

    @property
    def buffers(self) -> dict[str, Shape]:
        return {item.name: item.shape for item in self.state if item.buffer}

    @property
    def param_count(self) -> int:
        return sum(_numel(item.shape) for item in self.state if not item.buffer)


@record
class DataConfig:
    """`data`: which dataset, the validation split, where it is read from, normalization."""

    name: str = "mnist"  # "mnist" or "fashion_mnist"
    val: float = 0.0  # fraction of the training set held out for validation
    path: str | None = None  # a directory of IDX files, instead of the packaged data
    normalize: bool = False  # subtract the training mean, divide by its std


@record
class OptimizerConfig:
    """`optimizer`: its name and every hyperparameter, defaults filled in."""

    name: str = "sgd"  # "sgd", "adam" or "adamw"
    lr: float = 0.01
    momentum: float = 0.9  # sgd
    dampening: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 0.0  # adamw's default is 0.01
    betas: tuple[float, float] = (0.9, 0.999)  # adam, adamw
    eps: float = 1e-8  # adam, adamw


@record
class ScheduleConfig:
    """`schedule`: how the learning rate changes over the run."""

    name: str = "none"  # "none", "step" (per epoch) or "cosine" (per step, to 0 at the end)
    every: int = 1  # step: epochs between decays
    gamma: float = 0.1  # step: the decay factor


@record
class AugmentConfig:
    """`augment`: per-image random affine transforms of the training images (runtime.augment)."""

    shift: float = 0.0  # pixels, up to, along each axis
    rotate: float = 0.0  # degrees, up to, either way
    scale: float = 0.0  # zoom factor drawn in [1 - scale, 1 + scale]


@record
class TrainConfig:
    """The train block, resolved: every setting with its default filled in."""

    data: DataConfig = field(default_factory=DataConfig)
    batch: int = 64
    epochs: int = 1
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip: float | None = None  # max global gradient norm, or off
    augment: AugmentConfig | None = None  # off
    seed: int = 0
    locs: Mapping[str, Loc] = field(default_factory=dict)  # setting name -> where it was written


@record
class Graph:
    """A whole checked `.net` program: the DAG of its layers, in topological order."""

    name: str  # the net's name
    path: str  # the file it came from ("<string>" for source text)
    source: str  # the full source text (checkpoints record it)
    input_shape: Shape
    nodes: tuple[Node, ...]  # topological order; the last one is the output
    train: TrainConfig
    input_loc: Loc

    @property
    def output_shape(self) -> Shape:
        return self.nodes[-1].out_shape if self.nodes else self.input_shape

    @property
    def output(self) -> str:
        """The name of the node whose value the network returns."""
        return self.nodes[-1].name if self.nodes else INPUT

    @property
    def param_count(self) -> int:
        return sum(node.param_count for node in self.nodes)

    @property
    def flops(self) -> int:
        return sum(node.flops for node in self.nodes)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def consumers(self) -> dict[str, list[str]]:
        """Node name (or INPUT) -> the names of the nodes that read it, in order."""
        readers: dict[str, list[str]] = {INPUT: [], **{node.name: [] for node in self.nodes}}
        for node in self.nodes:
            for source in node.inputs:
                readers[source].append(node.name)
        return readers


def _numel(shape: Shape) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count
