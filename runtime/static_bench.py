"""`netc bench FILE --static` -> an ESTIMATE of one training step on an H200, from sm_90 compiles, no GPU.

One training step (forward, loss, backward, clipping, optimizer) is traced
on the CPU (`runtime.plan.trace_step`); every Triton launch's exact GPU
specialization is compiled for the target with Triton's ahead-of-time
compiler (`runtime.static_compile`), and its cubin read for registers,
spilled (local) bytes, shared memory and tensor-core instructions. Each
launch then gets a time from the model below; the PyTorch operators of the
step that would launch GPU work (fills, copies, gradient additions) are
counted too, and the same count is made for PyTorch eager (the network on
backend="torch" with torch.optim's fused optimizer).

The time model (every constant in `runtime.gpu_spec`), per launch:
    work   = max(flops / peak, bytes / HBM bandwidth)
             peak: tf32 (or fp16) tensor cores when the SASS has HMMA/HGMMA,
             fp64 tensor cores for DMMA, else the CUDA cores' fp32/fp64 peak
    fill   = (SMs used / 132) x wave efficiency x latency hiding, where
             SMs used = min(CTAs, 132), wave efficiency = CTAs / (waves x
             resident slots used), latency hiding = min(1, resident warps per
             SM / 16); residency from registers, shared memory and warps
    time   = launch overhead (2 us) + work / fill
A PyTorch operator costs the launch overhead plus its tensors' bytes at HBM
bandwidth. It is a model: no caches, no instruction mix, no overlap between
kernels. An estimate, labelled so everywhere.
"""

from __future__ import annotations

import argparse
from collections import Counter
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from netc.dsl.ir import Graph
from netc.runtime import gpu_spec
from netc.runtime.launches import DeviceOp
from netc.runtime.plan import Launch, trace_step
from netc.runtime.static_compile import compile_all, specialization

ESTIMATE = "ESTIMATE (static model, no GPU ran)"


@dataclass
class Row:
    """One Triton launch of the step, with its compiled facts and estimated time."""

    layer: str
    phase: str
    kernel: str
    grid: tuple[int, ...]
    ctas: int
    warps: int
    stages: int
    flops: int | None  # None: the kernel has no launch_metadata
    bytes: int | None
    regs: int | None = None  # per thread
    spill_bytes: int | None = None  # stack frame + local memory per thread: register spills
    shared: int | None = None  # bytes per CTA
    tensor_cores: str = ""  # "HGMMA x4", "" when the SASS has none
    ctas_per_sm: int | None = None
    waves: int | None = None
    est_us: float | None = None
    bound: str = ""  # "compute", "memory" or "launch"
    notes: list[str] = field(default_factory=list)


@dataclass
class StaticReport:
    file: str
    net: str
    batch: int
    target: str
    gpu: str
    label: str
    rows: list[Row]
    other_ops: list[dict[str, Any]]  # the non-Triton GPU operations of the step
    eager_ops: list[dict[str, Any]]  # PyTorch eager's GPU operations for the same step
    totals: dict[str, Any]
    model: str

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def residency(regs: int, shared: int, warps: int) -> int:
    """CTAs of this kernel one SM holds at once (registers, shared memory, threads, the block limit)."""
    unit = gpu_spec.REGISTER_ALLOCATION_UNIT
    per_warp = max(1, math.ceil(regs * gpu_spec.WARP_SIZE / unit)) * unit
    by_regs = gpu_spec.REGISTERS_PER_SM // (per_warp * warps)
    by_shared = gpu_spec.SHARED_PER_SM // (shared + gpu_spec.SHARED_RESERVED_PER_BLOCK)
    by_threads = gpu_spec.MAX_THREADS_PER_SM // (warps * gpu_spec.WARP_SIZE)
    return max(0, min(by_regs, by_shared, by_threads, gpu_spec.MAX_BLOCKS_PER_SM))


def peak_flops(sass: dict[str, int], dtypes: set[str]) -> tuple[float, str]:
    """(FLOP/s, the units that run it) from the SASS: tensor cores if it has MMA instructions."""
    if sass.get("DMMA"):
        return gpu_spec.FP64_TENSOR_FLOPS, f"DMMA x{sass['DMMA']}"
    for op in ("HGMMA", "HMMA"):
        if sass.get(op):
            half = bool(dtypes & {"*fp16", "*bf16"})
            return (gpu_spec.FP16_TENSOR_FLOPS if half else gpu_spec.TF32_TENSOR_FLOPS), f"{op} x{sass[op]}"
    if "*fp64" in dtypes:
        return gpu_spec.FP64_FLOPS, ""
    return gpu_spec.FP32_FLOPS, ""


def estimate(row: Row, facts: dict[str, Any], dtypes: set[str]) -> None:
    """Fill `row`'s compiled facts and its estimated time (the model in the module docstring)."""
    # ptxas puts spilled registers in the thread's stack frame (STACK) or local memory (LOCAL);
    # Triton kernels keep no arrays there, so both are spills
    row.regs, row.shared = facts["regs"], facts["shared"]
    row.spill_bytes = facts["local"] + facts.get("stack", 0)
    peak, row.tensor_cores = peak_flops(facts["sass"], dtypes)
    resident = residency(row.regs, row.shared, row.warps)
    row.ctas_per_sm = resident
    if resident == 0:
        row.notes.append("does not fit on an SM")
        return
    slots = resident * gpu_spec.SM_COUNT
    row.waves = math.ceil(row.ctas / slots)
    used = min(row.ctas, gpu_spec.SM_COUNT)
    per_sm = min(resident, math.ceil(row.ctas / used))  # CTAs resident per busy SM in a full wave
    wave_efficiency = row.ctas / (row.waves * used * per_sm)
    hiding = min(1.0, per_sm * row.warps / gpu_spec.LATENCY_HIDING_WARPS)
    fill = used / gpu_spec.SM_COUNT * wave_efficiency * hiding
    compute_us = (row.flops or 0) / peak * 1e6
    memory_us = (row.bytes or 0) / gpu_spec.HBM_BYTES_PER_S * 1e6
    work_us = max(compute_us, memory_us) / fill
    row.est_us = gpu_spec.LAUNCH_OVERHEAD_US + work_us
    row.bound = "launch" if work_us < gpu_spec.LAUNCH_OVERHEAD_US else \
        "compute" if compute_us >= memory_us else "memory"
    if row.spill_bytes:
        spill_ops = facts["sass"].get("LDL", 0) + facts["sass"].get("STL", 0)
        row.notes.append(f"spills {row.spill_bytes} B/thread ({spill_ops} LDL/STL in the SASS)")


def _row(launch: Launch) -> Row:
    options = launch.record.options
    row = Row(launch.layer, launch.phase, launch.kernel, launch.grid, math.prod(launch.grid),
              int(options.get("num_warps", 4)), int(options.get("num_stages", 3)), launch.flops, launch.bytes)
    if launch.flops is None:
        row.notes.append("no launch_metadata")
    return row


def _ops(ops: list[DeviceOp]) -> list[dict[str, Any]]:
    """PyTorch GPU operations -> rows with the launch-overhead estimate of each."""
    return [{"layer": op.tag[0], "phase": op.tag[1], "op": op.op, "sync": op.sync, "site": op.site,
             "est_us": gpu_spec.LAUNCH_OVERHEAD_US + op.bytes / gpu_spec.HBM_BYTES_PER_S * 1e6}
            for op in ops]


RECURRENT_OPS = ("rnn", "lstm", "gru")


def _as_cudnn(ops: list[DeviceOp], graph: Graph) -> list[DeviceOp]:
    """PyTorch's recurrent layers as CUDA runs them: one cuDNN call per pass, not the CPU's per-step ops.

    On the CPU `torch.nn.RNN` decomposes into a few operators per time step;
    on CUDA it is one `_cudnn_rnn` (forward) and one `_cudnn_rnn_backward`
    call, each launching a few kernels of its own (not counted: unknown here).
    """
    from netc.runtime.lower import walk

    recurrent = {node.name for node in walk(graph.nodes) if node.op in RECURRENT_OPS}
    kept: list[DeviceOp] = []
    for op in ops:
        layer, phase = op.tag
        if layer not in recurrent:
            kept.append(op)
            continue
        name = "aten._cudnn_rnn" if phase == "forward" else "aten._cudnn_rnn_backward"
        name += " (as on CUDA)"
        if kept and kept[-1].op == name and kept[-1].tag == op.tag:
            kept[-1].bytes = max(kept[-1].bytes, op.bytes)
        else:
            kept.append(DeviceOp(name, op.tag, False, op.bytes, op.site))
    return kept


def static_bench(
    graph: Graph, batch: int | None = None, capability: int = gpu_spec.CAPABILITY
) -> StaticReport:
    """Trace, compile, read and model one training step of `graph` at `batch` (default: the file's)."""
    step = trace_step(graph, batch, "gpu")
    specs = [specialization(launch.record, step.kernels[launch.record.qualified], capability)
             for launch in step.launches]
    distinct = sorted({json.dumps(spec, sort_keys=True) for spec in specs})
    facts = dict(zip(distinct, compile_all([json.loads(text) for text in distinct]), strict=True))
    rows = []
    for launch, spec in zip(step.launches, specs, strict=True):
        row = _row(launch)
        fact = facts[json.dumps(spec, sort_keys=True)]
        if "error" in fact:
            row.notes.append(f"compile error: {fact['error'].splitlines()[-1][:200]}")
        else:
            estimate(row, fact, {kind for kind in spec["signature"].values() if kind.startswith("*")})
        rows.append(row)
    eager = trace_step(graph, batch, "gpu", backend="torch")
    other, eager_ops = _ops(step.device_ops), _ops(_as_cudnn(eager.device_ops, graph))
    return StaticReport(graph.path, graph.name, step.batch, f"sm_{capability}", gpu_spec.NAME, ESTIMATE, rows,
                        other, eager_ops, _totals(rows, other, eager_ops, len(distinct)), __doc__ or "")


def _totals(rows: list[Row], other: list[dict[str, Any]], eager: list[dict[str, Any]],
            compiled: int) -> dict[str, Any]:
    triton_us = sum(row.est_us or 0.0 for row in rows)
    other_us = sum(op["est_us"] for op in other)
    return {
        "triton_launches": len(rows), "other_gpu_ops": len(other), "gpu_ops": len(rows) + len(other),
        "distinct_specializations": compiled,
        "est_us_triton": round(triton_us, 2), "est_us_other": round(other_us, 2),
        "est_us_step": round(triton_us + other_us, 2),
        "spilling_kernels": sorted({row.kernel for row in rows if row.spill_bytes}),
        "max_spill_bytes": max((row.spill_bytes or 0 for row in rows), default=0),
        "tensor_core_launches": sum(1 for row in rows if row.tensor_cores),
        "no_launch_metadata": sorted({row.kernel for row in rows if row.flops is None}),
        "compile_errors": sorted({row.kernel for row in rows if any("compile error" in note
                                                                    for note in row.notes)}),
        "host_syncs": sum(1 for op in other if op["sync"]),
        "eager_gpu_ops": len(eager),
        "eager_est_us_launch_floor": round(len(eager) * gpu_spec.LAUNCH_OVERHEAD_US, 2),
    }


# ---- the report ----------------------------------------------------------------------------------


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.0f}{prefix}{unit}" if not prefix else f"{value:.3g}{prefix}{unit}"
        value /= 1000
    return str(value)


def _row_line(row: Row) -> str:
    grid = "x".join(map(str, row.grid))
    est = f"{row.est_us:.2f}" if row.est_us is not None else "-"
    return (f"{row.layer:<10}{row.phase[:3]:<4} {row.kernel:<28}{grid:>10}{row.ctas:>6}{row.warps:>3}"
            f"{_number(row.regs):>5}{_number(row.spill_bytes):>6}{_number(row.shared, 'B'):>7}"
            f"{_number(row.ctas_per_sm):>4}{row.tensor_cores or '-':>10}{_number(row.flops):>8}"
            f"{_number(row.bytes, 'B'):>8}{est:>8} {row.bound:<8}{'; '.join(row.notes)}")


def format_report(report: StaticReport) -> str:
    """The per-launch table, the other GPU operations and the totals, each labelled an estimate."""
    totals = report.totals
    lines = [f"netc bench {report.file} --static: net {report.net}, batch {report.batch}, one training step "
             f"compiled for {report.target} ({report.gpu}); times are an {report.label}",
             f"{'layer':<10}{'ph':<4} {'kernel':<28}{'grid':>10}{'CTAs':>6}{'w':>3}{'regs':>5}{'spill':>6}"
             f"{'smem':>7}{'occ':>4}{'tensor':>10}{'FLOPs':>8}{'bytes':>8}{'est us':>8} bound"]
    lines += [_row_line(row) for row in report.rows]
    lines.append(f"other GPU operations of the step (PyTorch operators, ~{gpu_spec.LAUNCH_OVERHEAD_US:g} us "
                 f"each, estimate): {len(report.other_ops)}")
    for op in report.other_ops:
        sync = "  (host sync)" if op["sync"] else ""
        lines.append(f"  {op['layer']:<10}{op['phase'][:3]:<4} {op['op']:<34} {op['site']}{sync}")
    lines += [
        f"total (estimate): {totals['gpu_ops']} GPU operations per step = {totals['triton_launches']} Triton "
        f"launches + {totals['other_gpu_ops']} PyTorch operators; estimated {totals['est_us_step']:.1f} us "
        f"per step ({totals['est_us_triton']:.1f} Triton + {totals['est_us_other']:.1f} other)",
        f"spills: {totals['max_spill_bytes']} B/thread at most"
        + (f" ({', '.join(totals['spilling_kernels'])})" if totals["spilling_kernels"] else " (none)")
        + f"; tensor cores in {totals['tensor_core_launches']} of {totals['triton_launches']} launches",
        f"PyTorch eager, same step: {totals['eager_gpu_ops']} GPU operations (at least "
        f"{totals['eager_est_us_launch_floor']:.0f} us of launch overhead, estimate)",
    ]
    if totals["no_launch_metadata"]:
        missing = ", ".join(totals["no_launch_metadata"])
        lines.append(f"no launch_metadata (FLOPs and bytes unknown): {missing}")
    if totals["compile_errors"]:
        lines.append(f"compile errors: {', '.join(totals['compile_errors'])}")
    lines.append("model: max(FLOPs/peak, bytes/4.8 TB/s) / SM fill + 2 us per launch "
                 "(runtime/static_bench.py)")
    return "\n".join(lines)


def parse_target(text: str) -> int:
    """"sm_90" -> 90."""
    digits = text.lower().removeprefix("sm_").rstrip("a")
    if not digits.isdigit():
        from netc.dsl.errors import DataError

        raise DataError(f"unknown target {text!r}: expected sm_XY, e.g. sm_90")
    return int(digits)


def run(args: argparse.Namespace) -> int:
    """`netc bench FILE --static`."""
    from netc.dsl.check import parse_path

    graph = parse_path(args.file)
    report = static_bench(graph, args.batch, parse_target(args.target))
    print(json.dumps(report.as_json(), indent=2) if args.json else format_report(report))
    return 0


def markdown(report: dict[str, Any]) -> str:
    """A `--json` report -> the Markdown tables of docs/PERFORMANCE.md (per launch, then totals)."""
    lines = ["| layer | phase | kernel | CTAs | warps | regs | spill B | tensor cores | est. us | bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        est = f"{row['est_us']:.1f}" if row["est_us"] is not None else "-"
        lines.append(f"| {row['layer']} | {row['phase']} | `{row['kernel']}` | {row['ctas']} | "
                     f"{row['warps']} | {row['regs']} | {row['spill_bytes']} | "
                     f"{row['tensor_cores'] or '-'} | {est} | {row['bound']} |")
    totals = report["totals"]
    others = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in
                       Counter(op["op"].removeprefix("aten.") for op in report["other_ops"]).most_common())
    lines += ["", f"Totals (estimate): **{totals['gpu_ops']} GPU operations** per step "
              f"({totals['triton_launches']} Triton + {totals['other_gpu_ops']} PyTorch: "
              f"{others or 'none'}), "
              f"**{totals['est_us_step']:.0f} us** per step estimated, largest spill "
              f"{totals['max_spill_bytes']} B/thread, tensor cores in {totals['tensor_core_launches']} "
              f"launches; PyTorch eager: {totals['eager_gpu_ops']} GPU operations."]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    with open(sys.argv[1]) as handle:
        print(markdown(json.load(handle)))
