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

from netc.kernels import config, policy
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
from netc.kernels import costs

if TYPE_CHECKING:
    from netc.kernels.policy import RecurrentConfig


@triton.jit(launch_metadata=costs.cell_step(), do_not_specialize=["t"])
def _step_fwd_kernel(
    xg_ptr,  # (N, T, G*H) contiguous: x @ W_ih^T + b_ih
    hg_ptr,  # (N, G*H) contiguous: h_{t-1} @ W_hh^T + b_hh
    y_ptr,  # (N, T, H) in: h_{t-1}; out: h_t
    gates_ptr,  # (N, T, 4*H) out: lstm i,f,g,o or gru r,z,n,(W_hn h + b_hn)
    c_ptr,  # (N, T, H) lstm: in c_{t-1}, out c_t
    cn_ptr,  # (N, H) lstm out: c_t (the last step's stays)
    h0_ptr,  # (N, H) contiguous h_0 (gru) read at t = 0 when HAS_H0
    c0_ptr,  # (N, H) contiguous c_0 (lstm) read at t = 0 when HAS_H0
    t, N, T, H,  # this step, batch, steps, hidden size
    CELL: tl.constexpr,
    G: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0 without h0
    start_mask = mask & (rows * 0 + t == 0)[:, None] & HAS_H0
    state_at = rows[:, None] * H + cols[None, :]
    x_t = xg_ptr + rows[:, None] * (T * G * H) + t * (G * H) + cols[None, :]
    hg = hg_ptr + rows[:, None] * (G * H) + cols[None, :]
    seq_at = rows[:, None] * (T * H) + cols[None, :]  # (row, t=0, col) in y and c
    gates_t = gates_ptr + rows[:, None] * (T * 4 * H) + t * (4 * H) + cols[None, :]
    if CELL == LSTM:
        x_i, x_f, x_g, x_o = load4(x_t, H, mask)
        h_i, h_f, h_g, h_o = load4(hg, H, mask)
        c_prev = (tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
                  + tl.load(c0_ptr + state_at, mask=start_mask, other=0.0))
        i, f, g, o, c, h = lstm_cell(x_i + h_i, x_f + h_f, x_g + h_g, x_o + h_o, c_prev)
        store4(gates_t, H, i, f, g, o, mask)
        tl.store(c_ptr + seq_at + t * H, c, mask=mask)
        tl.store(cn_ptr + rows[:, None] * H + cols[None, :], c, mask=mask)
    elif CELL == GRU:
        h_n = tl.load(hg + 2 * H, mask=mask, other=0.0)
        h_prev = (tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
                  + tl.load(h0_ptr + state_at, mask=start_mask, other=0.0))
        r, z, n, h = gru_cell(tl.load(x_t, mask=mask, other=0.0), tl.load(x_t + H, mask=mask, other=0.0),
                              tl.load(x_t + 2 * H, mask=mask, other=0.0), tl.load(hg, mask=mask, other=0.0),
                              tl.load(hg + H, mask=mask, other=0.0), h_n, h_prev)
        store4(gates_t, H, r, z, n, h_n, mask)
    else:
        h = rnn_cell(tl.load(x_t, mask=mask, other=0.0) + tl.load(hg, mask=mask, other=0.0), CELL)
    tl.store(y_ptr + seq_at + t * H, h, mask=mask)


@triton.jit(launch_metadata=costs.cell_step(), do_not_specialize=["t"])
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
    h0_ptr,  # (N, H) contiguous h_0 (gru) read at t = 0 when HAS_H0
    c0_ptr,  # (N, H) contiguous c_0 (lstm) read at t = 0 when HAS_H0
    t, N, T, H,  # this step, batch, steps, hidden size
    s_dy0, s_dy1, s_dy2,  # strides of dy
    CELL: tl.constexpr,
    G: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0 without h0
    start_mask = mask & (rows * 0 + t == 0)[:, None] & HAS_H0
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
            tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
            + tl.load(c0_ptr + state_at, mask=start_mask, other=0.0))
        store4(dgx_ptr + dg_t, H, d_i, d_f, d_g, d_o, mask)
        tl.store(dc_out_ptr + state_at, dc, mask=mask)
    elif CELL == GRU:
        dh += tl.load(direct_ptr + state_at, mask=next_mask, other=0.0)
        r, z, n, h_n = load4(gates_t, H, mask)
        d_r, d_z, d_n, d_hn, dh_direct = gru_cell_back(
            dh, r, z, n, h_n, tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
            + tl.load(h0_ptr + state_at, mask=start_mask, other=0.0))
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


def _one_direction(
    tensors: list[torch.Tensor | None], d: int, width: int,
) -> list[torch.Tensor | None]:
    """Direction d's columns of each (N, T, D*width) tensor, contiguous, in its own time order
    (the reverse direction flipped, so it runs as a forward one)."""
    out = []
    for tensor in tensors:
        if tensor is None:
            out.append(None)
            continue
        own = tensor[:, :, d * width:(d + 1) * width]
        out.append((own.flip(1) if d else own).contiguous())
    return out


def _put_back(targets: list[torch.Tensor], sources: list[torch.Tensor], d: int) -> None:
    """Copy one direction's results (its own time order) into the shared (N, T, D*width) tensors."""
    for target, source in zip(targets, sources, strict=True):
        width = source.shape[2]
        target[:, :, d * width:(d + 1) * width] = source.flip(1) if d else source


def _forward_one(
    xg: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor | None,
    c0: torch.Tensor | None, outputs: tuple[torch.Tensor, ...], cell: int, cfg: RecurrentConfig,
) -> None:
    """One forward-in-time direction on contiguous buffers: outputs = (y, gates, cells, c_n (N, H))."""
    y, gates, cells, c_n = outputs
    batch, steps, gate_rows = xg.shape
    hidden = w_hh.shape[1]
    precision = policy.recurrent_precision(xg.dtype, xg.device)
    hg = config.new_empty((batch, gate_rows), xg)  # (N, G*H) hidden-side pre-activations of one step
    block_n, block_h = cfg.step_block
    grid = (triton.cdiv(batch, block_n), triton.cdiv(hidden, block_h))
    for t in range(steps):
        # at t = 0 without h0, h_{-1} = 0: a K = 0 product leaves just b_hh
        h_prev, w = (y[:, t - 1], w_hh) if t else (h0, w_hh) if h0 is not None else (y[:, 0, :0], w_hh[:, :0])
        gemm(Matrix(h_prev, (0,), (1,)), Matrix(w, (1,), (0,)), hg, b_hh, precision)
        _step_fwd_kernel[grid](xg, hg, y, gates, cells, c_n, h0 if h0 is not None else hg,
                               c0 if c0 is not None else hg, t, batch, steps, hidden,
                               CELL=cell, G=gate_rows // hidden, HAS_H0=h0 is not None, BLOCK_N=block_n,
                               BLOCK_H=block_h, num_warps=cfg.step_warps)


def steps_forward(
    xg: torch.Tensor, w_hh: torch.Tensor, b_hh: torch.Tensor | None, h0: torch.Tensor | None,
    c0: torch.Tensor | None, outputs: tuple[torch.Tensor, ...], cell: int, cfg: RecurrentConfig,
) -> None:
    """Fill outputs = (y, gates, cells, h_n, c_n) as the persistent forward does, two launches per
    step and direction. w_hh (D, G*H, H), b_hh (D, G*H), h0/c0 (D, N, H) or None."""
    y, gates, cells, h_n, c_n = outputs
    ndir, gate_rows, hidden = w_hh.shape
    for d in range(ndir):
        own = [xg, y, gates, cells]
        if ndir > 1:  # fresh per-direction buffers; the rnn's gates and the non-lstm cells alias y
            (xg_d,) = _one_direction([xg], d, gate_rows)
            y_d = config.new_empty((y.shape[0], y.shape[1], hidden), y)
            gates_d = y_d if gates is y else config.new_empty((y.shape[0], y.shape[1], 4 * hidden), y)
            own = [xg_d, y_d, gates_d, y_d if cells is y else config.new_empty(y_d.shape, y)]
        _forward_one(own[0], w_hh[d], b_hh[d] if b_hh is not None else None,
                     h0[d] if h0 is not None else None, c0[d] if c0 is not None else None,
                     (own[1], own[2], own[3], c_n[d]), cell, cfg)
        if ndir > 1:
            distinct = [(t, o) for t, o in zip([gates, cells], own[2:], strict=True) if t is not y]
            _put_back([y] + [t for t, _ in distinct], [own[1]] + [o for _, o in distinct], d)
        h_n[d] = own[1][:, -1]


def _backward_one(
    dy: torch.Tensor, dc_n: torch.Tensor | None, w_hh: torch.Tensor, saved: list[torch.Tensor | None],
    grads: list[torch.Tensor], cell: int, cfg: RecurrentConfig,
) -> None:
    """One forward-in-time direction: saved = (y, gates, cells, h0, c0), grads = (dgx, dgh, dh0, dc0)."""
    y, gates, cells, h0, c0 = saved
    dgx, dgh, dh0, dc0 = grads
    batch, steps, hidden = y.shape
    precision = policy.recurrent_precision(y.dtype, y.device)
    dh_next = config.new_empty((batch, hidden), y)  # dgh_{t+1} @ W_hh
    direct = config.new_empty((batch, hidden), y)  # gru: dh_{t+1} * z_{t+1}
    dc_state = config.new_empty((batch, hidden), y)  # lstm: gradient of c_t
    dc_last = dc_n if dc_n is not None else torch.zeros_like(dc_state)
    block_n, block_h = cfg.step_block
    grid = (triton.cdiv(batch, block_n), triton.cdiv(hidden, block_h))
    has_h0 = h0 is not None
    for t in reversed(range(steps)):
        _step_bwd_kernel[grid](
            dy, dh_next, direct, dc_last if t == steps - 1 else dc_state, dc_state, y, gates, cells, dgx, dgh,
            h0 if has_h0 else y, c0 if c0 is not None else y, t, batch, steps, hidden, *dy.stride(),
            CELL=cell, G=w_hh.shape[0] // hidden, HAS_H0=has_h0, BLOCK_N=block_n, BLOCK_H=block_h,
            num_warps=cfg.step_warps,
        )
        if t > 0 or has_h0:
            gemm(Matrix(dgh[:, t], (0,), (1,)), Matrix(w_hh, (0,), (1,)), dh_next, None, precision)
    if has_h0:
        dh0.copy_(dh_next + direct if cell == GRU.value else dh_next)
        if cell == LSTM.value:
            dc0.copy_(dc_state)


def steps_backward(
    dy: torch.Tensor, dh_n: torch.Tensor | None, dc_n: torch.Tensor | None, w_hh: torch.Tensor,
    saved: tuple[torch.Tensor | None, ...], grads: tuple[torch.Tensor, ...], cell: int, cfg: RecurrentConfig,
) -> None:
    """Fill grads = (dgx, dgh, dh0, dc0) from saved = (y, gates, cells, h0, c0) as the persistent
    backward does; dh_n/dc_n (D, N, H) or None."""
    y, gates, cells, h0, c0 = saved
    dgx, dgh, dh0, dc0 = grads
    ndir, gate_rows, hidden = w_hh.shape
    for d in range(ndir):
        if ndir == 1:
            y_d, gates_d, cells_d, dgx_d, dgh_d = y, gates, cells, dgx, dgh
            dy_d = dy.clone() if dh_n is not None else dy
        else:
            y_d, cells_d, dy_d = _one_direction([y, cells, dy], d, hidden)
            (gates_d,) = _one_direction([gates], d, 4 * hidden) if gates is not y else (y_d,)
            dgx_d = config.new_empty((y.shape[0], y.shape[1], gate_rows), y)
            dgh_d = config.new_empty(dgx_d.shape, y) if dgh is not dgx else dgx_d
        if dh_n is not None:
            dy_d[:, -1] += dh_n[d]  # h_n is the last step's output (dy_d is a copy here)
        states = [h0[d] if h0 is not None else None, c0[d] if c0 is not None else None]
        _backward_one(dy_d, dc_n[d] if dc_n is not None else None, w_hh[d], [y_d, gates_d, cells_d, *states],
                      [dgx_d, dgh_d, dh0[d], dc0[d]], cell, cfg)
        if ndir > 1:
            gru = dgh is not dgx
            _put_back([dgx, dgh] if gru else [dgx], [dgx_d, dgh_d] if gru else [dgx_d], d)
