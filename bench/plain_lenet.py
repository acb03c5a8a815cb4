"""examples/lenet.net's training, written in plain PyTorch -> test accuracy and wall time (the reference).

The same data (MNIST, 20% held out for validation by the same seeded split),
the same batches (size 100, reshuffled each epoch), SGD lr=0.01 momentum=0.9,
10 epochs, validation after each epoch, test accuracy at the end. The data is
read with netc's loader, so both programs pay the same loading cost and the
comparison is about the training loop.

    .venv/bin/python bench/plain_lenet.py [--epochs N] [--limit N]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from netc.dsl.ir import DataConfig
from netc.runtime.data import prepare


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 10, kernel_size=5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(10 * 12 * 12, 50), nn.ReLU(), nn.Linear(50, 10),
    )


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    model.eval()
    loss_sum, correct = 0.0, 0
    for begin in range(0, len(images), 1000):
        logits = model(images[begin:begin + 1000])
        target = labels[begin:begin + 1000]
        loss_sum += float(nn.functional.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    return loss_sum / len(images), correct / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--limit", type=int, default=None)
    args = parser.parse_args()
    start = time.perf_counter()
    data = prepare(DataConfig(name="mnist", val=0.2), (1, 28, 28), 10, seed=0, device="cpu", limit=args.limit)
    torch.manual_seed(0)
    model = lenet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(data.train_x), generator=generator)
        loss_sum = torch.zeros(())
        for begin in range(0, len(order), 100):
            index = order[begin:begin + 100]
            loss = nn.functional.cross_entropy(model(data.train_x[index]), data.train_y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        val_loss, val_acc = evaluate(model, data.val_x, data.val_y)
        steps = (len(order) + 99) // 100
        print(f"epoch {epoch + 1}: train loss {float(loss_sum) / steps:.4f}  val loss {val_loss:.4f}  "
              f"val acc {100 * val_acc:.2f}%  ({time.perf_counter() - start:.1f} s)", flush=True)
    test_loss, test_acc = evaluate(model, data.test_x, data.test_y)
    print(f"test loss {test_loss:.4f}  test accuracy {100 * test_acc:.2f}%  "
          f"wall {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
