"""Source text or file -> ast.Program -> checked Graph (+ warnings), or NetError with every error.

The checker resolves each layer in the op table, expands `repeat`, infers every shape
and checks the train block. Errors are collected, sorted by position and cut after the
first shape error (the shapes after it are unknown).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from netc.dsl import ast
from netc.dsl.args import bind, did_you_mean
from netc.dsl.errors import MAX_SHOWN_ERRORS, Diagnostic, Loc, NetError
from netc.dsl.ir import INPUT, Graph, Node, Shape, TrainConfig
from netc.dsl.blocks import MERGES, merge_flops, merge_shape
from netc.dsl.lint import find_warnings
from netc.dsl.limits import layer_count_problem, node_problem, shape_problem
from netc.dsl.ops import OPS, ShapeError, fmt_shape, numel
from netc.dsl.parser import parse_program
from netc.dsl.train import SETTINGS, check_train

# dataset -> (values in one sample, classes); the packaged data and IDX files agree
MAX_LAYERS = 100_000  # a bound on `repeat` expansion, so a typo cannot hang the checker
# a statement's nodes, the name of the node holding its output, and its output shape (None after an error)
Step = tuple[list[Node], str | None, Shape | None]
_BLOCKS = (ast.Layer, ast.Repeat, ast.Residual, ast.Parallel)
DATASET_SHAPES: dict[str, tuple[int, int]] = {"mnist": (784, 10), "fashion_mnist": (784, 10)}


@dataclass
class CheckResult:
    """A checked program and the warnings found on the way."""

    graph: Graph
    warnings: list[Diagnostic] = field(default_factory=list)


class SourceFileError(NetError):
    """A `.net` file that is missing or unreadable: no line to point at, so it renders `error: MESSAGE`."""

    def __init__(self, message: str, path: str):
        super().__init__(Diagnostic("error", message, Loc(path, 0, 0)))

    def render(self) -> str:
        return f"error: {self.message}"


def read_file(path: str) -> str:
    """The text of a `.net` file, or SourceFileError saying why not."""
    if not os.path.isfile(path):
        what = "is a directory, not a .net file" if os.path.isdir(path) else "does not exist"
        raise SourceFileError(f"{path} {what}", path)
    try:
        with open(path, encoding="utf-8-sig") as handle:  # -sig: drop the BOM some Windows editors write
            return handle.read()
    except UnicodeDecodeError as error:
        reason = f"it is not a text file (the byte at offset {error.start} is not UTF-8)"
        raise SourceFileError(f"cannot read {path}: {reason}", path) from None
    except OSError as error:
        raise SourceFileError(f"cannot read {path}: {error.strerror or error}", path) from None


def read_source(path_or_source: str, path: str | None = None) -> tuple[str, str]:
    """(source text, path for messages): read the file if the string names one, else take it as source."""
    looks_like_path = "\n" not in path_or_source and "{" not in path_or_source
    if looks_like_path and "\0" not in path_or_source and os.path.isfile(path_or_source):
        return read_file(path_or_source), path or path_or_source
    if looks_like_path and path_or_source.strip().endswith(".net"):
        raise SourceFileError(f"no such file: {path_or_source}", path_or_source)
    return path_or_source, path or "<string>"


def check_file(path_or_source: str, path: str | None = None) -> CheckResult:
    """Parse and check a file or source text; raise NetError listing every error found."""
    source, shown_path = read_source(path_or_source, path)
    return check_program(parse_program(source, shown_path))


def parse_path(path: str) -> Graph:
    """The checked Graph of the `.net` file at `path`, never taken as source text (the CLI's FILE)."""
    return check_program(parse_program(read_file(path), path)).graph


def parse_file(path_or_source: str, path: str | None = None) -> Graph:
    """The checked Graph of a file or source text (`netc.dsl.parse`); warnings are dropped."""
    return check_file(path_or_source, path).graph


def check_program(program: ast.Program) -> CheckResult:
    return _Checker(program).run()


class _Checker:
    """One pass over a Program; collects (loc, message, is_shape_error) triples."""

    def __init__(self, program: ast.Program):
        self.program = program
        self.lines = program.source.split("\n")
        self.problems: list[tuple[Loc, str, bool]] = []
        self.shape_known = True  # false after an error that leaves the shapes unknown

    def run(self) -> CheckResult:
        net, train_block = self._blocks()
        train, train_errors = check_train(train_block, tuple(OPS))
        for error in train_errors:
            self._error(error.loc, error.message)
        graph = None
        if net is not None:
            graph = self._net(net, train)
        if self.problems or graph is None:
            raise NetError(self._diagnostics())
        found = find_warnings(graph)
        warnings = [self._diagnostic("warning", loc, message) for loc, message in found[:MAX_SHOWN_ERRORS]]
        if len(found) > MAX_SHOWN_ERRORS:  # bounded output: the rest are counted, not printed
            more = len(found) - MAX_SHOWN_ERRORS
            loc = found[MAX_SHOWN_ERRORS][0]
            warnings.append(Diagnostic("warning", f"... and {more:,} more warnings like these", loc))
        return CheckResult(graph, warnings)

    # --- reporting ----------------------------------------------------------------------------

    def _error(self, loc: Loc, message: str, shape: bool = False) -> None:
        self.problems.append((loc, message, shape))
        if shape:
            self.shape_known = False

    def _diagnostic(self, severity: str, loc: Loc, message: str) -> Diagnostic:
        line = self.lines[loc.line - 1].rstrip("\r") if 0 < loc.line <= len(self.lines) else ""
        return Diagnostic(severity, message, loc, line)

    def _diagnostics(self) -> list[Diagnostic]:
        ordered = sorted(set(self.problems), key=lambda p: (p[0].line, p[0].column, p[1]))
        kept: list[Diagnostic] = []
        for loc, message, shape in ordered:
            kept.append(self._diagnostic("error", loc, message))
            if shape:
                break  # later shapes are unknown: anything after would be noise
        return kept

    # --- blocks -------------------------------------------------------------------------------

    def _blocks(self) -> tuple[ast.NetBlock | None, ast.TrainBlock | None]:
        nets = [b for b in self.program.blocks if isinstance(b, ast.NetBlock)]
        trains = [b for b in self.program.blocks if isinstance(b, ast.TrainBlock)]
        for extra in nets[1:]:
            self._error(extra.loc, f"a second `net` ('{extra.name}'): a file holds exactly one net")
        for extra in trains[1:]:
            self._error(extra.loc, f"a second `train` block (the first is on line {trains[0].loc.line}): "
                        "merge them")
        if not nets:
            where = trains[0].loc if trains else Loc(self.program.path, 1, 1)
            self._error(where, "no `net` block: a file needs one `net NAME { input [...] ... }`")
        return (nets[0] if nets else None), (trains[0] if trains else None)

    def _net(self, net: ast.NetBlock, train: TrainConfig) -> Graph | None:
        statements = net.body
        inputs = [s for s in statements if isinstance(s, ast.Input)]
        if not any(isinstance(s, _BLOCKS) for s in statements):
            self._error(net.loc, f"empty net '{net.name}': give `input [...]` and at least one layer")
            return None
        if not inputs:
            self._error(net.loc, "`input` is missing: the net's first statement must be `input [...]`")
            return None
        input_shape = self._input(inputs[0])
        for extra in inputs[1:]:
            self._error(extra.loc, f"a second `input` (the first is on line {inputs[0].loc.line})")
        if statements[0] is not inputs[0]:
            self._error(inputs[0].loc, "`input` must be the first statement of the net")
        layers = [s for s in statements if not isinstance(s, ast.Input)]  # nested ones are caught later
        too_long = layer_count_problem(layers)  # counted through every block before anything expands
        if too_long is not None:
            self._error(too_long[0].loc, too_long[1])
            return None
        nodes, _, out_shape = self._sequence(tuple(layers), INPUT, input_shape, "")
        self._dataset(train, inputs[0], input_shape, nodes, out_shape)
        if self.problems or input_shape is None:
            return None
        return Graph(net.name, self.program.path, self.program.source, input_shape, tuple(nodes), train,
                     inputs[0].loc)

    def _input(self, statement: ast.Input) -> Shape | None:
        args = statement.args
        if len(args) != 1 or args[0].name is not None or args[0].value.kind != "shape":
            where = args[0].loc if args else statement.loc
            self._error(where, "`input` takes one shape, like `input [1, 28, 28]`")
            return None
        dims = args[0].value.value
        if not dims:
            self._error(args[0].loc, "the input shape is empty: give its dimensions, like [1, 28, 28]")
            return None
        for dim in dims:
            if dim.kind != "int":
                self._error(dim.loc, f"shape dimensions must be integers, got {dim.text()}")
                return None
            if dim.value < 1:
                self._error(dim.loc, f"shape dimensions must be at least 1, got {dim.text()}")
                return None
        too_large = shape_problem([dim.value for dim in dims], "the input shape")
        if too_large:
            self._error(args[0].loc, too_large)
            return None
        return tuple(dim.value for dim in dims)

    # --- statements ---------------------------------------------------------------------------

    def _sequence(self, statements: tuple, source: str | None,
                  shape: Shape | None, prefix: str) -> Step:
        """Expand statements into Nodes named prefix + index, each reading the one before; thread shapes."""
        nodes: list[Node] = []
        for index, statement in enumerate(self._expanded(statements)):
            made, source, shape = self._statement(statement, source, shape, f"{prefix}{index}")
            nodes.extend(made)
        return nodes, source, shape

    def _expanded(self, statements: tuple) -> list:
        """Unroll `repeat` blocks: each copy is the same statement object, checked once per copy."""
        out: list = []
        for statement in statements:
            if not isinstance(statement, ast.Repeat):
                out.append(statement)
                continue
            if not statement.body:
                self._error(statement.loc, "empty `repeat` body: put at least one layer inside")
            body = self._expanded(statement.body)
            count = self._repeat_count(statement)
            if len(out) + count * max(len(body), 1) > MAX_LAYERS:
                self._error(statement.loc, f"this `repeat` makes the net longer than {MAX_LAYERS} layers")
                count = 1
            out.extend(body * count)
        return out

    def _repeat_count(self, statement: ast.Repeat) -> int:
        count = statement.count
        if count.kind != "int":
            self._error(count.loc, f"`repeat` needs a whole number of copies, got {count.text()}")
            return 1
        if count.value < 1:
            self._error(count.loc, f"`repeat` count must be at least 1, got {count.text()}")
            return 1
        return count.value

    def _statement(self, statement: object, source: str | None, shape: Shape | None, name: str) -> Step:
        if isinstance(statement, ast.Input):
            self._error(statement.loc, "`input` must be the first statement of the net, and only there")
            return [], source, shape
        if isinstance(statement, ast.Residual):
            return self._residual(statement, source, shape, name)
        if isinstance(statement, ast.Parallel):
            return self._parallel(statement, source, shape, name)
        assert isinstance(statement, ast.Layer), statement
        node, out = self._layer(statement, source, shape, name)
        return ([node] if node else []), (name if node else None), out

    def _residual(self, statement: ast.Residual, source: str | None, shape: Shape | None, name: str) -> Step:
        """x + body(x): the body's nodes, then an `add` node reading x and the body's output."""
        if not any(not isinstance(s, ast.Input) for s in statement.body):
            self._error(statement.loc, "empty `residual` body: put at least one layer inside")
        body, body_out, out = self._sequence(statement.body, source, shape, name + ".")
        if source is None or shape is None or body_out is None or out is None or not self.shape_known:
            return [], None, None
        if out != shape:
            self._error(statement.loc, f"the `residual` body changes the shape from {fmt_shape(shape)} to "
                        f"{fmt_shape(out)}; x + body(x) needs them equal", shape=True)
            return [], None, None
        add = Node(name, "add", {"block": "residual"}, (source, body_out), (shape, shape), shape, (),
                   numel(shape), statement.loc)
        return [*body, add], name, shape

    def _parallel(self, statement: ast.Parallel, source: str | None, shape: Shape | None, name: str) -> Step:
        """Every branch reads the input; an `add` or `concat` node named `name` merges their outputs."""
        merge = statement.merge
        if merge not in MERGES:
            hint = did_you_mean(merge, MERGES) or " (use add or concat)"
            self._error(statement.merge_loc, f"unknown merge '{merge}' for `parallel`{hint}")
        if not statement.branches:
            self._error(statement.loc, "`parallel` without branches: give it `branch { ... }` blocks")
        nodes: list[Node] = []
        outputs: list[tuple[str | None, Shape | None]] = []
        for index, branch in enumerate(statement.branches):
            body, out_name, out = self._sequence(branch.body, source, shape, f"{name}.{index}.")
            nodes.extend(body)
            outputs.append((out_name, out) if branch.body else (source, shape))
        known = [out for _, out in outputs if out is not None]
        if merge not in MERGES or not outputs or len(known) < len(outputs) or not self.shape_known:
            return [], None, None
        try:
            merged = merge_shape(merge, known)
        except ShapeError as error:
            self._error(statement.loc, str(error), shape=True)
            return [], None, None
        inputs = tuple(out_name for out_name, _ in outputs if out_name is not None)
        node = Node(name, merge, {"block": "parallel"}, inputs, tuple(known), merged, (),
                    merge_flops(merge, known, merged), statement.loc)
        return [*nodes, node], name, merged

    def _layer(self, layer: ast.Layer, source: str | None, shape: Shape | None,
               name: str) -> tuple[Node | None, Shape | None]:
        op = OPS.get(layer.name)
        if op is None:
            self._error(layer.loc, _unknown_layer(layer.name))
            return None, None
        attrs, errors = bind(layer.name, layer.args, op.args, layer.loc)
        for error in errors:
            self._error(error.loc, _recurrent_only(layer, error.message))
        if errors:
            return None, None
        message = op.resolve(attrs)
        if message:
            self._error(layer.loc, message)
            return None, None
        if source is None or shape is None or not self.shape_known:
            return None, None
        try:
            out = op.shape(attrs, shape)
        except ShapeError as error:
            message = str(error)
            if fmt_shape(shape) not in message:  # every shape error names the shape it got
                message += f" (input {fmt_shape(shape)})"
            self._error(layer.loc, message, shape=True)
            return None, None
        state = op.state(attrs, shape)
        too_large = node_problem(out, {item.name: item.shape for item in state})  # no tensor that size exists
        if too_large:
            self._error(layer.loc, too_large, shape=True)
            return None, None
        node = Node(name, layer.name, attrs, (source,), (shape,), out, state, op.flops(attrs, shape, out),
                    layer.loc)
        return node, out

    # --- the dataset -------------------------------------------------------------------------

    def _dataset(self, train: TrainConfig, statement: ast.Input, input_shape: Shape | None,
                 nodes: list[Node], out_shape: Shape | None) -> None:
        """The input must hold one sample; the last layer must output [classes] (cross_entropy)."""
        data = train.data
        if data.path is not None or data.name not in DATASET_SHAPES:
            return  # a directory of IDX files: the runtime checks its samples
        sample, classes = DATASET_SHAPES[data.name]
        if input_shape is not None and numel(input_shape) != sample:
            message = (f"`input {fmt_shape(input_shape)}` holds {numel(input_shape)} values, but {data.name} "
                       f"samples hold {sample}: use [1, 28, 28], [28, 28] or [784]")
            self._error(statement.loc, message, shape=True)
        elif self.shape_known and nodes and out_shape is not None and out_shape != (classes,):
            hint = f"end with `linear {classes}`"
            if len(out_shape) == 2:
                hint = "use output=last on the recurrent layer, or flatten before the last `linear`"
            self._error(nodes[-1].loc, f"the last layer outputs {fmt_shape(out_shape)}, but {data.name} has "
                        f"{classes} classes: the net must output [{classes}] ({hint})", shape=True)


_RECURRENT_ONLY = {
    "bidirectional": "only rnn, lstm and gru run in both directions",
    "dropout": "dropout= is for stacked recurrent layers; elsewhere add a `dropout p` layer",
}


def _recurrent_only(layer: ast.Layer, message: str) -> str:
    """An unknown-argument message for `bidirectional=`/`dropout=` outside rnn/lstm/gru, with the reason."""
    for name, reason in _RECURRENT_ONLY.items():
        if message.startswith(f"unknown argument '{name}'"):
            return f"`{layer.name}` takes no '{name}' argument: {reason}"
    return message


def _unknown_layer(name: str) -> str:
    hint = did_you_mean(name, tuple(OPS))
    if not hint and name in SETTINGS:
        hint = " (train settings go in the `train` block)"
    return f"unknown layer '{name}'{hint}"
