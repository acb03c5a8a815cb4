"""One recorded kernel launch (its bound arguments and grid) -> bytes it moves and FLOPs it does.

Bytes: every distinct tensor argument counted once at its view's size, the
compulsory traffic of the launch (a launcher passing the output again as an
unused stand-in for a missing bias is counted once). FLOPs: a multiply-add
counts 2, as the IR counts them. GEMM-shaped kernels are recognised by
their arguments (M, N, K; the convolution's implicit-GEMM sizes; the
recurrent sequence kernels' N, T, H, G); anything else counts one FLOP per
element of its largest tensor (elementwise, pooling without a window, row
reductions), which is the right order of magnitude for memory-bound work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch


def launch_bytes(bound: Mapping[str, Any]) -> int:
    """Size in bytes of the distinct tensor views passed to one launch."""
    seen: set[tuple[int, tuple[int, ...], tuple[int, ...]]] = set()
    total = 0
    for value in bound.values():
        if not isinstance(value, torch.Tensor):
            continue
        key = (value.data_ptr(), tuple(value.shape), tuple(value.stride()))
        if key in seen:
            continue
        seen.add(key)
        total += value.numel() * value.element_size()
    return total


def _largest_tensor(bound: Mapping[str, Any]) -> int:
    sizes = [value.numel() for value in bound.values() if isinstance(value, torch.Tensor)]
    return max(sizes, default=0)


def _conv_flops(kind: str, a: Mapping[str, Any], groups: int) -> int:
    """2 * (output pixels) * (output channels) * (input channels per group) * kernel area."""
    per_output = 2 * a["OCG"] * a["CG"] * a["KH"] * a["KW"] * groups
    if kind == "fwd":  # M = N * OH * OW output pixels
        return a["M"] * per_output
    if kind == "bwd_input":  # M = N * H * W input pixels; the useful work is the forward's
        images = a["M"] // max(a["H"] * a["W"], 1)
        return images * a["OH"] * a["OW"] * per_output
    return a["K"] * per_output  # bwd_weight: K = N * OH * OW, the reduction length


def launch_flops(kernel: str, bound: Mapping[str, Any], grid: tuple[int, ...]) -> int:
    """FLOPs of one launch of `kernel` with these bound arguments (see the module docstring)."""
    for kind in ("bwd_input", "bwd_weight", "fwd"):
        if kernel.startswith("_conv2d_") and kernel.endswith(f"_{kind}_kernel") and "OCG" in bound:
            return _conv_flops(kind, bound, grid[2] if len(grid) > 2 else 1)
    if all(isinstance(bound.get(dim), int) for dim in ("M", "N", "K")):
        return 2 * bound["M"] * bound["N"] * bound["K"]
    if all(isinstance(bound.get(dim), int) for dim in ("N", "T", "H", "G")):
        # the recurrent matmul h_{t-1} @ W_hh^T (G gates) for every step and row; cell math not counted
        return 2 * bound["N"] * bound["T"] * bound["H"] * bound["G"] * bound["H"]
    if all(isinstance(bound.get(dim), int) for dim in ("total", "KH", "KW")) and "fwd" in kernel:
        return bound["total"] * bound["KH"] * bound["KW"]  # a pooling window per output element
    return _largest_tensor(bound)
