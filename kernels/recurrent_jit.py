"""Triton kernels for rnn/lstm/gru: a strided GEMM, column sums, persistent forward and reverse-time cells.

The sequence kernels give each program a slice of the batch and loop over all
T steps inside one launch, keeping the hidden state (and the lstm cell) in
registers; the recurrent weight is re-read from global memory every step,
where it stays cache-resident. `tanh` is written as 2*sigmoid(2x) - 1 because
the interpreter has no libdevice.
"""

from __future__ import annotations

import triton
import triton.language as tl

# cell kinds, passed to the sequence kernels as the CELL constexpr
RNN_TANH = tl.constexpr(0)
RNN_RELU = tl.constexpr(1)
LSTM = tl.constexpr(2)
GRU = tl.constexpr(3)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _gemm_kernel(
    a_ptr,  # A (M, K): element (m, k) at (m // m_inner, m % m_inner) x (k // k_inner, k % k_inner)
    b_ptr,  # B (K, N): K grouped as A's, column stride s_bn
    bias_ptr,  # (N,) added to every row of C; read only when HAS_BIAS
    c_ptr,  # C (M, N) out, row stride s_cm, unit column stride
    M,  # rows of A and C
    N,  # columns of B and C
    K,  # reduction length
    m_inner,  # size of the inner dim of A's row group
    k_inner,  # size of the inner dim of the K group (shared by A and B)
    s_am0, s_am1,  # A row strides: outer, inner
    s_ak0, s_ak1,  # A column (K) strides: outer, inner
    s_bk0, s_bk1,  # B row (K) strides: outer, inner
    s_bn,  # B column stride
    s_bias,  # bias stride
    s_cm,  # C row stride
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision ("ieee" matches torch float32)
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    a_rows = (rm // m_inner) * s_am0 + (rm % m_inner) * s_am1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        a_cols = (rk // k_inner) * s_ak0 + (rk % k_inner) * s_ak1
        b_rows = (rk // k_inner) * s_bk0 + (rk % k_inner) * s_bk1
        a = tl.load(a_ptr + a_rows[:, None] + a_cols[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] + (rn * s_bn)[None, :], mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=acc.dtype)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn * s_bias, mask=n_ok, other=0.0)[None, :]
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _colsum_kernel(
    x_ptr,  # (R, C) contiguous
    out_ptr,  # (C,) out: sum over the rows
    R,  # rows
    C,  # columns
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    acc = tl.zeros((BLOCK_C,), dtype=out_ptr.dtype.element_ty)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        tile = tl.load(x_ptr + rows[:, None] * C + cols[None, :], mask=(rows < R)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(out_ptr + cols, acc, mask=c_ok)


@triton.jit
def _hidden_proj(h, w_ptr, b_ptr, gate, H, s_w0, s_w1, s_b,
                 HAS_BIAS: tl.constexpr, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    """h (BLOCK_N, BLOCK_H) @ W_g^T + b_g, W_g = rows [gate*H, gate*H + H) of W (G*H, H)."""
    k = tl.arange(0, BLOCK_H)[:, None]  # input unit
    j = tl.arange(0, BLOCK_H)[None, :]  # output unit
    w_t = tl.load(w_ptr + (gate * H + j) * s_w0 + k * s_w1, mask=(k < H) & (j < H), other=0.0)
    out = tl.dot(h, w_t, input_precision=PRECISION, out_dtype=h.dtype)
    if HAS_BIAS:
        cols = tl.arange(0, BLOCK_H)
        out += tl.load(b_ptr + (gate * H + cols) * s_b, mask=cols < H, other=0.0)[None, :]
    return out


@triton.jit
def _hidden_back(d, w_ptr, gate, H, s_w0, s_w1, BLOCK_H: tl.constexpr, PRECISION: tl.constexpr):
    """d (BLOCK_N, BLOCK_H) @ W_g: the gradient a gate pre-activation sends to h_{t-1}."""
    j = tl.arange(0, BLOCK_H)[:, None]  # output unit of the gate
    k = tl.arange(0, BLOCK_H)[None, :]  # input unit
    w = tl.load(w_ptr + (gate * H + j) * s_w0 + k * s_w1, mask=(j < H) & (k < H), other=0.0)
    return tl.dot(d, w, input_precision=PRECISION, out_dtype=d.dtype)


@triton.jit
def _seq_fwd_kernel(
    xg_ptr,  # (N, T, G*H) contiguous: x @ W_ih^T + b_ih for every step
    w_ptr,  # (G*H, H) weight_hh
    b_ptr,  # (G*H,) bias_hh; read only when HAS_BIAS
    y_ptr,  # (N, T, H) out: h_t of every step
    gates_ptr,  # (N, T, 4*H) out: lstm i,f,g,o or gru r,z,n,(W_hn h + b_hn); unused for rnn
    c_ptr,  # (N, T, H) out: lstm cell state of every step; unused otherwise
    cn_ptr,  # (N, H) out: lstm cell state after the last step; unused otherwise
    N, T, H,  # batch, steps, hidden size
    s_w0, s_w1, s_b,  # strides of weight_hh and bias_hh
    CELL: tl.constexpr,  # RNN_TANH, RNN_RELU, LSTM or GRU
    G: tl.constexpr,  # gates: 1, 4 or 3
    HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr,  # batch rows per program (>= 16 for the GPU's dot)
    BLOCK_H: tl.constexpr,  # next power of two >= max(H, 16)
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    xg_at = xg_ptr + rows[:, None] * (T * G * H) + cols[None, :]  # step 0, gate 0
    y_at = y_ptr + rows[:, None] * (T * H) + cols[None, :]
    gates_at = gates_ptr + rows[:, None] * (T * 4 * H) + cols[None, :]
    h = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    c = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    for t in range(T):
        x_t = xg_at + t * (G * H)
        if CELL == LSTM:
            i = tl.sigmoid(tl.load(x_t, mask=mask, other=0.0)
                           + _hidden_proj(h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            f = tl.sigmoid(tl.load(x_t + H, mask=mask, other=0.0)
                           + _hidden_proj(h, w_ptr, b_ptr, 1, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            g = _tanh(tl.load(x_t + 2 * H, mask=mask, other=0.0)
                      + _hidden_proj(h, w_ptr, b_ptr, 2, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            o = tl.sigmoid(tl.load(x_t + 3 * H, mask=mask, other=0.0)
                           + _hidden_proj(h, w_ptr, b_ptr, 3, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            c = f * c + i * g
            h = o * _tanh(c)
            g_t = gates_at + t * (4 * H)
            tl.store(g_t, i, mask=mask)
            tl.store(g_t + H, f, mask=mask)
            tl.store(g_t + 2 * H, g, mask=mask)
            tl.store(g_t + 3 * H, o, mask=mask)
            tl.store(c_ptr + rows[:, None] * (T * H) + t * H + cols[None, :], c, mask=mask)
        elif CELL == GRU:
            r = tl.sigmoid(tl.load(x_t, mask=mask, other=0.0)
                           + _hidden_proj(h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            z = tl.sigmoid(tl.load(x_t + H, mask=mask, other=0.0)
                           + _hidden_proj(h, w_ptr, b_ptr, 1, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION))
            hn = _hidden_proj(h, w_ptr, b_ptr, 2, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION)
            n = _tanh(tl.load(x_t + 2 * H, mask=mask, other=0.0) + r * hn)
            h = (1.0 - z) * n + z * h
            g_t = gates_at + t * (4 * H)
            tl.store(g_t, r, mask=mask)
            tl.store(g_t + H, z, mask=mask)
            tl.store(g_t + 2 * H, n, mask=mask)
            tl.store(g_t + 3 * H, hn, mask=mask)
        else:
            pre = tl.load(x_t, mask=mask, other=0.0) + _hidden_proj(
                h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION)
            if CELL == RNN_RELU:
                h = tl.maximum(pre, 0.0)
            else:
                h = _tanh(pre)
        tl.store(y_at + t * H, h, mask=mask)
    if CELL == LSTM:
        tl.store(cn_ptr + rows[:, None] * H + cols[None, :], c, mask=mask)


@triton.jit
def _seq_bwd_kernel(
    dy_ptr,  # (N, T, H) gradient of y, strides s_dy0, s_dy1, s_dy2
    dcn_ptr,  # (N, H) contiguous gradient of the lstm c_n; unused otherwise
    w_ptr,  # (G*H, H) weight_hh
    y_ptr,  # (N, T, H) forward h_t
    gates_ptr,  # (N, T, 4*H) forward gate activations (lstm, gru)
    c_ptr,  # (N, T, H) forward lstm cell states
    dgx_ptr,  # (N, T, G*H) out: gradient of the input-side pre-activations (of xg)
    dgh_ptr,  # (N, T, G*H) out, gru only: gradient of the hidden-side pre-activations (n gate differs)
    N, T, H,  # batch, steps, hidden size
    s_w0, s_w1,  # strides of weight_hh
    s_dy0, s_dy1, s_dy2,  # strides of dy
    CELL: tl.constexpr,
    G: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_H: tl.constexpr,
    PRECISION: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    dy_at = dy_ptr + rows[:, None] * s_dy0 + cols[None, :] * s_dy2
    seq_at = rows[:, None] * (T * H) + cols[None, :]  # offset of (row, t=0, col) in y and c
    gates_at = gates_ptr + rows[:, None] * (T * 4 * H) + cols[None, :]
    dg_at = rows[:, None] * (T * G * H) + cols[None, :]
    dh_next = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)  # from step t+1 into h_t
    dc = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    if CELL == LSTM:
        dc += tl.load(dcn_ptr + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
    for step in range(T):
        t = T - 1 - step
        dh = dh_next + tl.load(dy_at + t * s_dy1, mask=mask, other=0.0)
        prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0
        dg_t = dg_at + t * (G * H)
        if CELL == LSTM:
            g_t = gates_at + t * (4 * H)
            i = tl.load(g_t, mask=mask, other=0.0)
            f = tl.load(g_t + H, mask=mask, other=0.0)
            g = tl.load(g_t + 2 * H, mask=mask, other=0.0)
            o = tl.load(g_t + 3 * H, mask=mask, other=0.0)
            tanh_c = _tanh(tl.load(c_ptr + seq_at + t * H, mask=mask, other=0.0))
            c_prev = tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
            dc += dh * o * (1.0 - tanh_c * tanh_c)
            d_i = dc * g * i * (1.0 - i)
            d_f = dc * c_prev * f * (1.0 - f)
            d_g = dc * i * (1.0 - g * g)
            d_o = dh * tanh_c * o * (1.0 - o)
            dc = dc * f
            tl.store(dgx_ptr + dg_t, d_i, mask=mask)
            tl.store(dgx_ptr + dg_t + H, d_f, mask=mask)
            tl.store(dgx_ptr + dg_t + 2 * H, d_g, mask=mask)
            tl.store(dgx_ptr + dg_t + 3 * H, d_o, mask=mask)
            dh_next = (_hidden_back(d_i, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_f, w_ptr, 1, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_g, w_ptr, 2, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_o, w_ptr, 3, H, s_w0, s_w1, BLOCK_H, PRECISION))
        elif CELL == GRU:
            g_t = gates_at + t * (4 * H)
            r = tl.load(g_t, mask=mask, other=0.0)
            z = tl.load(g_t + H, mask=mask, other=0.0)
            n = tl.load(g_t + 2 * H, mask=mask, other=0.0)
            hn = tl.load(g_t + 3 * H, mask=mask, other=0.0)
            h_prev = tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0)
            d_n = dh * (1.0 - z) * (1.0 - n * n)
            d_z = dh * (h_prev - n) * z * (1.0 - z)
            d_r = d_n * hn * r * (1.0 - r)
            d_hn = d_n * r  # the n gate's hidden side sits behind r
            tl.store(dgx_ptr + dg_t, d_r, mask=mask)
            tl.store(dgx_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgx_ptr + dg_t + 2 * H, d_n, mask=mask)
            tl.store(dgh_ptr + dg_t, d_r, mask=mask)
            tl.store(dgh_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgh_ptr + dg_t + 2 * H, d_hn, mask=mask)
            dh_next = (dh * z
                       + _hidden_back(d_r, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_z, w_ptr, 1, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_hn, w_ptr, 2, H, s_w0, s_w1, BLOCK_H, PRECISION))
        else:
            y_t = tl.load(y_ptr + seq_at + t * H, mask=mask, other=0.0)
            if CELL == RNN_RELU:
                d_pre = tl.where(y_t > 0.0, dh, 0.0)
            else:
                d_pre = dh * (1.0 - y_t * y_t)
            tl.store(dgx_ptr + dg_t, d_pre, mask=mask)
            dh_next = _hidden_back(d_pre, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
