"""(N, T, F) sequence + one layer's per-direction weights -> its outputs, with backprop through time.

Launches per layer and training step: forward 2, a GEMM for the input
projection of all T steps and both directions (x @ W_ih^T + b_ih,
`recurrent_gemm.py`) and one persistent kernel that walks the T steps of every
direction with the state on chip (`recurrent_cells.py`; grid: batch blocks x
directions); backward 1 reverse-time launch for the gate pre-activation
gradients of every step, then GEMMs (dx; dW_ih; dW_hh per direction) and 2
column sums (the biases), fewer when some need no gradient. A bidirectional
layer first concatenates its two directions' weights (a few small copies). A
layer with H > `RecurrentConfig.max_hidden`, or whose persistent kernel the
GPU refuses, runs the per-step fallback instead (`recurrent_steps.py`), one
direction at a time. Every product runs at `policy.recurrent_precision`: ieee
on the CPU and for float64, on CUDA float32 tf32 where cuDNN would use it.
The public functions (rnn, lstm, gru and the cells) are in `recurrent.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.runtime.errors import OutOfResources

from netc.kernels import config, policy
from netc.kernels.recurrent_cells import GRU, LSTM, seq_bwd_kernel, seq_fwd_kernel
from netc.kernels.recurrent_gemm import Matrix, colsum, gemm
from netc.kernels.recurrent_steps import steps_backward, steps_forward

GATES = {0: 1, 1: 1, LSTM.value: 4, GRU.value: 3}
NAMES = {0: "rnn", 1: "rnn", LSTM.value: "lstm", GRU.value: "gru"}
GPU_CONFIG = policy.RECURRENT_GPU  # the settings compiled for sm_90 (tests/compile_helpers.py)


def launch_config() -> policy.RecurrentConfig:
    return policy.recurrent_config()


def _seq_blocks(cfg: policy.RecurrentConfig, cell: int, batch: int, hidden: int) -> tuple[int, int, int, int]:
    """(BLOCK_N, BLOCK_J, BLOCK_K, warps) of a persistent launch: dot dims padded to >= 16."""
    block_n = min(max(triton.next_power_of_2(batch), 16), cfg.seq_block_n)
    block_h = max(triton.next_power_of_2(hidden), 16)
    block_j, warps = cfg.seq_tiles[NAMES[cell]]
    return block_n, min(block_j, block_h), min(cfg.seq_block_k, block_h), warps


# (pass, cell, dtype, BLOCK_J, device) whose persistent kernel the GPU refused (shared memory);
# those layers run per step instead. A safety net: the chunked kernels need little shared memory.
_PERSISTENT_TOO_BIG: set[tuple[Any, ...]] = set()


def _try_persistent(key: tuple[Any, ...], launch: Callable[[], None]) -> bool:
    """Launch a persistent kernel unless `key` is known not to fit; False when it does not."""
    if key in _PERSISTENT_TOO_BIG:
        return False
    try:
        launch()  # Triton checks shared memory before launching, so a refusal leaves nothing half done
    except OutOfResources:
        _PERSISTENT_TOO_BIG.add(key)
        return False
    return True


@dataclass(frozen=True)
class Weights:
    """One layer's weights, both directions side by side: w_ih (D*G*H, F), b_ih (D*G*H,) or None,
    w_hh (D, G*H, H), b_hh (D, G*H) or None."""

    w_ih: torch.Tensor
    b_ih: torch.Tensor | None
    w_hh: torch.Tensor
    b_hh: torch.Tensor | None

    @staticmethod
    def join(per_dir: list[tuple[torch.Tensor | None, ...]]) -> Weights:
        """[(w_ih, w_hh, b_ih, b_hh)] per direction -> one Weights (views when D = 1)."""
        if len(per_dir) == 1:
            w_ih, w_hh, b_ih, b_hh = per_dir[0]
            return Weights(w_ih, b_ih, w_hh.unsqueeze(0), b_hh.unsqueeze(0) if b_hh is not None else None)

        def cat(k: int, stack: bool) -> torch.Tensor | None:
            parts = [p[k] for p in per_dir]
            if parts[0] is None:
                return None
            return torch.stack(parts) if stack else torch.cat(parts)

        return Weights(cat(0, False), cat(2, False), cat(1, True), cat(3, True))


def _gemm(a: Matrix, b: Matrix, out: torch.Tensor, bias: torch.Tensor | None = None,
          row_sums: torch.Tensor | None = None) -> torch.Tensor:
    """out = A @ B (+ bias) at the family's precision; row_sums (M,) receives A's row sums too."""
    precision = policy.recurrent_precision(out.dtype, out.device)
    return gemm(a, b, out, bias, precision, row_sums=row_sums)


def _layer_forward(
    x: torch.Tensor, w: Weights, h0: torch.Tensor | None, c0: torch.Tensor | None, cell: int,
) -> tuple[torch.Tensor, ...]:
    """One layer, every direction -> (y (N, T, D*H), gates (N, T, D*4H), cells (N, T, D*H),
    h_n (D, N, H), c_n (D, N, H)); gates for lstm and gru, cells and c_n for lstm (y stands in)."""
    cfg = launch_config()
    batch, steps, _ = x.shape
    ndir, gate_rows, hidden = w.w_hh.shape
    xg = config.new_empty((batch, steps, ndir * gate_rows), x)  # x @ W_ih^T + b_ih, all steps at once
    _gemm(Matrix(x, (0, 1), (2,)), Matrix(w.w_ih, (1,), (0,)), xg, w.b_ih)
    y = config.new_empty((batch, steps, ndir * hidden), x)
    is_lstm = cell == LSTM.value
    gates = config.new_empty((batch, steps, ndir * 4 * hidden), x) if cell in (LSTM.value, GRU.value) else y
    cells = config.new_empty(y.shape, x) if is_lstm else y
    h_n = config.new_empty((ndir, batch, hidden), x)
    c_n = config.new_empty((ndir, batch, hidden), x) if is_lstm else h_n
    outputs = (y, gates, cells, h_n, c_n)
    block_n, block_j, block_k, warps = _seq_blocks(cfg, cell, batch, hidden)
    b_hh = w.b_hh if w.b_hh is not None else w.w_hh[:, 0]

    def launch() -> None:
        seq_fwd_kernel[(triton.cdiv(batch, block_n), ndir)](
            xg, w.w_hh, b_hh, h0 if h0 is not None else h_n, c0 if c0 is not None else h_n,
            y, gates, cells, h_n, c_n, batch, steps, hidden, *w.w_hh.stride(), *b_hh.stride(),
            D=ndir, CELL=cell, G=GATES[cell], HAS_BIAS=w.b_hh is not None, HAS_H0=h0 is not None,
            BLOCK_N=block_n, BLOCK_J=block_j, BLOCK_K=block_k,
            PRECISION=policy.recurrent_precision(x.dtype, x.device), num_warps=warps,
            num_stages=cfg.seq_stages, maxnreg=cfg.seq_maxnreg,
        )

    key = ("fwd", cell, x.dtype, block_j, x.device)
    if hidden > cfg.max_hidden or not _try_persistent(key, launch):
        steps_forward(xg, w.w_hh, w.b_hh, h0, c0, outputs, cell, cfg)
    return outputs


def _gate_grads(
    dy: torch.Tensor, dh_n: torch.Tensor | None, dc_n: torch.Tensor | None, w_hh: torch.Tensor,
    saved: tuple[torch.Tensor, ...], cell: int,
) -> tuple[torch.Tensor, ...]:
    """Backward through time -> (dgx, dgh (N, T, D*G*H), dh0, dc0 (D, N, H)): gradients of the
    input- and hidden-side gate pre-activations of every step (one tensor except for the gru's n
    gate) and of the initial state (dh0/dc0 only meaningful when h0 was given)."""
    cfg = launch_config()
    y, gates, cells, h0, c0 = saved
    batch, steps, _ = y.shape
    ndir, gate_rows, hidden = w_hh.shape
    dgx = config.new_empty((batch, steps, ndir * gate_rows), y)
    dgh = config.new_empty(dgx.shape, y) if cell == GRU.value else dgx
    dh0 = config.new_empty((ndir, batch, hidden), y)
    dc0 = config.new_empty((ndir, batch, hidden), y) if cell == LSTM.value else dh0
    has_dhn = dh_n is not None or dc_n is not None
    if has_dhn:  # a missing one of the pair reads as zeros (only the lstm has c_n)
        dh_n = dh_n.contiguous() if dh_n is not None else torch.zeros_like(dh0)
        if cell == LSTM.value:
            dc_n = dc_n.contiguous() if dc_n is not None else torch.zeros_like(dh0)
        else:
            dc_n = dh_n  # never read
    block_n, block_j, block_k, warps = _seq_blocks(cfg, cell, batch, hidden)

    def launch() -> None:
        seq_bwd_kernel[(triton.cdiv(batch, block_n), ndir)](
            dy, dh_n if has_dhn else y, dc_n if has_dhn else y, w_hh, y, gates, cells,
            h0 if h0 is not None else y, c0 if c0 is not None else y, dgx, dgh, dh0, dc0,
            batch, steps, hidden, *w_hh.stride(), *dy.stride(),
            D=ndir, CELL=cell, G=GATES[cell], HAS_H0=h0 is not None, HAS_DHN=has_dhn,
            BLOCK_N=block_n, BLOCK_J=block_j, BLOCK_K=block_k,
            PRECISION=policy.recurrent_precision(y.dtype, y.device), num_warps=warps,
            num_stages=cfg.seq_stages, maxnreg=cfg.seq_maxnreg,
        )

    key = ("bwd", cell, y.dtype, block_j, y.device)
    if hidden > cfg.max_hidden or not _try_persistent(key, launch):
        lstm_dc_n = dc_n if has_dhn and cell == LSTM.value else None
        steps_backward(dy, dh_n if has_dhn else None, lstm_dc_n, w_hh, saved, (dgx, dgh, dh0, dc0), cell, cfg)
    return dgx, dgh, dh0, dc0


def _previous_states(
    y: torch.Tensor, h0: torch.Tensor | None, d: int, ndir: int,
) -> tuple[torch.Tensor, slice]:
    """Direction d's h_{t-1} for every step it multiplies into W_hh -> (states (N, T', H), the steps
    of dgh they pair with). Without h0 the first step has none: a view, no copy."""
    hidden = y.shape[2] // ndir
    own = y[:, :, d * hidden:(d + 1) * hidden]
    before = (slice(None, -1), slice(1, None))[d]  # steps whose output is some step's h_{t-1}
    if h0 is None:
        return own[:, before], (slice(1, None), slice(None, -1))[d]
    parts = [h0[d].unsqueeze(1), own[:, before]]
    return torch.cat(parts if d == 0 else parts[::-1], dim=1), slice(None)


def _layer_backward(
    ctx_saved: tuple[torch.Tensor | None, ...], w: Weights, cell: int,
    grads_out: tuple[torch.Tensor | None, ...],
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """-> (dx, dh0, dc0, dW_ih (D*G*H, F), [dW_hh per direction], db_ih, db_hh (D*G*H,)), None if unneeded.

    needs: (x, h0, c0, w_ih, w_hh, b_ih, b_hh) each needs a gradient."""
    x, y, gates, cells, h0, c0 = ctx_saved
    dy, dh_n, dc_n = grads_out
    if dy is None:
        dy = torch.zeros_like(y)
    dgx, dgh, dh0, dc0 = _gate_grads(dy, dh_n, dc_n, w.w_hh, (y, gates, cells, h0, c0), cell)
    ndir, gate_rows, _ = w.w_hh.shape
    dx = dw_ih = db_ih = db_hh = None
    dw_hh: list[torch.Tensor] | None = None
    if needs[0]:
        dx = _gemm(Matrix(dgx, (0, 1), (2,)), Matrix(w.w_ih, (0,), (1,)), config.new_empty(x.shape, x))
    if needs[5]:
        db_ih = config.new_empty((w.w_ih.shape[0],), x)
    if needs[3]:  # dW_ih = dgx^T x, with db_ih (dgx's column sums) from the same launch
        dw_ih = _gemm(Matrix(dgx, (2,), (0, 1)), Matrix(x, (0, 1), (2,)), config.new_empty(w.w_ih.shape, x),
                      row_sums=db_ih)
    elif db_ih is not None:
        db_ih = colsum(dgx)
    if needs[4]:
        dw_hh = []
        for d in range(ndir):
            states, paired = _previous_states(y, h0, d, ndir)
            dg = dgh[:, paired, d * gate_rows:(d + 1) * gate_rows]
            dw_hh.append(_gemm(Matrix(dg, (2,), (0, 1)), Matrix(states, (0, 1), (2,)),
                               config.new_empty(w.w_hh.shape[1:], x)))
    if needs[6]:  # the same sums unless the gru's n gate splits the two sides
        db_hh = db_ih.clone() if dgh is dgx and db_ih is not None else colsum(dgh)
    return dx, dh0 if needs[1] else None, dc0 if needs[2] else None, dw_ih, dw_hh, db_ih, db_hh


class RecurrentLayer(torch.autograd.Function):
    """One layer, D directions: (x, h0, c0, cell, D, per direction w_ih, w_hh, b_ih, b_hh) ->
    (y (N, T, D*H), h_n (D, N, H)), plus c_n (D, N, H) for the lstm. h0/c0: (D, N, H) or None."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, cell: int,
                ndir: int, *params: torch.Tensor | None) -> Any:
        w = Weights.join([tuple(params[4 * d:4 * d + 4]) for d in range(ndir)])
        h0 = h0.contiguous() if h0 is not None else None
        c0 = c0.contiguous() if c0 is not None else None
        y, gates, cells, h_n, c_n = _layer_forward(x, w, h0, c0, cell)
        ctx.cell, ctx.ndir = cell, ndir
        ctx.save_for_backward(x, y, gates, cells, h0, c0, *params)
        return (y, h_n, c_n) if cell == LSTM.value else (y, h_n)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor | None, dh_n: torch.Tensor | None,
                 *dc_n: torch.Tensor | None) -> Any:
        saved = ctx.saved_tensors
        ndir, params = ctx.ndir, saved[6:]
        w = Weights.join([tuple(params[4 * d:4 * d + 4]) for d in range(ndir)])
        n = ctx.needs_input_grad
        per_param = [any(n[5 + 4 * d + k] for d in range(ndir)) for k in range(4)]  # w_ih, w_hh, b_ih, b_hh
        needs = (n[0], n[1], n[2], per_param[0], per_param[1], per_param[2], per_param[3])
        dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh = _layer_backward(
            saved[:6], w, ctx.cell, (dy, dh_n, dc_n[0] if dc_n else None), needs)
        grads: list[torch.Tensor | None] = []
        for d in range(ndir):
            rows = slice(d * w.w_hh.shape[1], (d + 1) * w.w_hh.shape[1])
            grads += [dw_ih[rows] if dw_ih is not None else None, dw_hh[d] if dw_hh is not None else None,
                      db_ih[rows] if db_ih is not None else None, db_hh[rows] if db_hh is not None else None]
        return (dx, dh0, dc0, None, None, *grads)
