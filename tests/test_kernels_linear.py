"""linear / linear_act kernels vs torch.nn.functional: forward, input, weight and bias gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_conv import strided_like
from kernel_helpers_dense import check

from netc.kernels import activation, policy
from netc.kernels.linear import linear, linear_act

SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}

# id -> (input shape, out_features); odd sizes, some over one 64-wide tile and several K steps
SHAPES: dict[str, tuple[tuple[int, ...], int]] = {
    "2d": ((13, 29), 11),
    "batch1": ((1, 37), 5),
    "multi-tile": ((70, 131), 67),
    "3d-sequence": ((3, 7, 19), 23),
    "4d": ((2, 3, 5, 9), 17),
    "1d": ((21,), 6),
}
ACTIVATIONS = list(activation.ACTIVATIONS)  # None first, then every activation activation.py knows


def _reference(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, act: str | None, slope: float):
    return reference_activation(F.linear(x, w, b), act, slope)


def reference_activation(z: torch.Tensor, act: str | None, slope: float) -> torch.Tensor:
    """PyTorch's activation `act` (an activation.ACTIVATIONS name) of z."""
    if act == "leaky_relu":
        return F.leaky_relu(z, slope)
    if act == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    return z if act is None else getattr(F, act)(z)


def _compare(
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    act: str | None = None,
    slope: float = 0.01,
    dtype: torch.dtype = torch.float64,
    label: str = "linear",
    strided_grad: bool = False,
) -> None:
    """Forward and every gradient of our kernel (inputs cast to dtype) vs torch in float64."""
    inputs = [t for t in (x, w, b) if t is not None]
    ours_in = [t.detach().to(dtype).requires_grad_(True) for t in inputs]
    ref_in = [t.detach().double().requires_grad_(True) for t in inputs]
    ours_b = ours_in[2] if b is not None else None
    ref_b = ref_in[2] if b is not None else None
    if act:
        y = linear_act(ours_in[0], ours_in[1], ours_b, act, slope)
    else:
        y = linear(ours_in[0], ours_in[1], ours_b)
    y_ref = _reference(ref_in[0], ref_in[1], ref_b, act, slope)
    check(f"{label}:forward", y, y_ref, dtype)
    grad = torch.randn(y_ref.shape, dtype=torch.float64, device=x.device)
    ours_grad = grad.to(dtype)
    if strided_grad:  # the same values, laid out as a slice of a transpose: not contiguous
        ours_grad = strided_like(y_ref.shape, dtype, str(x.device)).copy_(grad)
        assert not ours_grad.is_contiguous()
    grads = torch.autograd.grad(y, ours_in, ours_grad)
    grads_ref = torch.autograd.grad(y_ref, ref_in, grad)
    assert len(grads) == len(grads_ref) == len(inputs)
    for name, g, g_ref in zip(("grad_input", "grad_weight", "grad_bias"), grads, grads_ref, strict=False):
        check(f"{label}:{name}", g, g_ref, dtype)


def _make(shape: tuple[int, ...], out: int, device: str, dtype: torch.dtype = torch.float64):
    x = torch.randn(shape, dtype=dtype, device=device)
    w = torch.randn(out, shape[-1], dtype=dtype, device=device) / shape[-1] ** 0.5
    b = torch.randn(out, dtype=dtype, device=device)
    return x, w, b


@pytest.mark.parametrize("with_bias", [True, False], ids=["bias", "no-bias"])
@pytest.mark.parametrize("case", SHAPES)
def test_linear_matches_torch(case: str, with_bias: bool, device: str) -> None:
    x, w, b = _make(*SHAPES[case], device)
    _compare(x, w, b if with_bias else None)


@pytest.mark.parametrize("act", ACTIVATIONS[1:])
@pytest.mark.parametrize("case", ["2d", "3d-sequence", "multi-tile"])
def test_linear_act_matches_torch(case: str, act: str, device: str) -> None:
    x, w, b = _make(*SHAPES[case], device)
    _compare(x, w, b, act, label="linear_act")


@pytest.mark.parametrize("slope", [0.0, 0.3, -0.2])
def test_linear_act_leaky_slopes_and_no_bias(slope: float, device: str) -> None:
    x, w, _ = _make((9, 17), 13, device)
    _compare(x, w, None, "leaky_relu", slope, label="linear_act")


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_float32_within_float32_tolerance(act: str | None, device: str) -> None:
    x, w, b = _make((33, 45), 19, device)
    _compare(x, w, b, act, dtype=torch.float32, label="linear_act" if act else "linear")


def test_non_contiguous_input_and_weight(device: str) -> None:
    x = torch.randn(29, 15, dtype=torch.float64, device=device).t()  # (15, 29), column-major
    w = torch.randn(29, 40, dtype=torch.float64, device=device)[:, ::2].t()  # (20, 29), strided
    x3 = torch.randn(5, 9, 3, 29, dtype=torch.float64, device=device)[:, ::2, 1]  # (5, 5, 29), not viewable
    assert not (x.is_contiguous() or w.is_contiguous() or x3.is_contiguous())
    b = torch.randn(20, dtype=torch.float64, device=device)
    _compare(x, w, b)
    _compare(x3, w, b, "tanh", label="linear_act")


def test_partial_requires_grad(device: str) -> None:
    """Only the weight needs a gradient (a frozen input): the others are skipped, the weight's is right."""
    x, w, b = _make((11, 7), 5, device)
    w.requires_grad_(True)
    (gw,) = torch.autograd.grad(linear_act(x, w, b, "sigmoid").sum(), w)
    wr = w.detach().clone().requires_grad_(True)
    (gw_ref,) = torch.autograd.grad(torch.sigmoid(F.linear(x, wr, b)).sum(), wr)
    check("linear_act:grad_weight", gw, gw_ref)


def test_zero_in_features_gives_activated_bias(device: str) -> None:
    x, w, b = _make((4, 0), 3, device)
    check("linear:forward", linear_act(x, w, b, "relu"), F.relu(F.linear(x, w, b)))
    _compare(x, w, b, "sigmoid", label="linear_act")  # the bias gradient still sums the rows


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("act", [None, "tanh"])
def test_non_contiguous_output_gradient(act: str | None, dtype: torch.dtype, device: str) -> None:
    """dL/dy that is a strided view: the input, weight and bias gradients read it by its strides."""
    for shape in ((13, 17), (3, 5, 13)):  # 2-D reaches the kernels as it is; 3-D goes through a reshape
        x, w, b = _make(shape, 9, device)
        _compare(x, w, b, act, dtype=dtype, label="linear_act" if act else "linear", strided_grad=True)


@pytest.mark.parametrize("needs", ["input", "bias", "input+bias"])
def test_other_partial_gradients(needs: str, device: str) -> None:
    """Only some of input / bias need a gradient (the weight is frozen): those gradients are right."""
    x, w, b = _make((7, 11), 5, device)
    x.requires_grad_("input" in needs)
    b.requires_grad_("bias" in needs)
    xr, br = (t.detach().clone().requires_grad_(t.requires_grad) for t in (x, b))
    leaves, ref_leaves = [t for t in (x, b) if t.requires_grad], [t for t in (xr, br) if t.requires_grad]
    grads = torch.autograd.grad(linear_act(x, w, b, "tanh").sum(), leaves)
    refs = torch.autograd.grad(torch.tanh(F.linear(xr, w, br)).sum(), ref_leaves)
    assert len(grads) == len(needs.split("+"))
    for g, g_ref in zip(grads, refs, strict=True):
        check("linear_act:partial", g, g_ref)


def test_bias_gradient_over_several_row_steps(device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bias gradient is summed in the weight-gradient GEMM over its K (= rows) steps, or alone by
    column_sums when the weight is frozen: more rows than one step holds, at the interpreter's blocks and
    at 16-wide blocks (several steps and programs, partial last ones)."""
    x, w, b = _make((263, 5), 3, device)  # 263 rows > the interpreter's 256 per column-sum step
    _compare(x, w, b)
    monkeypatch.setattr(policy, "gemm_config", lambda dtype, m=0, n=0: dict(SMALL_TILES))
    sums = {"BLOCK_R": 16, "BLOCK_C": 16, "num_warps": 1}
    monkeypatch.setattr(policy, "column_sums_config", lambda dtype: dict(sums))
    x, w, b = _make((3, 13, 7), 21, device)  # 39 rows: three K steps; 21 columns: two programs
    _compare(x, w, b, "sigmoid", label="linear_act")
    _compare(x, w, b, dtype=torch.float32)
    w.requires_grad_(False)
    for act in (None, "tanh"):  # frozen weight: the column-sum kernel alone, on dL/dz
        xr, br = x.clone().requires_grad_(True), b.clone().requires_grad_(True)
        (gb,) = torch.autograd.grad(linear_act(xr, w, br, act).sum(), br)
        (gb_ref,) = torch.autograd.grad(_reference(xr, w, br, act, 0.01).sum(), br)
        check("linear_act:grad_bias", gb, gb_ref)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grouped_tile_order_over_several_groups(
    dtype: torch.dtype, device: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """16 x 16 x 16 tiles in groups of 2 tile rows: 70 rows make 5 tile rows (3 groups, the last
    one short), 67 columns 5 tile columns; the interpreter's 64-tiles never leave the first group."""
    monkeypatch.setattr(policy, "gemm_config", lambda dtype, m=0, n=0: dict(SMALL_TILES))
    x, w, b = _make((70, 37), 67, device)
    _compare(x, w, b, "leaky_relu", 0.2, dtype=dtype, label="linear_act")


@pytest.mark.parametrize("act", ["relu"])
def test_split_k_matches_torch(act: str | None, device: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Split-K forced on (3 splits of 16-deep steps) in every GEMM of the forward and the backward
    (test_kernels_gemm.py covers the split path itself)."""
    monkeypatch.setattr(policy, "gemm_config", lambda dtype, m=0, n=0: dict(SMALL_TILES))
    monkeypatch.setattr(policy, "split_k", lambda tiles, steps, min_steps_per_split=4: 3)
    x, w, b = _make((37, 83), 19, device)
    _compare(x, w, b, act, -0.2, label="linear_act" if act else "linear")


def test_rejections(device: str) -> None:
    x, w, b = _make((4, 6), 3, device)
    with pytest.raises(NotImplementedError, match="swish"):
        linear_act(x, w, b, "swish")
    with pytest.raises(NotImplementedError, match="float16"):
        linear(x.half(), w.half())
    with pytest.raises(NotImplementedError, match="mixed"):
        linear(x, w.float())
    with pytest.raises(ValueError, match="do not match"):
        linear(x, w.t())
    with pytest.raises(ValueError, match="bias"):
        linear(x, w, b[:2])
