"""Graph -> the kernel plan (`netc compile --emit plan`) and the Triton source it uses (`--emit triton`).

The plan is traced, not re-derived: the network is lowered on the Triton
backend (fusions applied) and one training step (zero_grad, forward,
cross-entropy, backward, gradient clipping if the file asks, the optimizer
step), as `runtime.fastpath` runs it, goes through on uninitialised CPU
tensors with every `kernel[grid](...)` recorded instead of launched
(`runtime.launches.LaunchRecorder`). So each row shows exactly the grid and
block sizes the launchers pick, for the target asked for (the GPU settings by
default: launchers and the precision policy answer as on CUDA; the
interpreter picks larger blocks), and a kernel renamed or re-tiled in
`netc.kernels` shows up here without a change. FLOPs and bytes per launch
are the kernel's own `launch_metadata` (`netc.kernels.costs`). The same
trace counts the PyTorch operators of the step that would launch GPU work
(`runtime.launches.DeviceOpCounter`); `netc bench --static` reports both.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from netc.dsl.ir import Graph, Node
from netc.runtime.launches import DeviceOp, DeviceOpCounter, LaunchRecorder
from netc.runtime.launches import Launch as Record
from netc.runtime.lower import Network, find_fusions, walk

TARGETS = ("gpu", "interpreter")
PHASES = ("forward", "backward", "optimizer")


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch, as the plan shows it."""

    layer: str  # node name ("0", "3.1"), "loss", "clip" or "optimizer"
    phase: str  # "forward", "backward" or "optimizer"
    kernel: str  # the @triton.jit function's name
    module: str  # the Python module that defines it
    grid: tuple[int, ...]
    blocks: dict[str, int]  # BLOCK_* / GROUP_* constexprs, num_warps, num_stages
    bytes: int | None  # the kernel's launch_metadata; None: the kernel declares none
    flops: int | None
    record: Record = field(compare=False, repr=False)  # every argument, for `netc bench --static`


@dataclass
class StepTrace:
    """What one training step launches: Triton kernels, and the other GPU operations (PyTorch's)."""

    batch: int
    launches: list[Launch]
    kernels: dict[str, Any]  # "module.name" -> jit object, in first-launch order
    device_ops: list[DeviceOp]  # PyTorch operators that would launch GPU work, in order


def _plan_launch(record: Record) -> Launch:
    blocks = {k: v for k, v in record.args.items() if re.match(r"(BLOCK|GROUP)", k) and isinstance(v, int)}
    blocks.update(record.options)
    layer, phase = record.tag
    return Launch(layer, phase, record.kernel, record.module, record.grid, blocks, record.bytes, record.flops,
                  record)


def _import_all_kernels() -> None:
    """Import every kernel module now: one imported while the target is switched would bind wrongly."""
    import netc.kernels

    for info in pkgutil.iter_modules(netc.kernels.__path__):
        importlib.import_module(f"netc.kernels.{info.name}")


@contextlib.contextmanager
def _launch_settings(target: str) -> Iterator[None]:
    """Launchers and the precision policy answer as on `target`; kernel outputs are not poisoned.

    `netc.kernels.config.interpreting()` reads TRITON_INTERPRET, so setting it
    switches every launcher's settings (kernels are already bound: nothing
    re-binds); `policy.dot_precision` is told the device is CUDA for "gpu".
    """
    _import_all_kernels()
    from netc.kernels import config

    saved_env, saved_poison = os.environ.get("TRITON_INTERPRET"), config.POISON_OUTPUTS
    patched = _patch_dot_precision(target == "gpu")
    os.environ["TRITON_INTERPRET"] = "1" if target == "interpreter" else "0"
    config.POISON_OUTPUTS = False  # a poisoning fill is a test artefact, not a step's GPU operation
    try:
        yield
    finally:
        config.POISON_OUTPUTS = saved_poison
        if saved_env is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = saved_env
        for module, name, original in patched:
            setattr(module, name, original)


def _patch_dot_precision(as_cuda: bool) -> list[tuple[Any, str, Any]]:
    """Wrap `policy.dot_precision` (and every kernel module's imported copy) to see a CUDA device."""
    import sys

    try:
        policy = importlib.import_module("netc.kernels.policy")
    except ImportError:
        return []
    original = getattr(policy, "dot_precision", None)
    if original is None or not as_cuda:
        return []

    def on_cuda(kind: str, dtype: torch.dtype, device: Any = None, *args: Any, **kwargs: Any) -> Any:
        return original(kind, dtype, torch.device("cuda"), *args, **kwargs)

    patched = []
    for name, module in list(sys.modules.items()):
        if not name.startswith("netc.kernels") or module is None:
            continue
        for attribute, value in list(vars(module).items()):
            if value is original:
                patched.append((module, attribute, original))
                setattr(module, attribute, on_cuda)
    return patched


def is_jit(value: Any) -> bool:
    """True for a @triton.jit function (a JITFunction, or the interpreter's stand-in)."""
    return inspect.isfunction(getattr(value, "fn", None)) and hasattr(type(value), "__getitem__")


class _Tagger:
    """Tells the launch recorder and the operator counter which layer and phase run now."""

    def __init__(self, recorder: LaunchRecorder, counter: DeviceOpCounter) -> None:
        self.recorder, self.counter = recorder, counter

    def __call__(self, layer: str, phase: str) -> None:
        self.recorder.tag = self.counter.tag = (layer, phase)


def _attach_layer_hooks(network: torch.nn.Module, tag: Callable[[str, str], None]) -> list[Any]:
    """Forward pre-hooks and backward pre-hooks that say which layer is running."""
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def forward_pre(_module: Any, _inputs: Any, _name: str = name) -> None:
            tag(_name, "forward")

        def backward_pre(_module: Any, _grads: Any, _name: str = name) -> None:
            tag(_name, "backward")

        handles.append(module.register_forward_pre_hook(forward_pre))
        handles.append(module.register_full_backward_pre_hook(backward_pre))
    return handles


def training_step(network: Network, optimizer: torch.optim.Optimizer, graph: Graph,
                  batch: tuple[torch.Tensor, torch.Tensor], tag: Callable[[str, str], None]) -> None:
    """One step as runtime.fastpath's eager step runs it, on a batch (x, y) already in place."""
    x, y = batch
    tag("optimizer", "optimizer")
    optimizer.zero_grad(set_to_none=True)
    tag("input", "forward")
    out = network(x)
    tag("loss", "forward")
    if len(graph.output_shape) == 1:
        loss = network.loss(out, y, graph.train.label_smoothing)
    else:  # no classifier head: a plain sum stands in for the loss
        loss = out.sum()
    tag("loss", "backward")
    with warnings.catch_warnings():  # hooks on layers whose input needs no gradient (the first)
        warnings.simplefilter("ignore", UserWarning)
        loss.backward()
    if graph.train.clip is not None:
        tag("clip", "optimizer")
        torch.nn.utils.clip_grad_norm_(network.parameters(), graph.train.clip)
    tag("optimizer", "optimizer")
    optimizer.step()


def build(graph: Graph, backend: str) -> tuple[Network, torch.optim.Optimizer]:
    """The network (fusions applied on Triton) and the file's optimizer for `backend`, on the CPU."""
    from netc.runtime.train import make_optimizer

    network = Network(graph, backend, torch.device("cpu"))  # on Triton, with the fusion pass applied
    if backend == "triton":
        return network.train(), make_optimizer(network.parameters(), graph.train.optimizer, "triton")
    config = graph.train.optimizer
    try:  # torch.optim's fused kernels: what the eager contender of `netc bench` runs on CUDA
        return network.train(), make_optimizer(network.parameters(), config, "torch", fused=True)
    except (RuntimeError, ValueError):
        return network.train(), make_optimizer(network.parameters(), config, "torch")


def trace_step(
    graph: Graph, batch: int | None = None, target: str = "gpu", backend: str = "triton"
) -> StepTrace:
    """Every Triton launch and PyTorch GPU operation of one steady-state training step at `batch`.

    A first step (not recorded) creates the optimizer's state, so the step
    recorded is what every later step of an epoch launches.
    """
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    batch = batch or graph.train.batch
    recorder, counter = LaunchRecorder(launch=False), DeviceOpCounter()
    tag = _Tagger(recorder, counter)
    inputs = torch.zeros(batch, *graph.input_shape), torch.zeros(batch, dtype=torch.long)  # values: any
    with torch.random.fork_rng(devices=[]), _launch_settings(target):  # building the net draws weights
        network, optimizer = build(graph, backend)
        handles = _attach_layer_hooks(network, tag)
        try:
            with LaunchRecorder(launch=False):  # the first step: optimizer state appears
                training_step(network, optimizer, graph, inputs, tag)
            with recorder, counter:
                training_step(network, optimizer, graph, inputs, tag)
        finally:
            for handle in handles:
                handle.remove()
    return StepTrace(batch, [_plan_launch(r) for r in recorder.launches], recorder.kernels, counter.ops)


def trace(graph: Graph, batch: int | None = None, target: str = "gpu") -> tuple[list[Launch], dict[str, Any]]:
    """Every launch of one training step at `batch` (default: the train block's), and the kernels used."""
    step = trace_step(graph, batch, target)
    return step.launches, step.kernels


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
    if node.op == "residual":
        return text + "\n    x + body(x): the add is one PyTorch elementwise op (no Triton kernel)"
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
