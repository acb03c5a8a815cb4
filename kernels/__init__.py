"""Triton kernels with autograd, each with the signature of its `torch.nn.functional` twin.

Before any family module imports triton, `ensure_backend` picks Triton's
interpreter when torch sees no CUDA GPU (or keeps a `TRITON_INTERPRET` the
caller already set, as `--device cpu` does): kernels/config.py is the one
place that decides.

Why `netc.kernels.linear` is the function even though a module of that name
exists: Python sets a package attribute to a submodule only when it first
loads that submodule. This file first imports every family module (FAMILIES),
then binds the public names, so the function is the last binding; importing
an already loaded family module again (`import netc.kernels.linear`,
`importlib.import_module`) finds it in sys.modules and leaves the package
attribute alone. FAMILIES is every module of the package, found at import
(a test imports them all again and checks every public name is still a
function). The modules themselves: `family_modules()`.
"""

from __future__ import annotations

import importlib
import pkgutil
from types import ModuleType

from netc.kernels.config import ensure_backend

ensure_backend()  # decide TRITON_INTERPRET before any family module imports triton

# every module of the package, imported before any public name is bound (found, not listed, so a new
# family module can never be imported later and shadow a function of its name)
FAMILIES = tuple(sorted(info.name for info in pkgutil.iter_modules(__path__)))
for _family in FAMILIES:
    importlib.import_module(f"netc.kernels.{_family}")
del _family

from netc.kernels.adaptive_pool import adaptive_avg_pool2d  # noqa: E402
from netc.kernels.activation import gelu, leaky_relu, relu, sigmoid, silu, tanh  # noqa: E402
from netc.kernels.conv import conv2d, conv2d_act  # noqa: E402
from netc.kernels.dropout import dropout  # noqa: E402
from netc.kernels.layer_norm import layer_norm  # noqa: E402
from netc.kernels.linear import linear, linear_act  # noqa: E402
from netc.kernels.loss import cross_entropy  # noqa: E402
from netc.kernels.norm import batch_norm  # noqa: E402
from netc.kernels.optim import SGD, Adam, AdamW  # noqa: E402
from netc.kernels.pool import avg_pool2d, max_pool2d  # noqa: E402
from netc.kernels.recurrent import gru, gru_cell, lstm, lstm_cell, rnn, rnn_cell  # noqa: E402


def family_modules() -> list[ModuleType]:
    """The kernel family modules (not the functions some of them share a name with)."""
    return [importlib.import_module(f"netc.kernels.{family}") for family in FAMILIES]


__all__ = [
    "SGD", "Adam", "AdamW", "adaptive_avg_pool2d", "avg_pool2d", "batch_norm", "conv2d", "conv2d_act",
    "cross_entropy", "dropout", "gelu", "gru", "gru_cell", "layer_norm", "leaky_relu", "linear", "linear_act",
    "lstm", "lstm_cell", "max_pool2d", "relu", "rnn", "rnn_cell", "sigmoid", "silu", "tanh",
]
