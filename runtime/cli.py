"""Command line -> one of the `netc` commands (spec/CLI.md); user mistakes exit 1 without a traceback."""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
from collections.abc import Callable

def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:  # also refuses nan and inf
        raise argparse.ArgumentTypeError(f"must be a positive finite number, got {text}")
    return value


def _seed(text: str) -> int:
    from netc.dsl.train import MAX_SEED  # the file's `seed` has the same range

    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_SEED}, got {value}")
    return value


def _name_list(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected a comma-separated list of names")
    return names


def _add_device(parser: argparse.ArgumentParser, backend: bool = True) -> None:
    parser.add_argument(
        "--device", choices=["auto", "cuda", "cpu"], default="auto",
        help="where to run: cuda when PyTorch sees a GPU (auto), else cpu",
    )
    if backend:
        parser.add_argument(
            "--backend", choices=["auto", "triton", "torch"], default="auto",
            help="triton: our kernels (interpreted on cpu); torch: PyTorch's operators; "
            "auto: triton on cuda, torch on cpu",
        )


def _compile_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    sub.add_argument(
        "--emit", choices=["ast", "ir", "plan", "triton"],
        help="show one stage instead: syntax tree, IR, kernel plan, or Triton source",
    )
    sub.add_argument("--json", action="store_true", help="print the table as JSON")


def _train_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    sub.add_argument("--epochs", type=_positive_int, help="override the file's epochs")
    sub.add_argument("--batch", type=_positive_int, help="override the file's batch size")
    sub.add_argument("--lr", type=_positive_float, help="override the optimizer's learning rate")
    sub.add_argument("--seed", type=_seed, help="override the file's seed")
    _add_device(sub)
    sub.add_argument("--out", metavar="DIR", help="checkpoint and metrics directory (runs/NAME)")
    sub.add_argument("--resume", metavar="DIR", help="continue from the checkpoint in DIR")
    sub.add_argument("--limit", type=_positive_int, metavar="N", help="use only the first N training samples")
    sub.add_argument("--nproc", type=_positive_int, metavar="N",
                     help="train data-parallel on N processes (torch.distributed; the batch is split)")
    sub.add_argument("--tensorboard", metavar="DIR",
                     help="also log loss, accuracy, learning rate and step rate for TensorBoard in DIR")


def _eval_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    sub.add_argument("--checkpoint", metavar="DIR", required=True, help="checkpoint directory")
    _add_device(sub)


def _check_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    _add_device(sub, backend=False)
    sub.add_argument("--batch", type=_positive_int, default=4, help="batch size (4)")
    sub.add_argument("--tol", type=_positive_float, default=None,
                     help="largest relative error allowed (default: by precision)")


def _bench_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    _add_device(sub, backend=False)
    sub.add_argument("--steps", type=_positive_int, default=None, help="timed steps per contender")
    sub.add_argument("--batch", type=_positive_int, default=None,
                     help="batch size (the file's; 4 on the cpu, where Triton is interpreted)")
    sub.add_argument("--compile", action="store_true",
                     help="also race torch.compile on the cpu (always on cuda; compiling takes minutes)")
    sub.add_argument("--contenders", type=_name_list, default=None, metavar="A,B",
                     help="run only these contenders (netc, netc-nograph, torch-eager, torch-graph, "
                     "torch-compile, torch-compile-ro)")
    sub.add_argument("--json", action="store_true", help="print the results as JSON")
    sub.add_argument("--static", action="store_true",
                     help="no GPU needed: compile one training step's kernels for --target and print an "
                     "estimate per launch (registers, spills, tensor cores, time) and totals")
    sub.add_argument("--target", default="sm_90", help="GPU architecture for --static (sm_90: H100/H200)")


def _export_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    sub.add_argument("--checkpoint", metavar="DIR", required=True, help="checkpoint directory")
    sub.add_argument("-o", "--output", metavar="PATH", help="the ONNX file to write (NAME.onnx)")


def _predict_options(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("file", metavar="FILE", help="a .net file")
    sub.add_argument("--checkpoint", metavar="DIR", required=True, help="checkpoint directory")
    sub.add_argument("images", metavar="IMAGE", nargs="+", help="image files")
    sub.add_argument("--top", type=_positive_int, default=3, metavar="K", help="classes to show (3)")
    sub.add_argument("--json", action="store_true", help="one JSON object per line and image")
    _add_device(sub)


# command -> (the module whose `run(args) -> int` carries it out, its summary in `netc --help`,
# its description in `netc COMMAND --help`, the function that adds its options)
_COMMANDS: dict[str, tuple[str, str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "compile": ("netc.runtime.compile_cmd", "parse, check and lower FILE; print one row per layer",
                "Parse, check and lower FILE; print one row per layer and totals.", _compile_options),
    "train": ("netc.runtime.train_cmd", "train FILE on its dataset",
              "Train FILE on its dataset; checkpoint after every epoch.", _train_options),
    "eval": ("netc.runtime.eval_cmd", "test loss and accuracy of a checkpoint",
             "Test loss and accuracy of a checkpoint of FILE.", _eval_options),
    "check": ("netc.runtime.check", "compare every layer's Triton kernels with PyTorch",
              "Run every layer of FILE forward and backward with the Triton kernels and with PyTorch on "
              "the same random inputs; exit 1 if any error exceeds the tolerance.", _check_options),
    "bench": ("netc.runtime.bench", "time training steps: Triton vs PyTorch eager vs torch.compile",
              "Time training steps of FILE with the Triton kernels, PyTorch eager and torch.compile, "
              "side by side; print steps/s and ratios.", _bench_options),
    "export": ("netc.runtime.export_cmd",
               "write a trained network as an ONNX model and check it with ONNX Runtime",
               "Export the network of FILE with the weights of a checkpoint as ONNX (dynamic batch), run "
               "it with ONNX Runtime on test images and compare with netc; exit 1 if they differ.",
               _export_options),
    "predict": ("netc.runtime.predict_cmd", "classify image files with a trained network",
                "Classify PNG or JPEG files of any size (converted to the dataset's grayscale 28x28, "
                "white on black) and print the top classes with their probabilities.", _predict_options),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The `netc` parser: every command listed, with the options of `command` only (all when None).

    Adding the options of all seven commands costs ~5 ms of every start, more than checking a
    file takes (issue 14's budget for `netc compile`): `main` adds only those of the command it runs.
    """
    parser = argparse.ArgumentParser(
        prog="netc",
        description="Compile .net network descriptions to Triton kernels, train and check them.",
    )
    parser.add_argument("--debug", action="store_true", help="show Python tracebacks")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (_, summary, description, add_options) in _COMMANDS.items():
        sub = commands.add_parser(name, help=summary, description=description)
        if command is None or command == name:
            add_options(sub)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The command argv names (its first word that is not an option), if it is one of netc's."""
    for word in argv:
        if not word.startswith("-"):
            return word if word in _COMMANDS else None
    return None


def main(argv: list[str] | None = None) -> int:
    words = sys.argv[1:] if argv is None else argv
    args = build_parser(_command_word(words)).parse_args(words)
    if getattr(args, "device", None) == "cpu" and getattr(args, "backend", "triton") != "torch":
        # Triton binds kernels to its interpreter at import: decide before any kernel loads.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    from netc.dsl.errors import NetError

    try:
        module = importlib.import_module(_COMMANDS[args.command][0])
        status = int(module.run(args) or 0)
        sys.stdout.flush()  # a full disk shows here, where it can be reported, not at exit
        return status
    except NetError as error:
        _traceback_if(args.debug)
        print(str(error), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as error:  # writing the output or a file failed (`> /dev/full`, a full disk)
        _traceback_if(args.debug)
        return _write_failed(error)


def _traceback_if(debug: bool) -> None:
    """`--debug`: the Python traceback of the error being handled (imported only then)."""
    if debug:
        import traceback

        traceback.print_exc()


def _write_failed(error: OSError) -> int:
    """Report a failed write as one line and exit 1; stdout goes to /dev/null so exit does not retry."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    where = f"cannot write {error.filename}" if error.filename else "cannot write the output"
    try:
        print(f"error: {where}: {error.strerror or error}", file=sys.stderr)
    except OSError:
        pass  # stderr is full too: the exit status still says it
    return 1


if __name__ == "__main__":
    sys.exit(main())
