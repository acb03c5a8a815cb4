"""conv2d's arguments -> the checked geometry its kernels index with (pads as PyTorch pads, output size).

Kept apart from the kernels in `conv.py`: this is plain host-side argument
handling, the same rules as `torch.nn.functional.conv2d`, with PyTorch's
error types (`ValueError` for bad values, `NotImplementedError` for what the
kernels do not support).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Pair = tuple[int, int]
Tensor = torch.Tensor


@dataclass(frozen=True)
class Geometry:
    """Everything the index math needs besides tensor sizes; pads are the top / left ones."""

    stride: tuple[int, int]
    pad: tuple[int, int]
    dilation: tuple[int, int]
    groups: int
    out_hw: tuple[int, int]


def _pair(value: int | Pair | list[int], name: str) -> Pair:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
        raise ValueError(f"conv2d: {name} must be an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _pads(padding: object, kernel: Pair, stride: Pair, dilation: Pair) -> tuple[Pair, Pair]:
    """(top, left) pads and the total extra rows / columns, as PyTorch pads them."""
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        if stride != (1, 1):
            raise ValueError("conv2d: padding='same' needs stride 1")
        totals = tuple(d * (k - 1) for d, k in zip(dilation, kernel, strict=True))
        return tuple(t // 2 for t in totals), totals  # the odd pad goes to the bottom / right
    if isinstance(padding, str):
        raise ValueError(f"conv2d: padding must be 'same', 'valid', an int or a pair, got {padding!r}")
    pad = _pair(padding, "padding")  # type: ignore[arg-type]
    if min(pad) < 0:
        raise ValueError(f"conv2d: padding must be >= 0, got {padding!r}")
    return pad, (2 * pad[0], 2 * pad[1])


def geometry(
    x: Tensor, weight: Tensor, stride: int | Pair, padding: int | Pair | str, dilation: int | Pair,
    groups: int,
) -> Geometry:
    stride_hw, dilation_hw = _pair(stride, "stride"), _pair(dilation, "dilation")
    if min(stride_hw) < 1 or min(dilation_hw) < 1 or groups < 1:
        raise ValueError("conv2d: stride, dilation and groups must be >= 1")
    channels, out_channels = x.shape[1], weight.shape[0]
    if channels % groups or out_channels % groups or weight.shape[1] * groups != channels:
        raise ValueError(
            f"conv2d: weight {tuple(weight.shape)} and groups={groups} do not fit {channels} input channels"
        )
    kernel = (weight.shape[2], weight.shape[3])
    pad, pad_total = _pads(padding, kernel, stride_hw, dilation_hw)
    out_hw = tuple(
        (size + extra - d * (k - 1) - 1) // s + 1
        for size, extra, d, k, s in zip(x.shape[2:], pad_total, dilation_hw, kernel, stride_hw, strict=True)
    )
    if min(out_hw) < 1:
        raise ValueError(f"conv2d: kernel {kernel} does not fit the padded input {tuple(x.shape[2:])}")
    return Geometry(stride_hw, pad, dilation_hw, groups, out_hw)  # type: ignore[arg-type]


def check_tensors(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    if x.dtype not in (torch.float32, torch.float64):
        raise NotImplementedError(f"conv2d: dtype {x.dtype} (float32 and float64 only)")
    if x.dim() not in (3, 4) or weight.dim() != 4:
        shapes = f"{tuple(x.shape)}, {tuple(weight.shape)}"
        raise ValueError(f"conv2d: expected a 3-D or 4-D input and a 4-D weight, got {shapes}")
    others = [weight] + ([bias] if bias is not None else [])
    if any(t.dtype != x.dtype or t.device != x.device for t in others):
        raise NotImplementedError("conv2d: mixed dtypes or devices between input, weight and bias")
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"conv2d: bias shape {tuple(bias.shape)} != ({weight.shape[0]},)")
