"""(N, T, F) sequences + torch-ordered flat weights -> rnn / lstm / gru outputs; one step -> the cells.

The public functions of the recurrent family, with torch.nn.RNN / LSTM / GRU
(batch_first=True) and RNNCell / LSTMCell / GRUCell semantics: optional
initial states, stacked layers with dropout between them (training only,
drawn on the device by `dropout.py`'s Philox kernel, seeded from torch's
generator), bidirectional layers, unbatched inputs. Each layer is one
`recurrent_layer.RecurrentLayer` (both directions in one persistent launch);
a cell is a one-step layer with its hx as the initial state. The lstm's
proj_size runs step by step (`recurrent_proj.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from netc.kernels.dropout import dropout as _dropout
from netc.kernels.recurrent_cells import GRU, LSTM, RNN_RELU, RNN_TANH
from netc.kernels.recurrent_proj import projected_lstm_layer
from netc.kernels.recurrent_layer import GATES, GPU_CONFIG, NAMES, RecurrentLayer, _seq_blocks  # noqa: F401
Params = tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]  # w_ih, w_hh, b_ih, b_hh


def _rnn_cell_kind(name: str, nonlinearity: str) -> int:
    if nonlinearity not in ("tanh", "relu"):
        raise ValueError(f"{name}: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
    return RNN_TANH.value if nonlinearity == "tanh" else RNN_RELU.value


def _check_input(name: str, input: torch.Tensor, dims: tuple[int, int], what: str) -> None:
    if input.dim() not in dims or input.numel() == 0:
        raise ValueError(f"{name}: input must be a non-empty {what}, got {tuple(input.shape)}")
    if input.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"{name}: dtype {input.dtype} (float32 and float64 only)")


def _check_params(name: str, features: int, params: Params, gates: int, state: int) -> None:
    """Shapes, dtypes and devices of one layer-direction's weights; `state` is the width of h."""
    w_ih, w_hh = params[0], params[1]
    rows = w_hh.shape[0] if w_hh.dim() == 2 else -1
    hidden = rows // gates
    if w_hh.shape != (gates * hidden, state) or w_ih.shape != (gates * hidden, features) or hidden < 1:
        raise ValueError(f"{name}: weight_ih {tuple(w_ih.shape)} / weight_hh {tuple(w_hh.shape)} do not fit "
                         f"input features {features} with {gates} gate(s)")
    for p in params[2:]:
        if p is not None and p.shape != (gates * hidden,):
            raise ValueError(f"{name}: bias of shape {tuple(p.shape)}, expected ({gates * hidden},)")


def _check_same(name: str, like: torch.Tensor, tensors: Sequence[torch.Tensor | None]) -> None:
    for p in tensors:
        if p is not None and (p.dtype != like.dtype or p.device != like.device):
            raise ValueError(f"{name}: every weight and state must have the input's dtype and device "
                             f"({like.dtype}, {like.device})")


def _check_state(name: str, state: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if state is not None and tuple(state.shape) != shape:
        raise ValueError(f"{name}: expected {what} of shape {shape}, got {tuple(state.shape)}")


def _split_weights(name: str, weights: Sequence[torch.Tensor], num_layers: int, ndir: int, bias: bool,
                   proj: bool) -> list[list[list[torch.Tensor | None]]]:
    """torch's `_flat_weights` order -> [layer][direction] = [w_ih, w_hh, b_ih, b_hh, w_hr]."""
    per = 2 + 2 * bias + proj
    if num_layers < 1 or len(weights) != num_layers * ndir * per:
        raise ValueError(f"{name}: expected {num_layers * ndir * per} weight tensors for "
                         f"num_layers={num_layers}, "
                         f"bias={bias}, bidirectional={ndir == 2}{', proj_size > 0' if proj else ''}, "
                         f"got {len(weights)}")
    layers = []
    for layer in range(num_layers):
        dirs = []
        for d in range(ndir):
            w = list(weights[(layer * ndir + d) * per:(layer * ndir + d + 1) * per])
            dirs.append([w[0], w[1], *(w[2:4] if bias else [None, None]), w[-1] if proj else None])
        layers.append(dirs)
    return layers


def _run_stack(
    input: torch.Tensor, weights: Sequence[torch.Tensor], h0: torch.Tensor | None, c0: torch.Tensor | None,
    options: dict[str, Any], cell: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Layer k > 0 reads layer k-1's outputs (dropped out in training) -> (output (N, T, D*H_out),
    h_n (L*D, N, H_out), c_n (L*D, N, H) or None); unbatched (T, F) in and out as torch."""
    name, layers, ndir = NAMES[cell], options["num_layers"], 2 if options["bidirectional"] else 1
    p, proj = float(options["dropout"]), int(options.get("proj_size", 0))
    _check_input(name, input, (2, 3), "(N, T, F) or (T, F)")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name}: dropout should be a number in range [0, 1], got {p}")
    all_params = _split_weights(name, weights, layers, ndir, options["bias"], proj > 0)
    batched = input.dim() == 3
    x = input if batched else input.unsqueeze(0)
    hidden = all_params[0][0][1].shape[-1] if proj == 0 else all_params[0][0][4].shape[-1]
    out_size = proj or hidden
    state_shape = (layers * ndir, x.shape[0], out_size) if batched else (layers * ndir, out_size)
    _check_state(name, h0, state_shape, "h_0" if cell == LSTM.value else "hx")
    _check_state(name, c0, state_shape[:-1] + (hidden,), "c_0")
    if not batched:
        h0 = h0.unsqueeze(1) if h0 is not None else None
        c0 = c0.unsqueeze(1) if c0 is not None else None
    last_h, last_c = [], []
    for layer, dirs in enumerate(all_params):
        for params in dirs:
            _check_params(name, x.shape[-1], tuple(params[:4]), GATES[cell], out_size)  # type: ignore[arg-type]
            w_hr = params[4]
            if w_hr is not None and tuple(w_hr.shape) != (proj, params[1].shape[0] // 4):
                raise ValueError(f"{name}: weight_hr {tuple(w_hr.shape)}, expected "
                                 f"({proj}, {params[1].shape[0] // 4})")
            _check_same(name, x, params)
        _check_same(name, x, [h0, c0])
        states = slice(layer * ndir, (layer + 1) * ndir)
        h0_l = h0[states] if h0 is not None else None
        c0_l = c0[states] if c0 is not None else None
        if proj:
            x, h_n, c_n = projected_lstm_layer(x, h0_l, c0_l, dirs)
            outputs = (x, h_n, c_n)
        else:
            outputs = RecurrentLayer.apply(x, h0_l, c0_l, cell, ndir, *[w for d in dirs for w in d[:4]])
            x = outputs[0]
        last_h.append(outputs[1])
        if cell == LSTM.value:
            last_c.append(outputs[2])
        if p > 0.0 and options["training"] and layer < layers - 1:
            x = _dropout(x, p, True)
    h_n = torch.cat(last_h) if layers > 1 else last_h[0]
    c_n = (torch.cat(last_c) if layers > 1 else last_c[0]) if last_c else None
    if not batched:  # as torch: output (T, D*H), states (L*D, H)
        return x[0], h_n[:, 0], c_n[:, 0] if c_n is not None else None
    return x, h_n, c_n


def _is_legacy(hx: Any) -> bool:
    """A pre-v2 positional call, (input, weights, num_layers, ...): an int where hx now stands."""
    return isinstance(hx, int) and not isinstance(hx, bool)


def rnn(
    input: torch.Tensor, weights: Sequence[torch.Tensor], hx: torch.Tensor | None = None, num_layers: int = 1,
    nonlinearity: str = "tanh", bias: bool = True, dropout: float = 0.0, training: bool = True,
    bidirectional: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Elman rnn as torch.nn.RNN(batch_first=True): h_t = act(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh).

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer and direction (the `_reverse` one second) weight_ih (H, F_k), weight_hh
    (H, H), then bias_ih, bias_hh (H,) when `bias`; F_k = D*H for k > 0. hx: h_0 (L*D, N, H) or
    (L*D, H), zeros if None. nonlinearity "tanh" or "relu"; dropout on the outputs of every layer
    but the last, when `training`. Returns (output (N, T, D*H), h_n (L*D, N, H)); unbatched
    (T, D*H) and (L*D, H). Differentiable w.r.t. input, hx and every weight. (A third positional
    int is still read as num_layers, as in the pre-v2 `rnn(x, weights, num_layers, nonlinearity, bias)`.)
    """
    if _is_legacy(hx):  # (input, weights, num_layers, nonlinearity, bias)
        shifted = (num_layers, nonlinearity)
        num_layers, hx = hx, None  # type: ignore[assignment]
        nonlinearity = shifted[0] if isinstance(shifted[0], str) else "tanh"
        bias = shifted[1] if isinstance(shifted[1], bool) else bias
    cell = _rnn_cell_kind("rnn", nonlinearity)
    options = {"num_layers": num_layers, "bias": bias, "dropout": dropout, "training": training,
               "bidirectional": bidirectional}
    output, h_n, _ = _run_stack(input, weights, hx, None, options, cell)
    return output, h_n


def lstm(
    input: torch.Tensor, weights: Sequence[torch.Tensor],
    hx: tuple[torch.Tensor, torch.Tensor] | None = None, num_layers: int = 1, bias: bool = True,
    dropout: float = 0.0, training: bool = True, bidirectional: bool = False, proj_size: int = 0,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """LSTM as torch.nn.LSTM(batch_first=True), gate order i, f, g, o.

    input: (N, T, F) or unbatched (T, F), float32 or float64. weights: torch's `_flat_weights`
    order, per layer and direction weight_ih (4H, F_k), weight_hh (4H, H_out), then bias_ih,
    bias_hh (4H,) when `bias`, then weight_hr (P, H) when proj_size = P > 0 (H_out = P, else H).
    hx: (h_0 (L*D, N, H_out), c_0 (L*D, N, H)) or None (zeros); unbatched without the N.
    Returns (output (N, T, D*H_out), (h_n (L*D, N, H_out), c_n (L*D, N, H))). Differentiable
    w.r.t. input, hx and every weight. (lstm(x, weights, num_layers, bias) still works.)
    """
    if _is_legacy(hx):  # (input, weights, num_layers, bias)
        bias = num_layers if isinstance(num_layers, bool) else bias
        num_layers, hx = hx, None  # type: ignore[assignment]
    if proj_size < 0:
        raise ValueError(f"lstm: proj_size should be a non-negative integer, got {proj_size}")
    h0, c0 = hx if hx is not None else (None, None)
    options = {"num_layers": num_layers, "bias": bias, "dropout": dropout, "training": training,
               "bidirectional": bidirectional, "proj_size": proj_size}
    output, h_n, c_n = _run_stack(input, weights, h0, c0, options, LSTM.value)
    assert c_n is not None
    return output, (h_n, c_n)


def gru(
    input: torch.Tensor, weights: Sequence[torch.Tensor], hx: torch.Tensor | None = None, num_layers: int = 1,
    bias: bool = True, dropout: float = 0.0, training: bool = True, bidirectional: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRU as torch.nn.GRU(batch_first=True), gate order r, z, n:
    n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn)), h_t = (1 - z_t) n_t + z_t h_{t-1}.

    Arguments and results as `rnn` (3H gate rows). (gru(x, weights, num_layers, bias) still works.)
    """
    if _is_legacy(hx):  # (input, weights, num_layers, bias)
        bias = num_layers if isinstance(num_layers, bool) else bias
        num_layers, hx = hx, None  # type: ignore[assignment]
    options = {"num_layers": num_layers, "bias": bias, "dropout": dropout, "training": training,
               "bidirectional": bidirectional}
    output, h_n, _ = _run_stack(input, weights, hx, None, options, GRU.value)
    return output, h_n


def _cell_step(
    name: str, input: torch.Tensor, h0: torch.Tensor | None, c0: torch.Tensor | None, params: Params,
    cell: int,
) -> tuple[torch.Tensor, ...]:
    """One step of a one-layer, one-direction sequence: (input (N, F) or (F,), states) -> (h', c')."""
    _check_input(name, input, (1, 2), "(N, F) or (F,)")
    batched = input.dim() == 2
    x = input if batched else input.unsqueeze(0)
    hidden = params[1].shape[-1]
    _check_params(name, x.shape[1], params, GATES[cell], hidden)
    _check_same(name, x, [*params, h0, c0])
    for state in (h0, c0):
        _check_state(name, state, (x.shape[0], hidden) if batched else (hidden,), "hx")
    states = [s.reshape(1, x.shape[0], hidden) if s is not None else None for s in (h0, c0)]
    outputs = RecurrentLayer.apply(x.unsqueeze(1), states[0], states[1], cell, 1, *params)
    return tuple(state[0] if batched else state[0, 0] for state in outputs[1:])


def rnn_cell(
    input: torch.Tensor, hx: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None, nonlinearity: str = "tanh",
) -> torch.Tensor:
    """torch.nn.RNNCell: h' = act(input W_ih^T + b_ih + hx W_hh^T + b_hh); input (N, F) or (F,),
    hx (N, H) or (H,) or None (zeros). Differentiable w.r.t. every tensor argument."""
    cell = _rnn_cell_kind("rnn_cell", nonlinearity)
    (h,) = _cell_step("rnn_cell", input, hx, None, (w_ih, w_hh, b_ih, b_hh), cell)
    return h


def lstm_cell(
    input: torch.Tensor, hx: tuple[torch.Tensor, torch.Tensor] | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.LSTMCell: (input, (h, c)) -> (h', c'), gate order i, f, g, o; hx None: zeros."""
    h0, c0 = hx if hx is not None else (None, None)
    h, c = _cell_step("lstm_cell", input, h0, c0, (w_ih, w_hh, b_ih, b_hh), LSTM.value)
    return h, c


def gru_cell(
    input: torch.Tensor, hx: torch.Tensor | None, w_ih: torch.Tensor, w_hh: torch.Tensor,
    b_ih: torch.Tensor | None = None, b_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """torch.nn.GRUCell: (input, h) -> h', gate order r, z, n; hx None: zeros."""
    (h,) = _cell_step("gru_cell", input, hx, None, (w_ih, w_hh, b_ih, b_hh), GRU.value)
    return h
