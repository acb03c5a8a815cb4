"""Strided matrices A (M, K), B (K, N) -> C = act(alpha * A @ B + bias [+ C]): the one GEMM of netc.

Linear layers, the recurrent projections and the weight gradients all run `_gemm_kernel`.
- Operands are read by their strides (a transpose is a stride swap). A `Matrix`
  reads a 3-D tensor as a matrix with one side made of two dims ((N, T, F) as
  (N*T, F), or a shifted view such as y[:, :-1]) without a copy.
- Epilogue (compile-time switches): alpha, bias per column, accumulate into C
  (BLAS beta = 1, before the activation), the pre-activation kept (for gelu and
  the like), then any activation of activation.py, present or added later.
- Prologue: A may be multiplied elementwise by act'(saved) on load (an
  activation's backward fused into the GEMMs that consume dL/dz), for the
  activations with a cheap derivative (PROLOGUE_ACTIVATIONS).
- Row sums of A in the same launch (`row_sums=`): the CTAs of the first tile
  column store the sums of their A tiles, so dW = dY^T X comes with db = colsum(dY).
- Split-K in one launch, deterministic: each CTA of a split writes its partial
  tile to a workspace; a per-tile ticket counter tells the last CTA to arrive to
  add the partials in split order, run the epilogue and zero the counter again.
  `policy.split_k` picks the splits; the interpreter never splits.
- Dots accumulate in float32 (float64 for float64 inputs) at the caller's
  `policy.dot_precision(kind, ...)`: "ieee", or "tf32" where PyTorch would.
`column_sums` is the one column-sum (bias gradient) kernel for the cases no GEMM covers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from netc.kernels import config, costs, policy
from netc.kernels.activation import (
    ACT_LEAKY_RELU,
    ACT_NONE,
    ACT_RELU,
    ACT_SIGMOID,
    ACT_TANH,
    activation_grad,
    apply_activation,
)

# activations whose derivative the prologue may apply at every K step: a few flops per element (gelu's
# float64 erf there spills on sm_90 and is recomputed by each GEMM that reads it; materialize instead)
PROLOGUE_ACTIVATIONS = (ACT_RELU, ACT_TANH, ACT_SIGMOID, ACT_LEAKY_RELU)


@triton.jit
def _offsets(index, stride, inner, stride_inner, TWO_DIMS: tl.constexpr):
    """int64 element offsets of flat indices on one side; TWO_DIMS: index = outer * inner + inner index."""
    if TWO_DIMS:
        return (index // inner).to(tl.int64) * stride + (index % inner).to(tl.int64) * stride_inner
    return index.to(tl.int64) * stride


@triton.jit
def _tile_of_program(pid, M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # grouped order (Triton's matmul tutorial): GROUP_M tile rows walk the tile columns together,
    # so neighbouring programs share B tiles in L2
    tiles_n = tl.cdiv(N, BLOCK_N)
    width = GROUP_M * tiles_n
    first_m = (pid // width) * GROUP_M
    group_rows = tl.minimum(tl.cdiv(M, BLOCK_M) - first_m, GROUP_M)
    return first_m + (pid % width) % group_rows, (pid % width) // group_rows


@triton.jit
def _mainloop(
    a_ptr, b_ptr, s_ptr,  # A, B and the prologue's saved tensor (A's shape)
    a_rows, s_rows, b_cols,  # (BLOCK_M,), (BLOCK_M,), (BLOCK_N,) int64 offsets
    row_ok, col_ok,  # (BLOCK_M,), (BLOCK_N,) bounds
    k_lo, k_hi,  # this split's reduction range [k_lo, k_hi)
    k_inner, s_ak, s_ak_in, s_bk, s_bk_in, s_sk,  # K-side strides (see _gemm_kernel)
    SLOPE: tl.constexpr, ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr, K_TWO_DIMS: tl.constexpr,
    A_ACT: tl.constexpr, ROW_SUMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC_DTYPE)
    sums = tl.zeros((BLOCK_M,), dtype=ACC_DTYPE)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < k_hi
        a_mask = row_ok[:, None] & k_ok[None, :]
        a_k = _offsets(kk, s_ak, k_inner, s_ak_in, K_TWO_DIMS)
        a = tl.load(a_ptr + a_rows[:, None] + a_k[None, :], mask=a_mask, other=0.0)
        if A_ACT != 0:  # dL/dz = act'(saved) * dL/dy, read where A is read
            s_k = kk.to(tl.int64) * s_sk
            saved = tl.load(s_ptr + s_rows[:, None] + s_k[None, :], mask=a_mask, other=0.0)
            a = activation_grad(a, saved, A_ACT, SLOPE)
        b_k = _offsets(kk, s_bk, k_inner, s_bk_in, K_TWO_DIMS)
        b = tl.load(b_ptr + b_k[:, None] + b_cols[None, :], mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        if ROW_SUMS:
            sums += tl.sum(a.to(ACC_DTYPE), axis=1)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC_DTYPE)
    return acc, sums


@triton.jit
def _epilogue(
    acc, sums, rows, cols, row_ok, col_ok, sums_here,  # tile, its row sums; sums_here: this CTA stores them
    c_ptr, bias_ptr, pre_ptr, rowsum_ptr,
    s_cm, s_cn, s_bias, s_rowsum,
    ALPHA: tl.constexpr, HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_PRE: tl.constexpr,
    ACT: tl.constexpr, SLOPE: tl.constexpr, ROW_SUMS: tl.constexpr,
):
    mask = row_ok[:, None] & col_ok[None, :]
    c_offsets = rows.to(tl.int64)[:, None] * s_cm + cols[None, :] * s_cn
    if ALPHA != 1.0:
        acc = acc * ALPHA
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols * s_bias, mask=col_ok, other=0.0).to(acc.dtype)[None, :]
    if ACCUMULATE:
        acc += tl.load(c_ptr + c_offsets, mask=mask, other=0.0).to(acc.dtype)
    if STORE_PRE:  # the pre-activation, laid out as C
        tl.store(pre_ptr + c_offsets, acc.to(pre_ptr.dtype.element_ty), mask=mask)
    acc = apply_activation(acc, ACT, SLOPE)
    tl.store(c_ptr + c_offsets, acc.to(c_ptr.dtype.element_ty), mask=mask)
    if ROW_SUMS:
        if sums_here:
            if ACCUMULATE:
                sums += tl.load(rowsum_ptr + rows * s_rowsum, mask=row_ok, other=0.0).to(sums.dtype)
            tl.store(rowsum_ptr + rows * s_rowsum, sums.to(rowsum_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def gather_splits(
    acc, sums, tile, pid_m, sums_here, split, splits, tiles,  # this CTA's partials and place
    ws_ptr, ticket_ptr,  # workspace (accumulator dtype), per-tile tickets (int32, zero between launches)
    ROW_SUMS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Store this split's partials; the last CTA of the tile to arrive returns their sum in split order."""
    # workspace: [tiles][splits][BLOCK_M * BLOCK_N] partial tiles, then [tiles_m][splits][BLOCK_M] row sums
    tile_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    tile_base = ws_ptr + tile.to(tl.int64) * splits * (BLOCK_M * BLOCK_N)
    tl.store(tile_base + split * (BLOCK_M * BLOCK_N) + tile_offsets, acc)
    sums_base = ws_ptr + tiles.to(tl.int64) * splits * (BLOCK_M * BLOCK_N) + pid_m * splits * BLOCK_M
    if ROW_SUMS:
        if sums_here:
            tl.store(sums_base + split * BLOCK_M + tl.arange(0, BLOCK_M), sums)
    tl.debug_barrier()  # every thread's partial is written before the ticket releases it
    ticket = tl.atomic_add(ticket_ptr + tile, 1, sem="acq_rel")
    last = ticket == splits - 1
    if last:  # a fixed order, whichever split came last: the result is deterministic
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=acc.dtype)
        sums = tl.zeros((BLOCK_M,), dtype=acc.dtype)
        for first in range(0, splits, 4):  # 4 partials in flight per step (one L2 latency, not four)
            for step in tl.static_range(4):
                s = first + step
                # s < splits as a tensor: a missing split adds 0.0 and the order stays fixed
                in_split = s * (BLOCK_M * BLOCK_N) + tile_offsets
                acc += tl.load(tile_base + in_split, mask=in_split < splits * (BLOCK_M * BLOCK_N), other=0.0,
                               cache_modifier=".cg")
                if ROW_SUMS:
                    if sums_here:
                        lanes = s * BLOCK_M + tl.arange(0, BLOCK_M)
                        sums += tl.load(sums_base + lanes, mask=lanes < splits * BLOCK_M, other=0.0,
                                        cache_modifier=".cg")
        tl.store(ticket_ptr + tile, 0)  # zero for the next launch (and every CUDA-graph replay)
    return acc, sums, last


@triton.jit(launch_metadata=costs.matmul("M", "N", "K"))
def _gemm_kernel(
    a_ptr,  # A (M, K): row m at (m // m_inner) * s_am + (m % m_inner) * s_am_in when M_TWO_DIMS
    b_ptr,  # B (K, N): K split as A's when K_TWO_DIMS
    c_ptr,  # C (M, N) out, any strides (read first when ACCUMULATE)
    bias_ptr,  # (N,) read when HAS_BIAS
    pre_ptr,  # (M, N) pre-activation out, C's strides, written when STORE_PRE
    s_ptr,  # (M, K) saved tensor of the prologue, plain 2-D strides, read when A_ACT != 0
    rowsum_ptr,  # (M,) row sums of A out, written when ROW_SUMS
    ws_ptr,  # split-K workspace, accumulator dtype (see gather_splits), used when SPLIT
    ticket_ptr,  # (tiles,) int32 split-K ticket counters, zero between launches, used when SPLIT
    M, N, K,  # problem sizes
    m_inner, k_inner,  # inner sizes of two-dim M and K sides
    s_am, s_am_in, s_ak, s_ak_in,  # A strides: rows (outer, inner), K (outer, inner)
    s_bk, s_bk_in, s_bn,  # B strides: K (outer, inner), columns
    s_cm, s_cn,  # C (and pre) strides
    s_sm, s_sk,  # saved tensor strides
    s_bias, s_rowsum,  # vector strides
    splits, split_len,  # K splits and the K elements each covers (a multiple of BLOCK_K)
    ALPHA: tl.constexpr, HAS_BIAS: tl.constexpr, ACCUMULATE: tl.constexpr, STORE_PRE: tl.constexpr,
    ACT: tl.constexpr, SLOPE: tl.constexpr,  # epilogue; SLOPE: leaky_relu's slope (also for A_ACT)
    A_ACT: tl.constexpr,  # prologue: activation code whose derivative multiplies A, 0 for none
    ROW_SUMS: tl.constexpr, SPLIT: tl.constexpr, M_TWO_DIMS: tl.constexpr, K_TWO_DIMS: tl.constexpr,
    ACC_DTYPE: tl.constexpr, PRECISION: tl.constexpr,  # accumulator dtype, tl.dot input_precision
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    tile = tl.program_id(0)
    split = tl.program_id(1)
    pid_m, pid_n = _tile_of_program(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    a_rows = _offsets(rows, s_am, m_inner, s_am_in, M_TWO_DIMS)
    s_rows = rows.to(tl.int64) * s_sm
    b_cols = cols.to(tl.int64) * s_bn
    k_lo = split * split_len
    k_hi = tl.minimum(k_lo + split_len, K)
    # every tile column sums A's rows (a second loop for the first column alone made ptxas spill), the
    # first stores them
    sums_here = pid_n == 0
    acc, sums = _mainloop(a_ptr, b_ptr, s_ptr, a_rows, s_rows, b_cols, row_ok, col_ok, k_lo, k_hi, k_inner,
                          s_ak, s_ak_in, s_bk, s_bk_in, s_sk, SLOPE, ACC_DTYPE, PRECISION, K_TWO_DIMS, A_ACT,
                          ROW_SUMS, BLOCK_M, BLOCK_N, BLOCK_K)
    last = True
    if SPLIT:
        tiles = tl.num_programs(0)
        acc, sums, last = gather_splits(acc, sums, tile, pid_m, sums_here, split, splits, tiles, ws_ptr,
                                         ticket_ptr, ROW_SUMS, BLOCK_M, BLOCK_N)
    if last:
        _epilogue(acc, sums, rows, cols, row_ok, col_ok, sums_here, c_ptr, bias_ptr, pre_ptr, rowsum_ptr,
                  s_cm, s_cn, s_bias, s_rowsum, ALPHA, HAS_BIAS, ACCUMULATE, STORE_PRE, ACT, SLOPE, ROW_SUMS)


@triton.jit(launch_metadata=costs.rows("R", "C"))
def _column_sums_kernel(
    x_ptr,  # X (R, C), any strides
    out_ptr,  # (C,) out: the sum over X's rows (added to it when ACCUMULATE)
    R, C,  # rows, columns
    s_xr, s_xc, s_out,  # strides
    ACCUMULATE: tl.constexpr, ACC_DTYPE: tl.constexpr,  # add into out; tl.float32 or tl.float64
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,  # rows per step, columns per program
):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    col_ok = cols < C
    acc = tl.zeros((BLOCK_C,), dtype=ACC_DTYPE)
    for r0 in range(0, R, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        offsets = rows.to(tl.int64)[:, None] * s_xr + (cols * s_xc)[None, :]
        tile = tl.load(x_ptr + offsets, mask=(rows < R)[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(tile.to(ACC_DTYPE), axis=0)
    if ACCUMULATE:
        acc += tl.load(out_ptr + cols * s_out, mask=col_ok, other=0.0).to(ACC_DTYPE)
    tl.store(out_ptr + cols * s_out, acc.to(out_ptr.dtype.element_ty), mask=col_ok)


@dataclass(frozen=True)
class Matrix:
    """A tensor of up to 3 dims read as a matrix: rows from `row_dims`, columns from `col_dims` (1 or 2 dims
    each, outer dim first), e.g. Matrix(x, (0, 1), (2,)) is an (N, T, F) tensor as (N*T, F)."""

    tensor: torch.Tensor
    row_dims: tuple[int, ...] = (0,)
    col_dims: tuple[int, ...] = (1,)

    def side(self, dims: tuple[int, ...]) -> tuple[int, int, int, int, bool]:
        """(size, inner size, outer stride, inner stride, two dims?) of one side; a two-dim side whose
        dims are laid out as one (outer stride = inner size * inner stride) reads as one dim."""
        shape, stride = self.tensor.shape, self.tensor.stride()
        if len(dims) == 1:
            return shape[dims[0]], 1, stride[dims[0]], 0, False
        outer, inner = dims
        size = shape[outer] * shape[inner]
        if shape[inner] == 1:
            return size, 1, stride[outer], 0, False
        if shape[outer] == 1 or stride[outer] == shape[inner] * stride[inner]:
            return size, 1, stride[inner], 0, False
        return size, shape[inner], stride[outer], stride[inner], True

    @property
    def shape(self) -> tuple[int, int]:
        return self.side(self.row_dims)[0], self.side(self.col_dims)[0]


# (device, dtype) -> split-K workspace; device -> ticket counters (int32, zero between launches).
# Grown, never shrunk, so a training step allocates nothing after its first (eager) run; a replaced
# buffer is kept alive, since a captured CUDA graph may still point at it.
_WORKSPACES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
_TICKETS: dict[torch.device, torch.Tensor] = {}
_RETIRED: list[torch.Tensor] = []


def _cached(cache: dict, key: object, numel: int, make: Callable[[int], torch.Tensor]) -> torch.Tensor:
    """A buffer of at least `numel` elements from `cache`, grown (doubling) when too small. While a CUDA
    graph is being captured a too-small buffer is not replaced: the new one lives in the graph's pool."""
    buffer = cache.get(key)
    if buffer is not None and buffer.numel() >= numel:
        return buffer
    capturing = torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()
    grown = make(max(numel, 2 * buffer.numel() if buffer is not None else 0))
    if not capturing:
        if buffer is not None:
            _RETIRED.append(buffer)
        cache[key] = grown
    return grown


def split_buffers(device: torch.device, dtype: torch.dtype, ws_numel: int,
                   tiles: int) -> tuple[torch.Tensor, torch.Tensor]:
    workspace = _cached(_WORKSPACES, (device, dtype), ws_numel,
                        lambda n: torch.empty(n, device=device, dtype=dtype))
    tickets = _cached(_TICKETS, device, tiles, lambda n: torch.zeros(n, device=device, dtype=torch.int32))
    return workspace, tickets


def _k_strides(a: Matrix, b: Matrix) -> tuple[int, int, int, int, int, bool]:
    """(k_inner, A's K strides outer/inner, B's K strides outer/inner, two dims?): one K split for both."""
    _, a_inner, a_out, a_in, a_two = a.side(a.col_dims)
    _, b_inner, b_out, b_in, b_two = b.side(b.row_dims)
    if not (a_two or b_two):
        return 1, a_out, 0, b_out, 0, False
    inner = a_inner if a_two else b_inner
    if a_two and b_two and a_inner != b_inner:
        raise NotImplementedError(f"gemm: A and B split K into different inner sizes ({a_inner}, {b_inner})")
    if not a_two:  # a one-dim side of stride s is (k // inner) * inner * s + (k % inner) * s
        a_out, a_in = inner * a_out, a_out
    if not b_two:
        b_out, b_in = inner * b_out, b_out
    return inner, a_out, a_in, b_out, b_in, True


def _check(a: Matrix, b: Matrix, *others: torch.Tensor | None) -> None:
    tensors = [a.tensor, b.tensor, *(t for t in others if t is not None)]
    dtype, device = tensors[0].dtype, tensors[0].device
    for tensor in tensors:
        if tensor.dtype not in (torch.float32, torch.float64):
            raise NotImplementedError(f"gemm: dtype {tensor.dtype} is not supported (float32, float64)")
        if tensor.dtype != dtype or tensor.device != device:
            raise NotImplementedError(f"gemm: mixed dtypes or devices ({dtype}, {tensor.dtype})")
    if b.side(b.col_dims)[4]:
        raise NotImplementedError("gemm: B's columns must be one dim")
    if a.shape[1] != b.shape[0]:
        raise ValueError(f"gemm: A {a.shape} and B {b.shape} do not chain")


def _splits(tiles: int, k: int, block_k: int) -> tuple[int, int]:
    """(splits, K elements per split): policy.split_k's count, trimmed so that no split is empty."""
    steps = triton.cdiv(k, block_k)
    if steps == 0:
        return 1, block_k
    per_split = triton.cdiv(steps, policy.split_k(tiles, steps))
    return triton.cdiv(steps, per_split), per_split * block_k


def gemm(
    a: torch.Tensor | Matrix,
    b: torch.Tensor | Matrix,
    out: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    act: int = ACT_NONE,
    slope: float = 0.0,
    alpha: float = 1.0,
    accumulate: bool = False,
    pre: torch.Tensor | None = None,
    a_act: int = ACT_NONE,
    a_saved: torch.Tensor | None = None,
    row_sums: torch.Tensor | None = None,
    kind: str = "matmul",
    precision: str | None = None,
) -> torch.Tensor:
    """out = act(alpha * A @ B + bias [+ out]) for A (M, K), B (K, N) of any strides; returns out.

    out: a 2-D (M, N) tensor of any strides, allocated contiguous when None (required with accumulate).
    pre: (M, N) with out's strides, receives the pre-activation. a_act/a_saved: A is read as
    activation_grad(A, a_saved) (a_saved: A's shape, a plain 2-D tensor). row_sums: (M,) receives the
    row sums of (that) A, added to it with accumulate. slope: leaky_relu's, for act and a_act.
    precision: tl.dot input_precision; None asks `policy.dot_precision(kind, ...)`.
    """
    a, b = (x if isinstance(x, Matrix) else Matrix(x) for x in (a, b))
    _check(a, b, out, bias, pre, a_saved, row_sums)
    (m, k), n = a.shape, b.shape[1]
    if out is None:
        if accumulate:
            raise ValueError("gemm: accumulate needs an out tensor")
        out = config.new_empty((m, n), a.tensor)
    assert out.shape == (m, n) and (pre is None or pre.stride() == out.stride())
    assert a_saved is None or (a_saved.shape == (m, k) and not a.side(a.row_dims)[4])
    if a_saved is not None and a_act not in PROLOGUE_ACTIVATIONS:
        raise NotImplementedError(f"gemm: activation {a_act} in the prologue (only {PROLOGUE_ACTIVATIONS})")
    if m == 0 or n == 0:
        if row_sums is not None and m:
            raise NotImplementedError("gemm: row_sums with N = 0 (no tile to sum in); use column_sums")
        return out
    cfg = policy.gemm_config(out.dtype, m, n)
    block_m, block_n, block_k = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
    tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
    splits, split_len = _splits(tiles, k, block_k)
    acc_dtype = tl.float64 if out.dtype == torch.float64 else tl.float32
    workspace, tickets = out, out
    if splits > 1:
        ws_numel = tiles * splits * block_m * block_n + triton.cdiv(m, block_m) * splits * block_m
        workspace, tickets = split_buffers(out.device, out.dtype, ws_numel, tiles)
    _, m_inner, s_am, s_am_in, m_two = a.side(a.row_dims)
    k_inner, s_ak, s_ak_in, s_bk, s_bk_in, k_two = _k_strides(a, b)
    saved = a_saved if a_saved is not None else out
    _gemm_kernel[(tiles, splits)](
        a.tensor, b.tensor, out, bias if bias is not None else out, pre if pre is not None else out, saved,
        row_sums if row_sums is not None else out, workspace, tickets,
        m, n, k, m_inner, k_inner, s_am, s_am_in, s_ak, s_ak_in, s_bk, s_bk_in, b.side(b.col_dims)[2],
        out.stride(0), out.stride(1), saved.stride(0), saved.stride(1),
        bias.stride(0) if bias is not None else 0, row_sums.stride(0) if row_sums is not None else 0,
        splits, split_len,
        ALPHA=float(alpha), HAS_BIAS=bias is not None, ACCUMULATE=accumulate, STORE_PRE=pre is not None,
        ACT=act, SLOPE=float(slope), A_ACT=a_act if a_saved is not None else ACT_NONE,
        ROW_SUMS=row_sums is not None, SPLIT=splits > 1, M_TWO_DIMS=m_two, K_TWO_DIMS=k_two,
        ACC_DTYPE=acc_dtype, PRECISION=precision or policy.dot_precision(kind, out.dtype, out.device), **cfg,
    )
    return out


def column_sums(x: torch.Tensor, out: torch.Tensor | None = None, accumulate: bool = False) -> torch.Tensor:
    """(R, C) of any strides -> (C,): the sums over the rows (a bias gradient), added to out if accumulate."""
    rows, cols = x.shape
    out = config.new_empty((cols,), x) if out is None else out
    cfg = policy.column_sums_config(x.dtype)
    acc_dtype = tl.float64 if x.dtype == torch.float64 else tl.float32
    if cols:
        _column_sums_kernel[(triton.cdiv(cols, cfg["BLOCK_C"]),)](
            x, out, rows, cols, x.stride(0), x.stride(1), out.stride(0),
            ACCUMULATE=accumulate, ACC_DTYPE=acc_dtype, **cfg,
        )
    return out
