"""Cross-entropy: logits (N, C, d1..dk) or (C,) and targets -> loss, a fused log-softmax + NLL with autograd.

Both target kinds of torch.nn.functional.cross_entropy work: class indices
(N, d1..dk) with `weight`, `ignore_index` and `label_smoothing`, and class
probabilities of the input's shape. Each row (one sample and spatial
position) reduces to coefficients a_c >= 0 with

    loss_row = -sum_c a_c * log_softmax(x)_c = lse * A - sum_c a_c x_c,   A = sum_c a_c

    indices:       a_c = w_c * ((1 - eps) [c == t] + eps / C), 0 for ignored rows
    probabilities: a_c = w_c * ((1 - eps) t_c + eps / C)

and d loss_row / d x_c = softmax(x)_c * A - a_c; for probability targets
d loss_row / d t_c = -w_c (1 - eps) log_softmax(x)_c. ONE forward launch does
the whole loss and most of its backward: one pass over the classes with an
online max (lse = m + log sum exp(x - m)) gives the per-row loss and lse; the
reduction ("mean"/"sum": the row losses and the mean's denominator, sum of w_t
over kept rows for indices or the row count for probabilities) is finished in
the same launch by the last program to arrive, which adds every program's
partial sums in program order (the split-K tickets of kernels/gemm.py:
deterministic, no zeroed accumulator, no host sync); a second pass writes d loss / d x for an incoming
gradient of 1 (divided by the mean's denominator already when one program holds
every row, as at MNIST batch sizes). The backward then only scales it by the
incoming gradient, or, given `unit_gradient(loss)`, launches nothing at all.
An index outside [0, C) that is not ignore_index gives a NaN loss rather than a
device assert. Mean over zero kept rows is 0/0 = NaN, as in PyTorch.
Accumulation is in the input's dtype (float32 or float64); there is no
`tl.dot`, so no precision choice applies. Tiles: `policy.loss_tiles`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config, costs, policy
from netc.kernels.activation import check_dtype
from netc.kernels.gemm import split_buffers  # the split-K workspace and tickets

_REDUCTIONS = {"none": 0, "sum": 1, "mean": 2}


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
def _row_pass(
    x_ptr, t_ptr, w_ptr, rows, row_mask, base, t_idx, valid, C, S,
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One pass over the classes, online max: per row lse, A = sum_c a_c, loss = lse * A - sum_c a_c x_c."""
    m = tl.full((rows.shape[0],), float("-inf"), dtype=x_ptr.dtype.element_ty)  # running max
    sum_exp = tl.zeros((rows.shape[0],), dtype=x_ptr.dtype.element_ty)  # sum exp(x - m)
    ax = tl.zeros((rows.shape[0],), dtype=x_ptr.dtype.element_ty)  # sum_c a_c x_c
    asum = tl.zeros((rows.shape[0],), dtype=x_ptr.dtype.element_ty)  # sum_c a_c
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
    return lse, asum, tl.where(asum != 0.0, lse * asum - ax, 0.0)


@triton.jit
def _targets(t_ptr, rows, row_mask, ignore_index, PROB_TARGET: tl.constexpr):
    """(class index per row (0 for probability targets), whether the row counts)."""
    t_idx = tl.zeros(rows.shape, dtype=tl.int64)
    valid = row_mask
    if not PROB_TARGET:
        t_idx = tl.load(t_ptr + rows.to(tl.int64), mask=row_mask, other=ignore_index)
        valid = row_mask & (t_idx != ignore_index)
    return t_idx, valid


@triton.jit(launch_metadata=costs.rows("R", "C", 4))
def _cross_entropy_fwd_kernel(
    x_ptr,  # logits (N, C, S), contiguous
    t_ptr,  # targets: int64 (N, S), or probabilities (N, C, S)
    w_ptr,  # class weights (C,); unused unless HAS_WEIGHT
    loss_ptr,  # per-row loss (R,) with R = N * S
    lse_ptr,  # per-row logsumexp (R,), for a target gradient
    dx_ptr,  # (N, C, S) d loss / d x for an incoming gradient of 1 (written if WRITE_GRAD), see DIVIDED
    out_ptr,  # () the reduced loss: sum, or sum / denominator (written unless REDUCTION is 0)
    denom_ptr,  # (1,) the mean's denominator: sum of w_t over kept rows, or the row count
    ws_ptr,  # (programs, 2) partial [loss sum, denominator] per program (unless ONE_TILE)
    ticket_ptr,  # (1,) int32 arrival counter, zero between launches (unless ONE_TILE)
    R, C, S,  # rows, classes, spatial size per sample
    ignore_index,  # target value whose rows are skipped (index targets)
    PROB_TARGET: tl.constexpr,  # targets are probabilities
    HAS_WEIGHT: tl.constexpr,  # w_ptr holds class weights
    SMOOTHING: tl.constexpr,  # label_smoothing eps
    REDUCTION: tl.constexpr,  # 0 none, 1 sum, 2 mean
    WRITE_GRAD: tl.constexpr,  # the input needs a gradient: write it now (the backward only scales)
    ONE_TILE: tl.constexpr,  # one program holds every row: the mean's dx is divided here already
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # rows and classes per tile
):
    """Per-row losses, the reduced loss (the last program to finish adds the programs' partial sums in
    program order: deterministic) and d loss_row / d x = softmax(x) * A - a, divided by the mean's
    denominator when ONE_TILE."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    rows64 = rows.to(tl.int64)
    base = (rows64 // S) * C * S + rows64 % S  # offset of (n, 0, s)
    t_idx, valid = _targets(t_ptr, rows, row_mask, ignore_index, PROB_TARGET)
    lse, asum, loss = _row_pass(x_ptr, t_ptr, w_ptr, rows, row_mask, base, t_idx, valid, C, S,
                                PROB_TARGET, HAS_WEIGHT, SMOOTHING, BLOCK_C)
    if PROB_TARGET:
        denom = tl.where(row_mask, 1.0, 0.0).to(x_ptr.dtype.element_ty)
    else:
        in_range = (t_idx >= 0) & (t_idx < C)
        loss = tl.where(valid & ~in_range, float("nan"), loss)
        denom = tl.where(valid, 1.0, 0.0).to(x_ptr.dtype.element_ty)
        if HAS_WEIGHT:
            denom = tl.load(w_ptr + t_idx, mask=valid & in_range, other=0.0)
    tl.store(loss_ptr + rows, loss, mask=row_mask)
    tl.store(lse_ptr + rows, lse, mask=row_mask)
    loss_sum = tl.sum(tl.where(row_mask, loss, 0.0), axis=0)
    denom_sum = tl.sum(denom, axis=0)
    if REDUCTION != 0:
        if ONE_TILE:
            tl.store(out_ptr, loss_sum / denom_sum if REDUCTION == 2 else loss_sum)
            tl.store(denom_ptr, denom_sum)
        else:
            _reduce_programs(loss_sum, denom_sum, out_ptr, denom_ptr, ws_ptr, ticket_ptr, REDUCTION)
    if WRITE_GRAD:
        scale = tl.full((BLOCK_R,), 1.0, x_ptr.dtype.element_ty)
        if REDUCTION == 2 and ONE_TILE:
            scale = scale / denom_sum
        for c0 in range(0, C, BLOCK_C):
            cols = c0 + tl.arange(0, BLOCK_C)
            mask = row_mask[:, None] & (cols[None, :] < C)
            offsets = base[:, None] + cols[None, :].to(tl.int64) * S
            x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
            a = _row_coefficients(t_ptr, w_ptr, t_idx, valid, rows, cols, mask, C, S, base,
                                  PROB_TARGET, HAS_WEIGHT, SMOOTHING, x_ptr.dtype.element_ty)
            dx = (tl.exp(x - lse[:, None]) * asum[:, None] - a) * scale[:, None]
            tl.store(dx_ptr + offsets, tl.where(valid[:, None], dx, 0.0), mask=mask)


@triton.jit
def _last_arrival(ticket_ptr, index, arrivals):
    """True in the CTA that arrives last (of `arrivals`) at counter `index`, which it then resets to 0."""
    tl.debug_barrier()  # every thread's partial is written before the ticket releases it
    ticket = tl.atomic_add(ticket_ptr + index, 1, sem="acq_rel")
    last = ticket == arrivals - 1
    if last:
        tl.store(ticket_ptr + index, 0)
    return last


@triton.jit
def _reduce_programs(loss_sum, denom_sum, out_ptr, denom_ptr, ws_ptr, ticket_ptr, REDUCTION: tl.constexpr):
    """Each program's partial [loss sum, denominator] -> the last program to arrive adds them in order."""
    pid = tl.program_id(0)
    tl.store(ws_ptr + 2 * pid, loss_sum)
    tl.store(ws_ptr + 2 * pid + 1, denom_sum)
    if _last_arrival(ticket_ptr, 0, tl.num_programs(0)):
        loss_sum = tl.load(ws_ptr, cache_modifier=".cg")
        denom_sum = tl.load(ws_ptr + 1, cache_modifier=".cg")
        for p in range(1, tl.num_programs(0)):
            loss_sum += tl.load(ws_ptr + 2 * p, cache_modifier=".cg")
            denom_sum += tl.load(ws_ptr + 2 * p + 1, cache_modifier=".cg")
        tl.store(out_ptr, loss_sum / denom_sum if REDUCTION == 2 else loss_sum)
        tl.store(denom_ptr, denom_sum)


@triton.jit(launch_metadata=costs.rows("R", "C", 3))
def _cross_entropy_bwd_kernel(
    x_ptr,  # logits (N, C, S), contiguous
    t_ptr,  # targets, as in the forward
    w_ptr,  # class weights (C,); unused unless HAS_WEIGHT
    lse_ptr,  # per-row logsumexp (R,)
    g_ptr,  # dL/dloss: (R,) for "none", a scalar otherwise
    denom_ptr,  # (1,) the forward's denominator: divides the "mean" gradient (dx only unless DIVIDED)
    dx_in_ptr,  # (N, C, S) the forward's d loss / d x (read if WANT_DX)
    dx_ptr,  # (N, C, S) dL/dx out (written if WANT_DX)
    dt_ptr,  # (N, C, S) dL/d target out, probability targets (written if WANT_DT)
    R, C, S,  # rows, classes, spatial size per sample
    ignore_index,  # as in the forward
    PROB_TARGET: tl.constexpr, HAS_WEIGHT: tl.constexpr, SMOOTHING: tl.constexpr,  # as in the forward
    REDUCTION: tl.constexpr,  # 0 none, 1 sum, 2 mean
    DIVIDED: tl.constexpr,  # the forward's dx is divided by the mean's denominator already
    WANT_DX: tl.constexpr, WANT_DT: tl.constexpr,  # which gradients to write
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # rows and classes per tile
):
    """dL/dx = g * dx_forward (/ denominator); dL/dt_c = -g * w_c * (1 - eps) * log_softmax(x)_c."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_mask = rows < R
    rows64 = rows.to(tl.int64)
    base = (rows64 // S) * C * S + rows64 % S
    _, valid = _targets(t_ptr, rows, row_mask, ignore_index, PROB_TARGET)
    if REDUCTION == 0:
        g = tl.load(g_ptr + rows64, mask=row_mask, other=0.0)
    else:
        g = tl.load(g_ptr + rows64 * 0, mask=row_mask, other=0.0)  # broadcast the scalar
    g_dt = g
    if REDUCTION == 2:
        g_dt = g / tl.load(denom_ptr + rows64 * 0, mask=row_mask, other=1.0)
        if not DIVIDED:
            g = g_dt
    lse = tl.load(lse_ptr + rows64, mask=row_mask, other=0.0)
    for c0 in range(0, C, BLOCK_C):
        cols = c0 + tl.arange(0, BLOCK_C)
        mask = row_mask[:, None] & (cols[None, :] < C)
        offsets = base[:, None] + cols[None, :].to(tl.int64) * S
        if WANT_DX:
            dx = tl.load(dx_in_ptr + offsets, mask=mask, other=0.0) * g[:, None]
            tl.store(dx_ptr + offsets, tl.where(valid[:, None], dx, 0.0), mask=mask)
        if WANT_DT:
            log_p = tl.load(x_ptr + offsets, mask=mask, other=0.0) - lse[:, None]
            dt = -(1.0 - SMOOTHING) * g_dt[:, None] * log_p
            if HAS_WEIGHT:
                dt = dt * tl.load(w_ptr + cols, mask=cols < C, other=0.0)[None, :]
            tl.store(dt_ptr + offsets, dt, mask=mask)


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
    """Fused log-softmax + NLL over (N, C, S) logits -> per-row losses (R,) or a 0-d sum/mean.

    The forward writes d loss / d x as well (for an incoming gradient of 1), so the backward only
    scales it; when the incoming gradient is `unit_gradient(loss)` and one program held every row,
    the backward returns it as is and launches nothing.
    """

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
        cfg = policy.loss_tiles(rows, c)
        programs = triton.cdiv(rows, cfg["BLOCK_R"])
        loss, lse = config.new_empty((rows,), x), config.new_empty((rows,), x)
        reduced, denom = config.new_empty((), x), config.new_empty((1,), x)
        write_grad = ctx.needs_input_grad[0]
        dx = config.new_empty(x.shape, x) if write_grad else x
        ws, tickets = split_buffers(x.device, x.dtype, 2 * programs, 1) if programs > 1 else (x, x)
        _cross_entropy_fwd_kernel[(programs,)](
            x, target, weight if weight is not None else x, loss, lse, dx, reduced, denom, ws, tickets,
            rows, c, s, ignore_index, REDUCTION=reduction, WRITE_GRAD=write_grad, ONE_TILE=programs == 1,
            **_flags(target, weight, smoothing), **cfg,
        )
        ctx.save_for_backward(x, target, weight, lse, denom, dx if write_grad else None)
        ctx.ignore_index, ctx.reduction, ctx.smoothing = ignore_index, reduction, smoothing
        ctx.divided = programs == 1  # the mean's dx is divided by its denominator already
        return loss if reduction == 0 else reduced  # device tensors: no host sync

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, target, weight, lse, denom, dx_forward = ctx.saved_tensors
        want_dx, want_dt = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if want_dx and not want_dt and ctx.reduction != 0 and ctx.divided and _is_unit(grad):
            return dx_forward, None, None, None, None, None  # already dL/dx: no launch
        n, c, s = x.shape
        dx = config.new_empty(x.shape, x) if want_dx else x
        dt = config.new_empty(x.shape, x) if want_dt else x
        cfg = policy.loss_tiles(n * s, c)
        _cross_entropy_bwd_kernel[(triton.cdiv(n * s, cfg["BLOCK_R"]),)](
            x, target, weight if weight is not None else x, lse, grad.contiguous(), denom,
            dx_forward if want_dx else x, dx, dt, n * s, c, s, ctx.ignore_index, REDUCTION=ctx.reduction,
            DIVIDED=ctx.divided, WANT_DX=want_dx, WANT_DT=want_dt,
            **_flags(target, weight, ctx.smoothing), **cfg,
        )
        return dx if want_dx else None, dt if want_dt else None, None, None, None, None


# (dtype, device) -> a 0-d tensor of 1 that a training step passes to loss.backward()
_UNITS: dict[tuple[torch.dtype, torch.device], torch.Tensor] = {}


def unit_gradient(loss: torch.Tensor) -> torch.Tensor:
    """A cached 0-d 1 of `loss`'s dtype and device, for `loss.backward(unit_gradient(loss))`.

    `loss.backward()` fills a fresh tensor with 1 (a GPU op) and cross_entropy's backward cannot
    tell it holds 1 without reading it (a host sync), so it scales its gradient (a launch).
    Passed this tensor instead, it knows: its backward launches nothing. Never write into it.
    """
    key = (loss.dtype, loss.device)
    if key not in _UNITS:
        _UNITS[key] = torch.ones((), dtype=loss.dtype, device=loss.device)
    return _UNITS[key]


def _is_unit(grad: torch.Tensor) -> bool:
    """grad is unit_gradient's tensor, unmodified (its version counter still 0): it holds 1."""
    unit = _UNITS.get((grad.dtype, grad.device))
    return grad is unit and grad._version == 0


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
    if torch.is_grad_enabled() and weight is not None and weight.requires_grad:
        raise NotImplementedError("cross_entropy: gradient with respect to weight")
    if torch.is_grad_enabled() and target.requires_grad and not target.is_floating_point():
        raise NotImplementedError("cross_entropy: gradient with respect to class-index targets")


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

