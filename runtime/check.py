"""`netc check FILE`: each layer and the whole net, Triton kernels vs PyTorch -> error tables, exit 0/1.

Each node is built twice (Triton and torch backends, the same state), run
forward and backward on the same random inputs of its in_shapes (with the
batch of --batch) and the same random output gradient; then each fused
pair (conv2d_act / linear_act against the two PyTorch layers) and each
batchnorm folded into the layer before (eval mode); then the whole network
(the Triton backend's passes applied, eval mode) plus its loss. Layers with
buffers (batchnorm) also run in training mode, and their updated buffers are
compared; running statistics start random, so evaluation with them is a real
test. The
error of a tensor is max|a - b| (absolute) and that divided by
max(max|b|, 1e-6) (relative to the reference's scale, so it stays
meaningful where the reference is near zero). Layers run in float32; the
PyTorch reference runs without TF32 (`full_float32`).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from netc.dsl.ir import Graph, Node
from netc.dsl.ops import numel
from netc.runtime import backends
from netc.runtime.layers import Block, build_layer
from netc.runtime.lower import Fusion, Network, compile, find_fusions, resolve_target
from netc.runtime.memory import check_fits
from netc.runtime.passes import find_batchnorm_folds

# Default largest relative error: float32 with ieee dots differs from PyTorch only by summation order.
TOLERANCE_IEEE = 1e-4
# With TF32 dots (a 10-bit mantissa) on the GPU, products carry ~5e-4 relative error each.
TOLERANCE_TF32 = 1e-2
SCALE_FLOOR = 1e-6  # the smallest reference scale a relative error divides by
SEED = 0


@dataclass(frozen=True)
class Comparison:
    """One tensor compared: which layer, which tensor, the largest errors."""

    layer: str
    tensor: str
    abs_error: float
    rel_error: float


def compare(layer: str, tensor: str, got: torch.Tensor | None, want: torch.Tensor | None) -> Comparison:
    """Errors of `got` against the reference `want`; a missing, misshapen or non-finite result is inf."""
    if got is None or want is None or got.shape != want.shape:
        both_missing = got is None and want is None
        return Comparison(layer, tensor, 0.0 if both_missing else float("inf"),
                          0.0 if both_missing else float("inf"))
    got, want = got.detach().double(), want.detach().double()
    if not bool(torch.isfinite(got).all()):  # NaN or inf (e.g. a poisoned element never written)
        return Comparison(layer, tensor, float("inf"), float("inf"))
    if got.numel() == 0:
        return Comparison(layer, tensor, 0.0, 0.0)
    abs_error = float((got - want).abs().nan_to_num(nan=float("inf")).max())  # a NaN reference fails too
    scale = max(float(want.abs().max()), SCALE_FLOOR)
    return Comparison(layer, tensor, abs_error, abs_error / scale)


@contextlib.contextmanager
def full_float32() -> Iterator[None]:
    """PyTorch's reference without TF32: cuDNN convolutions and RNNs default to TF32 on the GPU.

    Without this the reference itself is off by ~1e-3 relative on CUDA, and
    an ieee-exact Triton kernel would fail against it.
    """
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def default_tolerance(device: torch.device) -> tuple[float, str]:
    """The default largest relative error and the precision it assumes, in words."""
    if device.type == "cuda" and _tf32_enabled(device):
        return TOLERANCE_TF32, "float32 with TF32 dots"
    return TOLERANCE_IEEE, "float32 with ieee dots"


def _tf32_enabled(device: torch.device) -> bool:
    """Whether netc's float32 dots run TF32 there (kernels/policy.py follows PyTorch's switches)."""
    from netc.kernels import policy

    return any(policy.dot_precision(kind, torch.float32, device) == "tf32" for kind in policy.DOT_KINDS)


def _forward_backward(
    module: nn.Module, xs: list[torch.Tensor], grad_out: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor | None], dict[str, torch.Tensor | None]]:
    """Output, input gradients and parameter gradients of one run (grads cleared first)."""
    module.zero_grad(set_to_none=True)
    xs = [x.detach().clone().requires_grad_(True) for x in xs]
    out = module(*xs)
    out.backward(grad_out)
    grads = {name: p.grad for name, p in module.named_parameters()}
    return out, [x.grad for x in xs], grads


def _node_module(node: Node, backend: str) -> nn.Module:
    """The module of one node on a backend: its layer, or for a merge node a Block that merges."""
    if node.op not in ("add", "concat"):
        return build_layer(node, backends.get(backend))
    block = Block()
    block.merge, block.axis = node.op, 2 if len(node.out_shape) == 2 else 1
    return block


def check_layer(node: Node, device: torch.device, batch: int) -> list[Comparison]:
    """One node on both backends: output, input grad(s), parameter grads."""
    torch.manual_seed(SEED)
    reference = randomize_buffers(_node_module(node, "torch")).to(device)
    triton_layer = _node_module(node, "triton").to(device)
    triton_layer.load_state_dict(reference.state_dict())
    xs = [torch.randn(batch, *shape, device=device) for shape in node.in_shapes]
    if node.op == "dropout":
        return _check_dropout(node, triton_layer, xs[0])
    grad_out = torch.randn(batch, *node.out_shape, device=device)
    rows = _compare_runs(node.name, reference.eval(), triton_layer.eval(), xs, grad_out)
    if node.buffers and batch * numel(node.in_shape[1:]) > 1:  # batch statistics need 2+ values
        rows += _check_training(node.name, reference, triton_layer, xs, grad_out)
    return rows


def randomize_buffers(module: nn.Module) -> nn.Module:
    """Running statistics as training leaves them (means near 0, variances near 1), not the fresh 0 and 1."""
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
            elif buffer.is_floating_point():
                buffer.normal_()
    return module


def _check_training(label: str, reference: nn.Module, candidate: nn.Module, xs: list[torch.Tensor],
                    grad_out: torch.Tensor) -> list[Comparison]:
    """Training mode (batch statistics), then every buffer as the step left it."""
    rows = _compare_runs(label, reference.train(), candidate.train(), xs, grad_out)
    rows = [dataclasses.replace(row, tensor=f"{row.tensor} (training)") for row in rows]
    got = dict(candidate.named_buffers())
    return rows + [compare(label, name, got[name], want) for name, want in reference.named_buffers()]


class _Epilogue(nn.Sequential):
    """(producer, activation) run as the fusion pass runs them: the activation in the producer's epilogue."""

    def __init__(self, fusion: Fusion, producer: nn.Module, activation: nn.Module) -> None:
        super().__init__(producer, activation)
        self.keywords = {"activation": fusion.activation.op, "slope": fusion.slope}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x, **self.keywords)


def check_fusion(fusion: Fusion, device: torch.device, batch: int) -> list[Comparison]:
    """A fused pair (conv2d_act / linear_act) against PyTorch's two separate layers."""
    torch.manual_seed(SEED)
    pair = (fusion.producer, fusion.activation)
    reference = nn.Sequential(*(_node_module(node, "torch") for node in pair)).to(device).eval()
    fused = _Epilogue(fusion, *(_node_module(node, "triton") for node in pair)).to(device).eval()
    fused.load_state_dict(reference.state_dict())
    x = torch.randn(batch, *fusion.producer.in_shape, device=device)
    grad_out = torch.randn(batch, *fusion.activation.out_shape, device=device)
    label = f"{fusion.producer.name}+{fusion.activation.name}"
    return _compare_runs(label, reference, fused, [x], grad_out)


class _Folded(nn.Sequential):
    """(conv2d/linear, batchnorm) run as the eval-mode fold runs them: the statistics in the weights."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[0](x, batchnorm=self[1])


def check_fold(producer: Node, norm: Node, device: torch.device, batch: int) -> list[Comparison]:
    """A batchnorm folded into the conv2d/linear before it (eval mode) against PyTorch's two layers."""
    torch.manual_seed(SEED)
    pair = (producer, norm)
    reference = randomize_buffers(nn.Sequential(*(_node_module(node, "torch") for node in pair)))
    folded = _Folded(*(_node_module(node, "triton") for node in pair)).to(device).eval()
    folded.load_state_dict(reference.to(device).eval().state_dict())
    x = torch.randn(batch, *producer.in_shape, device=device)
    grad_out = torch.randn(batch, *norm.out_shape, device=device)
    return _compare_runs(f"{producer.name}+{norm.name}", reference, folded, [x], grad_out)


def _compare_runs(
    label: str, reference: nn.Module, candidate: nn.Module, xs: list[torch.Tensor], grad_out: torch.Tensor
) -> list[Comparison]:
    """Output, input gradient(s) and each parameter gradient of `candidate` against `reference`."""
    want_out, want_dxs, want_grads = _forward_backward(reference, xs, grad_out)
    got_out, got_dxs, got_grads = _forward_backward(candidate, xs, grad_out)
    rows = [compare(label, "output", got_out, want_out)]
    for index, (got_dx, want_dx) in enumerate(zip(got_dxs, want_dxs, strict=True)):
        rows.append(compare(label, "grad input" + (f" {index}" if len(xs) > 1 else ""), got_dx, want_dx))
    for name in want_grads:
        shown = name.split(".", 1)[1] if label.count("+") else name  # "0.weight" of a pair -> "weight"
        rows.append(compare(label, f"grad {shown}", got_grads[name], want_grads[name]))
    return rows


def _check_dropout(node: Node, triton_layer: nn.Module, x: torch.Tensor) -> list[Comparison]:
    """Training-mode dropout: the reference keeps exactly the elements the kernel kept, scaled by 1/(1-p)."""
    p = float(node.attrs["p"])
    triton_layer.train()
    x_triton = x.clone().requires_grad_(True)
    got = triton_layer(x_triton)
    kept = (got != 0).to(x.dtype)  # x is standard normal: a zero output means dropped
    x_ref = x.clone().requires_grad_(True)
    want = x_ref * kept / (1.0 - p)
    grad_out = torch.randn_like(want)
    got.backward(grad_out)
    want.backward(grad_out)
    return [compare(node.name, "output", got, want),
            compare(node.name, "grad input", x_triton.grad, x_ref.grad),
            _kept_fraction(node.name, kept, p)]


def _kept_fraction(layer: str, kept: torch.Tensor, p: float) -> Comparison:
    """The share of kept elements against 1 - p: absolute gap, and inf beyond 6 binomial sigmas.

    Catches a mask that drops everything (which the comparisons above, built
    from the kernel's own mask, would accept) without failing on chance.
    """
    count = kept.numel()
    gap = abs(float(kept.mean()) - (1.0 - p)) if count else 0.0
    bound = 6.0 * (p * (1.0 - p) / max(count, 1)) ** 0.5 + 1.0 / max(count, 1)
    return Comparison(layer, "kept share vs 1-p", gap, 0.0 if gap <= bound else float("inf"))


def check_network(graph: Graph, device: torch.device, batch: int) -> list[Comparison]:
    """The whole net (fused on the Triton side) in eval mode, plus its loss on random targets."""
    reference = randomize_buffers(compile(graph, device, "torch", seed=SEED)).eval()
    triton_net = compile(graph, device, "triton").eval()
    triton_net.load_state_dict(reference.state_dict())
    x = torch.randn(batch, *graph.input_shape, device=device)
    classifies = len(graph.output_shape) == 1
    targets = torch.randint(0, graph.output_shape[0], (batch,), device=device) if classifies else None
    runs = [_network_run(net, x, targets, graph.train.label_smoothing) for net in (triton_net, reference)]
    (got_out, got_loss, got_dx, got_grads), (want_out, want_loss, want_dx, want_grads) = runs
    rows = [compare("net", "output", got_out, want_out)]
    if classifies:
        rows.append(compare("net", "loss", got_loss, want_loss))
    rows.append(compare("net", "grad input", got_dx, want_dx))
    rows += [compare("net", f"grad {name}", got_grads[name], want_grads[name]) for name in want_grads]
    return rows


def _network_run(
    net: Network, x: torch.Tensor, targets: torch.Tensor | None, label_smoothing: float
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, dict[str, torch.Tensor | None]]:
    torch.manual_seed(SEED + 1)  # the same output gradient on both sides when there is no loss
    x = x.clone().requires_grad_(True)
    out = net(x)
    loss = net.loss(out, targets, label_smoothing) if targets is not None else None
    if loss is not None:
        loss.backward()
    else:
        out.backward(torch.randn_like(out))
    return out, loss, x.grad, {name: p.grad for name, p in net.named_parameters()}


def format_rows(rows: list[Comparison], tolerance: float) -> str:
    """One line per tensor: layer, tensor, largest absolute and relative error, ok/FAIL."""
    lines = [f"  {'tensor':<22} {'max abs err':>12} {'max rel err':>12}"]
    for row in rows:
        verdict = "ok" if row.rel_error <= tolerance else "FAIL"
        lines.append(f"  {row.tensor:<22} {row.abs_error:>12.3e} {row.rel_error:>12.3e}  {verdict}")
    return "\n".join(lines)


def _sections(graph: Graph, device: torch.device, batch: int) -> list[tuple[str, list[Comparison]]]:
    """(title, rows): every layer, every fused pair, then the whole network with its loss."""
    sections = []
    for node in graph.nodes:
        inputs = " + ".join(_batched(batch, shape) for shape in node.in_shapes)
        title = f"layer {node.name} {_describe(node)} (line {node.loc.line}), input {inputs}"
        sections.append((title, check_layer(node, device, batch)))
    for fusion in find_fusions(graph.nodes):
        title = f"fused {fusion.describe()}, input {_batched(batch, fusion.producer.in_shape)}"
        sections.append((title, check_fusion(fusion, device, batch)))
    for producer, norm in find_batchnorm_folds(graph.nodes):
        title = (f"folded {producer.name} {producer.op} + {norm.name} batchnorm (eval mode), "
                 f"input {_batched(batch, producer.in_shape)}")
        sections.append((title, check_fold(producer, norm, device, batch)))
    whole = f"whole network {graph.name} (fused, eval mode) + loss"
    sections.append((whole, check_network(graph, device, batch)))
    return sections


def _describe(node: Node) -> str:
    """The op as the source says it: `residual` or `parallel add` for a block's merge node."""
    if node.op not in ("add", "concat"):
        return node.op
    return "residual" if node.attrs["block"] == "residual" else f"parallel {node.op}"


def _batched(batch: int, shape: tuple[int, ...]) -> str:
    return f"[N={batch}, {'x'.join(map(str, shape))}]"


def run(args: argparse.Namespace) -> int:
    """Check FILE layer by layer and as a whole; print the tables; 1 if any error exceeds the tolerance."""
    from netc.dsl.check import parse_path

    graph = parse_path(args.file)
    device, _, _ = resolve_target(args.device, "triton")
    check_fits(graph, args.batch, device, copies=2)  # a triton and a torch copy; refuse before allocating
    tolerance, precision = default_tolerance(device)
    if args.tol is not None:
        tolerance, precision = args.tol, "given by --tol"
    print(f"netc check {graph.name}: triton vs torch on {device}, batch {args.batch}, "
          f"tolerance {tolerance:g} relative ({precision})")
    failures = 0
    with full_float32():
        sections = _sections(graph, device, args.batch)
    for title, rows in sections:
        print(title)
        print(format_rows(rows, tolerance))
        failures += sum(row.rel_error > tolerance for row in rows)
    every = [row for _, rows in sections for row in rows]
    worst = max(every, key=lambda row: row.rel_error)
    print(f"largest relative error {worst.rel_error:.3e}: layer {worst.layer}, {worst.tensor}")
    if failures:
        print(f"FAILED: {failures} of {len(every)} tensors exceed the tolerance {tolerance:g}")
        return 1
    print(f"ok: all {len(every)} tensors within {tolerance:g}")
    return 0
