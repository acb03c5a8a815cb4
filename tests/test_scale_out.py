"""Beyond one process: `--nproc` data parallelism (gloo), `netc export` (ONNX Runtime), `netc predict`,
`--tensorboard`. End to end in subprocesses on small IDX datasets; no traceback ever."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from netc.runtime import distributed
from test_cli_train import netc
from test_data import write_idx_dir

# 28x28 images, so predict and export see dataset-sized samples; 45 training samples -> 36 train
# + 9 val at val=0.2: batches of 8, the last one short (4 samples)
DIGITS = """net digits {{
    input [1, 28, 28]
    conv2d 3 kernel=5 stride=3
    relu
    flatten
    linear 10
}}
train {{
    data mnist path="{path}" val=0.2
    batch 8
    optimizer sgd lr=0.05 momentum=0.9
    seed 3
}}
"""


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_idx_dir(root / "data", train=45, test=20, side=28, classes=10, gz=True)
    path = root / "digits.net"
    path.write_text(DIGITS.format(path=root / "data"))
    return path


@pytest.fixture(scope="module")
def trained(digits: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("run") / "ckpt"
    result = netc("train", str(digits), "--epochs", "2", "--out", str(out), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return out


def weights(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def assert_same_weights(a: Path, b: Path, tolerance: float = 1e-5) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        scale = float(first[name].abs().max())
        assert float((first[name] - second[name]).abs().max()) <= tolerance * scale, name


# ---- data parallel ------------------------------------------------------------------------------

def test_local_shares_rebuild_the_global_mean() -> None:
    index = torch.arange(7)
    shares = [distributed.local_share(index, distributed.World(rank, 2, rank)) for rank in range(2)]
    assert [s.tolist() for s, _ in shares] == [[0, 1, 2, 3], [4, 5, 6]]
    # DDP averages over 2 ranks: sum of (scale * local mean) / 2 must be the mean over all 7 samples
    losses = torch.rand(7, dtype=torch.float64)
    averaged = sum(scale * float(losses[s].mean()) for s, scale in shares) / 2
    assert averaged == pytest.approx(float(losses.mean()), rel=1e-12)
    # fewer samples than ranks: the empty rank runs one sample at weight 0
    share, scale = distributed.local_share(torch.tensor([5]), distributed.World(1, 2, 1))
    assert share.tolist() == [5] and scale == 0.0


@pytest.mark.slow
def test_two_processes_train_like_one_and_resume_across_sizes(digits: Path, trained: Path,
                                                              tmp_path: Path) -> None:
    cpu = ("--device", "cpu")
    one, two = tmp_path / "one", tmp_path / "two"
    single = netc("train", str(digits), "--epochs", "1", "--out", str(one), *cpu)
    double = netc("train", str(digits), "--epochs", "1", "--out", str(two), "--nproc", "2", *cpu)
    assert single.returncode == 0 and double.returncode == 0, double.stderr
    assert "on 2 processes" in double.stderr
    assert double.stdout.count("test accuracy") == 1  # rank 0 alone reports
    assert_same_weights(one, two)
    # resume the one-process checkpoint on two processes: the same as two epochs on one (`trained`)
    resumed = netc("train", str(digits), "--epochs", "2", "--resume", str(one), "--nproc", "2", *cpu)
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(trained, one)


def test_global_batch_norm_is_torchs_batch_norm_on_one_rank(tmp_path: Path) -> None:
    import torch.distributed as dist
    import torch.nn.functional as F

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        x = torch.randn(5, 3, 4, 7, dtype=torch.float64, requires_grad=True)
        weight = torch.randn(3, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
        stats = [torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5]
        theirs = [t.clone() for t in stats]
        out = distributed.global_batch_norm(x, *stats, weight, bias, 0.3, 1e-5)
        expected = F.batch_norm(x, *theirs, weight, bias, True, 0.3, 1e-5)
        torch.testing.assert_close(out, expected)
        for mine, torchs in zip(stats, theirs, strict=True):  # running mean and unbiased running var
            torch.testing.assert_close(mine, torchs)
        grad = torch.randn_like(out)
        got = torch.autograd.grad(out, (x, weight, bias), grad)
        want = torch.autograd.grad(expected, (x, weight, bias), grad)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_batchnorm_statistics_are_global_across_processes(digits: Path, tmp_path: Path) -> None:
    net = tmp_path / "bn.net"
    source = digits.read_text().replace("    relu\n    flatten", "    batchnorm\n    relu\n    flatten")
    net.write_text(source)
    assert "batchnorm" in net.read_text()
    one, two = tmp_path / "one", tmp_path / "two"
    assert netc("train", str(net), "--out", str(one), "--device", "cpu").returncode == 0
    double = netc("train", str(net), "--out", str(two), "--nproc", "2", "--device", "cpu")
    assert double.returncode == 0, double.stderr
    assert_same_weights(one, two)  # running_mean and running_var included


def test_nproc_must_divide_the_batch(digits: Path, tmp_path: Path) -> None:
    result = netc("train", str(digits), "--nproc", "3", "--out", str(tmp_path / "x"), "--device", "cpu")
    assert result.returncode == 1
    assert "batch of 8 does not split evenly over 3 processes" in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_failed_worker_is_reported_not_hung(monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure
    import torch.distributed.run as launcher

    def failing_run(_args: object) -> None:
        failure = ProcessFailure(local_rank=1, pid=4321, exitcode=1, error_file="")
        raise ChildFailedError("netc", {1: failure})

    monkeypatch.setattr(launcher, "run", failing_run)
    assert distributed.launch(2, ["x.net"]) == 1
    assert "worker 1 of 2 stopped (exit status 1)" in capsys.readouterr().err


# ---- export -------------------------------------------------------------------------------------

def test_export_writes_a_model_that_onnx_runtime_agrees_with(digits: Path, trained: Path,
                                                             tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    model = tmp_path / "digits.onnx"
    result = netc("export", str(digits), "--checkpoint", str(trained), "-o", str(model))
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime matches netc on 20 test images" in result.stdout
    import onnx
    import onnxruntime

    graph = onnx.load(str(model))
    assert {node.domain for node in graph.graph.node} <= {"", "ai.onnx"}  # standard operators only
    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    for batch in (1, 5):  # the batch dimension is dynamic
        out = session.run(None, {"input": np.zeros((batch, 1, 28, 28), np.float32)})[0]
        assert out.shape == (batch, 10)
    assert [f for f in os.listdir(tmp_path) if f.startswith(".netc-export")] == []


def test_export_mismatch_writes_nothing(digits: Path, trained: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnxruntime")
    from netc.runtime import cli, export_cmd

    monkeypatch.setattr(export_cmd, "onnx_logits", lambda path, samples: np.zeros((len(samples), 10)))
    model = tmp_path / "bad.onnx"
    code = cli.main(["export", str(digits), "--checkpoint", str(trained), "-o", str(model)])
    assert code == 1 and not model.exists() and os.listdir(tmp_path) == []
    assert "differ from netc's" in capsys.readouterr().err


def test_export_without_the_extra_says_which_to_install(digits: Path, trained: Path,
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    import builtins

    from netc.runtime import cli

    real_import = builtins.__import__

    def no_onnx(name: str, *args: object, **kwargs: object) -> object:
        if name.startswith("onnxruntime"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_onnx)
    assert cli.main(["export", str(digits), "--checkpoint", str(trained)]) == 1
    assert "pip install 'netc[export]'" in capsys.readouterr().err


# ---- predict ------------------------------------------------------------------------------------

def test_predict_matches_the_network_on_dataset_images_either_polarity(digits: Path, trained: Path,
                                                                      tmp_path: Path) -> None:
    from PIL import Image

    from netc.runtime.idx import read_idx

    images = read_idx(str(digits.parent / "data" / "t10k-images-idx3-ubyte.gz"))[:3]
    files = []
    for i, pixels in enumerate(images):
        pixels = pixels.copy()
        pixels[[0, -1], :] = 0  # a dark border, as MNIST has
        pixels[:, [0, -1]] = 0
        Image.fromarray(pixels).save(tmp_path / f"plain{i}.png")
        Image.fromarray(255 - pixels).convert("RGB").resize((84, 84)).save(tmp_path / f"paper{i}.png")
        files += [tmp_path / f"plain{i}.png", tmp_path / f"paper{i}.png"]
    (tmp_path / "broken.png").write_text("not an image")
    files.append(tmp_path / "broken.png")
    result = netc("predict", str(digits), "--checkpoint", str(trained), *map(str, files), "--json",
                  "--top", "4", "--device", "cpu")
    assert result.returncode == 1  # one image failed, the others were still classified
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [Path(row["file"]).name for row in rows] == [f.name for f in files]
    assert "not an image" in rows[-1]["error"]
    import netc as api
    from netc.runtime import checkpoint as ckpt

    net = api.compile(str(digits), device="cpu", backend="torch")
    net.load_state_dict(ckpt.load(str(trained)).model)
    for i in range(3):
        plain, paper = rows[2 * i]["top"], rows[2 * i + 1]["top"]
        assert len(plain) == 4 and sum(p["probability"] for p in plain) <= 1.0 + 1e-9
        sample = torch.from_numpy(images[i].astype(np.float32) / 255.0)
        sample[[0, -1], :] = 0
        sample[:, [0, -1]] = 0
        with torch.no_grad():
            expected = torch.softmax(net(sample.reshape(1, 1, 28, 28)).double(), dim=1)[0]
        assert plain[0]["class"] == int(expected.argmax())
        assert plain[0]["probability"] == pytest.approx(float(expected.max()), abs=1e-6)
        assert paper[0]["class"] == plain[0]["class"]  # black on white reads as white on black


def test_predict_text_output_and_missing_checkpoint(digits: Path, trained: Path, tmp_path: Path) -> None:
    from PIL import Image

    Image.new("L", (28, 28)).save(tmp_path / "blank.png")
    ok = netc("predict", str(digits), "--checkpoint", str(trained), str(tmp_path / "blank.png"))
    assert ok.returncode == 0 and ok.stdout.startswith(f"{tmp_path / 'blank.png'}: ")
    assert ok.stdout.count("%") == 3
    blank = str(tmp_path / "blank.png")
    missing = netc("predict", str(digits), "--checkpoint", str(tmp_path / "nope"), blank)
    assert missing.returncode == 1 and "no checkpoint at" in missing.stderr


# ---- tensorboard --------------------------------------------------------------------------------

def test_tensorboard_scalars(digits: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logs = tmp_path / "tb"
    result = netc("train", str(digits), "--epochs", "2", "--out", str(tmp_path / "run"),
                  "--tensorboard", str(logs), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    events = EventAccumulator(str(logs))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"epoch/train_loss", "epoch/val_loss", "epoch/val_acc", "epoch/lr", "test/acc"} <= tags
    assert [e.step for e in events.Scalars("epoch/val_acc")] == [1, 2]
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert events.Scalars("epoch/train_loss")[1].value == pytest.approx(history[1]["train_loss"], rel=1e-6)
