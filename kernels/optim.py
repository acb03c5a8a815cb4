"""Optimizers (SGD, Adam, AdamW): parameters and .grad -> parameters updated in place by one fused kernel.

Parameters and state are views into flat buffers and each .grad is read where
autograd left it (kernels/flat_optim.py), so a step is one kernel launch per
parameter group of up to 8 parameters (one in all for the usual single group),
with nothing else: no gradient copy, no zeroing, no step-count add; and
state_dict()/load_state_dict() keep torch.optim's format.

Hyperparameters are read from `param_groups` at every step (a scheduler's lr
takes effect) and passed as kernel scalars: each as a float32 (hi, lo) pair
summed in the parameters' dtype (kernel float arguments are float32), so
float64 keeps ~1e-15 accuracy. A CUDA graph freezes them (runtime/fastpath.py
re-captures when they change), so what changes per step is read from the
device: lr from a float64 tensor (see FlatOptimizer.push_lr), and Adam's step
counts are float32 device values (state["step"], as torch's capturable Adam:
views of one vector); the kernel loads t, uses t + 1, computes the bias
corrections 1 - beta^t = 1 - exp(t * log(beta)) in float64 itself, and its
last program to finish writes t + 1 back (a ticket counter, _advance_steps).
With `clip_grad_norm_` pending, the kernels scale the gradient by the global
clip factor as they load it (flat_optim.clip_scale). No `tl.dot`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import triton
import triton.language as tl

from netc.kernels import config, costs
from netc.kernels.norm_common import join_float, split_float  # float args as float32 (hi, lo)
from netc.kernels.flat_optim import (
    SEGMENTS, Clip, FlatOptimizer, Params, clip_scale, pick_grad, segment_block,
)


def launch_config() -> dict[str, int]:
    """Elements per program and warps: few large programs under the interpreter."""
    if config.interpreting():
        return {"BLOCK": 16384, "PART_BLOCK": 1024, "num_warps": 1}
    return {"BLOCK": 1024, "PART_BLOCK": 256, "num_warps": 4}


def _grid(longest: int, segments: int) -> tuple[tuple[int, int], dict[str, int]]:
    """Programs (blocks of the longest segment, segments), and the launch options."""
    cfg = launch_config()
    return (triton.cdiv(longest, cfg["BLOCK"]), segments), cfg


def _log_beta(beta: float) -> float:
    """log(beta) for the kernel's beta^t = exp(t * log(beta)); beta = 0 gives exp(-huge) = 0."""
    return math.log(beta) if beta > 0 else -1e30


@triton.jit
def _sqrt_div(num, den, DTYPE: tl.constexpr):
    """sqrt(num) / den, IEEE-rounded like torch (plain float32 sqrt and / are approximate on the GPU)."""
    return tl.div_rn(tl.sqrt_rn(num), den) if DTYPE == tl.float32 else tl.sqrt(num) / den


@triton.jit
def _div(num, den, DTYPE: tl.constexpr):
    """num / den, IEEE-rounded."""
    return tl.div_rn(num, den) if DTYPE == tl.float32 else num / den


@triton.jit
def _load_grad(g0, g1, g2, g3, g4, g5, g6, g7, local, mask, part_ptr, n_parts, max_hi, max_lo,
               DTYPE: tl.constexpr, MAXIMIZE: tl.constexpr, CLIP: tl.constexpr, PART_BLOCK: tl.constexpr):
    """This program's gradient block, clipped (scaled by the global-norm factor) and negated as asked."""
    g = tl.load(pick_grad(tl.program_id(1), g0, g1, g2, g3, g4, g5, g6, g7) + local, mask=mask, other=0.0)
    if CLIP:
        g = g * clip_scale(part_ptr, n_parts, max_hi, max_lo, DTYPE, PART_BLOCK)
    if MAXIMIZE:
        g = -g
    return g


@triton.jit(launch_metadata=costs.flat_update(4))
def _sgd_kernel(
    p_ptr,  # flat parameters
    g0, g1, g2, g3, g4, g5, g6, g7,  # each segment's gradient, where autograd left it
    seg_ptr, seg_base,  # (parameters, 2) int64 (flat offset, numel) table and this launch's first row
    buf_ptr,  # flat momentum buffers
    lr_ptr,  # () float64 learning rate (a device value: see push_lr)
    part_ptr, n_parts, max_hi, max_lo,  # clipping: partial sums of squares, their count, max norm
    wd_hi, wd_lo,  # weight decay
    mom_hi, mom_lo,  # momentum
    keep_hi, keep_lo,  # 1 - dampening
    HAS_WD: tl.constexpr, MOMENTUM: tl.constexpr,  # weight_decay != 0, momentum != 0
    FIRST: tl.constexpr,  # first step: the buffer starts as the gradient, undamped
    NESTEROV: tl.constexpr, MAXIMIZE: tl.constexpr,
    CLIP: tl.constexpr, PART_BLOCK: tl.constexpr,  # scale by the clip factor; partials per loop step
    BLOCK: tl.constexpr,  # elements per program
):
    DTYPE: tl.constexpr = p_ptr.dtype.element_ty
    offsets, local, mask = segment_block(seg_ptr, seg_base, BLOCK)
    p = tl.load(p_ptr + offsets, mask=mask, other=0.0)
    g = _load_grad(g0, g1, g2, g3, g4, g5, g6, g7, local, mask, part_ptr, n_parts, max_hi, max_lo,
                   DTYPE, MAXIMIZE, CLIP, PART_BLOCK)
    if HAS_WD:
        g = g + join_float(wd_hi, wd_lo, DTYPE) * p
    if MOMENTUM:
        momentum = join_float(mom_hi, mom_lo, DTYPE)
        if FIRST:
            buf = g
        else:
            buf = tl.load(buf_ptr + offsets, mask=mask, other=0.0)
            buf = buf * momentum + join_float(keep_hi, keep_lo, DTYPE) * g
        tl.store(buf_ptr + offsets, buf, mask=mask)
        if NESTEROV:
            g = g + momentum * buf
        else:
            g = buf
    tl.store(p_ptr + offsets, p - tl.load(lr_ptr).to(DTYPE) * g, mask=mask)


@triton.jit
def _bias_corrections(t, lr, log_b1_hi, log_b1_lo, log_b2_hi, log_b2_lo):
    """(lr / (1 - beta1^t), sqrt(1 - beta2^t)) in float64, as torch's Python doubles, from the device t.

    The cancellation in 1 - exp(x) costs ~1e-13 relative (beta2 = 0.999, t = 1), torch's own rounding.
    """
    bc1 = 1.0 - tl.exp(t * join_float(log_b1_hi, log_b1_lo, tl.float64))
    bc2 = 1.0 - tl.exp(t * join_float(log_b2_hi, log_b2_lo, tl.float64))
    return lr / bc1, tl.sqrt(bc2)


@triton.jit
def _advance_steps(steps_ptr, seg_base, ticket_ptr, t, SEGS: tl.constexpr):
    """The last program to finish writes t into the launch's step counts and resets the ticket.

    Every program read the old t before its acq_rel ticket, so the write cannot race a read;
    the next launch (stream order) finds the ticket at 0 again.
    """
    ticket = tl.atomic_add(ticket_ptr, 1)
    last = ticket == tl.num_programs(0) * tl.num_programs(1) - 1
    if last:
        rows = tl.arange(0, SEGS)
        tl.store(steps_ptr + seg_base + rows, t.to(tl.float32), mask=rows < tl.num_programs(1))
        tl.store(ticket_ptr, 0)


@triton.jit(launch_metadata=costs.flat_update(12))
def _adam_kernel(
    p_ptr,  # flat parameters
    g0, g1, g2, g3, g4, g5, g6, g7,  # each segment's gradient, where autograd left it
    seg_ptr, seg_base,  # (parameters, 2) int64 (flat offset, numel) table and this launch's first row
    m_ptr, v_ptr, vmax_ptr,  # flat exp_avg, exp_avg_sq, max_exp_avg_sq
    steps_ptr,  # (parameters,) float32 step counts t; this launch reads row seg_base and writes t + 1
    ticket_ptr,  # () int32, 0 between launches: programs finished so far
    lr_ptr,  # () float64 learning rate (a device value: see push_lr)
    part_ptr, n_parts, max_hi, max_lo,  # clipping: partial sums of squares, their count, max norm
    log_b1_hi, log_b1_lo,  # log(beta1), the bias corrections' base
    log_b2_hi, log_b2_lo,  # log(beta2)
    eps_hi, eps_lo,  # eps
    b1c_hi, b1c_lo,  # 1 - beta1
    b2_hi, b2_lo,  # beta2
    b2c_hi, b2c_lo,  # 1 - beta2
    wd_hi, wd_lo,  # weight decay (Adam: L2 added to the gradient; AdamW: p *= 1 - lr * wd)
    HAS_WD: tl.constexpr, DECOUPLED: tl.constexpr, AMSGRAD: tl.constexpr, MAXIMIZE: tl.constexpr,
    CLIP: tl.constexpr, PART_BLOCK: tl.constexpr,  # scale by the clip factor; partials per loop step
    SEGS: tl.constexpr,  # SEGMENTS: the most step counts one launch writes
    BLOCK: tl.constexpr,  # elements per program
):
    DTYPE: tl.constexpr = p_ptr.dtype.element_ty
    lr = tl.load(lr_ptr)  # float64
    t = tl.load(steps_ptr + seg_base).to(tl.float64) + 1.0  # this step's t
    step_size, bc2_sqrt = _bias_corrections(t, lr, log_b1_hi, log_b1_lo, log_b2_hi, log_b2_lo)
    offsets, local, mask = segment_block(seg_ptr, seg_base, BLOCK)
    p = tl.load(p_ptr + offsets, mask=mask, other=0.0)
    g = _load_grad(g0, g1, g2, g3, g4, g5, g6, g7, local, mask, part_ptr, n_parts, max_hi, max_lo,
                   DTYPE, MAXIMIZE, CLIP, PART_BLOCK)
    if HAS_WD:
        if DECOUPLED:
            p = p * (1.0 - lr * join_float(wd_hi, wd_lo, tl.float64)).to(DTYPE)  # torch's double, rounded
        else:
            g = g + join_float(wd_hi, wd_lo, DTYPE) * p
    m = tl.load(m_ptr + offsets, mask=mask, other=0.0)
    m = m + join_float(b1c_hi, b1c_lo, DTYPE) * (g - m)  # torch's lerp for weight < 0.5
    v = tl.load(v_ptr + offsets, mask=mask, other=0.0)
    v = v * join_float(b2_hi, b2_lo, DTYPE) + join_float(b2c_hi, b2c_lo, DTYPE) * g * g
    tl.store(m_ptr + offsets, m, mask=mask)
    tl.store(v_ptr + offsets, v, mask=mask)
    if AMSGRAD:
        v = tl.maximum(tl.load(vmax_ptr + offsets, mask=mask, other=0.0), v)
        tl.store(vmax_ptr + offsets, v, mask=mask)
    denom = _sqrt_div(v, bc2_sqrt.to(DTYPE), DTYPE) + join_float(eps_hi, eps_lo, DTYPE)
    p = p - step_size.to(DTYPE) * _div(m, denom, DTYPE)
    tl.store(p_ptr + offsets, p, mask=mask)
    _advance_steps(steps_ptr, seg_base, ticket_ptr, t, SEGS)


class SGD(FlatOptimizer):
    """torch.optim.SGD (momentum, dampening, nesterov, weight_decay, maximize) as one fused kernel."""

    _STATE_KEYS = ("momentum_buffer",)

    def __init__(
        self, params: Params, lr: float = 1e-3, momentum: float = 0, dampening: float = 0,
        weight_decay: float = 0, nesterov: bool = False, *, maximize: bool = False,
    ) -> None:
        if lr < 0.0 or momentum < 0.0 or weight_decay < 0.0:
            raise ValueError(f"SGD: invalid lr {lr}, momentum {momentum} or weight_decay {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")
        defaults = {"lr": lr, "momentum": momentum, "dampening": dampening, "weight_decay": weight_decay,
                    "nesterov": nesterov, "maximize": maximize}
        super().__init__(params, defaults)

    def _update(self, group_index: int, group: dict[str, Any], first: int, count: int,
                grads: list[torch.Tensor], longest: int, clip: Clip) -> None:
        momentum = group["momentum"]
        starting = momentum != 0 and self.state[self._slots[first][0]].get("momentum_buffer") is None
        buffer = self._buffer("momentum_buffer") if momentum != 0 else self._flat_param
        grid, cfg = _grid(longest, count)
        _sgd_kernel[grid](
            self._flat_param, *grads, self._segments, first, buffer, self._lr[group_index], *clip,
            *split_float(group["weight_decay"]), *split_float(momentum), *split_float(1 - group["dampening"]),
            HAS_WD=group["weight_decay"] != 0, MOMENTUM=momentum != 0, FIRST=starting,
            NESTEROV=bool(group["nesterov"]), MAXIMIZE=bool(group["maximize"]), CLIP=clip[1] > 0, **cfg,
        )
        if starting:
            self._expose_state(self._slots[first:first + count], ("momentum_buffer",))


class Adam(FlatOptimizer):
    """torch.optim.Adam (betas, eps, L2 weight_decay, amsgrad, maximize) as one fused kernel."""

    _STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _DECOUPLED = False  # AdamW: decay the weights directly instead of adding wd * p to the gradient

    def __init__(
        self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 0, amsgrad: bool = False, *, maximize: bool = False,
    ) -> None:
        if lr < 0.0 or eps < 0.0 or weight_decay < 0.0:
            name = type(self).__name__
            raise ValueError(f"{name}: invalid lr {lr}, eps {eps} or weight_decay {weight_decay}")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"{type(self).__name__}: invalid betas {betas}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay,
                    "amsgrad": amsgrad, "maximize": maximize}
        super().__init__(params, defaults)
        device = self._flat_param.device
        # every parameter's t (as torch's capturable Adam: float32 on the device), state["step"] views
        # its own element (non-overlapping, so safetensors saves them); the kernel advances them itself
        self._steps = torch.zeros(len(self._slots), dtype=torch.float32, device=device)
        self._ticket = torch.zeros((), dtype=torch.int32, device=device)  # see _advance_steps

    def _start_state(self, group: dict[str, Any], first: int, count: int) -> None:
        """torch's lazy state on the chunk's first step: moments (and max) in flat buffers, t = 0."""
        slots = self._slots[first:first + count]
        if self.state[slots[0][0]].get("step") is None:
            keys = ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if group["amsgrad"] else ())
            self._expose_state(slots, keys)
            for index in range(first, first + count):
                self.state[self._slots[index][0]]["step"] = self._steps[index]
        elif group["amsgrad"] and self.state[slots[0][0]].get("max_exp_avg_sq") is None:
            self._expose_state(slots, ("max_exp_avg_sq",))  # amsgrad switched on after a load

    def _check_steps(self) -> None:
        """After a load: steps move into the device vector (torch keeps them on the CPU unless capturable);
        one launch's parameters must share a step count (its kernel reads the first one's)."""
        for index, (p, _, _) in enumerate(self._slots):
            step = self.state.get(p, {}).get("step")
            if step is not None:
                self._steps[index].copy_(torch.as_tensor(step, dtype=torch.float32))
                self.state[p]["step"] = self._steps[index]
        for chunks in self._chunks:
            for first, count in chunks:
                steps = [self.state[p].get("step") for p, _, _ in self._slots[first:first + count]]
                if all(s is None for s in steps):
                    continue
                if any(s is None or float(s) != float(steps[0]) for s in steps):
                    name = type(self).__name__
                    raise NotImplementedError(f"{name}: one group's parameters at different steps")

    def _update(self, group_index: int, group: dict[str, Any], first: int, count: int,
                grads: list[torch.Tensor], longest: int, clip: Clip) -> None:
        self._start_state(group, first, count)
        beta1, beta2 = group["betas"]
        wd = group["weight_decay"]
        amsgrad = bool(group["amsgrad"])
        vmax = self._buffer("max_exp_avg_sq") if amsgrad else self._flat_param
        grid, cfg = _grid(longest, count)
        _adam_kernel[grid](
            self._flat_param, *grads, self._segments, first,
            self._buffer("exp_avg"), self._buffer("exp_avg_sq"), vmax, self._steps, self._ticket,
            self._lr[group_index], *clip,
            *split_float(_log_beta(beta1)), *split_float(_log_beta(beta2)), *split_float(group["eps"]),
            *split_float(1 - beta1), *split_float(beta2), *split_float(1 - beta2), *split_float(wd),
            HAS_WD=wd != 0, DECOUPLED=self._DECOUPLED, AMSGRAD=amsgrad, MAXIMIZE=bool(group["maximize"]),
            CLIP=clip[1] > 0, SEGS=SEGMENTS, **cfg,
        )


class AdamW(Adam):
    """torch.optim.AdamW: Adam with decoupled weight decay (p *= 1 - lr * weight_decay)."""

    _DECOUPLED = True

    def __init__(
        self, params: Params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
        weight_decay: float = 1e-2, amsgrad: bool = False, *, maximize: bool = False,
    ) -> None:
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, maximize=maximize)
