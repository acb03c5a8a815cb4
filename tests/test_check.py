"""`netc check`: passes on correct kernels, fails (exit 1) on a deliberately broken one; error metric."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch

from netc.runtime import backends, cli
from netc.runtime.check import compare, full_float32

SMALL_NET = """
net small {
    input [4, 14, 14]
    conv2d 3 kernel=3 padding=1
    relu
    maxpool2d 2
    flatten
    linear 8
    dropout 0.25
    residual {
        linear 8
        tanh
    }
    linear 10
}
"""

TINY_NET = """
net tiny {
    input [784]
    linear 12
    relu
    linear 10
}
"""


@pytest.fixture
def small_file(tmp_path: Path) -> str:
    path = tmp_path / "small.net"
    path.write_text(SMALL_NET)
    return str(path)


@pytest.fixture
def tiny_file(tmp_path: Path) -> str:
    path = tmp_path / "tiny.net"
    path.write_text(TINY_NET)
    return str(path)


def _rows(output: str, layer_heading: str) -> dict[str, tuple[float, float, str]]:
    """The table under a heading that starts with `layer_heading`: tensor -> (abs, rel, verdict)."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(layer_heading))
    rows = {}
    for line in lines[start + 2:]:
        if not line.startswith("  "):
            break
        *name, abs_error, rel_error, verdict = line.split()
        rows[" ".join(name)] = (float(abs_error), float(rel_error), verdict)
    return rows


def test_check_passes_on_a_small_file(
    small_file: str, device: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", small_file, "--device", device, "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "tolerance 0.0001 relative (float32 with ieee dots)" in out
    for heading in ("layer 0 conv2d", "layer 1 relu", "layer 2 maxpool2d", "layer 4 linear",
                    "layer 5 dropout", "layer 6 residual", "layer 6.0 linear", "layer 6.1 tanh",
                    "fused 0 conv2d + 1 relu -> conv2d_act(relu)", "whole network small"):
        assert heading in out
    conv = _rows(out, "layer 0 conv2d")
    assert set(conv) == {"output", "grad input", "grad weight", "grad bias"}
    whole = _rows(out, "whole network small")
    assert {"output", "loss", "grad input", "grad 0.weight", "grad 6.0.weight", "grad 7.bias"} <= set(whole)
    assert all(verdict == "ok" and rel <= 1e-4 for _, rel, verdict in whole.values())
    assert out.rstrip().endswith("within 0.0001")
    every_rel = [float(line.split()[-2]) for line in out.splitlines() if line.endswith((" ok", " FAIL"))]
    assert len(every_rel) == int(out.split("ok: all ")[1].split()[0])  # every tensor has a row
    assert f"largest relative error {max(every_rel):.3e}:" in out


def _perturbed(original: Any, factor: float) -> Any:
    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        return original(*args, **kwargs) * factor

    return broken


def test_check_fails_when_a_kernel_is_broken(
    tiny_file: str, device: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = backends.get("triton")  # the backend entries the layers call
    monkeypatch.setattr(ops, "relu", _perturbed(ops.relu, 1.001))  # 1e-3 off: above 1e-4
    assert cli.main(["check", tiny_file, "--device", device, "--batch", "3"]) == 1
    out = capsys.readouterr().out
    relu = _rows(out, "layer 1 relu")
    assert relu["output"][2] == "FAIL" and relu["grad input"][2] == "FAIL"
    assert 0.9e-3 < relu["output"][1] < 1.1e-3
    assert all(verdict == "ok" for _, _, verdict in _rows(out, "layer 0 linear").values())
    assert "FAILED" in out
    # The fused pair and the whole network apply relu inside linear_act, never calling the broken kernel.
    assert all(verdict == "ok" for _, _, verdict in _rows(out, "fused 0 linear + 1 relu").values())
    assert all(verdict == "ok" for _, _, verdict in _rows(out, "whole network tiny").values())
    # A looser --tol accepts the same 1e-3 error.
    assert cli.main(["check", tiny_file, "--device", device, "--batch", "3", "--tol", "0.01"]) == 0


def test_check_finds_a_broken_fused_kernel_in_the_whole_network(
    tiny_file: str, device: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = backends.get("triton")
    original = ops.linear_act

    def broken(input: torch.Tensor, weight: torch.Tensor, bias: Any = None, activation: Any = None,
               slope: float = 0.01) -> torch.Tensor:
        out = original(input, weight, bias, activation, slope)
        return out * 1.01 if activation == "relu" else out  # only the fused linear+relu is wrong

    monkeypatch.setattr(ops, "linear_act", broken)
    assert cli.main(["check", tiny_file, "--device", device, "--batch", "3"]) == 1
    out = capsys.readouterr().out
    assert all(verdict == "ok" for _, _, verdict in _rows(out, "layer 0 linear").values())
    fused = _rows(out, "fused 0 linear + 1 relu -> linear_act(relu)")
    assert fused["output"][2] == "FAIL" and fused["grad weight"][2] == "FAIL"
    whole = _rows(out, "whole network tiny")
    assert whole["output"][2] == "FAIL" and whole["grad 0.weight"][2] == "FAIL"


def test_check_catches_a_wrong_dropout_scale(
    small_file: str, device: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = backends.get("triton")
    monkeypatch.setattr(ops, "dropout", _perturbed(ops.dropout, 0.9))
    assert cli.main(["check", small_file, "--device", device, "--batch", "2"]) == 1
    rows = _rows(capsys.readouterr().out, "layer 5 dropout")
    assert rows["output"][2] == "FAIL" and rows["kept share vs 1-p"][2] == "ok"


def test_check_catches_a_dropout_that_drops_everything(
    small_file: str, device: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ops = backends.get("triton")
    original = ops.dropout

    def drops_all(input: torch.Tensor, p: float = 0.5, training: bool = True, *args: Any, **kw: Any) -> Any:
        return original(input, p, training, *args, **kw) * 0 if training else input

    monkeypatch.setattr(ops, "dropout", drops_all)
    assert cli.main(["check", small_file, "--device", device, "--batch", "2"]) == 1
    rows = _rows(capsys.readouterr().out, "layer 5 dropout")
    assert rows["output"][2] == "ok" and rows["kept share vs 1-p"][2] == "FAIL"


def test_compare_relative_error_is_meaningful_near_zero() -> None:
    want = torch.tensor([0.0, 2.0, -4.0])
    row = compare("3", "output", want + torch.tensor([0.0, 0.0, 0.004]), want)
    assert row.abs_error == pytest.approx(0.004, rel=1e-4) and row.rel_error == pytest.approx(0.001, rel=1e-4)
    zeros = compare("3", "grad input", torch.full((4,), 1e-9), torch.zeros(4))
    assert zeros.abs_error == pytest.approx(1e-9) and zeros.rel_error == pytest.approx(1e-3)
    assert compare("3", "output", torch.tensor([float("nan"), 1.0]), torch.ones(2)).rel_error == math.inf
    assert compare("3", "output", torch.ones(3), torch.ones(4)).rel_error == math.inf
    assert compare("3", "grad weight", None, torch.ones(2)).rel_error == math.inf


def test_check_reports_a_net_error_cleanly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.net"
    path.write_text("net bad {\n    input [784]\n    linaer 10\n}\n")
    assert cli.main(["check", str(path), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "bad.net:3:5: error:" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_check_on_cuda_without_a_gpu_is_a_clear_error(
    tiny_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["check", tiny_file, "--device", "cuda"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --device cuda") and "Traceback" not in err


def test_full_float32_turns_tf32_off_and_restores_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    with full_float32():
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    assert torch.backends.cudnn.allow_tf32
