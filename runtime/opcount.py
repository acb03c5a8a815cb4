"""A callable (one training step, say) -> the GPU operations it would launch, counted on any device.

On a tiny network every GPU operation costs about as much as a kernel:
PyTorch's fills, adds and copies as much as netc's Triton launches. This
counts both without a GPU: a TorchDispatchMode sees every aten op the call
dispatches, and Triton launches are counted by wrapping `run` of Triton's
JIT and interpreter kernel classes (the interpreter's own tensor traffic
inside a launch is not an op of the step). Ops that launch nothing on a GPU
are left out: views and other metadata ops (aliases of their input),
allocations (`empty`), and `detach`-like no-ops; everything else (a fill,
an add, a copy, a reduction, a host read) counts as one operation, as the
profiler would see it on CUDA. The counted call runs for real.

    from netc.runtime.opcount import count_step_ops
    ops = count_step_ops(lambda: step.eager(x, y))   # OpCount: .total, .triton, .aten
    print(ops.total, ops.summary())

`python -m netc.runtime.opcount FILE [--batch N]` prints the count of one
training step of a .net file (Triton backend, netc's optimizer, the CPU).
"""

from __future__ import annotations

import argparse
import contextlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# aten ops that launch no GPU work: allocations and aliasing no-ops (views are found by schema)
_NO_KERNEL = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "detach", "alias",
    "lift_fresh", "set_", "resize_", "is_same_size", "_has_compatible_shallow_copy_type",
    "sym_size", "sym_stride", "sym_numel", "sym_storage_offset", "dim", "size", "stride", "is_nonzero",
    "record_stream", "_version",
    "_record_function_enter", "_record_function_enter_new", "_record_function_exit",  # profiler marks
})


@dataclass
class OpCount:
    """What one call launched: Triton kernels and other aten ops, by name."""

    triton: Counter[str] = field(default_factory=Counter)
    aten: Counter[str] = field(default_factory=Counter)

    @property
    def total(self) -> int:
        return sum(self.triton.values()) + sum(self.aten.values())

    def summary(self) -> str:
        """"27 ops: 16 Triton (name x2, ...), 11 others (add_ x8, ...)", most frequent first."""
        def names(counts: Counter[str]) -> str:
            return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in counts.most_common())

        return (f"{self.total} ops: {sum(self.triton.values())} Triton ({names(self.triton)}), "
                f"{sum(self.aten.values())} others ({names(self.aten)})")


def launches_kernel(func: Any) -> bool:
    """Whether an aten overload would launch GPU work (not a view, allocation or metadata op)."""
    schema = func._schema
    name = schema.name.split("::")[-1]
    if name in _NO_KERNEL:
        return False
    if getattr(func, "is_view", False):
        return False  # the output aliases the input: metadata only
    return True


class _Counter(TorchDispatchMode):
    def __init__(self, counts: OpCount) -> None:
        super().__init__()
        self.counts = counts
        self.in_launch = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        if not self.in_launch and launches_kernel(func):
            self.counts.aten[func._schema.name.split("::")[-1]] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def _counting_launches(mode: _Counter) -> Iterator[None]:
    """Count `kernel[grid](...)` calls (compiled or interpreted); ignore the ops inside them."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    originals = {cls: cls.run for cls in (JITFunction, InterpretedFunction)}

    def counting(original: Callable[..., Any]) -> Callable[..., Any]:
        def run(self: Any, *args: Any, warmup: bool = False, **kwargs: Any) -> Any:
            if warmup:
                return original(self, *args, warmup=warmup, **kwargs)
            name = getattr(self, "__name__", None) or getattr(self.fn, "__name__", "kernel")
            mode.counts.triton[name] += 1
            outer, mode.in_launch = mode.in_launch, True
            try:
                return original(self, *args, warmup=warmup, **kwargs)
            finally:
                mode.in_launch = outer

        return run

    try:
        for cls, original in originals.items():
            cls.run = counting(original)  # type: ignore[method-assign]
        yield
    finally:
        for cls, original in originals.items():
            cls.run = original  # type: ignore[method-assign]


def count_step_ops(call: Callable[[], Any]) -> OpCount:
    """Run `call()` once and count the GPU operations it launches (see the module docstring)."""
    counts = OpCount()
    mode = _Counter(counts)
    with _counting_launches(mode), mode:
        call()
    return counts


def network_step_ops(path: str, batch: int | None = None, device: str = "cpu", warm: int = 1) -> OpCount:
    """The ops of one training step of FILE's network (Triton backend, netc's optimizer, file's clip).

    `warm` steps run first (uncounted): the optimizer creates its state then, as before a capture.
    """
    from netc.dsl.check import parse_path
    from netc.runtime.fastpath import make_train_step
    from netc.runtime.lower import compile as compile_net
    from netc.runtime.train import make_optimizer

    graph = parse_path(path)
    net = compile_net(graph, device=device, backend="triton", seed=graph.train.seed)
    net.train()
    optimizer = make_optimizer(net.parameters(), graph.train.optimizer, "triton")
    size = batch or graph.train.batch
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(size, *graph.input_shape, generator=generator).to(device)
    labels = torch.randint(0, graph.output_shape[-1], (size,), generator=generator).to(device)
    step = make_train_step(net, optimizer, net.loss, (images, labels), capture=False, clip=graph.train.clip)
    for _ in range(warm):
        step(images, labels)
    return count_step_ops(lambda: step(images, labels))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU operations of one training step of a .net file")
    parser.add_argument("file")
    parser.add_argument("--batch", type=int, default=None, help="default: the file's batch size")
    args = parser.parse_args(argv)
    from netc.kernels.config import ensure_backend

    ensure_backend("cpu")  # the interpreter, chosen before triton loads
    print(network_step_ops(args.file, args.batch).summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
