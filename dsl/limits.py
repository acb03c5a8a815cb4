"""Sizes a checked program may have -> messages for what no machine can run, and its memory estimate.

The checker calls these so that a size the runtime cannot represent (beyond
int64 arithmetic, beyond a PyTorch tensor, beyond the Triton kernels' 32-bit
dimensions) is an error at the statement that asks for it, not an allocator
traceback later. `estimate_memory` is plain arithmetic over the Graph (no
torch), so `netc compile` can print it and `netc train/check/bench` can
refuse before allocating (runtime/memory.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from netc.dsl.record import record

INT64_MAX = 2**63 - 1  # the largest size PyTorch (and int64 arithmetic) can hold
MAX_DIM = 2**31 - 1  # one dimension of a tensor: the kernels index with 32-bit integers
MAX_LAYERS = 100_000  # nodes after expanding every repeat, residual and parallel
MAX_RECURRENT_LAYERS = 100  # `layers=` of rnn, lstm and gru
FLOAT_BYTES = 4  # float32 everywhere on the training path
DATASET_SAMPLES = {"mnist": 70_000, "fashion_mnist": 70_000}  # moved to the device whole


def numel(shape: Sequence[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def shape_problem(shape: Sequence[int], what: str) -> str | None:
    """Why a tensor of this per-sample shape cannot exist, or None (`what`: "the output", ...)."""
    for dim in shape:
        if dim > MAX_DIM:
            return (f"{what} {list(shape)} has a dimension of {dim:,}; netc allows at most {MAX_DIM:,} "
                    "(2**31 - 1) per dimension")
    if numel(shape) > INT64_MAX:
        return (f"{what} {list(shape)} would hold {_big(numel(shape))} values; a tensor holds at most "
                f"{INT64_MAX:,} (2**63 - 1)")
    return None


def node_problem(out_shape: Sequence[int], params: dict[str, Sequence[int]]) -> str | None:
    """Why a checked layer cannot exist: its output or one of its parameters is too large."""
    problem = shape_problem(out_shape, "the output")
    for name, shape in params.items():
        problem = problem or shape_problem(shape, f"parameter '{name}'")
    return problem


def _big(count: int) -> str:
    return f"{count:,}" if count < 10**18 else f"about 10^{len(str(count)) - 1}"


# --- layers after expansion -------------------------------------------------------------------------

def expanded_layers(statements: Iterable[Any]) -> int:
    """How many nodes `statements` become: repeat bodies times their count, residual and parallel
    bodies plus their merge node, through every level (arithmetic, never an expansion)."""
    total = 0
    for statement in statements:
        total += _expanded(statement)
    return total


def _expanded(statement: Any) -> int:
    if hasattr(statement, "branches"):  # parallel: every branch, plus the merge
        return 1 + sum(expanded_layers(branch.body) for branch in statement.branches)
    if hasattr(statement, "count"):  # repeat: a count that is not a positive int is reported elsewhere
        value = getattr(statement.count, "value", 1)
        count = value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 1
        return count * expanded_layers(statement.body)
    if hasattr(statement, "body"):  # residual: the body, plus the add
        return 1 + expanded_layers(statement.body)
    return 0 if type(statement).__name__ == "Input" else 1


def layer_count_problem(statements: Sequence[Any]) -> tuple[Any, str] | None:
    """(statement, message) when the net expands to more than MAX_LAYERS nodes, else None.

    The statement is the innermost block that is too large on its own, or else the
    top-level statement at which the running count passes the limit.
    """
    running = 0
    for statement in statements:
        own = _expanded(statement)
        running += own
        if running > MAX_LAYERS:
            culprit = _innermost_too_large(statement) if own > MAX_LAYERS else statement
            size = _expanded(culprit) if own > MAX_LAYERS else running
            noun = _noun(culprit)
            return culprit, (f"{noun} makes the net {_big(size)} layers long after expansion; netc allows "
                             f"at most {MAX_LAYERS:,} (every repeat, residual and parallel counted)")
    return None


def _innermost_too_large(statement: Any) -> Any:
    children = list(getattr(statement, "body", ()))
    for branch in getattr(statement, "branches", ()):
        children.extend(branch.body)
    for child in children:
        if _expanded(child) > MAX_LAYERS:
            return _innermost_too_large(child)
    return statement


def _noun(statement: Any) -> str:
    kind = type(statement).__name__.lower()
    return f"this `{kind}`" if kind in ("repeat", "residual", "parallel") else "this statement"


# --- memory -------------------------------------------------------------------------------------------

# optimizer -> float32 tensors of state per parameter value (sgd: the momentum buffer, when used)
_OPTIMIZER_STATES = {"sgd": 1, "adam": 2, "adamw": 2, "none": 0}
_GATES = {"rnn": 1, "lstm": 5, "gru": 4}  # per step and layer: gate pre-activations kept for backward


@record
class MemoryEstimate:
    """Bytes a training step holds on the device, by kind (an estimate: allocator overheads and
    temporary buffers of the kernels are not counted)."""

    parameters: int
    gradients: int
    optimizer: int
    activations: int  # every layer's output for the batch, and its gradient
    data: int  # the dataset, kept on the device whole

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer + self.activations + self.data

    def describe(self) -> str:
        parts = [("parameters", self.parameters), ("gradients", self.gradients),
                 ("optimizer state", self.optimizer), ("activations", self.activations), ("data", self.data)]
        return ", ".join(f"{name} {format_bytes(size)}" for name, size in parts if size)


def estimate_memory(graph: Any, batch: int, optimizer: str = "none", momentum: float = 0.0,
                    training: bool = True) -> MemoryEstimate:
    """The memory of training `graph` (a checked Graph) with `batch` samples per step."""
    nodes = list(_all_nodes(graph.nodes))
    params = sum(numel(shape) for node in nodes for shape in node.params.values())
    buffers = sum(numel(shape) for node in nodes for shape in getattr(node, "buffers", {}).values())
    states = _OPTIMIZER_STATES.get(optimizer, 2)
    if optimizer == "sgd" and momentum == 0:
        states = 0
    per_sample = numel(graph.input_shape) + sum(numel(node.out_shape) + _recurrent(node) for node in nodes)
    activations = batch * per_sample * FLOAT_BYTES * (2 if training else 1)
    samples = DATASET_SAMPLES.get(graph.train.data.name, 0) if graph.train.data.path is None else 0
    return MemoryEstimate(
        parameters=(params + buffers) * FLOAT_BYTES,
        gradients=params * FLOAT_BYTES if training else 0,
        optimizer=states * params * FLOAT_BYTES if training else 0,
        activations=activations,
        data=samples * (numel(graph.input_shape) * FLOAT_BYTES + 8) if training else 0,
    )


def _all_nodes(nodes: Iterable[Any]) -> Iterable[Any]:
    for node in nodes:
        yield node
        yield from _all_nodes(getattr(node, "body", ()))  # a residual's body, in the older IR


def _recurrent(node: Any) -> int:
    """Per-sample values a recurrent layer keeps besides its output: each step's gates and states."""
    if node.op not in _GATES:
        return 0
    steps = node.in_shape[0]
    directions = 2 if node.attrs.get("bidirectional") else 1
    return steps * node.attrs["hidden"] * directions * node.attrs.get("layers", 1) * (_GATES[node.op] + 1)


def format_bytes(count: int) -> str:
    """1234567 -> '1.2 MB' (decimal units, as disks and `free -h --si` count)."""
    for unit, size in (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3)):
        if count >= size:
            value = count / size
            if value >= 10_000:
                return f"{_big(count)} bytes"
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{count} bytes"
