"""`netc eval FILE --checkpoint DIR` -> the checkpoint's test loss and accuracy on stdout; exit 0 or 1."""

from __future__ import annotations

import argparse

from netc.dsl.check import parse_path
from netc.runtime.data import prepare
from netc.runtime.train import evaluate
from netc.runtime.train_cmd import load_trained


def run(args: argparse.Namespace) -> int:
    graph = parse_path(args.file)
    net, checkpoint, _stats = load_trained(graph, args.checkpoint, args.device, args.backend, "evaluate")
    seed = int(checkpoint.meta.get("seed", graph.train.seed))
    # the same split and normalization as training: val and normalize depend on the training part
    limit = checkpoint.meta.get("limit")
    splits = prepare(graph.train.data, tuple(graph.input_shape), graph.output_shape[-1], seed, net.device,
                     limit)
    test_loss, test_acc = evaluate(net, splits.test_x, splits.test_y)
    print(f"{graph.name}: test loss {test_loss:.4f}  test accuracy {100 * test_acc:.2f}%  "
          f"({splits.test_x.shape[0]:,} samples, epoch {checkpoint.meta.get('epoch', '?')}, "
          f"{net.device.type}, {net.backend} backend)")
    return 0
