"""Test helper for the conv and pool kernels: our op and its torch twin on the same inputs -> errors checked.

Each comparison runs the forward and the backward of both, with the
reference always in float64, and records the largest normwise relative
error per (function, dtype) in LARGEST_ERRORS for the test report.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence

import torch

from netc.kernels import config, policy

# (function, dtype) -> the largest normwise relative error seen in this session
LARGEST_ERRORS: dict[tuple[str, str], float] = {}

# normwise relative tolerance per precision of our run (the reference is float64 either way): float64,
# float32 products rounded as PyTorch's float32 ("ieee"), or TF32 products (10-bit mantissa inputs, as
# cuDNN's default convolutions on a GPU)
TOLERANCE = {"float64": 1e-12, "ieee": 1e-5, "tf32": 5e-3}


def precision_of(dtype: torch.dtype, device: torch.device, dot: str | None) -> str:
    """Which precision a run of `dtype` on `device` uses: "float64", or the policy's float32 dot precision
    for a `dot` kind ("conv", "matmul"); "ieee" for float32 ops without products."""
    if dtype == torch.float64:
        return "float64"
    return policy.dot_precision(dot, dtype, device) if dot else "ieee"


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
    dot: str | None = None,
) -> list[object]:
    """Run both ops forward and backward on the same values; assert forward, gradients and extra outputs.

    `tensors` are the op's tensor arguments (None for an absent bias), already in our
    dtype and layout; floating ones that require grad get gradients checked. Returns
    our outputs (extra outputs such as indices must equal the reference's exactly). `dot` names
    the op's product kind for `policy.dot_precision` (the tolerance follows the precision that ran).
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
    precision = precision_of(dtype, y.device, dot)
    _record(f"{name} ({precision})", dtype, errors)
    tolerance = TOLERANCE[precision]
    labels = ["forward"] + [f"grad of argument {i}" for i in leaves]
    for label, error in zip(labels, errors, strict=True):
        assert error <= tolerance, f"{name} {label}: relative error {error:.3g} > {tolerance:g} ({precision})"
    return ours_out


def _as_list(result: object) -> list[torch.Tensor]:
    return list(result) if isinstance(result, tuple) else [result]  # type: ignore[list-item]


def _spills(ptx: str, capability: int) -> tuple[int, int]:
    """(registers, spilled bytes: stores + loads) of a PTX kernel, from ptxas -v as Triton runs it."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    with tempfile.NamedTemporaryFile("w", suffix=".ptx") as source:
        source.write(ptx)
        source.flush()
        command = [get_ptxas(capability).path, "-v", "-lineinfo", "--regAllocOptLevel=2",
                   f"--gpu-name=sm_{capability}a", source.name, "-o", "/dev/null"]
        log = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    spilled = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    registers = re.search(r"Used (\d+) registers", log)
    assert spilled and registers, log
    return int(registers.group(1)), int(spilled.group(1)) + int(spilled.group(2))


# (kind, KH, KW, GEMM (M, N, K), input channels per group CG): the convolutions of examples/lenet.net
# (batch 100), best.net and fashion.net (batch 128), with the tiles the GPU policy picks for them
EXAMPLE_CONVS = [
    ("fwd", 5, 5, (57_600, 10, 25), 1), ("bwd_weight", 5, 5, (10, 25, 57_600), 1),
    ("fwd", 3, 3, (100_352, 32, 9), 1), ("bwd_weight", 3, 3, (32, 9, 100_352), 1),
    ("fwd", 3, 3, (86_528, 32, 288), 32), ("bwd_input", 3, 3, (100_352, 32, 288), 32),
    ("bwd_weight", 3, 3, (32, 288, 86_528), 32), ("fwd", 3, 3, (18_432, 64, 288), 32),
    ("bwd_input", 3, 3, (21_632, 32, 576), 64), ("bwd_weight", 3, 3, (64, 288, 18_432), 32),
]


def compile_for_cuda(capability: int = 90) -> dict[str, tuple[int, int]]:
    """Compile every conv and pool kernel variant (and the example nets' cross-entropy) for a CUDA target
    with the GPU launch configs: name -> (registers, spilled bytes).

    Needs no GPU (Triton ships ptxas); catches what the interpreter lets through, such as dot
    sides under 16 or type errors in code paths only a compiler sees. Run with TRITON_INTERPRET=0.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from netc.kernels import conv, conv_weight, pool

    results: dict[str, tuple[int, int]] = {}
    policy.interpreting = lambda: False  # the GPU tiles and splits (this runs in its own process)

    def build(label: str, fn, pointers: dict[str, str], constexprs: dict, warps: int = 4,
              stages: int = 1) -> None:
        types = {name: pointers.get(name, "fp32" if name == "slope" else "i32") for name in fn.arg_names}
        types.update({name: "constexpr" for name in constexprs})
        keyed = {(fn.arg_names.index(name),): value for name, value in constexprs.items()}
        source = ASTSource(fn=fn, signature=types, constexprs=keyed)
        target = GPUTarget("cuda", capability, 32)
        compiled = triton.compile(source, target=target, options={"num_warps": warps, "num_stages": stages})
        results[label] = _spills(compiled.asm["ptx"], capability)

    kernels = {
        "fwd": (conv._conv2d_fwd_kernel, ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "pre_ptr"), {}),
        "bwd_input": (conv._conv2d_bwd_input_kernel, ("dy_ptr", "y_ptr", "w_ptr", "dx_ptr"), {}),
        "bwd_weight": (conv_weight._conv2d_bwd_weight_kernel,
                       ("dy_ptr", "y_ptr", "x_ptr", "dw_ptr", "db_ptr", "ws_ptr"), {"ticket_ptr": "*i32"}),
    }
    extra = {"fwd": {"HAS_BIAS": True, "STORE_PRE": False}, "bwd_input": {}, "bwd_weight": {"HAS_BIAS": True}}
    for dtype, name in ((torch.float32, "fp32"), (torch.float64, "fp64")):
        precisions = ("tf32", "ieee") if dtype == torch.float32 else ("ieee",)
        for (kind, kh, kw, gemm, cg), precision in itertools.product(EXAMPLE_CONVS, precisions):
            fn, pointer_names, more = kernels[kind]
            cfg = policy.conv_tiles(kind, dtype, gemm)
            constexprs = dict(extra[kind], KH=kh, KW=kw, ACT=1, USE_DOT=dtype == torch.float32)
            constexprs.update(PRECISION=precision, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n)
            constexprs.update(BLOCK_K=cfg.block_k)
            if kind == "bwd_weight":
                constexprs["SPLIT"] = True
            if cg == 1:  # Triton makes an int argument equal to 1 a constant
                constexprs["CG"] = 1
            pointers = dict({pointer: f"*{name}" for pointer in pointer_names}, **more)
            label = f"conv {kind} {name} {kh}x{kw} {gemm} {precision}"
            build(label, fn, pointers, constexprs, cfg.num_warps, cfg.num_stages)
        block, warps = policy.pool_block(1 << 20)
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
            constexprs = dict(constexprs, KH=2, KW=2, BLOCK=block)
            build(f"pool {fn.__name__} {name}", fn, pointers, constexprs, warps)
    _compile_example_losses(build)
    return results


def _compile_example_losses(build: Callable[..., None]) -> None:
    """The cross-entropy of the example nets' training steps: 10 classes, batch 100 or 128 (one program),
    with and without label smoothing; the forward (loss + gradient) and the scaling backward."""
    from netc.kernels import loss

    names = ("x_ptr", "w_ptr", "loss_ptr", "lse_ptr", "dx_ptr", "out_ptr", "denom_ptr", "ws_ptr", "g_ptr",
             "dx_in_ptr", "dt_ptr")
    pointers = dict({name: "*fp32" for name in names}, t_ptr="*i64", ticket_ptr="*i32")
    for rows, smoothing in itertools.product((100, 128), (0.0, 0.1)):
        tiles = policy.loss_tiles(rows, 10)
        warps = tiles.pop("num_warps")
        flags = dict(tiles, PROB_TARGET=False, HAS_WEIGHT=False, SMOOTHING=smoothing, S=1, REDUCTION=2)
        build(f"loss fwd rows={rows} smoothing={smoothing}", loss._cross_entropy_fwd_kernel, pointers,
              dict(flags, WRITE_GRAD=True, ONE_TILE=True), warps)
        build(f"loss bwd rows={rows} smoothing={smoothing}", loss._cross_entropy_bwd_kernel, pointers,
              dict(flags, DIVIDED=True, WANT_DX=True, WANT_DT=False), warps)


if __name__ == "__main__":
    print(json.dumps(compile_for_cuda()))
