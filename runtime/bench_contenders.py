"""(contender, Graph, device) -> a ready training-step runner for `netc bench`, and what a step launches.

A contender is a backend (netc's Triton kernels or PyTorch's operators) plus
how its step runs: netc's fast path (one replayed CUDA graph per step on
CUDA), plain eager, or torch.compile (default or "reduce-overhead"). All
start from the same seeded weights and use the file's optimizer: netc's
fused optimizer kernels on the Triton backend, torch.optim (fused on CUDA,
its fastest form) on the torch backend. The counters at the end say how
many launches one step makes: Triton kernels issued from Python (on any
device) and every GPU operation the profiler sees (CUDA).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from netc.dsl.ir import Graph, OptimizerConfig
from netc.runtime.fastpath import TrainStep, make_train_step, run_epoch
from netc.runtime.train import make_optimizer as training_optimizer
from netc.runtime.train import optimizer_kwargs

StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Contender:
    name: str
    backend: str  # "triton" or "torch"
    fast_path: bool = False  # netc's make_train_step (a CUDA graph on CUDA)
    compile_mode: str | None = None  # torch.compile mode, None: not compiled
    cuda_only: bool = False

    @property
    def compiled(self) -> bool:
        return self.compile_mode is not None


# "netc" first: the ratios are its steps/s over each of the others'
CONTENDERS: tuple[Contender, ...] = (
    Contender("netc", "triton", fast_path=True),
    Contender("netc-nograph", "triton", cuda_only=True),
    Contender("torch-eager", "torch"),
    Contender("torch-graph", "torch", fast_path=True, cuda_only=True),
    Contender("torch-compile", "torch", compile_mode="default"),
    Contender("torch-compile-ro", "torch", compile_mode="reduce-overhead"),
)


@dataclass
class Runner:
    """A contender ready to run: `step(x, y) -> loss` and `epoch(...)` over data on the device."""

    step: StepFn
    mode: str  # "graph", "eager", "compile-default", ...
    optimizer: str  # the optimizer class that runs, e.g. "netc.kernels.SGD"
    note: str = ""
    fast: TrainStep | None = None

    def epoch(self, images: torch.Tensor, labels: torch.Tensor, batch: int, order: torch.Tensor) -> None:
        """One pass in `order`, each batch gathered on the device."""
        if self.fast is not None:
            run_epoch(self.fast, images, labels, batch, order)
            return
        for begin in range(0, order.shape[0], batch):
            index = order[begin:begin + batch]
            self.step(images.index_select(0, index), labels.index_select(0, index))


def build_contender(
    contender: Contender, graph: Graph, device: torch.device, example: tuple[torch.Tensor, torch.Tensor]
) -> Runner:
    """Compile the network for the contender's backend and wrap its training step."""
    from netc.runtime.lower import compile as compile_net

    net = compile_net(graph, device=device, backend=contender.backend, seed=graph.train.seed)
    net.train()
    # torch-graph captures torch.optim's step too: Adam/AdamW need capturable=True for that
    capturable = contender.fast_path and contender.backend == "torch" and device.type == "cuda"
    optimizer, optimizer_note = make_optimizer(net.parameters(), graph.train.optimizer, contender.backend,
                                               device, capturable=capturable)
    smoothing = graph.train.label_smoothing

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return net.loss(logits, targets, smoothing)

    name = _optimizer_name(optimizer)
    if contender.compiled:
        step = _compiled_step(net, optimizer, loss_fn, str(contender.compile_mode), graph.train.clip)
        return Runner(step, f"compile-{contender.compile_mode}", name, optimizer_note)
    capture = None if contender.fast_path else False  # None: a graph exactly when on CUDA
    fast = make_train_step(net, optimizer, loss_fn, example, capture=capture, clip=graph.train.clip)
    note = "; ".join(filter(None, [optimizer_note, fast.reason if contender.fast_path else ""]))
    return Runner(fast, fast.mode, name, note, fast)


def _optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """Its public name: "netc.kernels.SGD" or "torch.optim.SGD"."""
    package = "netc.kernels" if type(optimizer).__module__.startswith("netc.") else "torch.optim"
    return f"{package}.{type(optimizer).__name__}"


def make_optimizer(
    params: Iterable[torch.nn.Parameter], config: OptimizerConfig, backend: str, device: torch.device,
    capturable: bool = False,
) -> tuple[torch.optim.Optimizer, str]:
    """(optimizer, note): training's optimizer, with torch.optim's fused kernels on CUDA.

    `capturable`: torch's Adam/AdamW with capturable=True (its step count and bias corrections on
    the device), without which torch refuses to capture its step in a CUDA graph; SGD has no step
    count and captures as it is. netc's optimizers always keep theirs on the device.
    """
    note = ""
    params = list(params)
    if backend == "triton":
        try:
            return training_optimizer(params, config, "triton"), note
        except (ImportError, AttributeError) as error:
            note = f"netc.kernels' {config.name} optimizer unavailable ({error}); torch.optim used instead"
    if capturable and config.name in ("adam", "adamw"):
        kind = torch.optim.Adam if config.name == "adam" else torch.optim.AdamW
        kwargs = {**optimizer_kwargs(config), "fused": device.type == "cuda", "capturable": True}
        return kind(params, **kwargs), note
    return training_optimizer(params, config, "torch", fused=device.type == "cuda"), note


def _compiled_step(
    net: torch.nn.Module, optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], mode: str, clip: float | None,
) -> StepFn:
    """torch.compile of forward + loss (its backward compiled by AOTAutograd); the fused optimizer eager."""

    def forward_loss(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return loss_fn(net(images), labels)

    compiled = torch.compile(forward_loss, mode=mode)
    mark_step = getattr(torch.compiler, "cudagraph_mark_step_begin", None)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if mode == "reduce-overhead" and mark_step is not None:
            mark_step()  # a new iteration: the previous step's graph outputs may be overwritten
        optimizer.zero_grad(set_to_none=True)
        loss = compiled(images, labels)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        optimizer.step()
        return loss.detach()

    return step


def count_triton_launches(step: Any, images: torch.Tensor, labels: torch.Tensor) -> dict[str, int]:
    """Triton kernel name -> launches in one eager call of `step` (compiled or interpreted).

    The launches a step issues from Python (which a CUDA graph would replay
    as one), counted by netc's one launch recorder (`runtime.launches`); the
    kernels still run.
    """
    from netc.runtime.launches import LaunchRecorder

    with LaunchRecorder(launch=True) as recorder:
        step(images, labels)
    return recorder.counts()


def count_device_ops(step: Any, images: torch.Tensor, labels: torch.Tensor) -> int | None:
    """GPU activities (kernels, copies, memsets) of one step, by the profiler; None if it cannot tell.

    Kernels inside a replayed CUDA graph are reported one by one, so this is
    the work a step launches however it is launched: what fusion reduces.
    """
    try:
        from torch.autograd import DeviceType
        from torch.profiler import ProfilerActivity, profile

        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as profiler:
            step(images, labels)
            torch.cuda.synchronize()
        # GPU-side events only, without the GPU timeline's copies of record_function ranges
        on_gpu = [event for event in profiler.events() if event.device_type == DeviceType.CUDA]
        return sum(1 for event in on_gpu if not getattr(event, "is_user_annotation", False))
    except Exception:  # the profiler is a diagnostic: its absence must not fail the bench
        return None
