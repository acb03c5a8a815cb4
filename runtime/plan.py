"""Graph -> the kernel plan (`netc compile --emit plan`) and the Triton source it uses (`--emit triton`).

The plan is traced, not re-derived (`runtime.step_trace`): one training step
(forward, loss, backward, clipping, optimizer) goes through with every
Triton launch recorded instead of made, so each row shows exactly the grid
and block sizes the launchers pick for the target, and a kernel renamed or
re-tiled in `netc.kernels` shows up here without a change. FLOPs and bytes
per launch are the kernel's own `launch_metadata` (`netc.kernels.costs`).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from netc.dsl.ir import Graph, Node
from netc.runtime.lower import find_fusions, walk
from netc.runtime.step_trace import PHASES, TARGETS, Launch, StepTrace, is_jit, trace, trace_step

__all__ = ["PHASES", "TARGETS", "Launch", "StepTrace", "format_plan", "format_triton", "is_jit", "trace",
           "trace_step"]


def _human(value: float, unit: str) -> str:
    for prefix in ("", "K", "M", "G", "T"):
        if abs(value) < 1000 or prefix == "T":
            return f"{value:.0f} {prefix}{unit}" if not prefix else f"{value:.2f} {prefix}{unit}"
        value /= 1000
    return f"{value} {unit}"  # unreachable


def _layer_heading(node: Node, fused_into: dict[str, str], fused_with: dict[str, str]) -> str:
    shapes = f"{list(node.in_shape)} -> {list(node.out_shape)}"
    text = f"layer {node.name}  {node.op}  {shapes}  (line {node.loc.line})"
    if node.name in fused_with:
        text += f"  + {fused_with[node.name]}"
    if node.name in fused_into:
        return text + f"\n    fused into layer {fused_into[node.name]}'s epilogue: no launch of its own"
    if node.op == "flatten":
        return text + "\n    a view: no launch"
    if node.op in ("add", "concat"):  # a residual's or parallel's merge
        merge = "x + body(x): the add" if node.attrs["block"] == "residual" else f"the branches' {node.op}"
        return text + f"\n    {merge} is one PyTorch op (no Triton kernel)"
    if node.op == "dropout":
        return text + "\n    identity in eval mode; the training launches follow"
    return text


def _launch_line(launch: Launch) -> str:
    blocks = " ".join(f"{k.replace('num_', '')}={v}" for k, v in launch.blocks.items())
    grid = "(" + ", ".join(map(str, launch.grid)) + ")"
    phase = {"forward": "fwd", "backward": "bwd"}.get(launch.phase, "opt")
    if launch.bytes is None or launch.flops is None:
        cost = f"{'no launch_metadata':>24}"
    else:
        cost = f"{_human(launch.bytes, 'B'):>10} {_human(launch.flops, 'FLOP'):>13}"
    return f"    {phase}  {launch.kernel:<28} grid={grid:<14} {blocks:<52} {cost}"


def format_plan(graph: Graph, batch: int | None = None, target: str = "gpu") -> str:
    """Per layer, the kernels it lowers to (after fusion): grid, block sizes, bytes and FLOPs per launch."""
    batch = batch or graph.train.batch
    launches, _ = trace(graph, batch, target)
    fusions = find_fusions(graph.nodes)
    fused_into = {f.activation.name: f.producer.name for f in fusions}
    fused_with = {f.producer.name: f"{f.activation.op} fused -> {f.kernel}" for f in fusions}
    lines = [f"kernel plan for net {graph.name}: one training step at batch {batch}, float32, "
             f"{'GPU' if target == 'gpu' else 'interpreter'} launch settings",
             f"fusion pass: {len(fusions)} fused" + "".join(f"\n  {f.describe()}" for f in fusions)]
    for node in walk(graph.nodes):
        lines.append(_layer_heading(node, fused_into, fused_with))
        own = [launch for launch in launches if launch.layer == node.name]
        lines.extend(_launch_line(launch) for launch in own)
    loss_launches = [launch for launch in launches if launch.layer == "loss"]
    if loss_launches:
        lines.append("loss  cross_entropy" + (f" label_smoothing={graph.train.label_smoothing}"
                                              if graph.train.label_smoothing else ""))
        lines.extend(_launch_line(launch) for launch in loss_launches)
    for layer, title in (("clip", f"gradient clipping (max norm {graph.train.clip})"),
                         ("optimizer", f"optimizer {graph.train.optimizer.name}")):
        own = [launch for launch in launches if launch.layer == layer]
        if own:
            lines.append(title)
            lines.extend(_launch_line(launch) for launch in own)
    lines.append(_totals(launches))
    return "\n".join(lines)


def _totals(launches: list[Launch]) -> str:
    parts = []
    for phase in PHASES:
        chosen = [launch for launch in launches if launch.phase == phase]
        parts.append(f"{phase}: {len(chosen)} launches, {_human(sum(x.bytes or 0 for x in chosen), 'B')}, "
                     f"{_human(sum(x.flops or 0 for x in chosen), 'FLOP')}")
    missing = sorted({x.kernel for x in launches if x.flops is None})
    note = ("bytes and FLOPs: each kernel's launch_metadata (netc.kernels.costs: every distinct tensor "
            "argument once, a multiply-add is 2)")
    if missing:
        note += f"; no launch_metadata: {', '.join(missing)}"
    return "total  " + "; ".join(parts) + "\n" + note


def format_triton(graph: Graph, batch: int | None = None) -> str:
    """The Triton source of every kernel one training step of the net launches, with the helpers they call."""
    launches, kernels = trace(graph, batch, "gpu")
    users: dict[str, list[str]] = {}
    for launch in launches:
        layers = users.setdefault(f"{launch.module}.{launch.kernel}", [])
        if launch.layer not in layers:
            layers.append(launch.layer)
    sections = [f"# Triton kernels of net {graph.name} ({len(kernels)} launched, helpers after each)"]
    seen: set[str] = set()
    for qualified, kernel in kernels.items():
        sections.append(f"# ---- {qualified}  (layers: {', '.join(users[qualified])})")
        sections.append(inspect.getsource(kernel.fn).rstrip())
        seen.add(qualified)
        for helper in _helpers(kernel, seen):
            sections.append(f"# ---- {_qualified(helper)}  (called by {kernel.fn.__name__})")
            sections.append(inspect.getsource(helper.fn).rstrip())
    return "\n\n".join(sections) + "\n"


def _qualified(jit_function: Any) -> str:
    return f"{jit_function.fn.__module__}.{jit_function.fn.__name__}"


def _helpers(kernel: Any, seen: set[str]) -> list[Any]:
    """@triton.jit functions that `kernel` calls (transitively), each once across the whole listing."""
    found = []
    source = inspect.getsource(kernel.fn)
    for name, value in kernel.fn.__globals__.items():
        if not is_jit(value) or _qualified(value) in seen:
            continue
        if re.search(rf"\b{re.escape(name)}\s*\(", source):
            seen.add(_qualified(value))
            found.append(value)
            found.extend(_helpers(value, seen))
    return found
