"""`netc export FILE --checkpoint DIR [-o model.onnx]` -> an ONNX model checked by ONNX Runtime; exit 0 or 1.

The network is exported on PyTorch's operators (the torch backend) with
torch's ONNX exporter, so the file holds standard ONNX operators only
(Conv, Gemm, LSTM pieces, ...), with a dynamic batch dimension. The model
takes dataset samples as they come (values in [0, 1], shaped as the net's
`input`): a `normalize=true` file's shift and scale are part of the graph.
Before the file appears at its path, ONNX Runtime runs it on the first
EXPORT_CHECK_SAMPLES test images and its logits are compared with netc's;
on a mismatch nothing is written and the command exits 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import sys
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

from netc.dsl.check import parse_path
from netc.dsl.errors import DataError
from netc.dsl.ir import Graph
from netc.runtime.data import load_raw
from netc.runtime.train_cmd import load_trained

EXPORT_CHECK_SAMPLES = 256
RELATIVE_TOLERANCE = 1e-4  # of the largest |logit|: float32 kernels of two runtimes
OPSET = 18
EXTRA_HINT = "netc export needs the optional ONNX packages: pip install 'netc[export]'"


class Normalized(nn.Module):
    """(x - mean) / std, then the network: what the exported model computes from a raw sample."""

    def __init__(self, net: nn.Module, mean: float, std: float) -> None:
        super().__init__()
        self.net, self.mean, self.std = net, mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean != 0.0 or self.std != 1.0:
            x = (x - self.mean) / self.std
        return self.net(x)


def _require_extras() -> None:
    for module in ("onnx", "onnxruntime", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            raise DataError(f"{EXTRA_HINT} ({module} is not installed)") from None


def export_onnx(model: nn.Module, example: torch.Tensor, path: str) -> None:
    """Write `model` as ONNX at `path`, batch dimension dynamic; the exporter's chatter is kept quiet."""
    batch = torch.export.Dim("batch")
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # it warns about torchvision operators we never use
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), path, input_names=["input"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True,
                              external_data=False)  # one self-contained file
    except Exception as error:  # the exporter raises many types; say what it met
        raise DataError(f"torch's ONNX exporter could not export this network: {error}") from None
    finally:
        exporter_log.setLevel(level)


def onnx_logits(path: str, samples: np.ndarray) -> np.ndarray:
    """Run the ONNX file on (B, *input_shape) float32 samples with ONNX Runtime's CPU provider."""
    import onnxruntime

    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: samples})[0]


def sample_images(graph: Graph, count: int) -> np.ndarray:
    """The first `count` test images of the file's dataset, shaped as the net's input."""
    raw = load_raw(graph.train.data)
    images = np.ascontiguousarray(raw.test_x[:count], dtype=np.float32)
    return images.reshape(images.shape[0], *graph.input_shape)


def compare(expected: np.ndarray, got: np.ndarray) -> str | None:
    """None when ONNX Runtime's logits match netc's; else what differs."""
    if got.shape != expected.shape:
        return f"ONNX Runtime returned logits of shape {got.shape}, netc {expected.shape}"
    scale = max(float(np.abs(expected).max()), 1e-12)
    worst = float(np.abs(got - expected).max()) / scale
    if not np.isfinite(worst) or worst > RELATIVE_TOLERANCE:
        return f"ONNX Runtime's logits differ from netc's by {worst:.2e} of the largest logit " \
               f"(allowed {RELATIVE_TOLERANCE:.0e})"
    return None


def run(args: argparse.Namespace) -> int:
    _require_extras()
    graph = parse_path(args.file)
    output = args.output or f"{graph.name}.onnx"
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise DataError(f"cannot write {output}: the directory {directory} does not exist")
    net, _checkpoint, (mean, std) = load_trained(
        graph, args.checkpoint, "cpu", "torch", "export")
    model = Normalized(net.eval(), mean, std)
    samples = sample_images(graph, EXPORT_CHECK_SAMPLES)
    with torch.no_grad():
        expected = model(torch.from_numpy(samples)).numpy()
    handle, staging = tempfile.mkstemp(prefix=".netc-export-", suffix=".onnx", dir=directory)
    os.close(handle)
    try:
        export_onnx(model, torch.from_numpy(samples[:2]), staging)
        problem = compare(expected, onnx_logits(staging, samples))
        if problem is not None:
            raise DataError(f"{problem}; {output} was not written")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o666 & ~umask)  # mkstemp makes it private; a written file is not
        os.replace(staging, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(staging)
    print(f"wrote {output}: {graph.name}, opset {OPSET}, input (batch, "
          f"{', '.join(map(str, graph.input_shape))}) -> logits (batch, {graph.output_shape[-1]}); "
          f"ONNX Runtime matches netc on {samples.shape[0]} test images", file=sys.stdout)
    return 0
