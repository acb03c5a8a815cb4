"""Checkpoints: model + optimizer + meta -> directory -> the same values; interrupted saves break nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from netc.dsl import parse
from netc.dsl.errors import DataError
from netc.runtime import checkpoint as ckpt

SOURCE = "net tiny {\n    input [3]\n    linear 2\n}\n"


def _meta(source: str = SOURCE, **extra: Any) -> dict[str, Any]:
    return {"source": source, "source_sha256": ckpt.source_hash(source), "seed": 0, **extra}


def _trained_pair() -> tuple[nn.Module, torch.optim.Optimizer]:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(5, 3)).square().sum().backward()
        optimizer.step()
    return model, optimizer


def test_round_trip_restores_weights_optimizer_and_meta(tmp_path: Path) -> None:
    model, optimizer = _trained_pair()
    meta = _meta(epoch=3, metrics={"train_loss": 1.5})
    ckpt.save(str(tmp_path / "run"), model.state_dict(), optimizer.state_dict(), meta)
    loaded = ckpt.load(str(tmp_path / "run"))
    assert loaded.meta["epoch"] == 3 and loaded.meta["metrics"] == {"train_loss": 1.5}
    assert loaded.meta["versions"]["torch"] == torch.__version__
    for name, value in model.state_dict().items():
        assert torch.equal(loaded.model[name], value)
    fresh_model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    fresh = torch.optim.Adam(fresh_model.parameters(), lr=0.5)
    fresh.load_state_dict(loaded.optimizer)
    assert fresh.param_groups[0]["lr"] == 0.01
    for original, restored in zip(optimizer.state.values(), fresh.state.values(), strict=True):
        assert set(original) == set(restored) == {"step", "exp_avg", "exp_avg_sq"}
        for key in original:
            assert torch.equal(torch.as_tensor(original[key]), torch.as_tensor(restored[key]))
    assert oct(os.stat(tmp_path / "run").st_mode & 0o777) != oct(0o700)  # not mkdtemp's private mode


def test_sgd_momentum_state_round_trips(tmp_path: Path) -> None:
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    ckpt.save(str(tmp_path), model.state_dict(), optimizer.state_dict(), _meta())
    state = ckpt.load(str(tmp_path)).optimizer
    assert state["param_groups"][0]["nesterov"] is True
    assert torch.equal(state["state"][0]["momentum_buffer"], optimizer.state[model.weight]["momentum_buffer"])


def test_rng_state_round_trips() -> None:
    saved = ckpt.rng_state()
    expected = torch.rand(4)
    torch.rand(100)
    ckpt.set_rng_state(json.loads(json.dumps(saved)))
    assert torch.equal(torch.rand(4), expected)


def _save_counter(target: Path, value: int) -> None:
    weights = {"w": torch.full((8,), float(value))}
    ckpt.save(str(target), weights, {"state": {}, "param_groups": []}, _meta(step=value))


def test_failure_while_writing_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "run"
    _save_counter(target, 1)
    real_save_file = ckpt.save_file

    def dies_on_optimizer(tensors: dict[str, torch.Tensor], path: str) -> None:
        if path.endswith(ckpt.OPTIMIZER_FILE):
            with open(path, "wb") as handle:
                handle.write(b"half a file")
            raise KeyboardInterrupt  # as if Ctrl-C arrived in the middle of the save
        real_save_file(tensors, path)

    monkeypatch.setattr(ckpt, "save_file", dies_on_optimizer)
    with pytest.raises(KeyboardInterrupt):
        _save_counter(target, 2)
    loaded = ckpt.load(str(target))
    assert loaded.meta["step"] == 1 and torch.equal(loaded.model["w"], torch.full((8,), 1.0))
    assert os.listdir(tmp_path) == ["run"]  # the half-written staging directory is gone


def test_crash_between_the_renames_is_recovered(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "run"
    _save_counter(target, 1)
    real_rename = os.rename
    calls: list[str] = []

    def dies_on_second(source: str, destination: str) -> None:
        calls.append(destination)
        if len(calls) == 2:
            raise OSError("power cut")  # the old one is aside, the new one not yet in place
        real_rename(source, destination)

    monkeypatch.setattr(ckpt.os, "rename", dies_on_second)
    with pytest.raises(OSError, match="power cut"):
        _save_counter(target, 2)
    monkeypatch.setattr(ckpt.os, "rename", real_rename)
    assert not target.exists()
    assert ckpt.load(str(target)).meta["step"] == 1
    assert target.is_dir()


_SAVER = textwrap.dedent("""
    import sys, torch
    from netc.runtime import checkpoint as ckpt
    target, counter = sys.argv[1], 0
    source = "net tiny {}"
    while True:
        counter += 1
        weights = {"w": torch.full((400_000,), float(counter))}  # 1.6 MB, so a save takes a while
        meta = {"source": source, "source_sha256": ckpt.source_hash(source), "step": counter}
        ckpt.save(target, weights, {"state": {}, "param_groups": []}, meta)
        print(counter, flush=True)
""")


@pytest.mark.parametrize("delay", [0.05, 0.13, 0.31])
def test_sigkill_during_saves_leaves_a_whole_checkpoint(tmp_path: Path, delay: float) -> None:
    target = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "-c", _SAVER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        process.stdout.readline()  # the first save is complete
        time.sleep(delay)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    loaded = ckpt.load(str(target))
    counter = loaded.meta["step"]
    assert counter >= 1 and torch.equal(loaded.model["w"], torch.full((400_000,), float(counter)))
    _save_counter(target, counter + 1)  # the next save clears what the killed one left behind
    assert os.listdir(tmp_path) == ["run"] and ckpt.load(str(target)).meta["step"] == counter + 1


def test_unwritable_targets_are_refused_with_a_message(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("the user's file")
    under_a_file = str(tmp_path / "a_file" / "run")
    with pytest.raises(DataError, match="cannot write checkpoints in .*a_file .*choose another --out"):
        ckpt.check_out(under_a_file)
    assert os.listdir(tmp_path) == ["a_file"]
    ckpt.check_out(str(tmp_path / "new" / "run"))  # a fresh place passes, and the probe leaves nothing
    assert os.listdir(tmp_path / "new") == []


def test_missing_and_damaged_checkpoints_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no checkpoint at .*does not exist"):
        ckpt.load(str(tmp_path / "absent"))
    (tmp_path / "a_file").write_text("not a checkpoint")
    with pytest.raises(DataError, match="no checkpoint at .*a_file \\(it is a file, not a directory\\)"):
        ckpt.load(str(tmp_path / "a_file"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a netc checkpoint .*no meta.json"):
        ckpt.load(str(tmp_path / "empty"))
    model, optimizer = _trained_pair()
    target = tmp_path / "run"
    ckpt.save(str(target), model.state_dict(), optimizer.state_dict(), _meta())
    weights = target / ckpt.MODEL_FILE
    weights.write_bytes(weights.read_bytes()[:-20])
    with pytest.raises(DataError, match="damaged or incomplete"):
        ckpt.load(str(target))
    ckpt.save(str(target), model.state_dict(), optimizer.state_dict(), _meta())
    meta_path = target / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    meta["source"] += "# edited"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(DataError, match="does not match its sha256"):
        ckpt.load(str(target))
    meta_path.write_text("{ not json")
    with pytest.raises(DataError, match="damaged or incomplete"):
        ckpt.load(str(target))
    os.remove(target / ckpt.OPTIMIZER_FILE)
    with pytest.raises(DataError, match="damaged or incomplete"):
        ckpt.load(str(target))


def test_a_checkpoint_without_a_program_hash_is_compared_by_its_source(tmp_path: Path) -> None:
    model, optimizer = _trained_pair()
    valid = "net tiny {\n    input [784]\n    linear 10\n}\n"
    ckpt.save(str(tmp_path), model.state_dict(), optimizer.state_dict(), _meta(valid))  # no program_sha256
    loaded = ckpt.load(str(tmp_path))
    ckpt.check_source(loaded, parse(valid), "tiny.net")  # the same text passes
    with pytest.raises(DataError, match="different .net source \\(compared byte for byte\\) than other.net"):
        ckpt.check_source(loaded, parse(valid.replace("linear 10", "linear 10  # edited")), "other.net")


def test_never_replaces_a_directory_that_is_not_a_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    model, optimizer = _trained_pair()
    with pytest.raises(DataError, match="exists and is not a netc checkpoint"):
        ckpt.save(str(tmp_path / "mine"), model.state_dict(), optimizer.state_dict(), _meta())
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"
