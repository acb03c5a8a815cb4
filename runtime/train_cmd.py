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


def load_network(graph: Graph, device: str, backend: str, seed: int) -> Any:
    """Compile `graph` for the requested target; print the fallback note when auto chose torch."""
    from netc.runtime.lower import compile as compile_net, resolve_target

    target, backend_name, note = resolve_target(device, backend)
    if note:
        print(note, file=sys.stderr)
    return compile_net(graph, device=target, backend=backend_name, seed=seed)


def run_meta(graph: Graph, config: TrainConfig, net: Any, limit: int | None) -> dict[str, Any]:
    """The fixed part of every checkpoint's meta.json for this run."""
    return {
        "name": graph.name, "net_path": graph.path, "source": graph.source,
        "source_sha256": ckpt.source_hash(graph.source),
        "program_sha256": ckpt.program_hash(graph), "seed": config.seed,
        "backend": net.backend, "device": str(net.device), "limit": limit,
        "train": json_safe(dataclasses.asdict(config)),
    }


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


def run(args: argparse.Namespace) -> int:
    graph = parse_path(args.file)
    checkpoint = _resume_checkpoint(args, graph)
    config = apply_overrides(graph.train, args)
    if checkpoint is not None:
        config = dataclasses.replace(config, seed=checkpoint.meta["seed"])
    out = args.out or args.resume or os.path.join("runs", graph.name)
    ckpt.check_out(out, graph)  # before any training: a bad --out would fail at epoch 1's end
    check_fits(graph, config.batch, args.device, config.optimizer.name, config.optimizer.momentum)
    net = load_network(graph, args.device, args.backend, config.seed)
    classes = graph.output_shape[-1] if len(graph.output_shape) == 1 else -1
    if classes < 2:
        raise DataError(f"{graph.path}: the net's last layer outputs {list(graph.output_shape)}; "
                        "cross_entropy needs [classes]")
    splits = prepare(config.data, tuple(graph.input_shape), classes, config.seed, net.device, args.limit)
    optimizer = make_optimizer(net.parameters(), config.optimizer, net.backend)
    trainer = Trainer(net, optimizer, splits, config, out, run_meta(graph, config, net, args.limit),
                      progress=Progress())
    torch.manual_seed(config.seed)  # dropout's draws; a resumed run restores the saved state instead
    if checkpoint is not None:
        trainer.restore(checkpoint)
        print(f"resuming from {args.resume} at epoch {trainer.state.epoch + 1}, step {trainer.state.step}",
              file=sys.stderr)
    print(describe(graph, config, splits, net, out), file=sys.stderr)
    final = trainer.fit()
    if final is None:
        print(f"interrupted: checkpoint saved in {out}; continue with --resume {out}", file=sys.stderr)
        return 130
    print(f"test loss {final['test_loss']:.4f}  test accuracy {100 * final['test_acc']:.2f}%")
    return 0
