"""`netc bench FILE` -> steps/s of full training steps: netc's Triton path vs PyTorch eager vs torch.compile.

Every contender trains the same network (same seed, same weights at the
start) with the file's optimizer, batch size and loss on batches already on
the device: warm-up steps first, then the median of the timed steps (CUDA
events on CUDA, the host clock on the CPU). Then the time of one epoch of
the data-on-device loop (the file's training split, or synthetic data of its
shape when the dataset is absent; the report says which), on CUDA also as
one captured graph, and the launches a step makes (Triton kernels from
Python everywhere; every GPU operation, by the profiler, on CUDA).

On the CPU the Triton kernels run through the interpreter and torch.compile
needs a C++ toolchain and minutes of compiling, so the defaults there are a
few steps, no compile contenders (`--compile` adds them) and an epoch
time estimated from the step time instead of measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from netc.dsl.errors import DataError
from netc.dsl.ir import Graph
from netc.runtime.bench_contenders import (
    CONTENDERS,
    Contender,
    build_contender,
    count_device_ops,
    count_triton_launches,
)
from netc.runtime.checkpoint import versions
from netc.runtime.fastpath import StepSequence, TrainStep

CUDA_STEPS, CUDA_WARMUP = 200, 25  # reduce-overhead records its graphs in the first warm-up calls
CPU_STEPS, CPU_WARMUP = 3, 1
CPU_BATCH = 4  # the interpreter takes about a minute per LeNet step at batch 100; --batch overrides
ROTATING_BATCHES = 4  # distinct input batches, so no contender runs on one cached batch


@dataclass
class Result:
    """One contender's timing; `steps_per_s` is 1000 / `median_ms`."""

    name: str
    backend: str
    mode: str
    optimizer: str
    median_ms: float
    min_ms: float
    host_ms: float  # median time for the host to issue a step (launch overhead, on CUDA)
    steps_per_s: float
    samples_per_s: float
    epoch_s: float | None = None
    epoch_graph_s: float | None = None  # the same epoch as one CUDA graph (fastpath.StepSequence)
    epoch_how: str = ""  # "measured" or "estimated" (steps per epoch x median step)
    device_ops: int | None = None  # kernels + copies + memsets the profiler saw in one step (CUDA)
    triton_launches: dict[str, int] | None = None  # Triton kernel -> launches in one eager step
    note: str = ""


@dataclass
class Report:
    file: str
    net: str
    device: str
    device_name: str
    batch: int
    file_batch: int  # the file's batch size (the CPU default runs a smaller one)
    steps: int
    warmup: int
    timer: str
    versions: dict[str, str]
    epoch_data: str
    epoch_steps: int
    results: list[Result] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # contender -> why it did not run
    failed: dict[str, str] = field(default_factory=dict)  # contender -> its error
    ratios: dict[str, float] = field(default_factory=dict)  # "netc/<other>": netc steps/s over other's

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def run(args: argparse.Namespace) -> int:
    """The `netc bench` command; returns 1 when a contender failed (the others are still reported)."""
    from netc.dsl.check import parse_path
    from netc.runtime.lower import resolve_target
    from netc.runtime.memory import check_fits

    if getattr(args, "static", False):  # nothing runs on a GPU: compile for it and estimate
        from netc.runtime import static_bench

        return static_bench.run(args)
    known = [contender.name for contender in CONTENDERS]
    unknown = [name for name in args.contenders or [] if name not in known]
    if unknown:
        raise DataError(f"unknown contender {unknown[0]!r}: choose from {', '.join(known)}")
    graph = parse_path(args.file)
    device, _, _ = resolve_target(args.device, "torch")
    optimizer = graph.train.optimizer  # refuse what cannot fit before any contender allocates
    check_fits(graph, args.batch or graph.train.batch, device, optimizer.name, optimizer.momentum, copies=2)
    if device.type == "cpu":
        resolve_target(device, "triton")  # chooses Triton's interpreter before any kernel loads
    report = bench(graph, device, args.steps, args.compile, args.batch, args.contenders,
                   progress=_progress)
    if args.json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        print(format_report(report))
    for name, error in report.failed.items():
        print(f"error: contender {name} failed: {error}", file=sys.stderr)
    return 1 if report.failed else 0


def bench(
    graph: Graph,
    device: torch.device,
    steps: int | None = None,
    with_compile: bool = False,
    batch: int | None = None,
    only: list[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Time every contender that applies to `device`; see the module docstring.

    `progress` gets one line per contender as it finishes, so a run cut
    short (a timeout on the GPU machine) still leaves its numbers behind.
    """
    on_cuda = device.type == "cuda"
    steps = steps or (CUDA_STEPS if on_cuda else CPU_STEPS)
    batch = batch or (graph.train.batch if on_cuda else min(graph.train.batch, CPU_BATCH))
    images, labels, data_note = epoch_data(graph, device) if on_cuda else (None, None, "")
    train_count = images.shape[0] if images is not None else _split_size(graph)
    report = _new_report(graph, device, steps, batch, train_count, data_note)
    inputs = _rotating_batches(graph, device, batch)
    for contender in CONTENDERS:
        why_not = _skip_reason(contender, on_cuda, with_compile, only)
        if why_not:
            report.skipped[contender.name] = why_not
            continue
        line = _run_contender(report, contender, graph, device, inputs, images, labels)
        if progress is not None:
            progress(line)
        _release(device)
    report.ratios = ratios(report.results)
    return report


def _new_report(graph: Graph, device: torch.device, steps: int, batch: int, train_count: int,
                data_note: str) -> Report:
    """An empty Report: the run's settings, before any contender runs."""
    on_cuda = device.type == "cuda"
    return Report(
        file=graph.path, net=graph.name, device=device.type, device_name=_device_name(device),
        batch=batch, file_batch=graph.train.batch, steps=steps, warmup=CUDA_WARMUP if on_cuda else CPU_WARMUP,
        timer="CUDA events, median per step" if on_cuda else "host clock, median per step",
        versions=_versions(), epoch_steps=train_count // batch,
        # an interpreted epoch takes hours: on the CPU it is estimated from the step time
        epoch_data=data_note or f"not run on the CPU; estimated for the {train_count} samples of the "
        f"{graph.train.data.name} training split",
    )


def _run_contender(
    report: Report, contender: Contender, graph: Graph, device: torch.device,
    inputs: list[tuple[torch.Tensor, torch.Tensor]], images: torch.Tensor | None, labels: torch.Tensor | None,
) -> str:
    """Measure one contender into `report` (its result, or its failure); returns a progress line."""
    try:
        result = _measure(contender, graph, device, inputs, (report.steps, report.warmup), images, labels)
    except Exception as error:  # one broken contender must not hide the others' numbers
        report.failed[contender.name] = f"{type(error).__name__}: {error}"
        return f"{contender.name}: FAILED {report.failed[contender.name]}"
    if images is None:
        result.epoch_s, result.epoch_how = result.median_ms * report.epoch_steps / 1000.0, "estimated"
    report.results.append(result)
    return f"{contender.name}: {result.median_ms:.4g} ms/step ({result.mode}), epoch " \
        f"{_duration(result.epoch_s)} ({result.epoch_how})"


def _progress(line: str) -> None:
    print(f"bench: {line}", file=sys.stderr, flush=True)


def _skip_reason(contender: Contender, on_cuda: bool, with_compile: bool, only: list[str] | None) -> str:
    if only is not None and contender.name not in only:
        return "not asked for"
    if contender.cuda_only and not on_cuda:
        return "CUDA only (it replays CUDA graphs)"
    if contender.compiled and not on_cuda and not with_compile:
        return "skipped on the CPU: torch.compile builds C++ there and takes minutes (--compile adds it)"
    return ""


def _measure(
    contender: Contender,
    graph: Graph,
    device: torch.device,
    inputs: list[tuple[torch.Tensor, torch.Tensor]],
    counts: tuple[int, int],
    images: torch.Tensor | None,
    labels: torch.Tensor | None,
) -> Result:
    """Build, warm up and time one contender; with data on the device, time one epoch too."""
    runner = build_contender(contender, graph, device, inputs[0])
    times, host = time_steps(runner.step, inputs, *counts, device)
    median = statistics.median(times)
    result = Result(
        name=contender.name, backend=contender.backend, mode=runner.mode, optimizer=runner.optimizer,
        median_ms=median, min_ms=min(times), host_ms=statistics.median(host), steps_per_s=1000.0 / median,
        samples_per_s=1000.0 * inputs[0][0].shape[0] / median, note=runner.note,
    )
    if runner.fast is not None and contender.backend == "triton":
        result.triton_launches = count_triton_launches(runner.fast.eager, *inputs[0])
    if images is not None and labels is not None:
        result.epoch_s = time_epoch(runner, images, labels, inputs[0][0].shape[0])
        result.epoch_how = "measured"
        result.device_ops = count_device_ops(runner.step, *inputs[0])
        if runner.fast is not None and runner.fast.mode == "graph":
            try:
                result.epoch_graph_s = time_epoch_graph(runner.fast, images, labels)
            except Exception as error:  # an extra: the per-step numbers above stand without it
                result.note = "; ".join(filter(None, [result.note, f"whole-epoch graph failed: {error}"]))
    return result


def time_steps(
    step: Any, inputs: list[tuple[torch.Tensor, torch.Tensor]], steps: int, warmup: int,
    device: torch.device,
) -> tuple[list[float], list[float]]:
    """(ms of each step, host ms to issue each step) over `steps` steps after `warmup` untimed ones.

    On CUDA a step's time is the gap between CUDA events recorded at its two
    boundaries (launch gaps included); the host time is how long the Python
    call took to return, the launch overhead when the GPU keeps up. On the
    CPU both are the host clock's.
    """
    for index in range(warmup):
        step(*inputs[index % len(inputs)])
    on_cuda = device.type == "cuda"
    events = [torch.cuda.Event(enable_timing=True) for _ in range(steps + 1)] if on_cuda else []
    host = []
    if on_cuda:
        torch.cuda.synchronize(device)
        events[0].record()
    for index in range(steps):
        start = time.perf_counter()
        step(*inputs[index % len(inputs)])
        host.append((time.perf_counter() - start) * 1000.0)
        if on_cuda:
            events[index + 1].record()
    if not on_cuda:
        return host, host
    torch.cuda.synchronize(device)
    return [events[i].elapsed_time(events[i + 1]) for i in range(steps)], host


def time_epoch(runner: Any, images: torch.Tensor, labels: torch.Tensor, batch: int) -> float:
    """Seconds of one shuffled epoch over full batches of the data on the device (CUDA events)."""
    order = torch.randperm(images.shape[0], device=images.device)[: images.shape[0] // batch * batch]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize(images.device)
    start.record()
    runner.epoch(images, labels, batch, order)
    end.record()
    torch.cuda.synchronize(images.device)
    return start.elapsed_time(end) / 1000.0


def time_epoch_graph(step: TrainStep, images: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Seconds of one epoch captured whole as a graph (best of 3 replays; the capture untimed)."""
    batch = step.static_x.shape[0]
    count = images.shape[0] // batch
    sequence = StepSequence(step, images, labels, count)
    if not sequence.captured:
        return None
    times = []
    for _ in range(3):
        order = torch.randperm(images.shape[0], device=images.device)[: count * batch]
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        sequence.run(order)
        end.record()
        torch.cuda.synchronize(images.device)
        times.append(start.elapsed_time(end) / 1000.0)
    return min(times)


def ratios(results: list[Result]) -> dict[str, float]:
    """netc's steps/s over each other contender's (above 1: netc is faster)."""
    by_name = {result.name: result for result in results}
    if "netc" not in by_name:
        return {}
    ours = by_name["netc"].steps_per_s
    return {f"netc/{name}": ours / result.steps_per_s for name, result in by_name.items() if name != "netc"}


def epoch_data(graph: Graph, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(images, labels, description): the file's training split on the device, else synthetic data."""
    classes = graph.output_shape[-1]
    config = graph.train.data
    try:
        from netc.runtime.data import prepare

        splits = prepare(config, tuple(graph.input_shape), classes, graph.train.seed, device)
        return splits.train_x, splits.train_y, f"{config.name} training split ({splits.train_x.shape[0]} " \
            "samples, on the device)"
    except Exception as error:  # the dataset is absent (e.g. the GPU machine): same shape, random values
        count = _split_size(graph)
        generator = torch.Generator().manual_seed(graph.train.seed)
        images = torch.rand((count, *graph.input_shape), generator=generator).to(device)
        labels = torch.randint(0, classes, (count,), generator=generator).to(device)
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        return images, labels, f"synthetic ({count} random samples of {list(graph.input_shape)}; " \
            f"{config.name} unavailable: {reason})"


def _split_size(graph: Graph) -> int:
    """Training samples after the validation hold-out, for the 60000-image MNIST-style sets."""
    return 60000 - int(round(60000 * graph.train.data.val))


def _rotating_batches(
    graph: Graph, device: torch.device, batch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    classes = graph.output_shape[-1]
    return [(torch.rand((batch, *graph.input_shape), device=device),
             torch.randint(0, classes, (batch,), device=device)) for _ in range(ROTATING_BATCHES)]


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return platform.processor() or platform.machine()


def _versions() -> dict[str, str]:
    """What a checkpoint records (python, torch, triton, ...), plus the commit being measured."""
    found = {"triton": "absent", **versions()}
    try:
        found["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                         text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        found["commit"] = "unknown"
    return found


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1.0:
        return f"{seconds * 1000.0:.2f} ms"
    return f"{seconds:.1f} s" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def _batch_note(report: Report) -> str:
    if report.batch == report.file_batch:
        return ""
    return f" (the file says {report.file_batch}; the CPU default is smaller: the interpreter is slow)"


def format_report(report: Report) -> str:
    """The human-readable table: one row per contender, then epochs, skips and failures."""
    lines = [
        f"netc bench {report.file}: net {report.net} on {report.device} ({report.device_name}), "
        f"batch {report.batch}{_batch_note(report)}, {report.steps} timed steps after {report.warmup} "
        f"warm-up, {report.timer}",
        f"{'contender':<18}{'backend':<9}{'mode':<25}{'ms/step':>10}{'host ms':>10}{'steps/s':>11}"
        f"{'samples/s':>12}{'netc is':>10}",
    ]
    for result in report.results:
        ratio = report.ratios.get(f"netc/{result.name}", 1.0 if result.name == "netc" else None)
        shown = f"{ratio:>9.3g}x" if ratio is not None else f"{'-':>10}"
        lines.append(f"{result.name:<18}{result.backend:<9}{result.mode:<25}{result.median_ms:>10.3f}"
                     f"{result.host_ms:>10.3f}{result.steps_per_s:>11.4g}{result.samples_per_s:>12.4g}{shown}")
    lines.append(f"epoch ({report.epoch_steps} steps; data: {report.epoch_data}):")
    for result in report.results:
        ops = f", {result.device_ops} GPU ops per step" if result.device_ops is not None else ""
        if result.triton_launches is not None:
            ops += f", {sum(result.triton_launches.values())} Triton launches per step"
        if result.epoch_graph_s is not None:
            ops += f"; {_duration(result.epoch_graph_s)} as one CUDA graph"
        lines.append(f"  {result.name:<16}{_duration(result.epoch_s):>12} ({result.epoch_how}{ops})")
    lines += ["optimizers: " + ", ".join(f"{r.name}={r.optimizer}" for r in report.results)]
    lines += [f"note: {r.name}: {r.note}" for r in report.results if r.note]
    lines += [f"skipped {name}: {why}" for name, why in report.skipped.items()]
    lines += [f"FAILED {name}: {error}" for name, error in report.failed.items()]
    return "\n".join(lines)
