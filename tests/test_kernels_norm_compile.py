"""Normalization, gelu/silu and adaptive-pool kernels -> compiled for sm_90 with no spills (no GPU needed).

One subprocess with TRITON_INTERPRET=0 compiles every variant tests/compile_norm.py
lists with the launchers' CUDA settings and reads registers, spilled bytes and
shared memory from the cubin (cuobjdump ships in the triton wheel). The
interpreter never compiles: the ticket's atomic, the .cg loads, float64 erf
register pressure and the constexpr branches are checked only here.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compile_norm import variants

SHARED_LIMIT = 227 * 1024  # sm_90 shared memory per block, bytes
VARIANTS = variants()
ON_GPU_SUITE = pytest.mark.skipif(os.environ.get("NETC_TEST_GPU") == "1", reason="the GPU suite runs them")


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, object]]:
    helper = Path(__file__).with_name("compile_norm.py")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, str(helper)], env=env, capture_output=True, text=True, timeout=900,
                          cwd=helper.parent)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@ON_GPU_SUITE
def test_every_variant_compiles_without_spills(compiled: dict[str, dict[str, object]]) -> None:
    assert set(compiled) == {variant.name for variant in VARIANTS}
    failures = {name: result for name, result in compiled.items()
                if "error" in result or result["spilled"] != 0 or not 0 <= result["shared"] <= SHARED_LIMIT}  # type: ignore[operator]
    assert not failures, failures
    registers = max(int(result["registers"]) for result in compiled.values())  # type: ignore[call-overload]
    assert registers <= 255  # the hardware limit; more would have spilled


def test_every_norm_kernel_is_listed_in_both_dtypes() -> None:
    """Each `*_kernel` of norm.py and layer_norm.py has float32 and float64 variants."""
    listed = {(v.module, v.kernel, p) for v in VARIANTS for p in v.pointers.values() if p.startswith("*f")}
    for module_name in ("norm", "layer_norm"):
        module = importlib.import_module(f"netc.kernels.{module_name}")
        kernels = [name for name in vars(module) if name.endswith("_kernel")]
        assert len(kernels) >= 2
        for kernel in kernels:
            for dtype in ("*fp32", "*fp64"):
                assert (module_name, kernel, dtype) in listed, f"{module_name}.{kernel} {dtype} not listed"


def test_variants_use_the_cuda_tiles() -> None:
    """The listed tiles are the GPU's (the interpreter's differ in warps), from policy.py."""
    by_name = {v.name: v for v in VARIANTS}
    stats = by_name["bn stats fp32 nchw"]
    assert (stats.constexprs["BLOCK_R"], stats.constexprs["BLOCK_C"], stats.warps) == (1024, 1, 4)
    assert by_name["bn stats fp64 channels_last"].constexprs["BLOCK_C"] == 64
    assert by_name["ln fwd fp64 row=100000"].constexprs["ONE_BLOCK"] is False
    assert os.environ.get("TRITON_INTERPRET") in (None, "1")
