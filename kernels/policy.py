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

from typing import TYPE_CHECKING

from netc.kernels.config import interpreting

if TYPE_CHECKING:
    import torch

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

# -- conv --

# -- pool --

# -- elementwise (activations, dropout) --

# -- normalization (batch_norm, layer_norm) --

# -- loss --

# -- recurrent --

# -- optimizers --
