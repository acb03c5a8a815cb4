"""Recorded launches -> their exact GPU specializations -> compiled for sm_90 without a GPU -> resource facts.

A GPU launch compiles one specialization of a kernel: its constexprs, the
ints Triton turns into constants (1, None), the pointers and ints it marks
16-byte divisible, num_warps and num_stages. `specialization` derives it from
a recorded launch with Triton's own rule (`native_specialize_impl` on the
CUDA backend; a copy of the rule where that is missing). `compile_all`
compiles each distinct one with `triton.compile(ASTSource(...),
target=GPUTarget("cuda", cap, 32))` in a subprocess that imports the kernels
uninterpreted (TRITON_INTERPRET=0), then reads the cubin with the tools
Triton ships (`cuobjdump --dump-resource-usage` and `-sass`): registers,
per-thread local memory (spills), shared memory, and the SASS instruction
counts that tell tensor cores (HMMA, HGMMA, DMMA) from CUDA cores (FFMA).
Results are cached on disk, keyed by the kernels' source, Triton's version
and the specialization, so a repeat run compiles nothing.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from netc.runtime.launches import Launch, TensorArg

SASS_COUNTED = ("HGMMA", "HMMA", "DMMA", "IMMA", "FFMA", "DFMA", "LDL", "STL", "LDG", "STG", "LDGSTS")


# ---- the specialization of a launch (parent process) -------------------------------------------


def _dtype_name(value: Any) -> Any:
    """Constexpr values -> JSON: a triton dtype becomes {"tl": "fp32"}; a tl.constexpr its value."""
    if type(value).__name__ == "dtype" and type(value).__module__.startswith("triton"):
        return {"tl": str(value)}
    return getattr(value, "value", value) if type(value).__name__ == "constexpr" else value


def _specialize(value: Any, specialize: bool) -> tuple[str, Any]:
    """(type, attribute) as Triton's CUDA launcher specializes one non-constexpr argument."""
    if isinstance(value, TensorArg):  # a recorded tensor: its dtype and address are all the rule reads
        return _python_specialize(value, specialize)
    try:
        from triton._C.libtriton import native_specialize_impl
        from triton.backends.nvidia.compiler import CUDABackend

        return native_specialize_impl(CUDABackend, value, False, specialize, True)
    except ImportError:  # older triton: the same rule, written out
        return _python_specialize(value, specialize)


def _python_specialize(value: Any, specialize: bool) -> tuple[str, Any]:
    if value is None:
        return "constexpr", None
    if isinstance(value, bool):
        return "u1", None
    if isinstance(value, int):
        if specialize and value == 1:
            return "constexpr", 1
        kind = "i32" if -(2**31) <= value < 2**31 else "i64" if value < 2**63 else "u64"
        return kind, "D" if specialize and value % 16 == 0 else ""
    if isinstance(value, float):
        return "fp32", None
    names = {"float32": "fp32", "float64": "fp64", "float16": "fp16", "bfloat16": "bf16", "int64": "i64",
             "int32": "i32", "int16": "i16", "int8": "i8", "uint8": "u8", "bool": "u1"}
    kind = "*" + names[str(value.dtype).removeprefix("torch.")]
    return kind, "D" if value.data_ptr() % 16 == 0 else ""


def _not_specialized(jit: Any) -> set[str]:
    names = getattr(jit, "do_not_specialize", None)
    if names is None:
        names = getattr(jit, "kwargs", {}).get("do_not_specialize") or []
    arg_names = list(jit.arg_names)
    return {arg_names[n] if isinstance(n, int) else n for n in names}


def specialization(launch: Launch, jit: Any, capability: int) -> dict[str, Any]:
    """The JSON description of what this launch compiles on a GPU of this capability."""
    keep_generic = _not_specialized(jit)
    constexpr_params = {p.name for p in jit.params if p.is_constexpr} if hasattr(jit, "params") else set()
    if not constexpr_params:  # the interpreter's stand-in: read the annotations
        constexpr_params = {name for name, note in jit.fn.__annotations__.items() if "constexpr" in str(note)}
    signature: dict[str, str] = {}
    constexprs: dict[str, Any] = {}
    divisible: list[str] = []
    for name, value in launch.args.items():
        if name in constexpr_params:
            signature[name], constexprs[name] = "constexpr", _dtype_name(value)
            continue
        kind, attribute = _specialize(value, name not in keep_generic)
        signature[name] = kind
        if kind == "constexpr":
            constexprs[name] = attribute
        elif attribute == "D":
            divisible.append(name)
    return {"module": launch.module, "kernel": launch.kernel, "source": source_hash(jit),
            "signature": signature, "constexprs": constexprs, "divisible": divisible,
            "num_warps": int(launch.options.get("num_warps", 4)),
            "num_stages": int(launch.options.get("num_stages", 3)), "capability": capability,
            **{key: int(launch.options[key]) for key in ("maxnreg", "num_ctas") if key in launch.options}}


# ---- the on-disk cache ---------------------------------------------------------------------------


def cache_dir() -> Path:
    """$NETC_STATIC_CACHE, else ~/.cache/netc/static-bench."""
    return Path(os.environ.get("NETC_STATIC_CACHE") or Path.home() / ".cache" / "netc" / "static-bench")


def _helper_modules(jit: Any, seen: set[str]) -> None:
    """The modules of `jit` and of every @triton.jit helper its globals reach, into `seen`."""
    if jit.fn.__module__ in seen:
        return
    seen.add(jit.fn.__module__)
    for value in jit.fn.__globals__.values():
        if inspect.isfunction(getattr(value, "fn", None)) and hasattr(type(value), "__getitem__"):
            _helper_modules(value, seen)


def source_hash(jit: Any) -> str:
    """Hash of the source files a kernel's compile depends on: its module and its jit helpers' modules."""
    import importlib.util

    modules: set[str] = set()
    _helper_modules(jit, modules)
    digest = hashlib.sha256()
    for module in sorted(modules):
        found = importlib.util.find_spec(module)
        if found is not None and found.origin:
            digest.update(module.encode() + Path(found.origin).read_bytes())
    return digest.hexdigest()[:24]


def cache_key(spec: dict[str, Any]) -> str:
    import triton

    text = json.dumps(spec, sort_keys=True) + triton.__version__
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def compile_all(specs: list[dict[str, Any]], timeout_s: int = 1800) -> list[dict[str, Any]]:
    """Resource facts for each spec (see `analyze`), from the cache or compiled in one subprocess."""
    keys = [cache_key(spec) for spec in specs]
    folder = cache_dir()
    results: dict[str, dict[str, Any]] = {}
    for key in set(keys):
        path = folder / f"{key}.json"
        if path.exists():
            results[key] = json.loads(path.read_text())
    todo = {key: spec for key, spec in zip(keys, specs, strict=True) if key not in results}
    if todo:
        fresh = _compile_in_subprocess(list(todo.values()), timeout_s)
        folder.mkdir(parents=True, exist_ok=True)
        for key, result in zip(todo, fresh, strict=True):
            results[key] = result
            if "error" not in result or result.get("cacheable"):
                (folder / f"{key}.json").write_text(json.dumps(result))
    return [dict(results[key], cached=key not in todo) for key in keys]


def _compile_in_subprocess(specs: list[dict[str, Any]], timeout_s: int) -> list[dict[str, Any]]:
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    done = subprocess.run([sys.executable, "-m", "netc.runtime.static_compile"], input=json.dumps(specs),
                          env=env, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"the sm_90 compile subprocess failed: {done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---- compiling and reading the cubin (the subprocess) --------------------------------------------


def _tool(name: str) -> str:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else name


def _resolve(value: Any) -> Any:
    import triton.language as tl

    return tl.dtype(value["tl"]) if isinstance(value, dict) and "tl" in value else value


def compile_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """Compile one specialization; {"regs", "local", "shared", "sass": {op: count}} or {"error"}."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = getattr(importlib.import_module(spec["module"]), spec["kernel"])
    names = list(fn.arg_names)
    constexprs = {(names.index(name),): _resolve(value) for name, value in spec["constexprs"].items()}
    attrs = {(names.index(name),): [["tt.divisibility", 16]] for name in spec["divisible"]}
    source = ASTSource(fn=fn, signature=dict(spec["signature"]), constexprs=constexprs, attrs=attrs)
    options = {key: spec[key] for key in ("num_warps", "num_stages", "maxnreg", "num_ctas") if key in spec}
    try:
        compiled = triton.compile(source, target=GPUTarget("cuda", spec["capability"], 32), options=options)
    except Exception as error:  # reported per kernel: a compile error is a finding, not a crash
        return {"error": f"{type(error).__name__}: {error}"[-1500:], "cacheable": True}
    return analyze(compiled.asm["cubin"], int(compiled.metadata.shared))


def analyze(cubin: bytes, shared: int) -> dict[str, Any]:
    """Registers, local bytes per thread (spills), shared memory and SASS counts of one cubin."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.cubin")
        with open(path, "wb") as handle:
            handle.write(cubin)
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", path], capture_output=True,
                               text=True, check=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    facts = {key.lower(): int(value) for key, value in re.findall(r"\b(REG|STACK|LOCAL):(\d+)", usage)}
    opcodes = Counter(match.split(".")[0] for match in
                      re.findall(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)", sass))
    return {"regs": facts.get("reg", 0), "local": facts.get("local", 0), "stack": facts.get("stack", 0),
            "shared": shared, "sass": {op: opcodes[op] for op in SASS_COUNTED if opcodes[op]}}


def _compile_safely(spec: dict[str, Any]) -> dict[str, Any]:
    try:
        return compile_spec(spec)
    except Exception as error:  # a tool failed (not the kernel): report it, do not cache it
        return {"error": f"{type(error).__name__}: {error}"[-1500:], "cacheable": False}


def main() -> None:
    """Read a JSON list of specs on stdin; print one JSON list of results.

    Compiles in parallel over the CPU's cores ($NETC_STATIC_JOBS caps it):
    ptxas and Triton's passes are CPU-bound and the specs independent.
    """
    from concurrent.futures import ProcessPoolExecutor

    specs = json.loads(sys.stdin.read())
    jobs = min(len(specs), int(os.environ.get("NETC_STATIC_JOBS") or os.cpu_count() or 1))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(_compile_safely, specs))
    else:
        results = [_compile_safely(spec) for spec in specs]
    print(json.dumps(results))


if __name__ == "__main__":
    main()
