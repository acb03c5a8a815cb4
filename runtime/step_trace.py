"""Graph -> one training step traced on the CPU: every Triton launch it makes and every other GPU operation.

The network is lowered on the Triton backend (its fusion pass applied) and
one steady-state training step runs through `runtime.fastpath`'s own eager
step (zero_grad, forward, cross-entropy, backward with its seeded gradient,
clipping if the file asks, the optimizer), on CPU tensors, with every
`kernel[grid](...)` recorded instead of launched
(`runtime.launches.LaunchRecorder`). So each launch shows exactly the grid
and block sizes the launchers pick for the target asked for (the GPU
settings by default: launchers and the precision policy answer as on CUDA;
the interpreter picks larger blocks). The same step counts the PyTorch
operators that would launch GPU work (`runtime.launches.DeviceOpCounter`).
`netc compile --emit plan` and `netc bench --static` read both.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import os
import pkgutil
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from netc.dsl.ir import Graph
from netc.runtime.launches import DeviceOp, DeviceOpCounter, LaunchRecorder
from netc.runtime.launches import Launch as Record
from netc.runtime.lower import Network

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
    """Hooks that say which layer runs: forward pre-hooks, and on each layer's output a pre-hook of
    the autograd node that starts its backward (module backward hooks would add PyTorch work)."""
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def forward_pre(_module: Any, _inputs: Any, _name: str = name) -> None:
            tag(_name, "forward")

        def forward_post(_module: Any, _inputs: Any, output: Any, _name: str = name) -> None:
            outputs = output if isinstance(output, (tuple, list)) else (output,)
            node = next((o.grad_fn for o in outputs if isinstance(o, torch.Tensor) and o.grad_fn), None)
            if node is not None:
                node.register_prehook(lambda grads: tag(_name, "backward"))

        handles.append(module.register_forward_pre_hook(forward_pre))
        handles.append(module.register_forward_hook(forward_post))
    return handles


def _step_function(network: Network, optimizer: torch.optim.Optimizer, graph: Graph,
                   inputs: tuple[torch.Tensor, torch.Tensor], tag: Callable[[str, str], None]) -> Any:
    """fastpath's eager training step, its loss, clipping and optimizer phases tagged as they start."""
    from netc.runtime import fastpath

    def loss_fn(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        tag("loss", "forward")
        if len(graph.output_shape) == 1:
            loss = network.loss(out, labels, graph.train.label_smoothing)
        else:  # no classifier head: a plain sum stands in for the loss
            loss = out.sum()
        if loss.requires_grad:
            loss.register_hook(lambda grad: tag("loss", "backward"))
        return loss

    original_step, original_clip = optimizer.step, fastpath.clip_gradients

    def step(*args: Any, **kwargs: Any) -> Any:
        tag("optimizer", "optimizer")
        return original_step(*args, **kwargs)

    def clip(*args: Any, **kwargs: Any) -> Any:
        tag("clip", "optimizer")
        return original_clip(*args, **kwargs)

    optimizer.step = step  # type: ignore[method-assign]
    fastpath.clip_gradients = clip  # type: ignore[assignment]
    train_step = fastpath.make_train_step(network, optimizer, loss_fn, inputs, capture=False,
                                          clip=graph.train.clip)

    def run() -> None:
        tag("optimizer", "optimizer")  # zero_grad
        train_step(*inputs)

    def restore() -> None:
        optimizer.step = original_step  # type: ignore[method-assign]
        fastpath.clip_gradients = original_clip  # type: ignore[assignment]

    return run, restore


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
        run, restore = _step_function(network, optimizer, graph, inputs, tag)
        handles = _attach_layer_hooks(network, tag)
        try:
            with LaunchRecorder(launch=False):  # the first step: optimizer state appears
                run()
            with recorder, counter:
                run()
        finally:
            restore()
            for handle in handles:
                handle.remove()
    return StepTrace(batch, [_plan_launch(r) for r in recorder.launches], recorder.kernels, counter.ops)


def trace(graph: Graph, batch: int | None = None, target: str = "gpu") -> tuple[list[Launch], dict[str, Any]]:
    """Every launch of one training step at `batch` (default: the train block's), and the kernels used."""
    step = trace_step(graph, batch, target)
    return step.launches, step.kernels


