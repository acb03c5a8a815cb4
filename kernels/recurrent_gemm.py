"""Strided matrices -> their product (+ bias) and column sums: the GEMMs around the recurrent kernels.

The recurrent family keeps its own small GEMM (it does not depend on
`linear.py`). A `Matrix` reads a tensor of up to three dims as rows x
columns, either side possibly two dims flattened, so (N, T, F) inputs,
per-step slices such as y[:, t] and shifted views such as y[:, :-1] feed the
kernel without copies. Dots use the caller's input_precision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from netc.kernels import config


@triton.jit
def _gemm_kernel(
    a_ptr,  # A (M, K): element (m, k) at (m // m_inner, m % m_inner) x (k // k_inner, k % k_inner)
    b_ptr,  # B (K, N): K grouped as A's, column stride s_bn
    bias_ptr,  # (N,) added to every row of C; read only when HAS_BIAS
    c_ptr,  # C (M, N) out, row stride s_cm, unit column stride
    M,  # rows of A and C
    N,  # columns of B and C
    K,  # reduction length
    m_inner,  # size of the inner dim of A's row group
    k_inner,  # size of the inner dim of the K group (shared by A and B)
    s_am0, s_am1,  # A row strides: outer, inner
    s_ak0, s_ak1,  # A column (K) strides: outer, inner
    s_bk0, s_bk1,  # B row (K) strides: outer, inner
    s_bn,  # B column stride
    s_bias,  # bias stride
    s_cm,  # C row stride
    HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    PRECISION: tl.constexpr,  # tl.dot input_precision ("ieee" matches torch float32)
):
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    a_rows = (rm // m_inner) * s_am0 + (rm % m_inner) * s_am1
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=c_ptr.dtype.element_ty)  # float32, or float64 for float64
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        a_cols = (rk // k_inner) * s_ak0 + (rk % k_inner) * s_ak1
        b_rows = (rk // k_inner) * s_bk0 + (rk % k_inner) * s_bk1
        a = tl.load(a_ptr + a_rows[:, None] + a_cols[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptr + b_rows[:, None] + (rn * s_bn)[None, :],
                    mask=k_ok[:, None] & n_ok[None, :], other=0.0)
        acc += tl.dot(a, b, input_precision=PRECISION, out_dtype=acc.dtype)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + rn * s_bias, mask=n_ok, other=0.0)[None, :]
    tl.store(c_ptr + rm[:, None] * s_cm + rn[None, :], acc, mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _colsum_kernel(
    x_ptr,  # (R, C) contiguous
    out_ptr,  # (C,) out: sum over the rows
    R,  # rows
    C,  # columns
    BLOCK_R: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = cols < C
    acc = tl.zeros((BLOCK_C,), dtype=out_ptr.dtype.element_ty)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        tile = tl.load(x_ptr + rows[:, None] * C + cols[None, :],
                       mask=(rows < R)[:, None] & c_ok[None, :], other=0.0)
        acc += tl.sum(tile, axis=0)
    tl.store(out_ptr + cols, acc, mask=c_ok)


@dataclass(frozen=True)
class Matrix:
    """A strided tensor read as a matrix: rows from `row_dims`, columns from `col_dims` (1 or 2 dims each)."""

    tensor: torch.Tensor
    row_dims: tuple[int, ...]
    col_dims: tuple[int, ...]

    def group(self, dims: tuple[int, ...]) -> tuple[int, int, int, int]:
        """(size, inner size, outer stride, inner stride) of a flattened dim group, outer dim first."""
        shape, stride = self.tensor.shape, self.tensor.stride()
        if len(dims) == 1:
            return shape[dims[0]], max(shape[dims[0]], 1), 0, stride[dims[0]]
        outer, inner = dims
        return shape[outer] * shape[inner], max(shape[inner], 1), stride[outer], stride[inner]


def gemm(
    a: Matrix, b: Matrix, out: torch.Tensor, bias: torch.Tensor | None, precision: str,
    blocks: tuple[int, int, int], warps: int,
) -> torch.Tensor:
    """out = A @ B (+ bias per column); out is contiguous, any view shape of (M, N).

    A's and B's K groups must flatten alike; K = 0 is allowed and gives the bias (or zeros).
    """
    m, m_inner, s_am0, s_am1 = a.group(a.row_dims)
    k, k_inner, s_ak0, s_ak1 = a.group(a.col_dims)
    k_b, k_inner_b, s_bk0, s_bk1 = b.group(b.row_dims)
    n, _, _, s_bn = b.group(b.col_dims)
    assert k == k_b and (k == 0 or k_inner == k_inner_b) and len(b.col_dims) == 1
    assert out.is_contiguous() and out.numel() == m * n
    block_m, block_n, block_k = blocks
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _gemm_kernel[grid](
        a.tensor, b.tensor, bias if bias is not None else out, out,
        m, n, k, m_inner, k_inner, s_am0, s_am1, s_ak0, s_ak1, s_bk0, s_bk1, s_bn,
        bias.stride(0) if bias is not None else 0, n,
        HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        PRECISION=precision, num_warps=warps,
    )
    return out


def colsum(rows: torch.Tensor, blocks: tuple[int, int]) -> torch.Tensor:
    """(..., C) contiguous -> (C,): the sum over every leading index (a bias gradient)."""
    assert rows.is_contiguous()
    cols = rows.shape[-1]
    out = config.new_empty((cols,), rows)
    block_r, block_c = blocks
    _colsum_kernel[(triton.cdiv(cols, block_c),)](rows, out, rows.numel() // cols, cols,
                                                  BLOCK_R=block_r, BLOCK_C=block_c)
    return out
