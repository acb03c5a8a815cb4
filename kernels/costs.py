"""A kernel's arguments -> its `launch_metadata` ({"name", "flops", "bytes"}): the cost of one launch.

Every `@triton.jit` kernel declares its own cost on its decorator line,
`@triton.jit(launch_metadata=costs.matmul("M", "N", "K"))`, with one of the
factories below. Triton calls the returned function as `fn(grid, metadata,
args)` (`args`: argument name -> value, tensors included) when a launch hook
is installed (Triton's proton profiler reads "flops" and "bytes"); netc's
launch recorder (`netc.runtime.launches`) calls it for every recorded launch,
and `netc compile --emit plan` and `netc bench --static` show the result.

Conventions, one for every kernel:
- flops: a multiply-add counts 2, as the IR counts a layer's FLOPs; cheap
  element-wise work counts the stated FLOPs per element;
- bytes: the compulsory memory traffic, every distinct tensor argument once at
  its view's size (a launcher passing the same tensor as an unused stand-in
  is counted once); re-reads of tiles through the caches are not counted,
  nor split-K scratch (arguments named in SCRATCH).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

Metadata = dict[str, Any]
MetadataFn = Callable[[Any, Any, Mapping[str, Any]], Metadata]


# split-K workspaces, arrival tickets and partial sums: scratch the kernel mostly leaves in L2
SCRATCH = ("ws_ptr", "ticket_ptr", "part_ptr")


def tensor_bytes(args: Mapping[str, Any]) -> int:
    """Size in bytes of the distinct tensor views among `args` (keyed by address, shape and strides)."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    total = 0
    for name, value in args.items():
        if name in SCRATCH or not (hasattr(value, "data_ptr") and hasattr(value, "element_size")):
            continue
        key = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if key not in seen:
            seen.add(key)
            total += value.numel() * value.element_size()
    return total


def _int(args: Mapping[str, Any], name: str) -> int:
    value = args.get(name, 0)
    return int(getattr(value, "value", value) or 0)  # a tl.constexpr wraps its value


def _metadata(name: str, flops: int, nbytes: int) -> Metadata:
    return {"name": name, "flops": int(flops), "bytes": int(nbytes)}


def matmul(m: str = "M", n: str = "N", k: str = "K") -> MetadataFn:
    """C (M, N) = A (M, K) @ B (K, N): 2*M*N*K FLOPs (epilogues are not counted)."""

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        sizes = _int(args, m), _int(args, n), _int(args, k)
        return _metadata(f"matmul {sizes[0]}x{sizes[1]}x{sizes[2]}", 2 * math.prod(sizes), tensor_bytes(args))

    return cost


def elementwise(count: str = "n", flops_per_element: int = 1, per: str | None = None) -> MetadataFn:
    """`count` elements (an argument name), `flops_per_element` FLOPs each (times argument `per`)."""

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        elements = _int(args, count)
        flops = elements * flops_per_element * (_int(args, per) if per else 1)
        return _metadata(f"elementwise {elements}", flops, tensor_bytes(args))

    return cost


def window(count: str = "total", kh: str = "KH", kw: str = "KW") -> MetadataFn:
    """A KH x KW window per element (pooling): count * KH * KW FLOPs."""

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        elements, area = _int(args, count), _int(args, kh) * _int(args, kw)
        return _metadata(f"window {elements}x{area}", elements * area, tensor_bytes(args))

    return cost


def rows(rows: str = "R", cols: str = "C", flops_per_element: int = 1) -> MetadataFn:
    """A row-wise pass over a (rows, cols) matrix: rows * cols * flops_per_element FLOPs."""

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        r, c = _int(args, rows), _int(args, cols)
        return _metadata(f"rows {r}x{c}", r * c * flops_per_element, tensor_bytes(args))

    return cost


def conv2d(kind: str) -> MetadataFn:
    """Implicit-GEMM convolution ("fwd", "bwd_input", "bwd_weight"); the grid's third axis is the groups
    (times `splits`, when the launch splits the reduction).

    2 * (output pixels) * (output channels per group) * (input channels per
    group) * kernel area * groups, the forward's FLOPs, for each of the three.
    """
    if kind not in ("fwd", "bwd_input", "bwd_weight"):
        raise ValueError(f"unknown convolution kind {kind!r}")

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        groups = (int(grid[2]) if len(grid) > 2 else 1) // max(_int(args, "splits"), 1)
        per_output = 2 * _int(args, "OCG") * _int(args, "CG") * _int(args, "KH") * _int(args, "KW") * groups
        if kind == "fwd":  # M = N * OH * OW output pixels
            outputs = _int(args, "M")
        elif kind == "bwd_input":  # M = N * H * W input pixels; the useful work is the forward's
            images = _int(args, "M") // max(_int(args, "H") * _int(args, "W"), 1)
            outputs = images * _int(args, "OH") * _int(args, "OW")
        else:  # K = N * OH * OW, the reduction length
            outputs = _int(args, "K")
        return _metadata(f"conv2d {kind} {outputs} pixels", outputs * per_output, tensor_bytes(args))

    return cost


def recurrence(batch: str = "N", steps: str = "T", hidden: str = "H", gates: str = "G",
               directions: str = "D") -> MetadataFn:
    """A whole-sequence recurrent kernel: h_{t-1} (N, H) @ W_hh^T (H, G*H) at each of T steps, per direction.

    The cell's element-wise math (about 10 FLOPs per gate element) is counted too.
    """

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        n, t, h, g = (_int(args, name) for name in (batch, steps, hidden, gates))
        flops = (2 * n * t * h * g * h + 10 * n * t * g * h) * max(_int(args, directions), 1)
        return _metadata(f"recurrence N={n} T={t} H={h} G={g}", flops, tensor_bytes(args))

    return cost


def cell_step(batch: str = "N", hidden: str = "H", gates: str = "G") -> MetadataFn:
    """One time step of a recurrent cell's element-wise math (about 10 FLOPs per gate element).

    Bytes: the step's slices of the (N, T, ...) sequence tensors, not the whole tensors.
    """

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        n, h, g = (_int(args, name) for name in (batch, hidden, gates))
        steps = max(_int(args, "T"), 1)
        return _metadata(f"cell step N={n} H={h} G={g}", 10 * n * g * h, tensor_bytes(args) // steps)

    return cost


def flat_update(flops_per_element: int, grads: str = "g") -> MetadataFn:
    """A pass over the parameters one optimizer launch covers, each gradient where autograd left it.

    The gradient arguments (`g0`, `g1`, ...: distinct tensors, as padding
    repeats one) give the element count; bytes: the gradients plus that many
    elements of every flat buffer (parameters, state) among the arguments.
    Scalars and small tables (lr, step counts, clip partials) are not counted.
    """
    is_grad = re.compile(rf"{re.escape(grads)}\d+$")

    def cost(grid: Any, metadata: Any, args: Mapping[str, Any]) -> Metadata:
        gradients = _distinct(value for name, value in args.items() if is_grad.match(name))
        elements = sum(g.numel() for g in gradients) or _int(args, "end") - _int(args, "start")
        taken = {g.data_ptr() for g in gradients}
        buffers = [buffer for buffer in _distinct(args.values())
                   if buffer.data_ptr() not in taken and buffer.numel() >= elements]
        size = (gradients or buffers or [None])[0].element_size() if (gradients or buffers) else 4
        nbytes = elements * size * (len(buffers) + (1 if gradients else 0))
        return _metadata(f"flat update {elements}", elements * flops_per_element, nbytes)

    return cost


def _distinct(values: Any) -> list[Any]:
    """The tensors among `values`, each storage address once."""
    found: dict[int, Any] = {}
    for value in values:
        if hasattr(value, "data_ptr") and hasattr(value, "element_size"):
            found.setdefault(value.data_ptr(), value)
    return list(found.values())
