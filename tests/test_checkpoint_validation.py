"""Checkpoints from outside: damaged or edited files -> DataError naming file and field; the program hash."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch

from netc.dsl import parse
from netc.dsl.errors import DataError
from netc.runtime import checkpoint as ckpt
from netc.runtime import metrics
from netc.runtime.train import Diverged
from test_train import dataset, make_trainer  # noqa: F401 - `dataset` is a fixture

SOURCE = """net tiny {
    input [784]
    linear 10
}
train {
    batch 4
}
"""


def _program_meta(source: str = SOURCE) -> dict[str, Any]:
    graph = parse(source)
    return {"source": source, "source_sha256": ckpt.source_hash(source),
            "program_sha256": ckpt.program_hash(graph), "name": graph.name}


# ---- the program hash ---------------------------------------------------------------------------

def test_comments_and_whitespace_keep_the_program_hash() -> None:
    edited = ("# a new comment\n\nnet tiny {\n  input [784]   # pixels\n\n        linear 10\n}\n"
              "train {\n batch 4\n}\n")
    assert ckpt.program_hash(parse(edited)) == ckpt.program_hash(parse(SOURCE))


@pytest.mark.parametrize("change", [("input [784]", "input [1, 28, 28]\n    flatten"),
                                    ("linear 10", "linear 10 bias=false"),
                                    ("batch 4", "batch 5"), ("input [784]", "input [784]\n    relu"),
                                    ("batch 4", "batch 4\n    optimizer sgd lr=0.02")])
def test_any_change_to_the_net_or_training_changes_the_program_hash(change: tuple[str, str]) -> None:
    assert ckpt.program_hash(parse(SOURCE.replace(*change))) != ckpt.program_hash(parse(SOURCE))


def test_check_source_accepts_an_edited_comment_and_refuses_another_layer(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    ckpt.save(str(tmp_path), model.state_dict(), {"state": {}, "param_groups": []}, _program_meta())
    loaded = ckpt.load(str(tmp_path))
    ckpt.check_source(loaded, parse(SOURCE.replace("linear 10", "linear 10   # the logits")), "tiny.net")
    with pytest.raises(DataError, match="different .net program than other.net: a layer, a shape or a train"):
        ckpt.check_source(loaded, parse(SOURCE.replace("linear 10", "linear 10 bias=false")), "other.net")


def test_out_holding_another_nets_checkpoint_is_not_overwritten(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    ckpt.save(str(tmp_path / "run"), model.state_dict(), {"state": {}, "param_groups": []}, _program_meta())
    before = (tmp_path / "run" / ckpt.MODEL_FILE).read_bytes()
    ckpt.check_out(str(tmp_path / "run"), parse(SOURCE + "# comment\n"))  # the same program may overwrite
    with pytest.raises(DataError, match="holds a checkpoint of a different net .* it is not overwritten"):
        ckpt.check_out(str(tmp_path / "run"), parse(SOURCE.replace("input [784]", "input [784]\n    relu")))
    assert (tmp_path / "run" / ckpt.MODEL_FILE).read_bytes() == before


# ---- meta.json ------------------------------------------------------------------------------------

def _saved(tmp_path: Path, **meta: Any) -> Path:
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3)).sum().backward()
    optimizer.step()
    full = {**_program_meta(), "seed": 0, "train": {"batch": 4}, "epoch": 1, "step": 2, "base_lrs": [0.1],
            "state": {"epoch": 1, "batch": 0, "step": 2, "loss_sum": 0.0, "history": []},
            "rng": ckpt.rng_state(), **meta}
    ckpt.save(str(tmp_path), model.state_dict(), optimizer.state_dict(), full)
    return tmp_path


def _edit_meta(path: Path, edit: Any) -> None:
    meta_path = path / ckpt.META_FILE
    meta = json.loads(meta_path.read_text())
    edit(meta)
    meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize(("edit", "message"), [
    (lambda m: m.update(epoch="3"), "field 'epoch' must be an integer, got '3'"),
    (lambda m: m.update(seed=-1), "field 'seed' must be in \\[0, 4294967295\\], got -1"),
    (lambda m: m.update(epoch=True), "field 'epoch' must be an integer, got True"),
    (lambda m: m["state"].update(step=1.5), "field 'state.step' must be an integer, got 1.5"),
    (lambda m: m["state"].pop("history"), "field 'state.history' is missing"),
    (lambda m: m["state"].update(extra=1), "unknown field 'state.extra'"),
    (lambda m: m.update(surprise=1), "unknown field 'surprise'"),
    (lambda m: m.pop("optimizer"), "field 'optimizer' is missing"),
    (lambda m: m["optimizer"]["param_groups"].append(7),
     "field 'optimizer.param_groups.1' must be an object"),
    (lambda m: m.update(rng={"cpu": "AAAA"}), "field 'rng.cpu' must decode to \\d+ bytes"),
    (lambda m: m.update(rng={"cpu": "not base64!"}), "field 'rng.cpu' must be base64 text"),
    (lambda m: m.update(base_lrs=[0.0]), "field 'base_lrs.0' must be positive"),
    (lambda m: m.update(program_sha256="abc"), "field 'program_sha256' must be a sha256"),
])
def test_a_damaged_meta_json_names_the_file_and_the_field(tmp_path: Path, edit: Any, message: str) -> None:
    _edit_meta(_saved(tmp_path), edit)
    with pytest.raises(DataError, match=f"meta.json: {message}"):
        ckpt.load(str(tmp_path))


def test_a_bare_nan_in_meta_json_is_refused(tmp_path: Path) -> None:
    meta_path = _saved(tmp_path) / ckpt.META_FILE
    meta_path.write_text(meta_path.read_text().replace('"loss_sum": 0.0', '"loss_sum": NaN'))
    with pytest.raises(DataError, match="damaged or incomplete: bare NaN is not JSON"):
        ckpt.load(str(tmp_path))


def test_meta_json_and_metrics_jsonl_are_strict_json(tmp_path: Path) -> None:
    _saved(tmp_path, metrics={"val_loss": math.nan, "train_loss": math.inf})
    strict = {"parse_constant": lambda name: pytest.fail(f"bare {name} written")}
    meta = json.loads((tmp_path / ckpt.META_FILE).read_text(), **strict)
    assert meta["metrics"] == {"val_loss": "NaN", "train_loss": "Infinity"}
    metrics.write_jsonl(str(tmp_path), [{"epoch": 1, "val_loss": -math.inf}])
    line = (tmp_path / metrics.METRICS_FILE).read_text()
    assert json.loads(line, **strict) == {"epoch": 1, "val_loss": "-Infinity"}


@pytest.mark.parametrize("field", ["state", "rng"])
def test_a_resume_needs_state_and_rng(dataset: str, tmp_path: Path, field: str) -> None:  # noqa: F811
    make_trainer(dataset, str(tmp_path / "run"), epochs=1).fit()
    _edit_meta(tmp_path / "run", lambda meta: meta.pop(field))
    with pytest.raises(DataError, match=f"meta.json: field '{field}' is missing, so training cannot resume"):
        make_trainer(dataset, None).restore(ckpt.load(str(tmp_path / "run")))


# ---- tensors --------------------------------------------------------------------------------------

def _resaved(path: Path, file: str, change: Any) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / file))
    change(tensors)
    save_file(tensors, str(path / file))


@pytest.mark.parametrize(("file", "change", "message"), [
    (ckpt.MODEL_FILE, lambda t: t.update({"0.weight": t["0.weight"].double()}),
     "model.safetensors: tensor '0.weight' is float64 \\[12, 25\\], but this net needs float32 \\[12, 25\\]; "
     "nothing is converted"),
    (ckpt.MODEL_FILE, lambda t: t.update({"0.bias": t["0.bias"][:5]}),
     "tensor '0.bias' is float32 \\[5\\], but this net needs float32 \\[12\\]"),
    (ckpt.MODEL_FILE, lambda t: t.pop("3.bias"),
     "this weights file lacks tensor '3.bias'; it belongs to another net"),
    (ckpt.MODEL_FILE, lambda t: t["0.weight"].fill_(math.nan),
     "tensor '0.weight' holds NaN or infinite values"),
    (ckpt.OPTIMIZER_FILE,
     lambda t: t.update({"state.0.momentum_buffer": t["state.0.momentum_buffer"].t().contiguous()}),
     "optimizer.safetensors: tensor 'state.0.momentum_buffer' is float32 \\[25, 12\\], but its parameter is "
     "float32 \\[12, 25\\]"),
    (ckpt.OPTIMIZER_FILE,
     lambda t: t.update({"state.1.momentum_buffer": t["state.1.momentum_buffer"].half()}),
     "tensor 'state.1.momentum_buffer' is float16 \\[12\\], but its parameter is float32 \\[12\\]"),
    (ckpt.OPTIMIZER_FILE, lambda t: t.update({"weird": t["state.1.momentum_buffer"].clone()}),
     "tensor 'weird' is not named state.<parameter>.<key>"),
])
def test_tensors_that_do_not_fit_are_refused_before_loading(dataset: str, tmp_path: Path, file: str,  # noqa: F811
                                                            change: Any, message: str) -> None:
    make_trainer(dataset, str(tmp_path / "run"), epochs=1).fit()
    _resaved(tmp_path / "run", file, change)
    trainer = make_trainer(dataset, None)
    before = {name: value.clone() for name, value in trainer.net.state_dict().items()}
    with pytest.raises(DataError, match=message):
        trainer.restore(ckpt.load(str(tmp_path / "run")))
    assert all(torch.equal(before[name], value) for name, value in trainer.net.state_dict().items())


def test_optimizer_state_of_another_optimizer_is_refused(dataset: str, tmp_path: Path) -> None:  # noqa: F811
    make_trainer(dataset, str(tmp_path / "run"), epochs=1).fit()
    adam = make_trainer(dataset, None, settings="optimizer adam")
    with pytest.raises(DataError, match="optimizer.safetensors: parameter group 0 has settings .*momentum.* "
                       "but this optimizer takes .*betas.* it was saved by another optimizer"):
        adam.restore(ckpt.load(str(tmp_path / "run")))


# ---- non-finite weights ---------------------------------------------------------------------------

def test_save_refuses_non_finite_weights_and_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    _saved(tmp_path / "run")
    before = (tmp_path / "run" / ckpt.MODEL_FILE).read_bytes()
    weights = {"weight": torch.tensor([[1.0, math.inf, 0.0]] * 2), "bias": torch.zeros(2)}
    with pytest.raises(ckpt.NonFiniteWeights, match="refusing to save the weight 'weight': it holds NaN"):
        ckpt.save(str(tmp_path / "run"), weights, {"state": {}, "param_groups": []}, _program_meta())
    assert (tmp_path / "run" / ckpt.MODEL_FILE).read_bytes() == before


def test_weights_that_diverge_on_the_last_step_are_never_saved(dataset: str, tmp_path: Path) -> None:  # noqa: F811
    trainer = make_trainer(dataset, str(tmp_path / "run"), epochs=1)
    real_save = ckpt.save

    def poisoned_save(target: str, model_state: dict, *args: Any, **kwargs: Any) -> None:
        # as if the last update of the epoch overflowed after its (finite) loss was computed
        model_state = {name: value * math.inf for name, value in model_state.items()}
        real_save(target, model_state, *args, **kwargs)

    ckpt.save = poisoned_save  # type: ignore[assignment]
    try:
        with pytest.raises(Diverged, match="weights became NaN or infinite .* no checkpoint was") as err:
            trainer.fit()
    finally:
        ckpt.save = real_save  # type: ignore[assignment]
    assert "last good checkpoint" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_netc_train_keeps_another_nets_checkpoint_in_out(tmp_path: Path) -> None:
    from test_cli_train import netc, tiny_net

    out = tmp_path / "run"
    model = torch.nn.Linear(784, 10)
    ckpt.save(str(out), model.state_dict(), {"state": {}, "param_groups": []}, _program_meta())
    before = {path.name: path.read_bytes() for path in out.iterdir()}
    result = netc("train", str(tiny_net(tmp_path)), "--out", str(out), "--device", "cpu")
    assert result.returncode == 1
    assert f"error: {out} holds a checkpoint of a different net (tiny); it is not overwritten" in (
        result.stderr)
    assert {path.name: path.read_bytes() for path in out.iterdir()} == before
