"""Test helper for the conv and pool kernels: our op and its torch twin on the same inputs -> errors checked.

Each comparison runs the forward and the backward of both, with the
reference always in float64, and records the largest normwise relative
error per (function, dtype) in LARGEST_ERRORS for the test report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from netc.kernels import config

# (function, dtype) -> the largest normwise relative error seen in this session
LARGEST_ERRORS: dict[tuple[str, str], float] = {}

# normwise relative tolerance per dtype of our run (the reference is float64 either way)
TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-5}


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - ref| / max |ref|; NaN in the same places counts as equal, elsewhere as infinite error."""
    ours, reference = ours.detach().double().cpu(), reference.detach().double().cpu()
    assert ours.shape == reference.shape, f"shape {tuple(ours.shape)} != {tuple(reference.shape)}"
    both_nan = ours.isnan() & reference.isnan()
    if (ours.isnan() ^ reference.isnan()).any():
        return float("inf")
    ours, reference = ours.masked_fill(both_nan, 0.0), reference.masked_fill(both_nan, 0.0)
    finite = reference.isfinite()
    if not torch.equal(ours[~finite], reference[~finite]):
        return float("inf")
    scale = reference[finite].abs().max().item() if finite.any() else 0.0
    diff = (ours[finite] - reference[finite]).abs().max().item() if finite.any() else 0.0
    return diff / scale if scale > 0 else diff


def _record(name: str, dtype: torch.dtype, errors: Sequence[float]) -> None:
    key = (name, str(dtype).removeprefix("torch."))
    LARGEST_ERRORS[key] = max([LARGEST_ERRORS.get(key, 0.0), *errors])


def strided_like(shape: Sequence[int], dtype: torch.dtype, device: str) -> torch.Tensor:
    """Random values in a non-contiguous layout: every other element of a wider, transposed buffer."""
    wide = torch.randn(*reversed(shape[:-1]), shape[-1] * 2, dtype=dtype, device=device)
    return wide[..., ::2].permute(*reversed(range(len(shape) - 1)), len(shape) - 1)


def compare_with_torch(
    name: str,
    ours: Callable[..., object],
    reference: Callable[..., object],
    tensors: Sequence[torch.Tensor | None],
    strided_grad: bool = False,
) -> list[object]:
    """Run both ops forward and backward on the same values; assert forward, gradients and extra outputs.

    `tensors` are the op's tensor arguments (None for an absent bias), already in our
    dtype and layout; floating ones that require grad get gradients checked. Returns
    our outputs (extra outputs such as indices must equal the reference's exactly).
    """
    assert config.POISON_OUTPUTS, "outputs must start as NaN in these tests"
    dtype = next(t.dtype for t in tensors if t is not None)
    ours_in = [None if t is None else t.detach().requires_grad_(t.requires_grad) for t in tensors]
    ref_in = [None if t is None else t.detach().double().requires_grad_(t.requires_grad) for t in tensors]
    ours_out, ref_out = _as_list(ours(*ours_in)), _as_list(reference(*ref_in))
    for extra_ours, extra_ref in zip(ours_out[1:], ref_out[1:], strict=True):
        assert torch.equal(extra_ours, extra_ref), f"{name}: extra output differs"
    y = ours_out[0]
    assert y.dtype == dtype and y.shape == ref_out[0].shape
    grad = strided_like(y.shape, dtype, str(y.device)) if strided_grad else torch.randn_like(y)
    errors = [relative_error(y, ref_out[0])]
    leaves = [i for i, t in enumerate(tensors) if t is not None and t.requires_grad]
    if leaves:
        ours_grads = torch.autograd.grad(y, [ours_in[i] for i in leaves], grad)
        ref_grads = torch.autograd.grad(ref_out[0], [ref_in[i] for i in leaves], grad.double())
        errors += [relative_error(a, b) for a, b in zip(ours_grads, ref_grads, strict=True)]
    _record(name, dtype, errors)
    tolerance = TOLERANCE[dtype]
    labels = ["forward"] + [f"grad of argument {i}" for i in leaves]
    for label, error in zip(labels, errors, strict=True):
        assert error <= tolerance, f"{name} {label}: relative error {error:.3g} > {tolerance:g}"
    return ours_out


def _as_list(result: object) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]  # type: ignore[list-item]


def compile_for_cuda(capability: int = 90) -> None:
    """Compile every conv and pool kernel variant for a CUDA target with the GPU launch configs.

    Needs no GPU (Triton ships ptxas); catches what the interpreter lets through, such as dot
    sides under 16 or type errors in code paths only a compiler sees. Run with TRITON_INTERPRET=0.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from netc.kernels import conv, pool

    def build(fn, pointers: dict[str, str], constexprs: dict, warps: int = 4, stages: int = 1) -> None:
        types = {name: pointers.get(name, "fp32" if name == "slope" else "i32") for name in fn.arg_names}
        types.update({name: "constexpr" for name in constexprs})
        keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
        source = ASTSource(fn=fn, signature=types, constexprs=keyed)
        target = GPUTarget("cuda", capability, 32)
        triton.compile(source, target=target, options={"num_warps": warps, "num_stages": stages})

    kernels = {
        "fwd": (conv._conv2d_fwd_kernel, ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "pre_ptr")),
        "bwd_input": (conv._conv2d_bwd_input_kernel, ("dy_ptr", "y_ptr", "w_ptr", "dx_ptr")),
        "bwd_weight": (conv._conv2d_bwd_weight_kernel, ("dy_ptr", "y_ptr", "x_ptr", "dw_ptr", "db_ptr")),
    }
    extra = {"fwd": {"HAS_BIAS": True, "STORE_PRE": True}, "bwd_input": {}, "bwd_weight": {"HAS_BIAS": True}}
    for dtype, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        for kind, (fn, pointer_names) in kernels.items():
            cfg = conv._launch_config(kind, dtype, False, (1000, 100, 1000))
            for act, precision in ((0, "ieee"), (2, "ieee"), (4, "tf32")):
                constexprs = dict(extra[kind], KH=3, KW=2, ACT=act, USE_DOT=dtype == torch.float32)
                constexprs.update(PRECISION=precision, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
                constexprs.update(BLOCK_K=cfg.block_k)
                pointers = {pointer: f"*{name}" for pointer in pointer_names}
                build(fn, pointers, constexprs, cfg.num_warps, cfg.num_stages)
        block, warps = 256, 4
        pool_kernels = [
            (
                pool._max_pool2d_fwd_kernel,
                {"x_ptr": f"*{name}", "y_ptr": f"*{name}", "idx_ptr": "*i64"},
                {"STORE_INDICES": True},
            ),
            (
                pool._max_pool2d_bwd_kernel,
                {"dy_ptr": f"*{name}", "dx_ptr": f"*{name}", "idx_ptr": "*i64"},
                {},
            ),
            (pool._avg_pool2d_fwd_kernel, {"x_ptr": f"*{name}", "y_ptr": f"*{name}"}, {"COUNT_PAD": False}),
            (pool._avg_pool2d_bwd_kernel, {"dy_ptr": f"*{name}", "dx_ptr": f"*{name}"}, {"COUNT_PAD": True}),
        ]
        for fn, pointers, constexprs in pool_kernels:
            build(fn, pointers, dict(constexprs, KH=3, KW=2, BLOCK=block), warps)


if __name__ == "__main__":
    compile_for_cuda()
