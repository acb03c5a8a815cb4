"""Fully connected layer: input (..., in), weight (out, in), bias (out,) -> (..., out), with autograd.

`linear` is torch.nn.functional.linear; `linear_act` fuses bias and an
activation (any of activation.py's: "relu", "tanh", "sigmoid", "leaky_relu",
"gelu", "gelu_tanh", "silu") into the GEMM epilogue. Any number of leading dimensions is
flattened to rows, e.g. a [T, F] sequence per sample (N, T, F) becomes (N*T, F).

Every product runs kernels/gemm.py's one GEMM, reading transposes as strides:
forward y = act(x @ W^T + b) (1 launch), backward dL/dx = dL/dz @ W and
dL/dW = dL/dz^T @ x with dL/db = colsum(dL/dz) fused into the latter (2
launches). dL/dz = act'(saved) * dL/dy is not materialized for relu, tanh,
sigmoid and leaky_relu: both backward GEMMs apply it as they load dL/dy (gelu
and silu take one elementwise launch first). Dots run at `policy.dot_precision("matmul",
...)`: ieee (PyTorch's float32 result) unless torch's float32 matmul precision
allows TF32 on CUDA; float64 inputs dot in float64. Accumulation is float32
(float64 for float64).

The backward reads the activation's OUTPUT y where PyTorch's own backward does
(relu, tanh, sigmoid, leaky_relu with a slope >= 0); where the output does not
determine the derivative (`activation.backward_needs_input`: gelu, silu, a
negative leaky_relu slope) the forward epilogue also stores the pre-activation
z and the backward reads that.
"""

from __future__ import annotations

import math

import torch
from torch.autograd.function import FunctionCtx as Ctx

from netc.kernels import config
from netc.kernels.activation import (
    ACT_LEAKY_RELU,
    ACT_NONE,
    ACTIVATIONS,
    activation_backward,
    backward_needs_input,
    check_dtype,
)
from netc.kernels.gemm import PROLOGUE_ACTIVATIONS, column_sums, gemm

class _LinearAct(torch.autograd.Function):
    """z = x @ W^T + b, y = act(z) over 2-D x (M, K); saves x, W and y (when act is not None)."""

    @staticmethod
    def forward(
        ctx: Ctx,
        x: torch.Tensor,  # (M, K)
        weight: torch.Tensor,  # (N, K)
        bias: torch.Tensor | None,  # (N,)
        act: int,
        slope: float,
    ) -> torch.Tensor:
        pre = None
        if backward_needs_input(act, slope):
            pre = config.new_empty((x.shape[0], weight.shape[0]), x)
        y = gemm(x, weight.t(), bias=bias, act=act, slope=slope, pre=pre)  # (M, N)
        saved = None if act == ACT_NONE else (y if pre is None else pre)
        ctx.save_for_backward(x, weight, saved)
        ctx.act, ctx.slope, ctx.has_bias = act, slope, bias is not None
        return y

    @staticmethod
    def backward(ctx: Ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, saved = ctx.saved_tensors  # saved: y or z (M, N), None without an activation
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        need_b = need_b and ctx.has_bias
        fuse_b = need_b and need_w and x.shape[1] > 0  # dW's launch also sums dL/dz's columns
        act = ctx.act
        # dL/dz once, elementwise, when the bias gradient alone reads it (rare) or when act' is too
        # costly to recompute at every K step of two GEMMs (gelu, silu)
        if act != ACT_NONE and ((need_b and not fuse_b) or act not in PROLOGUE_ACTIVATIONS):
            grad, act = activation_backward(grad, saved, act, ctx.slope), ACT_NONE
        prologue = {"a_act": act, "a_saved": saved, "slope": ctx.slope} if act != ACT_NONE else {}
        grad_b = config.new_empty((weight.shape[0],), grad) if need_b else None
        grad_x = gemm(grad, weight, **prologue) if need_x else None  # (M, N) @ (N, K)
        grad_w = None
        if need_w:  # (N, M) @ (M, K), row sums of dL/dz^T = the bias gradient
            if act != ACT_NONE:
                prologue["a_saved"] = saved.t()
            grad_w = gemm(grad.t(), x, row_sums=grad_b if fuse_b else None, **prologue)
        if need_b and not fuse_b:
            column_sums(grad, grad_b)
        return grad_x, grad_w, grad_b, None, None


def _check_args(name: str, input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    tensors = (input, weight) if bias is None else (input, weight, bias)
    check_dtype(name, *tensors)
    if weight.dim() != 2 or input.dim() < 1 or input.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"{name}: input {tuple(input.shape)} and weight {tuple(weight.shape)} do not match "
            "(expected input (..., in_features), weight (out_features, in_features))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"{name}: bias {tuple(bias.shape)} should be ({weight.shape[0]},)")


def linear_act(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = None,
    slope: float = 0.01,
) -> torch.Tensor:
    """act(input @ weight^T + bias) in one GEMM; `slope` is leaky_relu's negative slope."""
    if activation not in ACTIVATIONS:
        known = sorted(map(str, ACTIVATIONS))
        raise NotImplementedError(f"linear_act: activation {activation!r} (known: {known})")
    act = ACTIVATIONS[activation]
    _check_args("linear_act" if activation else "linear", input, weight, bias)
    lead = input.shape[:-1]
    x2d = input.reshape(math.prod(lead), input.shape[-1])  # (M, K); a view when the layout allows
    y = _LinearAct.apply(x2d, weight, bias, act, float(slope) if act == ACT_LEAKY_RELU else 0.0)
    return y.reshape(*lead, weight.shape[0])


def linear(input: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """input @ weight^T + bias, like torch.nn.functional.linear (any leading dimensions)."""
    return linear_act(input, weight, bias, None)
