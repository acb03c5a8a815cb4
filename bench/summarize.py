"""Bench JSON (`netc bench --json`, rnn_vs_cudnn.py) -> Markdown tables and PERFORMANCE.md goal checks.

    python3 bench/summarize.py bench_lenet.json bench_rnn.json rnn_cudnn.json

Each file is recognised by its content (a bench report has "results", the
RNN comparison has "speedup"); missing or unreadable files are named and
skipped, so a partial GPU run still summarises. The goals are those of
docs/PERFORMANCE.md (H200, seed LeNet, batch 100, data on the device).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

EAGER_GOAL, COMPILE_GOAL, EPOCH_GOAL_MS, RNN_GOAL = 10.0, 3.0, 20.0, 3.0


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000.0:.2f}"


def bench_table(report: dict[str, Any]) -> list[str]:
    """One Markdown row per contender of a `netc bench --json` report."""
    lines = [
        f"`netc bench {report['file']}` on {report['device_name']}, batch {report['batch']}, "
        f"{report['steps']} steps after {report['warmup']} warm-up ({report['timer']}); commit "
        f"{report['versions'].get('commit', '?')}, torch {report['versions']['torch']}, triton "
        f"{report['versions']['triton']}; epoch data: {report['epoch_data']}",
        "",
        "| contender | mode | optimizer | ms/step | host ms | steps/s | netc is | epoch ms "
        "| epoch as one graph ms | GPU ops/step | Triton launches/step |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for result in report["results"]:
        ratio = report["ratios"].get(f"netc/{result['name']}", 1.0 if result["name"] == "netc" else None)
        launches = result.get("triton_launches")
        lines.append(
            f"| {result['name']} | {result['mode']} | {result['optimizer']} | {result['median_ms']:.4g} "
            f"| {result['host_ms']:.4g} | {result['steps_per_s']:.4g} | "
            f"{'-' if ratio is None else f'{ratio:.3g}x'} | {_ms(result['epoch_s'])} "
            f"({result['epoch_how']}) | {_ms(result.get('epoch_graph_s'))} | "
            f"{result.get('device_ops') if result.get('device_ops') is not None else '-'} | "
            f"{sum(launches.values()) if launches else '-'} |")
    lines += [f"- note {result['name']} ({result['mode']}): {result['note']}"
              for result in report["results"] if result.get("note")]
    lines += [f"- skipped {name}: {why}" for name, why in report["skipped"].items()]
    lines += [f"- FAILED {name}: {error}" for name, error in report["failed"].items()]
    return lines


def goal_checks(report: dict[str, Any]) -> list[str]:
    """PASS/MISS lines for the LeNet goals that this report can answer (the goals are for CUDA)."""
    if report["device"] != "cuda":
        return [f"goals not checked: they are for the GPU, this run is on the {report['device']}"]
    checks = []
    for other, goal in (("torch-eager", EAGER_GOAL), ("torch-compile", COMPILE_GOAL),
                        ("torch-compile-ro", COMPILE_GOAL)):
        ratio = report["ratios"].get(f"netc/{other}")
        if ratio is not None:
            verdict = "PASS" if ratio >= goal else "MISS"
            checks.append(f"{verdict}: netc/{other} = {ratio:.3g}x (goal >= {goal:g}x)")
    netc = next((r for r in report["results"] if r["name"] == "netc"), None)
    if netc is not None and netc["epoch_how"] == "measured":
        best = min(s for s in (netc["epoch_s"], netc.get("epoch_graph_s")) if s is not None) * 1000.0
        checks.append(f"{'PASS' if best <= EPOCH_GOAL_MS else 'MISS'}: netc epoch {best:.2f} ms "
                      f"(goal <= {EPOCH_GOAL_MS:g} ms)")
    return checks


def rnn_lines(result: dict[str, Any]) -> list[str]:
    speedup = result["speedup"]
    worst = max(result["max_rel_error"].values())
    verdict = (("PASS" if speedup >= RNN_GOAL else "MISS") if result["timer"] == "CUDA events"
               else "goal not checked (not a GPU run)")
    return [f"Row RNN fwd+bwd {result['shape']} on {result['device']}: netc {result['netc_ms']:.4g} ms, "
            f"{result['reference']} {result['torch_ms']:.4g} ms ({result['timer']}, median of "
            f"{result['repeats']}); largest relative error {worst:.2e}",
            f"{verdict}: row RNN speedup {speedup:.3g}x (goal >= {RNN_GOAL:g}x)"]


def summarize(paths: list[str]) -> str:
    out: list[str] = []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as error:
            out += [f"- {path}: unreadable ({type(error).__name__}: {error})", ""]
            continue
        if "results" in data:
            out += bench_table(data) + [""]
            if data.get("net") == "lenet":
                out += goal_checks(data) + [""]
        elif "speedup" in data:
            out += rnn_lines(data) + [""]
        else:
            out += [f"- {path}: neither a bench report nor an RNN comparison", ""]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    print(summarize(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
