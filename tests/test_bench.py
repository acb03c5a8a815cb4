"""`netc bench`, the row-RNN comparison script and bench/gpu_check.sh, exercised on the CPU."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import triton

from netc.runtime import bench
from netc.runtime.bench_contenders import CONTENDERS, Contender, count_triton_launches

ROOT = Path(__file__).resolve().parent.parent
GPU_CHECK = ROOT / "bench" / "gpu_check.sh"


def _cli(*argv: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    # one intra-op thread: on a busy two-core machine torch's thread pool makes steps 100x slower
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "netc.runtime.cli", *argv], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=timeout)


@pytest.fixture(scope="module")
def lenet_report() -> dict:
    done = _cli("bench", "examples/lenet.net", "--device", "cpu", "--steps", "2", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_bench_json_has_every_cpu_contender(lenet_report: dict) -> None:
    names = [result["name"] for result in lenet_report["results"]]
    assert names == ["netc", "torch-eager"]
    skipped = {"netc-nograph", "torch-graph", "torch-compile", "torch-compile-ro"}
    assert set(lenet_report["skipped"]) == skipped
    assert "torch.compile" in lenet_report["skipped"]["torch-compile"]
    assert lenet_report["failed"] == {}
    assert lenet_report["device"] == "cpu" and lenet_report["steps"] == 2
    assert lenet_report["file_batch"] == 100 and lenet_report["batch"] == bench.CPU_BATCH
    versions = lenet_report["versions"]  # a checkpoint's versions, plus the commit measured
    assert versions["torch"] == torch.__version__ and versions["python"] == platform.python_version()
    assert versions["triton"] == triton.__version__ and versions["commit"]


def test_bench_numbers_are_consistent(lenet_report: dict) -> None:
    by_name = {result["name"]: result for result in lenet_report["results"]}
    assert by_name["netc"]["backend"] == "triton" and by_name["netc"]["optimizer"] == "netc.kernels.SGD"
    assert by_name["torch-eager"]["optimizer"] == "torch.optim.SGD"
    for result in lenet_report["results"]:
        assert result["steps_per_s"] > 0
        assert result["steps_per_s"] == pytest.approx(1000.0 / result["median_ms"])
        assert result["samples_per_s"] == pytest.approx(result["steps_per_s"] * lenet_report["batch"])
        assert 0 < result["min_ms"] <= result["median_ms"]
        assert result["host_ms"] == result["median_ms"]  # on the CPU the host clock is the timer
        assert result["epoch_how"] == "estimated"
        assert result["epoch_s"] == pytest.approx(result["median_ms"] * lenet_report["epoch_steps"] / 1000)
    assert lenet_report["epoch_steps"] == 48000 // bench.CPU_BATCH  # 60000 minus val=0.2
    launches = by_name["netc"]["triton_launches"]
    # at least a forward and a backward kernel per parameterised layer, the loss and the optimizer
    assert sum(launches.values()) >= 8 and all(count > 0 for count in launches.values())
    assert by_name["torch-eager"]["triton_launches"] is None
    expected = by_name["netc"]["steps_per_s"] / by_name["torch-eager"]["steps_per_s"]
    assert lenet_report["ratios"] == {"netc/torch-eager": pytest.approx(expected)}


def test_bench_table_and_user_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.net"
    broken.write_text("net x {\n    input [1, 28, 28]\n    lineer 10\n}\n")
    done = _cli("bench", str(broken), "--device", "cpu", "--steps", "1")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert "broken.net:3" in done.stderr
    if not torch.cuda.is_available():
        done = _cli("bench", "examples/lenet.net", "--device", "cuda", "--steps", "1")
        assert done.returncode == 1 and "Traceback" not in done.stderr and "CUDA" in done.stderr


def test_bench_in_process_table() -> None:
    """The human-readable table, with one contender (the torch one: fast)."""
    graph = _graph()
    report = bench.bench(graph, torch.device("cpu"), steps=3, batch=2, only=["torch-eager"])
    assert [r.name for r in report.results] == ["torch-eager"] and report.ratios == {}
    assert report.skipped["netc"] == "not asked for"
    text = bench.format_report(report)
    assert "torch-eager" in text and " (estimated)" in text and "skipped netc: not asked for" in text
    assert "batch 2 (the file says 100" in text


def test_ratios_are_netc_over_others() -> None:
    def result(name: str, sps: float) -> bench.Result:
        return bench.Result(name, "torch", "eager", "x", 1000 / sps, 1000 / sps, 1000 / sps, sps, sps)

    assert bench.ratios([result("netc", 100.0), result("torch-eager", 25.0), result("b", 400.0)]) == {
        "netc/torch-eager": 4.0, "netc/b": 0.25}
    assert bench.ratios([result("torch-eager", 25.0)]) == {}


@pytest.mark.parametrize("contender", CONTENDERS, ids=[c.name for c in CONTENDERS])
def test_skip_rules(contender: Contender) -> None:
    on_cpu = bench._skip_reason(contender, on_cuda=False, with_compile=False, only=None)
    assert bool(on_cpu) == (contender.cuda_only or contender.compiled)
    assert bench._skip_reason(contender, on_cuda=True, with_compile=False, only=None) == ""
    with_compile = bench._skip_reason(contender, on_cuda=False, with_compile=True, only=None)
    assert bool(with_compile) == contender.cuda_only


def test_time_steps_counts_warmup_and_timed_calls() -> None:
    calls = []
    inputs = [(torch.zeros(1), torch.zeros(1)), (torch.ones(1), torch.ones(1))]
    times, host = bench.time_steps(lambda x, y: calls.append(float(x)), inputs, steps=5, warmup=2,
                                   device=torch.device("cpu"))
    assert len(times) == 5 and all(t >= 0 for t in times) and host == times
    assert calls == [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]  # batches rotate through warm-up and timing


def test_count_triton_launches_counts_each_kernel(device: str) -> None:
    import triton
    import triton.language as tl

    @triton.jit
    def _double_kernel(x_ptr, n, BLOCK: tl.constexpr):  # x (n,) float32, doubled in place
        offsets = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offsets < n
        tl.store(x_ptr + offsets, tl.load(x_ptr + offsets, mask=mask) * 2, mask=mask)

    def step(x: torch.Tensor, repeats: torch.Tensor) -> None:
        for _ in range(int(repeats)):
            _double_kernel[(triton.cdiv(x.numel(), 32),)](x, x.numel(), BLOCK=32)

    x = torch.ones(37, device=device)
    assert count_triton_launches(step, x, torch.tensor(3)) == {"_double_kernel": 3}
    assert float(x.min()) == 8.0  # the kernels really ran
    assert count_triton_launches(step, x, torch.tensor(0)) == {}


def test_epoch_data_falls_back_to_synthetic(tmp_path: Path) -> None:
    graph = _graph(f'    data mnist val=0.25 path="{tmp_path}"\n')
    images, labels, note = bench.epoch_data(graph, torch.device("cpu"))
    assert note.startswith("synthetic (45000 random samples")
    assert images.shape == (45000, 1, 28, 28) and labels.shape == (45000,)
    assert 0 <= int(labels.min()) and int(labels.max()) < 10 and float(images.max()) <= 1.0


def _graph(data_line: str = "    data mnist val=0.2\n"):  # noqa: ANN202  (a netc Graph)
    import netc

    source = ("net small {\n    input [1, 28, 28]\n    maxpool2d 4\n    flatten\n    linear 10\n}\n"
              "train {\n" + data_line + "    batch 100\n    optimizer sgd lr=0.1\n}\n")
    return netc.parse(source)


def test_rnn_vs_cudnn_script_on_cpu() -> None:
    done = subprocess.run(
        [sys.executable, "bench/rnn_vs_cudnn.py", "--device", "cpu", "--batch", "3", "--steps", "5",
         "--features", "7", "--hidden", "16", "--repeats", "1", "--json"],
        capture_output=True, text=True, cwd=ROOT, timeout=240, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["shape"] == {"batch": 3, "T": 5, "F": 7, "H": 16}
    assert max(result["max_rel_error"].values()) < 1e-5 and len(result["max_rel_error"]) == 6
    assert result["netc_ms"] > 0
    assert result["speedup"] == pytest.approx(result["torch_ms"] / result["netc_ms"])


def test_gpu_check_script_parses_and_names_real_things() -> None:
    assert subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True).returncode == 0
    text = GPU_CHECK.read_text()
    header = text.split("\nset -u", 1)[0]
    assert 'carry=[".whl"]' in header and "timeout_s=" in header and "gpu-prep.sh" in header
    for path in set(re.findall(r"\b((?:examples|bench|tests)/[\w./-]+\.(?:net|py))", text)):
        assert (ROOT / path).exists(), f"gpu_check.sh names {path}, which does not exist"
    assert "examples/lenet.net" in text and "examples/rnn.net" in text
    commands = set(re.findall(r'(?:"\$\{NETC\[@\]\}"|netc\.runtime\.cli)\s+(\w+)', text))
    assert {"check", "train"} <= commands and "bench/bench_each.py examples/" in text  # each: netc's bench
    help_text = _cli("--help").stdout
    for command in commands:
        assert re.search(rf"^\s+{command}\s", help_text, re.MULTILINE), f"netc has no command {command}"
    steps = re.search(r'STEPS=\$\{STEPS:-"([^"]+)"\}', text)
    assert steps is not None
    for name in steps.group(1).split():
        assert name == "install" or re.search(rf"^step {name} ", text, re.MULTILINE), name


def test_gpu_check_records_failures_and_goes_on(tmp_path: Path) -> None:
    """Without a GPU every CUDA step fails; the script must record each and still finish with rc 0."""
    env = {**os.environ, "OUT": str(tmp_path), "STEPS": "check rnn_cudnn", "BUDGET_S": "120",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env, timeout=180)
    assert done.returncode == 0
    summary = (tmp_path / "summary.txt").read_text()
    lines = [line for line in summary.splitlines() if line.split(" ", 1)[0] in ("OK", "FAIL", "TIME")]
    names = [line.split()[1].rstrip(":") for line in lines]
    assert names == ["check", "rnn_cudnn"]
    if not torch.cuda.is_available():
        assert all(line.startswith("FAIL") for line in lines)
    assert (tmp_path / "check.log").exists() and (tmp_path / "rnn_cudnn.json").exists()


def _fake_cuda_report(ratios: dict[str, float], epoch_s: float, epoch_graph_s: float | None) -> dict:
    def result(name: str) -> dict:
        return {"name": name, "mode": "graph", "optimizer": "x", "median_ms": 0.1, "host_ms": 0.02,
                "steps_per_s": 1e4, "epoch_s": epoch_s, "epoch_how": "measured",
                "epoch_graph_s": epoch_graph_s, "device_ops": 20, "triton_launches": {"k": 16}}

    return {"file": "examples/lenet.net", "net": "lenet", "device": "cuda", "device_name": "H200",
            "batch": 100, "steps": 200, "warmup": 25, "timer": "CUDA events",
            "versions": {"commit": "abc", "torch": "2.11", "triton": "3.6"}, "epoch_data": "mnist",
            "results": [result("netc"), *(result(name.split("/")[1]) for name in ratios)],
            "skipped": {}, "failed": {"torch-graph": "boom"}, "ratios": ratios}


def test_summarize_checks_the_goals(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    try:
        import summarize
    finally:
        sys.path.pop(0)
    report = _fake_cuda_report({"netc/torch-eager": 12.0, "netc/torch-compile": 2.5}, 0.025, 0.018)
    (tmp_path / "lenet.json").write_text(json.dumps(report))
    (tmp_path / "rnn.json").write_text(json.dumps({
        "shape": {"batch": 100}, "device": "H200", "netc_ms": 0.2, "torch_ms": 0.5, "speedup": 2.5,
        "reference": "cuDNN", "timer": "CUDA events", "repeats": 200, "max_rel_error": {"output": 1e-7}}))
    text = summarize.summarize([str(tmp_path / "lenet.json"), str(tmp_path / "rnn.json"),
                                str(tmp_path / "missing.json")])
    assert "PASS: netc/torch-eager = 12x (goal >= 10x)" in text
    assert "MISS: netc/torch-compile = 2.5x (goal >= 3x)" in text
    assert "PASS: netc epoch 18.00 ms (goal <= 20 ms)" in text  # the one-graph epoch is the best
    assert "MISS: row RNN speedup 2.5x (goal >= 3x)" in text
    assert "FAILED torch-graph: boom" in text and "missing.json: unreadable" in text
    assert text.count("| netc |") == 1 and "| 16 |" in text
