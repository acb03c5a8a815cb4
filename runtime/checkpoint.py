"""Model + optimizer + run state <-> a checkpoint directory, written atomically.

A checkpoint directory holds `model.safetensors` (the weights, by PyTorch
parameter name), `optimizer.safetensors` (every tensor of the optimizer's
state), `meta.json` (the `.net` source and its sha256, epoch, step, metrics,
seed, versions, backend, the optimizer's non-tensor state and the RNG
states), plus whatever the run adds (`metrics.jsonl`, `curves.png`).

Atomic: everything is written into a fresh directory next to the target and
fsynced; then the old directory is renamed aside, the new one renamed into
place, and the old one removed. A save interrupted at any point leaves either
the previous checkpoint or the new one; if it stopped between the two
renames, `load` finds the previous one under its aside name and restores it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from netc.dsl.errors import DataError

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


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


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
        json.dump(value, handle, indent=1)
        handle.write("\n")


def check_target(target: str) -> None:
    """Refuse to replace a directory that is not a checkpoint (it may hold the user's files), or a file."""
    if os.path.isdir(target) and os.listdir(target) and not os.path.isfile(os.path.join(target, META_FILE)):
        raise DataError(f"{target} exists and is not a netc checkpoint; choose another --out directory")
    if os.path.exists(target) and not os.path.isdir(target):
        raise DataError(f"{target} exists and is not a directory; choose another --out directory")


def check_out(target: str) -> None:
    """Before training: `target` can take checkpoints (not the user's file or directory; writable)."""
    target = os.path.abspath(target)
    check_target(target)
    parent, name = os.path.split(target)
    try:
        os.makedirs(parent, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{name}.probe-", dir=parent))
    except OSError as error:
        raise DataError(f"cannot write checkpoints in {parent} ({error.strerror or error}); "
                        "choose another --out directory") from None


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
        save_file(weights, os.path.join(staging, MODEL_FILE))
        tensors, rest = _flatten_optimizer(optimizer_state)
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
        with open(meta_path, encoding="utf-8") as handle:
            meta = json.load(handle)
        model = load_file(os.path.join(path, MODEL_FILE))
        optimizer_tensors = load_file(os.path.join(path, OPTIMIZER_FILE))
    except (OSError, ValueError, SafetensorError) as error:
        raise DataError(f"the checkpoint in {path} is damaged or incomplete: {error}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "source" not in meta:
        raise DataError(f"{path}/{META_FILE} is not a netc checkpoint description (format {FORMAT})")
    if meta.get("source_sha256") != source_hash(meta["source"]):
        raise DataError(f"{path}/{META_FILE} is damaged: its .net source does not match its sha256")
    try:
        optimizer = _unflatten_optimizer(optimizer_tensors, meta["optimizer"])
    except (KeyError, ValueError) as error:
        raise DataError(f"the optimizer state in {path} is damaged: {error}") from None
    return Checkpoint(model=model, optimizer=optimizer, meta=meta, path=path)


def check_source(checkpoint: Checkpoint, source: str, net_path: str,
                 advice: str = "use the same file, or start a new run with another --out directory") -> None:
    """Refuse a checkpoint that was trained from a different `.net` source; `advice` says what to do."""
    if checkpoint.meta["source_sha256"] != source_hash(source):
        raise DataError(
            f"the checkpoint in {checkpoint.path} was trained from a different .net source than {net_path} "
            f"(sha256 {checkpoint.meta['source_sha256'][:12]}... vs {source_hash(source)[:12]}...); {advice}"
        )
