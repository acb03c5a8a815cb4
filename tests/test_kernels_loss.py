"""cross_entropy kernel vs torch.nn.functional.cross_entropy: loss and input gradient, all arguments."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_conv import strided_like
from kernel_helpers_dense import check

from netc.kernels import loss as loss_module
from netc.kernels import config, gemm, policy
from netc.kernels.loss import cross_entropy, unit_gradient
from netc.runtime.opcount import count_step_ops

C = 7
# id -> input shape; class dimension is 1 (0 when unbatched)
SHAPES: dict[str, tuple[int, ...]] = {
    "2d": (13, C), "batch1": (1, C), "kdim": (3, C, 5, 3), "unbatched": (C,),
}


def _targets(shape: tuple[int, ...], kind: str, device: str) -> torch.Tensor:
    if kind == "probs":
        logits = torch.randn(shape, dtype=torch.float64, device=device)
        return torch.softmax(logits, dim=1 if len(shape) > 1 else 0)
    classes = shape[1] if len(shape) > 1 else shape[0]
    index_shape = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    return torch.randint(0, classes, index_shape, device=device)


def _compare(
    x: torch.Tensor,
    target: torch.Tensor,
    dtype: torch.dtype = torch.float64,
    strided_grad: bool = False,
    **kwargs,
) -> None:
    """Loss and d loss / d input of ours (input cast to dtype) vs torch's in float64."""
    ours_x = x.detach().to(dtype).requires_grad_(True)
    ref_x = x.detach().double().requires_grad_(True)
    ours_t = target.to(dtype) if target.is_floating_point() else target
    ours_kw = {k: (v.to(dtype) if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
    loss = cross_entropy(ours_x, ours_t, **ours_kw)
    loss_ref = F.cross_entropy(ref_x, target, **kwargs)
    check("cross_entropy:forward", loss, loss_ref, dtype)
    grad = torch.randn(loss_ref.shape, dtype=torch.float64, device=x.device)
    ours_grad = grad.to(dtype)
    if strided_grad:  # per-element losses, weighted through a slice of a transpose: not contiguous
        ours_grad = strided_like(loss_ref.shape, dtype, str(x.device)).copy_(grad)
        assert not ours_grad.is_contiguous()
    (dx,) = torch.autograd.grad(loss, ours_x, ours_grad)
    (dx_ref,) = torch.autograd.grad(loss_ref, ref_x, grad)
    check("cross_entropy:grad", dx, dx_ref, dtype)


@pytest.mark.parametrize("smoothing", [0.0, 0.25])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", SHAPES)
def test_matches_torch(
    case: str, reduction: str, kind: str, weighted: bool, smoothing: float, device: str
) -> None:
    shape = SHAPES[case]
    x = torch.randn(shape, dtype=torch.float64, device=device) * 2
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1 if weighted else None
    _compare(x, _targets(shape, kind, device), reduction=reduction, weight=weight, label_smoothing=smoothing)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [-100, 2])
def test_ignore_index(ignore_index: int, reduction: str, device: str) -> None:
    x = torch.randn(3, C, 4, dtype=torch.float64, device=device)
    target = torch.randint(0, C, (3, 4), device=device)
    target[0, 1:3] = ignore_index
    target[2, 0] = ignore_index
    weight = torch.rand(C, dtype=torch.float64, device=device)
    _compare(x, target, ignore_index=ignore_index, reduction=reduction, weight=weight, label_smoothing=0.1)
    _compare(x, target, ignore_index=ignore_index, reduction=reduction)


@pytest.mark.filterwarnings("ignore:(invalid value|divide by zero):RuntimeWarning")  # the 0/0 itself
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_mean_with_every_target_ignored_is_nan_with_zero_grad(smoothing: float, device: str) -> None:
    x = torch.randn(5, C, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.full((5,), -100, device=device)
    loss = cross_entropy(x, target, label_smoothing=smoothing)
    assert torch.isnan(loss) and torch.isnan(F.cross_entropy(x, target, label_smoothing=smoothing))
    (dx,) = torch.autograd.grad(loss, x)
    (dx_ref,) = torch.autograd.grad(F.cross_entropy(x, target, label_smoothing=smoothing), x)
    assert torch.equal(dx, dx_ref) and torch.equal(dx, torch.zeros_like(dx))


def _four_rows_per_program(monkeypatch: pytest.MonkeyPatch) -> None:
    tiles = policy.loss_tiles
    monkeypatch.setattr(policy, "loss_tiles", lambda rows, classes: dict(tiles(rows, classes), BLOCK_R=4))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "probs"])
def test_rows_over_several_programs(
    kind: str, reduction: str, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """4 rows per program: 39 rows take 10 programs (the last partial), whose partial sums and
    weight totals must all reach the mean; every other test fits its rows in one program."""
    _four_rows_per_program(monkeypatch)
    x = torch.randn(3, C, 13, dtype=torch.float64, device=device)
    target = _targets((3, C, 13), kind, device)
    if kind == "index":
        target[1, 2:6] = -100
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    _compare(x, target, reduction=reduction, weight=weight, label_smoothing=0.15)
    _compare(x, target, torch.float32, reduction=reduction)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_many_classes_and_large_logits_are_stable(kind: str, device: str) -> None:
    """C = 1500 spans two class chunks (online max across chunks); logits of +-1e3 overflow a naive exp."""
    x = torch.randn(3, 1500, dtype=torch.float64, device=device) * 1000
    _compare(x, _targets((3, 1500), kind, device), label_smoothing=0.1)
    _compare(x.float(), _targets((3, 1500), kind, device), dtype=torch.float32)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_class_weights_across_class_chunks(kind: str, device: str) -> None:
    """C = 1031 spans two class chunks with a 7-class tail: the weighted smoothing sum and the
    weighted target term read every chunk's weights (the other weighted tests fit one chunk)."""
    classes = 1031
    x = torch.randn(2, classes, 3, dtype=torch.float64, device=device) * 3
    weight = torch.rand(classes, dtype=torch.float64, device=device) + 0.1
    target = _targets((2, classes, 3), kind, device)
    if kind == "index":
        target[0, 0], target[1, 1] = classes - 1, 1024  # in the tail chunk
    _compare(x, target, weight=weight, label_smoothing=0.2)
    _compare(x, target, weight=weight, reduction="none")


@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_float32_within_float32_tolerance(kind: str, reduction: str, device: str) -> None:
    x = torch.randn(19, C, 3, dtype=torch.float64, device=device)
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    target = _targets((19, C, 3), kind, device)
    _compare(x, target, torch.float32, reduction=reduction, weight=weight, label_smoothing=0.2)


def test_non_contiguous_input_and_target(device: str) -> None:
    x = torch.randn(C, 11, dtype=torch.float64, device=device).t()  # (11, C), column-major
    target = torch.randint(0, C, (22,), device=device)[::2]
    probs = torch.softmax(torch.randn(C, 11, dtype=torch.float64, device=device), 0).t()
    assert not (x.is_contiguous() or target.is_contiguous() or probs.is_contiguous())
    _compare(x, target, label_smoothing=0.1)
    _compare(x, probs, reduction="sum")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["index", "probs"])
@pytest.mark.parametrize("case", ["2d", "kdim"])
def test_non_contiguous_output_gradient(case: str, kind: str, dtype: torch.dtype, device: str) -> None:
    """reduction='none' with a strided dL/dloss: each row's gradient is scaled by its own entry."""
    shape = SHAPES[case]
    x = torch.randn(shape, dtype=torch.float64, device=device)
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    _compare(x, _targets(shape, kind, device), dtype, strided_grad=True, reduction="none", weight=weight)


def test_int32_targets(device: str) -> None:
    x = torch.randn(9, C, dtype=torch.float64, device=device)
    target = torch.randint(0, C, (9,), device=device)
    check("cross_entropy:forward", cross_entropy(x, target.int()), F.cross_entropy(x, target))
    # and the backward reads the int32 targets as the forward did (torch itself wants int64)
    ours_x, ref_x = (x.detach().clone().requires_grad_(True) for _ in range(2))
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    grad = torch.randn(9, dtype=torch.float64, device=device)
    loss = cross_entropy(ours_x, target.int(), weight=weight, reduction="none", label_smoothing=0.1)
    loss_ref = F.cross_entropy(ref_x, target, weight=weight, reduction="none", label_smoothing=0.1)
    check("cross_entropy:forward", loss, loss_ref)
    (dx,), (dx_ref,) = torch.autograd.grad(loss, ours_x, grad), torch.autograd.grad(loss_ref, ref_x, grad)
    check("cross_entropy:grad", dx, dx_ref)


def test_out_of_range_target_gives_nan(device: str) -> None:
    x = torch.randn(4, C, dtype=torch.float64, device=device)
    target = torch.tensor([0, C, 1, -3], device=device)
    losses = cross_entropy(x, target, reduction="none")
    assert torch.isnan(losses[1]) and torch.isnan(losses[3])
    expected = F.cross_entropy(x[[0, 2]], target[[0, 2]], reduction="none")
    check("cross_entropy:forward", losses[[0, 2]], expected)


def test_rejections(device: str) -> None:
    x = torch.randn(4, C, device=device)
    target = torch.randint(0, C, (4,), device=device)
    with pytest.raises(NotImplementedError, match="size_average"):
        cross_entropy(x, target, size_average=True)
    with pytest.raises(NotImplementedError, match="size_average"):
        cross_entropy(x, target, reduce=False)
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, target, reduction="avg")
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy(x, target, label_smoothing=1.5)
    with pytest.raises(ValueError, match="target"):
        cross_entropy(x, target[:3])
    with pytest.raises(ValueError, match="weight"):
        cross_entropy(x, target, weight=torch.ones(C + 1, device=device))
    with pytest.raises(NotImplementedError, match="weight"):
        cross_entropy(x, target, weight=torch.ones(C, device=device, requires_grad=True))
    with pytest.raises(NotImplementedError, match="float16"):
        cross_entropy(x.half(), target)
    probabilities = torch.softmax(torch.randn(4, C, device=device), 1)
    with pytest.raises(RuntimeError):  # PyTorch refuses it too
        F.cross_entropy(x, probabilities, ignore_index=2)
    with pytest.raises(ValueError, match="ignore_index"):
        cross_entropy(x, probabilities, ignore_index=2)


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_single_class(kind: str, device: str) -> None:
    """C = 1 (a GPU launch specialises the int 1 to a constant): loss 0 without smoothing, as torch."""
    x = torch.randn(6, 1, dtype=torch.float64, device=device)
    _compare(x, _targets((6, 1), kind, device), label_smoothing=0.2, reduction="sum")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("case", ["2d", "kdim", "unbatched"])
def test_probability_target_gradient(case: str, reduction: str, device: str) -> None:
    """d loss / d target for probability targets (PyTorch's OpInfo samples ask for it), with class
    weights and label smoothing: -g * w_c * (1 - eps) * log_softmax(x)_c, and the input's gradient."""
    shape = SHAPES[case]
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    target = _targets(shape, "probs", device).requires_grad_()
    weight = torch.rand(C, dtype=torch.float64, device=device) + 0.1
    kwargs = {"reduction": reduction, "weight": weight, "label_smoothing": 0.2}
    loss, loss_ref = cross_entropy(x, target, **kwargs), F.cross_entropy(x, target, **kwargs)
    grad = torch.randn(loss_ref.shape, dtype=torch.float64, device=device)
    ours, ref = torch.autograd.grad(loss, [x, target], grad), torch.autograd.grad(loss_ref, [x, target], grad)
    check("cross_entropy:target grad", ours[1], ref[1])
    check("cross_entropy:grad", ours[0], ref[0])
    (target_only,) = torch.autograd.grad(cross_entropy(x.detach(), target, **kwargs), target, grad)
    check("cross_entropy:target grad", target_only, ref[1])


def test_probability_target_gradient_over_several_programs(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mean's denominator comes from the last program's sum when the rows span programs."""
    _four_rows_per_program(monkeypatch)
    x = torch.randn(3, C, 5, dtype=torch.float64, device=device, requires_grad=True)
    target = _targets((3, C, 5), "probs", device).requires_grad_()
    loss, loss_ref = cross_entropy(x, target), F.cross_entropy(x, target)
    check("cross_entropy:forward", loss, loss_ref)
    ours, ref = torch.autograd.grad(loss, [x, target]), torch.autograd.grad(loss_ref, [x, target])
    check("cross_entropy:target grad", ours[1], ref[1])
    check("cross_entropy:grad", ours[0], ref[0])


@pytest.mark.parametrize("kind", ["index", "probs"])
def test_loss_and_gradient_in_one_launch(kind: str, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training step's loss: ONE GPU operation for the loss, its reduction and its input gradient
    (no zeroed accumulator, no division, no backward launch) when the step passes unit_gradient;
    with plain loss.backward() the backward scales (one launch) and is right too."""
    monkeypatch.setattr(config, "POISON_OUTPUTS", False)  # NaN fills are the tests' own ops
    x = torch.randn(23, C, dtype=torch.float32, device=device, requires_grad=True)
    target = _targets((23, C), kind, device)
    target = target.float() if kind == "probs" else target

    def step() -> torch.Tensor:
        loss = cross_entropy(x, target, label_smoothing=0.1)
        loss.backward(unit_gradient(loss))
        return loss

    unit_gradient(torch.zeros((), device=device))  # the step's seed exists before the counted step
    ops = count_step_ops(step)
    assert (ops.total, dict(ops.triton)) == (1, {"_cross_entropy_fwd_kernel": 1}), ops.summary()
    reference = x.detach().double().requires_grad_()
    F.cross_entropy(reference, target.double() if kind == "probs" else target, label_smoothing=0.1).backward()
    check("cross_entropy:grad", x.grad, reference.grad)
    x.grad = None
    ops = count_step_ops(lambda: cross_entropy(x, target, label_smoothing=0.1).backward())
    assert dict(ops.triton) == {"_cross_entropy_fwd_kernel": 1, "_cross_entropy_bwd_kernel": 1}
    check("cross_entropy:grad", x.grad, reference.grad)


def test_a_modified_unit_gradient_is_not_trusted(device: str) -> None:
    """unit_gradient's tensor written into (version counter moved) is read, not assumed to be 1."""
    x = torch.randn(5, C, dtype=torch.float64, device=device, requires_grad=True)
    target = torch.randint(0, C, (5,), device=device)
    loss = cross_entropy(x, target)
    seed = unit_gradient(loss)
    try:
        seed.mul_(3.0)
        (dx,) = torch.autograd.grad(loss, x, seed)
    finally:
        loss_module._UNITS.clear()  # the next caller gets a fresh 1
    (dx_ref,) = torch.autograd.grad(F.cross_entropy(x, target) * 3.0, x)
    check("cross_entropy:grad", dx, dx_ref)


def test_multi_program_reduction_is_deterministic_and_rezeroes_its_ticket(
    device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _four_rows_per_program(monkeypatch)
    x = torch.randn(37, C, dtype=torch.float32, device=device)
    target = torch.randint(0, C, (37,), device=device)
    first, second = cross_entropy(x, target), cross_entropy(x, target)
    assert torch.equal(first, second)
    assert not gemm._TICKETS[x.device].any()
    check("cross_entropy:forward", first, F.cross_entropy(x.double(), target), torch.float32)
