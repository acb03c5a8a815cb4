"""Triton kernels with autograd, each with the signature of its `torch.nn.functional` twin.

Before any family module imports triton, `ensure_backend` picks Triton's
interpreter when torch sees no CUDA GPU (or keeps a `TRITON_INTERPRET` the
caller already set, as `--device cpu` does). The public names are imported
eagerly on purpose: a lazy lookup would be shadowed by the family module of
the same name (`netc.kernels.linear`, `netc.kernels.dropout`) once that
module is imported.
"""

from __future__ import annotations

from netc.kernels.config import ensure_backend

ensure_backend()  # decide TRITON_INTERPRET before any family module imports triton

from netc.kernels.activation import gelu, leaky_relu, relu, sigmoid, silu, tanh  # noqa: E402
from netc.kernels.conv import conv2d, conv2d_act  # noqa: E402
from netc.kernels.dropout import dropout  # noqa: E402
from netc.kernels.layer_norm import layer_norm  # noqa: E402
from netc.kernels.linear import linear, linear_act  # noqa: E402
from netc.kernels.loss import cross_entropy  # noqa: E402
from netc.kernels.norm import batch_norm  # noqa: E402
from netc.kernels.optim import SGD, Adam, AdamW  # noqa: E402
from netc.kernels.pool import adaptive_avg_pool2d, avg_pool2d, max_pool2d  # noqa: E402
from netc.kernels.recurrent import gru, lstm, rnn  # noqa: E402

# public name -> the family module that defines it (the plan and tests look kernels up here)
_EXPORTS: dict[str, str] = {
    "conv2d": "conv",
    "conv2d_act": "conv",
    "max_pool2d": "pool",
    "avg_pool2d": "pool",
    "linear": "linear",
    "linear_act": "linear",
    "relu": "activation",
    "tanh": "activation",
    "sigmoid": "activation",
    "leaky_relu": "activation",
    "gelu": "activation",
    "silu": "activation",
    "batch_norm": "norm",
    "layer_norm": "layer_norm",
    "adaptive_avg_pool2d": "pool",
    "dropout": "dropout",
    "cross_entropy": "loss",
    "SGD": "optim",
    "Adam": "optim",
    "AdamW": "optim",
    "rnn": "recurrent",
    "lstm": "recurrent",
    "gru": "recurrent",
}

__all__ = [
    "SGD", "Adam", "AdamW", "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "conv2d", "conv2d_act",
    "cross_entropy", "dropout", "gelu", "gru", "layer_norm", "leaky_relu", "linear", "linear_act", "lstm",
    "max_pool2d", "relu", "rnn", "sigmoid", "silu", "tanh",
]
