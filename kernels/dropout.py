"""Dropout: tensor -> same-shape tensor, elements zeroed with probability p, the rest scaled by 1/(1-p).

The mask is never stored: the kernel draws it from Philox (`tl.rand(seed,
offset)`), and the backward reruns the same kernel on the gradient with the
same seed, so it regenerates exactly the forward's mask.

The seed is a (1,) int64 tensor on the input's device, which the kernel
loads; the host never sees its value. Each call draws a fresh one with
`torch.randint` on that device, i.e. from torch's generator for the device,
whose state (seed and Philox offset) advances on every draw. That keeps a
CUDA graph honest: torch's CUDA generator registers with a capture and
advances its offset on the device at each replay, so every replay writes a
new seed into the same tensor and draws a new mask; no kernel argument
carries host state. Runs are reproducible under `torch.manual_seed` (it
seeds every device's generator), no call syncs with the host, and the
backward reads the seed tensor saved by the forward. `seed=` fixes it.

Element i is kept when `rand(seed, i) >= p`, an event of probability 1 - p.
Output is `x * (keep ? 1/(1-p) : 0)`, a multiplication as in PyTorch, so a
dropped NaN stays NaN. Non-contiguous inputs are made contiguous first.
float32 and float64 only; no `tl.dot`, so no precision choice applies.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config
from netc.kernels.activation import check_dtype
from netc.kernels import costs

_SEED_LIMIT = 2**31 - 1  # seeds stay int32-sized: the masks of explicit seeds are unchanged


def launch_config() -> dict[str, int]:
    """Elements per program and warps: few large programs under the interpreter."""
    if config.interpreting():
        return {"BLOCK": 16384, "num_warps": 1}
    return {"BLOCK": 1024, "num_warps": 4}


@triton.jit(launch_metadata=costs.elementwise("n"))
def _dropout_kernel(
    x_ptr,  # input (forward) or dL/dy (backward), contiguous, n elements
    y_ptr,  # output, contiguous, n elements
    n,  # number of elements (< 2**31)
    seed_ptr,  # (1,) int64 Philox seed; the same value in forward and backward gives the same mask
    P: tl.constexpr,  # drop probability in [0, 1]
    SCALE: tl.constexpr,  # 1 / (1 - p), or 0 when p == 1
    BLOCK: tl.constexpr,  # elements per program
):
    offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < n
    x = tl.load(x_ptr + offsets, mask=mask, other=0.0)
    seed = tl.load(seed_ptr)  # a device value: a replayed CUDA graph reads the new draw
    keep = tl.rand(seed, offsets) >= P  # uniform in [0, 1): kept with probability 1 - p
    tl.store(y_ptr + offsets, tl.where(keep, x * SCALE, x * 0.0), mask=mask)


def _launch(x: torch.Tensor, seed: torch.Tensor, p: float) -> torch.Tensor:
    """Apply the seed's mask to a contiguous copy of x; returns a contiguous tensor of x's shape."""
    x = x.contiguous()
    y = config.new_empty(x.shape, x)
    n = x.numel()
    if n >= 2**31:
        raise NotImplementedError(f"dropout: tensors of 2**31 or more elements (got {n})")
    if n:
        cfg = launch_config()
        scale = 0.0 if p == 1.0 else 1.0 / (1.0 - p)
        _dropout_kernel[(triton.cdiv(n, cfg["BLOCK"]),)](x, y, n, seed, P=p, SCALE=scale, **cfg)
    return y


class _Dropout(torch.autograd.Function):
    """y = x * mask(seed) / (1 - p); saves only the seed tensor, the backward redraws the mask."""

    @staticmethod
    def forward(ctx: Ctx, x: torch.Tensor, p: float, seed: torch.Tensor) -> torch.Tensor:
        ctx.p = p
        ctx.save_for_backward(seed)
        return _launch(x, seed, p)

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (seed,) = ctx.saved_tensors
        return _launch(grad, seed, ctx.p), None, None


def draw_seed(device: torch.device | str) -> torch.Tensor:
    """A fresh Philox seed, (1,) int64 on `device`, from torch's generator for that device (no sync)."""
    return torch.randint(0, _SEED_LIMIT, (1,), dtype=torch.int64, device=device)


def dropout(
    input: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    *,
    seed: int | None = None,
) -> torch.Tensor:
    """Like torch.nn.functional.dropout; `seed` (0 <= seed < 2**31 - 1) fixes the mask."""
    if p < 0.0 or p > 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    if inplace:
        raise NotImplementedError("dropout: inplace=True is not supported")
    check_dtype("dropout", input)
    if not training or p == 0.0:
        return input
    if seed is None:
        seed_tensor = draw_seed(input.device)
    elif not 0 <= seed < _SEED_LIMIT:
        raise ValueError(f"dropout: seed must be in [0, {_SEED_LIMIT}), got {seed}")
    else:
        seed_tensor = torch.full((1,), int(seed), dtype=torch.int64, device=input.device)
    return _Dropout.apply(input, float(p), seed_tensor)
