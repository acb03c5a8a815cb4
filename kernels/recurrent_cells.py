"""Gate pre-activations -> rnn/lstm/gru cell outputs and their gradients, and the persistent sequence kernels.

The cell math is written once, as @triton.jit helpers on (BLOCK_N, BLOCK_H)
tiles, and shared by the persistent kernels here and the per-step fallback in
`recurrent_steps.py`. A persistent kernel gives each program a slice of the
batch and walks all T steps in one launch, keeping h (and the lstm cell) in
registers; the recurrent weight is re-read every step from global memory,
where it stays cache-resident. tanh is 2*sigmoid(2x) - 1: the interpreter
has no libdevice.
"""

from __future__ import annotations

import triton
import triton.language as tl

# cell kinds, the CELL constexpr of every kernel
RNN_TANH = tl.constexpr(0)
RNN_RELU = tl.constexpr(1)
LSTM = tl.constexpr(2)
GRU = tl.constexpr(3)


@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def rnn_cell(pre, CELL: tl.constexpr):
    """h_t from the summed pre-activation."""
    if CELL == RNN_RELU:
        h = tl.maximum(pre, 0.0)
    else:
        h = _tanh(pre)
    return h


@triton.jit
def rnn_cell_back(dh, h, CELL: tl.constexpr):
    """Gradient of the pre-activation, from h_t's gradient and h_t."""
    if CELL == RNN_RELU:
        d_pre = tl.where(h > 0.0, dh, 0.0)
    else:
        d_pre = dh * (1.0 - h * h)
    return d_pre


@triton.jit
def lstm_cell(pre_i, pre_f, pre_g, pre_o, c_prev):
    """Summed pre-activations and c_{t-1} -> (i, f, g, o, c_t, h_t)."""
    i = tl.sigmoid(pre_i)
    f = tl.sigmoid(pre_f)
    g = _tanh(pre_g)
    o = tl.sigmoid(pre_o)
    c = f * c_prev + i * g
    return i, f, g, o, c, o * _tanh(c)


@triton.jit
def lstm_cell_back(dh, dc, i, f, g, o, c, c_prev):
    """Gradients of h_t and c_t (the latter from step t+1) -> (d_i, d_f, d_g, d_o, gradient of c_{t-1})."""
    tanh_c = _tanh(c)
    dc = dc + dh * o * (1.0 - tanh_c * tanh_c)
    d_i = dc * g * i * (1.0 - i)
    d_f = dc * c_prev * f * (1.0 - f)
    d_g = dc * i * (1.0 - g * g)
    d_o = dh * tanh_c * o * (1.0 - o)
    return d_i, d_f, d_g, d_o, dc * f


@triton.jit
def gru_cell(x_r, x_z, x_n, h_r, h_z, h_n, h_prev):
    """Input-side (x_*) and hidden-side (h_*, biases included) pre-activations -> (r, z, n, h_t)."""
    r = tl.sigmoid(x_r + h_r)
    z = tl.sigmoid(x_z + h_z)
    n = _tanh(x_n + r * h_n)
    return r, z, n, (1.0 - z) * n + z * h_prev


@triton.jit
def gru_cell_back(dh, r, z, n, h_n, h_prev):
    """-> (d_r, d_z, d_n input side, d_n hidden side (behind r), gradient reaching h_{t-1} directly)."""
    d_n = dh * (1.0 - z) * (1.0 - n * n)
    d_z = dh * (h_prev - n) * z * (1.0 - z)
    d_r = d_n * h_n * r * (1.0 - r)
    return d_r, d_z, d_n, d_n * r, dh * z


@triton.jit
def store4(ptr, H, a, b, c, d, mask):
    """Store four (BLOCK_N, BLOCK_H) tiles H elements apart (one per gate)."""
    tl.store(ptr, a, mask=mask)
    tl.store(ptr + H, b, mask=mask)
    tl.store(ptr + 2 * H, c, mask=mask)
    tl.store(ptr + 3 * H, d, mask=mask)


@triton.jit
def load4(ptr, H, mask):
    """Load four (BLOCK_N, BLOCK_H) tiles H elements apart (one per gate)."""
    return (tl.load(ptr, mask=mask, other=0.0), tl.load(ptr + H, mask=mask, other=0.0),
            tl.load(ptr + 2 * H, mask=mask, other=0.0), tl.load(ptr + 3 * H, mask=mask, other=0.0))


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
    """d (BLOCK_N, BLOCK_H) @ W_g: what a gate pre-activation's gradient sends to h_{t-1}."""
    j = tl.arange(0, BLOCK_H)[:, None]  # output unit of the gate
    k = tl.arange(0, BLOCK_H)[None, :]  # input unit
    w = tl.load(w_ptr + (gate * H + j) * s_w0 + k * s_w1, mask=(j < H) & (k < H), other=0.0)
    return tl.dot(d, w, input_precision=PRECISION, out_dtype=d.dtype)


@triton.jit
def seq_fwd_kernel(
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
    BLOCK_N: tl.constexpr,  # batch rows per program (>= 16: the dot's M on the GPU)
    BLOCK_H: tl.constexpr,  # next power of two >= max(H, 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision
):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = tl.arange(0, BLOCK_H)
    mask = (rows < N)[:, None] & (cols < H)[None, :]
    seq_at = rows[:, None] * (T * H) + cols[None, :]  # (row, t=0, col) in y and c
    h = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)  # padded rows/cols stay finite
    c = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    for t in range(T):
        x_t = xg_ptr + rows[:, None] * (T * G * H) + t * (G * H) + cols[None, :]
        gates_t = gates_ptr + rows[:, None] * (T * 4 * H) + t * (4 * H) + cols[None, :]
        if CELL == LSTM:
            x_i, x_f, x_g, x_o = load4(x_t, H, mask)
            i, f, g, o, c, h = lstm_cell(
                x_i + _hidden_proj(h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION),
                x_f + _hidden_proj(h, w_ptr, b_ptr, 1, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION),
                x_g + _hidden_proj(h, w_ptr, b_ptr, 2, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION),
                x_o + _hidden_proj(h, w_ptr, b_ptr, 3, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION), c)
            store4(gates_t, H, i, f, g, o, mask)
            tl.store(c_ptr + seq_at + t * H, c, mask=mask)
        elif CELL == GRU:
            h_r = _hidden_proj(h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION)
            h_z = _hidden_proj(h, w_ptr, b_ptr, 1, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION)
            h_n = _hidden_proj(h, w_ptr, b_ptr, 2, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION)
            r, z, n, h = gru_cell(tl.load(x_t, mask=mask, other=0.0), tl.load(x_t + H, mask=mask, other=0.0),
                                  tl.load(x_t + 2 * H, mask=mask, other=0.0), h_r, h_z, h_n, h)
            store4(gates_t, H, r, z, n, h_n, mask)
        else:
            h = rnn_cell(tl.load(x_t, mask=mask, other=0.0) + _hidden_proj(
                h, w_ptr, b_ptr, 0, H, s_w0, s_w1, s_b, HAS_BIAS, BLOCK_H, PRECISION), CELL)
        tl.store(y_ptr + seq_at + t * H, h, mask=mask)
    if CELL == LSTM:
        tl.store(cn_ptr + rows[:, None] * H + cols[None, :], c, mask=mask)


@triton.jit
def seq_bwd_kernel(
    dy_ptr,  # (N, T, H) gradient of y, strides s_dy0, s_dy1, s_dy2
    dcn_ptr,  # (N, H) contiguous gradient of the lstm c_n; unused otherwise
    w_ptr,  # (G*H, H) weight_hh
    y_ptr,  # (N, T, H) forward h_t
    gates_ptr,  # (N, T, 4*H) forward gate values (lstm, gru)
    c_ptr,  # (N, T, H) forward lstm cell states
    dgx_ptr,  # (N, T, G*H) out: gradient of the input-side pre-activations (of xg)
    dgh_ptr,  # (N, T, G*H) out, gru only: gradient of the hidden-side pre-activations
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
    seq_at = rows[:, None] * (T * H) + cols[None, :]  # (row, t=0, col) in y and c
    dh_next = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)  # from step t+1 into h_t
    dc = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    if CELL == LSTM:
        dc += tl.load(dcn_ptr + rows[:, None] * H + cols[None, :], mask=mask, other=0.0)
    for step in range(T):
        t = T - 1 - step
        dh = dh_next + tl.load(dy_ptr + rows[:, None] * s_dy0 + t * s_dy1 + cols[None, :] * s_dy2,
                               mask=mask, other=0.0)
        prev_mask = mask & (rows * 0 + t > 0)[:, None]  # h_{-1} = c_{-1} = 0
        dg_t = rows[:, None] * (T * G * H) + t * (G * H) + cols[None, :]
        gates_t = gates_ptr + rows[:, None] * (T * 4 * H) + t * (4 * H) + cols[None, :]
        if CELL == LSTM:
            i, f, g, o = load4(gates_t, H, mask)
            d_i, d_f, d_g, d_o, dc = lstm_cell_back(
                dh, dc, i, f, g, o, tl.load(c_ptr + seq_at + t * H, mask=mask, other=0.0),
                tl.load(c_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
            store4(dgx_ptr + dg_t, H, d_i, d_f, d_g, d_o, mask)
            dh_next = (_hidden_back(d_i, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_f, w_ptr, 1, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_g, w_ptr, 2, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_o, w_ptr, 3, H, s_w0, s_w1, BLOCK_H, PRECISION))
        elif CELL == GRU:
            r, z, n, h_n = load4(gates_t, H, mask)
            d_r, d_z, d_n, d_hn, dh_direct = gru_cell_back(
                dh, r, z, n, h_n, tl.load(y_ptr + seq_at + (t - 1) * H, mask=prev_mask, other=0.0))
            tl.store(dgx_ptr + dg_t, d_r, mask=mask)
            tl.store(dgx_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgx_ptr + dg_t + 2 * H, d_n, mask=mask)
            tl.store(dgh_ptr + dg_t, d_r, mask=mask)
            tl.store(dgh_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgh_ptr + dg_t + 2 * H, d_hn, mask=mask)
            dh_next = (dh_direct
                       + _hidden_back(d_r, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_z, w_ptr, 1, H, s_w0, s_w1, BLOCK_H, PRECISION)
                       + _hidden_back(d_hn, w_ptr, 2, H, s_w0, s_w1, BLOCK_H, PRECISION))
        else:
            d_pre = rnn_cell_back(dh, tl.load(y_ptr + seq_at + t * H, mask=mask, other=0.0), CELL)
            tl.store(dgx_ptr + dg_t, d_pre, mask=mask)
            dh_next = _hidden_back(d_pre, w_ptr, 0, H, s_w0, s_w1, BLOCK_H, PRECISION)
