"""Strided matrices -> their product (+ bias) and column sums: the recurrent family's kernels/gemm.py calls.

Thin wrappers that keep the recurrent modules' call signatures. A `Matrix`
(kernels/gemm.py) reads a tensor of up to three dims as rows x columns, either
side possibly two dims flattened, so (N, T, F) inputs, per-step slices such as
y[:, t] and shifted views such as y[:, :-1] feed the GEMM without copies. Tiles,
warps and stages come from policy.py's gemm section.
"""

from __future__ import annotations

import torch

from netc.kernels.gemm import Matrix, column_sums
from netc.kernels.gemm import gemm as _gemm

__all__ = ["Matrix", "colsum", "gemm"]


def gemm(
    a: Matrix, b: Matrix, out: torch.Tensor, bias: torch.Tensor | None, precision: str,
    blocks: tuple[int, int, int] | None = None, warps: int | None = None,
    row_sums: torch.Tensor | None = None,
) -> torch.Tensor:
    """out = A @ B (+ bias per column); out is contiguous, any view shape of (M, N).

    A's and B's K sides must flatten alike; K = 0 is allowed and gives the bias (or zeros).
    `blocks` and `warps` are no longer read (the tiles are policy.gemm_config's). `row_sums` (M,)
    receives A's row sums in the same launch (dW = dG^T X with db = colsum(dG)).
    """
    assert out.is_contiguous()
    _gemm(a, b, out.view(a.shape[0], b.shape[1]), bias=bias, row_sums=row_sums, precision=precision)
    return out


def colsum(rows: torch.Tensor, blocks: tuple[int, int] | None = None) -> torch.Tensor:
    """(..., C) -> (C,): the sum over every leading index (a bias gradient); `blocks` is no longer read."""
    return column_sums(rows.reshape(-1, rows.shape[-1]))
