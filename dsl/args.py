"""Arguments as written (ast.Arg) + their specs -> resolved values, or messages with a Loc each."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from netc.dsl import ast
from netc.dsl.errors import Loc
from netc.dsl.limits import INT64_MAX
from netc.dsl.record import record

REQUIRED = object()  # marks an argument without a default


@record
class ArgSpec:
    """One argument of a layer or train setting.

    kind: "int", "float", "bool", "string", "pair" (an int or a 2-tuple of ints, for kernels
    and strides), "padding" (a pair or `same`), "choice" (a name from `choices`), or
    "floats2" (a 2-tuple of numbers, for adam's betas). Bounds apply to every number in it.
    """

    name: str
    kind: str
    default: Any = REQUIRED
    positional: bool = False
    minimum: float | None = None  # inclusive
    above: float | None = None  # exclusive lower bound
    below: float | None = None  # exclusive upper bound
    maximum: float | None = None  # inclusive upper bound
    choices: tuple[str, ...] = ()
    noun: str = ""  # what a wrong choice is called: "activation", "dataset", ...


class ArgError(Exception):
    """A wrong argument: the message and where it was written."""

    def __init__(self, message: str, loc: Loc):
        super().__init__(message)
        self.message, self.loc = message, loc


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when none is close."""
    import difflib  # only when a name is wrong (~2 ms of every start otherwise)

    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def bind(what: str, args: Sequence[ast.Arg], specs: Sequence[ArgSpec], loc: Loc) -> tuple[dict, list]:
    """Match arguments to specs; return (name -> value, [ArgError]) with defaults filled in.

    `what` names the caller in messages (`conv2d`, `optimizer adam`). Values of arguments
    that were wrong are left out of the dict; the caller stops at any error. The dict
    follows the specs' order, whatever the order of the arguments.
    """
    matched, errors = _match(what, args, specs)
    # A misspelled or misplaced argument most likely is the missing one: one message is enough.
    misplaced = bool(errors)
    values: dict[str, Any] = {}
    for spec, value in matched:
        try:
            values[spec.name] = convert(spec, value)
        except ArgError as error:
            errors.append(error)
    given = {spec.name for spec, _ in matched}
    for spec in specs:
        if spec.name in given:
            continue
        if spec.default is not REQUIRED:
            values[spec.name] = spec.default
        elif not misplaced:
            errors.append(ArgError(_missing(what, spec), loc))
    return {spec.name: values[spec.name] for spec in specs if spec.name in values}, errors


def _match(what: str, args: Sequence[ast.Arg], specs: Sequence[ArgSpec]) -> tuple[list, list[ArgError]]:
    """Pair each argument with its spec: [(spec, value)], plus errors for those that fit none."""
    by_name = {spec.name: spec for spec in specs}
    positional = [spec for spec in specs if spec.positional]
    matched: list[tuple[ArgSpec, ast.Value]] = []
    errors: list[ArgError] = []
    keyword: ast.Arg | None = None  # the first keyword argument seen
    for arg in args:
        if arg.name is None and keyword is not None:
            errors.append(ArgError(f"positional argument {arg.value.text()} after the keyword argument "
                                   f"'{keyword.name}': write positional arguments first", arg.loc))
        elif arg.name is None and len(matched) >= len(positional):
            errors.append(ArgError(_too_many(what, positional), arg.loc))
        elif arg.name is None:
            matched.append((positional[len(matched)], arg.value))
        elif arg.name not in by_name:
            keyword = keyword or arg
            hint = did_you_mean(arg.name, list(by_name)) if by_name else f" (`{what}` takes no arguments)"
            errors.append(ArgError(f"unknown argument '{arg.name}' for `{what}`{hint}", arg.loc))
        elif any(spec.name == arg.name for spec, _ in matched):
            keyword = keyword or arg
            errors.append(ArgError(f"argument '{arg.name}' given twice", arg.loc))
        else:
            keyword = keyword or arg
            matched.append((by_name[arg.name], arg.value))
    return matched, errors


def _too_many(what: str, positional: list[ArgSpec]) -> str:
    if not positional:
        return f"too many positional arguments: `{what}` takes none"
    names = ", ".join(spec.name for spec in positional)
    count = len(positional)
    return f"too many positional arguments: `{what}` takes {count} ({names})"


def _missing(what: str, spec: ArgSpec) -> str:
    if spec.positional:
        return f"`{what}` needs its {spec.name}: write it after `{what}`"
    return f"`{what}` needs '{spec.name}': add {spec.name}=..."


def convert(spec: ArgSpec, value: ast.Value) -> Any:
    """One value -> its resolved form (pairs expanded), or ArgError naming the argument."""
    kind = spec.kind
    if kind == "choice":
        return _choice(spec, value)
    if kind == "bool":
        if value.kind != "bool":
            raise ArgError(f"'{spec.name}' must be true or false, got {value.text()}", value.loc)
        return value.value
    if kind == "string":
        if value.kind != "string":
            message = f"'{spec.name}' must be a string in double quotes, got {value.text()}"
            raise ArgError(message, value.loc)
        return value.value
    if kind == "padding" and value.kind == "name" and value.value == "same":
        return "same"
    if kind in ("pair", "padding", "floats2"):
        return _pair(spec, value)
    return _number(spec, value)


def _choice(spec: ArgSpec, value: ast.Value) -> str:
    choices = ", ".join(spec.choices)
    if value.kind != "name":
        raise ArgError(f"'{spec.name}' must be one of {choices}, got {value.text()}", value.loc)
    if value.value not in spec.choices:
        hint = did_you_mean(value.value, spec.choices) or f" (choose {choices})"
        raise ArgError(f"unknown {spec.noun or spec.name} '{value.value}'{hint}", value.loc)
    return value.value


def _pair(spec: ArgSpec, value: ast.Value) -> tuple:
    if value.kind == "tuple":
        if len(value.value) != 2:
            message = f"'{spec.name}' takes a pair like (3, 5), got {len(value.value)} values"
            raise ArgError(message, value.loc)
        return tuple(_number(spec, item) for item in value.value)
    if spec.kind == "floats2":
        raise ArgError(f"'{spec.name}' takes a pair like (0.9, 0.999), got {value.text()}", value.loc)
    number = _number(spec, value)
    return (number, number)


def _number(spec: ArgSpec, value: ast.Value) -> int | float:
    wants_int = spec.kind in ("int", "pair", "padding")
    if wants_int and value.kind != "int":
        extra = " or `same`" if spec.kind == "padding" else ""
        raise ArgError(f"'{spec.name}' must be an integer{extra}, got {value.text()}", value.loc)
    if not wants_int and value.kind not in ("int", "float"):
        raise ArgError(f"'{spec.name}' must be a number, got {value.text()}", value.loc)
    number = value.value if wants_int else float(value.value)
    if wants_int and abs(number) > INT64_MAX:  # beyond every size a tensor or int64 arithmetic can hold
        raise ArgError(f"'{spec.name}' is too large: integers must be at most {INT64_MAX:,} (2**63 - 1), "
                       f"got {value.text()}", value.loc)
    if not wants_int and not math.isfinite(number):
        raise ArgError(f"'{spec.name}' must be a finite number, got {value.text()}", value.loc)
    _check_range(spec, number, value)
    return number


def _check_range(spec: ArgSpec, number: float, value: ast.Value) -> None:
    text = value.text()
    if spec.minimum is not None and number < spec.minimum:
        raise ArgError(f"'{spec.name}' must be at least {_bound(spec.minimum)}, got {text}", value.loc)
    if spec.above is not None and number <= spec.above:
        word = "positive" if spec.above == 0 else f"above {spec.above}"
        raise ArgError(f"'{spec.name}' must be {word}, got {text}", value.loc)
    if spec.maximum is not None and number > spec.maximum:
        raise ArgError(f"'{spec.name}' must be at most {_bound(spec.maximum)}, got {text}", value.loc)
    if spec.below is not None and number >= spec.below:
        low = spec.minimum if spec.minimum is not None else spec.above
        span = f"in [{low:g}, {spec.below:g})" if low is not None else f"below {spec.below:g}"
        raise ArgError(f"'{spec.name}' must be {span}, got {text}", value.loc)


def _bound(number: float) -> float | int:
    """A range bound as the user would write it: 1, not 1.0; 4294967295, not 4.29497e+09."""
    return int(number) if float(number).is_integer() else number
