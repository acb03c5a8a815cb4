"""`netc eval FILE --checkpoint DIR` -> the checkpoint's test loss and accuracy on stdout; exit 0 or 1."""

from __future__ import annotations

import argparse

from netc.dsl.check import parse_path
from netc.dsl.errors import DataError
from netc.runtime import checkpoint as ckpt
from netc.runtime.checkpoint_schema import check_tensors
from netc.runtime.data import prepare
from netc.runtime.train import evaluate
from netc.runtime.train_cmd import load_network


def run(args: argparse.Namespace) -> int:
    graph = parse_path(args.file)
    checkpoint = ckpt.load(args.checkpoint)
    trained_from = checkpoint.meta.get("net_path", "its meta.json holds the source")
    ckpt.check_source(checkpoint, graph, graph.path,
                      advice=f"evaluate it with the .net file it was trained from ({trained_from})")
    seed = int(checkpoint.meta.get("seed", graph.train.seed))
    net = load_network(graph, args.device, args.backend, seed)
    check_tensors(checkpoint.model, net.state_dict(), f"{args.checkpoint}/{ckpt.MODEL_FILE}", "weights")
    try:
        net.load_state_dict(checkpoint.model)
    except (RuntimeError, KeyError) as error:
        raise DataError(f"the checkpoint in {args.checkpoint} does not fit {graph.path}: {error}") from None
    classes = graph.output_shape[-1]
    # the same split and normalization as training: val and normalize depend on the training part
    limit = checkpoint.meta.get("limit")
    splits = prepare(graph.train.data, tuple(graph.input_shape), classes, seed, net.device, limit)
    test_loss, test_acc = evaluate(net, splits.test_x, splits.test_y)
    print(f"{graph.name}: test loss {test_loss:.4f}  test accuracy {100 * test_acc:.2f}%  "
          f"({splits.test_x.shape[0]:,} samples, epoch {checkpoint.meta.get('epoch', '?')}, "
          f"{net.device.type}, {net.backend} backend)")
    return 0
