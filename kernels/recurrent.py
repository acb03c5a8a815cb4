"""(N, T, F) sequences + torch-ordered flat weights -> rnn / lstm / gru outputs, with backprop through time.

Per layer and training step the forward makes two launches: one GEMM for the
input projection of all T steps (x @ W_ih^T + b_ih), then one persistent
sequence kernel that walks the T steps with the state on chip. The backward
makes one reverse-time launch (gate pre-activation gradients of every step),
then GEMMs for dW_ih, dW_hh and dx and column sums for the two biases. The
GEMMs and column sums live in `recurrent_jit.py` (this family does not depend
on `linear.py`). All `tl.dot`s use input_precision "ieee" (float32 as torch's
float32; float64 inputs give float64 dots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import triton

from netc.kernels import config
from netc.kernels.recurrent_jit import (
    GRU,
    LSTM,
    RNN_RELU,
    RNN_TANH,
    _colsum_kernel,
    _gemm_kernel,
    _seq_bwd_kernel,
    _seq_fwd_kernel,
)

PRECISION = "ieee"
_GATES = {RNN_TANH.value: 1, RNN_RELU.value: 1, LSTM.value: 4, GRU.value: 3}
_NAMES = {RNN_TANH.value: "rnn", RNN_RELU.value: "rnn", LSTM.value: "lstm", GRU.value: "gru"}


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes and warps of this family's launches; one per target."""

    gemm_block: tuple[int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K
    gemm_warps: int
    seq_block_n: int  # batch rows per sequence program, at most (>= 16: the dot's M)
    max_hidden: int  # largest hidden size whose recurrent tile the sequence kernels keep on chip
    colsum_block: tuple[int, int]  # BLOCK_R, BLOCK_C


# The GPU keeps 16 batch rows per program (more programs, more SMs busy); the
# interpreter runs programs one after another, so it takes the largest blocks.
GPU_CONFIG = LaunchConfig(gemm_block=(64, 64, 32), gemm_warps=4, seq_block_n=16, max_hidden=128,
                          colsum_block=(64, 64))
INTERPRETER_CONFIG = LaunchConfig(gemm_block=(64, 64, 64), gemm_warps=4, seq_block_n=64, max_hidden=128,
                                  colsum_block=(256, 64))


def launch_config() -> LaunchConfig:
    """The one place that picks launch settings (interpreter or CUDA)."""
    return INTERPRETER_CONFIG if config.interpreting() else GPU_CONFIG


@dataclass(frozen=True)
class _Matrix:
    """A strided tensor read as a matrix: rows from `row_dims`, columns from `col_dims` (one or two dims each)."""

    tensor: torch.Tensor
    row_dims: tuple[int, ...]
    col_dims: tuple[int, ...]

    def group(self, dims: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(size, inner size, outer stride, inner stride) of a flattened dim group."""
        shape, stride = self.tensor.shape, self.tensor.stride()
        if len(dims) == 1:
            return shape[dims[0]], max(shape[dims[0]], 1), 0, stride[dims[0]]
        outer, inner = dims
        return shape[outer] * shape[inner], max(shape[inner], 1), stride[outer], stride[inner]


def _gemm(a: _Matrix, b: _Matrix, out: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """out (M, N) (contiguous, any view shape) = A @ B (+ bias); A's and B's K groups must match."""
    m, m_inner, s_am0, s_am1 = a.group(a.row_dims)
    k, k_inner, s_ak0, s_ak1 = a.group(a.col_dims)
    k_b, k_inner_b, s_bk0, s_bk1 = b.group(b.row_dims)
    n, _, _, s_bn = b.group(b.col_dims)
    assert k == k_b and (k == 0 or k_inner == k_inner_b) and len(b.col_dims) == 1 and out.numel() == m * n
    cfg = launch_config()
    block_m, block_n, block_k = cfg.gemm_block
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gemm_kernel[grid](
        a.tensor, b.tensor, bias if bias is not None else out, out,
        m, n, k, m_inner, k_inner, s_am0, s_am1, s_ak0, s_ak1, s_bk0, s_bk1, s_bn,
        bias.stride(0) if bias is not None else 0, n,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION=PRECISION, num_warps=cfg.gemm_warps,
    )
    return out


def _colsum(rows: torch.Tensor) -> torch.Tensor:
    """(..., C) contiguous -> (C,) sums over every leading index (a bias gradient)."""
    cols = rows.shape[-1]
    out = config.new_empty((cols,), rows)
    block_r, block_c = launch_config().colsum_block
    _colsum_kernel[(triton.cdiv(cols, block_c),)](rows, out, rows.numel() // cols, cols,
                                                  BLOCK_R=block_r, BLOCK_C=block_c)
    return out


def _seq_blocks(batch: int, hidden: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_H, warps) of a sequence launch: dot dims padded to >= 16."""
    block_n = min(max(triton.next_power_of_2(batch), 16), launch_config().seq_block_n)
    block_h = max(triton.next_power_of_2(hidden), 16)
    return block_n, block_h, 4 if block_h <= 64 else 8


def _layer_forward(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None, cell: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer over the whole sequence -> (y (N, T, H), gates (N, T, 4H), cells (N, T, H), c_n (N, H)).

    gates, cells and c_n are only written for the cells that need them (y stands in otherwise).
    """
    batch, steps, _ = x.shape
    gate_rows, hidden = w_hh.shape
    xg = config.new_empty((batch, steps, gate_rows), x)  # x @ W_ih^T + b_ih for all steps
    _gemm(_Matrix(x, (0, 1), (2,)), _Matrix(w_ih, (1,), (0,)), xg, b_ih)
    y = config.new_empty((batch, steps, hidden), x)
    gates = config.new_empty((batch, steps, 4 * hidden), x) if cell in (LSTM.value, GRU.value) else y
    cells = config.new_empty((batch, steps, hidden), x) if cell == LSTM.value else y
    c_n = config.new_empty((batch, hidden), x) if cell == LSTM.value else y
    block_n, block_h, warps = _seq_blocks(batch, hidden)
    _seq_fwd_kernel[(triton.cdiv(batch, block_n),)](
        xg, w_hh, b_hh if b_hh is not None else w_hh, y, gates, cells, c_n,
        batch, steps, hidden, w_hh.stride(0), w_hh.stride(1), b_hh.stride(0) if b_hh is not None else 0,
        CELL=cell, G=_GATES[cell], HAS_BIAS=b_hh is not None, BLOCK_N=block_n, BLOCK_H=block_h,
        PRECISION=PRECISION, num_warps=warps,
    )
    return y, gates, cells, c_n


def _layer_backward(
    saved: tuple[torch.Tensor, ...], cell: int, dy: torch.Tensor, dc_n: torch.Tensor | None,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Reverse-time launch, then GEMMs -> (dx, dW_ih, dW_hh, db_ih, db_hh); None where not needed."""
    x, w_ih, w_hh, y, gates, cells = saved
    batch, steps, hidden = y.shape
    gate_rows = w_hh.shape[0]
    dgx = config.new_empty((batch, steps, gate_rows), x)  # d loss / d (x-side gate pre-activations)
    dgh = config.new_empty((batch, steps, gate_rows), x) if cell == GRU.value else dgx  # hidden side
    dc_n = dc_n.contiguous() if dc_n is not None else y
    block_n, block_h, warps = _seq_blocks(batch, hidden)
    _seq_bwd_kernel[(triton.cdiv(batch, block_n),)](
        dy, dc_n, w_hh, y, gates, cells, dgx, dgh, batch, steps, hidden,
        w_hh.stride(0), w_hh.stride(1), dy.stride(0), dy.stride(1), dy.stride(2),
        CELL=cell, G=_GATES[cell], BLOCK_N=block_n, BLOCK_H=block_h, PRECISION=PRECISION, num_warps=warps,
    )
    dx = dw_ih = dw_hh = db_ih = db_hh = None
    if needs[0]:
        dx = _gemm(_Matrix(dgx, (0, 1), (2,)), _Matrix(w_ih, (0,), (1,)), config.new_empty(x.shape, x))
    if needs[1]:
        dw_ih = _gemm(_Matrix(dgx, (2,), (0, 1)), _Matrix(x, (0, 1), (2,)), config.new_empty(w_ih.shape, x))
    if needs[2]:  # h_{t-1} is 0 at t = 0, so only steps 1..T-1 contribute
        dw_hh = _gemm(_Matrix(dgh[:, 1:], (2,), (0, 1)), _Matrix(y[:, :-1], (0, 1), (2,)),
                      config.new_empty(w_hh.shape, x))
    if needs[3]:
        db_ih = _colsum(dgx)
    if needs[4]:
        db_hh = _colsum(dgh)
    return dx, dw_ih, dw_hh, db_ih, db_hh


class _RecurrentLayer(torch.autograd.Function):
    """One layer: (x, W_ih, W_hh, b_ih, b_hh) -> y (N, T, H), plus c_n (N, H) for the lstm."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor,
                b_ih: torch.Tensor | None, b_hh: torch.Tensor | None, cell: int) -> Any:
        y, gates, cells, c_n = _layer_forward(x, w_ih, w_hh, b_ih, b_hh, cell)
        ctx.cell = cell
        ctx.save_for_backward(x, w_ih, w_hh, y, gates, cells)
        return (y, c_n) if cell == LSTM.value else y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, *dc_n: torch.Tensor) -> Any:
        grads = _layer_backward(ctx.saved_tensors, ctx.cell, dy, dc_n[0] if dc_n else None,
                                tuple(ctx.needs_input_grad[:5]))
        return (*grads, None)


def _layer_weights(
    weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int, bias: bool,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
    """torch's `_flat_weights` order -> per layer (W_ih, W_hh, b_ih, b_hh)."""
    per_layer = 4 if bias else 2
    if num_layers < 1 or len(weights) != num_layers * per_layer:
        raise ValueError(f"expected {num_layers * per_layer} weight tensors for num_layers={num_layers}, "
                         f"bias={bias}, got {len(weights)}")
    layers = []
    for k in range(num_layers):
        w = list(weights[k * per_layer:(k + 1) * per_layer])
        layers.append((w[0], w[1], w[2], w[3]) if bias else (w[0], w[1], None, None))
    return layers


def _check_layer(x: torch.Tensor, params: tuple[torch.Tensor | None, ...], gates: int, name: str) -> None:
    """Shapes, dtypes and devices of one layer's input and weights; raises on anything unsupported."""
    w_ih, w_hh = params[0], params[1]
    hidden = w_hh.shape[-1]
    if w_hh.shape != (gates * hidden, hidden) or w_ih.shape != (gates * hidden, x.shape[-1]):
        raise ValueError(f"{name}: weight_ih {tuple(w_ih.shape)} / weight_hh {tuple(w_hh.shape)} do not fit "
                         f"input features {x.shape[-1]} with {gates} gate(s)")
    for p in params[2:]:
        if p is not None and p.shape != (gates * hidden,):
            raise ValueError(f"{name}: bias of shape {tuple(p.shape)}, expected ({gates * hidden},)")
    for p in params:
        if p is not None and (p.dtype != x.dtype or p.device != x.device):
            raise ValueError(f"{name}: weights must match the input's dtype and device ({x.dtype}, {x.device})")
    if hidden > launch_config().max_hidden:
        raise NotImplementedError(f"{name}: hidden size {hidden} > {launch_config().max_hidden} "
                                  "(the recurrent weight tile no longer fits on chip)")


def _run_stack(
    input: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int,
    bias: bool, cell: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Layer k > 0 reads layer k-1's outputs -> (output (N, T, H), h_n (L, N, H), c_n (L, N, H) or None)."""
    name = _NAMES[cell]
    if input.dim() not in (2, 3) or input.shape[-2] == 0:
        raise ValueError(f"{name}: input must be (N, T, F) or (T, F) with T >= 1, got {tuple(input.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"{name}: dtype {input.dtype} (float32 and float64 only)")
    x = input if input.dim() == 3 else input.unsqueeze(0)
    last_h, last_c = [], []
    for params in _layer_weights(weights, num_layers, bias):
        _check_layer(x, params, _GATES[cell], name)
        outputs = _RecurrentLayer.apply(x, *params, cell)
        x = outputs[0] if cell == LSTM.value else outputs
        last_h.append(x[:, -1])
        if cell == LSTM.value:
            last_c.append(outputs[1])
    h_n = torch.stack(last_h)
    c_n = torch.stack(last_c) if last_c else None
    if input.dim() == 2:  # unbatched, as torch: output (T, H), states (L, H)
        return x[0], h_n[:, 0], c_n[:, 0] if c_n is not None else None
    return x, h_n, c_n


def rnn(
    input: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int = 1,
    nonlinearity: str = "tanh", bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman rnn as torch.nn.RNN(batch_first=True), h_0 = 0: h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer weight_ih (H, F_k), weight_hh (H, H), then bias_ih (H,), bias_hh (H,) when
    `bias`; F_k = H for k > 0. nonlinearity: "tanh" or "relu". Returns (output (N, T, H): every
    step of the last layer, h_n (num_layers, N, H)); unbatched: (T, H) and (num_layers, H).
    Differentiable w.r.t. the input and every weight; dots use input_precision "ieee".
    """
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"rnn: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    cell = RNN_TANH.value if nonlinearity == "tanh" else RNN_RELU.value
    output, h_n, _ = _run_stack(input, weights, num_layers, bias, cell)
    return output, h_n


def lstm(
    input: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int = 1,
    bias: bool = True,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """LSTM as torch.nn.LSTM(batch_first=True), h_0 = c_0 = 0, gate order i, f, g, o.

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer weight_ih (4H, F_k), weight_hh (4H, H), then bias_ih (4H,), bias_hh (4H,)
    when `bias`. Returns (output (N, T, H), (h_n, c_n) each (num_layers, N, H)); unbatched:
    (T, H) and (num_layers, H). Differentiable w.r.t. the input and every weight; dots use
    input_precision "ieee".
    """
    output, h_n, c_n = _run_stack(input, weights, num_layers, bias, LSTM.value)
    assert c_n is not None
    return output, (h_n, c_n)


def gru(
    input: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int = 1,
    bias: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU as torch.nn.GRU(batch_first=True), h_0 = 0, gate order r, z, n, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)).

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer weight_ih (3H, F_k), weight_hh (3H, H), then bias_ih (3H,), bias_hh (3H,)
    when `bias`. Returns (output (N, T, H), h_n (num_layers, N, H)); unbatched: (T, H) and
    (num_layers, H). Differentiable w.r.t. the input and every weight; dots use input_precision "ieee".
    """
    output, h_n, _ = _run_stack(input, weights, num_layers, bias, GRU.value)
    return output, h_n
