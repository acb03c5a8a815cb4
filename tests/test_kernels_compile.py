"""GEMM, activation, loss, pool and recurrent kernel variants -> each compiled for sm_90, no GPU needed.

The interpreter accepts what a GPU compile rejects (dot sides under 16, float64
dot support, dtype mismatches, constexpr misuse, too much shared memory), so one
subprocess with TRITON_INTERPRET=0 compiles every variant that
tests/compile_helpers.py lists, with the launchers' CUDA settings, and each test
here checks one result. A variant that fails to compile under a Triton version
goes in KNOWN_FAILURES (strict xfail) with the reason, never silently.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from compile_helpers import FAMILIES, canaries, variants

# H100/H200 (sm_90) shared memory per block, in bytes
SHARED_LIMIT = 227 * 1024

# variant name -> why it does not compile (strict xfail: a fix makes the test fail until removed here)
KNOWN_FAILURES: dict[str, str] = {}  # none today (the gru forward without bias needed 400 KiB once)

# the modules whose launched kernels this file covers (the conv, dropout and optim kernels have
# their own compile tests; the persistent recurrent ones too, for the lstm with bias)
MODULES = ("gemm", "activation", "loss", "pool", "adaptive_pool", "recurrent_steps", "recurrent_cells")

VARIANTS = variants()
ON_GPU_SUITE = pytest.mark.skipif(
    os.environ.get("NETC_TEST_GPU") == "1", reason="the GPU suite launches the kernels"
)


@pytest.fixture(scope="module")
def compiled() -> dict[str, dict[str, object]]:
    """name -> {"shared": bytes} or {"error": message}, for every variant and canary (one subprocess)."""
    helper = Path(__file__).with_name("compile_helpers.py")
    # a compiler run: the kernels must not bind to the interpreter
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, str(helper)], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _param(name: str) -> object:
    if name in KNOWN_FAILURES:
        return pytest.param(name, marks=pytest.mark.xfail(strict=True, reason=KNOWN_FAILURES[name]))
    return name


@pytest.mark.slow
@ON_GPU_SUITE
@pytest.mark.parametrize("name", [_param(variant.name) for variant in VARIANTS])
def test_variant_compiles_for_sm90(compiled: dict[str, dict[str, object]], name: str) -> None:
    """Compiles for GPUTarget("cuda", 90, 32) and its shared memory fits an H100/H200."""
    result = compiled[name]
    assert "error" not in result, f"{name}: {result['error']}"
    shared = result["shared"]
    assert isinstance(shared, int) and 0 <= shared <= SHARED_LIMIT, f"{name}: shared memory {shared} bytes"


@pytest.mark.slow
@ON_GPU_SUITE
def test_canaries_show_the_compile_check_can_fail(compiled: dict[str, dict[str, object]]) -> None:
    """A too-small dot is a compile error and an oversized float64 tile reads as over the limit."""
    probes = canaries()
    error = compiled[probes["error"].name]
    assert "Input shapes should have" in str(error.get("error")), error  # the dot side check
    over = compiled[probes["over"].name]
    assert "error" not in over and int(over["shared"]) > SHARED_LIMIT, over  # type: ignore[call-overload]
    assert set(compiled) == {v.name for v in VARIANTS} | {v.name for v in probes.values()}


def test_every_launched_kernel_is_listed_in_both_dtypes() -> None:
    """Each `*_kernel` these modules define has float32 and float64 variants, so none goes unchecked."""
    listed = {(v.module, v.kernel, ptr_type) for v in VARIANTS for ptr_type in set(v.pointers.values())}
    for module_name in MODULES:
        module = importlib.import_module(f"netc.kernels.{module_name}")
        kernels = [name for name in vars(module) if name.endswith("_kernel")]
        assert kernels, module_name
        for kernel in kernels:
            for dtype in ("*fp32", "*fp64"):
                assert (module_name, kernel, dtype) in listed, f"{module_name}.{kernel} {dtype}: not listed"
    assert set(FAMILIES) == {"gemm", "activation", "loss", "pool", "recurrent", "persistent"}


def test_variants_use_the_cuda_launch_settings() -> None:
    """The listed settings are the launchers' CUDA ones, not the interpreter's (which differ)."""
    by_name = {v.name: v for v in VARIANTS}
    gemm = by_name["gemm fp32 fwd bias act=1 ieee"]
    assert (gemm.constexprs["BLOCK_K"], gemm.stages) == (32, 3)  # the interpreter's is 64, 1 stage
    assert by_name["activation fwd fp32 act=1"].constexprs["BLOCK"] == 1024
    assert by_name["pool max fwd fp32 2x2 indices=True"].constexprs["BLOCK"] == 256
    assert by_name["loss fwd fp32 C=10 default rows=128 reduction=2"].constexprs["BLOCK_R"] == 2048 // 16
    assert by_name["recurrent step fwd fp64 cell=2"].constexprs["BLOCK_H"] == 128
    assert os.environ.get("TRITON_INTERPRET") in (None, "1")  # listing left the interpreter setting alone
