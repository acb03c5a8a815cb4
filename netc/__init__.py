"""netc: `.net` files -> Triton kernels -> trained networks.

The public Python interface (spec/CLI.md): `netc.compile`, `netc.parse` and
`netc.NetError`. Attributes load lazily so `import netc` stays cheap and does
not pull in torch or triton until a network is compiled.
"""

from __future__ import annotations

from typing import Any

__all__ = ["compile", "parse", "NetError"]


def __getattr__(name: str) -> Any:
    if name == "NetError":
        from netc.dsl.errors import NetError

        return NetError
    if name == "parse":
        from netc.dsl import parse

        return parse
    if name == "compile":
        from netc.runtime.lower import compile

        return compile
    raise AttributeError(f"module 'netc' has no attribute {name!r}")
