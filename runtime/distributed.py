"""Data-parallel training: `--nproc N` -> N workers through torchrun's machinery; in a worker, the
environment torchrun sets -> a process group, each rank's share of a batch, and the DDP-wrapped net.

The file's `batch` is the global batch. Every rank draws the same epoch order
from the seed, takes its contiguous slice of each global batch
(`torch.tensor_split`, so a short last batch splits as evenly as it can) and
scales its loss by local_count * world / global_count: DDP averages the
gradients over ranks, so the step follows the global batch's mean gradient,
exactly as one process would (up to float summation order). Rank 0 alone
prints, writes metrics and checkpoints; every rank evaluates (the splits are
small) so no rank waits on another outside the gradient all-reduce.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
from torch import nn

from netc.dsl.errors import DataError

TIMEOUT = timedelta(minutes=10)  # a collective that waits this long means a lost peer: fail, never hang


@dataclass(frozen=True)
class World:
    """This process's place among the workers."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def current() -> World | None:
    """The world torchrun described in the environment, or None for a plain single process."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError:
        raise DataError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (as torchrun sets them)") from None
    return World(rank, size, local)


def check_batch(batch: int, processes: int) -> None:
    """The global batch must split evenly, so every rank runs the same step shape."""
    if batch % processes:
        raise DataError(f"the batch of {batch} does not split evenly over {processes} processes; "
                        f"use a batch that is a multiple of {processes} (--batch) or another --nproc")


def launch(processes: int, train_args: list[str]) -> int:
    """Start `processes` local workers of `netc train train_args...` with torchrun; their exit status."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    launcher = get_args_parser().parse_args([
        "--standalone", "--nnodes=1", f"--nproc-per-node={processes}", "--max-restarts=0",
        "--module", "netc", "train", *train_args,
    ])
    try:
        run(launcher)
    except ChildFailedError as failure:
        rank, info = min(failure.failures.items())
        code = info.exitcode
        why = f"exit status {code}" if code >= 0 else f"signal {-code}"
        print(f"error: worker {rank} of {processes} stopped ({why}); its message is above, and the "
              "other workers were stopped", file=sys.stderr)
        return 130 if code == 130 else 1
    return 0


def init(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on the CPU); the device this rank trains on."""
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return device


def shutdown() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(net: nn.Module, device: torch.device) -> nn.Module:
    """The DDP module that runs the forward and averages gradients; `net` keeps its own names.

    Every batchnorm layer is switched to statistics over the whole global batch (as
    SyncBatchNorm), so N processes normalize as one does.
    """
    from torch.nn.parallel import DistributedDataParallel

    from netc.runtime.backends import Backend
    from netc.runtime.layers import BatchNorm

    for layer in net.modules():
        if isinstance(layer, BatchNorm):
            layer.ops = Backend(**{**vars(layer.ops), "batch_norm": _synced(layer.ops.batch_norm)})
    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def _synced(local_batch_norm: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """F.batch_norm's signature; in training, the statistics of every rank's samples together."""

    def batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                   weight: torch.Tensor | None = None, bias: torch.Tensor | None = None,
                   training: bool = False, momentum: float = 0.1, eps: float = 1e-5) -> torch.Tensor:
        if not training:
            return local_batch_norm(x, running_mean, running_var, weight, bias, False, momentum, eps)
        return global_batch_norm(x, running_mean, running_var, weight, bias, momentum, eps)

    return batch_norm


def global_batch_norm(x: torch.Tensor, running_mean: torch.Tensor | None, running_var: torch.Tensor | None,
                      weight: torch.Tensor | None, bias: torch.Tensor | None, momentum: float,
                      eps: float) -> torch.Tensor:
    """Training-mode batch norm of (N, C, ...) over all ranks' N: two differentiable all-reduces
    (the sum, then the sum of squared deviations from the global mean: no cancellation)."""
    from torch.distributed.nn.functional import all_reduce

    dims = [0, *range(2, x.dim())]  # every dimension but the channels
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)  # (1, C, 1, ...)
    local_count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
    totals = all_reduce(torch.cat([x.sum(dims), local_count]))
    count = totals[-1]
    mean = totals[:-1] / count  # (C,)
    centred = x - mean.reshape(shape)
    var = all_reduce(centred.square().sum(dims)) / count  # biased: what normalizes
    out = centred * torch.rsqrt(var + eps).reshape(shape)
    if weight is not None:
        out = out * weight.reshape(shape)
    if bias is not None:
        out = out + bias.reshape(shape)
    if running_mean is not None and running_var is not None:
        with torch.no_grad():  # as torch: unbiased variance into the running estimate
            running_mean.mul_(1 - momentum).add_(mean.detach(), alpha=momentum)
            unbiased = var.detach() * count / (count - 1).clamp(min=1)
            running_var.mul_(1 - momentum).add_(unbiased, alpha=momentum)
    return out


def local_share(index: torch.Tensor, world: World) -> tuple[torch.Tensor, float]:
    """(this rank's sample indices of a global batch, the factor its mean loss is scaled by).

    A short last batch with fewer samples than ranks leaves some ranks none: they
    run on one sample with factor 0, so they still join the gradient all-reduce.
    """
    share = torch.tensor_split(index, world.size)[world.rank]
    if share.shape[0] == 0:
        return index[:1], 0.0
    return share, share.shape[0] * world.size / index.shape[0]


def share_offset(count: int, world: World) -> int:
    """Where this rank's share starts in a global batch of `count` (torch.tensor_split's sizes)."""
    base, extra = divmod(count, world.size)
    return world.rank * base + min(world.rank, extra)


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over every rank, in place (a gloo/NCCL all-reduce); returns it."""
    import torch.distributed as dist

    dist.all_reduce(value)
    return value
