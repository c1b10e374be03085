r"""MNIST: IDX file reader, full data set loader, embedded sample, tensor conversion.

MNIST is by Yann LeCun and Corinna Cortes and is licensed CC BY-SA 3.0. The full data
set is read from the user's data directory (see :mod:`mobileprune.data.paths`); a
small stratified sample (5,000 train / 1,000 test images) ships inside the package
for demos and tests, see ``_sample/README.md``.
"""

from __future__ import annotations

import gzip
import io
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mobileprune.data.paths import locate_dataset
from mobileprune.errors import DataError

__all__ = [
    "MNIST_MEAN",
    "MNIST_STD",
    "MnistArrays",
    "read_idx",
    "parse_idx",
    "load_mnist",
    "load_mnist_sample",
    "to_tensor_dataset",
]

#: Mean of the MNIST training pixels scaled to [0, 1].
MNIST_MEAN = 0.1307
#: Standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_STD = 0.3081

_GZIP_MAGIC = b"\x1f\x8b"
# IDX type code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_SPLITS = {"train": "train", "test": "t10k"}
_SAMPLE_PACKAGE = "mobileprune.data"
_SAMPLE_PATH = ("_sample", "mnist_sample.npz")


class MnistArrays(NamedTuple):
    r"""MNIST as numpy arrays.

    Attributes:
        train_x (numpy.ndarray): training images, ``uint8`` of shape ``(N, 28, 28)``.
        train_y (numpy.ndarray): training labels, ``int64`` of shape ``(N,)``, in 0..9.
        test_x (numpy.ndarray): test images, ``uint8`` of shape ``(M, 28, 28)``.
        test_y (numpy.ndarray): test labels, ``int64`` of shape ``(M,)``, in 0..9.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray


def parse_idx(data: bytes | bytearray | memoryview, name: str = "<bytes>") -> np.ndarray:
    r"""Decode the content of an uncompressed IDX file.

    An IDX file is a 4-byte magic number ``00 00 <type> <ndim>``, then ``ndim``
    big-endian ``uint32`` dimensions, then the values in C order, big-endian. Type
    codes: ``0x08`` uint8, ``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32,
    ``0x0D`` float32, ``0x0E`` float64.

    Args:
        data (bytes-like): the whole file content.
        name (str, optional): file name used in error messages. Default: ``"<bytes>"``.

    Returns:
        numpy.ndarray: a writable array of shape ``dims`` in native byte order.

    Raises:
        DataError: if the magic number is wrong, the type code is unsupported, the
            header is truncated, or the payload is not exactly ``prod(dims)`` values.
    """
    buf = memoryview(data).cast("B")
    if len(buf) < 4:
        raise DataError(f"IDX file {name!r} is truncated: {len(buf)} bytes, no header")
    zero0, zero1, code, ndim = buf[0], buf[1], buf[2], buf[3]
    if zero0 != 0 or zero1 != 0:
        raise DataError(
            f"IDX file {name!r} has a wrong magic number {bytes(buf[:4]).hex()} "
            "(expected 0000 followed by type code and number of dimensions)"
        )
    if code not in _IDX_DTYPES:
        raise DataError(
            f"IDX file {name!r} has an unsupported type code 0x{code:02x} "
            f"(supported: {', '.join(f'0x{c:02x}' for c in _IDX_DTYPES)})"
        )
    if ndim == 0:
        raise DataError(f"IDX file {name!r} declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(buf) < header:
        raise DataError(
            f"IDX file {name!r} is truncated: header needs {header} bytes, "
            f"file has {len(buf)}"
        )
    dims = tuple(int(d) for d in np.frombuffer(buf, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    count = 1
    for d in dims:
        count *= d
    expected = header + count * dtype.itemsize
    if len(buf) != expected:
        what = "truncated" if len(buf) < expected else "too long"
        raise DataError(
            f"IDX file {name!r} is {what}: dims {dims} of {dtype.name} need "
            f"{expected} bytes, file has {len(buf)}"
        )
    arr = np.frombuffer(buf, dtype=dtype, count=count, offset=header)
    return arr.astype(dtype.newbyteorder("="), copy=True).reshape(dims)


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    r"""Read an IDX file (the MNIST file format), raw or gzip-compressed.

    Compression is detected from the content (gzip magic bytes ``1f 8b``), not from
    the file name, so ``train-images-idx3-ubyte.gz`` and a decompressed file that
    kept its ``.gz`` suffix both work. See :func:`parse_idx` for the format.

    Args:
        path (str or os.PathLike): the file to read.

    Returns:
        numpy.ndarray: a writable array of the shape stored in the file, native byte
        order (``uint8`` for MNIST images and labels).

    Raises:
        DataError: naming the file, if it cannot be read, is a corrupt or truncated
            gzip stream, or is not a valid IDX file.

    Examples:
        >>> labels = read_idx("mnist/t10k-labels.idx1-ubyte")  # doctest: +SKIP
        >>> labels.shape, labels.dtype  # doctest: +SKIP
        ((10000,), dtype('uint8'))
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise DataError(f"cannot read IDX file {str(path)!r}: {exc}") from exc
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DataError(
                f"IDX file {str(path)!r} is a corrupt or truncated gzip file: {exc}"
            ) from exc
    return parse_idx(raw, str(path))


def _find_idx(root: Path, split: str, kind: str, rank: int) -> Path:
    prefix = _SPLITS[split]
    bases = (f"{prefix}-{kind}-idx{rank}-ubyte", f"{prefix}-{kind}.idx{rank}-ubyte")
    candidates = [b + ext for b in bases for ext in ("", ".gz")]
    for c in candidates:
        if (root / c).is_file():
            return root / c
    raise DataError(
        f"MNIST {split} {kind} not found in {str(root)!r}: looked for "
        + ", ".join(candidates)
    )


def _check_split(
    x: np.ndarray, y: np.ndarray, x_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(
            f"MNIST image file {x_name!r} holds {x.dtype} of shape {x.shape}, "
            "expected uint8 of shape (N, 28, 28)"
        )
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"MNIST label file {y_name!r} holds {y.dtype} of shape {y.shape}, "
            "expected integers of shape (N,)"
        )
    if len(x) != len(y):
        raise DataError(
            f"MNIST image/label counts differ: {len(x)} images in {x_name!r}, "
            f"{len(y)} labels in {y_name!r}"
        )
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(
            f"MNIST label file {y_name!r} has labels outside 0..9 "
            f"(min {y.min()}, max {y.max()})"
        )
    return x, y.astype(np.int64)


def load_mnist(data_dir: str | os.PathLike[str] | None = None) -> MnistArrays:
    r"""Load the full MNIST data set from the data directory.

    The folder ``mnist`` is found with
    :func:`~mobileprune.data.paths.locate_dataset` (unpacked, or the archive
    ``mnist.tgz`` unpacked once into the cache). File names may be either
    ``train-images-idx3-ubyte`` or ``train-images.idx3-ubyte`` (likewise for
    ``train-labels``, ``t10k-images``, ``t10k-labels``), optionally gzip-compressed
    with a ``.gz`` suffix.

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to the
            environment variable ``MOBILEPRUNE_DATA``. Default: ``None``.

    Returns:
        MnistArrays: ``train_x`` uint8 ``(60000, 28, 28)``, ``train_y`` int64
        ``(60000,)``, ``test_x`` uint8 ``(10000, 28, 28)``, ``test_y`` int64
        ``(10000,)`` for the official files.

    Raises:
        DataError: if the data set or one of its files is missing or malformed, the
            number of images and labels differ, or a label is outside 0..9.

    Examples:
        >>> m = load_mnist("/work/shared/data")  # doctest: +SKIP
        >>> m.train_x.shape, m.test_y.dtype  # doctest: +SKIP
        ((60000, 28, 28), dtype('int64'))
    """
    markers = [
        f"train-images{sep}idx3-ubyte{ext}" for sep in ("-", ".") for ext in ("", ".gz")
    ]
    root = locate_dataset("mnist", data_dir, archive="mnist.tgz", marker=markers)
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        x_path = _find_idx(root, split, "images", 3)
        y_path = _find_idx(root, split, "labels", 1)
        out.extend(_check_split(read_idx(x_path), read_idx(y_path), str(x_path), str(y_path)))
    return MnistArrays(*out)


def load_mnist_sample() -> MnistArrays:
    r"""Load the small MNIST sample embedded in the package.

    The sample holds 5,000 images of the official training split and 1,000 of the
    official test split, drawn with a fixed seed and stratified by class; see
    ``mobileprune/data/_sample/README.md``. It needs no data directory.

    Returns:
        MnistArrays: ``train_x`` uint8 ``(5000, 28, 28)``, ``train_y`` int64
        ``(5000,)``, ``test_x`` uint8 ``(1000, 28, 28)``, ``test_y`` int64 ``(1000,)``.

    Raises:
        DataError: if the embedded file is missing or malformed (broken install).

    Examples:
        >>> s = load_mnist_sample()
        >>> s.train_x.shape, s.test_x.shape
        ((5000, 28, 28), (1000, 28, 28))
    """
    res = resources.files(_SAMPLE_PACKAGE).joinpath(*_SAMPLE_PATH)
    name = "/".join(("mobileprune/data",) + _SAMPLE_PATH)
    try:
        with np.load(io.BytesIO(res.read_bytes()), allow_pickle=False) as z:
            arrays = {k: z[k] for k in ("train_x", "train_y", "test_x", "test_y")}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"embedded MNIST sample {name!r} is missing or corrupt: {exc}") from exc
    train = _check_split(arrays["train_x"], arrays["train_y"], name, name)
    test = _check_split(arrays["test_x"], arrays["test_y"], name, name)
    return MnistArrays(*train, *test)


def _as_tensor(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    if torch.is_tensor(a):
        return a
    arr = np.asarray(a)
    if not arr.flags.writeable:  # torch warns on read-only arrays; copy instead
        arr = arr.copy()
    return torch.from_numpy(np.ascontiguousarray(arr))


def to_tensor_dataset(
    x_uint8: np.ndarray | torch.Tensor,
    y: np.ndarray | torch.Tensor,
    normalize: bool = True,
) -> TensorDataset:
    r"""Turn uint8 images and labels into a :class:`~torch.utils.data.TensorDataset`.

    Images are converted to ``float32``, scaled from 0..255 to [0, 1] and, if
    ``normalize``, standardised as ``(x - 0.1307) / 0.3081`` (:data:`MNIST_MEAN`,
    :data:`MNIST_STD`). A channel dimension is added, giving ``(N, 1, H, W)``.

    Args:
        x_uint8 (numpy.ndarray or torch.Tensor): images, ``uint8`` of shape
            ``(N, H, W)`` or ``(N, 1, H, W)``.
        y (numpy.ndarray or torch.Tensor): integer labels of shape ``(N,)``.
        normalize (bool, optional): standardise with the MNIST mean and standard
            deviation after scaling to [0, 1]. Default: ``True``.

    Returns:
        torch.utils.data.TensorDataset: pairs ``(image, label)`` with images
        ``float32`` of shape ``(N, 1, H, W)`` and labels ``int64`` of shape ``(N,)``.

    Raises:
        DataError: if the images are not uint8, have the wrong number of
            dimensions, or their count differs from the number of labels.

    Examples:
        >>> s = load_mnist_sample()
        >>> ds = to_tensor_dataset(s.test_x, s.test_y)
        >>> ds.tensors[0].shape, ds.tensors[1].dtype
        (torch.Size([1000, 1, 28, 28]), torch.int64)
    """
    x, labels = _as_tensor(x_uint8), _as_tensor(y)
    if x.dtype != torch.uint8:
        raise DataError(f"images must be uint8 (0..255), got {x.dtype}")
    if x.ndim == 3:
        x = x.unsqueeze(1)
    elif not (x.ndim == 4 and x.shape[1] == 1):
        raise DataError(f"images must have shape (N, H, W) or (N, 1, H, W), got {tuple(x.shape)}")
    if labels.ndim != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise DataError(
            f"labels must be integers of shape (N,), got {labels.dtype} of shape "
            f"{tuple(labels.shape)}"
        )
    if len(labels) != len(x):
        raise DataError(f"{len(x)} images but {len(labels)} labels")
    images = x.to(torch.float32).div_(255.0)
    if normalize:
        images.sub_(MNIST_MEAN).div_(MNIST_STD)
    return TensorDataset(images.contiguous(), labels.to(torch.int64))
