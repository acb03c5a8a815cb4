"""Gate pre-activations -> rnn/lstm/gru cell outputs and their gradients, and the persistent sequence kernels.

The cell math is written once, as @triton.jit helpers on (BLOCK_N, BLOCK_H)
tiles, and shared by the persistent kernels here and the per-step fallback in
`recurrent_steps.py`. A persistent kernel gives each program a slice of the
batch and one direction (grid axis 1: 0 forward, 1 reverse in time) and walks
all T steps in one launch, keeping h (and the lstm cell) in registers. The
recurrent product of a step reads the previous step's h back from the output
(written by this program, behind a barrier) in (BLOCK_N, BLOCK_K) chunks and
multiplies each into (BLOCK_K, BLOCK_H) chunks of every gate's weight, which
stay cache-resident; no dot operand is a whole (BLOCK_H, BLOCK_H) tile, so
nothing spills under the ieee (FMA) dot. tanh is 2*sigmoid(2x) - 1: the
interpreter has no libdevice.

Layouts (D directions, G gates; direction d owns the d-th block of a row):
xg and dgx/dgh (N, T, D*G*H), y and cells (N, T, D*H), gates (N, T, D*4*H),
h0/c0/h_n/c_n and their gradients (D, N, H), weights (D, G*H, H).
"""

from __future__ import annotations

import triton
import triton.language as tl

from netc.kernels import costs

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
def _gate_bias(b_ptr, gate, H, s_b, cols, LOAD: tl.constexpr):
    """(1, BLOCK_H) bias_hh of one gate (zeros unless LOAD), loaded once per launch.

    Without a bias the load is fully masked (no memory is touched) rather than a `tl.zeros`
    tile: a constant zero tile gets another layout on the GPU, and the GRU forward then needed
    far more shared memory for the layout conversions.
    """
    limit = H if LOAD else 0
    bias = tl.load(b_ptr + (gate * H + cols) * s_b, mask=cols < limit, other=0.0)
    return bias[None, :]


@triton.jit
def _chunk_mm(acc, a, w_ptr, k, cols, H, s_k, s_n, PRECISION: tl.constexpr):
    """acc + a (BLOCK_N, BLOCK_K) @ W chunk (BLOCK_K, BLOCK_J), element (k, j) at k*s_k + j*s_n."""
    w = tl.load(w_ptr + k[:, None] * s_k + cols[None, :] * s_n, mask=(k < H)[:, None] & (cols < H)[None, :],
                other=0.0)
    return acc + tl.dot(a, w, input_precision=PRECISION, out_dtype=acc.dtype)


@triton.jit
def _recurrent_mm(acc_0, acc_1, acc_2, acc_3, src, h0_src, first, row_ok, w_d, w_gate, cols, H, s_k, s_n,
                  G: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """acc_g + state (BLOCK_N, H) @ W_g chunk for every gate g < G, the state read in (BLOCK_N, BLOCK_K)
    chunks from src (a (row, 1) pointer tile), or where `first` (BLOCK_N,) from h0_src (zeros
    without h0). W_g's element (k, j) sits at w_d + g*w_gate + k*s_k + j*s_n."""
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (k < H)[None, :]
        a = tl.load(src + k[None, :], mask=ok & ~first[:, None], other=0.0)
        if HAS_H0:
            a += tl.load(h0_src + k[None, :], mask=ok & first[:, None], other=0.0)
        acc_0 = _chunk_mm(acc_0, a, w_d, k, cols, H, s_k, s_n, PRECISION)
        if G > 1:
            acc_1 = _chunk_mm(acc_1, a, w_d + w_gate, k, cols, H, s_k, s_n, PRECISION)
            acc_2 = _chunk_mm(acc_2, a, w_d + 2 * w_gate, k, cols, H, s_k, s_n, PRECISION)
        if G > 3:
            acc_3 = _chunk_mm(acc_3, a, w_d + 3 * w_gate, k, cols, H, s_k, s_n, PRECISION)
    return acc_0, acc_1, acc_2, acc_3


@triton.jit
def _load_prev(seq_at, t_prev, step, at_start, mask, state_at, HAS_H0: tl.constexpr):
    """A tile of the previous step's state: seq_at + t_prev*step, or where at_start (BLOCK_N,) the
    initial state at state_at (zeros without one)."""
    value = tl.load(seq_at + t_prev * step, mask=mask & ~at_start[:, None], other=0.0)
    if HAS_H0:
        value += tl.load(state_at, mask=mask & at_start[:, None], other=0.0)
    return value


@triton.jit
def _fwd_columns(xg_at, b_d, s_b, w_d, w_gate, s_w0, s_w1, y_rows, gates_at, c_at, h0_at, c0_at, t, t_prev,
                 first, rows, cols, N, H, D: tl.constexpr, CELL: tl.constexpr, G: tl.constexpr,
                 HAS_BIAS: tl.constexpr, HAS_H0: tl.constexpr, BLOCK_K: tl.constexpr,
                 PRECISION: tl.constexpr):
    """One step t of one direction for the hidden units `cols`: gates, cell, h_t stored at y."""
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < H)[None, :]
    x_t = xg_at + t * (D * G * H) + cols[None, :]
    zero = tl.zeros(mask.shape, dtype=y_rows.dtype.element_ty)
    acc_3 = zero
    if CELL == LSTM:  # every gate sums both sides
        x_i, x_f, x_g, x_o = load4(x_t, H, mask)
        acc_0 = x_i + _gate_bias(b_d, 0, H, s_b, cols, HAS_BIAS)
        acc_1 = x_f + _gate_bias(b_d, 1, H, s_b, cols, HAS_BIAS)
        acc_2 = x_g + _gate_bias(b_d, 2, H, s_b, cols, HAS_BIAS)
        acc_3 = x_o + _gate_bias(b_d, 3, H, s_b, cols, HAS_BIAS)
    elif CELL == GRU:  # the hidden side alone: n keeps it apart (behind r)
        acc_0 = zero + _gate_bias(b_d, 0, H, s_b, cols, HAS_BIAS)
        acc_1 = zero + _gate_bias(b_d, 1, H, s_b, cols, HAS_BIAS)
        acc_2 = zero + _gate_bias(b_d, 2, H, s_b, cols, HAS_BIAS)
    else:
        acc_0 = tl.load(x_t, mask=mask, other=0.0) + _gate_bias(b_d, 0, H, s_b, cols, HAS_BIAS)
        acc_1, acc_2 = zero, zero
    # W_g^T chunk: element (input unit k, output unit j) at W[g*H + j, k]
    acc_0, acc_1, acc_2, acc_3 = _recurrent_mm(acc_0, acc_1, acc_2, acc_3, y_rows + t_prev * (D * H), h0_at,
                                               first, row_ok, w_d, w_gate, cols, H, s_w1, s_w0,
                                               G, HAS_H0, BLOCK_K, PRECISION)
    if CELL == LSTM:
        c_prev = _load_prev(c_at + cols[None, :], t_prev, D * H, first, mask, c0_at + cols[None, :], HAS_H0)
        i, f, g, o, c, h = lstm_cell(acc_0, acc_1, acc_2, acc_3, c_prev)
        store4(gates_at + t * (D * 4 * H) + cols[None, :], H, i, f, g, o, mask)
        tl.store(c_at + t * (D * H) + cols[None, :], c, mask=mask)
    elif CELL == GRU:
        h_prev = _load_prev(y_rows + cols[None, :], t_prev, D * H, first, mask, h0_at + cols[None, :], HAS_H0)
        r, z, n, h = gru_cell(tl.load(x_t, mask=mask, other=0.0), tl.load(x_t + H, mask=mask, other=0.0),
                              tl.load(x_t + 2 * H, mask=mask, other=0.0), acc_0, acc_1, acc_2, h_prev)
        store4(gates_at + t * (D * 4 * H) + cols[None, :], H, r, z, n, acc_2, mask)
    else:
        h = rnn_cell(acc_0, CELL)
    tl.store(y_rows + t * (D * H) + cols[None, :], h, mask=mask)


@triton.jit(launch_metadata=costs.recurrence())
def seq_fwd_kernel(
    xg_ptr,  # (N, T, D*G*H) contiguous: x @ W_ih^T + b_ih for every step and direction
    w_ptr,  # (D, G*H, H) weight_hh, strides s_wd, s_w0, s_w1
    b_ptr,  # (D, G*H) bias_hh, strides s_bd, s_b; read only when HAS_BIAS
    h0_ptr,  # (D, N, H) contiguous h_0; read only when HAS_H0
    c0_ptr,  # (D, N, H) contiguous lstm c_0; read only when HAS_H0
    y_ptr,  # (N, T, D*H) out: h_t of every step
    gates_ptr,  # (N, T, D*4*H) out: lstm i,f,g,o or gru r,z,n,(W_hn h + b_hn); unused for rnn
    c_ptr,  # (N, T, D*H) out: lstm cell state of every step; unused otherwise
    hn_ptr,  # (D, N, H) out: h after each direction's last step
    cn_ptr,  # (D, N, H) out: lstm cell state after the last step; unused otherwise
    N, T, H,  # batch, steps, hidden size
    s_wd, s_w0, s_w1, s_bd, s_b,  # strides of weight_hh and bias_hh
    D: tl.constexpr,  # directions: 1, or 2 (bidirectional)
    CELL: tl.constexpr,  # RNN_TANH, RNN_RELU, LSTM or GRU
    G: tl.constexpr,  # gates: 1, 4 or 3
    HAS_BIAS: tl.constexpr,
    HAS_H0: tl.constexpr,
    BLOCK_N: tl.constexpr,  # batch rows per program (>= 16: the dot's M on the GPU)
    BLOCK_J: tl.constexpr,  # hidden units per column block (>= 16), a power of two
    BLOCK_K: tl.constexpr,  # K chunk of the recurrent dots (>= 16)
    PRECISION: tl.constexpr,  # tl.dot input_precision
):
    d = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    xg_at = xg_ptr + rows[:, None] * (T * D * G * H) + d * (G * H)  # (BLOCK_N, 1) pointers at t = 0
    y_rows = y_ptr + rows[:, None] * (T * D * H) + d * H
    c_at = c_ptr + rows[:, None] * (T * D * H) + d * H
    gates_at = gates_ptr + rows[:, None] * (T * D * 4 * H) + d * (4 * H)
    state_at = d * N * H + rows[:, None] * H  # rows of h0, c0, h_n, c_n
    for s in range(T):
        t = s + d * (T - 1 - 2 * s)  # reverse direction: T-1-s
        first = rows * 0 + s == 0  # (BLOCK_N,): h_{t-1} is h0
        for j0 in range(0, H, BLOCK_J):
            _fwd_columns(xg_at, b_ptr + d * s_bd, s_b, w_ptr + d * s_wd, H * s_w0, s_w0, s_w1, y_rows,
                         gates_at, c_at, h0_ptr + state_at, c0_ptr + state_at, t, t - 1 + 2 * d, first, rows,
                         j0 + tl.arange(0, BLOCK_J), N, H, D, CELL, G, HAS_BIAS, HAS_H0, BLOCK_K, PRECISION)
        tl.debug_barrier()  # the next step reads this h back in chunks, across threads
    t_last = (T - 1) * (1 - d)
    for j0 in range(0, H, BLOCK_J):
        cols = j0 + tl.arange(0, BLOCK_J)
        mask = (rows < N)[:, None] & (cols < H)[None, :]
        tl.store(hn_ptr + state_at + cols[None, :],
                 tl.load(y_rows + t_last * (D * H) + cols[None, :], mask=mask, other=0.0), mask=mask)
        if CELL == LSTM:
            tl.store(cn_ptr + state_at + cols[None, :],
                     tl.load(c_at + t_last * (D * H) + cols[None, :], mask=mask, other=0.0), mask=mask)



@triton.jit
def _hidden_grad(dh, src, skip, row_ok, w_d, w_gate, cols, H, s_w0, s_w1, G: tl.constexpr,
                 BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """dh + sum over gates g of dg_g (BLOCK_N, H) @ W_g[:, cols]: the gradient reaching h_{t-1}
    through W_hh. dg is read in (BLOCK_N, BLOCK_K) chunks from src (a (row, 1) pointer tile at gate
    0), as zeros where skip (BLOCK_N,). W_g's element (output unit k, input unit j) is W[g*H + k, j]."""
    for k0 in range(0, H, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        ok = row_ok[:, None] & (k < H)[None, :] & ~skip[:, None]
        dh = _chunk_mm(dh, tl.load(src + k[None, :], mask=ok, other=0.0), w_d, k, cols, H, s_w0, s_w1,
                       PRECISION)
        if G > 1:
            dh = _chunk_mm(dh, tl.load(src + H + k[None, :], mask=ok, other=0.0), w_d + w_gate, k, cols, H,
                           s_w0, s_w1, PRECISION)
            dh = _chunk_mm(dh, tl.load(src + 2 * H + k[None, :], mask=ok, other=0.0), w_d + 2 * w_gate, k,
                           cols, H, s_w0, s_w1, PRECISION)
        if G > 3:
            dh = _chunk_mm(dh, tl.load(src + 3 * H + k[None, :], mask=ok, other=0.0), w_d + 3 * w_gate, k,
                           cols, H, s_w0, s_w1, PRECISION)
    return dh


@triton.jit
def _bwd_columns(dy_at, s_dy1, s_dy2, dhn_at, dcn_at, w_d, w_gate, s_w0, s_w1, y_rows, gates_at, c_at, h0_at,
                 c0_at, dg_rows, dgx_ptr, dgh_ptr, carry_at, dc_at, t, s, rows, cols, N, T, H,
                 D: tl.constexpr, CELL: tl.constexpr, G: tl.constexpr, HAS_H0: tl.constexpr,
                 HAS_DHN: tl.constexpr, BLOCK_K: tl.constexpr, PRECISION: tl.constexpr):
    """Backward step s (time t) of direction D-side for the hidden units `cols`: the gate gradients
    at t, and what step t sends to step t-1 outside W_hh (the gru's dh*z at carry_at, the lstm's
    cell gradient at dc_at; both (row, 1) pointer tiles of (N, H) scratch rows)."""
    d = tl.program_id(1)
    row_ok = rows < N
    mask = row_ok[:, None] & (cols < H)[None, :]
    at_end = rows * 0 + s == 0  # (BLOCK_N,): the last step in time, where h_n's gradient enters
    at_start = rows * 0 + s == T - 1  # the first step in time, whose h_{t-1} is h0
    dh = tl.load(dy_at + t * s_dy1 + cols[None, :] * s_dy2, mask=mask, other=0.0)
    if HAS_DHN:
        dh += tl.load(dhn_at + cols[None, :], mask=mask & at_end[:, None], other=0.0)
    if CELL == GRU:  # dh_{t+1} * z_{t+1}, left by the step before
        dh += tl.load(carry_at + cols[None, :], mask=mask & ~at_end[:, None], other=0.0)
    # the step done before this one (t + 1, or t - 1 in reverse) sends its gate gradients back
    t_next = t + 1 - 2 * d
    dh = _hidden_grad(dh, dgh_ptr + dg_rows + t_next * (D * G * H), at_end, row_ok, w_d, w_gate, cols, H,
                      s_w0, s_w1, G, BLOCK_K, PRECISION)
    t_prev = t - 1 + 2 * d
    dg_t = dg_rows + t * (D * G * H) + cols[None, :]
    gates_t = gates_at + t * (D * 4 * H) + cols[None, :]
    if CELL == LSTM:
        dc = tl.load(dc_at + cols[None, :], mask=mask & ~at_end[:, None], other=0.0)
        if HAS_DHN:
            dc += tl.load(dcn_at + cols[None, :], mask=mask & at_end[:, None], other=0.0)
        i, f, g, o = load4(gates_t, H, mask)
        d_i, d_f, d_g, d_o, dc = lstm_cell_back(
            dh, dc, i, f, g, o, tl.load(c_at + t * (D * H) + cols[None, :], mask=mask, other=0.0),
            _load_prev(c_at + cols[None, :], t_prev, D * H, at_start, mask, c0_at + cols[None, :], HAS_H0))
        store4(dgx_ptr + dg_t, H, d_i, d_f, d_g, d_o, mask)
        tl.store(dc_at + cols[None, :], dc, mask=mask)
    elif CELL == GRU:
        r, z, n, h_n = load4(gates_t, H, mask)
        d_r, d_z, d_n, d_hn, carry = gru_cell_back(
            dh, r, z, n, h_n,
            _load_prev(y_rows + cols[None, :], t_prev, D * H, at_start, mask, h0_at + cols[None, :], HAS_H0))
        tl.store(dgx_ptr + dg_t, d_r, mask=mask)
        tl.store(dgx_ptr + dg_t + H, d_z, mask=mask)
        tl.store(dgx_ptr + dg_t + 2 * H, d_n, mask=mask)
        tl.store(dgh_ptr + dg_t, d_r, mask=mask)
        tl.store(dgh_ptr + dg_t + H, d_z, mask=mask)
        tl.store(dgh_ptr + dg_t + 2 * H, d_hn, mask=mask)
        tl.store(carry_at + cols[None, :], carry, mask=mask)
    else:
        tl.store(dgx_ptr + dg_t, rnn_cell_back(dh, tl.load(y_rows + t * (D * H) + cols[None, :], mask=mask,
                                                           other=0.0), CELL), mask=mask)


@triton.jit(launch_metadata=costs.recurrence())
def seq_bwd_kernel(
    dy_ptr,  # (N, T, D*H) gradient of y, strides s_dy0, s_dy1, s_dy2
    dhn_ptr,  # (D, N, H) contiguous gradient of h_n; read when HAS_DHN
    dcn_ptr,  # (D, N, H) contiguous gradient of the lstm c_n; read when HAS_DHN
    w_ptr,  # (D, G*H, H) weight_hh, strides s_wd, s_w0, s_w1
    y_ptr,  # (N, T, D*H) forward h_t
    gates_ptr,  # (N, T, D*4*H) forward gate values (lstm, gru)
    c_ptr,  # (N, T, D*H) forward lstm cell states
    h0_ptr,  # (D, N, H) contiguous h_0; read when HAS_H0
    c0_ptr,  # (D, N, H) contiguous lstm c_0; read when HAS_H0
    dgx_ptr,  # (N, T, D*G*H) out: gradient of the input-side pre-activations (of xg)
    dgh_ptr,  # (N, T, D*G*H) out: of the hidden-side ones (the gru's; dgx itself otherwise)
    dh0_ptr,  # (D, N, H) out: gradient of h_0 (scratch for the gru's carry until the end)
    dc0_ptr,  # (D, N, H) out (lstm): gradient of c_0, the cell gradient of each step until then
    N, T, H,  # batch, steps, hidden size
    s_wd, s_w0, s_w1,  # strides of weight_hh
    s_dy0, s_dy1, s_dy2,  # strides of dy
    D: tl.constexpr,
    CELL: tl.constexpr,
    G: tl.constexpr,
    HAS_H0: tl.constexpr,
    HAS_DHN: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_J: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,
):
    d = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_d = w_ptr + d * s_wd
    dy_at = dy_ptr + rows[:, None] * s_dy0 + d * H * s_dy2
    y_rows = y_ptr + rows[:, None] * (T * D * H) + d * H  # (BLOCK_N, 1) pointers at t = 0
    c_at = c_ptr + rows[:, None] * (T * D * H) + d * H
    gates_at = gates_ptr + rows[:, None] * (T * D * 4 * H) + d * (4 * H)
    dg_rows = rows[:, None] * (T * D * G * H) + d * (G * H)
    state_at = d * N * H + rows[:, None] * H
    for s in range(T):
        t = T - 1 - s + d * (2 * s - (T - 1))  # reverse direction: s
        for j0 in range(0, H, BLOCK_J):
            _bwd_columns(dy_at, s_dy1, s_dy2, dhn_ptr + state_at, dcn_ptr + state_at, w_d, H * s_w0, s_w0,
                         s_w1, y_rows, gates_at, c_at, h0_ptr + state_at, c0_ptr + state_at, dg_rows, dgx_ptr,
                         dgh_ptr, dh0_ptr + state_at, dc0_ptr + state_at, t, s, rows,
                         j0 + tl.arange(0, BLOCK_J), N, T, H, D, CELL, G, HAS_H0, HAS_DHN, BLOCK_K, PRECISION)
        tl.debug_barrier()  # the next step reads these gradients back in chunks, across threads
    if HAS_H0:  # the first step (t = 0, or T-1 in reverse) sends its gradient on to h_0
        never = rows < 0
        for j0 in range(0, H, BLOCK_J):
            cols = j0 + tl.arange(0, BLOCK_J)
            mask = (rows < N)[:, None] & (cols < H)[None, :]
            dh0 = tl.zeros((BLOCK_N, BLOCK_J), dtype=y_ptr.dtype.element_ty)
            if CELL == GRU:
                dh0 += tl.load(dh0_ptr + state_at + cols[None, :], mask=mask, other=0.0)
            dh0 = _hidden_grad(dh0, dgh_ptr + dg_rows + d * (T - 1) * (D * G * H), never, rows < N, w_d,
                               H * s_w0, cols, H, s_w0, s_w1, G, BLOCK_K, PRECISION)
            tl.store(dh0_ptr + state_at + cols[None, :], dh0, mask=mask)
