"""Golden tests: every error class of LANGUAGE.md, with its exact line, column and message."""

from __future__ import annotations

import pytest

from netc.dsl import parse
from netc.dsl.check import check_file, parse_path
from netc.dsl.errors import NetError


def _errors(source: str) -> list[tuple[int, int, str]]:
    with pytest.raises(NetError) as caught:
        parse(source, path="f.net")
    return [(d.loc.line, d.loc.column, d.message) for d in caught.value.diagnostics]


def _net(*lines: str, train: tuple[str, ...] | None = None) -> str:
    text = "net a {\n" + "".join(f"    {line}\n" for line in lines) + "}\n"
    if train is not None:
        text += "train {\n" + "".join(f"    {line}\n" for line in train) + "}\n"
    return text


_VECTOR = ("input [784]",)
_IMAGE = ("input [1, 28, 28]",)

# (error class, source, line, column, message)
GOLDEN = [
    # --- syntax
    ("syntax: unexpected token", _net(*_VECTOR, "linear 10 =", "relu"), 3, 15,
     "unexpected `=`: expected an argument or the end of the line"),
    ("syntax: statement start", _net(*_VECTOR, "3 relu"), 3, 5,
     "unexpected number 3: expected a layer name, `repeat`, `residual`, `parallel` or `}`"),
    ("syntax: unfinished tuple", _net(*_IMAGE, "conv2d 3 kernel=(3,"), 3, 24,
     "unexpected end of line: expected a value (number, name, string, tuple or shape)"),
    ("syntax: missing comma", _net(*_IMAGE, "conv2d 3 kernel=(3 4)"), 3, 24,
     "unexpected number 4: expected `,` or `)`"),
    ("syntax: bad character", _net(*_VECTOR, "linear 10 @"), 3, 15, "unexpected character '@'"),
    ("syntax: single quotes", _net(*_VECTOR, "linear 'a'"), 3, 12,
     "unexpected character \"'\" (strings use double quotes)"),
    ("syntax: unterminated string", _net(*_VECTOR, "linear 10", train=('data mnist path="abc',)), 6, 21,
     'unterminated string: close it with `"` on the same line'),
    ("syntax: top level", "relu\n", 1, 1, "unexpected name 'relu': expected `net` or `train`"),
    ("syntax: net without name", "net {\n}\n", 1, 5, "unexpected `{`: expected a name"),
    ("syntax: net without brace", "net a\n", 1, 6, "unexpected end of line: expected `{`"),
    ("syntax: unclosed brace at end", "net a {\n    input [784]\n    linear 10\n", 1, 7,
     "this `{` is never closed: add a `}` on its own line at the end of the block"),
    ("syntax: unclosed brace before train", "net a {\n    input [784]\n    linear 10\ntrain {\n}\n", 1, 7,
     "this `{` is never closed: add a `}` on its own line at the end of the block"),
    # the last `}` closes the repeat, so the net's `{` is the one left open
    ("syntax: unclosed repeat", _net(*_VECTOR, "repeat 2 {", "relu", "linear 10"), 1, 7,
     "this `{` is never closed: add a `}` on its own line at the end of the block"),
    ("syntax: text after brace", "net a {\n    input [784]\n    linear 10\n} train\n", 4, 3,
     "unexpected `train` after `}`: `}` must end its line"),
    ("syntax: brace after statement", "net a {\n    input [784]\n    linear 10 }\n", 3, 15,
     "unexpected `}`: put `}` on a line of its own"),
    ("syntax: reserved word as layer", "net a {\n    input [784]\n    net 3\n}\n", 3, 5,
     "unexpected `net`: expected a layer name, `repeat`, `residual`, `parallel` or `}`"),
    # --- structure
    ("second net", _net(*_VECTOR, "linear 10") + "net b {\n    input [784]\n    linear 10\n}\n", 5, 1,
     "a second `net` ('b'): a file holds exactly one net"),
    ("second input", _net(*_VECTOR, "input [784]", "linear 10"), 3, 5,
     "a second `input` (the first is on line 2)"),
    ("second train", _net(*_VECTOR, "linear 10", train=()) + "train {\n}\n", 7, 1,
     "a second `train` block (the first is on line 5): merge them"),
    ("input missing", _net("linear 10"), 1, 1,
     "`input` is missing: the net's first statement must be `input [...]`"),
    ("input not first", _net("linear 10", *_VECTOR), 3, 5, "`input` must be the first statement of the net"),
    ("input inside a block", _net(*_VECTOR, "repeat 1 {", "input [784]", "}", "linear 10"), 4, 5,
     "`input` must be the first statement of the net, and only there"),
    ("empty net", "net a {\n}\n", 1, 1, "empty net 'a': give `input [...]` and at least one layer"),
    ("no net", "train {\n    batch 3\n}\n", 1, 1,
     "no `net` block: a file needs one `net NAME { input [...] ... }`"),
    ("setting twice", _net(*_VECTOR, "linear 10", train=("seed 1", "seed 2")), 7, 5,
     "`seed` given twice (first on line 6): keep one"),
    ("empty repeat", _net(*_VECTOR, "repeat 2 {", "}", "linear 10"), 3, 5,
     "empty `repeat` body: put at least one layer inside"),
    ("empty residual", _net(*_VECTOR, "residual {", "}", "linear 10"), 3, 5,
     "empty `residual` body: put at least one layer inside"),
    # --- unknown names
    ("unknown layer", _net(*_IMAGE, "conv2d 10 kernel=5", "relu", "maxpool 2"), 5, 5,
     "unknown layer 'maxpool' (did you mean 'maxpool2d'?)"),
    ("unknown layer, a setting", _net(*_VECTOR, "epochs 3", "linear 10"), 3, 5,
     "unknown layer 'epochs' (train settings go in the `train` block)"),
    ("unknown argument", _net(*_IMAGE, "conv2d 4 kernal=3"), 3, 14,
     "unknown argument 'kernal' for `conv2d` (did you mean 'kernel'?)"),
    ("unknown argument, none taken", _net(*_VECTOR, "relu slope=2", "linear 10"), 3, 10,
     "unknown argument 'slope' for `relu` (`relu` takes no arguments)"),
    ("unknown setting", _net(*_VECTOR, "linear 10", train=("epoch 3",)), 6, 5,
     "unknown train setting 'epoch' (did you mean 'epochs'?)"),
    ("unknown dataset", _net(*_VECTOR, "linear 10", train=("data mnsit",)), 6, 10,
     "unknown dataset 'mnsit' (did you mean 'mnist'?)"),
    ("unknown optimizer", _net(*_VECTOR, "linear 10", train=("optimizer adamm",)), 6, 15,
     "unknown optimizer 'adamm' (did you mean 'adam'?)"),
    ("unknown activation", _net("input [28, 28]", "rnn 8 activation=rleu", "linear 10"), 3, 22,
     "unknown activation 'rleu' (did you mean 'relu'?)"),
    ("unknown loss", _net(*_VECTOR, "linear 10", train=("loss crossentropy",)), 6, 10,
     "unknown loss 'crossentropy' (did you mean 'cross_entropy'?)"),
    ("unknown schedule", _net(*_VECTOR, "linear 10", train=("schedule cosin",)), 6, 14,
     "unknown schedule 'cosin' (did you mean 'cosine'?)"),
    ("missing keyword", _net(*_IMAGE, "conv2d 4", "flatten", "linear 10"), 3, 5,
     "`conv2d` needs 'kernel': add kernel=..."),
    ("missing positional", _net(*_VECTOR, "linear"), 3, 5,
     "`linear` needs its out_features: write it after `linear`"),
    ("missing every", _net(*_VECTOR, "linear 10", train=("schedule step gamma=0.5",)), 6, 5,
     "`schedule step` needs 'every': add every=..."),
    ("positional after keyword", _net(*_IMAGE, "conv2d kernel=3 4"), 3, 21,
     "positional argument 4 after the keyword argument 'kernel': write positional arguments first"),
    ("too many positional", _net(*_VECTOR, "linear 10 20"), 3, 15,
     "too many positional arguments: `linear` takes 1 (out_features)"),
    ("argument twice", _net(*_VECTOR, "linear 10 out_features=10"), 3, 15,
     "argument 'out_features' given twice"),
    # --- types and ranges
    ("int expected", _net(*_VECTOR, "linear 2.5"), 3, 12, "'out_features' must be an integer, got 2.5"),
    ("bool expected", _net(*_VECTOR, "linear 10 bias=1"), 3, 20, "'bias' must be true or false, got 1"),
    ("pair size", _net(*_IMAGE, "conv2d 4 kernel=(1, 2, 3)"), 3, 21,
     "'kernel' takes a pair like (3, 5), got 3 values"),
    ("size below 1", _net(*_IMAGE, "conv2d 0 kernel=3"), 3, 12, "'out_channels' must be at least 1, got 0"),
    ("stride below 1", _net(*_IMAGE, "conv2d 4 kernel=3 stride=0"), 3, 30,
     "'stride' must be at least 1, got 0"),
    ("kernel below 1", _net(*_IMAGE, "maxpool2d (2, 0)"), 3, 19, "'kernel' must be at least 1, got 0"),
    ("hidden below 1", _net("input [28, 28]", "gru 0", "linear 10"), 3, 9,
     "'hidden' must be at least 1, got 0"),
    ("repeat count", _net(*_VECTOR, "repeat 0 {", "relu", "}", "linear 10"), 3, 12,
     "`repeat` count must be at least 1, got 0"),
    ("repeat count type", _net(*_VECTOR, "repeat two {", "relu", "}", "linear 10"), 3, 12,
     "`repeat` needs a whole number of copies, got two"),
    ("batch below 1", _net(*_VECTOR, "linear 10", train=("batch 0",)), 6, 11,
     "'batch' must be at least 1, got 0"),
    ("epochs below 1", _net(*_VECTOR, "linear 10", train=("epochs -1",)), 6, 12,
     "'epochs' must be at least 1, got -1"),
    ("seed above 2**32 - 1", _net(*_VECTOR, "linear 10", train=("seed 4294967296",)), 6, 10,
     "'seed' must be at most 4294967295, got 4294967296"),
    ("smoothing above 1", _net(*_VECTOR, "linear 10", train=("loss cross_entropy label_smoothing=1.5",)),
     6, 40, "'label_smoothing' must be at most 1, got 1.5"),
    ("padding below 0", _net(*_IMAGE, "conv2d 4 kernel=3 padding=-1"), 3, 31,
     "'padding' must be at least 0, got -1"),
    ("padding word", _net(*_IMAGE, "conv2d 4 kernel=3 padding=valid"), 3, 31,
     "'padding' must be an integer or `same`, got valid"),
    ("dropout p", _net(*_VECTOR, "dropout 1", "linear 10"), 3, 13, "'p' must be in [0, 1), got 1"),
    ("val", _net(*_VECTOR, "linear 10", train=("data mnist val=1.5",)), 6, 20,
     "'val' must be in [0, 1), got 1.5"),
    ("lr", _net(*_VECTOR, "linear 10", train=("optimizer adam lr=0",)), 6, 23,
     "'lr' must be positive, got 0"),
    ("betas", _net(*_VECTOR, "linear 10", train=("optimizer adam betas=0.9",)), 6, 26,
     "'betas' takes a pair like (0.9, 0.999), got 0.9"),
    ("nesterov", _net(*_VECTOR, "linear 10", train=("optimizer sgd nesterov=true",)), 6, 5,
     "nesterov=true needs momentum above 0 and dampening=0"),
    ("path type", _net(*_VECTOR, "linear 10", train=("data mnist path=dir",)), 6, 21,
     "'path' must be a string in double quotes, got dir"),
    ("shape zero", _net("input [1, 0, 28]", "flatten", "linear 10"), 2, 15,
     "shape dimensions must be at least 1, got 0"),
    ("shape negative", _net("input [-784]", "linear 10"), 2, 12,
     "shape dimensions must be at least 1, got -784"),
    ("input not a shape", _net("input 784", "linear 10"), 2, 11,
     "`input` takes one shape, like `input [1, 28, 28]`"),
    ("same with stride", _net(*_IMAGE, "conv2d 2 kernel=3 padding=same stride=2", "flatten",
     "linear 10"), 3, 5,
     "padding=same needs stride=1 (PyTorch's rule); give the padding as numbers instead"),
    ("pool padding", _net(*_IMAGE, "maxpool2d 2 padding=2", "flatten", "linear 10"), 3, 5,
     "padding 2 is more than half the kernel 2; use at most 1"),
    # --- shapes
    ("kernel too large", _net(*_IMAGE, "conv2d 4 kernel=29"), 3, 5,
     "`conv2d` kernel 29 is larger than the padded input height 28 (28 + 2*0) (input [1, 28, 28])"),
    ("dilated kernel too large", _net("input [1, 4, 28]", "conv2d 4 kernel=3 dilation=2"), 2, 5,
     "`input [1, 4, 28]` holds 112 values, but mnist samples hold 784: use [1, 28, 28], [28, 28] or [784]"),
    ("pool output below 1", _net(*_IMAGE, "maxpool2d 29"), 3, 5,
     "`maxpool2d` kernel 29 is larger than the padded input height 28 (28 + 2*0) (input [1, 28, 28])"),
    ("linear on image", _net(*_IMAGE, "linear 10"), 3, 5,
     "`linear` needs [F] or [T, F], got [1, 28, 28]; add `flatten` before it"),
    ("recurrent on image", _net(*_IMAGE, "lstm 10"), 3, 5,
     "`lstm` needs a sequence [T, F], got [1, 28, 28]; set `input [28, 28]` to read the rows as steps"),
    ("recurrent on vector", _net(*_VECTOR, "rnn 10"), 3, 5, "`rnn` needs a sequence [T, F], got [784]"),
    ("pool on vector", _net(*_VECTOR, "maxpool2d 2"), 3, 5,
     "`maxpool2d` needs an image [C, H, W], got [784]; set `input [1, 28, 28]` to see the digit as an image"),
    ("conv on sequence", _net("input [28, 28]", "conv2d 2 kernel=3"), 3, 5,
     "`conv2d` needs an image [C, H, W], got [28, 28]"),
    ("groups", _net(*_IMAGE, "conv2d 4 kernel=3 groups=2", "flatten", "linear 10"), 3, 5,
     "groups=2 must divide both the input channels (1) and out_channels (4) (input [1, 28, 28])"),
    ("residual changes shape", _net(*_VECTOR, "residual {", "linear 20", "}", "linear 10"), 3, 5,
     "the `residual` body changes the shape from [784] to [20]; x + body(x) needs them equal"),
    ("last layer not classes", _net(*_VECTOR, "linear 20"), 3, 5,
     "the last layer outputs [20], but mnist has 10 classes: the net must output [10] "
     "(end with `linear 10`)"),
    ("last layer a sequence", _net("input [28, 28]", "gru 10 output=sequence"), 3, 5,
     "the last layer outputs [28, 10], but mnist has 10 classes: the net must output [10] "
     "(use output=last on the recurrent layer, or flatten before the last `linear`)"),
    ("input size", _net("input [1, 28, 29]", "flatten", "linear 10"), 2, 5,
     "`input [1, 28, 29]` holds 812 values, but mnist samples hold 784: use [1, 28, 28], [28, 28] or [784]"),
    ("fashion input size", _net("input [28, 27]", "rnn 4", "linear 10", train=("data fashion_mnist",)), 2, 5,
     "`input [28, 27]` holds 756 values, but fashion_mnist samples hold 784: "
     "use [1, 28, 28], [28, 28] or [784]"),
]


@pytest.mark.parametrize("source,line,column,message", [case[1:] for case in GOLDEN],
                         ids=[case[0] for case in GOLDEN])
def test_error_class_golden(source, line, column, message):
    assert _errors(source)[0] == (line, column, message)


def test_rendered_text_matches_the_spec_example():
    source = ("# lenet.net\nnet lenet {\n    input [1, 28, 28]\n    conv2d 10 kernel=5\n    relu\n"
              "    maxpool 2\n    flatten\n    linear 10\n}\n")
    with pytest.raises(NetError) as caught:
        parse(source, path="lenet.net")
    # exactly the spec's example: the line as written, the caret under its column
    assert str(caught.value) == ("lenet.net:6:5: error: unknown layer 'maxpool' (did you mean 'maxpool2d'?)\n"
                                 "    maxpool 2\n"
                                 "    ^")
    error = caught.value
    assert (error.path, error.line, error.column) == ("lenet.net", 6, 5)
    assert error.message == "unknown layer 'maxpool' (did you mean 'maxpool2d'?)"


def test_rendered_syntax_error_points_under_the_token():
    with pytest.raises(NetError) as caught:
        parse(_net(*_VECTOR, "linear 10 ="), path="x.net")
    expected_head = "x.net:3:15: error: unexpected `=`: expected an argument or the end of the line\n"
    assert str(caught.value) == (expected_head +
                                 "    linear 10 =\n"
                                 "              ^")


def test_rendered_shape_error_and_the_shape_it_got():
    with pytest.raises(NetError) as caught:
        parse(_net(*_IMAGE, "linear 10"), path="x.net")
    assert str(caught.value).splitlines() == [
        "x.net:3:5: error: `linear` needs [F] or [T, F], got [1, 28, 28]; add `flatten` before it",
        "    linear 10",
        "    ^"]


def test_several_errors_in_source_order_across_net_and_train():
    source = _net(*_VECTOR, "relu slope=2", "lienar 10", "linear 10 bias=1",
                  train=("batch 0", "optimzer sgd"))
    positions = [(line, column) for line, column, _ in _errors(source)]
    assert positions == [(3, 10), (4, 5), (5, 20), (8, 11), (9, 5)]


def test_train_block_first_still_sorted_by_position():
    source = "train {\n    epochs 0\n}\n" + _net(*_VECTOR, "linar 10")
    assert [(line, message) for line, _, message in _errors(source)] == [
        (2, "'epochs' must be at least 1, got 0"), (6, "unknown layer 'linar' (did you mean 'linear'?)")]


def test_errors_stop_at_the_first_shape_error():
    source = _net(*_IMAGE, "conv2d 4 kernal=3", "linear 10", "relu slope=1", "bogus", train=("batch 0",))
    errors = _errors(source)
    # the conv's argument error leaves shapes unknown, so `linear` is not blamed; the rest still count
    assert [line for line, _, _ in errors] == [3, 5, 6, 9]
    source = _net(*_IMAGE, "linear 10", "relu slope=1", "bogus", train=("batch 0",))
    assert [line for line, _, _ in _errors(source)] == [3]  # a shape error: nothing after it


def test_repeat_reports_a_wrong_layer_once():
    errors = _errors(_net(*_VECTOR, "repeat 3 {", "linear 10 bias=2", "}"))
    assert errors == [(4, 20, "'bias' must be true or false, got 2")]


def test_repeat_expansion_is_bounded():
    errors = _errors(_net(*_VECTOR, "repeat 1000 {", "repeat 1000 {", "relu", "}", "}", "linear 10"))
    assert errors[0][2] == ("this `repeat` makes the net 1,000,000 layers long after expansion; netc allows "
                            "at most 100,000 (every repeat, residual and parallel counted)")


def test_parse_path_reads_files_only(tmp_path):
    # the CLI's FILE is always a path: a missing one is named, never parsed as source text
    with pytest.raises(NetError) as caught:
        parse_path(str(tmp_path / "missing"))
    assert str(caught.value) == f"error: {tmp_path / 'missing'} does not exist"
    with pytest.raises(NetError) as caught:
        parse_path(str(tmp_path))
    assert str(caught.value) == f"error: {tmp_path} is a directory, not a .net file"
    (tmp_path / "empty.net").write_text("")
    with pytest.raises(NetError) as caught:
        parse_path(str(tmp_path / "empty.net"))
    assert caught.value.path == str(tmp_path / "empty.net") and "no `net` block" in caught.value.message
    (tmp_path / "ok.net").write_text(_net(*_VECTOR, "linear 10"))
    graph = parse_path(str(tmp_path / "ok.net"))
    assert graph.path == str(tmp_path / "ok.net") and graph.output_shape == (10,)
    (tmp_path / "bom.net").write_bytes(b"\xef\xbb\xbf" + _net(*_VECTOR, "linear 10").encode())
    assert parse_path(str(tmp_path / "bom.net")).output_shape == (10,)  # a Windows editor's byte order mark
    (tmp_path / "bom_error.net").write_bytes(b"\xef\xbb\xbf" + _net(*_VECTOR, "linear 0").encode())
    with pytest.raises(NetError) as caught:
        parse_path(str(tmp_path / "bom_error.net"))
    assert (caught.value.line, caught.value.column) == (3, 12)  # columns count from the text, not the mark


def test_missing_file_and_dataset_path_skip():
    with pytest.raises(NetError) as caught:
        parse("missing.net")
    assert str(caught.value) == "error: no such file: missing.net"
    # with path=, the runtime checks the samples: any input and output size passes here
    graph = parse(_net("input [3, 5]", "linear 7", train=('data mnist path="/data"',)))
    assert graph.output_shape == (3, 7) and graph.train.data.path == "/data"


def test_warnings_do_not_stop_and_are_rendered():
    result = check_file(_net(*_VECTOR, "relu", "relu", "linear 10", "dropout 0.5"), path="w.net")
    rendered = [warning.render() for warning in result.warnings]
    assert rendered == [
        "w.net:4:5: warning: `relu` right after `relu`: two activations in a row are rarely wanted\n"
        "    relu\n    ^",
        "w.net:6:5: warning: `dropout` as the last layer zeroes logits at random in training; "
        "put it before the last `linear`\n    dropout 0.5\n    ^"]
    assert result.graph.output_shape == (10,)
    assert check_file(_net(*_VECTOR, "linear 10")).warnings == []


def test_caret_stays_under_the_column_in_tab_indented_files():
    with pytest.raises(NetError) as caught:
        parse("net a {\n\tinput [784]\n\tlinar 10\n}\n", path="t.net")
    head, line, caret = str(caught.value).splitlines()
    assert head.startswith("t.net:3:2: error: unknown layer 'linar'")
    assert line.index("linar") == caret.index("^")


def test_crlf_files_render_without_carriage_returns():
    with pytest.raises(NetError) as caught:
        parse("net a {\r\n    input [784]\r\n    linar 10\r\n}\r\n", path="w.net")
    assert "\r" not in str(caught.value) and caught.value.line == 3
    with pytest.raises(NetError) as caught:
        parse("net a {\r\n    input [784] =\r\n}\r\n", path="w.net")
    assert "\r" not in str(caught.value) and (caught.value.line, caught.value.column) == (2, 17)
