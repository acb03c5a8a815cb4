"""kernels/gemm.py vs torch in float64: every epilogue, the act' prologue, row sums, split-K, strided views.

Also the sm_90 compile of the GEMMs one LeNet training step launches (tf32: zero
spills, tensor-core instructions in the SASS). Run as a script with
TRITON_INTERPRET=0, this file compiles the specializations given as JSON on stdin.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from kernel_helpers_dense import check, record_launches

from netc.kernels import gemm, policy
from netc.kernels.activation import ACT_LEAKY_RELU, ACTIVATIONS, backward_needs_input
from netc.kernels.gemm import PROLOGUE_ACTIVATIONS, Matrix, column_sums

SMALL_TILES = {"BLOCK_M": 16, "BLOCK_N": 16, "BLOCK_K": 16, "GROUP_M": 2, "num_warps": 4, "num_stages": 1}
NAMES = {code: name for name, code in ACTIVATIONS.items()}


@pytest.fixture
def small_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """16-wide tiles: odd sizes of a few dozen span several tiles, tile groups and K steps."""
    monkeypatch.setattr(policy, "gemm_config", lambda dtype, m=0, n=0: dict(SMALL_TILES))


def _act(z: torch.Tensor, code: int, slope: float) -> torch.Tensor:
    """PyTorch's activation of this activation.py code."""
    name = NAMES[code]
    if name is None:
        return z
    if name == "leaky_relu":
        return F.leaky_relu(z, slope)
    if name == "gelu_tanh":
        return F.gelu(z, approximate="tanh")
    return getattr(F, name)(z)


def _operand(rows: int, cols: int, layout: str, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A (rows, cols) matrix laid out as asked: row-major, a transpose, or every other column."""
    if layout == "transposed":
        return torch.randn(cols, rows, dtype=dtype).t()
    if layout == "strided":
        return torch.randn(rows, 2 * cols + 1, dtype=dtype)[:, 1::2]
    return torch.randn(rows, cols, dtype=dtype)


@pytest.mark.parametrize("code", sorted(NAMES))
def test_epilogue_activations_with_bias(code: int, small_tiles: None) -> None:
    """act(A @ B + bias) for every activation activation.py knows (gelu/silu with the pre-activation kept)."""
    a, b = _operand(37, 45, "transposed"), _operand(45, 29, "strided")
    bias = torch.randn(29, dtype=torch.float64)
    slope = 0.2 if code == ACT_LEAKY_RELU else 0.0
    keep = backward_needs_input(code, slope)
    pre = torch.full((37, 29), float("nan"), dtype=torch.float64) if keep else None
    out = gemm.gemm(a, b, bias=bias, act=code, slope=slope, pre=pre)
    z = a @ b + bias
    check("gemm:act", out, _act(z, code, slope))
    if pre is not None:
        check("gemm:pre", pre, z)


@pytest.mark.parametrize("layouts", [("contiguous", "transposed"), ("strided", "contiguous")])
def test_accumulate_alpha_negative_slope_and_row_sums(layouts: tuple[str, str], small_tiles: None) -> None:
    """out = leaky(alpha * A @ B + out) into a strided out, no bias, pre-activation kept, row sums added."""
    a, b = _operand(33, 50, layouts[0]), _operand(50, 21, layouts[1])
    base = torch.randn(21, 33, dtype=torch.float64)
    out, pre = base.clone().t(), torch.full((21, 33), float("nan"), dtype=torch.float64).t()  # (33, 21) views
    sums = torch.randn(33, dtype=torch.float64)
    sums_before = sums.clone()
    gemm.gemm(a, b, out, act=ACT_LEAKY_RELU, slope=-0.3, alpha=-1.5, accumulate=True, pre=pre, row_sums=sums)
    z = -1.5 * (a @ b) + base.t()
    check("gemm:accumulate", out, F.leaky_relu(z, -0.3))
    check("gemm:pre", pre, z)
    check("gemm:row_sums", sums, sums_before + a.sum(1))


@pytest.mark.parametrize("code", PROLOGUE_ACTIVATIONS)
def test_prologue_applies_the_activation_derivative(code: int, small_tiles: None) -> None:
    """A read as act'(saved) * A, with row sums of that product: linear's backward GEMMs."""
    z = torch.randn(29, 40, dtype=torch.float64, requires_grad=True)
    slope = -0.25 if code == ACT_LEAKY_RELU else 0.0  # a negative slope: the derivative reads z
    y = _act(z, code, slope)
    g = _operand(29, 40, "transposed")
    (dz,) = torch.autograd.grad(y, z, g)
    saved = z.detach() if backward_needs_input(code, slope) else y.detach()
    b, sums = _operand(40, 18, "strided"), torch.empty(29, dtype=torch.float64)
    out = gemm.gemm(g, b, a_act=code, a_saved=saved, slope=slope, row_sums=sums)
    check("gemm:prologue", out, dz @ b)
    check("gemm:prologue_row_sums", sums, dz.sum(1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_split_k_is_exact_and_deterministic(dtype: torch.dtype, small_tiles: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Split-K forced on (3 splits; 5 asked of 4 K steps trims to 4): the ticket's last CTA sums the
    partials in split order, so two runs agree bit for bit, and every ticket counter ends at zero."""
    launches = record_launches(monkeypatch, gemm, "_gemm_kernel")
    for asked, k in ((3, 101), (5, 64)):
        monkeypatch.setattr(policy, "split_k", lambda tiles, steps, min_steps_per_split=4, n=asked: n)
        a, b = _operand(37, k, "transposed", dtype), _operand(k, 29, "contiguous", dtype)
        bias, sums = torch.randn(29, dtype=dtype), torch.empty(37, dtype=dtype)
        out = gemm.gemm(a, b, bias=bias, act=1, row_sums=sums)
        again = gemm.gemm(a, b, bias=bias, act=1, row_sums=torch.empty_like(sums))
        check("gemm:split", out, torch.relu(a.double() @ b.double() + bias.double()), dtype)
        check("gemm:split_row_sums", sums, a.double().sum(1), dtype)
        assert torch.equal(out, again)
        assert launches[-1][0] == (6, min(asked, 4))  # 3 x 2 output tiles, the splits on axis 1
    assert all(int(tickets.abs().sum()) == 0 for tickets in gemm._TICKETS.values())


def test_two_dim_sides_read_recurrent_views(small_tiles: None) -> None:
    """(N, T, F) views without copies: rows from two dims, and K from two dims on both sides (one side
    laid out as one dim), as the recurrent weight gradient dW = dG[:, 1:]^T Y[:, :-1] reads them."""
    y = torch.randn(5, 7, 13, dtype=torch.float64)
    grads = torch.randn(5, 7, 11, dtype=torch.float64).transpose(0, 1).contiguous().transpose(0, 1)
    w = torch.randn(11, 13, dtype=torch.float64)
    bias = torch.randn(11, dtype=torch.float64)
    out = gemm.gemm(Matrix(y[:, 1:], (0, 1), (2,)), Matrix(w, (1,), (0,)), bias=bias)  # (N*(T-1), 11)
    check("gemm:two_dim_rows", out, y[:, 1:].reshape(-1, 13) @ w.t() + bias)
    dw, db = torch.empty(11, 13, dtype=torch.float64), torch.empty(11, dtype=torch.float64)
    gemm.gemm(Matrix(grads[:, 1:], (2,), (0, 1)), Matrix(y[:, :-1], (0, 1), (2,)), dw, row_sums=db)
    check("gemm:two_dim_k", dw, grads[:, 1:].reshape(-1, 11).t() @ y[:, :-1].reshape(-1, 13))
    check("gemm:two_dim_k_row_sums", db, grads[:, 1:].sum((0, 1)))


def test_float32_within_ieee_tolerance(small_tiles: None) -> None:
    """float32 inputs, float32 accumulation, ieee dots: within float32 tolerance of float64."""
    a, b = _operand(41, 67, "strided", torch.float32), _operand(67, 23, "transposed", torch.float32)
    bias = torch.randn(23)
    assert policy.dot_precision("matmul", torch.float32, a.device) == "ieee"
    out = gemm.gemm(a, b, bias=bias, act=2)
    check("gemm:float32", out, torch.tanh(a.double() @ b.double() + bias.double()), torch.float32)


def test_column_sums_over_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The column-sum kernel: strided input, several row steps and column programs, accumulate."""
    blocks = {"BLOCK_R": 16, "BLOCK_C": 16, "num_warps": 1}
    monkeypatch.setattr(policy, "column_sums_config", lambda dtype: dict(blocks))
    x = _operand(43, 35, "transposed")
    check("column_sums", column_sums(x), x.sum(0))
    out = torch.randn(35, dtype=torch.float64)
    before = out.clone()
    column_sums(x, out, accumulate=True)
    check("column_sums:accumulate", out, before + x.sum(0))


def test_rejections() -> None:
    a, b = torch.randn(4, 6, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float16"):
        gemm.gemm(a.half(), b.half())
    with pytest.raises(NotImplementedError, match="mixed"):
        gemm.gemm(a, b.float())
    with pytest.raises(ValueError, match="do not chain"):
        gemm.gemm(a, b.t())
    with pytest.raises(ValueError, match="accumulate"):
        gemm.gemm(a, b, accumulate=True)
    with pytest.raises(NotImplementedError, match="prologue"):
        gemm.gemm(a, b, a_act=ACTIVATIONS["gelu"], a_saved=a)
    with pytest.raises(NotImplementedError, match="row_sums"):
        gemm.gemm(a, b[:, :0], row_sums=torch.empty(4, dtype=torch.float64))
    y = torch.randn(2, 3, 6, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="columns"):
        gemm.gemm(Matrix(y.reshape(6, 6)), Matrix(y.transpose(0, 1), (2,), (0, 1)))


# ---- the LeNet step's GEMMs, compiled for sm_90 ---------------------------------------------------

# LeNet at batch 100: linear 1440 -> 50 with a fused relu, then linear 50 -> 10 (the conv/pool input needs
# its gradient, so both layers run forward, input-gradient and weight+bias-gradient GEMMs)
LENET_LAYERS = ((1440, 50, "relu"), (50, 10, None))


def lenet_launches(monkeypatch: pytest.MonkeyPatch, precision: str, dtype: torch.dtype) -> list[tuple]:
    """(grid, args, kwargs) of every GEMM launch of LeNet's two linear layers, forward and backward, with
    the GPU's policy (tiles, split-K) and `precision`; nothing runs (the kernel is replaced)."""
    from netc.kernels.linear import linear_act

    launches: list[tuple] = []

    class Recorder:
        def __getitem__(self, grid: Any) -> Any:
            return lambda *args, **kwargs: launches.append((grid, args, kwargs))

    monkeypatch.setattr(policy, "interpreting", lambda: False)
    monkeypatch.setattr(policy, "dot_precision", lambda kind, dtype, device: precision)
    monkeypatch.setattr(gemm, "_gemm_kernel", Recorder())
    x = torch.zeros(100, 1440, dtype=dtype, requires_grad=True)
    for fan_in, fan_out, act in LENET_LAYERS:
        w = torch.zeros(fan_out, fan_in, dtype=dtype, requires_grad=True)
        b = torch.zeros(fan_out, dtype=dtype, requires_grad=True)
        x = linear_act(x, w, b, act)
    x.sum().backward()
    return launches


def specialization(kernel: Any, launch: tuple) -> dict[str, Any]:
    """What a GPU launch compiles: constexprs, Triton's int/pointer specializations, warps and stages."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.nvidia.compiler import CUDABackend

    grid, args, kwargs = launch
    names = list(kernel.arg_names)
    bound = dict(zip(names, args, strict=False)) | {k: v for k, v in kwargs.items() if k in names}
    signature, constexprs, divisible = {}, {}, []
    for name in names:
        value = bound[name]
        if name in kwargs:  # the launcher passes every constexpr by keyword; a dtype travels as its name
            signature[name] = "constexpr"
            constexprs[name] = {"tl": value.name} if hasattr(value, "primitive_bitwidth") else value
            continue
        kind, attribute = native_specialize_impl(CUDABackend, value, False, True, True)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attribute
        elif attribute == "D":
            divisible.append(name)
    return {"signature": signature, "constexprs": constexprs, "divisible": divisible, "grid": list(grid),
            "num_warps": kwargs["num_warps"], "num_stages": kwargs["num_stages"]}


def compile_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile one specialization for sm_90 -> registers, spill bytes, tensor-core SASS ops of the cubin."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = gemm._gemm_kernel
    names = list(kernel.arg_names)
    consts = {(names.index(name),): tl.dtype(value["tl"]) if isinstance(value, dict) else value
              for name, value in spec["constexprs"].items()}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in spec["divisible"]}
    source = ASTSource(fn=kernel, signature=spec["signature"], constexprs=consts, attrs=attrs)
    options = {"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]}
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        Path(path).write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([tools / "cuobjdump", "--dump-resource-usage", path], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([tools / "cuobjdump", "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    facts = {key: int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
    return {"regs": facts["REG"], "spill_bytes": facts["STACK"] + facts["LOCAL"],
            "shared": compiled.metadata.shared, "ffma": sass.count("FFMA"),
            "tensor_core_ops": len(re.findall(r"\b(?:HGMMA|HMMA|DMMA)\b", sass))}


def compile_in_subprocess(specs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, __file__], input=json.dumps(specs), env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def unique_specs(kernel: Any, launches: list[tuple]) -> list[dict[str, Any]]:
    """The distinct specializations among these launches of `kernel` (grids aside)."""
    specs = [specialization(kernel, launch) for launch in launches]
    return list({json.dumps({k: v for k, v in s.items() if k != "grid"}, sort_keys=True): s
                 for s in specs}.values())


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("NETC_TEST_GPU") == "1", reason="the GPU suite launches the kernels")
def test_lenet_tf32_gemms_use_tensor_cores_without_spills(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct tf32 GEMM of a LeNet step (forward + relu, input grad with relu', weight grad with
    the bias' row sums, split-K where the reduction is long) compiles for sm_90 with zero spilled bytes
    and HGMMA/HMMA instructions in its SASS."""
    kernel = gemm._gemm_kernel
    launches = lenet_launches(monkeypatch, "tf32", torch.float32)
    assert len(launches) == 6  # 2 layers x (forward, dL/dx, dL/dW + dL/db)
    assert any(grid[1] > 1 for grid, _, _ in launches)  # the 1440-long forward reduction is split
    specs = unique_specs(kernel, launches)
    for spec, result in zip(specs, compile_in_subprocess(specs), strict=True):
        assert "error" not in result, result
        assert result["spill_bytes"] == 0, (spec["constexprs"], result)
        assert result["tensor_core_ops"] > 0, (spec["constexprs"], result)


def main() -> None:
    """Compile the JSON list of specializations on stdin; print one JSON list of results."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run with TRITON_INTERPRET=0"
    results = []
    for spec in json.load(sys.stdin):
        try:
            results.append(compile_spec(spec))
        except Exception as error:  # reported per spec; the test says what fails
            results.append({"error": f"{type(error).__name__}: {error}"[-1500:]})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
