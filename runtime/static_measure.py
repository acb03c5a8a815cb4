"""A `netc bench --static --json` estimate + a CUDA GPU -> estimated vs measured time of each launch.

Run on a machine with a GPU (bench/gpu_check.sh does):

    netc bench examples/lenet.net --static --batch 100 --json > static.json
    python -m netc.runtime.static_measure examples/lenet.net --estimate static.json --batch 100

It trains a few eager steps of the net (Triton backend, netc's optimizer,
runtime.fastpath's step, no graph: so each launch is its own kernel), times
every GPU kernel of `--steps` more with the PyTorch profiler (CUDA activity),
and matches them, in launch order and by kernel name, to the estimate's
rows: one line per launch with both times and their ratio, then the step's
measured GPU time (the sum of its kernels, copies and memsets) next to the
estimate. The model in runtime/static_bench.py is calibrated from this.
"""

from __future__ import annotations

import argparse
import json
import statistics
from typing import Any


def align(rows: list[dict[str, Any]], measured: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """Estimate rows + the step's GPU activities in order ((name, us)) -> rows with `measured_us`.

    Each row takes the next activity whose name contains its kernel's name;
    activities in between (PyTorch's copies, fills) are skipped; a row with
    no match left gets None.
    """
    out, position = [], 0
    for row in rows:
        found = None
        for index in range(position, len(measured)):
            if row["kernel"] in measured[index][0]:
                found, position = measured[index][1], index + 1
                break
        ratio = found / row["est_us"] if found is not None and row.get("est_us") else None
        out.append({**row, "measured_us": found, "measured_over_estimate": ratio})
    return out


def profile_step(path: str, batch: int | None, steps: int) -> list[tuple[str, float]]:
    """(name, mean us) of every GPU activity of one eager training step on CUDA, in launch order."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from netc.dsl.check import parse_path
    from netc.runtime.fastpath import make_train_step
    from netc.runtime.lower import compile as compile_net
    from netc.runtime.train import make_optimizer

    graph = parse_path(path)
    net = compile_net(graph, device="cuda", backend="triton", seed=graph.train.seed).train()
    optimizer = make_optimizer(net.parameters(), graph.train.optimizer, "triton")
    size = batch or graph.train.batch
    x = torch.rand(size, *graph.input_shape, device="cuda")
    y = torch.randint(0, graph.output_shape[-1], (size,), device="cuda")

    def loss_fn(out: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return net.loss(out, labels, graph.train.label_smoothing)

    step = make_train_step(net, optimizer, loss_fn, (x, y), capture=False, clip=graph.train.clip)
    for _ in range(3):  # compiles, optimizer state
        step(x, y)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as profiler:
        for _ in range(steps):
            step(x, y)
        torch.cuda.synchronize()
    events = sorted((e for e in profiler.events() if e.device_type == DeviceType.CUDA
                     and not getattr(e, "is_user_annotation", False)), key=lambda e: e.time_range.start)
    per_step = len(events) // steps
    times = [[events[s * per_step + i].time_range.elapsed_us() for s in range(steps)]
             for i in range(per_step)]
    return [(events[i].name, statistics.median(times[i])) for i in range(per_step)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netc.runtime.static_measure", description=__doc__)
    parser.add_argument("file")
    parser.add_argument("--estimate", required=True, help="the JSON of `netc bench FILE --static --json`")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--json", metavar="PATH", help="also write the matched rows as JSON here")
    args = parser.parse_args(argv)
    with open(args.estimate) as handle:
        estimate = json.load(handle)
    measured = profile_step(args.file, args.batch or estimate.get("batch"), args.steps)
    rows = align(estimate["rows"], measured)
    print(f"{'layer':<10}{'phase':<10}{'kernel':<32}{'est us':>9}{'measured us':>13}{'meas/est':>10}")
    for row in rows:
        meas = f"{row['measured_us']:.2f}" if row["measured_us"] is not None else "-"
        ratio = f"{row['measured_over_estimate']:.2f}" if row["measured_over_estimate"] else "-"
        est = f"{row['est_us']:.2f}" if row.get("est_us") is not None else "-"
        print(f"{row['layer']:<10}{row['phase']:<10}{row['kernel']:<32}{est:>9}{meas:>13}{ratio:>10}")
    total = sum(us for _, us in measured)
    print(f"step: {len(measured)} GPU activities measured, {total:.1f} us of GPU time (back to back); "
          f"estimate: {estimate['totals']['gpu_ops']} operations, {estimate['totals']['est_us_step']:.1f} us")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"rows": rows, "measured": measured, "measured_us_step": total}, handle, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
