"""Valid programs compile: LANGUAGE.md's examples, every examples/*.net, the docs, and each train setting."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from netc.dsl import parse
from netc.dsl.check import check_file
from netc.dsl.ir import DataConfig, OptimizerConfig, ScheduleConfig, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.net"))

# The two programs of spec/LANGUAGE.md, copied verbatim.
SPEC_LENET = """\
# lenet.net: the classic small convolutional network for MNIST
net lenet {
    input [1, 28, 28]
    conv2d 10 kernel=5
    relu
    maxpool2d 2
    flatten
    linear 50
    relu
    linear 10
}

train {
    data mnist val=0.2
    batch 100
    epochs 10
    optimizer sgd lr=0.01 momentum=0.9
    loss cross_entropy
    seed 0
}
"""

SPEC_RNN = """\
# rnn.net: read an MNIST digit row by row, 28 steps of 28 pixels
net row_rnn {
    input [28, 28]
    rnn 128 activation=tanh output=last
    linear 10
}
"""


def test_spec_lenet():
    graph = parse(SPEC_LENET)
    assert graph.name == "lenet" and graph.path == "<string>" and graph.source == SPEC_LENET
    assert [node.op for node in graph.nodes] == ["conv2d", "relu", "maxpool2d", "flatten", "linear", "relu",
                                                 "linear"]
    assert [node.out_shape for node in graph.nodes] == [(10, 24, 24), (10, 24, 24), (10, 12, 12), (1440,),
                                                        (50,), (50,), (10,)]
    assert [node.name for node in graph.nodes] == [str(i) for i in range(7)]
    # conv 10*1*5*5 + 10, linear 50*1440 + 50, linear 10*50 + 10
    assert graph.param_count == 260 + 72050 + 510
    assert graph.nodes[0].attrs == {"out_channels": 10, "kernel": (5, 5), "stride": (1, 1), "padding": (0, 0),
                                    "dilation": (1, 1), "groups": 1, "bias": True}
    assert graph.nodes[2].attrs["stride"] == (2, 2)  # pools default their stride to the kernel
    train = graph.train
    assert train.data == DataConfig("mnist", 0.2, None, False)
    assert (train.batch, train.epochs, train.seed, train.loss) == (100, 10, 0, "cross_entropy")
    assert train.optimizer == OptimizerConfig("sgd", 0.01, 0.9)
    assert train.locs["batch"].line == 15 and train.locs["data"].column == 5


def test_spec_rnn():
    graph = parse(SPEC_RNN)
    node = graph.nodes[0]
    assert node.attrs == {"hidden": 128, "activation": "tanh", "layers": 1, "output": "last", "bias": True,
                          "bidirectional": False, "dropout": 0.0}
    assert node.params == {"weight_ih_l0": (128, 28), "weight_hh_l0": (128, 128), "bias_ih_l0": (128,),
                           "bias_hh_l0": (128,)}
    assert graph.output_shape == (10,)
    assert graph.train == TrainConfig()  # no train block: every default


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_every_example_file_compiles(path):
    result = check_file(str(path))
    graph = result.graph
    assert graph.path == str(path) and graph.source == path.read_text()
    assert graph.output_shape == (10,) and graph.param_count > 0
    assert parse(path.read_text(), path=str(path)).nodes == graph.nodes  # the file or its text: one graph


def test_examples_exist():
    assert {"lenet.net", "rnn.net"} <= {path.name for path in EXAMPLES}


def _doc_programs() -> list[str]:
    text = (ROOT / "docs" / "language.md").read_text()
    return [block for block in re.findall(r"```net\n(.*?)```", text, re.S) if "net " in block]


def test_every_program_in_the_docs_compiles_and_together_they_show_every_layer_and_setting():
    from netc.dsl.ops import OPS
    from netc.dsl.train import SETTINGS

    programs = _doc_programs()
    ops: set[str] = set()
    settings: set[str] = set()
    for program in programs:
        graph = parse(program)
        ops |= {node.op for node in graph.nodes}
        settings |= set(graph.train.locs)
    assert ops == set(OPS) | {"add", "concat"}  # add, concat: the merges of residual and parallel blocks
    assert settings == set(SETTINGS)


def _train(*settings: str):
    body = "".join(f"    {line}\n" for line in settings)
    return parse(f"net t {{\n    input [784]\n    linear 10\n}}\ntrain {{\n{body}}}\n").train


def test_optimizer_defaults_differ_between_no_line_and_a_bare_sgd():
    assert _train().optimizer == OptimizerConfig("sgd", 0.01, momentum=0.9)
    assert _train("optimizer sgd").optimizer.momentum == 0.0
    adam = _train("optimizer adam").optimizer
    assert (adam.name, adam.lr, adam.betas) == ("adam", 0.001, (0.9, 0.999))
    assert (adam.eps, adam.weight_decay) == (1e-8, 0)
    assert _train("optimizer adamw").optimizer.weight_decay == 0.01
    custom = _train("optimizer adamw lr=3e-4 betas=(0.8, 0.99) eps=1e-6 weight_decay=0").optimizer
    assert (custom.lr, custom.betas, custom.eps, custom.weight_decay) == (3e-4, (0.8, 0.99), 1e-6, 0.0)
    sgd = _train("optimizer sgd lr=.5 momentum=0.8 weight_decay=1e-4 nesterov=true").optimizer
    assert (sgd.lr, sgd.momentum, sgd.weight_decay, sgd.nesterov) == (0.5, 0.8, 1e-4, True)


def test_every_other_setting():
    train = _train('data fashion_mnist val=0.1 path="/tmp/fm" normalize=true', "batch 7", "epochs 3",
                   "loss cross_entropy label_smoothing=0.1", "schedule step every=2 gamma=0.5", "clip 1.5",
                   "seed 42")
    assert train.data == DataConfig("fashion_mnist", 0.1, "/tmp/fm", True)
    assert (train.batch, train.epochs, train.clip, train.seed) == (7, 3, 1.5, 42)
    assert (train.loss, train.label_smoothing) == ("cross_entropy", 0.1)
    assert train.schedule == ScheduleConfig("step", 2, 0.5)
    assert _train("schedule step every=4").schedule == ScheduleConfig("step", 4, 0.1)
    assert _train("schedule cosine").schedule.name == "cosine"
    assert _train("schedule none").schedule == ScheduleConfig()
    assert _train().clip is None and _train().data == DataConfig()
    assert list(train.locs) == ["data", "batch", "epochs", "loss", "schedule", "clip", "seed"]


def test_lexical_forms():
    source = ("# leading comment\n\n\nnet t {   # trailing comment\n\n    input [784]\n"
              "    leaky_relu slope=1e-2\n    dropout .5\n    linear 10 bias=false  # no bias\n}\r\n"
              'train {\n    data mnist path="a # b" val=0\n}')  # no final newline, a CRLF, '#' in a string
    graph = parse(source)
    assert [node.op for node in graph.nodes] == ["leaky_relu", "dropout", "linear"]
    assert graph.nodes[0].attrs["slope"] == 0.01 and graph.nodes[1].attrs["p"] == 0.5
    assert graph.nodes[2].params == {"weight": (10, 784)}
    assert graph.train.data.path == "a # b"
    assert graph.nodes[1].loc.line == 8 and graph.nodes[1].loc.column == 5


def test_train_block_may_come_first_and_names_are_case_sensitive():
    graph = parse("train {\n    seed 3\n}\nnet Net_1 {\n    input [784]\n    linear 10\n}\n")
    assert graph.name == "Net_1" and graph.train.seed == 3 and graph.input_loc.line == 5


def test_grammar_is_strict_lalr_without_conflicts():
    """Built strict, Lark refuses shift/reduce conflicts and colliding terminals."""
    pytest.importorskip("interegular")  # strict mode's collision check needs it
    import lark

    grammar = (ROOT / "dsl" / "grammar.lark").read_text()
    parser = lark.Lark(grammar, parser="lalr", lexer="basic", strict=True, propagate_positions=True)
    assert parser.parse(SPEC_RNN + "\n").data == "start"


def test_parse_with_warnings_returns_graph_and_warnings_every_time():
    from netc.dsl import parse_with_warnings

    source = "net w {\n    input [784]\n    linear 10\n    tanh\n}\n"
    for _ in range(2):  # the second call runs after netc.dsl.check is imported
        result = parse_with_warnings(source, path="w.net")
        assert result.graph.output_shape == (10,)
        assert [(w.severity, w.loc.line) for w in result.warnings] == [("warning", 4)]
