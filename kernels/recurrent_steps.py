"""Per-step fallback for hidden sizes too large for the persistent kernels: a GEMM and a cell launch per step.

When the recurrent weight tile of a gate (BLOCK_H x BLOCK_H) no longer fits
on chip (`LaunchConfig.max_hidden`), each step t runs two launches forward
(hg = h_{t-1} @ W_hh^T + b_hh, then the cell on (batch, hidden) tiles) and two
backward (the cell's gradient, then dh_{t-1} = dgh_t @ W_hh). Buffers and
results are exactly those of the persistent kernels, so the weight-gradient
GEMMs after them are shared.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import triton
import triton.language as tl

from netc.kernels import config
from netc.kernels.recurrent_cells import (
    GRU,
    LSTM,
    gru_cell,
    gru_cell_back,
    load4,
    lstm_cell,
    lstm_cell_back,
    rnn_cell,
    rnn_cell_back,
    store4,
)
from netc.kernels.recurrent_gemm import Matrix, gemm

if TYPE_CHECKING:
    from netc.kernels.recurrent import LaunchConfig


@triton.jit(do_not_specialize=["t"])
def _step_fwd_kernel(
    xg_ptr,  # (N, T, G*H) contiguous: x @ W_ih^T + b_ih
    hg_ptr,  # (N, G*H) contiguous: h_{t-1} @ W_hh^T + b_hh
    y_ptr,  # (N, T, H) in: h_{t-1}; out: h_t
    gates_ptr,  # (N, T, 4*H) out: lstm i,f,g,o or gru r,z,n,(W_hn h + b_hn)
    c_ptr,  # (N, T, H) lstm: in c_{t-1}, out c_t
    cn_ptr,  # (N, H) lstm out: c_t (the last step's stays)
    t, N, T, H,  # this step, batch, steps, hidden size
    CELL: tl.constexpr,
    G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0
    x_t = xg_ptr + rows[:, None] * (T * G * H) + t * (G * H) + cols[None, :]
    hg = hg_ptr + rows[:, None] * (G * H) + cols[None, :]
    seq_at = rows[:, None] * (T * H) + cols[None, :]  # (row, t=0, col) in y and c
    gates_t = gates_ptr + rows[:, None] * (T * 4 * H) + t * (4 * H) + cols[None, :]
    if CELL == LSTM:
        x_i, x_f, x_g, x_o = load4(x_t, H, mask)
        h_i, h_f, h_g, h_o = load4(hg, H, mask)
        i, f, g, o, c, h = lstm_cell(x_i + h_i, x_f + h_f, x_g + h_g, x_o + h_o,
                                     tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
        store4(gates_t, H, i, f, g, o, mask)
        tl.store(c_ptr + seq_at + t * H, c, mask=mask)
        tl.store(cn_ptr + rows[:, None] * H + cols[None, :], c, mask=mask)
    elif CELL == GRU:
        h_n = tl.load(hg + 2 * H, mask=mask, other=0.0)
        r, z, n, h = gru_cell(tl.load(x_t, mask=mask, other=0.0), tl.load(x_t + H, mask=mask, other=0.0),
                              tl.load(x_t + 2 * H, mask=mask, other=0.0), tl.load(hg, mask=mask, other=0.0),
                              tl.load(hg + H, mask=mask, other=0.0), h_n,
                              tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
        store4(gates_t, H, r, z, n, h_n, mask)
    else:
        h = rnn_cell(tl.load(x_t, mask=mask, other=0.0) + tl.load(hg, mask=mask, other=0.0), CELL)
    tl.store(y_ptr + seq_at + t * H, h, mask=mask)


@triton.jit(do_not_specialize=["t"])
def _step_bwd_kernel(
    dy_ptr,  # (N, T, H) gradient of y, strides s_dy0, s_dy1, s_dy2
    dh_next_ptr,  # (N, H) contiguous: dgh_{t+1} @ W_hh; read when t < T-1
    direct_ptr,  # (N, H) gru: in dh_{t+1} * z_{t+1}, out dh_t * z_t (the part of dh_{t-1} that skips W_hh)
    dc_in_ptr,  # (N, H) contiguous lstm: gradient of c_t (c_n's at t = T-1)
    dc_out_ptr,  # (N, H) lstm out: gradient of c_{t-1} (may alias dc_in_ptr)
    y_ptr,  # (N, T, H) forward h_t
    gates_ptr,  # (N, T, 4*H) forward gate values (lstm, gru)
    c_ptr,  # (N, T, H) forward lstm cell states
    dgx_ptr,  # (N, T, G*H) out: gradient of the input-side pre-activations
    dgh_ptr,  # (N, T, G*H) out, gru only: gradient of the hidden-side pre-activations
    t, N, T, H,  # this step, batch, steps, hidden size
    s_dy0, s_dy1, s_dy2,  # strides of dy
    CELL: tl.constexpr,
    G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0
    next_mask = mask & (rows * 0 + t < T - 1)[:, None]  # nothing flows back from beyond the last step
    state_at = rows[:, None] * H + cols[None, :]  # (N, H) buffers
    seq_at = rows[:, None] * (T * H) + cols[None, :]
    dg_t = rows[:, None] * (T * G * H) + t * (G * H) + cols[None, :]
    gates_t = gates_ptr + rows[:, None] * (T * 4 * H) + t * (4 * H) + cols[None, :]
    dh = (tl.load(dy_ptr + rows[:, None] * s_dy0 + t * s_dy1 + cols[None, :] * s_dy2, mask=mask, other=0.0)
          + tl.load(dh_next_ptr + state_at, mask=next_mask, other=0.0))
    if CELL == LSTM:
        i, f, g, o = load4(gates_t, H, mask)
        d_i, d_f, d_g, d_o, dc = lstm_cell_back(
            dh, tl.load(dc_in_ptr + state_at, mask=mask, other=0.0), i, f, g, o,
            tl.load(c_ptr + seq_at + t * H, mask=mask, other=0.0),
            tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
        store4(dgx_ptr + dg_t, H, d_i, d_f, d_g, d_o, mask)
        tl.store(dc_out_ptr + state_at, dc, mask=mask)
    elif CELL == GRU:
        dh += tl.load(direct_ptr + state_at, mask=next_mask, other=0.0)
        r, z, n, h_n = load4(gates_t, H, mask)
        d_r, d_z, d_n, d_hn, dh_direct = gru_cell_back(
            dh, r, z, n, h_n, tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
        tl.store(dgx_ptr + dg_t, d_r, mask=mask)
        tl.store(dgx_ptr + dg_t + H, d_z, mask=mask)
        tl.store(dgx_ptr + dg_t + 2 * H, d_n, mask=mask)
        tl.store(dgh_ptr + dg_t, d_r, mask=mask)
        tl.store(dgh_ptr + dg_t + H, d_z, mask=mask)
        tl.store(dgh_ptr + dg_t + 2 * H, d_hn, mask=mask)
        tl.store(direct_ptr + state_at, dh_direct, mask=mask)
    else:
        d_pre = rnn_cell_back(dh, tl.load(y_ptr + seq_at + t * H, mask=mask, other=0.0), CELL)
        tl.store(dgx_ptr + dg_t, d_pre, mask=mask)


def steps_forward(
    xg: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None,
    outputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], cell: int, cfg: LaunchConfig,
) -> None:
    """Fill outputs = (y, gates, cells, c_n) as the persistent forward does, two launches per step."""
    y, gates, cells, c_n = outputs
    batch, steps, gate_rows = xg.shape
    hidden = w_hh.shape[1]
    hg = config.new_empty((batch, gate_rows), xg)  # (N, G*H) hidden-side pre-activations of one step
    block_n, block_h = cfg.step_block
    grid = (triton.cdiv(batch, block_n), triton.cdiv(hidden, block_h))
    for t in range(steps):
        # at t = 0, h_{-1} = 0: a K = 0 product leaves just b_hh
        h_prev, w = (y[:, t - 1], w_hh) if t else (y[:, 0, :0], w_hh[:, :0])
        gemm(Matrix(h_prev, (0,), (1,)), Matrix(w, (1,), (0,)), hg, b_hh, cfg.precision,
             cfg.gemm_block, cfg.gemm_warps)
        _step_fwd_kernel[grid](xg, hg, y, gates, cells, c_n, t, batch, steps, hidden,
                               CELL=cell, G=gate_rows // hidden, BLOCK_N=block_n, BLOCK_H=block_h,
                               num_warps=cfg.step_warps)


def steps_backward(
    dy: torch.Tensor, dc_n: torch.Tensor, w_hh: torch.Tensor,
    saved: tuple[torch.Tensor, torch.Tensor, torch.Tensor], grads: tuple[torch.Tensor, torch.Tensor],
    cell: int, cfg: LaunchConfig,
) -> None:
    """Fill grads = (dgx, dgh) from saved = (y, gates, cells) as the persistent backward does."""
    y, gates, cells = saved
    dgx, dgh = grads
    batch, steps, hidden = y.shape
    dh_next = config.new_empty((batch, hidden), y)  # dgh_{t+1} @ W_hh
    direct = config.new_empty((batch, hidden), y)  # gru: dh_{t+1} * z_{t+1}
    dc_state = config.new_empty((batch, hidden), y)  # lstm: gradient of c_t
    block_n, block_h = cfg.step_block
    grid = (triton.cdiv(batch, block_n), triton.cdiv(hidden, block_h))
    for t in reversed(range(steps)):
        _step_bwd_kernel[grid](
            dy, dh_next, direct, dc_n if t == steps - 1 else dc_state, dc_state, y, gates, cells, dgx, dgh,
            t, batch, steps, hidden, dy.stride(0), dy.stride(1), dy.stride(2),
            CELL=cell, G=w_hh.shape[0] // hidden, BLOCK_N=block_n, BLOCK_H=block_h, num_warps=cfg.step_warps,
        )
        if t > 0:
            gemm(Matrix(dgh[:, t], (0,), (1,)), Matrix(w_hh, (0,), (1,)), dh_next, None, cfg.precision,
                 cfg.gemm_block, cfg.gemm_warps)
