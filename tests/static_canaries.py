"""Test-only kernels for tests/test_static_bench.py -> a launch without launch_metadata, a spill, a bad dot.

Imported by the tests (interpreted) and by the sm_90 compile subprocess
(uninterpreted), so they live in a module of their own.
"""

from __future__ import annotations

import triton
import triton.language as tl

from netc.kernels import costs


@triton.jit
def no_metadata_kernel(x_ptr, n, BLOCK: tl.constexpr):  # x (n,): doubled in place; declares no cost
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=ok) * 2, mask=ok)


@triton.jit(launch_metadata=costs.elementwise("n"))
def doubling_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):  # y (n,) = 2 * x (n,)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(y_ptr + offs, tl.load(x_ptr + offs, mask=ok) * 2, mask=ok)


@triton.jit
def spilling_kernel(x_ptr, y_ptr, SIDE: tl.constexpr):  # two live SIDE x SIDE float32 tiles in one warp
    rows = tl.arange(0, SIDE)
    tile = tl.load(x_ptr + rows[:, None] * SIDE + rows[None, :])
    root = tl.sqrt(tile)
    total = tl.sum(tl.sum(tile * root, axis=1), axis=0)  # needs both tiles whole
    tl.store(y_ptr + rows[:, None] * SIDE + rows[None, :], root * tile + total)


@triton.jit
def tiny_dot_kernel(a_ptr, c_ptr):  # a 4x4 dot: the interpreter runs it, the sm_90 compiler refuses
    offs = tl.arange(0, 4)
    a = tl.load(a_ptr + offs[:, None] * 4 + offs[None, :])
    tl.store(c_ptr + offs[:, None] * 4 + offs[None, :], tl.dot(a, a))
