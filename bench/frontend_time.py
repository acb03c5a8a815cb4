"""`netc compile FILE` in fresh processes -> its wall and CPU time, with and without the cached parser module.

Usage: python bench/frontend_time.py [FILE] [--runs N]   (FILE: examples/lenet.net)

The target (issue 14) is under 100 ms wall for examples/lenet.net from a cold
process. Wall time depends on how busy the machine is, so the CPU time (user +
system, from the children's rusage) is printed next to it. "first run" uses an
empty cache directory: it pays for building the LALR tables and writing the
generated parser module (and its bytecode) once; "no cache" imports Lark and
builds the tables in every process, as netc does without a usable cache directory.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _one_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one `netc compile` in a new process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _class_cost(decorate: object, count: int = 200) -> float:
    """Milliseconds to create one 3-field class with `decorate` (a frozen dataclass, or @record)."""
    started = time.perf_counter()
    for index in range(count):
        namespace = {"__annotations__": {"a": "int", "b": "str", "c": "Loc"}, "__doc__": "a record"}
        decorate(type(f"C{index}", (), namespace))  # type: ignore[operator]
    return (time.perf_counter() - started) * 1000 / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", nargs="?", default="examples/lenet.net")
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    command = [sys.executable, "-m", "netc.runtime.cli", "compile", args.file]
    # as installed: Python keeps compiled bytecode (a sandbox may set PYTHONDONTWRITEBYTECODE,
    # which makes every process compile every module again)
    base = {key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory() as cache:
        env = {**base, "XDG_CACHE_HOME": cache}
        first = _one_run(command, env)
        runs = [_one_run(command, env) for _ in range(args.runs)]
        # a cache directory that cannot exist (below a file): the tables are built in every process
        Path(cache, "a_file").write_text("")
        uncached_env = {**base, "XDG_CACHE_HOME": os.path.join(cache, "a_file", "below")}
        uncached = [_one_run(command, uncached_env) for _ in range(max(args.runs // 2, 1))]
    baseline = [_one_run([sys.executable, "-c", "pass"], base) for _ in range(args.runs)]
    print(f"netc compile {args.file}: {args.runs} fresh processes, load average {os.getloadavg()[0]:.2f}")
    from netc.dsl.record import record  # what one front-end class costs at import, each way

    frozen = dataclasses.dataclass(frozen=True)
    print(f"  class creation: @dataclass(frozen=True) {_class_cost(frozen):.3f} ms, "
          f"@record {_class_cost(record):.3f} ms a class")
    print(f"  first run (empty cache): wall {first[0] * 1000:6.1f} ms   cpu {first[1] * 1000:6.1f} ms")
    for label, samples in (("cached parser", runs), ("no cache directory", uncached),
                           ("python -c pass", baseline)):
        walls, cpus = [s[0] * 1000 for s in samples], [s[1] * 1000 for s in samples]
        print(f"  {label:>23}: wall min {min(walls):6.1f} ms, median {statistics.median(walls):6.1f} ms   "
              f"cpu min {min(cpus):6.1f} ms, median {statistics.median(cpus):6.1f} ms")


if __name__ == "__main__":
    main()
