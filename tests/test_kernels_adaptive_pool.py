"""adaptive_avg_pool2d kernel vs torch.nn.functional in float64 and float32: outputs and input gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import check

from netc.kernels.adaptive_pool import adaptive_avg_pool2d

# id -> (input shape, output_size): global, exact, overlapping windows, upsampling, None, unbatched
CASES: dict[str, tuple[tuple[int, ...], object]] = {
    "global": ((2, 3, 9, 7), 1),
    "global-28x28": ((2, 2, 28, 28), (1, 1)),
    "exact": ((2, 3, 12, 10), (4, 5)),
    "overlapping": ((2, 3, 8, 8), (5, 7)),
    "odd-3": ((1, 3, 5, 6), 3),
    "upsample": ((1, 2, 4, 3), (5, 7)),
    "none-keeps-size": ((2, 2, 6, 5), (None, 3)),
    "unbatched": ((3, 7, 9), (2, None)),
}


def _compare(x: torch.Tensor, output_size: object, grad_strided: bool = False) -> None:
    x_ref = x.detach().double().requires_grad_()
    x_ours = x.detach().requires_grad_()
    y_ref = F.adaptive_avg_pool2d(x_ref, output_size)
    y = adaptive_avg_pool2d(x_ours, output_size)
    dy = torch.randn_like(y_ref)
    dy_ours = dy.to(x.dtype)
    if grad_strided:
        dy_ours = dy_ours.transpose(-1, -2).contiguous().transpose(-1, -2)
    (dx_ref,) = torch.autograd.grad(y_ref, x_ref, dy)
    (dx,) = torch.autograd.grad(y, x_ours, dy_ours)
    check("adaptive_avg_pool2d:forward", y, y_ref, x.dtype)
    check("adaptive_avg_pool2d:grad_input", dx, dx_ref, x.dtype)


@pytest.mark.parametrize(("shape", "output_size"), CASES.values(), ids=CASES.keys())
def test_matches_torch_float64(shape: tuple[int, ...], output_size: object, device: str) -> None:
    _compare(torch.randn(shape, dtype=torch.float64, device=device), output_size)


def test_non_contiguous_and_float32(device: str) -> None:
    x = torch.randn(2, 3, 10, 9, dtype=torch.float64, device=device)
    _compare(x.to(memory_format=torch.channels_last), (3, 4), grad_strided=True)
    _compare(x[:, ::2, 1::2], 2)
    _compare(x.float().transpose(-1, -2), (4, 3))
    _compare(x.float(), 1)


def test_rejections(device: str) -> None:
    x = torch.randn(2, 3, 4, 4, device=device)
    with pytest.raises(ValueError, match="output_size"):
        adaptive_avg_pool2d(x, (1, 2, 3))
    with pytest.raises(ValueError, match="output size"):
        adaptive_avg_pool2d(x, (-1, 2))
    with pytest.raises(NotImplementedError, match="float16"):
        adaptive_avg_pool2d(x.half(), 1)
    with pytest.raises(ValueError, match="3-D or 4-D"):
        adaptive_avg_pool2d(x[0, 0], 1)
