"""Norm, gelu/silu and adaptive-pool kernel variants -> compiled for sm_90: shared memory, registers, spills.

`variants()` lists the variants the CUDA launchers of kernels/norm.py,
kernels/layer_norm.py, the gelu/silu activation codes and adaptive_avg_pool2d
produce, with their GPU tiles and warps from policy.py. Run as a script with
TRITON_INTERPRET=0, it compiles each for GPUTarget("cuda", 90, 32), reads the
cubin's resource usage with the cuobjdump that ships in the triton wheel, and
prints one JSON line: name -> {"shared", "registers", "spilled"} or {"error"}.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
import tempfile

from compile_helpers import DTYPES, Variant, _gpu_settings, _resolve

# non-pointer arguments that are floats (the rest of the non-constexpr ones are i32)
_FLOATS = ("mom_hi", "mom_lo", "eps_hi", "eps_lo")


def _types(dtype: str, *pointers: str) -> dict[str, str]:
    types = {name: f"*{dtype}" for name in pointers}
    return {**types, **{name: "fp32" for name in _FLOATS}, "ticket_ptr": "*i32"}


def _batch_norm() -> list[Variant]:
    policy = importlib.import_module("netc.kernels.policy")
    out = []
    for dt in DTYPES:
        ptrs = _types(dt, "x_ptr", "y_ptr", "part_ptr", "stats_ptr", "rmean_ptr", "rvar_ptr", "mean_ptr",
                      "spread_ptr", "w_ptr", "b_ptr", "dy_ptr", "dx_ptr", "coef_ptr", "dw_ptr", "db_ptr")
        # every flag set on (the flag-off branches only drop code); NCHW tiles (1024 rows x 1 channel),
        # and for float64 (the most registers) the channels-last ones (16 rows x 64 channels) too
        for layout, minor in (("nchw", False), ("channels_last", True))[: 2 if dt == "fp64" else 1]:
            block_r, block_c, warps = policy.norm_tile(512, minor)
            tile = {"BLOCK_R": block_r, "BLOCK_C": block_c}
            tag = f"{dt} {layout}"
            out.append(Variant(f"bn stats {tag}", "norm", "_bn_stats_kernel", ptrs,
                               dict(tile, UPDATE_RUNNING=True), warps))
            flags = {"IS_VAR": False, "TRAINING": True, "HAS_DW": True, "HAS_DB": True}
            out.append(Variant(f"bn grad stats {tag}", "norm", "_bn_grad_stats_kernel", ptrs,
                               dict(tile, **flags), warps))
            for is_var in (False, True):  # batch statistics (training) or running ones (eval)
                flags = {"IS_VAR": is_var, "HAS_W": True, "HAS_B": True}
                out.append(Variant(f"bn apply {tag} running={is_var}", "norm", "_bn_apply_kernel", ptrs,
                                   dict(tile, **flags), warps))
                flags = {"IS_VAR": is_var, "TRAINING": not is_var, "HAS_W": True}
                out.append(Variant(f"bn grad apply {tag} running={is_var}", "norm", "_bn_grad_apply_kernel",
                                   ptrs, dict(tile, **flags), warps))
    return out


def _layer_norm() -> list[Variant]:
    policy = importlib.import_module("netc.kernels.policy")
    out = []
    for dt in DTYPES:
        ptrs = _types(dt, "x_ptr", "y_ptr", "w_ptr", "b_ptr", "stats_ptr", "dy_ptr", "dx_ptr", "part_ptr",
                      "dw_ptr", "db_ptr")
        size = 8 if dt == "fp64" else 4
        # a 100-wide row ([T, F] per step), the widest row kept in registers (float64), a row that loops
        for row in (100, 32768 // size, 100000) if dt == "fp64" else (100, 100000):
            block_m, block_n, warps = policy.layer_norm_tile(row, size)
            tile = {"BLOCK_M": block_m, "BLOCK_N": block_n, "ONE_BLOCK": row <= block_n}
            out.append(Variant(f"ln fwd {dt} row={row}", "layer_norm", "_ln_fwd_kernel", ptrs,
                               dict(tile, HAS_W=True, HAS_B=True), warps))
            out.append(Variant(f"ln bwd {dt} row={row}", "layer_norm", "_ln_bwd_kernel", ptrs,
                               dict(tile, HAS_W=True), warps))
        block_r, block_c, warps = policy.norm_tile(512, True)
        out.append(Variant(f"ln param grad {dt}", "layer_norm", "_ln_param_grad_kernel", ptrs,
                           {"BLOCK_R": block_r, "BLOCK_C": block_c, "HAS_DW": True, "HAS_DB": True}, warps))
    return out


def _activation_and_pool() -> list[Variant]:
    activation = importlib.import_module("netc.kernels.activation")
    policy = importlib.import_module("netc.kernels.policy")
    cfg = dict(activation.launch_config())
    warps = cfg.pop("num_warps")
    out = []
    for dt in ("fp64",):  # float64 (a 70-step erf) needs the most registers; test_kernels_compile has fp32
        ptrs = _types(dt, "x_ptr", "y_ptr", "g_ptr", "saved_ptr", "dx_ptr", "dy_ptr")
        for act in (5, 6, 7):  # gelu, gelu tanh, silu
            out.append(Variant(f"act fwd {dt} act={act}", "activation", "_activation_fwd_kernel", ptrs,
                               dict(cfg, ACT=act, SLOPE=0.0), warps))
            out.append(Variant(f"act bwd {dt} act={act}", "activation", "_activation_bwd_kernel", ptrs,
                               dict(cfg, ACT=act, SLOPE=0.0), warps))
        for window in (1, 784):
            block, block_k, pool_warps = policy.adaptive_pool_tile(window)
            out.append(Variant(f"adaptive fwd {dt} window={window}", "adaptive_pool",
                               "_adaptive_avg_pool2d_fwd_kernel", ptrs, {"BLOCK": block, "BLOCK_K": block_k},
                               pool_warps))
        out.append(Variant(f"adaptive bwd {dt}", "adaptive_pool", "_adaptive_avg_pool2d_bwd_kernel", ptrs,
                           {"BLOCK": block}, pool_warps))
    return out


def variants() -> list[Variant]:
    with _gpu_settings():
        return [*_batch_norm(), *_layer_norm(), *_activation_and_pool()]


def _resources(cubin: bytes) -> dict[str, int]:
    """Registers, spilled bytes (local memory) and shared memory of a cubin, from cuobjdump."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        usage = subprocess.run([tool, "--dump-resource-usage", handle.name], capture_output=True, text=True,
                               check=True).stdout
    found = {key: re.search(rf"{key}:(\d+)", usage) for key in ("REG", "LOCAL", "SHARED")}
    assert all(found.values()), usage
    return {"registers": int(found["REG"].group(1)), "spilled": int(found["LOCAL"].group(1)),  # type: ignore[union-attr]
            "shared": int(found["SHARED"].group(1))}  # type: ignore[union-attr]


def compile_variant(variant: Variant) -> dict[str, int]:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(f"netc.kernels.{variant.module}"), variant.kernel)
    signature = {name: variant.pointers.get(name, "i32") for name in fn.arg_names}
    signature.update({name: "constexpr" for name in variant.constexprs})
    consts = {(fn.arg_names.index(name),): _resolve(value) for name, value in variant.constexprs.items()}
    options = {"num_warps": variant.warps, "num_stages": variant.stages}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=consts),
                              target=GPUTarget("cuda", 90, 32), options=options)
    return _resources(compiled.asm["cubin"])


def main() -> None:
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run with TRITON_INTERPRET=0"
    results: dict[str, dict[str, object]] = {}
    for variant in variants():
        try:
            results[variant.name] = dict(compile_variant(variant))
        except Exception as error:  # reported per variant; the test decides what fails
            results[variant.name] = {"error": f"{type(error).__name__}: {error}"[-2000:]}
    print(json.dumps(results))


if __name__ == "__main__":
    sys.exit(main())
