"""`netc train FILE [flags]` -> a trained network, checkpoints and metrics in --out; exit 0, 1 or 130."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

import torch

from netc.dsl.check import parse_path
from netc.dsl.errors import DataError
from netc.dsl.ir import Graph, TrainConfig
from netc.runtime import checkpoint as ckpt
from netc.runtime import distributed
from netc.runtime import metrics
from netc.runtime.checkpoint_schema import check_tensors
from netc.runtime.data import Splits, prepare
from netc.runtime.memory import check_fits
from netc.runtime.progress import Progress
from netc.runtime.train import Trainer, make_optimizer


def apply_overrides(config: TrainConfig, args: argparse.Namespace) -> TrainConfig:
    """Command-line flags win over the file's train block."""
    changes: dict[str, Any] = {}
    for name in ("epochs", "batch", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            changes[name] = value
    if getattr(args, "lr", None) is not None:
        changes["optimizer"] = dataclasses.replace(config.optimizer, lr=args.lr)
    return dataclasses.replace(config, **changes)


def load_network(graph: Graph, device: str, backend: str, seed: int,
                 world: distributed.World | None = None, quiet: bool = False) -> Any:
    """Compile `graph` for the requested target (this rank's GPU when data-parallel); print the
    fallback note when auto chose torch."""
    from netc.runtime.lower import compile as compile_net, resolve_target

    target, backend_name, note = resolve_target(device, backend)
    if note and not quiet:
        print(note, file=sys.stderr)
    if world is not None:
        target = distributed.init(world, target)
    return compile_net(graph, device=target, backend=backend_name, seed=seed)


def run_meta(graph: Graph, config: TrainConfig, net: Any, limit: int | None,
             splits: Splits | None = None) -> dict[str, Any]:
    """The fixed part of every checkpoint's meta.json for this run."""
    return {
        "name": graph.name, "net_path": graph.path, "source": graph.source,
        "source_sha256": ckpt.source_hash(graph.source),
        "program_sha256": ckpt.program_hash(graph), "seed": config.seed,
        "backend": net.backend, "device": str(net.device), "limit": limit,
        "train": json_safe(dataclasses.asdict(config)),
        # the training split's statistics, so predict and export need no dataset to normalize
        "normalization": [splits.mean, splits.std] if splits is not None else [0.0, 1.0],
    }


def load_trained(graph: Graph, directory: str, device: str, backend: str,
                 verb: str) -> tuple[Any, ckpt.Checkpoint, tuple[float, float]]:
    """(network with the checkpoint's weights, the checkpoint, (mean, std) of its input normalization).

    `verb` ("evaluate", "export", ...) words the advice when the checkpoint is another net's.
    """
    checkpoint = ckpt.load(directory)
    trained_from = checkpoint.meta.get("net_path", "its meta.json holds the source")
    ckpt.check_source(checkpoint, graph, graph.path,
                      advice=f"{verb} it with the .net file it was trained from ({trained_from})")
    net = load_network(graph, device, backend, int(checkpoint.meta.get("seed", graph.train.seed)))
    check_tensors(checkpoint.model, net.state_dict(), f"{directory}/{ckpt.MODEL_FILE}", "weights")  # no casts
    try:
        net.load_state_dict(checkpoint.model)
    except (RuntimeError, KeyError) as error:
        raise DataError(f"the checkpoint in {directory} does not fit {graph.path}: {error}") from None
    return net, checkpoint, _normalization(graph, checkpoint, net)


def _normalization(graph: Graph, checkpoint: ckpt.Checkpoint, net: Any) -> tuple[float, float]:
    """The stored statistics; a checkpoint from before they were stored recomputes them from the data."""
    if not graph.train.data.normalize:
        return 0.0, 1.0
    stored = checkpoint.meta.get("normalization")
    if isinstance(stored, list) and len(stored) == 2 and all(isinstance(v, (int, float)) for v in stored):
        return float(stored[0]), float(stored[1]) or 1.0
    classes = graph.output_shape[-1]
    splits = prepare(graph.train.data, tuple(graph.input_shape), classes,
                     int(checkpoint.meta.get("seed", graph.train.seed)), "cpu", checkpoint.meta.get("limit"))
    return splits.mean, splits.std


def json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items() if key != "locs"}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def describe(graph: Graph, config: TrainConfig, splits: Splits, net: Any, out: str) -> str:
    data = config.data.path or config.data.name
    return (f"training {graph.name} ({graph.param_count:,} parameters) on {data}: "
            f"{splits.train_x.shape[0]:,} train / {splits.val_x.shape[0]:,} val / "
            f"{splits.test_x.shape[0]:,} test samples; {config.epochs} epoch{'s' * (config.epochs != 1)} "
            f"of batch {config.batch}; "
            f"{net.device.type}, {net.backend} backend; checkpoints in {out}")


def _resume_checkpoint(args: argparse.Namespace, graph: Graph) -> ckpt.Checkpoint | None:
    if not args.resume:
        return None
    checkpoint = ckpt.load(args.resume)
    ckpt.check_source(checkpoint, graph, graph.path)
    if args.seed is not None and args.seed != checkpoint.meta["seed"]:
        raise DataError(f"the checkpoint in {args.resume} was trained with seed {checkpoint.meta['seed']}, "
                        f"not {args.seed}; drop --seed to resume it")
    return checkpoint


# flags forwarded to every worker of `--nproc N` (the same run, minus --nproc)
_FORWARDED = ("epochs", "batch", "lr", "seed", "device", "backend", "out", "resume", "limit", "tensorboard")


def worker_args(args: argparse.Namespace) -> list[str]:
    """`netc train` arguments that repeat this command in each worker."""
    forwarded = [args.file]
    for name in _FORWARDED:
        value = getattr(args, name, None)
        if value is not None:
            forwarded += [f"--{name}", str(value)]
    return forwarded + (["--debug"] if getattr(args, "debug", False) else [])


def run(args: argparse.Namespace) -> int:
    world = distributed.current()
    nproc = getattr(args, "nproc", None) or 1
    if world is None and nproc > 1:
        graph = parse_path(args.file)  # a broken file or batch is reported once, before any worker starts
        _resume_checkpoint(args, graph)
        distributed.check_batch(apply_overrides(graph.train, args).batch, nproc)
        ckpt.check_out(args.out or args.resume or os.path.join("runs", graph.name), graph)
        return distributed.launch(nproc, worker_args(args))
    if world is not None and nproc not in (1, world.size):
        raise DataError(f"--nproc {nproc} under a launcher that started {world.size} workers; drop --nproc")
    try:
        return train(args, world)
    finally:
        if world is not None:
            distributed.shutdown()


def train(args: argparse.Namespace, world: distributed.World | None) -> int:
    """One process's run: the whole run, or one rank's part of a data-parallel run (rank 0 reports)."""
    main = world is None or world.main
    say = print if main else _silent
    graph = parse_path(args.file)
    checkpoint = _resume_checkpoint(args, graph)
    config = apply_overrides(graph.train, args)
    if checkpoint is not None:
        config = dataclasses.replace(config, seed=checkpoint.meta["seed"])
    if world is not None:
        distributed.check_batch(config.batch, world.size)
    out = args.out or args.resume or os.path.join("runs", graph.name)
    if main:
        ckpt.check_out(out, graph)  # before any training: a bad --out would fail at epoch 1's end
    check_fits(graph, config.batch, args.device, config.optimizer.name, config.optimizer.momentum)
    board = metrics.TensorBoard(args.tensorboard) if main and getattr(args, "tensorboard", None) else None
    net = load_network(graph, args.device, args.backend, config.seed, world, quiet=not main)
    classes = graph.output_shape[-1] if len(graph.output_shape) == 1 else -1
    if classes < 2:
        raise DataError(f"{graph.path}: the net's last layer outputs {list(graph.output_shape)}; "
                        "cross_entropy needs [classes]")
    splits = prepare(config.data, tuple(graph.input_shape), classes, config.seed, net.device, args.limit)
    optimizer = make_optimizer(net.parameters(), config.optimizer, net.backend)
    progress = Progress() if main else Progress(open(os.devnull, "w"), interactive=False)  # noqa: SIM115
    trainer = Trainer(net, optimizer, splits, config, out if main else None,
                      run_meta(graph, config, net, args.limit, splits), progress=progress, world=world)
    trainer.tensorboard = board
    torch.manual_seed(config.seed)  # dropout's draws; a resumed run restores the saved state instead
    if checkpoint is not None:
        trainer.restore(checkpoint)
        say(f"resuming from {args.resume} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}",
            file=sys.stderr)
    processes = f" on {world.size} processes" if world is not None else ""
    say(describe(graph, config, splits, net, out) + processes, file=sys.stderr)
    try:
        final = trainer.fit()
    finally:
        if trainer.tensorboard is not None:
            trainer.tensorboard.close()
    if final is None:
        say(f"interrupted: checkpoint saved in {out}; continue with --resume {out}", file=sys.stderr)
        return 130
    say(f"test loss {final['test_loss']:.4f}  test accuracy {100 * final['test_acc']:.2f}%")
    return 0


def _silent(*_args: Any, **_kwargs: Any) -> None:
    """print() for ranks other than 0: they train, rank 0 reports."""
