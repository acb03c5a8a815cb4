"""(N, T, F) sequence + one lstm layer's weights with weight_hr -> its outputs at proj_size > 0.

torch.nn.LSTM(proj_size=P): h_t = W_hr (o_t * tanh(c_t)), so h is (N, P) while
the cell is (N, H), and the recurrent product h_{t-1} W_hh^T has K = P: the
persistent kernels (K = H) do not take it. This runs one step at a time: the
step's input is [x_t, h_{t-1}] against [W_ih, W_hh] (one input-projection
GEMM), the cell is a one-step `RecurrentLayer` with c_{t-1} as its initial
cell state (its own W_hh a zero (4H, H) matrix with a zero h0), and the
projection is a GEMM with its own autograd (`_Project`). About 3 launches per
step each way: correct and Triton throughout, not fast; the examples do not
use it.
"""

from __future__ import annotations

from typing import Any

import torch

from netc.kernels import config, policy
from netc.kernels.recurrent_cells import LSTM
from netc.kernels.recurrent_gemm import Matrix, gemm
from netc.kernels.recurrent_layer import RecurrentLayer


def _matmul(a: Matrix, b: Matrix, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
    out = config.new_empty(shape, like)
    return gemm(a, b, out, None, policy.recurrent_precision(like.dtype, like.device))


class _Project(torch.autograd.Function):
    """m (N, H) @ W_hr^T (H, P) -> h (N, P)."""

    @staticmethod
    def forward(ctx: Any, m: torch.Tensor, w_hr: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(m, w_hr)
        return _matmul(Matrix(m, (0,), (1,)), Matrix(w_hr, (1,), (0,)), (m.shape[0], w_hr.shape[0]), m)

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor) -> Any:
        m, w_hr = ctx.saved_tensors
        dm = dw = None
        if ctx.needs_input_grad[0]:  # dh (N, P) @ W_hr (P, H)
            dm = _matmul(Matrix(dh, (0,), (1,)), Matrix(w_hr, (0,), (1,)), tuple(m.shape), m)
        if ctx.needs_input_grad[1]:  # dh^T (P, N) @ m (N, H)
            dw = _matmul(Matrix(dh, (1,), (0,)), Matrix(m, (0,), (1,)), tuple(w_hr.shape), m)
        return dm, dw


def _one_direction(
    x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, params: list[torch.Tensor | None], reverse: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One direction, step by step -> (outputs (N, T, P), h_n (N, P), c_n (N, H))."""
    w_ih, w_hh, b_ih, b_hh, w_hr = params
    assert w_hr is not None
    batch, steps, _ = x.shape
    hidden = w_hr.shape[1]
    w_cat = torch.cat([w_ih, w_hh], dim=1)  # (4H, F + P): [x_t, h_{t-1}] in one product
    no_recurrence = w_hh.new_zeros(4 * hidden, hidden)
    zero_state = x.new_zeros(1, batch, hidden)
    outputs: list[torch.Tensor] = [h] * steps
    for t in reversed(range(steps)) if reverse else range(steps):
        step_input = torch.cat([x[:, t], h], dim=1).unsqueeze(1)  # (N, 1, F + P)
        y, _, c_n = RecurrentLayer.apply(step_input, zero_state, c.unsqueeze(0), LSTM.value, 1,
                                         w_cat, no_recurrence, b_ih, b_hh)
        c = c_n[0]
        h = _Project.apply(y[:, 0], w_hr)
        outputs[t] = h
    return torch.stack(outputs, dim=1), h, c


def projected_lstm_layer(
    x: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, dirs: list[list[torch.Tensor | None]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One projected lstm layer, D directions -> (output (N, T, D*P), h_n (D, N, P), c_n (D, N, H)).

    dirs: per direction [w_ih (4H, F), w_hh (4H, P), b_ih, b_hh (4H,) or None, w_hr (P, H)];
    h0 (D, N, P), c0 (D, N, H), or None for zeros."""
    outputs, h_n, c_n = [], [], []
    for d, params in enumerate(dirs):
        w_hr = params[4]
        assert w_hr is not None
        h = h0[d] if h0 is not None else x.new_zeros(x.shape[0], w_hr.shape[0])
        c = c0[d] if c0 is not None else x.new_zeros(x.shape[0], w_hr.shape[1])
        out, h, c = _one_direction(x, h, c, params, reverse=d == 1)
        outputs.append(out)
        h_n.append(h)
        c_n.append(c)
    return torch.cat(outputs, dim=2), torch.stack(h_n), torch.stack(c_n)
