"""A checkpoint's meta.json and tensors -> validated before use, or DataError naming the file and the field.

Nothing from a checkpoint reaches the network, the optimizer or the RNG before
it is checked here: every meta.json field has a type and a range, unknown
fields are refused (a typo would otherwise be ignored), and every tensor must
have the name, shape and dtype that the live network or optimizer has, so
`load_state_dict` never casts or broadcasts silently.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import torch

from netc.dsl.errors import DataError

# a problem with a value, in words ("must be an integer >= 0"), or None when it is fine
Check = Callable[[Any], str | None]
MAX_SEED = 2**32 - 1
_HEX64 = re.compile(r"[0-9a-f]{64}")


def _integer(low: int = 0, high: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int):
            return "must be an integer"
        if value < low or (high is not None and value > high):
            return f"must be in [{low}, {high}]" if high is not None else f"must be at least {low}"
        return None
    return check


def _number(positive: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return "must be a finite number"
        return "must be positive" if positive and value <= 0 else None
    return check


def _of_type(kind: type, noun: str) -> Check:
    return lambda value: None if isinstance(value, kind) else f"must be {noun}"


def _sha256(value: Any) -> str | None:
    return None if isinstance(value, str) and _HEX64.fullmatch(value) else "must be a sha256 (64 hex digits)"


def _base64(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be base64 text"
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return "must be base64 text"
    return None


def _optional(check: Check) -> Check:
    return lambda value: None if value is None else check(value)


def _normalization(value: Any) -> str | None:
    """[mean, std] of the training inputs (predict and export apply them)."""
    if not isinstance(value, list) or len(value) != 2:
        return "must be [mean, std] with a finite mean and a positive finite std"
    if _number()(value[0]) or _number(positive=True)(value[1]):
        return "must be [mean, std] with a finite mean and a positive finite std"
    return None


_STRING = _of_type(str, "a string")
_DICT = _of_type(dict, "an object")
_LIST = _of_type(list, "a list")

# field -> (its check, required in every checkpoint, required to resume a run)
STATE_FIELDS: dict[str, Check] = {
    "epoch": _integer(), "batch": _integer(), "step": _integer(), "loss_sum": _number(), "history": _LIST,
}
META_FIELDS: dict[str, tuple[Check, bool, bool]] = {
    "format": (_integer(1), True, True),
    "source": (_STRING, True, True),
    "source_sha256": (_sha256, True, True),
    "program_sha256": (_sha256, False, False),  # absent in checkpoints written before it existed
    "optimizer": (_DICT, True, True),
    "versions": (_DICT, True, False),
    "name": (_STRING, False, True),
    "net_path": (_STRING, False, False),
    "seed": (_integer(0, MAX_SEED), False, True),
    "backend": (_STRING, False, False),
    "device": (_STRING, False, False),
    "limit": (_optional(_integer(1)), False, False),
    "train": (_DICT, False, True),
    "state": (_DICT, False, True),
    "base_lrs": (_LIST, False, True),
    "rng": (_DICT, False, True),
    "epoch": (_integer(), False, True),
    "step": (_integer(), False, True),
    "metrics": (_DICT, False, False),
    "normalization": (_normalization, False, False),  # absent in checkpoints written before it existed
}


def _refuse(where: str, field: str, problem: str, value: Any) -> DataError:
    shown = repr(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    return DataError(f"{where}: field '{field}' {problem}, got {shown}; the checkpoint was edited or damaged "
                     "(restore it, or start a new run)")


def _fields(where: str, prefix: str, value: Mapping[str, Any], checks: Mapping[str, Check],
            required: set[str] | frozenset[str]) -> None:
    """Every key of `value` known and valid; every `required` key present."""
    for key in value:
        if key not in checks:
            raise DataError(f"{where}: unknown field '{prefix}{key}'; the checkpoint was edited or "
                            "written by another program")
    for key, check in checks.items():
        if key not in value:
            if key in required:
                raise DataError(f"{where}: field '{prefix}{key}' is missing; the checkpoint is incomplete")
            continue
        problem = check(value[key])
        if problem:
            raise _refuse(where, prefix + key, problem, value[key])


def check_meta(meta: Any, where: str) -> None:
    """The fields every checkpoint needs, and the type of every field present (`where`: the file)."""
    if not isinstance(meta, dict):
        raise DataError(f"{where}: must hold a JSON object, got {type(meta).__name__}")
    checks = {key: check for key, (check, _, _) in META_FIELDS.items()}
    _fields(where, "", meta, checks, {key for key, (_, needed, _) in META_FIELDS.items() if needed})
    optimizer = meta["optimizer"]
    _fields(where, "optimizer.", optimizer, {"param_groups": _LIST, "scalars": _DICT}, {"param_groups"})
    for index, group in enumerate(optimizer["param_groups"]):
        if not isinstance(group, dict) or _integer_list(group.get("params")):
            raise _refuse(where, f"optimizer.param_groups.{index}",
                          "must be an object with a list of integer 'params'", group)
    for param_id, entries in optimizer.get("scalars", {}).items():
        if not param_id.isdigit() or not isinstance(entries, dict):
            raise _refuse(where, f"optimizer.scalars.{param_id}", "must map a parameter index to an object",
                          entries)
    if "state" in meta:
        _fields(where, "state.", meta["state"], STATE_FIELDS, frozenset(STATE_FIELDS))
    if "rng" in meta:
        _check_rng(meta["rng"], where)
    for index, lr in enumerate(meta.get("base_lrs", [])):
        problem = _number(positive=True)(lr)
        if problem:
            raise _refuse(where, f"base_lrs.{index}", problem, lr)


def _integer_list(value: Any) -> bool:
    """True when `value` is NOT a list of non-negative ints (a problem)."""
    return not isinstance(value, list) or any(_integer()(item) for item in value)


def _check_rng(rng: dict[str, Any], where: str) -> None:
    _fields(where, "rng.", rng, {"cpu": _base64, "cuda": _LIST}, {"cpu"})
    expected = torch.get_rng_state().numel()  # the CPU generator's state has a fixed size
    if len(base64.b64decode(rng["cpu"])) != expected:
        raise _refuse(where, "rng.cpu", f"must decode to {expected} bytes (torch's CPU generator state)",
                      rng["cpu"])
    for index, text in enumerate(rng.get("cuda", [])):
        problem = _base64(text)
        if problem:
            raise _refuse(where, f"rng.cuda.{index}", problem, text)


def check_resumable(meta: dict[str, Any], where: str) -> None:
    """The fields a run needs to continue (a checkpoint saved by a library user may lack them)."""
    for key, (_, _, needed) in META_FIELDS.items():
        if needed and key not in meta:
            raise DataError(f"{where}: field '{key}' is missing, so training cannot resume from it; "
                            "the checkpoint is incomplete")
    batch = meta["train"].get("batch")
    if _integer(1)(batch):
        raise _refuse(where, "train.batch", "must be an integer >= 1", batch)


def _describe(tensor: torch.Tensor) -> str:
    return f"{str(tensor.dtype).removeprefix('torch.')} {list(tensor.shape)}"


def check_tensors(found: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], where: str,
                  what: str) -> None:
    """Same names, shapes and dtypes as `expected`, and only finite values (`what`: 'weights', ...)."""
    missing = [name for name in expected if name not in found]
    extra = [name for name in found if name not in expected]
    if missing or extra:
        parts = ([f"lacks {_names(missing)}"] if missing else []) + ([f"has unknown {_names(extra)}"]
                                                                     if extra else [])
        raise DataError(f"{where}: this {what} file {' and '.join(parts)}; it belongs to another net")
    for name, tensor in found.items():
        want = expected[name]
        if tensor.shape != want.shape or tensor.dtype != want.dtype:
            raise DataError(f"{where}: tensor '{name}' is {_describe(tensor)}, but this net needs "
                            f"{_describe(want)}; nothing is converted: it belongs to another net or was "
                            "edited")
        _check_finite(tensor, name, where)


def _names(names: list[str]) -> str:
    shown = ", ".join(f"'{name}'" for name in names[:4])
    more = f" and {len(names) - 4} more" if len(names) > 4 else ""
    return f"tensor{'s' * (len(names) > 1)} {shown}{more}"


def check_optimizer_state(state: Mapping[str, Any], optimizer: torch.optim.Optimizer, where: str) -> None:
    """The saved optimizer state fits `optimizer`: its groups, their settings, each tensor's shape, dtype."""
    groups, live = state["param_groups"], optimizer.param_groups
    sizes, live_sizes = [len(g["params"]) for g in groups], [len(g["params"]) for g in live]
    if sizes != live_sizes:
        raise DataError(f"{where}: its parameter groups do not match this net's parameters; "
                        "it belongs to another net")
    for index, (group, live_group) in enumerate(zip(groups, live, strict=True)):
        if set(group) != set(live_group):
            names = sorted(set(group) ^ set(live_group))
            saved, wanted = sorted(set(group) - {"params"}), sorted(set(live_group) - {"params"})
            raise DataError(f"{where}: parameter group {index} has settings {saved}, but this optimizer "
                            f"takes {wanted} (differ: {names}); it was saved by another optimizer")
    params = {pid: p for g, lg in zip(groups, live, strict=True) for pid, p in zip(g["params"], lg["params"],
                                                                                      strict=True)}
    for param_id, entries in state["state"].items():
        if param_id not in params:
            raise DataError(f"{where}: state for parameter {param_id}, which no parameter group lists")
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                _check_state_tensor(f"state.{param_id}.{key}", value, params[param_id], where)


def _check_state_tensor(name: str, tensor: torch.Tensor, param: torch.Tensor, where: str) -> None:
    if name.endswith(".step"):  # a step count: one number
        if tensor.numel() != 1 or not bool(torch.isfinite(tensor.double()).all()) or float(tensor) < 0:
            raise DataError(f"{where}: tensor '{name}' must hold one step count >= 0, "
                            f"got {_describe(tensor)}")
        return
    if tensor.shape != param.shape or tensor.dtype != param.dtype:
        raise DataError(f"{where}: tensor '{name}' is {_describe(tensor)}, but its parameter is "
                        f"{_describe(param)}; nothing is converted: the optimizer state was edited or "
                        "belongs to another net")
    _check_finite(tensor, name, where)


def _check_finite(tensor: torch.Tensor, name: str, where: str) -> None:
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        raise DataError(f"{where}: tensor '{name}' holds NaN or infinite values; the checkpoint is damaged")
