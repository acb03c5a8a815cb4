"""batch_norm and layer_norm vs torch.nn.functional: outputs, running statistics, gradients, errors."""

from __future__ import annotations

from collections.abc import Callable

import importlib

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import check, record_launches

from netc.kernels import norm_common, policy
from netc.kernels.layer_norm import layer_norm
from netc.kernels.norm import batch_norm

F64 = torch.float64
Tensors = dict[str, "torch.Tensor | None"]


@pytest.fixture(autouse=True)
def _on_device(device: str) -> object:
    """Every tensor these tests make lives on the suite's device (cuda in the GPU suite)."""
    with torch.device(device):
        yield


def _run(fn: Callable, tensors: Tensors, grad: torch.Tensor | Callable, kwargs: dict) -> tuple:
    """y = fn(**tensors, **kwargs) (called once: it may update running statistics) and the gradient of
    every tensor that requires grad for output gradient `grad` (a tensor, or a function of y)."""
    y = fn(**tensors, **kwargs)
    leaves = {name: t for name, t in tensors.items() if t is not None and t.requires_grad}
    if not leaves:
        return y, {}
    dy = grad(y) if callable(grad) else grad
    return y, dict(zip(leaves, torch.autograd.grad(y, list(leaves.values()), dy), strict=True))


def _in_dtype(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A leaf copy of t in `dtype`, keeping t's strides (so non-contiguous inputs stay non-contiguous)."""
    if t is None:
        return None
    out = torch.empty_strided(t.shape, t.stride(), dtype=dtype, device=t.device).copy_(t.detach())
    return out.requires_grad_(t.requires_grad)


def compare(name: str, ours: Callable, ref: Callable, tensors: Tensors, dtype: torch.dtype = F64,
            grad_layout: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs: object) -> None:
    """ours in `dtype`, ref in float64, on the same values: outputs, gradients, updated running statistics."""
    ref_in = {k: _in_dtype(t, F64) for k, t in tensors.items()}
    ours_in = {k: _in_dtype(t, dtype) for k, t in tensors.items()}
    drawn: list[torch.Tensor] = []  # the output gradient, drawn once y's shape is known

    def draw(y: torch.Tensor) -> torch.Tensor:
        drawn.append(torch.randn_like(y))
        return drawn[0]

    y_ref, ref_grads = _run(ref, ref_in, draw, kwargs)
    layout = grad_layout or (lambda g: g)
    y, grads = _run(ours, ours_in, lambda y: layout(drawn[0].to(dtype)), kwargs)
    check(f"{name}:forward", y, y_ref, dtype)
    assert set(grads) == set(ref_grads)
    for key, value in grads.items():
        check(f"{name}:grad_{key}", value, ref_grads[key], dtype)
    for key in ("running_mean", "running_var"):
        if ours_in.get(key) is not None:
            check(f"{name}:{key}", ours_in[key], ref_in[key], dtype)  # type: ignore[arg-type]


def _bn_tensors(shape: tuple[int, ...], affine: str = "wb", running: bool = True, scale: float = 3.0,
                offset: float = 5.0) -> Tensors:
    channels = shape[1]
    return {
        "input": (torch.randn(shape, dtype=F64) * scale + offset).requires_grad_(),
        "running_mean": torch.randn(channels, dtype=F64) if running else None,
        "running_var": torch.rand(channels, dtype=F64) + 0.5 if running else None,
        "weight": torch.randn(channels, dtype=F64).requires_grad_() if "w" in affine else None,
        "bias": torch.randn(channels, dtype=F64).requires_grad_() if "b" in affine else None,
    }


BN_SHAPES = [(7, 5), (4, 3, 11), (3, 2, 5, 7), (2, 3, 2, 3, 5)]  # BatchNorm1d (2-D, 3-D), 2d, 3d


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_matches_torch_float64(shape: tuple[int, ...], training: bool) -> None:
    compare("batch_norm", batch_norm, F.batch_norm, _bn_tensors(shape), training=training, momentum=0.37,
            eps=1e-3)


@pytest.mark.parametrize("affine", ["", "w", "b"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_without_weight_or_bias(affine: str, training: bool) -> None:
    compare("batch_norm", batch_norm, F.batch_norm, _bn_tensors((5, 3, 7), affine), training=training)


@pytest.mark.parametrize("momentum", [0.0, 1.0, -1.2])
def test_batch_norm_momentum_and_no_running_statistics(momentum: float) -> None:
    compare("batch_norm", batch_norm, F.batch_norm, _bn_tensors((6, 4, 3)), training=True, momentum=momentum)
    compare("batch_norm", batch_norm, F.batch_norm, _bn_tensors((6, 4, 3), running=False), training=True,
            momentum=momentum, eps=0.25)


def test_batch_norm_non_contiguous_layouts() -> None:
    """channels_last, a strided slice, transposed (N, C), strided running statistics and output gradient."""
    base = _bn_tensors((3, 4, 5, 7))
    base["input"] = base["input"].detach().to(memory_format=torch.channels_last).requires_grad_()
    compare("batch_norm", batch_norm, F.batch_norm, base, training=True)
    sliced = _bn_tensors((6, 3, 9, 5))
    sliced["input"] = sliced["input"].detach()[::2, :, 1::2].requires_grad_()
    sliced["running_mean"] = torch.randn(6, dtype=F64)[::2]
    sliced["running_var"] = (torch.rand(9, dtype=F64) + 0.5)[::3]
    compare("batch_norm", batch_norm, F.batch_norm, sliced, training=True,
            grad_layout=lambda g: g.transpose(0, 3).contiguous().transpose(0, 3))
    compare("batch_norm", batch_norm, F.batch_norm, sliced, training=False)
    strided = _bn_tensors((5, 4, 3))  # weight and bias every other element of a longer vector
    strided["weight"] = torch.randn(8, dtype=F64)[::2].requires_grad_()
    strided["bias"] = torch.randn(12, dtype=F64)[::3].requires_grad_()
    compare("batch_norm", batch_norm, F.batch_norm, strided, training=True)
    flat = _bn_tensors((6, 11))
    flat["input"] = flat["input"].detach().t().contiguous().t().requires_grad_()  # (N, C), channel stride N
    compare("batch_norm", batch_norm, F.batch_norm, flat, training=True)


@pytest.mark.parametrize("channels_minor", [False, True], ids=["nchw", "channels_last"])
def test_batch_norm_split_reduction(monkeypatch: pytest.MonkeyPatch, channels_minor: bool) -> None:
    """Many CTAs per channel block (4 splits of (32 x 1) tiles, or 5 splits of 3 (8 x 4) tiles; the last
    one ragged) combine exactly; the arrival counters are back at 0 afterwards."""
    monkeypatch.setattr(policy, "NORM_TILE", 32)
    monkeypatch.setattr(policy, "norm_splits", lambda blocks, rows, block_r: 5)
    tensors = _bn_tensors((5, 3, 3, 7), scale=2.0, offset=-40.0)  # R = 105 rows per channel
    if channels_minor:
        tensors["input"] = tensors["input"].detach().to(memory_format=torch.channels_last).requires_grad_()
    compare("batch_norm", batch_norm, F.batch_norm, tensors, training=True, momentum=0.2)
    compare("batch_norm", batch_norm, F.batch_norm, tensors, training=False)
    assert all(int(t.abs().sum()) == 0 for t in norm_common._TICKETS.values())


def test_batch_norm_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training: statistics (running ones included) and normalize, then one reduction and one dx pass;
    eval with only x requiring grad: one launch each way."""
    module = importlib.import_module("netc.kernels.norm")
    names = ("_bn_stats_kernel", "_bn_apply_kernel", "_bn_grad_stats_kernel", "_bn_grad_apply_kernel")
    launches = {name: record_launches(monkeypatch, module, name) for name in names}
    tensors = _bn_tensors((4, 3, 5))
    batch_norm(**tensors, training=True).sum().backward()
    assert [len(launches[name]) for name in names] == [1, 1, 1, 1]
    x = tensors["input"].detach().requires_grad_()
    batch_norm(x, tensors["running_mean"], tensors["running_var"], training=False).sum().backward()
    assert [len(launches[name]) for name in names] == [1, 2, 1, 2]


def test_batch_norm_float32_is_numerically_safe() -> None:
    """A mean 100 times the spread: a one-pass E[x^2] - E[x]^2 in float32 loses ~4 digits of the variance
    (error ~6e-4); the two-pass chunks and Chan's combine keep float32 accuracy (2e-5)."""
    tensors = _bn_tensors((64, 3, 5, 5), scale=1.0, offset=100.0)
    tensors["input"] = tensors["input"].detach().float().double().requires_grad_()  # float32-exact values
    compare("batch_norm", batch_norm, F.batch_norm, tensors, torch.float32, training=True)
    compare("batch_norm", batch_norm, F.batch_norm, _bn_tensors((9, 4, 13)), torch.float32, training=False)


def test_batch_norm_empty_batch_leaves_running_statistics() -> None:
    tensors = _bn_tensors((0, 5, 9))
    compare("batch_norm", batch_norm, F.batch_norm, tensors, training=True)
    x = torch.zeros(0, dtype=F64)
    assert batch_norm(x, torch.zeros(0, dtype=F64), torch.ones(0, dtype=F64), training=True).shape == (0,)


def test_batch_norm_rejections() -> None:
    x = torch.randn(4, 3, dtype=F64)
    stats = torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        batch_norm(torch.randn(1, 3, dtype=F64), *stats, training=True)
    with pytest.raises(ValueError, match="evaluation mode"):
        batch_norm(x, None, None, training=False)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        batch_norm(x, torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64))
    with pytest.raises(NotImplementedError, match="float32"):
        batch_norm(x, stats[0].float(), stats[1].float())
    with pytest.raises(NotImplementedError, match="float16"):
        batch_norm(x.half(), stats[0].half(), stats[1].half())
    with pytest.raises(TypeError, match="momentum"):
        batch_norm(x, *stats, training=True, momentum=None)  # type: ignore[arg-type]


LN_CASES = [((7, 5), (5,)), ((4, 3, 11), (3, 11)), ((3, 2, 5, 7), (2, 5, 7)), ((13,), [13])]


@pytest.mark.parametrize("affine", ["wb", "w", ""])
@pytest.mark.parametrize(("shape", "normalized"), LN_CASES, ids=str)
def test_layer_norm_matches_torch_float64(shape: tuple, normalized: tuple | list, affine: str) -> None:
    dims = tuple(normalized)
    tensors = {
        "input": (torch.randn(shape, dtype=F64) * 2 + 3).requires_grad_(),
        "weight": torch.randn(dims, dtype=F64).requires_grad_() if "w" in affine else None,
        "bias": torch.randn(dims, dtype=F64).requires_grad_() if "b" in affine else None,
    }
    compare("layer_norm", layer_norm, F.layer_norm, tensors, normalized_shape=normalized, eps=1e-3)


def _ln_tensors(shape: tuple[int, ...], n: int, offset: float = 0.0) -> Tensors:
    return {"input": (torch.randn(shape, dtype=F64) + offset).requires_grad_(),
            "weight": torch.randn(n, dtype=F64).requires_grad_(),
            "bias": torch.randn(n, dtype=F64).requires_grad_()}


def test_layer_norm_long_rows_and_split_parameter_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows longer than BLOCK_N loop over columns (3 passes); dw/db reduce over 3 splits of 2 tiles."""
    monkeypatch.setattr(policy, "layer_norm_tile", lambda n, size: (2, 16, 1))
    monkeypatch.setattr(policy, "NORM_TILE", 128)  # (2 rows, 64 columns) tiles
    monkeypatch.setattr(policy, "norm_splits", lambda blocks, rows, block_r: 4)
    compare("layer_norm", layer_norm, F.layer_norm, _ln_tensors((9, 37), 37, 4.0), normalized_shape=(37,))
    assert all(int(t.abs().sum()) == 0 for t in norm_common._TICKETS.values())


def test_layer_norm_non_contiguous() -> None:
    """A strided row view (no copy), a column-strided input (copied), a non-contiguous output gradient."""
    rows = _ln_tensors((10, 9), 9)
    rows["input"] = rows["input"].detach()[::2].requires_grad_()
    compare("layer_norm", layer_norm, F.layer_norm, rows, normalized_shape=(9,),
            grad_layout=lambda g: g.t().contiguous().t())
    rows["weight"] = torch.randn(18, dtype=F64)[::2].requires_grad_()
    compare("layer_norm", layer_norm, F.layer_norm, rows, normalized_shape=(9,))
    cols = _ln_tensors((4, 6, 14), 6)
    cols["input"] = cols["input"].detach().transpose(1, 2)[:, ::2].requires_grad_()  # (4, 7, 6)
    compare("layer_norm", layer_norm, F.layer_norm, cols, normalized_shape=(6,))


def test_layer_norm_float32_and_edge_cases() -> None:
    compare("layer_norm", layer_norm, F.layer_norm, _ln_tensors((6, 300), 300, 100.0), torch.float32,
            normalized_shape=(300,))
    empty = _ln_tensors((0, 3), 3)
    compare("layer_norm", layer_norm, F.layer_norm, empty, normalized_shape=(3,))
    negative_eps = _ln_tensors((2, 2, 3), 3)  # var + eps < 0 gives NaN rows, as in PyTorch
    negative_eps["input"] = (negative_eps["input"].detach() * 0.1).requires_grad_()
    compare("layer_norm", layer_norm, F.layer_norm, negative_eps, normalized_shape=(3,), eps=-0.5)


def test_layer_norm_single_element_rows() -> None:
    """N = 1: y = bias and dx = 0 exactly (PyTorch's own dx there is rounding noise, ~1e-15)."""
    x = torch.randn(5, 1, dtype=F64, requires_grad=True)
    weight = torch.randn(1, dtype=F64, requires_grad=True)
    bias = torch.randn(1, dtype=F64, requires_grad=True)
    y = layer_norm(x, (1,), weight, bias)
    dy = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, weight, bias), dy)
    assert torch.equal(y, bias.detach().expand(5, 1)) and torch.equal(dx, torch.zeros_like(x))
    assert dw.item() == 0.0 and db.item() == pytest.approx(dy.sum().item(), rel=1e-14)


def test_layer_norm_rejections() -> None:
    x = torch.randn(3, 4, dtype=F64)
    with pytest.raises(ValueError, match="normalized_shape"):
        layer_norm(x, (3,))
    with pytest.raises(ValueError, match="weight shape"):
        layer_norm(x, (4,), torch.ones(3, dtype=F64))
    with pytest.raises(NotImplementedError, match="float16"):
        layer_norm(x.half(), (4,))
    with pytest.raises(NotImplementedError, match="float32"):
        layer_norm(x, (4,), torch.ones(4))
