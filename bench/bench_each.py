"""A .net file -> `netc bench --json`'s report in OUT.json, rewritten as each contender finishes.

`netc bench` prints its JSON once, after the last contender: a run killed
at a time limit (the GPU check's steps each have one) leaves nothing. This
runs the same `netc.runtime.bench.bench` one contender at a time in one
process and rewrites OUT.json (atomically) after each, so the finished
contenders' numbers survive a kill. The file has the shape of
`netc bench --json` (bench/summarize.py reads either).

    python3 bench/bench_each.py FILE OUT.json [--device cuda] [--steps N] [--batch N]
        [--contenders netc,torch-eager] [--compile]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="a .net file")
    parser.add_argument("out", help="the JSON report to (re)write")
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--contenders", default=None, help="comma-separated; default: all that apply")
    parser.add_argument("--compile", action="store_true", help="the torch.compile contenders on the CPU too")
    return parser.parse_args(argv)


def write_atomically(path: str, data: dict[str, Any]) -> None:
    """JSON into `path` through a temporary file and a rename: a reader never sees half a report."""
    staging = f"{path}.partial"
    with open(staging, "w") as handle:
        json.dump(data, handle, indent=2)
    os.replace(staging, path)


def merge(merged: Any, report: Any, name: str) -> Any:
    """Fold a one-contender report into the running one (the first report starts it)."""
    from netc.runtime.bench import ratios

    own_skip = {name: report.skipped[name]} if name in report.skipped else {}
    if merged is None:
        report.skipped = own_skip
        merged = report
    else:
        merged.results += report.results
        merged.failed.update(report.failed)
        merged.skipped.update(own_skip)
    merged.ratios = ratios(merged.results)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    from netc.kernels.config import ensure_backend

    ensure_backend(device.type)  # the interpreter on the CPU, chosen before triton loads
    from netc.dsl.check import parse_path
    from netc.runtime.bench import CONTENDERS, bench

    graph = parse_path(args.file)
    known = [contender.name for contender in CONTENDERS]
    wanted = args.contenders.split(",") if args.contenders else known
    unknown = [name for name in wanted if name not in known]
    if unknown:
        print(f"error: unknown contender {unknown[0]!r}: choose from {', '.join(known)}", file=sys.stderr)
        return 2
    merged = None
    for name in wanted:
        report = bench(graph, device, args.steps, args.compile, args.batch, [name],
                       progress=lambda line: print(f"bench: {line}", file=sys.stderr, flush=True))
        merged = merge(merged, report, name)
        write_atomically(args.out, merged.as_json())
    failed = merged.failed if merged is not None else {}
    for name, error in failed.items():
        print(f"error: contender {name} failed: {error}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
