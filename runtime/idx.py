"""IDX files (the MNIST distribution format), raw or gzipped -> checked numpy arrays.

An IDX file is a 4-byte magic number (two zero bytes, a type code, the number
of dimensions), one big-endian uint32 per dimension, then the values in
row-major order. We check every part of it, so a truncated or corrupt
download is reported as a DataError instead of a reshape traceback.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import struct
import zlib
from typing import BinaryIO

import numpy as np

from netc.dsl.errors import DataError

# IDX type code -> numpy dtype (big-endian as the format stores it)
_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

MAX_IDX_BYTES = 2**31  # the data of one IDX file (MNIST's largest holds 47 MB): 2 GiB
_CHUNK = 1 << 24  # bytes read (and inflated) at a time

# the four files of a dataset directory: part -> the file name without .gz
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def parse_idx(blob: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode one IDX file's bytes; `name` only labels the error messages."""
    return _read_stream(io.BytesIO(blob), name)


def read_idx(path: str) -> np.ndarray:
    """Read and decode the IDX file at `path` (raw or .gz), streaming: memory stays within its declared size.

    A gzip that inflates to more than its header declares is refused after one byte too many,
    so a small file that would inflate to gigabytes never does.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return _read_stream(handle, path)
        with open(path, "rb") as handle:
            return _read_stream(handle, path)
    except (OSError, EOFError, zlib.error) as error:
        # gzip raises EOFError on a truncated stream, BadGzipFile (an OSError) on garbage
        raise DataError(f"cannot read {path}: {error} (the file is damaged; download it again)") from None


def _read_exactly(handle: BinaryIO, count: int) -> bytearray:
    """Up to `count` bytes (fewer only at the end of the stream), read in chunks: no larger buffer."""
    buffer = bytearray()
    while len(buffer) < count:
        chunk = handle.read(min(_CHUNK, count - len(buffer)))
        if not chunk:
            break
        buffer += chunk
    return buffer


def _read_stream(handle: BinaryIO, name: str) -> np.ndarray:
    """Header first, then exactly the bytes it declares (checked against MAX_IDX_BYTES), then nothing."""
    head = _read_exactly(handle, 4)
    if len(head) < 4:
        raise DataError(f"{name}: not an IDX file (only {len(head)} bytes)")
    zero, type_code, ndim = struct.unpack(">HBB", head)
    if zero != 0 or type_code not in _TYPES or ndim == 0:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{bytes(head).hex()})")
    dims_bytes = _read_exactly(handle, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(f"{name}: truncated IDX header ({4 + len(dims_bytes)} bytes)")
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    dtype = _TYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    if expected > MAX_IDX_BYTES:
        raise DataError(f"{name}: its header declares dimensions {list(dims)}, {expected:,} bytes of data; "
                        f"netc reads IDX files of at most {MAX_IDX_BYTES:,} bytes")
    body = _read_exactly(handle, expected)
    if len(body) < expected:
        raise DataError(f"{name}: truncated: dimensions {list(dims)} need {expected} bytes of data, "
                        f"found {len(body)}")
    if handle.read(1):
        raise DataError(f"{name}: has trailing bytes: dimensions {list(dims)} need {expected} bytes of data, "
                        "and more follow")
    values = np.frombuffer(body, dtype=dtype).reshape(dims)
    return values.astype(dtype.newbyteorder("="), copy=False)


def find_idx(directory: str, stem: str) -> str | None:
    """The path of `stem` or `stem.gz` in `directory` (also accepting t10k's `.` spelling), or None."""
    for candidate in (stem, stem + ".gz", stem.replace("-idx", ".idx"), stem.replace("-idx", ".idx") + ".gz"):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx_dataset(directory: str, hint: str) -> dict[str, np.ndarray]:
    """The four arrays of an IDX dataset directory, checked against each other.

    Returns train_images (N, H, W) uint8, train_labels (N,), test_images,
    test_labels. `hint` says how to get the data when a file is missing.
    """
    if not os.path.isdir(directory):
        what = "is a file, not a directory" if os.path.exists(directory) else "does not exist"
        raise DataError(f"dataset directory {directory} {what} ({hint})")
    arrays: dict[str, np.ndarray] = {}
    for part, stem in IDX_FILES.items():
        path = find_idx(directory, stem)
        if path is None:
            raise DataError(f"{directory} has no {stem} or {stem}.gz ({hint})")
        arrays[part] = read_idx(path)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim < 2 or labels.ndim != 1:
            raise DataError(
                f"{directory}: {split} images must have a sample dimension and labels one dimension, "
                f"got shapes {list(images.shape)} and {list(labels.shape)}"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"{directory}: {images.shape[0]} {split} images but {labels.shape[0]} {split} labels"
            )
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"{directory}: training samples are {list(arrays['train_images'].shape[1:])} "
            f"but test samples are {list(arrays['test_images'].shape[1:])}"
        )
    return arrays


def encode_idx(values: np.ndarray) -> bytes:
    """The IDX bytes of `values` (for tests and for writing small datasets)."""
    codes = {dtype.newbyteorder("="): code for code, dtype in _TYPES.items()}
    native = values.dtype.newbyteorder("=")
    if native not in codes:
        raise ValueError(f"IDX cannot store dtype {values.dtype}")
    code = codes[native]
    header = struct.pack(">HBB", 0, code, values.ndim) + struct.pack(f">{values.ndim}I", *values.shape)
    return header + np.ascontiguousarray(values, dtype=_TYPES[code]).tobytes()
