"""(network, optimizer, loss function, example batch) -> a training-step callable with no host sync.

On CUDA, with static shapes, the whole step (forward, loss, backward,
optimizer) is captured once as a CUDA graph and replayed: one launch from
the host per step instead of one or more per op. Elsewhere (the CPU, or a
capture that fails) the same step runs eagerly. Either way a step never
calls `.item()`: the loss comes back as a device tensor.

The graph bakes in every Python number the captured code read, the
optimizer's hyperparameters among them. A changed setting (a float in
`param_groups`) is therefore noticed before the next replay and the step
is captured again. netc's optimizers read lr from a device tensor instead,
which `push_lr()` refreshes (a fill, no sync) before each replay, so their
lr is not watched and a per-step schedule replays one graph.

What changes every step must live on the device too: netc's Triton dropout
draws its seed into a device tensor from the device's generator (which a
capture advances at each replay), and netc's Adam/AdamW keep their step
counts on the device, so both capture; torch's Adam without capturable=True
runs eagerly (torch refuses the capture; optimizer_blocker says so).

A step writes its gradients instead of accumulating them: `.grad` is None
before backward, so autograd hands each parameter the tensor its backward
made, and netc's optimizers read them there; backward is seeded with a ones
tensor made once, and `clip` with a netc optimizer is one launch whose scale
the optimizer's kernel applies. `python -m netc.runtime.opcount FILE` counts
what is left. A StepSequence runs many steps as one graph (`netc train`'s
CUDA epochs, in chunks).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

WARMUP_STEPS = 3  # side-stream steps before capture: compile kernels, create optimizer state
THRASH_WINDOW = 8  # a second re-capture within this many replays means a per-step schedule: go eager


def hyperparameters(optimizer: torch.optim.Optimizer) -> tuple[tuple[tuple[str, Any], ...], ...]:
    """Every plain-number setting of every param group that a capture bakes in.

    Not lr where the optimizer has `push_lr` (netc's): its kernels read lr from a device tensor.
    """
    skip = {"params", "lr"} if _device_lr(optimizer) else {"params"}
    return tuple(
        tuple((key, value) for key, value in group.items()
              if key not in skip and not isinstance(value, torch.Tensor))
        for group in optimizer.param_groups
    )


def _device_lr(optimizer: torch.optim.Optimizer) -> bool:
    return callable(getattr(optimizer, "push_lr", None))


def push_lr(optimizer: torch.optim.Optimizer) -> None:
    """Before a replay: copy a netc optimizer's lr into the device tensor its captured kernels read."""
    if _device_lr(optimizer):
        optimizer.push_lr()  # type: ignore[attr-defined]


def _clone_state(optimizer: torch.optim.Optimizer) -> dict[nn.Parameter, dict[str, Any]]:
    return {
        param: {key: value.clone() if isinstance(value, torch.Tensor) else value
                for key, value in state.items()}
        for param, state in optimizer.state.items()
    }


def warm_up_and_restore(
    module: nn.Module, optimizer: torch.optim.Optimizer, step: Callable[[], Any], count: int = WARMUP_STEPS
) -> None:
    """Run `step` `count` times, then put weights and optimizer state back as they were.

    The steps compile kernels and make the optimizer create its lazy state
    (momentum buffers, Adam moments), whose tensors a capture must find in
    place. State that existed before is restored in place; state the
    warm-up created is zeroed, which is the fresh state of SGD (dampening 0),
    Adam and AdamW. Buffers (none in netc's layers) are restored too.
    """
    weights = [tensor.detach().clone() for tensor in _module_tensors(module)]
    before = _clone_state(optimizer)
    for _ in range(count):
        step()
    with torch.no_grad():
        for tensor, saved in zip(_module_tensors(module), weights, strict=True):
            tensor.copy_(saved)
        for param, state in optimizer.state.items():
            saved_state = before.get(param, {})
            for key, value in state.items():
                if key in saved_state and isinstance(value, torch.Tensor):
                    value.copy_(saved_state[key])
                elif key in saved_state:
                    state[key] = saved_state[key]
                elif isinstance(value, torch.Tensor):
                    value.zero_()  # created by the warm-up: back to fresh
                elif isinstance(value, (int, float)):
                    state[key] = type(value)(0)


def optimizer_blocker(optimizer: torch.optim.Optimizer) -> str:
    """Why a graph would freeze this optimizer's per-step arithmetic ("" if none); call after a step.

    torch's Adam/AdamW built with capturable=False raise inside a capture. A
    state tensor on the CPU while the parameters are on CUDA is a step
    count kept on the host (torch's Adam without capturable=True; netc's
    Adam/AdamW keep theirs on the device): its bias correction is computed
    in Python and would be baked into the graph at its capture-time value.
    SGD with momentum and dampening is refused too: the warm-up leaves a
    zeroed buffer, which matches a fresh one only without dampening.
    """
    name = f"{type(optimizer).__module__}.{type(optimizer).__name__}"
    for group in optimizer.param_groups:
        if "capturable" in group and not group["capturable"]:  # torch's Adam/AdamW/...: raises in a capture
            return f"{name} has capturable=False: torch refuses to capture its step; running eagerly"
        if group.get("momentum", 0) and group.get("dampening", 0):
            # SGD's first step starts the buffer as the undamped gradient, later steps damp it:
            # one captured step cannot be both, and a zeroed buffer would damp the first step
            return "SGD with momentum and dampening: its first step differs from the rest; running eagerly"
    for param, state in optimizer.state.items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and value.device != param.device:
                return (f"{name} keeps state[{key!r}] on the host, which a CUDA graph would freeze; "
                        "running eagerly")
    return ""


def fused_clip(module: nn.Module, optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer can clip the module's gradients itself (netc's: one launch, folded into
    its step): it must hold every trainable parameter of the module, or the norm would miss some."""
    if not callable(getattr(optimizer, "clip_grad_norm_", None)):
        return False
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    return all(id(p) in held for p in module.parameters() if p.requires_grad)


def clip_gradients(module: nn.Module, optimizer: torch.optim.Optimizer, max_norm: float, fused: bool) -> None:
    """Scale the step's gradients to a global 2-norm of at most max_norm, on the device (no sync).

    `fused` (see fused_clip): netc's optimizer folds it into its step, one launch in all;
    otherwise torch's clip_grad_norm_ (a norm per tensor, their norm, a scale: several ops).
    """
    if fused:
        optimizer.clip_grad_norm_(max_norm)  # type: ignore[attr-defined]
    else:
        nn.utils.clip_grad_norm_(module.parameters(), max_norm)


def _module_tensors(module: nn.Module) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers()]


class TrainStep:
    """`step(x, y) -> loss`: one training step; see the module docstring.

    `mode` is "graph" (replaying a CUDA graph) or "eager"; `reason` says why
    eager when it is. In graph mode the returned loss is the graph's static
    output tensor: valid until the next call (clone it to keep it; adding it
    to a running total on the device reads it in time).
    """

    def __init__(
        self,
        module: nn.Module,
        optimizer: torch.optim.Optimizer,
        loss_fn: LossFn,
        example_batch: tuple[torch.Tensor, torch.Tensor],
        capture: bool | None = None,
        clip: float | None = None,
    ) -> None:
        self.module, self.optimizer, self.loss_fn, self.clip = module, optimizer, loss_fn, clip
        self._fused_clip = fused_clip(module, optimizer)
        self._ones: torch.Tensor | None = None
        images, labels = example_batch
        self.mode, self.reason = "eager", ""
        self.captures = 0  # how many times the step was captured (1 + re-captures)
        self._replays_since_capture = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._hyper: tuple[Any, ...] = ()
        self.static_x = images.detach().clone()  # (N, *input_shape): the graph reads these
        self.static_y = labels.detach().clone()  # (N,)
        self.static_loss: torch.Tensor | None = None
        want = images.is_cuda if capture is None else capture
        if want and not images.is_cuda:
            raise NotImplementedError("CUDA graph capture of a training step needs CUDA tensors")
        if not want:
            self.reason = "graph capture is for CUDA" if capture is None else "capture=False"
            return
        self._warm_up()
        self.reason = optimizer_blocker(optimizer)
        if not self.reason:
            self._capture()

    def _eager_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # None, not zeros: autograd then hands each parameter its gradient tensor (no fill, no add)
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.module(images), labels)
        loss.backward(self._seed_gradient(loss))
        if self.clip is not None:
            clip_gradients(self.module, self.optimizer, self.clip, self._fused_clip)
        self.optimizer.step()
        return loss.detach()

    def _seed_gradient(self, loss: torch.Tensor) -> torch.Tensor:
        """dloss/dloss = 1, made once (the warm-up makes it before any capture): saves a fill per step;
        netc's cross_entropy recognises this tensor and then launches no backward at all."""
        if self._ones is None or self._ones.dtype != loss.dtype or self._ones.device != loss.device:
            from netc.kernels.loss import unit_gradient  # the same 0-d 1 for a (dtype, device)

            self._ones = unit_gradient(loss)
        return self._ones

    def _warm_up(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            warm_up_and_restore(self.module, self.optimizer,
                                lambda: self._eager_step(self.static_x, self.static_y))
        torch.cuda.current_stream().wait_stream(side)

    def _capture(self) -> None:
        """Record one step into a fresh graph; fall back to eager (saying why) if capture fails."""
        self._graph = None  # frees the previous graph's private memory pool first
        # No grads during capture: backward then writes fresh gradient tensors from the
        # graph's pool, and every replay overwrites them instead of accumulating.
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.static_loss = self._eager_step(self.static_x, self.static_y)
        except Exception as error:  # a host sync or an uncapturable op somewhere in the step
            self.mode, self.reason, self.static_loss = "eager", f"capture failed: {error}", None
            self.optimizer.zero_grad(set_to_none=True)
            return
        self._graph, self.mode, self.reason = graph, "graph", ""
        self._hyper = hyperparameters(self.optimizer)
        self.captures += 1

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._graph is None or images.shape != self.static_x.shape or labels.shape != self.static_y.shape:
            return self._eager_fallback(images, labels)
        if images is not self.static_x:
            self.static_x.copy_(images)
        if labels is not self.static_y:
            self.static_y.copy_(labels)
        return self.replay()

    def replay(self) -> torch.Tensor:
        """Run the captured step on whatever `static_x` / `static_y` hold now."""
        assert self._graph is not None and self.static_loss is not None, "replay needs graph mode"
        if hyperparameters(self.optimizer) != self._hyper:
            self._recapture()  # the lr (or another setting) changed: the old graph has the old value
            if self._graph is None:
                return self._eager_step(self.static_x, self.static_y)
        push_lr(self.optimizer)
        self._graph.replay()
        self._replays_since_capture += 1
        return self.static_loss

    def _recapture(self) -> None:
        if self.captures > 1 and self._replays_since_capture < THRASH_WINDOW:
            # settings change every few steps (a per-step schedule on a host-number lr):
            # capturing each time would cost more than it saves
            self._graph, self.static_loss, self.mode = None, None, "eager"
            self.reason = ("the optimizer's settings change every few steps and its lr is a host "
                           "number baked into the graph; running eagerly")
            return
        self._replays_since_capture = 0
        self._capture()

    def eager(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One step run eagerly whatever the mode (a graph, if any, stays valid): for diagnostics."""
        return self._eager_fallback(images, labels)

    def _eager_fallback(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self._graph is None:
            return self._eager_step(images, labels)
        # A batch of another shape (a short last batch) while a graph exists: run it eagerly,
        # then re-point .grad at the graph's gradient tensors, which its optimizer step reads.
        grads = [param.grad for param in self.module.parameters()]
        loss = self._eager_step(images, labels)
        for param, grad in zip(self.module.parameters(), grads, strict=True):
            param.grad = grad
        return loss

    def gather(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One step on images[index], labels[index], gathered on the device straight into the inputs."""
        if self._graph is None or index.shape[0] != self.static_x.shape[0]:
            return self(images.index_select(0, index), labels.index_select(0, index))
        torch.index_select(images, 0, index, out=self.static_x)
        torch.index_select(labels, 0, index, out=self.static_y)
        return self.replay()


def make_train_step(
    module: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn,
    example_batch: tuple[torch.Tensor, torch.Tensor],
    capture: bool | None = None,
    clip: float | None = None,
) -> TrainStep:
    """The fastest training step for this target: a replayed CUDA graph on CUDA, eager elsewhere.

    `capture=None` captures exactly when the example batch is on CUDA. The
    warm-up before capture leaves weights and optimizer state as they were,
    so the first call is the first real step. `clip` is the max global
    gradient norm (None: off).
    """
    return TrainStep(module, optimizer, loss_fn, example_batch, capture=capture, clip=clip)


def run_epoch(
    step: TrainStep, images: torch.Tensor, labels: torch.Tensor, batch: int, order: torch.Tensor
) -> torch.Tensor:
    """Steps over `images[order]` in batches of `batch`; returns the summed loss as a device tensor."""
    total = torch.zeros((), device=images.device)
    for begin in range(0, order.shape[0], batch):
        loss = step.gather(images, labels, order[begin:begin + batch])
        # sample-weighted, one launch; it reads the graph's loss before the next replay overwrites it
        total.add_(loss, alpha=min(batch, order.shape[0] - begin))
    return total


def __getattr__(name: str) -> Any:
    """StepSequence lives in runtime/sequence.py (it builds on TrainStep); older imports still find it."""
    if name in ("StepSequence", "record_graph"):
        from netc.runtime import sequence

        return getattr(sequence, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
