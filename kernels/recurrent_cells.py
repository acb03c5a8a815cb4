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
    tanh_c = 2.0 * tl.sigmoid(2.0 * c) - 1.0  # tanh, inlined: each jit call costs the interpreter
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
def _gate_mm(a, w_gate_ptr, w_off, w_mask, PRECISION: tl.constexpr):
    """a (BLOCK_N, BLOCK_H) @ the (BLOCK_H, BLOCK_H) tile at w_gate_ptr + w_off, zero-padded by w_mask."""
    w = tl.load(w_gate_ptr + w_off, mask=w_mask, other=0.0)
    return tl.dot(a, w, input_precision=PRECISION, out_dtype=a.dtype)


@triton.jit
def _gate_bias(b_ptr, gate, H, s_b, cols, LOAD: tl.constexpr):
    """(1, BLOCK_H) bias_hh of one gate (zeros unless LOAD), loaded once per launch.

    Without a bias the load is fully masked (no memory is touched) rather than a `tl.zeros`
    tile: a constant zero tile gets another layout on the GPU, and the GRU forward then needed
    400 KiB of shared memory for the conversions instead of 144 KiB.
    """
    limit = H if LOAD else 0
    bias = tl.load(b_ptr + (gate * H + cols) * s_b, mask=cols < limit, other=0.0)
    return bias[None, :]


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
    # W_g^T tile (input unit k, output unit j); offsets built once, outside the time loop
    w_off = cols[None, :] * s_w0 + cols[:, None] * s_w1
    w_mask = (cols < H)[None, :] & (cols < H)[:, None]
    w_gate = H * s_w0  # from one gate's rows to the next
    # bias_hh per gate, (1, BLOCK_H); gates past G are never read
    b_0 = _gate_bias(b_ptr, 0, H, s_b, cols, HAS_BIAS)
    b_1 = _gate_bias(b_ptr, 1, H, s_b, cols, HAS_BIAS and G > 1)
    b_2 = _gate_bias(b_ptr, 2, H, s_b, cols, HAS_BIAS and G > 2)
    b_3 = _gate_bias(b_ptr, 3, H, s_b, cols, HAS_BIAS and G > 3)
    x_at = xg_ptr + rows[:, None] * (T * G * H) + cols[None, :]  # step 0, gate 0
    y_at = y_ptr + rows[:, None] * (T * H) + cols[None, :]
    c_at = c_ptr + rows[:, None] * (T * H) + cols[None, :]
    gates_at = gates_ptr + rows[:, None] * (T * 4 * H) + cols[None, :]
    h = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)  # padded rows/cols stay finite
    c = tl.zeros((BLOCK_N, BLOCK_H), dtype=y_ptr.dtype.element_ty)
    for t in range(T):
        x_t = x_at + t * (G * H)
        if CELL == LSTM:
            x_i, x_f, x_g, x_o = load4(x_t, H, mask)
            i, f, g, o, c, h = lstm_cell(x_i + b_0 + _gate_mm(h, w_ptr, w_off, w_mask, PRECISION),
                                         x_f + b_1 + _gate_mm(h, w_ptr + w_gate, w_off, w_mask, PRECISION),
                                         x_g + b_2 + _gate_mm(h, w_ptr + 2 * w_gate, w_off, w_mask,
                                                              PRECISION),
                                         x_o + b_3 + _gate_mm(h, w_ptr + 3 * w_gate, w_off, w_mask,
                                                              PRECISION),
                                         c)
            store4(gates_at + t * (4 * H), H, i, f, g, o, mask)
            tl.store(c_at + t * H, c, mask=mask)
        elif CELL == GRU:
            h_r = b_0 + _gate_mm(h, w_ptr, w_off, w_mask, PRECISION)
            h_z = b_1 + _gate_mm(h, w_ptr + w_gate, w_off, w_mask, PRECISION)
            h_n = b_2 + _gate_mm(h, w_ptr + 2 * w_gate, w_off, w_mask, PRECISION)
            r, z, n, h = gru_cell(tl.load(x_t, mask=mask, other=0.0), tl.load(x_t + H, mask=mask, other=0.0),
                                  tl.load(x_t + 2 * H, mask=mask, other=0.0), h_r, h_z, h_n, h)
            store4(gates_at + t * (4 * H), H, r, z, n, h_n, mask)
        else:
            h = rnn_cell(tl.load(x_t, mask=mask, other=0.0) + b_0
                         + _gate_mm(h, w_ptr, w_off, w_mask, PRECISION), CELL)
        tl.store(y_at + t * H, h, mask=mask)
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
    # W_g tile (output unit j, input unit k): d (BLOCK_N, j) @ W_g sends the gradient to h_{t-1}
    w_off = cols[:, None] * s_w0 + cols[None, :] * s_w1
    w_mask = (cols < H)[:, None] & (cols < H)[None, :]
    w_gate = H * s_w0
    dy_at = dy_ptr + rows[:, None] * s_dy0 + cols[None, :] * s_dy2
    y_at = y_ptr + rows[:, None] * (T * H) + cols[None, :]
    c_at = c_ptr + rows[:, None] * (T * H) + cols[None, :]
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
            i, f, g, o = load4(gates_at + t * (4 * H), H, mask)
            d_i, d_f, d_g, d_o, dc = lstm_cell_back(
                dh, dc, i, f, g, o, tl.load(c_at + t * H, mask=mask, other=0.0),
                tl.load(c_at + (t - 1) * H, mask=prev_mask, other=0.0))
            store4(dgx_ptr + dg_t, H, d_i, d_f, d_g, d_o, mask)
            dh_next = (_gate_mm(d_i, w_ptr, w_off, w_mask, PRECISION)
                       + _gate_mm(d_f, w_ptr + w_gate, w_off, w_mask, PRECISION)
                       + _gate_mm(d_g, w_ptr + 2 * w_gate, w_off, w_mask, PRECISION)
                       + _gate_mm(d_o, w_ptr + 3 * w_gate, w_off, w_mask, PRECISION))
        elif CELL == GRU:
            r, z, n, h_n = load4(gates_at + t * (4 * H), H, mask)
            d_r, d_z, d_n, d_hn, dh_direct = gru_cell_back(
                dh, r, z, n, h_n, tl.load(y_at + (t - 1) * H, mask=prev_mask, other=0.0))
            tl.store(dgx_ptr + dg_t, d_r, mask=mask)
            tl.store(dgx_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgx_ptr + dg_t + 2 * H, d_n, mask=mask)
            tl.store(dgh_ptr + dg_t, d_r, mask=mask)
            tl.store(dgh_ptr + dg_t + H, d_z, mask=mask)
            tl.store(dgh_ptr + dg_t + 2 * H, d_hn, mask=mask)
            dh_next = (dh_direct
                       + _gate_mm(d_r, w_ptr, w_off, w_mask, PRECISION)
                       + _gate_mm(d_z, w_ptr + w_gate, w_off, w_mask, PRECISION)
                       + _gate_mm(d_hn, w_ptr + 2 * w_gate, w_off, w_mask, PRECISION))
        else:
            d_pre = rnn_cell_back(dh, tl.load(y_at + t * H, mask=mask, other=0.0), CELL)
            tl.store(dgx_ptr + dg_t, d_pre, mask=mask)
            dh_next = _gate_mm(d_pre, w_ptr, w_off, w_mask, PRECISION)
