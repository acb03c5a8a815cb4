"""Launch and precision policy for every kernel family: (op kind, dtype, device, problem size) -> settings.

The one place that decides
- which `tl.dot` input precision a product runs at (`dot_precision`), following
  PyTorch's own switches so netc's numbers match what a PyTorch user gets:
  convolutions follow `torch.backends.cudnn.allow_tf32` (True by default, as
  cuDNN convolutions use TF32), matmuls (linear, recurrent projections, weight
  gradients of linear layers) follow `torch.get_float32_matmul_precision()`
  ("highest" -> ieee, "high"/"medium" -> tf32); float64 always multiplies in
  float64; the interpreter always runs ieee (numpy has no TF32);
- how a long reduction is split across CTAs (`split_k`), so a small output over
  a long reduction (a weight gradient) still fills the GPU;
- the tiles, warps and stages of each family (one section per family below).

Whether Triton runs interpreted is decided in `netc.kernels.config`, not here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING

from netc.kernels import config

if TYPE_CHECKING:
    import torch


def interpreting() -> bool:
    """config.interpreting(), looked up at each call: runtime/plan.py swaps it to trace either target."""
    return config.interpreting()


# The GPU netc is tuned for (NVIDIA H200, sm_90): streaming multiprocessors per device.
SM_COUNT = 132

PRECISIONS = ("ieee", "tf32", "tf32x3")
DOT_KINDS = ("conv", "matmul")


def dot_precision(kind: str, dtype: torch.dtype, device: torch.device) -> str:
    """The `tl.dot` input_precision for a float product of `kind` ("conv" or "matmul").

    float64 and the interpreter: "ieee" (exact float32/float64 products, PyTorch's
    CPU numbers). On CUDA, float32: "tf32" where PyTorch itself would use TF32
    (see the module docstring), else "ieee".
    """
    import torch

    if kind not in DOT_KINDS:
        raise ValueError(f"unknown dot kind {kind!r}; expected one of {DOT_KINDS}")
    if dtype != torch.float32 or device.type != "cuda" or interpreting():
        return "ieee"
    if kind == "conv":
        return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def split_k(output_tiles: int, k_steps: int, min_steps_per_split: int = 4) -> int:
    """How many CTAs share one output tile's reduction of `k_steps` BLOCK_K steps.

    Enough splits that output_tiles * splits reaches about the SM count, but each
    split keeps at least `min_steps_per_split` steps (fewer would spend more on
    the partial-sum pass than the split saves). The interpreter runs programs
    one after another, so it never splits.
    """
    if interpreting() or output_tiles >= SM_COUNT or k_steps < 2 * min_steps_per_split:
        return 1
    wanted = -(-SM_COUNT // output_tiles)  # ceil: CTAs per tile to cover the SMs
    return max(1, min(wanted, k_steps // min_steps_per_split))


# ---- per-family launch settings ------------------------------------------------------------------
# Each family adds its section here (tiles, warps, stages for the GPU and the interpreter);
# kernels/<family>.py reads its settings from this module and keeps none of its own.

# -- gemm (linear, recurrent projections, weight gradients) --
# GPU: 64 x 64 output tiles, 32-deep K steps in 3 stages (tensor-core shapes for tf32) over 8 warps
# (at 4, the split-K + row-sum + two-dim-K variant spills ~200 bytes on sm_90; at 8 none does);
# float64 takes 32 x 32 x 16 in 4 warps (a 64 x 64 float64 tile with gelu's float64 erf in the
# epilogue spills 944 bytes). The interpreter runs programs one after another and numpy does the
# dot, so it takes the largest tiles.
GEMM_GPU = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
# a small output (fewer 64 x 64 tiles than half the SMs, e.g. LeNet's 100 x 50 and 50 x 1440) takes 32 x 32
# tiles: 4x the CTAs (mma.sync tensor cores under tf32 instead of wgmma, which needs 64 rows), still in
# 8 warps so each SM has warps to hide latency with (netc bench --static: LeNet 37.5 -> 34.5 us at 4 -> 8)
GEMM_GPU_SMALL = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 8, "num_warps": 8, "num_stages": 3}
GEMM_GPU_FLOAT64 = {"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 8, "num_warps": 4,
                    "num_stages": 3}
GEMM_INTERPRETER = {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8, "num_warps": 4,
                    "num_stages": 1}
COLUMN_SUMS_GPU = {"BLOCK_R": 64, "BLOCK_C": 64, "num_warps": 4}
COLUMN_SUMS_INTERPRETER = {"BLOCK_R": 256, "BLOCK_C": 64, "num_warps": 1}


def gemm_config(dtype: torch.dtype, m: int = 0, n: int = 0) -> dict[str, int]:
    """Tiles (BLOCK_M/N/K >= 16), GROUP_M, warps and stages of kernels/gemm.py's GEMM for an (m, n)
    output (0: unknown, the large tiles)."""
    import torch

    if interpreting():
        return dict(GEMM_INTERPRETER)
    if dtype == torch.float64:
        return dict(GEMM_GPU_FLOAT64)
    big_tiles = -(-m // GEMM_GPU["BLOCK_M"]) * -(-n // GEMM_GPU["BLOCK_N"])
    return dict(GEMM_GPU_SMALL if m and n and big_tiles < SM_COUNT // 2 else GEMM_GPU)


def column_sums_config(dtype: torch.dtype) -> dict[str, int]:
    """BLOCK_R rows per step, BLOCK_C columns per program, warps of the column-sum kernel."""
    return dict(COLUMN_SUMS_INTERPRETER if interpreting() else COLUMN_SUMS_GPU)

# -- conv --
# Implicit GEMMs (conv.py): fwd (N*OH*OW) x OC/g x (C/g*KH*KW), bwd_input (N*H*W) x C/g x (OC/g*KH*KW),
# bwd_weight OC/g x (C/g*KH*KW) x (N*OH*OW). On the GPU every float32 tile side is >= 16 (tl.dot's
# minimum) and the tiles are sized so the sm_90 compile keeps every variant free of spills (see
# tests/test_kernels_conv.py); float64 multiplies without tl.dot (a BLOCK_M x BLOCK_K x BLOCK_N
# broadcast product lives in registers), so its tiles stay small.


@dataclass(frozen=True)
class ConvTiles:
    """One conv GEMM launch: tile rows x cols x depth, warps, software-pipeline stages."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int


CONV_KINDS = ("fwd", "bwd_input", "bwd_weight")


def conv_tiles(kind: str, dtype: torch.dtype, gemm: tuple[int, int, int]) -> ConvTiles:
    """Tiles for conv GEMM `kind` of size gemm = (rows M, cols N, depth K) on this target."""
    if kind not in CONV_KINDS:
        raise ValueError(f"unknown conv kind {kind!r}; expected one of {CONV_KINDS}")
    return _conv_tiles(kind, dtype, gemm, interpreting())


@functools.cache
def _conv_tiles(kind: str, dtype: torch.dtype, gemm: tuple[int, int, int], interpreted: bool) -> ConvTiles:
    import torch

    if interpreted:
        return _interpreter_tiles(dtype, *gemm)
    if dtype == torch.float64:
        return ConvTiles(16, 16, 16, 4, 1)
    if kind == "bwd_weight":  # few output tiles (OC/g x C/g*KH*KW), a long split reduction
        # two stages: with three, the unsplit 128 -> 128 3x3 variant of resnet.net spilled 16 B
        # per thread on sm_90 (80 registers); two keep every example's variants free of spills
        rows, cols, _ = gemm
        return ConvTiles(_fit(rows, 16, 32), _fit(cols, 16, 32), 32, 4, 2)
    return ConvTiles(64, 32, 16, 4, 3)


def _fit(size: int, low: int, high: int) -> int:
    """The power of two covering `size`, clamped to [low, high]."""
    return max(low, min(high, 1 << max(0, size - 1).bit_length()))


def _interpreter_tiles(dtype: torch.dtype, rows: int, cols: int, depth: int) -> ConvTiles:
    """The interpreter runs programs and loop steps one after another at a high fixed cost each:
    tiles sized to the problem, as few programs and K steps as a memory budget allows."""
    import torch

    block_m, block_n, block_k = _fit(rows, 16, 1 << 14), _fit(cols, 16, 64), _fit(depth, 16, 1 << 14)
    product_cap = 1 << 20 if dtype == torch.float64 else 1 << 30  # float64's 3-D product; Triton's max
    while block_m * block_k > 1 << 18 or block_m * block_k * block_n > product_cap:
        if block_m >= block_k:
            block_m //= 2
        else:
            block_k //= 2
    return ConvTiles(block_m, block_n, block_k, 1, 1)

# -- pool --


def pool_block(elements: int) -> tuple[int, int]:
    """(elements per program, warps) for a pooling launch over `elements` outputs or inputs.

    The interpreter gets few, large blocks (it runs programs one after another)."""
    if interpreting():
        return _fit(elements, 16, 1 << 14), 1
    return 256, 4

# -- elementwise (activations, dropout) --


def elementwise_config() -> dict[str, int]:
    """BLOCK and warps of a flat elementwise kernel: few large programs under the interpreter."""
    if interpreting():
        return {"BLOCK": 16384, "num_warps": 1}
    return {"BLOCK": 1024, "num_warps": 4}


# -- normalization (batch_norm, layer_norm) --

NORM_TILE = 1024  # elements per (rows x channels) tile of the reductions and elementwise passes
NORM_MIN_STEPS = 4  # tiles each CTA of a split reduction reads at least (fewer: the combine dominates)
NORM_MAX_SPLITS = 512  # CTAs sharing one channel block's reduction (the combine reads them all)


def norm_tile(channels: int, channels_minor: bool) -> tuple[int, int, int]:
    """(BLOCK_R rows, BLOCK_C channels, warps) of a batch-norm tile, or of a layer-norm column reduction.

    Channels-minor layouts ((N, C) rows, channels_last) read a row of up to 64 channels
    at once, coalesced; channels-major ones (NCHW: each channel's N*H*W values are runs
    of H*W) read one channel per tile along its rows.
    """
    block_c = min(64, triton_pow2(channels)) if channels_minor else 1
    return max(1, NORM_TILE // block_c), block_c, 1 if interpreting() else 4


def norm_splits(channel_blocks: int, rows: int, block_r: int) -> int:
    """How many CTAs split each channel block's reduction over `rows`: enough for ~2 CTAs per SM.

    The interpreter runs programs one after another: at most 2 (the combine still runs).
    """
    steps = -(-rows // block_r)
    if interpreting():
        return max(1, min(steps, 2))
    wanted = -(-2 * SM_COUNT // channel_blocks)
    # each CTA reads at least NORM_MIN_STEPS tiles, unless that leaves SMs idle (64 channels of
    # 128 x 7 x 7: 7 tiles each, one CTA per channel): then down to one tile per CTA, to fill them
    filling = min(steps, -(-SM_COUNT // channel_blocks))
    return max(1, min(wanted, max(steps // NORM_MIN_STEPS, filling), NORM_MAX_SPLITS))


def layer_norm_tile(row_len: int, dtype_bytes: int) -> tuple[int, int, int]:
    """(BLOCK_M rows, BLOCK_N columns, warps) of the row-wise layer-norm kernels.

    A row of up to 8192 float32 (4096 float64) values stays in registers (one pass over
    memory); longer rows loop over BLOCK_N columns three times. Short rows share a
    program so each one still moves ~2048 elements; 4 float32 (2 float64) values
    per thread keep the backward's live tiles near 128 registers, unspilled.
    """
    block_n = min(triton_pow2(row_len), 32768 // dtype_bytes)
    block_m = max(1, min(64, 2048 // block_n))
    warps = 1 if interpreting() else min(16, max(1, block_m * block_n * dtype_bytes // 2048))
    return block_m, block_n, warps


def adaptive_pool_tile(window: int) -> tuple[int, int, int]:
    """(BLOCK outputs, BLOCK_K window elements, warps) of adaptive average pooling, a reduction too.

    A global pool (window = H*W, say 784) reads 256-element strips of 4 planes per step;
    small windows take more outputs per program.
    """
    block_k = min(256, triton_pow2(window))
    return max(1, NORM_TILE // block_k), block_k, 1 if interpreting() else 4


def triton_pow2(n: int) -> int:
    """The smallest power of 2 >= n (>= 1), as triton.next_power_of_2 (no triton import here)."""
    return 1 << max(0, int(n) - 1).bit_length()

# -- loss --
# cross-entropy tiles hold BLOCK_R rows x BLOCK_C classes (classes looped in chunks of up to 1024). On
# the GPU: up to 128 rows (MNIST batches) x 16 class slots fit one 8-warp program, which then finishes
# the mean's gradient itself (no backward launch); larger problems take 512-element, 4-warp tiles.
# Both keep every float32 variant free of spills on sm_90 (8 and 4 elements per thread; a few float64
# variants spill 8-24 bytes). The interpreter takes 16384-element tiles (programs run one by one).


def loss_tiles(rows: int, classes: int) -> dict[str, int]:
    """{"BLOCK_R", "BLOCK_C", "num_warps"} for a cross-entropy over `rows` rows of `classes` classes."""
    block_c = _fit(classes, 16, 1024)
    all_rows = _fit(rows, 1, 1 << 30)
    if interpreting():
        return {"BLOCK_R": min(max(1, (1 << 14) // block_c), all_rows), "BLOCK_C": block_c, "num_warps": 1}
    if all_rows * block_c <= 2048:
        return {"BLOCK_R": all_rows, "BLOCK_C": block_c, "num_warps": 8}
    return {"BLOCK_R": max(1, 512 // block_c), "BLOCK_C": block_c, "num_warps": 4}


# -- recurrent --
# The persistent sequence kernels give a program BLOCK_N batch rows of one direction for all T
# steps; each step walks the hidden units in column blocks of BLOCK_J, reading h_{t-1} back from
# the output (and the lstm cell from its buffer) in (BLOCK_N, BLOCK_K) chunks against
# (BLOCK_K, BLOCK_J) weight chunks, so registers hold a few (BLOCK_N, BLOCK_J) tiles whatever H is.
# Whole (BLOCK_H, BLOCK_H) tiles spilled 7-10 KB per thread on sm_90 under the ieee (FMA) dot,
# whose operand layouts replicate the B tile across threads. The interpreter runs programs one
# after another and pays per operation, so it takes the largest blocks.


@dataclass(frozen=True)
class RecurrentConfig:
    """Block sizes, warps and stages of the recurrent family's own launches (its GEMMs and column
    sums are kernels/gemm.py's, tiled by the gemm section); one per target."""

    seq_block_n: int  # batch rows per persistent program, at most (>= 16: the dot's M)
    seq_tiles: dict[str, tuple[int, int]]  # "rnn"/"lstm"/"gru" -> (BLOCK_J units per column block, warps)
    seq_block_k: int  # K chunk of the persistent kernels' recurrent dots (>= 16)
    max_hidden: int  # largest hidden size the persistent kernels take
    seq_stages: int  # num_stages of the persistent kernels
    seq_maxnreg: int  # ptxas register ceiling of the persistent kernels (see below)
    step_block: tuple[int, int]  # BLOCK_N, BLOCK_H of the per-step fallback's cell launches
    step_warps: int


# Tiles per cell: the lstm's four gates take the narrower column block. Left to itself, ptxas (13.4,
# via triton 3.9) capped some variants at 80-128 registers and spilled 8-16 bytes a thread; with
# `.maxnreg 255` it takes what it needs (up to ~210) and spills nothing. A program per 16 batch rows
# and direction is 7-14 CTAs at batch 100, so occupancy is not what limits these kernels.
RECURRENT_GPU = RecurrentConfig(seq_block_n=16,
                                seq_tiles={"rnn": (32, 8), "lstm": (16, 8), "gru": (32, 8)}, seq_block_k=16,
                                max_hidden=1024, seq_stages=1, seq_maxnreg=255, step_block=(16, 128),
                                step_warps=4)
RECURRENT_INTERPRETER = RecurrentConfig(seq_block_n=64,
                                        seq_tiles={"rnn": (256, 4), "lstm": (256, 4), "gru": (256, 4)},
                                        seq_block_k=256, max_hidden=1024, seq_stages=1, seq_maxnreg=255,
                                        step_block=(64, 256), step_warps=4)


def recurrent_config() -> RecurrentConfig:
    """The recurrent family's launch settings for where Triton runs now."""
    return RECURRENT_INTERPRETER if interpreting() else RECURRENT_GPU


def recurrent_precision(dtype: torch.dtype, device: torch.device) -> str:
    """The `tl.dot` input_precision of every recurrent product (the recurrence, projections, gradients).

    On CUDA, PyTorch runs nn.RNN/LSTM/GRU through cuDNN, whose RNN math type follows
    `torch.backends.cudnn.allow_tf32` (TF32 by default), the switch of convolutions.
    """
    return dot_precision("conv", dtype, device)


# -- optimizers --
