"""(N, T, F) sequences + torch-ordered flat weights -> rnn / lstm / gru outputs, with backprop through time.

Launches per layer and training step: forward 2, a GEMM for the input
projection of all T steps (x @ W_ih^T + b_ih, `recurrent_gemm.py`) and one
persistent kernel that walks the T steps with the state on chip
(`recurrent_cells.py`); backward 1 reverse-time launch for the gate
pre-activation gradients of every step, then 3 GEMMs (dx, dW_ih, dW_hh) and 2
column sums (the biases), fewer when some need no gradient. A layer whose
gate tiles do not fit on chip (H > `LaunchConfig.max_hidden`, or the GPU
refuses the shared memory) runs the per-step fallback instead
(`recurrent_steps.py`): 2 launches per step each way. This family keeps its
own GEMM (no dependency on `linear.py`). Every `tl.dot` uses input_precision
"ieee" (float32 as torch's float32; float64 inputs give float64 dots).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import triton
from triton.runtime.errors import OutOfResources

from netc.kernels import config
from netc.kernels.recurrent_cells import GRU, LSTM, RNN_RELU, RNN_TANH, seq_bwd_kernel, seq_fwd_kernel
from netc.kernels.recurrent_gemm import Matrix, colsum, gemm
from netc.kernels.recurrent_steps import steps_backward, steps_forward

_GATES = {RNN_TANH.value: 1, RNN_RELU.value: 1, LSTM.value: 4, GRU.value: 3}
_NAMES = {RNN_TANH.value: "rnn", RNN_RELU.value: "rnn", LSTM.value: "lstm", GRU.value: "gru"}


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes, warps and dot precision of this family's launches; one per target."""

    gemm_block: tuple[int, int, int]  # BLOCK_M, BLOCK_N, BLOCK_K
    gemm_warps: int
    seq_block_n: int  # batch rows per persistent program, at most (>= 16: the dot's M)
    max_hidden: int  # largest hidden size whose (H x H) gate tiles the persistent kernels keep on chip
    seq_stages: int  # num_stages of the persistent kernels (1: no multi-buffered weight tiles)
    seq_warps: tuple[int, int]  # num_warps of the persistent kernels at BLOCK_H <= 64 and above
    step_block: tuple[int, int]  # BLOCK_N, BLOCK_H of the per-step fallback's cell launches
    step_warps: int
    colsum_block: tuple[int, int]  # BLOCK_R, BLOCK_C
    precision: str = "ieee"  # tl.dot input_precision; float64 inputs give float64 dots


# The GPU keeps 16 batch rows per program (more programs keep more SMs busy)
# and stops the persistent kernels at H = 128, where one float32 gate tile is
# 64 KiB. With one stage, each step streams the gate tiles through one shared
# buffer (73 KiB in all at H = 128 float32, compiled for sm_90 by triton 3.9);
# Triton's default 3 stages multi-buffer them (up to 650 KiB for the lstm).
# The interpreter runs programs one after another, so it takes the largest
# blocks. Tests shrink max_hidden to reach the per-step fallback.
GPU_CONFIG = LaunchConfig(gemm_block=(64, 64, 32), gemm_warps=4, seq_block_n=16, max_hidden=128,
                          seq_stages=1, seq_warps=(4, 8), step_block=(16, 128), step_warps=4,
                          colsum_block=(64, 64))
INTERPRETER_CONFIG = LaunchConfig(gemm_block=(64, 64, 64), gemm_warps=4, seq_block_n=64, max_hidden=128,
                                  seq_stages=1, seq_warps=(4, 8), step_block=(64, 256), step_warps=4,
                                  colsum_block=(256, 64))


def launch_config() -> LaunchConfig:
    """The one place that picks launch settings (interpreter or CUDA)."""
    return INTERPRETER_CONFIG if config.interpreting() else GPU_CONFIG


def _seq_blocks(cfg: LaunchConfig, batch: int, hidden: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_H, warps) of a persistent launch: dot dims padded to >= 16."""
    block_n = min(max(triton.next_power_of_2(batch), 16), cfg.seq_block_n)
    block_h = max(triton.next_power_of_2(hidden), 16)
    return block_n, block_h, cfg.seq_warps[0] if block_h <= 64 else cfg.seq_warps[1]


# (pass, cell, dtype, BLOCK_H, device) whose persistent kernel asked for more shared memory than the
# GPU has; those layers run per step instead. A safety net: at one stage the largest persistent
# kernel (float64, H = 128) takes 144 KiB, within an A100's or H100's limit but not every GPU's.
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


def _gemm(a: Matrix, b: Matrix, out: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    cfg = launch_config()
    return gemm(a, b, out, bias, cfg.precision, cfg.gemm_block, cfg.gemm_warps)


def _layer_forward(
    x: torch.Tensor, w_ih: torch.Tensor, w_hh: torch.Tensor, b_ih: torch.Tensor | None,
    b_hh: torch.Tensor | None, cell: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer over the whole sequence -> (y (N, T, H), gates (N, T, 4H), cells (N, T, H), c_n (N, H)).

    gates are written for lstm and gru, cells and c_n for lstm only (y stands in otherwise).
    """
    cfg = launch_config()
    batch, steps, _ = x.shape
    gate_rows, hidden = w_hh.shape
    xg = config.new_empty((batch, steps, gate_rows), x)  # x @ W_ih^T + b_ih for all steps at once
    _gemm(Matrix(x, (0, 1), (2,)), Matrix(w_ih, (1,), (0,)), xg, b_ih)
    y = config.new_empty((batch, steps, hidden), x)
    gates = config.new_empty((batch, steps, 4 * hidden), x) if cell in (LSTM.value, GRU.value) else y
    cells = config.new_empty((batch, steps, hidden), x) if cell == LSTM.value else y
    c_n = config.new_empty((batch, hidden), x) if cell == LSTM.value else y
    block_n, block_h, warps = _seq_blocks(cfg, batch, hidden)

    def launch() -> None:
        seq_fwd_kernel[(triton.cdiv(batch, block_n),)](
            xg, w_hh, b_hh if b_hh is not None else w_hh, y, gates, cells, c_n,
            batch, steps, hidden, w_hh.stride(0), w_hh.stride(1), b_hh.stride(0) if b_hh is not None else 0,
            CELL=cell, G=_GATES[cell], HAS_BIAS=b_hh is not None, BLOCK_N=block_n, BLOCK_H=block_h,
            PRECISION=cfg.precision, num_warps=warps, num_stages=cfg.seq_stages,
        )

    if hidden > cfg.max_hidden or not _try_persistent(("fwd", cell, x.dtype, block_h, x.device), launch):
        steps_forward(xg, w_hh, b_hh, (y, gates, cells, c_n), cell, cfg)
    return y, gates, cells, c_n


def _gate_grads(
    dy: torch.Tensor, dc_n: torch.Tensor | None, w_hh: torch.Tensor, saved: tuple[torch.Tensor, ...],
    cell: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward through time -> (dgx, dgh) (N, T, G*H): gradients of the input- and hidden-side
    gate pre-activations of every step (the same tensor except for the gru's n gate)."""
    cfg = launch_config()
    y, gates, cells = saved
    batch, steps, hidden = y.shape
    dgx = config.new_empty((batch, steps, w_hh.shape[0]), y)
    dgh = config.new_empty(dgx.shape, y) if cell == GRU.value else dgx
    dc_n = dc_n.contiguous() if dc_n is not None else y
    block_n, block_h, warps = _seq_blocks(cfg, batch, hidden)

    def launch() -> None:
        seq_bwd_kernel[(triton.cdiv(batch, block_n),)](
            dy, dc_n, w_hh, y, gates, cells, dgx, dgh, batch, steps, hidden,
            w_hh.stride(0), w_hh.stride(1), dy.stride(0), dy.stride(1), dy.stride(2),
            CELL=cell, G=_GATES[cell], BLOCK_N=block_n, BLOCK_H=block_h, PRECISION=cfg.precision,
            num_warps=warps, num_stages=cfg.seq_stages,
        )

    if hidden > cfg.max_hidden or not _try_persistent(("bwd", cell, y.dtype, block_h, y.device), launch):
        steps_backward(dy, dc_n, w_hh, saved, (dgx, dgh), cell, cfg)
    return dgx, dgh


def _layer_backward(
    saved: tuple[torch.Tensor, ...], cell: int, dy: torch.Tensor, dc_n: torch.Tensor | None,
    needs: tuple[bool, ...],
) -> tuple[torch.Tensor | None, ...]:
    """Reverse-time pass, then GEMMs and column sums -> (dx, dW_ih, dW_hh, db_ih, db_hh), None if unneeded."""
    x, w_ih, w_hh, y, gates, cells = saved
    dgx, dgh = _gate_grads(dy, dc_n, w_hh, (y, gates, cells), cell)
    colsum_block = launch_config().colsum_block
    dx = dw_ih = dw_hh = db_ih = db_hh = None
    if needs[0]:
        dx = _gemm(Matrix(dgx, (0, 1), (2,)), Matrix(w_ih, (0,), (1,)), config.new_empty(x.shape, x))
    if needs[1]:
        dw_ih = _gemm(Matrix(dgx, (2,), (0, 1)), Matrix(x, (0, 1), (2,)), config.new_empty(w_ih.shape, x))
    if needs[2]:  # h_{t-1} is 0 at t = 0, so only steps 1..T-1 contribute
        dw_hh = _gemm(Matrix(dgh[:, 1:], (2,), (0, 1)), Matrix(y[:, :-1], (0, 1), (2,)),
                      config.new_empty(w_hh.shape, x))
    if needs[3]:
        db_ih = colsum(dgx, colsum_block)
    if needs[4]:
        db_hh = colsum(dgh, colsum_block)
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
            raise ValueError(f"{name}: every weight must have the input's dtype and device "
                             f"({x.dtype}, {x.device})")


def _run_stack(
    input: torch.Tensor, weights: list[torch.Tensor] | tuple[torch.Tensor, ...], num_layers: int,
    bias: bool, cell: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Layer k > 0 reads layer k-1's outputs -> (output (N, T, H), h_n (L, N, H), c_n (L, N, H) or None)."""
    name = _NAMES[cell]
    if input.dim() not in (2, 3) or input.numel() == 0:
        raise ValueError(f"{name}: input must be a non-empty (N, T, F) or (T, F), got {tuple(input.shape)}")
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
    """Elman rnn as torch.nn.RNN(batch_first=True), h_0 = 0.

    h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh), act = tanh or relu.

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
    """GRU as torch.nn.GRU(batch_first=True), h_0 = 0, gate order r, z, n.

    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn)), h_t = (1 - z_t) n_t + z_t h_{t-1}.

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer weight_ih (3H, F_k), weight_hh (3H, H), then bias_ih (3H,), bias_hh (3H,)
    when `bias`. Returns (output (N, T, H), h_n (num_layers, N, H)); unbatched: (T, H) and
    (num_layers, H). Differentiable w.r.t. the input and every weight; dots use input_precision "ieee".
    """
    output, h_n, _ = _run_stack(input, weights, num_layers, bias, GRU.value)
    return output, h_n
