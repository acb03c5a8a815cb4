"""Row-RNN forward+backward: netc.kernels.rnn vs torch.nn.RNN (cuDNN on CUDA) -> times, errors, JSON.

The row RNN of examples/rnn.net, alone: batch 100, 28 steps of 28 features,
128 tanh units, one layer, h_0 = 0. Both sides get the same weights, input
and output gradient; the errors of netc's output and of every gradient
against torch's are checked first, then each side's forward+backward
(`torch.autograd.grad` of the whole output sequence) is timed: warm-up,
then the median of per-call CUDA-event times (host clock on the CPU, where
the Triton kernels run through the interpreter and torch uses its own RNN).

    python3 bench/rnn_vs_cudnn.py [--device cuda] [--batch 100] [--steps 200] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import torch

Tensors = tuple[torch.Tensor, ...]
GOAL = 3.0  # docs/PERFORMANCE.md: netc's row RNN fwd+bwd at least 3x cuDNN's speed on the H200


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=28, dest="time_steps", help="sequence length T")
    parser.add_argument("--features", type=int, default=28)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=None, help="timed calls (200 on cuda, 3 on cpu)")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def make_problem(args: argparse.Namespace, device: torch.device) -> tuple[torch.nn.RNN, torch.Tensor,
                                                                          torch.Tensor]:
    """(torch RNN with its seeded init, input (N, T, F), output gradient (N, T, H)), all on `device`."""
    torch.manual_seed(0)
    reference = torch.nn.RNN(args.features, args.hidden, batch_first=True).to(device)
    x = torch.randn(args.batch, args.time_steps, args.features, device=device, requires_grad=True)
    grad_out = torch.randn(args.batch, args.time_steps, args.hidden, device=device)
    return reference, x, grad_out


def netc_fn(reference: torch.nn.RNN) -> Callable[[torch.Tensor], torch.Tensor]:
    import netc.kernels

    weights = list(reference._flat_weights)  # w_ih (H, F), w_hh (H, H), b_ih (H,), b_hh (H,)
    return lambda x: netc.kernels.rnn(x, weights, 1, "tanh", True)[0]


def fwd_bwd(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, grad_out: torch.Tensor,
            params: Tensors) -> Tensors:
    """(output, d input, d each weight) of one forward and backward."""
    output = forward(x)
    grads = torch.autograd.grad(output, (x, *params), grad_out)
    return (output.detach(), *grads)


def errors(ours: Tensors, theirs: Tensors) -> dict[str, float]:
    """Largest error of netc against torch relative to torch's largest magnitude, per output and gradient."""
    names = ("output", "grad_input", "grad_weight_ih", "grad_weight_hh", "grad_bias_ih", "grad_bias_hh")
    return {name: float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
            for name, a, b in zip(names, ours, theirs, strict=True)}


def median_ms(call: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            call()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
        else:
            begin = time.perf_counter()
            call()
            times.append((time.perf_counter() - begin) * 1000.0)
    return statistics.median(times)


def measure(args: argparse.Namespace, device: torch.device) -> dict[str, object]:
    """Errors first (cuDNN in full float32), then the timings with torch's default settings."""
    reference, x, grad_out = make_problem(args, device)
    params = tuple(reference._flat_weights)
    ours, theirs = netc_fn(reference), (lambda inp: reference(inp)[0])
    tf32_default = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    errs = errors(fwd_bwd(ours, x, grad_out, params), fwd_bwd(theirs, x, grad_out, params))
    torch.backends.cudnn.allow_tf32 = tf32_default
    on_cuda = device.type == "cuda"
    repeats, warmup = args.repeats or (200 if on_cuda else 3), 20 if on_cuda else 1
    netc_ms = median_ms(lambda: fwd_bwd(ours, x, grad_out, params), repeats, warmup, device)
    torch_ms = median_ms(lambda: fwd_bwd(theirs, x, grad_out, params), repeats, warmup, device)
    cudnn = on_cuda and torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled
    return {
        "shape": {"batch": args.batch, "T": args.time_steps, "F": args.features, "H": args.hidden},
        "device": torch.cuda.get_device_name(device) if on_cuda else "cpu",
        "reference": "torch.nn.RNN (cuDNN)" if cudnn else "torch.nn.RNN (PyTorch's CPU kernels)",
        "timer": "CUDA events" if on_cuda else "host clock", "repeats": repeats,
        "netc_ms": netc_ms, "torch_ms": torch_ms, "speedup": torch_ms / netc_ms, "goal": GOAL,
        "cudnn_allow_tf32_when_timed": tf32_default,
        "max_rel_error": errs, "versions": {"torch": torch.__version__},
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device("cuda" if use_cuda else "cpu")
    from netc.kernels.config import ensure_backend

    ensure_backend(device.type)  # the interpreter on the CPU, chosen before triton loads
    result = measure(args, device)
    errs: dict[str, float] = result["max_rel_error"]  # type: ignore[assignment]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"row RNN fwd+bwd {result['shape']} on {result['device']}: netc {result['netc_ms']:.3f} ms, "
              f"{result['reference']} {result['torch_ms']:.3f} ms, speedup {result['speedup']:.3g}x "
              f"(goal {GOAL}x)")
        print("largest errors (relative to torch's largest value): "
              + ", ".join(f"{k} {v:.2e}" for k, v in errs.items()))
    worst = max(errs.values())
    if not worst < 1e-4:  # float32 with ieee dots lands far below; NaN fails too
        print(f"error: netc's rnn differs from torch's by {worst:.3e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
