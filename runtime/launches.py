"""Code that launches Triton kernels -> a record of every launch (kernel, grid, arguments, settings, cost).

The one launch recorder of netc: `netc compile --emit plan`, `netc bench`
(`triton_launches`), `netc bench --static` and the tests read launches
through it. It wraps `run` of Triton's JIT and interpreter kernel classes,
which every `kernel[grid](...)` goes through, so nothing in the kernel
families knows about it. A launch's FLOPs and bytes come from the kernel's own
`launch_metadata` (see `netc.kernels.costs`); a kernel without one is
recorded with `metadata=None`, and the reports say "no launch_metadata".

`DeviceOpCounter` counts the other GPU work of the same code: every PyTorch
operator that would launch a kernel (or a copy, or a memset) on CUDA, seen
below autograd through a TorchDispatchMode, so it works on the CPU too.
"""

from __future__ import annotations

import inspect
import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

from torch.utils._python_dispatch import TorchDispatchMode

# launch options Triton takes next to the kernel's own arguments
_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class TensorArg:
    """What a record keeps of a tensor argument (keeping the tensor would change what autograd does:
    a gradient still referenced is copied into `.grad` instead of handed over)."""

    shape: tuple[int, ...]
    strides: tuple[int, ...]
    dtype: Any  # torch.dtype
    address: int
    itemsize: int

    @classmethod
    def of(cls, tensor: Any) -> TensorArg:
        return cls(tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.data_ptr(),
                   tensor.element_size())

    def data_ptr(self) -> int:
        return self.address

    def element_size(self) -> int:
        return self.itemsize

    def numel(self) -> int:
        return math.prod(self.shape)

    def stride(self) -> tuple[int, ...]:
        return self.strides


@dataclass
class Launch:
    """One `kernel[grid](...)` call."""

    kernel: str  # the @triton.jit function's name
    module: str  # the Python module that defines it
    grid: tuple[int, ...]
    args: dict[str, Any]  # every argument by name, defaults applied (a tensor as a TensorArg)
    options: dict[str, int]  # num_warps, num_stages, ... as the launcher passed them
    metadata: dict[str, Any] | None  # the kernel's launch_metadata: {"name", "flops", "bytes"}
    tag: tuple[str, str] = ("", "")  # (layer, phase) set by whoever records

    @property
    def qualified(self) -> str:
        return f"{self.module}.{self.kernel}"

    @property
    def flops(self) -> int | None:
        return None if self.metadata is None else int(self.metadata.get("flops", 0))

    @property
    def bytes(self) -> int | None:
        return None if self.metadata is None else int(self.metadata.get("bytes", 0))


# launches running right now (with launch=True): the interpreter's own tensor work inside one is not
# an operation of the code being counted
_RUNNING = [0]


def _is_tensor(value: Any) -> bool:
    return hasattr(value, "data_ptr") and hasattr(value, "dtype") and hasattr(value, "stride")


def metadata_function(jit_function: Any) -> Any:
    """The launch_metadata function given to @triton.jit (a JITFunction, or the interpreter's), or None."""
    found = getattr(jit_function, "launch_metadata", None)
    if found is None:
        found = getattr(jit_function, "kwargs", {}).get("launch_metadata")
    return found


def _jit_classes() -> list[type]:
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    return [JITFunction, InterpretedFunction]


class LaunchRecorder:
    """`with LaunchRecorder(launch=...) as recorder:` records every Triton launch into `recorder.launches`.

    launch=True: the kernels still run (counting a real step); launch=False:
    nothing runs, only the record is kept (tracing a step on uninitialised
    tensors, as the plan does). Set `recorder.tag` to say which layer and
    phase the next launches belong to.
    """

    def __init__(self, launch: bool = True) -> None:
        self.launch = launch
        self.tag: tuple[str, str] = ("", "")
        self.launches: list[Launch] = []
        self.kernels: dict[str, Any] = {}  # "module.name" -> the jit object, in first-launch order
        self._saved: dict[type, Any] = {}

    def __enter__(self) -> LaunchRecorder:
        for cls in _jit_classes():
            original = cls.run
            self._saved[cls] = original
            cls.run = self._wrap(original)  # type: ignore[method-assign]
        return self

    def __exit__(self, *exc: object) -> None:
        for cls, original in self._saved.items():
            cls.run = original  # type: ignore[method-assign]
        self._saved.clear()

    def _wrap(self, original: Any) -> Any:
        recorder = self

        def run(jit: Any, *args: Any, grid: Any, warmup: bool = False, **kwargs: Any) -> Any:
            if warmup:
                return original(jit, *args, grid=grid, warmup=warmup, **kwargs)
            recorder.record(jit, grid, args, kwargs)
            if not recorder.launch:
                return None
            _RUNNING[0] += 1
            try:
                return original(jit, *args, grid=grid, warmup=warmup, **kwargs)
            finally:
                _RUNNING[0] -= 1

        return run

    def record(self, jit: Any, grid: Any, args: tuple, kwargs: dict[str, Any]) -> Launch:
        """Bind the call's arguments by name, resolve the grid, ask the kernel for its cost."""
        fn = jit.fn
        params = inspect.signature(fn).parameters
        options = {key: kwargs[key] for key in _OPTIONS if key in kwargs and key not in params}
        given = {key: value for key, value in kwargs.items() if key in params}
        bound = inspect.signature(fn).bind(*args, **given)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        shape = tuple(int(size) for size in (grid(arguments) if callable(grid) else grid))
        cost = metadata_function(jit)
        metadata = dict(cost(shape, None, arguments)) if cost is not None else None
        kept = {key: TensorArg.of(value) if _is_tensor(value) else value for key, value in arguments.items()}
        launch = Launch(fn.__name__, fn.__module__, shape, kept, options, metadata, self.tag)
        self.kernels.setdefault(launch.qualified, jit)
        self.launches.append(launch)
        return launch

    def counts(self) -> dict[str, int]:
        """Kernel name -> launches, sorted by name."""
        return dict(sorted(Counter(launch.kernel for launch in self.launches).items()))


# ---- the other GPU operations ------------------------------------------------------------------
# PyTorch operators that launch nothing on CUDA: allocation, views and metadata.
_NO_KERNEL = {
    "empty", "empty_strided", "empty_like", "new_empty", "new_empty_strided", "_unsafe_view", "view",
    "_reshape_alias", "as_strided", "detach", "alias", "lift_fresh", "set_", "resize_", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_has_compatible_shallow_copy_type",
    "is_pinned", "record_stream", "_version", "dim", "size", "stride",
}


@dataclass
class DeviceOp:
    """A PyTorch operator that launches GPU work on CUDA (one kernel, copy or memset each, by assumption)."""

    op: str  # "aten.add_.Tensor"
    tag: tuple[str, str]
    sync: bool = False  # reads a value back to the host (a stall inside a step)
    bytes: int = 0  # its distinct tensor arguments and results, at their sizes
    site: str = ""  # the innermost netc (else torch) source line that called it: "kernels/loss.py:209"


class DeviceOpCounter(TorchDispatchMode):
    """`with DeviceOpCounter() as ops:` lists every operator below autograd that would run on the GPU.

    Views, allocations and metadata queries are left out: they launch
    nothing; so is the Triton interpreter's own tensor work inside a launch
    that a LaunchRecorder(launch=True) runs. Each remaining operator counts as one GPU operation (an estimate:
    cuDNN and cuBLAS may launch two or three kernels for one convolution or
    matmul, a multi-tensor `_foreach_` op launches one per chunk of tensors).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[DeviceOp] = []
        self.tag: tuple[str, str] = ("", "")

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        name = func.overloadpacket.__name__
        result = func(*args, **(kwargs or {}))
        if _RUNNING[0] == 0 and not (func.is_view or name in _NO_KERNEL or str(func).startswith("profiler.")):
            sync = name in ("_local_scalar_dense", "item")
            moved = _distinct_bytes([args, kwargs, result])
            self.ops.append(DeviceOp(str(func), self.tag, sync, moved, _site()))
        return result

    def counts(self) -> dict[str, int]:
        """Operator -> how many times it ran, sorted by name."""
        return dict(sorted(Counter(op.op for op in self.ops).items()))


def _site() -> str:
    """Where the operator was called from: the innermost frame of netc's code outside this module."""
    import traceback

    frames = traceback.extract_stack()[:-3]
    for frame in reversed(frames):
        path = frame.filename.replace("\\", "/")
        for package in ("/kernels/", "/runtime/", "/dsl/"):
            if package in path and "site-packages/torch" not in path and not path.endswith("launches.py"):
                return f"{package.strip('/')}/{path.rsplit(package, 1)[1]}:{frame.lineno}"
    torch_frames = [frame for frame in frames if "torch/" in frame.filename.replace("\\", "/")]
    if torch_frames:
        frame = torch_frames[-1]
        return f"torch/{frame.filename.replace(chr(92), '/').rsplit('torch/', 1)[1]}:{frame.lineno}"
    return ""


def _distinct_bytes(values: Any) -> int:
    from torch.utils._pytree import tree_leaves

    tensors = {id(leaf): leaf for leaf in tree_leaves(values) if hasattr(leaf, "untyped_storage")}
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def pytorch_op_name(op: DeviceOp) -> str:
    """"aten.add_.Tensor" -> "add_"."""
    parts = op.op.split(".")
    return parts[1] if len(parts) > 1 else op.op

