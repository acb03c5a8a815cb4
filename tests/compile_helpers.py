"""Kernel variants of the gemm, activation, loss, pool and recurrent families -> compiled for sm_90, no GPU.

`variants()` lists every distinct constexpr variant the CUDA launchers of these
families can produce (float32 and float64; the persistent recurrent kernels for
the cells their own test leaves out), with the launchers' GPU block sizes,
warps and stages. Run as a script with TRITON_INTERPRET=0, it compiles each with
triton.compile(ASTSource(...)) for GPUTarget("cuda", 90, 32) (Triton ships ptxas)
and prints one JSON line: name -> {"shared": bytes} or {"error": message}.
That catches what the interpreter lets through: dot sides under 16, dtype
mismatches in code only a compiler types, too much shared memory.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field

DTYPES = ("fp32", "fp64")


@dataclass(frozen=True)
class Variant:
    """One kernel compile: kernel `module.kernel`, pointer and constexpr arguments, launch options."""

    name: str
    module: str  # under netc.kernels
    kernel: str
    pointers: dict[str, str]  # argument -> "*fp32" etc.; other non-constexpr arguments are i32
    constexprs: dict[str, object] = field(default_factory=dict)  # also ints the launcher sees as 1
    warps: int = 4
    stages: int = 3  # CUDA's default when a launcher passes no num_stages
    maxnreg: int | None = None  # the launcher's maxnreg, if it passes one


@contextlib.contextmanager
def _gpu_settings() -> Iterator[None]:
    """Make the families' launch-config functions answer as on CUDA, even under the interpreter."""
    before = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "0"
    try:
        yield
    finally:
        if before is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = before


def _ptrs(dtype: str, *names: str) -> dict[str, str]:
    return {name: f"*{dtype}" for name in names}


# gemm.py's epilogue/prologue switches, all off; each case below turns some on
_GEMM_OFF = {"ALPHA": 1.0, "HAS_BIAS": False, "ACCUMULATE": False, "STORE_PRE": False, "ACT": 0, "SLOPE": 0.0,
             "A_ACT": 0, "ROW_SUMS": False, "SPLIT": False, "M_TWO_DIMS": False, "K_TWO_DIMS": False}
# label -> switches: linear's forward (every activation, the pre-activation store), its backward GEMMs
# (dL/dx and dL/dW with the activation's derivative on load and the bias gradient's row sums), split-K,
# the recurrent views (two-dim sides), accumulate with alpha; the switches are separate constexpr
# branches, so other pairings add nothing
_GEMM_CASES: dict[str, dict[str, object]] = {
    **{f"fwd bias act={act}": {"HAS_BIAS": True, "ACT": act, "SLOPE": 0.01 if act == 4 else 0.0,
                               "STORE_PRE": act >= 5} for act in range(8)},  # gelu, gelu_tanh, silu: 5-7
    "fwd act=4 slope<0 pre": {"ACT": 4, "SLOPE": -0.2, "STORE_PRE": True},
    "dx a_act=1": {"A_ACT": 1},
    "dw a_act=2 row_sums": {"A_ACT": 2, "ROW_SUMS": True},
    "split row_sums bias act=1": {"SPLIT": True, "ROW_SUMS": True, "HAS_BIAS": True, "ACT": 1},
    "two-dim sides": {"M_TWO_DIMS": True, "K_TWO_DIMS": True, "HAS_BIAS": True},
    "accumulate alpha": {"ACCUMULATE": True, "ALPHA": 0.5, "ROW_SUMS": True},
}
_GEMM_TF32 = ("fwd bias act=1", "dx a_act=1", "dw a_act=2 row_sums", "split row_sums bias act=1")


def _gemm_pointers(dt: str) -> dict[str, str]:
    names = ("a_ptr", "b_ptr", "c_ptr", "bias_ptr", "pre_ptr", "s_ptr", "rowsum_ptr", "ws_ptr")
    return {**_ptrs(dt, *names), "ticket_ptr": "*i32"}


def _gemm() -> list[Variant]:
    import torch

    policy = importlib.import_module("netc.kernels.policy")

    out = []
    for dt in DTYPES:
        cfg = policy.gemm_config(torch.float64 if dt == "fp64" else torch.float32)
        warps, stages = cfg.pop("num_warps"), cfg.pop("num_stages")
        pointers = _gemm_pointers(dt)
        acc = "tl.float64" if dt == "fp64" else "tl.float32"
        for label, switches in _GEMM_CASES.items():
            for precision in ("ieee", "tf32") if dt == "fp32" and label in _GEMM_TF32 else ("ieee",):
                consts = {**_GEMM_OFF, **switches, **cfg, "ACC_DTYPE": acc, "PRECISION": precision}
                out.append(Variant(f"gemm {dt} {label} {precision}", "gemm", "_gemm_kernel", pointers, consts,
                                   warps, stages))
        if dt == "fp32":  # the 32 x 32 tiles of small outputs
            small = policy.gemm_config(torch.float32, 1, 1)
            small_warps, small_stages = small.pop("num_warps"), small.pop("num_stages")
            for precision in ("ieee", "tf32"):
                consts = {**_GEMM_OFF, **_GEMM_CASES["split row_sums bias act=1"], **small, "ACC_DTYPE": acc,
                          "A_ACT": 2, "PRECISION": precision}
                out.append(Variant(f"gemm {dt} small tiles split a_act row_sums {precision}", "gemm",
                                   "_gemm_kernel", pointers, consts, small_warps, small_stages))
        # a contiguous forward: x (M, K) and W^T read with unit K strides, C with a unit column stride
        unit = {**_GEMM_OFF, **cfg, "HAS_BIAS": True, "ACT": 1, "ACC_DTYPE": acc, "PRECISION": "ieee",
                "s_ak": 1, "s_bk": 1, "s_cn": 1}
        out.append(Variant(f"gemm {dt} unit strides", "gemm", "_gemm_kernel", pointers, unit, warps, stages))
        red = dict(policy.column_sums_config(None), ACCUMULATE=False, ACC_DTYPE=acc)
        red_warps = red.pop("num_warps")
        out.append(Variant(f"gemm column_sums {dt}", "gemm", "_column_sums_kernel",
                           _ptrs(dt, "x_ptr", "out_ptr"), red, red_warps))
    return out


def _activation() -> list[Variant]:
    activation = importlib.import_module("netc.kernels.activation")

    cfg = dict(activation.launch_config())
    warps = cfg.pop("num_warps")
    out = []
    for dt in DTYPES:
        for act in range(1, 8):  # ACT 0 is never launched: no activation means no kernel
            consts = dict(cfg, ACT=act, SLOPE=0.01 if act == 4 else 0.0)
            out.append(Variant(f"activation fwd {dt} act={act}", "activation", "_activation_fwd_kernel",
                               _ptrs(dt, "x_ptr", "y_ptr"), consts, warps))
            out.append(Variant(f"activation bwd {dt} act={act}", "activation", "_activation_bwd_kernel",
                               _ptrs(dt, "g_ptr", "saved_ptr", "dx_ptr"), consts, warps))
    return out


# cross-entropy flag sets: the default (index targets, mean), index targets with every option,
# probability targets alone and with every option
_LOSS_FLAGS = {
    "default": {},
    "weight+smoothing": {"HAS_WEIGHT": True, "SMOOTHING": 0.1},
    "prob": {"PROB_TARGET": True},
    "prob+weight+smoothing": {"PROB_TARGET": True, "HAS_WEIGHT": True, "SMOOTHING": 0.1},
}


def _loss() -> list[Variant]:
    policy = importlib.import_module("netc.kernels.policy")

    out = []
    for dt in DTYPES:
        ptrs = _ptrs(dt, "x_ptr", "w_ptr", "loss_ptr", "lse_ptr", "dx_ptr", "out_ptr", "denom_ptr", "ws_ptr",
                     "g_ptr", "dx_in_ptr", "dt_ptr", "t_ptr")
        ptrs["ticket_ptr"] = "*i32"
        # classes: 10 (MNIST, the smallest BLOCK_C), the largest BLOCK_C, C = 1 (Triton makes it constexpr);
        # S = 1 (a 2-D input; constexpr too) except in the spatial case; 128 rows fit one program (the
        # MNIST batch: the forward divides the mean's gradient itself), 100,000 take many
        shapes = [(10, {"S": 1}), (1000, {"S": 1}), (1, {"C": 1, "S": 1}), (10, {})]
        for (classes, ones), rows in itertools.product(shapes, (128, 100_000)):
            cfg = dict(policy.loss_tiles(rows, classes))
            warps = cfg.pop("num_warps")
            one_tile = rows <= cfg["BLOCK_R"]
            flag_sets = _LOSS_FLAGS if classes == 10 and ones else {"default": {}}
            spatial = "" if ones else " spatial"
            for label, flags in flag_sets.items():
                base = {"PROB_TARGET": False, "HAS_WEIGHT": False, "SMOOTHING": 0.0, **flags, **cfg, **ones}
                pointers = dict(ptrs, t_ptr=f"*{dt}" if base["PROB_TARGET"] else "*i64")
                tag = f"{dt} C={classes}{spatial} {label} rows={rows}"
                every = label == "default" and classes == 10 and bool(ones)  # reductions: one case is enough
                for reduction in (0, 1, 2) if every else (2,):
                    fwd = dict(base, REDUCTION=reduction, WRITE_GRAD=True, ONE_TILE=one_tile)
                    out.append(Variant(f"loss fwd {tag} reduction={reduction}", "loss",
                                       "_cross_entropy_fwd_kernel", pointers, fwd, warps))
                    wanted = [(True, False)] + ([(False, True), (True, True)] if base["PROB_TARGET"] else [])
                    for want_dx, want_dt in wanted:
                        bwd = dict(base, REDUCTION=reduction, DIVIDED=one_tile, WANT_DX=want_dx,
                                   WANT_DT=want_dt)
                        out.append(Variant(f"loss bwd {tag} reduction={reduction} dx={want_dx} dt={want_dt}",
                                           "loss", "_cross_entropy_bwd_kernel", pointers, bwd, warps))
                if every:  # inference: no gradient written
                    fwd = dict(base, REDUCTION=2, WRITE_GRAD=False, ONE_TILE=one_tile)
                    out.append(Variant(f"loss fwd {tag} no grad", "loss", "_cross_entropy_fwd_kernel",
                                       pointers, fwd, warps))
    return out


def _pool() -> list[Variant]:
    pool = importlib.import_module("netc.kernels.pool")

    block, warps = pool._launch_config(1 << 20)
    # 2x2 (the usual window) with every flag; an odd, asymmetric 3x2 with unit strides and dilations
    # (Triton makes ints equal to 1 constexpr) with the training-path flags
    unit = {"stride_h": 1, "stride_w": 1, "dil_h": 1, "dil_w": 1}
    windows = {"2x2": ({"KH": 2, "KW": 2}, (True, False)), "3x2 unit": ({"KH": 3, "KW": 2, **unit}, (True,))}
    out = []
    for dt in DTYPES:
        for label, (win, flags) in windows.items():
            common = dict(win, BLOCK=block)
            avg_common = {k: v for k, v in common.items() if not k.startswith("dil")}  # avg takes no dilation
            for store in flags:  # without indices (inference) the launcher passes y as idx_ptr
                pointers = {**_ptrs(dt, "x_ptr", "y_ptr"), "idx_ptr": "*i64" if store else f"*{dt}"}
                consts = dict(common, STORE_INDICES=store)
                out.append(Variant(f"pool max fwd {dt} {label} indices={store}", "pool",
                                   "_max_pool2d_fwd_kernel", pointers, consts, warps))
            out.append(Variant(f"pool max bwd {dt} {label}", "pool", "_max_pool2d_bwd_kernel",
                               {**_ptrs(dt, "dy_ptr", "dx_ptr"), "idx_ptr": "*i64"}, common, warps))
            for count_pad in (not flag for flag in flags):  # False, the default, always
                consts = dict(avg_common, COUNT_PAD=count_pad)
                out.append(Variant(f"pool avg fwd {dt} {label} count_pad={count_pad}", "pool",
                                   "_avg_pool2d_fwd_kernel", _ptrs(dt, "x_ptr", "y_ptr"), consts, warps))
                out.append(Variant(f"pool avg bwd {dt} {label} count_pad={count_pad}", "pool",
                                   "_avg_pool2d_bwd_kernel", _ptrs(dt, "dy_ptr", "dx_ptr"), consts, warps))
        tile = importlib.import_module("netc.kernels.policy").adaptive_pool_tile
        for window in (1, 4, 784):  # adaptive: upsampling, 2x2 windows, a 28x28 global pool
            block, block_k, ada_warps = tile(window)
            out.append(Variant(f"pool adaptive fwd {dt} window={window}", "adaptive_pool",
                               "_adaptive_avg_pool2d_fwd_kernel", _ptrs(dt, "x_ptr", "y_ptr"),
                               {"BLOCK": block, "BLOCK_K": block_k}, ada_warps))
        out.append(Variant(f"pool adaptive bwd {dt}", "adaptive_pool", "_adaptive_avg_pool2d_bwd_kernel",
                           _ptrs(dt, "dy_ptr", "dx_ptr"), {"BLOCK": block}, ada_warps))
    return out


def _recurrent() -> list[Variant]:
    recurrent = importlib.import_module("netc.kernels.recurrent")

    cfg = recurrent.GPU_CONFIG
    step_n, step_h = cfg.step_block
    out = []
    for dt in DTYPES:
        for cell, gates in ((0, 1), (1, 1), (2, 4), (3, 3)):  # rnn tanh, rnn relu, lstm, gru
            consts = {"CELL": cell, "G": gates, "HAS_H0": False, "BLOCK_N": step_n, "BLOCK_H": step_h}
            fwd = _ptrs(dt, "xg_ptr", "hg_ptr", "y_ptr", "gates_ptr", "c_ptr", "cn_ptr", "h0_ptr", "c0_ptr")
            bwd = _ptrs(dt, "dy_ptr", "dh_next_ptr", "direct_ptr", "dc_in_ptr", "dc_out_ptr", "y_ptr",
                        "gates_ptr", "c_ptr", "dgx_ptr", "dgh_ptr", "h0_ptr", "c0_ptr")
            out.append(Variant(f"recurrent step fwd {dt} cell={cell}", "recurrent_steps", "_step_fwd_kernel",
                               fwd, consts, cfg.step_warps))
            out.append(Variant(f"recurrent step bwd {dt} cell={cell}", "recurrent_steps", "_step_bwd_kernel",
                               bwd, consts, cfg.step_warps))
    return out


def _persistent() -> list[Variant]:
    """The persistent whole-sequence kernels of every cell with the GPU tiles (one direction, with
    bias, no initial state: the examples' training step), plus a bidirectional lstm with h0."""
    recurrent = importlib.import_module("netc.kernels.recurrent")

    cfg = recurrent.GPU_CONFIG
    out = []
    for dt in DTYPES:
        for cell, gates in ((0, 1), (1, 1), (2, 4), (3, 3)):  # rnn tanh, rnn relu, lstm, gru
            block_n, block_j, block_k, warps = recurrent._seq_blocks(cfg, cell, 100, 128)
            precisions = ("ieee", "tf32") if dt == "fp32" else ("ieee",)
            for precision, (kernel, extra), (ndir, h0) in itertools.product(
                    precisions, (("seq_fwd_kernel", "HAS_BIAS"), ("seq_bwd_kernel", "HAS_DHN")),
                    ((1, False), (2, True)) if cell == 2 else ((1, False),)):
                consts = {"D": ndir, "CELL": cell, "G": gates, extra: ndir == 1, "HAS_H0": h0,
                          "BLOCK_N": block_n, "BLOCK_J": block_j, "BLOCK_K": block_k, "PRECISION": precision}
                pointers = {name: f"*{dt}" for name in _SEQ_POINTERS}
                name = f"recurrent {kernel.removesuffix('_kernel')} {dt} cell={cell} {precision} D={ndir}"
                out.append(Variant(name, "recurrent_cells", kernel, pointers, consts, warps, cfg.seq_stages,
                                   cfg.seq_maxnreg))
    return out


_SEQ_POINTERS = ("xg_ptr", "w_ptr", "b_ptr", "h0_ptr", "c0_ptr", "y_ptr", "gates_ptr", "c_ptr", "hn_ptr",
                 "cn_ptr", "dy_ptr", "dhn_ptr", "dcn_ptr", "dgx_ptr", "dgh_ptr", "dh0_ptr", "dc0_ptr")

FAMILIES = {
    "gemm": _gemm, "activation": _activation, "loss": _loss, "pool": _pool, "recurrent": _recurrent,
    "persistent": _persistent,
}


def variants() -> list[Variant]:
    """Every variant of every family, with the CUDA launch settings."""
    with _gpu_settings():
        return [variant for build in FAMILIES.values() for variant in build()]


def canaries() -> dict[str, Variant]:
    """Launch settings no launcher uses, that prove the harness can fail: what each should show -> variant.

    "error": a 4x4x4 float32 dot, which the interpreter runs but the compiler rejects (sides < 16);
    "over": a float64 GEMM tile whose shared memory is over the 227 KiB limit.
    """
    small = {**_GEMM_OFF, "BLOCK_M": 4, "BLOCK_N": 4, "BLOCK_K": 4, "GROUP_M": 8, "ACC_DTYPE": "tl.float32",
             "PRECISION": "ieee"}
    big = {**_GEMM_OFF, "HAS_BIAS": True, "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 128, "GROUP_M": 8,
           "ACC_DTYPE": "tl.float64", "PRECISION": "ieee"}
    return {
        "error": Variant("canary 4x4 dot", "gemm", "_gemm_kernel", _gemm_pointers("fp32"), small),
        "over": Variant("canary fp64 128^3 gemm", "gemm", "_gemm_kernel", _gemm_pointers("fp64"), big, 8),
    }


def _resolve(value: object) -> object:
    """'tl.float32'-style strings -> the triton dtype (kept as text so listing needs no compiler)."""
    import triton.language as tl

    if isinstance(value, str) and value.startswith("tl."):
        return getattr(tl, value[3:])
    return value


def compile_variant(variant: Variant, capability: int = 90) -> int:
    """Compile one variant for a CUDA target; returns its shared memory in bytes (raises on failure)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(f"netc.kernels.{variant.module}"), variant.kernel)
    unknown = set(variant.constexprs) - set(fn.arg_names)
    assert not unknown, f"{variant.name}: no such arguments {sorted(unknown)}"
    signature = {name: variant.pointers.get(name, "i32") for name in fn.arg_names}
    signature.update({name: "constexpr" for name in variant.constexprs})
    consts = {(fn.arg_names.index(name),): _resolve(value) for name, value in variant.constexprs.items()}
    source = ASTSource(fn=fn, signature=signature, constexprs=consts)
    options = {"num_warps": variant.warps, "num_stages": variant.stages}
    if variant.maxnreg is not None:
        options["maxnreg"] = variant.maxnreg
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    return int(compiled.metadata.shared)


def main() -> None:
    """Compile every variant and canary (or those named on the command line); print name -> result as JSON."""
    assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "run with TRITON_INTERPRET=0"
    wanted = set(sys.argv[1:])
    results: dict[str, dict[str, object]] = {}
    for variant in [*variants(), *canaries().values()]:
        if wanted and variant.name not in wanted:
            continue
        try:
            results[variant.name] = {"shared": compile_variant(variant)}
        except Exception as error:  # reported per variant; the test decides what fails
            chain = [error]  # a jit helper's error is the cause of its caller's, innermost last
            while chain[-1].__cause__ is not None:
                chain.append(chain[-1].__cause__)
            results[variant.name] = {"error": " <- ".join(f"{type(e).__name__}: {e}" for e in chain)[-2000:]}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
