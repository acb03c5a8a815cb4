"""A callable (one training step, say) -> the GPU operations it would launch, counted on any device.

On a tiny network every GPU operation costs about as much as a kernel:
PyTorch's fills, adds and copies as much as netc's Triton launches. This
counts both without a GPU, with netc's one launch recorder and operator
counter (runtime/launches.py): a TorchDispatchMode sees every aten op the
call dispatches, and Triton launches are recorded by wrapping `run` of
Triton's JIT and interpreter kernel classes (the interpreter's own tensor
traffic inside a launch is not an op of the step). Ops that launch nothing on a GPU
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
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

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


def count_step_ops(call: Callable[[], Any]) -> OpCount:
    """Run `call()` once and count the GPU operations it launches (see the module docstring).

    netc's one launch recorder and operator counter (runtime/launches.py) do the counting.
    """
    from netc.runtime.launches import DeviceOpCounter, LaunchRecorder, pytorch_op_name

    counts = OpCount()
    with LaunchRecorder(launch=True) as launches, DeviceOpCounter() as ops:
        call()
    counts.triton.update(launch.kernel for launch in launches.launches)
    counts.aten.update(pytorch_op_name(op) for op in ops.ops)
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
