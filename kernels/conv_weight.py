"""conv2d's output gradient and input -> its weight and bias gradients, one split-K Triton launch.

The weight gradient is a GEMM whose output is small (OC/groups x C/groups*KH*KW:
10 x 25 for LeNet's first conv) and whose reduction is long (N*OH*OW: 57,600 at
batch 100), so one CTA per output tile would leave the GPU nearly idle. The
reduction is split across `policy.split_k` CTAs per tile, in ONE launch, with a
deterministic sum:
- each CTA of a split writes its partial tile (float32, or float64 for float64
  inputs) to a workspace;
- it then takes a ticket from its tile's counter (`tl.atomic_add`, acq_rel); the
  CTA that draws the last ticket adds all partials in split order (L2 loads,
  `.cg`), so the result does not depend on which CTA finished last, writes dW
  (and db) and puts the counter back to 0, so the next launch, or the next
  replay of a captured CUDA graph, finds it zeroed.
The bias gradient (row sums of the output gradient) comes from the same launch:
the CTAs of the first tile column add up the rows of the tiles they load anyway.
The workspace, the counters and the split-K helper are kernels/gemm.py's (one
scheme for every GEMM): launches on one stream run one after another, and each
leaves the counters at 0.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from netc.kernels import config, costs, policy
from netc.kernels.activation import activation_grad
from netc.kernels.conv_geometry import Geometry
from netc.kernels.gemm import gather_splits  # split-K: partials, tickets, last CTA
from netc.kernels.gemm import split_buffers


@triton.jit
def mac(acc, a, b, USE_DOT: tl.constexpr, PRECISION: tl.constexpr):
    """acc (BM, BN) += a (BM, BK) @ b (BK, BN): tl.dot for float32, a sum of products for float64."""
    if USE_DOT:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    else:
        acc += tl.sum(a[:, :, None] * b[None, :, :], axis=1)
    return acc


@triton.jit(launch_metadata=costs.conv2d("bwd_weight"))
def _conv2d_bwd_weight_kernel(
    dy_ptr,  # (N, OC, OH, OW) gradient w.r.t. the output (after the activation), any strides
    y_ptr,  # (N, OC, OH, OW) forward output, contiguous (read only when ACT != 0)
    x_ptr,  # (N, C, H, W) input, any strides
    dw_ptr,  # (OC, CG * KH * KW) weight gradient, contiguous
    db_ptr,  # (OC,) bias gradient (unused unless HAS_BIAS)
    ws_ptr,  # split-K workspace (accumulator dtype; unused unless SPLIT)
    ticket_ptr,  # (tiles,) int32 split-K tickets, zero between launches (unused unless SPLIT)
    sdn, sdc, sdh, sdw,  # output-gradient strides
    sxn, sxc, sxh, sxw,  # input strides
    H, W, OH, OW,  # input and output spatial sizes
    K,  # GEMM depth: N * OH * OW
    k_per_split,  # reduction length per split, a multiple of BLOCK_K
    splits,  # CTAs per output tile (grid axis 2 is groups * splits)
    CG, OCG,  # input / output channels per group
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    slope,  # leaky_relu's negative slope
    KH: tl.constexpr, KW: tl.constexpr, HAS_BIAS: tl.constexpr, ACT: tl.constexpr,
    USE_DOT: tl.constexpr, PRECISION: tl.constexpr,  # tl.dot (float32) or sums of products; dot precision
    SPLIT: tl.constexpr,  # splits > 1: partials through the workspace, the last CTA stores
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """dw = dz^T (*) x, a GEMM OC/groups x (C/groups*KH*KW) x (N*OH*OW) per group; db = row sums of dz.

    Precision: float32 tl.dot at PRECISION with a float32 accumulator (db too); float64: float64 sums."""
    pid_m, pid_n = tl.program_id(0), tl.program_id(1)
    group, split = tl.program_id(2) // splits, tl.program_id(2) % splits
    groups = tl.num_programs(2) // splits
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output channel within the group
    row_ok = rows < OCG
    oc = group * OCG + rows
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # flat (c, kh, kw)
    col_ok = cols < CG * KH * KW
    kw = cols % KW
    kh = (cols // KW) % KH
    c = group * CG + cols // (KW * KH)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dw_ptr.dtype.element_ty)
    sums = tl.zeros((BLOCK_M,), dtype=dw_ptr.dtype.element_ty)
    k_start = split * k_per_split
    k_end = tl.minimum(K, k_start + k_per_split)
    for k0 in range(k_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)  # flat (n, oh, ow)
        k_ok = ks < k_end
        ow = ks % OW
        oh = (ks // OW) % OH
        n = (ks // (OW * OH)).to(tl.int64)
        a_ok = row_ok[:, None] & k_ok[None, :]
        a_off = oc[:, None] * sdc + (n * sdn + oh * sdh + ow * sdw)[None, :]
        a = tl.load(dy_ptr + a_off, mask=a_ok, other=0.0)
        if ACT != 0:  # dL/dz = dL/dy * act'(saved output)
            y_off = (n[None, :] * (OCG * groups) + oc[:, None]) * (OH * OW) + (oh * OW + ow)[None, :]
            a = activation_grad(a, tl.load(y_ptr + y_off, mask=a_ok, other=0.0), ACT, slope)
        ih = oh[:, None] * stride_h - pad_h + kh[None, :] * dil_h
        iw = ow[:, None] * stride_w - pad_w + kw[None, :] * dil_w
        b_ok = k_ok[:, None] & col_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b = tl.load(x_ptr + n[:, None] * sxn + c[None, :] * sxc + ih * sxh + iw * sxw, mask=b_ok, other=0.0)
        acc = mac(acc, a, b, USE_DOT, PRECISION)
        if HAS_BIAS:
            sums += tl.sum(a, axis=1)
    last = True
    if SPLIT:
        tile = (group * tl.num_programs(0) + pid_m) * tl.num_programs(1) + pid_n
        tiles = groups * tl.num_programs(0) * tl.num_programs(1)
        acc, sums, last = gather_splits(acc, sums, tile, group * tl.num_programs(0) + pid_m, pid_n == 0,
                                         split, splits, tiles, ws_ptr, ticket_ptr, HAS_BIAS, BLOCK_M, BLOCK_N)
    if last:
        dw_off = oc[:, None] * (CG * KH * KW) + cols[None, :]
        tl.store(dw_ptr + dw_off, acc, mask=row_ok[:, None] & col_ok[None, :])
        if HAS_BIAS:
            if pid_n == 0:  # one column of tiles owns the bias
                tl.store(db_ptr + oc, sums, mask=row_ok)


def launch_settings(dtype: torch.dtype, device: torch.device, ocg: int, cols: int, depth: int,
                    groups: int) -> dict[str, int | str | bool]:
    """Tiles, warps, precision and split count of the weight-gradient GEMM (OCG x cols x depth per group)."""
    tiles = policy.conv_tiles("bwd_weight", dtype, (ocg, cols, depth))
    output_tiles = triton.cdiv(ocg, tiles.block_m) * triton.cdiv(cols, tiles.block_n) * groups
    splits = policy.split_k(output_tiles, triton.cdiv(depth, tiles.block_k))
    return dict(
        USE_DOT=dtype == torch.float32, PRECISION=policy.dot_precision("conv", dtype, device),
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k,
        num_warps=tiles.num_warps, num_stages=tiles.num_stages, splits=splits,
    )


def backward_weight(
    dz: torch.Tensor, y: torch.Tensor, x: torch.Tensor, w_shape: torch.Size, geo: Geometry, act: int,
    slope: float, with_bias: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(dW (OC, CG, KH, KW), db (OC,) or None) from dz (N, OC, OH, OW), the saved y and x (N, C, H, W)."""
    out_channels, cg, kh, kw = w_shape
    dw = config.new_empty(w_shape, x)
    db = config.new_empty((out_channels,), x) if with_bias else None
    ocg, cols = out_channels // geo.groups, cg * kh * kw
    depth = x.shape[0] * geo.out_hw[0] * geo.out_hw[1]
    args = launch_settings(x.dtype, x.device, ocg, cols, depth, geo.groups)
    steps = triton.cdiv(depth, args["BLOCK_K"])
    steps_per_split = triton.cdiv(steps, int(args.pop("splits")))
    splits = triton.cdiv(steps, steps_per_split)  # no empty split
    grid = (triton.cdiv(ocg, args["BLOCK_M"]), triton.cdiv(cols, args["BLOCK_N"]), geo.groups * splits)
    ws, tickets = dw, dw  # stand-ins: never read without SPLIT
    if splits > 1:
        tiles = grid[0] * grid[1] * geo.groups
        tile_rows = grid[0] * geo.groups
        ws_numel = (tiles * args["BLOCK_N"] + tile_rows) * splits * args["BLOCK_M"]  # partial tiles, row sums
        ws, tickets = split_buffers(x.device, x.dtype, ws_numel, tiles)
    _conv2d_bwd_weight_kernel[grid](
        dz, y, x, dw, db if with_bias else dw, ws, tickets, *dz.stride(), *x.stride(), *x.shape[2:],
        *geo.out_hw, depth, steps_per_split * args["BLOCK_K"], splits, cg, ocg,
        *geo.stride, *geo.pad, *geo.dilation, slope,
        KH=kh, KW=kw, HAS_BIAS=with_bias, ACT=act, SPLIT=splits > 1, **args,
    )  # fmt: skip
    return dw, db
