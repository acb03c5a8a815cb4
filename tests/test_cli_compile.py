"""`netc compile` end to end through a subprocess: exit codes, output, JSON, no traceback, no torch import."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from netc.dsl import parse

ROOT = Path(__file__).resolve().parents[1]
NETC = ROOT / ".venv" / "bin" / "netc"
PYTHON = ROOT / ".venv" / "bin" / "python"
EXAMPLES = sorted((ROOT / "examples").glob("*.net"))

GOOD = "net good {\n    input [784]\n    linear 32\n    relu\n    linear 10\n}\n"
BROKEN = {
    "syntax.net": ("net a {\n    input [784]\n    linear 10 =\n}\n",
                   "syntax.net:3:15: error: unexpected `=`: expected an argument or the end of the line"),
    "unknown.net": ("net a {\n    input [1, 28, 28]\n    conv2d 4 kernel=3\n    maxpool 2\n    flatten\n"
                    "    linear 10\n}\n",
                    "unknown.net:4:5: error: unknown layer 'maxpool' (did you mean 'maxpool2d'?)"),
    "shape.net": ("net a {\n    input [1, 28, 28]\n    linear 10\n}\n",
                  "shape.net:3:5: error: `linear` needs [F] or [T, F], got [1, 28, 28]; "
                  "add `flatten` before it"),
}


def _subprocess(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed command, as a user runs it (about a second each on a busy machine: used sparingly)."""
    result = subprocess.run([str(NETC), *args], capture_output=True, text=True, cwd=cwd or ROOT, timeout=120)
    assert "Traceback" not in result.stdout + result.stderr
    return result


@pytest.fixture
def netc(capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch):
    """The same command in this process (runtime.cli.main), returning what a subprocess would."""
    from netc.runtime.cli import main

    def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        if cwd is not None:
            monkeypatch.chdir(cwd)
        capsys.readouterr()
        try:
            code = main(list(args))
        except SystemExit as stop:  # argparse's usage errors
            code = int(stop.code or 0)
        out, err = capsys.readouterr()
        assert "Traceback" not in out + err
        return subprocess.CompletedProcess(args, code, out, err)

    return run


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "good.net").write_text(GOOD)
    for name, (source, _) in BROKEN.items():
        (tmp_path / name).write_text(source)
    return tmp_path


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_compiles_with_its_totals(netc, path):
    result = netc("compile", str(path))
    assert result.returncode == 0, result.stderr
    graph = parse(str(path))
    assert f"{graph.param_count:,} parameters" in result.stdout
    assert f"{graph.flops:,} forward FLOPs" in result.stdout
    assert len(re.findall(r"^\s+\d+\s+\d", result.stdout, re.M)) == len(graph.nodes)  # one row per layer


def test_table_equals_the_one_in_the_docs(tmp_path):
    """docs/language.md shows the table for the spec's lenet; the command must print exactly that."""
    docs = (ROOT / "docs" / "language.md").read_text()
    shown = re.search(r"\$ netc compile examples/lenet.net\n(.*?)```", docs, re.S).group(1)
    (tmp_path / "examples").mkdir()
    from tests.test_dsl_examples import SPEC_LENET

    (tmp_path / "examples" / "lenet.net").write_text(SPEC_LENET)
    result = _subprocess("compile", "examples/lenet.net", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == shown and result.stderr == ""


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_files_exit_1_with_the_rendered_error(netc, files, name):
    result = netc("compile", name, cwd=files)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[0] == BROKEN[name][1]
    column = int(lines[0].split(":")[2])
    assert lines[2] == " " * (column - 1) + "^"  # the caret under the column of the quoted line


def test_json_table_and_a_broken_file_through_the_installed_command(files):
    broken = _subprocess("compile", "shape.net", cwd=files)
    assert broken.returncode == 1 and broken.stderr.splitlines()[0] == BROKEN["shape.net"][1]
    result = _subprocess("compile", "good.net", "--json", cwd=files)
    assert result.returncode == 0
    table = json.loads(result.stdout)
    assert table["total_params"] == 784 * 32 + 32 + 32 * 10 + 10
    assert [row["op"] for row in table["layers"]] == ["linear", "relu", "linear"]
    assert [row["line"] for row in table["layers"]] == [3, 4, 5]
    assert table["layers"][0]["layer"] == "linear 32" and table["output_shape"] == [10]
    assert table["train"]["optimizer"]["momentum"] == 0.9


def test_emit_ast_and_ir(netc, files):
    ast_text = netc("compile", "good.net", "--emit", "ast", cwd=files)
    assert ast_text.returncode == 0 and "layer linear 32  @3:5" in ast_text.stdout
    ast_json = json.loads(netc("compile", "good.net", "--emit", "ast", "--json", cwd=files).stdout)
    assert ast_json["blocks"][0]["body"][1]["name"] == "linear"
    ir_text = netc("compile", "good.net", "--emit", "ir", cwd=files)
    assert ir_text.returncode == 0 and "param weight [32, 784] = uniform" in ir_text.stdout
    assert "param bias [32] = uniform" in ir_text.stdout and "0 = linear(input)" in ir_text.stdout
    assert "after pass fuse_activations (triton backend, training)" in ir_text.stdout
    # --emit ast only parses: a file that fails its checks still shows its tree
    assert netc("compile", "shape.net", "--emit", "ast", cwd=files).returncode == 0
    assert netc("compile", "syntax.net", "--emit", "ast", cwd=files).returncode == 1


def test_emit_plan_needs_the_runtime_plan(netc, files):
    result = netc("compile", "good.net", "--emit", "plan", cwd=files)
    if importlib.util.find_spec("netc.runtime.plan") is None:
        assert result.returncode == 1 and "--emit plan needs netc.runtime.plan" in result.stderr
    else:
        assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.parametrize("stage", ["plan", "triton"])
def test_json_of_a_text_only_stage_is_a_usage_error(netc, files, stage):
    result = netc("compile", "good.net", "--emit", stage, "--json", cwd=files)
    assert result.returncode == 2 and result.stdout == ""
    assert f"--emit {stage} is text only" in result.stderr


def test_warnings_go_to_stderr_and_do_not_fail(netc, files):
    (files / "warn.net").write_text(GOOD.replace("    relu\n", "    relu\n    relu\n"))
    result = netc("compile", "warn.net", cwd=files)
    assert result.returncode == 0 and "forward FLOPs" in result.stdout
    assert result.stderr.startswith("warn.net:5:5: warning: `relu` right after `relu`")


def test_missing_unreadable_and_usage_errors(netc, files):
    assert _subprocess("compile", cwd=files).returncode == 2
    missing = netc("compile", "nope.net", cwd=files)
    assert missing.returncode == 1 and missing.stderr.strip() == "error: nope.net does not exist"
    assert netc("compile", ".", cwd=files).returncode == 1
    (files / "latin.net").write_bytes(b"net a {\n    input [784] \xff\n}\n")
    unreadable = netc("compile", "latin.net", cwd=files)
    assert unreadable.returncode == 1 and unreadable.stderr.startswith("error: cannot read latin.net")
    assert "not a text file (the byte at offset 24 is not UTF-8)" in unreadable.stderr
    assert netc("compile", "good.net", "--emit", "bogus", cwd=files).returncode == 2


def test_front_end_imports_neither_torch_nor_triton(files):
    code = ("import sys, netc.dsl, netc.dsl.check, netc.dsl.report\n"
            "from netc.runtime.cli import main\n"
            f"assert main(['compile', {str(files / 'good.net')!r}]) == 0\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'triton')))")
    result = subprocess.run([str(PYTHON), "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"
    assert sys.executable  # the subprocess used the project's venv, not this interpreter's modules


@pytest.mark.parametrize("argv", [
    ["compile", "a.net", "--emit", "ir", "--json"],
    ["--debug", "train", "a.net", "--epochs", "2", "--lr", "0.5", "--device", "cpu", "--limit", "7"],
    ["eval", "a.net", "--checkpoint", "runs/a"],
    ["check", "a.net", "--batch", "3", "--tol", "1e-4"],
    ["bench", "a.net", "--static", "--target", "sm_80", "--contenders", "netc,torch-eager"],
    ["export", "a.net", "--checkpoint", "runs/a", "-o", "a.onnx"],
    ["predict", "a.net", "--checkpoint", "runs/a", "x.png", "y.png", "--top", "2", "--json"],
])
def test_the_parser_built_for_one_command_reads_it_as_the_full_parser_does(argv: list[str]) -> None:
    """`main` adds only the options of the command it runs (start-up time): same meaning, same defaults."""
    from netc.runtime.cli import _command_word, build_parser

    command = _command_word(argv)
    assert command == argv[argv[0] == "--debug"]
    assert vars(build_parser(command).parse_args(argv)) == vars(build_parser().parse_args(argv))
    others = [name for name in ("compile", "train", "predict") if name != command]
    with pytest.raises(SystemExit):  # the other commands' options are not built (nor accepted)
        build_parser(command).parse_args([others[0], "a.net"])
