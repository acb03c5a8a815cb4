"""`@record`: a frozen dataclass whose methods are shared, not generated per class (start-up time).

`@dataclass(frozen=True)` compiles six functions for each class (`__init__`, `__repr__`,
`__eq__`, `__hash__`, `__setattr__`, `__delattr__`) with `exec` when the module is imported:
0.55 to 0.95 ms a class on a 2-core machine (`bench/frontend_time.py` prints it), 25 classes in
the front end: a seventh of a cold `netc compile` (issue 14's budget is 100 ms). A record is the
same dataclass - `dataclasses.fields`, `asdict`, `replace` and `is_dataclass` work on it,
defaults and `field(default_factory=...)` too - whose methods are the generic ones below,
written once: they loop over the fields where dataclass's would be unrolled, which costs nothing
at the sizes of a syntax tree or a graph.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = dataclasses.MISSING


def record(cls: type[T]) -> type[T]:
    """Make cls a frozen dataclass: value equality and hash over its fields, a dataclass repr."""
    for name in _METHODS:
        if name in cls.__dict__:  # it would be replaced without a word
            raise TypeError(f"@record class {cls.__name__} defines {name}; use @dataclass instead")
    cls = dataclasses.dataclass(init=False, repr=False, eq=False)(cls)
    cls.__record__ = tuple((f.name, f.default, f.default_factory)  # type: ignore[attr-defined]
                           for f in dataclasses.fields(cls))
    for name, method in _METHODS.items():
        setattr(cls, name, method)
    return cls


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    cls = type(self)
    spec = cls.__record__
    if len(args) > len(spec):
        raise TypeError(f"{cls.__name__}() takes {len(spec)} positional arguments but {len(args)} were given")
    for index, (name, default, factory) in enumerate(spec):
        if index < len(args):
            if name in kwargs:
                raise TypeError(f"{cls.__name__}() got multiple values for argument '{name}'")
            value = args[index]
        elif name in kwargs:
            value = kwargs.pop(name)
        elif factory is not _MISSING:
            value = factory()
        elif default is not _MISSING:
            value = default
        else:
            raise TypeError(f"{cls.__name__}() missing required argument: '{name}'")
        object.__setattr__(self, name, value)
    if kwargs:
        raise TypeError(f"{cls.__name__}() got an unexpected keyword argument '{next(iter(kwargs))}'")


def _values(self: Any) -> tuple:
    return tuple(getattr(self, name) for name, _, _ in self.__record__)


def _repr(self: Any) -> str:
    fields = ", ".join(f"{name}={getattr(self, name)!r}" for name, _, _ in self.__record__)
    return f"{type(self).__qualname__}({fields})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _setattr(self: Any, name: str, value: Any) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


# what @dataclass(frozen=True) would generate for each class, shared by every record
_METHODS = {"__init__": _init, "__repr__": _repr, "__eq__": _eq, "__hash__": _hash,
            "__setattr__": _setattr, "__delattr__": _delattr}
