"""`netc train` and `netc eval` end to end, in a subprocess: exit codes, messages, files, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_data import write_idx_dir

ROOT = Path(__file__).resolve().parent.parent
LENET = ROOT / "examples" / "lenet.net"

TINY = """net tiny {{
    input [25]
    linear 6
    relu
    linear 4
}}
train {{
    data mnist path="{path}" val=0.2
    batch 8
    optimizer sgd lr=0.1 momentum=0.9
}}
"""


def netc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    # one thread: these runs are tiny, and OpenMP threads spin badly on a busy shared machine
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "netc.runtime.cli", *args], capture_output=True, text=True,
                            cwd=cwd or ROOT, env=env, timeout=600)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def tiny_net(tmp_path: Path, data: Path | None = None) -> Path:
    if data is None:
        data = tmp_path / "data"
        write_idx_dir(data, train=45, test=11, side=5, classes=4, gz=True)
    path = tmp_path / "tiny.net"
    path.write_text(TINY.format(path=data))
    return path


def test_train_then_eval_lenet(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cpu = ("--device", "cpu")
    trained = netc("train", str(LENET), "--limit", "200", "--epochs", "1", "--out", str(out), *cpu)
    assert trained.returncode == 0, trained.stderr
    assert "epoch 1/1: train loss" in trained.stderr and "val accuracy" in trained.stderr
    assert "160 train / 40 val / 10,000 test" in trained.stderr
    final = trained.stdout.strip().splitlines()[-1]
    assert final.startswith("test loss ") and "test accuracy" in final
    assert {"model.safetensors", "optimizer.safetensors", "meta.json", "metrics.jsonl", "curves.png"} <= set(
        os.listdir(out))
    evaluated = netc("eval", str(LENET), "--checkpoint", str(out), "--device", "cpu")
    assert evaluated.returncode == 0, evaluated.stderr
    # the same weights, the same test set: the same numbers as the end of training
    assert final in evaluated.stdout

    resumed = netc("train", str(LENET), "--limit", "200", "--epochs", "2", "--resume", str(out), *cpu)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr and "epoch 2/2" in resumed.stderr
    assert "epoch 1/2" not in resumed.stderr

    other = tmp_path / "other.net"
    other.write_text(LENET.read_text().replace("linear 50", "linear 40"))
    refused = netc("train", str(other), "--resume", str(out), "--device", "cpu")
    assert refused.returncode == 1 and "trained from a different .net program" in refused.stderr
    refused_eval = netc("eval", str(other), "--checkpoint", str(out), "--device", "cpu")
    assert refused_eval.returncode == 1 and "different .net program" in refused_eval.stderr
    assert f"evaluate it with the .net file it was trained from ({LENET})" in refused_eval.stderr


def test_train_and_eval_on_the_triton_backend(tmp_path: Path) -> None:
    net, out = tiny_net(tmp_path), tmp_path / "run"
    target = ("--device", "cpu", "--backend", "triton")
    trained = netc("train", str(net), "--epochs", "2", "--out", str(out), *target)
    assert trained.returncode == 0, trained.stderr
    assert "cpu, triton backend" in trained.stderr and "36 train / 9 val / 11 test" in trained.stderr
    evaluated = netc("eval", str(net), "--checkpoint", str(out), "--device", "cpu", "--backend", "triton")
    assert evaluated.returncode == 0, evaluated.stderr
    assert trained.stdout.strip().splitlines()[-1] in evaluated.stdout


def test_non_finite_loss_exits_1(tmp_path: Path) -> None:
    # a learning rate that overflows float32 within a few steps (a NaN dataset is refused on load)
    result = netc("train", str(tiny_net(tmp_path)), "--out", str(tmp_path / "run"), "--device", "cpu",
                  "--lr", "1e38")
    assert result.returncode == 1
    assert "error: the training loss became inf in epoch 1" in result.stderr and "--lr" in result.stderr


@pytest.mark.parametrize("case", ["no_data", "no_checkpoint", "no_file", "bad_limit", "out_is_file",
                                  "dir_as_file", "checkpoint_is_file", "seed_too_big",
                                  "out_under_a_file"])
def test_user_mistakes_exit_with_a_message(tmp_path: Path, case: str) -> None:
    net = tiny_net(tmp_path, data=tmp_path / "missing")
    if case == "no_data":
        result = netc("train", str(net), "--device", "cpu", "--out", str(tmp_path / "run"))
        expected, code = "does not exist", 1
    elif case == "no_checkpoint":
        result = netc("eval", str(net), "--checkpoint", str(tmp_path / "nothing"), "--device", "cpu")
        expected, code = "no checkpoint at", 1
    elif case == "no_file":
        result = netc("train", str(tmp_path / "absent.net"), "--device", "cpu")
        expected, code = "absent.net", 1
    elif case == "out_is_file":
        (tmp_path / "taken").write_text("the user's file")
        result = netc("train", str(net), "--device", "cpu", "--out", str(tmp_path / "taken"))
        expected, code = "taken exists and is not a directory", 1
        assert "epoch" not in result.stderr  # refused before training, not after the first epoch
    elif case == "dir_as_file":
        result = netc("eval", str(tmp_path), "--checkpoint", str(tmp_path), "--device", "cpu")
        expected, code = "is a directory, not a .net file", 1
    elif case == "checkpoint_is_file":
        result = netc("eval", str(net), "--checkpoint", str(net), "--device", "cpu")
        expected, code = "(it is a file, not a directory)", 1
    elif case == "out_under_a_file":
        (tmp_path / "taken").write_text("the user's file")
        result = netc("train", str(net), "--device", "cpu", "--out", str(tmp_path / "taken" / "run"))
        expected, code = "cannot write checkpoints in", 1
        assert "epoch" not in result.stderr
    elif case == "seed_too_big":  # the epoch order seeds torch with seed * 1000003 + epoch: 64 bits
        result = netc("train", str(net), "--device", "cpu", "--seed", str(2**64))
        expected, code = f"--seed: must be between 0 and 4294967295, got {2**64}", 2
    else:
        result = netc("train", str(net), "--limit", "0")
        expected, code = "must be at least 1", 2
    assert result.returncode == code, result.stderr
    assert expected in result.stderr


@pytest.mark.parametrize("argv", [
    ["train", "x.net", "--lr", "inf"], ["train", "x.net", "--lr", "nan"], ["train", "x.net", "--lr", "0"],
    ["check", "x.net", "--tol", "inf"], ["train", "x.net", "--seed", "-1"],
    ["train", "x.net", "--seed", str(2**32)],
])
def test_out_of_range_flags_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """Refused by the parser (exit 2) before any file is read: no run with an inf lr or an inf tolerance."""
    from netc.runtime.cli import main

    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert f"argument {argv[2]}:" in capsys.readouterr().err


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_output_device_is_a_clear_error() -> None:
    with open("/dev/full", "w") as full:
        command = [sys.executable, "-m", "netc.runtime.cli", "compile", str(LENET)]
        result = subprocess.run(command, stdout=full, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                timeout=120)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip() == "error: cannot write the output: No space left on device"
