"""Cross-entropy: logits (N, C, d1..dk) or (C,) and targets -> loss, a fused log-softmax + NLL with autograd.

Both target kinds of torch.nn.functional.cross_entropy work: class indices
(N, d1..dk) with `weight`, `ignore_index` and `label_smoothing`, and class
probabilities of the input's shape. Each row (one sample and spatial
position) reduces to coefficients a_c >= 0 with

    loss_row = -sum_c a_c * log_softmax(x)_c = lse * A - sum_c a_c x_c,   A = sum_c a_c

    indices:       a_c = w_c * ((1 - eps) [c == t] + eps / C), 0 for ignored rows
    probabilities: a_c = w_c * ((1 - eps) t_c + eps / C)

and d loss_row / d x_c = softmax(x)_c * A - a_c. The forward kernel makes one
pass over the classes with an online max (lse = m + log sum exp(x - m)),
writes the per-row loss, lse and A, and for "mean"/"sum" atomically adds
the row losses and the mean's denominator (sum of w_t over kept rows for
indices, the row count for probabilities) into a 2-element total, so no host
sync happens. An index outside [0, C) that is not ignore_index gives a NaN
loss rather than a device assert. Mean over zero kept rows is 0/0 = NaN, as
in PyTorch. Accumulation is in the input's dtype (float32 or float64); there
is no `tl.dot`, so no precision choice applies.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config
from netc.kernels.activation import check_dtype

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


def launch_config(classes: int) -> dict[str, int]:
    """(BLOCK_R rows) x (BLOCK_C classes) tile per step; one place to tune per target."""
    interp = config.interpreting()
    block_c = min(max(16, triton.next_power_of_2(classes)), 1024)
    tile = 16384 if interp else 4096  # elements per tile: big tiles keep interpreter programs few
    return {"BLOCK_R": max(1, tile // block_c), "BLOCK_C": block_c, "num_warps": 1 if interp else 4}


@triton.jit
def _row_coefficients(
    t_ptr, w_ptr, t_idx, valid, rows, cols, mask, C, S, base,
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr, DTYPE: tl.constexpr,
):
    """a (BLOCK_R, BLOCK_C): each row's weight on each class's log-probability (0 where masked)."""
    eps_per_class = SMOOTHING / tl.cast(C, DTYPE)  # input dtype: full float64 precision; C may be constexpr 1
    if PROB_TARGET:
        t = tl.load(t_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=0.0)
        a = (1.0 - SMOOTHING) * t + eps_per_class
    else:
        hit = (cols[None, :] == t_idx[:, None]).to(DTYPE)
        a = hit * (1.0 - SMOOTHING) + eps_per_class
        mask = mask & valid[:, None]
    if HAS_WEIGHT:
        a = a * tl.load(w_ptr + cols, mask=cols < C, other=0.0)[None, :]
    return tl.where(mask, a, 0.0)


@triton.jit
def _cross_entropy_fwd_kernel(
    x_ptr,  # logits (N, C, S), contiguous
    t_ptr,  # targets: int64 (N, S), or probabilities (N, C, S)
    w_ptr,  # class weights (C,); unused unless HAS_WEIGHT
    loss_ptr,  # per-row loss (R,) with R = N * S
    lse_ptr,  # per-row logsumexp (R,), for the backward
    asum_ptr,  # per-row A = sum_c a_c (R,), for the backward
    total_ptr,  # [sum of row losses, mean's denominator], zero-initialised; used if REDUCE
    R, C, S,  # rows, classes, spatial size per sample
    ignore_index,  # target value whose rows are skipped (index targets)
    PROB_TARGET: tl.constexpr,  # targets are probabilities
    HAS_WEIGHT: tl.constexpr,  # w_ptr holds class weights
    SMOOTHING: tl.constexpr,  # label_smoothing eps
    REDUCE: tl.constexpr,  # accumulate into total_ptr ("mean"/"sum")
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # rows and classes per tile
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    rows64 = rows.to(tl.int64)
    base = (rows64 // S) * C * S + rows64 % S  # offset of (n, 0, s)
    t_idx = tl.zeros((BLOCK_R,), dtype=tl.int64)
    valid = row_mask
    if not PROB_TARGET:
        t_idx = tl.load(t_ptr + rows64, mask=row_mask, other=ignore_index)
        valid = row_mask & (t_idx != ignore_index)
    m = tl.full((BLOCK_R,), float("-inf"), dtype=x_ptr.dtype.element_ty)  # running max
    sum_exp = tl.zeros((BLOCK_R,), dtype=x_ptr.dtype.element_ty)  # sum exp(x - m)
    ax = tl.zeros((BLOCK_R,), dtype=x_ptr.dtype.element_ty)  # sum_c a_c x_c
    asum = tl.zeros((BLOCK_R,), dtype=x_ptr.dtype.element_ty)  # sum_c a_c
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        x = tl.load(x_ptr + base[:, None] + cols[None, :].to(tl.int64) * S, mask=mask, other=float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        finite = m_new > float("-inf")  # all -inf so far: keep sums at 0 instead of NaN
        shift = tl.where(finite, m_new, 0.0)
        rescaled = tl.where(finite, sum_exp * tl.exp(m - shift), 0.0)
        sum_exp = rescaled + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        m = m_new
        a = _row_coefficients(t_ptr, w_ptr, t_idx, valid, rows, cols, mask, C, S, base,
                              PROB_TARGET, HAS_WEIGHT, SMOOTHING, x_ptr.dtype.element_ty)
        ax += tl.sum(tl.where(a != 0.0, a * tl.where(mask, x, 0.0), 0.0), axis=1)  # 0 * -inf pads: no NaN
        asum += tl.sum(a, axis=1)
    lse = tl.where(row_mask, m + tl.log(tl.where(row_mask, sum_exp, 1.0)), 0.0)  # padding rows: 0, no log(0)
    loss = tl.where(asum != 0.0, lse * asum - ax, 0.0)
    if PROB_TARGET:
        denom = tl.where(row_mask, 1.0, 0.0)
    else:
        in_range = (t_idx >= 0) & (t_idx < C)
        loss = tl.where(valid & ~in_range, float("nan"), loss)
        denom = tl.where(valid, 1.0, 0.0)
        if HAS_WEIGHT:
            denom = tl.load(w_ptr + t_idx, mask=valid & in_range, other=0.0)
    tl.store(loss_ptr + rows, loss, mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    tl.store(asum_ptr + rows, asum, mask=row_mask)
    if REDUCE:
        tl.atomic_add(total_ptr, tl.sum(tl.where(row_mask, loss, 0.0), axis=0))
        tl.atomic_add(total_ptr + 1, tl.sum(denom.to(x_ptr.dtype.element_ty), axis=0))


@triton.jit
def _cross_entropy_bwd_kernel(
    x_ptr,  # logits (N, C, S), contiguous
    t_ptr,  # targets, as in the forward
    w_ptr,  # class weights (C,); unused unless HAS_WEIGHT
    lse_ptr,  # per-row logsumexp (R,)
    asum_ptr,  # per-row A (R,)
    g_ptr,  # dL/dloss: (R,) for "none", a scalar otherwise
    total_ptr,  # forward totals; total[1] divides the gradient for "mean"
    dx_ptr,  # dL/dx (N, C, S), contiguous
    R, C, S,  # rows, classes, spatial size per sample
    ignore_index,  # as in the forward
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr,  # as in the forward
    REDUCTION: tl.constexpr,  # 0 none, 1 sum, 2 mean
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # rows and classes per tile
):
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    rows64 = rows.to(tl.int64)
    base = (rows64 // S) * C * S + rows64 % S
    t_idx = tl.zeros((BLOCK_R,), dtype=tl.int64)
    valid = row_mask
    if not PROB_TARGET:
        t_idx = tl.load(t_ptr + rows64, mask=row_mask, other=ignore_index)
        valid = row_mask & (t_idx != ignore_index)
    if REDUCTION == 0:
        g = tl.load(g_ptr + rows64, mask=row_mask, other=0.0)
    else:
        g = tl.load(g_ptr + rows64 * 0, mask=row_mask, other=0.0)  # broadcast the scalar
        if REDUCTION == 2:
            g = g / tl.load(total_ptr + 1 + rows64 * 0, mask=row_mask, other=1.0)
    lse = tl.load(lse_ptr + rows64, mask=row_mask, other=0.0)
    asum = tl.load(asum_ptr + rows64, mask=row_mask, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        offsets = base[:, None] + cols[None, :].to(tl.int64) * S
        x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
        a = _row_coefficients(t_ptr, w_ptr, t_idx, valid, rows, cols, mask, C, S, base,
                              PROB_TARGET, HAS_WEIGHT, SMOOTHING, x_ptr.dtype.element_ty)
        dx = g[:, None] * (tl.exp(x - lse[:, None]) * asum[:, None] - a)
        tl.store(dx_ptr + offsets, tl.where(valid[:, None], dx, 0.0), mask=mask)


def _rows_view(input: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """Contiguous (N, C, S) logits and targets ((N, S) indices or (N, C, S) probabilities), C, S."""
    if input.dim() == 1:  # unbatched (C,): one sample, one position
        input, target = input.unsqueeze(0), target.unsqueeze(0)
    n, c = input.shape[:2]
    s = math.prod(input.shape[2:])
    prob = target.is_floating_point()
    expected = tuple(input.shape) if prob else (n, *input.shape[2:])
    if tuple(target.shape) != expected:
        kind = "probability" if prob else "class-index"
        raise ValueError(
            f"cross_entropy: {kind} target {tuple(target.shape)} does not fit input {tuple(input.shape)} "
            f"(expected {expected})"
        )
    x = input.contiguous().view(n, c, s)
    t = target.contiguous().view(n, c, s) if prob else target.to(torch.int64).contiguous().view(n, s)
    return x, t, c, s


class _CrossEntropy(torch.autograd.Function):
    """Fused log-softmax + NLL over (N, C, S) logits -> per-row losses (R,) or a 0-d sum/mean."""

    @staticmethod
    def forward(
        ctx: Ctx,
        x: torch.Tensor,  # (N, C, S) contiguous
        target: torch.Tensor,  # (N, S) int64 or (N, C, S) float
        weight: torch.Tensor | None,  # (C,)
        ignore_index: int,
        reduction: int,
        smoothing: float,
    ) -> torch.Tensor:
        n, c, s = x.shape
        rows = n * s
        loss = config.new_empty((rows,), x)
        lse, asum = config.new_empty((rows,), x), config.new_empty((rows,), x)
        total = torch.zeros(2, device=x.device, dtype=x.dtype)  # an accumulator, not an output
        cfg = launch_config(c)
        grid = (triton.cdiv(rows, cfg["BLOCK_R"]),)
        _cross_entropy_fwd_kernel[grid](
            x, target, weight if weight is not None else x, loss, lse, asum, total, rows, c, s, ignore_index,
            REDUCE=reduction != 0, **_flags(target, weight, smoothing), **cfg,
        )
        ctx.save_for_backward(x, target, weight, lse, asum, total)
        ctx.ignore_index, ctx.reduction, ctx.smoothing = ignore_index, reduction, smoothing
        if reduction == 0:
            return loss
        return total[0].clone() if reduction == 1 else total[0] / total[1]  # device ops: no sync

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, target, weight, lse, asum, total = ctx.saved_tensors
        n, c, s = x.shape
        dx = config.new_empty(x.shape, x)
        cfg = launch_config(c)
        grid = (triton.cdiv(n * s, cfg["BLOCK_R"]),)
        _cross_entropy_bwd_kernel[grid](
            x, target, weight if weight is not None else x, lse, asum, grad.contiguous(), total, dx,
            n * s, c, s, ctx.ignore_index, REDUCTION=ctx.reduction,
            **_flags(target, weight, ctx.smoothing), **cfg,
        )
        return dx, None, None, None, None, None


def _flags(target: torch.Tensor, weight: torch.Tensor | None, smoothing: float) -> dict[str, object]:
    prob = target.is_floating_point()
    return {"PROB_TARGET": prob, "HAS_WEIGHT": weight is not None, "SMOOTHING": smoothing}


def _check_args(
    input: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, reduction: str, smoothing: float
) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{reduction} is not a valid value for reduction")
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be between 0.0 and 1.0. Got: {smoothing}")
    check_dtype("cross_entropy", input, *(() if weight is None else (weight,)))
    if target.is_floating_point():
        check_dtype("cross_entropy", input, target)
    elif target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise NotImplementedError(f"cross_entropy: target dtype {target.dtype}")
    if input.dim() == 0:
        raise ValueError("cross_entropy: input must have a class dimension")
    if weight is not None and tuple(weight.shape) != (input.shape[0 if input.dim() == 1 else 1],):
        raise ValueError(f"cross_entropy: weight {tuple(weight.shape)} should hold one value per class")
    grad_on = torch.is_grad_enabled()
    if grad_on and (target.requires_grad or (weight is not None and weight.requires_grad)):
        raise NotImplementedError("cross_entropy: gradients with respect to target or weight")


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Like torch.nn.functional.cross_entropy (index or probability targets); one fused kernel."""
    if size_average is not None or reduce is not None:
        raise NotImplementedError("cross_entropy: deprecated size_average/reduce; use reduction=")
    _check_args(input, target, weight, reduction, label_smoothing)
    if target.is_floating_point() and ignore_index != -100:
        raise ValueError("cross_entropy: ignore_index is not supported for class-probability targets "
                         "(as in PyTorch)")
    x, t, _, _ = _rows_view(input, target)
    mode = _REDUCTIONS[reduction]
    loss = _CrossEntropy.apply(x, t, weight, int(ignore_index), mode, float(label_smoothing))
    if mode == 0:  # per row, shaped like an index target: (N, d1..dk), or () unbatched
        return loss.view(input.shape[:1] + input.shape[2:] if input.dim() > 1 else ())
    return loss

