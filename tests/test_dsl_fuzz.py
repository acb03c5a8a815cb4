"""Fuzzing the front end: generated and mutated programs end in a Graph or a NetError, nothing else."""

from __future__ import annotations

import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netc.dsl import parse
from netc.dsl.errors import NetError
from netc.dsl.ir import Graph
from netc.dsl.ops import OPS
from netc.dsl.train import SETTINGS

_SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_ARG_NAMES = sorted({spec.name for op in OPS.values() for spec in op.args} |
                    {"lr", "momentum", "val", "path", "every", "gamma", "betas", "label_smoothing", "kernal"})
_NAMES = st.sampled_from([*_ARG_NAMES, "same", "tanh", "relu", "last", "sequence", "mnist", "sgd", "adam",
                          "cosine", "step", "x", "cross_entropy"])
_NUMBERS = st.one_of(st.integers(-3, 40).map(str), st.sampled_from(["0.5", "1e-3", ".5", "-1", "2.", "1e400",
                                                                     "99999999999999999999"]))


def _values() -> list[st.SearchStrategy[str]]:
    """Values nested up to 2 deep: [depth 0, depth 1, depth 2] (built once; strategies are costly)."""
    scalar = st.one_of(_NUMBERS, _NAMES, st.sampled_from(["true", "false", '"dir"', '""']))
    levels = [scalar]
    for _ in range(2):
        items = st.lists(levels[-1], max_size=4).map(", ".join)
        levels.append(st.one_of(scalar, items.map(lambda s: f"({s})"), items.map(lambda s: f"[{s}]")))
    return levels[::-1]


_VALUE, _, _SCALAR = _values()
_ARG = st.one_of(_VALUE, st.tuples(st.sampled_from(_ARG_NAMES), _VALUE).map(lambda kv: f"{kv[0]}={kv[1]}"))
_ARGS = st.lists(_ARG, max_size=4).map(" ".join)
_LAYER = st.tuples(st.one_of(st.sampled_from(sorted(OPS)), st.sampled_from(["maxpool", "conv", "epochs"])),
                   _ARGS).map(lambda t: f"{t[0]} {t[1]}".strip())
# Lines that keep a [784] vector a [784] vector: they let the generator reach valid programs.
_GOOD = st.sampled_from(["relu", "tanh", "sigmoid", "leaky_relu slope=0.2", "dropout 0.1", "linear 784",
                         "linear 784 bias=false"])
_INPUT = st.sampled_from(["input [1, 28, 28]", "input [28, 28]", "input [784]", "input [0]", "input 3",
                          "input [784, 1]", "input"])


def _flat(groups: list[list[str]]) -> list[str]:
    return [line for group in groups for line in group]


def _statement_levels() -> st.SearchStrategy[list[str]]:
    leaf = st.one_of(_GOOD, _GOOD, _LAYER, st.one_of(_GOOD, _INPUT)).map(lambda line: [line])
    body = st.lists(leaf, max_size=6).map(_flat)
    for _ in range(2):
        repeat = st.tuples(_SCALAR, body).map(lambda t: [f"repeat {t[0]} {{", *t[1], "}"])
        residual = body.map(lambda lines: ["residual {", *lines, "}"])
        body = st.lists(st.one_of(leaf, leaf, leaf, repeat, residual), max_size=8).map(_flat)
    return body


_STATEMENTS = _statement_levels()
_SETTING = st.tuples(st.sampled_from([*SETTINGS, "epoch", "input"]), _ARGS).map(lambda t: f"{t[0]} {t[1]}")


@st.composite
def programs(draw: st.DrawFn) -> str:
    body = draw(_STATEMENTS)
    if draw(st.booleans()):
        body = ["input [784]", *body, "linear 10"]
    blocks = [["net n {", *body, "}"]]
    if draw(st.booleans()):
        blocks.append(["train {", *draw(st.lists(_SETTING, max_size=4)), "}"])
    if draw(st.booleans()):
        blocks.reverse()
    return "\n".join("    " * (0 < i < len(b) - 1) + line for b in blocks for i, line in enumerate(b)) + "\n"


def _ends_well(source: str) -> Graph | NetError:
    """parse() must return a Graph or raise NetError with a sensible, traceback-free message."""
    try:
        return parse(source, path="fuzz.net")
    except NetError as error:
        text = str(error)
        missing_file = error.message.startswith("no such file")  # a one-line text ending in .net
        assert error.diagnostics and (error.line >= 1 and error.column >= 1 or missing_file), text
        assert "__ANON" not in text and "Token(" not in text and "Traceback" not in text, text
        lines = [d.loc.line for d in error.diagnostics]
        assert lines == sorted(lines), "errors out of source order"
        return error


@_SETTINGS
@given(programs())
def test_generated_programs_give_a_graph_or_a_net_error(source):
    _ends_well(source)


def test_the_generator_reaches_valid_programs_too():
    """The fuzzer is only useful if it also builds programs that check: find some."""
    found: list[str] = []

    @settings(max_examples=100, deadline=None, database=None, derandomize=True)
    @given(programs())
    def search(source: str) -> None:
        if isinstance(_ends_well(source), Graph):
            found.append(source)

    search()
    assert len(found) >= 5


_SEEDS = [
    "# c\nnet lenet {\n    input [1, 28, 28]\n    conv2d 10 kernel=5\n    relu\n    maxpool2d 2\n"
    "    flatten\n    linear 50\n    relu\n    linear 10\n}\n\ntrain {\n    data mnist val=0.2\n"
    "    batch 100\n"
    "    optimizer sgd lr=0.01 momentum=0.9\n    schedule step every=2\n}\n",
    "net r {\n    input [28, 28]\n    lstm 16 layers=2 output=sequence\n    residual {\n        linear 16\n"
    "        tanh\n    }\n    repeat 2 {\n        gru 8 output=sequence\n    }\n    rnn 8 activation=relu\n"
    "    linear 10\n}\ntrain {\n    optimizer adam betas=(0.9, 0.99)\n    data fashion_mnist path=\"x\"\n}\n",
]
_REPLACEMENTS = ["{", "}", "(", ")", "[", "]", "=", ",", "#", '"', "\n", "0", "-5", "net", "train", "input",
                 "repeat", "residual", "1e999"]
_TOKEN = re.compile(r'"[^"\n]*"|[A-Za-z_][A-Za-z0-9_]*|-?\d*\.?\d+(?:[eE][-+]?\d+)?|\n|[ \t]+|.')


@st.composite
def mutants(draw: st.DrawFn) -> str:
    tokens = _TOKEN.findall(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        if not tokens:
            break
        where = draw(st.integers(0, len(tokens) - 1))
        action = draw(st.sampled_from(["delete", "duplicate", "swap", "bytes", "replace"]))
        if action == "delete":
            del tokens[where]
        elif action == "duplicate":
            tokens.insert(where, tokens[where])
        elif action == "swap":
            other = draw(st.integers(0, len(tokens) - 1))
            tokens[where], tokens[other] = tokens[other], tokens[where]
        elif action == "bytes":
            raw = draw(st.binary(min_size=1, max_size=4)).decode("latin-1")
            tokens.insert(where, raw)
        else:
            tokens[where] = draw(st.sampled_from(_REPLACEMENTS))
    return "".join(tokens)


@_SETTINGS
@given(mutants())
def test_mutated_programs_give_a_graph_or_a_net_error(source):
    _ends_well(source)


@_SETTINGS
@given(st.text(max_size=60))
def test_arbitrary_text_gives_a_net_error(source):
    result = _ends_well(source)
    assert isinstance(result, NetError)  # no random text is a whole valid program
