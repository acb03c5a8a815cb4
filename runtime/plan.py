"""Graph -> the kernel plan (`netc compile --emit plan`) and the Triton source it uses (`--emit triton`).

The plan is traced, not re-derived: the network is lowered on the Triton
backend (fusions applied) and one training step (forward, cross-entropy,
backward) runs on uninitialised CPU tensors with every `kernel[grid](...)`
intercepted and recorded instead of launched. So each row shows exactly the
grid and block sizes the launchers pick, for the target asked for (the GPU
settings by default; the interpreter picks larger blocks), and a kernel
renamed or re-tiled in `netc.kernels` shows up here without a change.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from netc.dsl.ir import Graph, Node
from netc.runtime.lower import Network, find_fusions, walk

TARGETS = ("gpu", "interpreter")


@dataclass(frozen=True)
class Launch:
    """One recorded kernel launch."""

    layer: str  # node name ("0", "3.1"), or "loss"
    phase: str  # "forward" or "backward"
    kernel: str  # the @triton.jit function's name
    module: str  # the Python module that defines it
    grid: tuple[int, ...]
    blocks: dict[str, int]  # BLOCK_* / GROUP_* constexprs, num_warps, num_stages
    bytes: int  # distinct tensor arguments' sizes: the launch's compulsory memory traffic
    flops: int  # see launch_flops


class _Recorder:
    """Replaces `kernel[grid](...)` by a record; keeps the layer and phase the launch belongs to."""

    def __init__(self) -> None:
        self.layer = "input"
        self.phase = "forward"
        self.launches: list[Launch] = []
        self.kernels: dict[str, Any] = {}  # "module.name" -> the jit object, in first-launch order

    def record(self, kernel: Any, grid: Any, args: tuple, kwargs: dict[str, Any]) -> None:
        fn = kernel.fn
        options = {key: kwargs.pop(key) for key in ("num_warps", "num_stages") if key in kwargs}
        bound = inspect.signature(fn).bind_partial(*args, **kwargs).arguments
        grid = tuple(grid(bound) if callable(grid) else grid)
        blocks = {k: v for k, v in bound.items() if re.match(r"(BLOCK|GROUP)", k) and isinstance(v, int)}
        blocks.update(options)
        self.kernels.setdefault(_qualified(kernel), kernel)
        self.launches.append(Launch(self.layer, self.phase, fn.__name__, fn.__module__, grid, blocks,
                                    launch_bytes(bound), launch_flops(fn.__name__, bound, grid)))


@contextlib.contextmanager
def _intercept(recorder: _Recorder, kernel_types: set[type], target: str) -> Iterator[None]:
    """Route every launch of these jit classes to the recorder; launchers see the target's settings."""
    from netc.kernels import config

    saved = {cls: cls.__dict__.get("__getitem__") for cls in kernel_types}
    saved_interpreting = config.interpreting

    def getitem(self: Any, grid: Any) -> Any:
        return lambda *args, **kwargs: recorder.record(self, grid, args, dict(kwargs))

    try:
        for cls in kernel_types:
            cls.__getitem__ = getitem  # type: ignore[method-assign]
        config.interpreting = lambda: target == "interpreter"  # type: ignore[assignment]
        yield
    finally:
        config.interpreting = saved_interpreting  # type: ignore[assignment]
        for cls, original in saved.items():
            if original is None:
                del cls.__getitem__
            else:
                cls.__getitem__ = original  # type: ignore[method-assign]


def _jit_types() -> set[type]:
    """The classes of the @triton.jit objects in the kernel families (JITFunction, or the interpreter's)."""
    import netc.kernels

    types = set()
    for module in netc.kernels.family_modules():
        types |= {type(value) for value in vars(module).values() if is_jit(value)}
    return types


def is_jit(value: Any) -> bool:
    """True for a @triton.jit function (a JITFunction, or the interpreter's stand-in)."""
    return inspect.isfunction(getattr(value, "fn", None)) and hasattr(type(value), "__getitem__")


def _attach_layer_hooks(network: Network, recorder: _Recorder) -> list[Any]:
    """Forward pre-hooks and backward pre-hooks that tell the recorder which layer is running."""
    handles = []
    for name, module in network.named_modules():
        if not name:
            continue

        def forward_pre(_module: Any, _inputs: Any, _name: str = name) -> None:
            recorder.layer, recorder.phase = _name, "forward"

        def backward_pre(_module: Any, _grads: Any, _name: str = name) -> None:
            recorder.layer, recorder.phase = _name, "backward"

        handles.append(module.register_forward_pre_hook(forward_pre))
        handles.append(module.register_full_backward_pre_hook(backward_pre))
    return handles


def _training_step(network: Network, graph: Graph, batch: int, recorder: _Recorder) -> None:
    """Forward, loss and backward on uninitialised inputs (values never matter: nothing runs)."""
    x = torch.empty(batch, *graph.input_shape)
    out = network.train()(x)
    recorder.layer = "loss"
    if len(graph.output_shape) == 1:
        loss = network.loss(out, torch.zeros(batch, dtype=torch.long), graph.train.label_smoothing)
    else:  # no classifier head: a plain sum stands in for the loss
        loss = out.sum()
    recorder.phase = "backward"
    with warnings.catch_warnings():  # hooks on layers whose input needs no gradient (the first)
        warnings.simplefilter("ignore", UserWarning)
        loss.backward()


def trace(graph: Graph, batch: int | None = None, target: str = "gpu") -> tuple[list[Launch], dict[str, Any]]:
    """Every launch of one training step at `batch` (default: the train block's), and the kernels used."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    batch = batch or graph.train.batch
    recorder = _Recorder()
    with torch.random.fork_rng(devices=[]):  # building the net draws weights: leave the caller's RNG alone
        network = Network(graph, "triton", torch.device("cpu"))  # never launched: no device needed
        handles = _attach_layer_hooks(network, recorder)
        try:
            with _intercept(recorder, _jit_types(), target):
                _training_step(network, graph, batch, recorder)
        finally:
            for handle in handles:
                handle.remove()
    return recorder.launches, recorder.kernels


# ---- cost of one launch ----------------------------------------------------------------------
# Bytes: every distinct tensor argument counted once at its view's size, the
# compulsory traffic of the launch (a launcher passing the output again as an
# unused stand-in for a missing bias is counted once). FLOPs: a multiply-add
# counts 2, as the IR counts them. GEMM-shaped kernels are recognised by
# their arguments (M, N, K; the convolution's implicit-GEMM sizes; the
# recurrent sequence kernels' N, T, H, G); anything else counts one FLOP per
# element of its largest tensor (elementwise, pooling without a window, row
# reductions), which is the right order of magnitude for memory-bound work.


def launch_bytes(bound: Mapping[str, Any]) -> int:
    """Size in bytes of the distinct tensor views passed to one launch."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    total = 0
    for value in bound.values():
        if not isinstance(value, torch.Tensor):
            continue
        key = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if key in seen:
            continue
        seen.add(key)
        total += value.numel() * value.element_size()
    return total


def _largest_tensor(bound: Mapping[str, Any]) -> int:
    sizes = [value.numel() for value in bound.values() if isinstance(value, torch.Tensor)]
    return max(sizes, default=0)


def _conv_flops(kind: str, a: Mapping[str, Any], groups: int) -> int:
    """2 * (output pixels) * (output channels) * (input channels per group) * kernel area."""
    per_output = 2 * a["OCG"] * a["CG"] * a["KH"] * a["KW"] * groups
    if kind == "fwd":  # M = N * OH * OW output pixels
        return a["M"] * per_output
    if kind == "bwd_input":  # M = N * H * W input pixels; the useful work is the forward's
        images = a["M"] // max(a["H"] * a["W"], 1)
        return images * a["OH"] * a["OW"] * per_output
    return a["K"] * per_output  # bwd_weight: K = N * OH * OW, the reduction length


def launch_flops(kernel: str, bound: Mapping[str, Any], grid: tuple[int, ...]) -> int:
    """FLOPs of one launch of `kernel` with these bound arguments (see the module docstring)."""
    for kind in ("bwd_input", "bwd_weight", "fwd"):
        if kernel.startswith("_conv2d_") and kernel.endswith(f"_{kind}_kernel") and "OCG" in bound:
            return _conv_flops(kind, bound, grid[2] if len(grid) > 2 else 1)
    if all(isinstance(bound.get(dim), int) for dim in ("M", "N", "K")):
        return 2 * bound["M"] * bound["N"] * bound["K"]
    if all(isinstance(bound.get(dim), int) for dim in ("N", "T", "H", "G")):
        # the recurrent matmul h_{t-1} @ W_hh^T (G gates) for every step and row; cell math not counted
        return 2 * bound["N"] * bound["T"] * bound["H"] * bound["G"] * bound["H"]
    if all(isinstance(bound.get(dim), int) for dim in ("total", "KH", "KW")) and "fwd" in kernel:
        return bound["total"] * bound["KH"] * bound["KW"]  # a pooling window per output element
    return _largest_tensor(bound)


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
    phase = "fwd" if launch.phase == "forward" else "bwd"
    return (f"    {phase}  {launch.kernel:<28} grid={grid:<14} {blocks:<52} "
            f"{_human(launch.bytes, 'B'):>10} {_human(launch.flops, 'FLOP'):>13}")


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
    lines.append(_totals(launches))
    return "\n".join(lines)


def _totals(launches: list[Launch]) -> str:
    parts = []
    for phase in ("forward", "backward"):
        chosen = [launch for launch in launches if launch.phase == phase]
        parts.append(f"{phase}: {len(chosen)} launches, {_human(sum(x.bytes for x in chosen), 'B')}, "
                     f"{_human(sum(x.flops for x in chosen), 'FLOP')}")
    note = ("bytes: each distinct tensor argument once (compulsory traffic; re-reads of tiles not counted); "
            "FLOPs: a multiply-add is 2, other kernels count 1 per element")
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
