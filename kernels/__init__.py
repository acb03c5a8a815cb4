"""Triton kernels with autograd, each with the signature of its `torch.nn.functional` twin.

Importing a kernel module imports triton; `netc.kernels` itself loads the
families lazily. Before any family imports triton, `ensure_backend` picks
Triton's interpreter when torch sees no CUDA GPU (or keeps a
`TRITON_INTERPRET` the caller already set, as `--device cpu` does).
"""

from __future__ import annotations

import importlib
from typing import Any

from netc.kernels.config import ensure_backend

# public name -> the family module that defines it
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
    "dropout": "dropout",
    "cross_entropy": "loss",
    "SGD": "optim",
    "Adam": "optim",
    "AdamW": "optim",
    "rnn": "recurrent",
    "lstm": "recurrent",
    "gru": "recurrent",
}

__all__ = list(_EXPORTS)

ensure_backend()  # decide TRITON_INTERPRET before any family module imports triton


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'netc.kernels' has no attribute {name!r}")
    module = importlib.import_module(f"netc.kernels.{module_name}")
    return getattr(module, name)
