"""Model + optimizer + run state <-> a checkpoint directory, written atomically.

A checkpoint directory holds `model.safetensors` (the weights, by PyTorch
parameter name), `optimizer.safetensors` (every tensor of the optimizer's
state), `meta.json` (the `.net` source and its sha256, epoch, step, metrics,
seed, versions, backend, the optimizer's non-tensor state and the RNG
states), plus whatever the run adds (`metrics.jsonl`, `curves.png`).
meta.json is strict JSON: a non-finite number is written as the string
"NaN", "Infinity" or "-Infinity". Loading validates every file first
(`checkpoint_schema`); saving refuses NaN or infinite weights.

Atomic: everything is written into a fresh directory next to the target and
fsynced; then the old directory is renamed aside, the new one renamed into
place, and the old one removed. A save interrupted at any point leaves either
the previous checkpoint or the new one; if it stopped between the two
renames, `load` finds the previous one under its aside name and restores it.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from netc.dsl.errors import DataError
from netc.runtime.checkpoint_schema import check_meta

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
META_FILE = "meta.json"
FORMAT = 1
_ASIDE = ".old-"  # the previous checkpoint while the new one is renamed into place


@dataclass
class Checkpoint:
    """What `load` returns: tensors on the host, and the decoded meta.json."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]  # a torch.optim state_dict: {"state": ..., "param_groups": ...}
    meta: dict[str, Any]
    path: str
    extras: dict[str, str] = field(default_factory=dict)


class NonFiniteWeights(DataError):
    """`save` was handed NaN or infinite values: nothing was written."""


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


# fields of the checked program that say where it was written, not what it computes
_POSITION_FIELDS = frozenset({"loc", "locs", "input_loc", "source", "path"})


def canonical(value: Any) -> Any:
    """The checked program (a Graph, or any of its parts) as plain JSON data, without source positions.

    Comments, blank lines and spacing change only positions, so they leave this unchanged;
    any change to a layer, a shape, an argument or a train setting changes it.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: canonical(getattr(value, f.name)) for f in dataclasses.fields(value)
                  if f.name not in _POSITION_FIELDS}
        return {"__type__": type(value).__name__, **fields}
    if isinstance(value, Mapping):
        return {str(key): canonical(item) for key, item in value.items() if key not in _POSITION_FIELDS}
    if isinstance(value, (list, tuple)):
        return [canonical(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return repr(value)


def program_hash(graph: Any) -> str:
    """sha256 of the checked program (network and train block), blind to comments and whitespace."""
    text = json.dumps(canonical(graph), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def strict_json(value: Any) -> Any:
    """`value` with every NaN or infinity as the string "NaN", "Infinity" or "-Infinity" (JSON has none)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, dict):
        return {key: strict_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(item) for item in value]
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"bare {name} is not JSON")


def versions() -> dict[str, str]:
    """Versions worth recording next to the weights."""
    found = {"python": platform.python_version(), "torch": torch.__version__}
    for module in ("triton", "numpy", "safetensors"):
        try:
            found[module] = __import__(module).__version__
        except ImportError:
            continue
    return found


def rng_state() -> dict[str, Any]:
    """The global torch RNG states (dropout draws from them), as JSON-safe text."""
    state = {"cpu": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode("ascii")}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda_states = torch.cuda.get_rng_state_all()
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode("ascii") for s in cuda_states]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def decode(text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)

    torch.set_rng_state(decode(state["cpu"]))
    if "cuda" in state and torch.cuda.is_available():
        for index, text in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(decode(text), index)


def _flatten_optimizer(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into tensors ("state.<param>.<key>") and JSON-safe rest."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for param_id, entries in state_dict["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param_id}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        _, param_id, key = name.split(".", 2)
        state.setdefault(int(param_id), {})[key] = tensor
    for param_id, entries in rest.get("scalars", {}).items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": rest["param_groups"]}


def _fsync_dir(path: str) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_file(path: str) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _write_json(path: str, value: Any) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(strict_json(value), handle, indent=1, allow_nan=False)
        handle.write("\n")


def _read_meta(path: str) -> Any:
    """meta.json as strict JSON: a bare NaN or Infinity is refused, as every other JSON reader would."""
    with open(path, encoding="utf-8") as handle:
        return json.load(handle, parse_constant=_refuse_constant)


def check_target(target: str) -> None:
    """Refuse to replace a directory that is not a checkpoint (it may hold the user's files), or a file."""
    if os.path.isdir(target) and os.listdir(target) and not os.path.isfile(os.path.join(target, META_FILE)):
        raise DataError(f"{target} exists and is not a netc checkpoint; choose another --out directory")
    if os.path.exists(target) and not os.path.isdir(target):
        raise DataError(f"{target} exists and is not a directory; choose another --out directory")


def check_out(target: str, graph: Any = None) -> None:
    """Before training: `target` can take checkpoints (not the user's file or directory, nor a checkpoint
    of another net than `graph`; writable)."""
    target = os.path.abspath(target)
    check_target(target)
    if graph is not None:
        _check_same_net(target, graph)
    parent, name = os.path.split(target)
    try:
        os.makedirs(parent, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{name}.probe-", dir=parent))
    except OSError as error:
        raise DataError(f"cannot write checkpoints in {parent} ({error.strerror or error}); "
                        "choose another --out directory") from None


def _check_same_net(target: str, graph: Any) -> None:
    """Refuse to overwrite a checkpoint of a different program (a second run of the same one may)."""
    meta_path = os.path.join(target, META_FILE)
    if not os.path.isfile(meta_path):
        return
    try:
        meta = _read_meta(meta_path)
        same = _same_program(meta, graph)
        name = meta.get("net_path") or meta.get("name") or "another net"
    except (OSError, ValueError, AttributeError, TypeError):
        raise DataError(f"{target} holds a damaged checkpoint ({META_FILE} cannot be read); choose another "
                        "--out directory, or delete it") from None
    if not same:
        raise DataError(f"{target} holds a checkpoint of a different net ({name}); it is not overwritten: "
                        "choose another --out directory, continue it with --resume and its .net file, "
                        "or delete it")


def _same_program(meta: dict[str, Any], graph: Any) -> bool:
    """Whether `meta` was saved for `graph`'s program (older checkpoints recorded the source bytes only)."""
    if "program_sha256" in meta:
        return meta["program_sha256"] == program_hash(graph)
    return meta.get("source_sha256") == source_hash(graph.source)


def _check_finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise NonFiniteWeights(f"refusing to save {what} '{name}': it holds NaN or infinite values")


def save(
    target: str,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    meta: dict[str, Any],
    extras: Callable[[str], None] | None = None,
) -> None:
    """Write a checkpoint to `target` atomically; `extras(tmpdir)` may add files (metrics, plots)."""
    target = os.path.abspath(target)
    _recover(target)
    check_target(target)
    parent, name = os.path.split(target)
    os.makedirs(parent, exist_ok=True)
    _remove_leftovers(parent, name)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        weights = {key: value.detach().contiguous().cpu() for key, value in model_state.items()}
        _check_finite(weights, "the weight")
        tensors, rest = _flatten_optimizer(optimizer_state)
        _check_finite(tensors, "the optimizer state")
        save_file(weights, os.path.join(staging, MODEL_FILE))
        save_file(tensors, os.path.join(staging, OPTIMIZER_FILE))
        full_meta = {"format": FORMAT, **meta, "optimizer": rest, "versions": versions()}
        if extras is not None:
            extras(staging)
        _write_json(os.path.join(staging, META_FILE), full_meta)  # last: marks a whole checkpoint
        _finish_staging(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _swap_into_place(staging, target)


def _finish_staging(staging: str) -> None:
    """Flush every file to disk and give the directory the usual permissions (mkdtemp makes it 0700)."""
    umask = os.umask(0)
    os.umask(umask)
    for entry in os.listdir(staging):
        path = os.path.join(staging, entry)
        os.chmod(path, 0o666 & ~umask)
        _fsync_file(path)
    os.chmod(staging, 0o777 & ~umask)
    _fsync_dir(staging)


def _swap_into_place(staging: str, target: str) -> None:
    parent, name = os.path.split(target)
    aside = None
    if os.path.exists(target):
        aside = f"{parent}/.{name}{_ASIDE}{os.getpid()}"
        shutil.rmtree(aside, ignore_errors=True)
        os.rename(target, aside)
    os.rename(staging, target)
    _fsync_dir(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def _remove_leftovers(parent: str, name: str) -> None:
    """Staging and aside directories that a killed save left behind (after `_recover` took what it needs)."""
    for entry in os.listdir(parent):
        if entry.startswith((f".{name}.tmp-", f".{name}{_ASIDE}")):
            shutil.rmtree(os.path.join(parent, entry), ignore_errors=True)


def _recover(target: str) -> None:
    """Finish a save that stopped between its two renames: put the previous checkpoint back."""
    if os.path.isfile(os.path.join(target, META_FILE)):
        return
    parent, name = os.path.split(os.path.abspath(target))
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        aside = os.path.join(parent, entry)
        if entry.startswith(f".{name}{_ASIDE}") and os.path.isfile(os.path.join(aside, META_FILE)):
            if os.path.isdir(target) and not os.listdir(target):
                os.rmdir(target)
            if not os.path.exists(target):
                os.rename(aside, target)
            return


def load(path: str) -> Checkpoint:
    """Read and check the checkpoint in `path`; a missing or damaged one raises DataError."""
    _recover(path)
    meta_path = os.path.join(path, META_FILE)
    if not os.path.isdir(path):
        why = "it is a file, not a directory" if os.path.exists(path) else "the directory does not exist"
        raise DataError(f"no checkpoint at {path} ({why})")
    if not os.path.isfile(meta_path):
        raise DataError(f"{path} is not a netc checkpoint (it has no {META_FILE})")
    try:
        meta = _read_meta(meta_path)
        model = load_file(os.path.join(path, MODEL_FILE))
        optimizer_tensors = load_file(os.path.join(path, OPTIMIZER_FILE))
    except (OSError, ValueError, SafetensorError) as error:
        raise DataError(f"the checkpoint in {path} is damaged or incomplete: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "source" not in meta:
        raise DataError(f"{path}/{META_FILE} is not a netc checkpoint description (format {FORMAT})")
    check_meta(meta, f"{path}/{META_FILE}")
    if meta["source_sha256"] != source_hash(meta["source"]):
        raise DataError(f"{path}/{META_FILE} is damaged: its .net source does not match its sha256")
    optimizer = _unflatten_optimizer(_optimizer_names(optimizer_tensors, f"{path}/{OPTIMIZER_FILE}"),
                                     meta["optimizer"])
    return Checkpoint(model=model, optimizer=optimizer, meta=meta, path=path)


def _optimizer_names(tensors: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """Every tensor named "state.<parameter index>.<key>", as `_flatten_optimizer` writes them."""
    for name in tensors:
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "state" or not parts[1].isdigit() or not parts[2]:
            raise DataError(f"{where}: tensor '{name}' is not named state.<parameter>.<key>; the file was "
                            "edited or written by another program")
    return tensors


def check_source(checkpoint: Checkpoint, graph: Any, net_path: str,
                 advice: str = "use the same file, or start a new run with another --out directory") -> None:
    """Refuse a checkpoint of a different program than `graph` (a checked Graph); `advice` says what to do.

    Comments and whitespace do not count (the checked program is compared); a checkpoint written
    before netc recorded the program's hash is compared by its source text.
    """
    if not _same_program(checkpoint.meta, graph):
        old = "program" if "program_sha256" in checkpoint.meta else "source (compared byte for byte)"
        raise DataError(f"the checkpoint in {checkpoint.path} was trained from a different .net {old} than "
                        f"{net_path}: a layer, a shape or a train setting differs; {advice}")
