"""Tests of mobileprune.data: IDX reader, data directory, archive cache, MNIST."""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileprune.data import (
    ENV_CACHE,
    ENV_DATA,
    MnistArrays,
    cache_dir,
    load_mnist,
    load_mnist_sample,
    locate_dataset,
    read_idx,
    resolve_data_dir,
    to_tensor_dataset,
)
from mobileprune.errors import DataError

_CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C,
          np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    """Encode ``arr`` as an IDX file, independently of the code under test."""
    code = _CODES[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, arr: np.ndarray, compress: bool = False) -> Path:
    data = idx_bytes(arr)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, tmp_path):
    """Unit tests use a private cache; integration tests use the configured one."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))


# --------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28),
        np.array([3, 1, 4, 1, 5, 9, 2, 6], dtype=np.uint8),
        np.arange(-6, 6, dtype=np.int16).reshape(3, 4),
        np.arange(24, dtype=np.int32).reshape(2, 3, 4) * -70000,
        np.linspace(-1, 1, 10, dtype=np.float32),
        np.linspace(-1, 1, 6, dtype=np.float64).reshape(2, 3),
        np.array([-128, 0, 127], dtype=np.int8),
    ],
    ids=["u8-3d", "u8-1d", "i16", "i32", "f32", "f64", "i8"],
)
def test_read_idx_roundtrip(tmp_path, arr, compress):
    path = write_idx(tmp_path / "data.idx", arr, compress)
    out = read_idx(path)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype  # native byte order
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, arr)
    assert out.flags.writeable


def test_read_idx_detects_gzip_by_content_not_suffix(tmp_path):
    arr = np.arange(10, dtype=np.uint8)
    # gzip content without .gz suffix, and raw content with a .gz suffix
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "a-ubyte", arr, True)), arr)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "b.gz", arr, False)), arr)


def test_read_idx_truncated_payload(tmp_path):
    path = tmp_path / "short-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((3, 28, 28), np.uint8))[:-5])
    with pytest.raises(DataError, match="short-images-idx3-ubyte") as exc:
        read_idx(path)
    assert "truncated" in str(exc.value)


def test_read_idx_truncated_header(tmp_path):
    path = tmp_path / "hdr.idx"
    path.write_bytes(bytes([0, 0, 8, 3, 0, 0]))
    with pytest.raises(DataError, match="hdr.idx"):
        read_idx(path)


def test_read_idx_too_long(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(idx_bytes(np.zeros(4, np.uint8)) + b"\0")
    with pytest.raises(DataError, match="long.idx"):
        read_idx(path)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "cut.idx.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((5, 28, 28), np.uint8)))[:-10])
    with pytest.raises(DataError, match="cut.idx.gz"):
        read_idx(path)


def test_read_idx_wrong_magic(tmp_path):
    path = tmp_path / "magic.idx"
    data = bytearray(idx_bytes(np.zeros(4, np.uint8)))
    data[0] = 0x12
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="magic.idx") as exc:
        read_idx(path)
    assert "magic" in str(exc.value)


def test_read_idx_unsupported_dtype(tmp_path):
    path = tmp_path / "code.idx"
    path.write_bytes(bytes([0, 0, 0x07, 1]) + struct.pack(">I", 2) + b"\0\0")
    with pytest.raises(DataError, match="code.idx") as exc:
        read_idx(path)
    assert "0x07" in str(exc.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.idx"):
        read_idx(tmp_path / "nope.idx")


# ------------------------------------------------------------------ data directory


def test_resolve_data_dir_none_given(monkeypatch):
    monkeypatch.delenv(ENV_DATA, raising=False)
    with pytest.raises(DataError) as exc:
        resolve_data_dir()
    assert "--data-dir" in str(exc.value) and ENV_DATA in str(exc.value)


def test_resolve_data_dir_nonexistent(tmp_path, monkeypatch):
    missing = tmp_path / "missing"
    with pytest.raises(DataError, match="missing"):
        resolve_data_dir(missing)
    monkeypatch.setenv(ENV_DATA, str(missing))
    with pytest.raises(DataError, match=ENV_DATA) as exc:
        resolve_data_dir()
    assert str(missing) in str(exc.value)


def test_resolve_data_dir_explicit_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "elsewhere"))
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv(ENV_DATA, str(tmp_path))
    assert resolve_data_dir() == tmp_path


def test_cache_dir_env_and_xdg(tmp_path, monkeypatch):
    assert cache_dir() == tmp_path / "cache" and (tmp_path / "cache").is_dir()
    monkeypatch.delenv(ENV_CACHE)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "mobileprune"
    assert cache_dir().is_dir()


# --------------------------------------------------------------- locate_dataset


def make_tgz(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_locate_dataset_unpacks_archive_once(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    make_tgz(data / "toy.tgz", {"toy/a.txt": b"hello", "toy/sub/b.txt": b"world"})

    root = locate_dataset("toy", data, marker="a.txt")
    assert root == tmp_path / "cache" / "toy" / "toy"
    assert (root / "a.txt").read_bytes() == b"hello"
    assert (root / "sub" / "b.txt").read_bytes() == b"world"
    # nothing half-done is left in the cache, nothing written to the data dir
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["toy"]
    assert sorted(p.name for p in data.iterdir()) == ["toy.tgz"]

    def no_open(*a, **k):
        raise AssertionError("archive extracted twice")

    monkeypatch.setattr(tarfile, "open", no_open)
    mtime = (root / "a.txt").stat().st_mtime_ns
    assert locate_dataset("toy", data, marker="a.txt") == root
    assert (root / "a.txt").stat().st_mtime_ns == mtime


def test_locate_dataset_reextracts_changed_archive(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    arc = make_tgz(data / "toy.tgz", {"toy/a.txt": b"v1"})
    root = locate_dataset("toy", data)
    assert (root / "a.txt").read_bytes() == b"v1"
    make_tgz(arc, {"toy/a.txt": b"version 2"})
    os.utime(arc, ns=(1, 1))
    assert (locate_dataset("toy", data) / "a.txt").read_bytes() == b"version 2"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["toy"]


def test_locate_dataset_custom_archive_name(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_tgz(data / "toy-v2.tar.gz", {"toy/a.txt": b"x"})
    root = locate_dataset("toy", data, archive="toy-v2.tar.gz")
    assert root == tmp_path / "cache" / "toy-v2" / "toy"


def test_locate_dataset_finds_unpacked_folder(tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "toy").mkdir(parents=True)
    (data / "toy" / "a.txt").write_bytes(b"x")
    monkeypatch.setenv(ENV_DATA, str(data))
    assert locate_dataset("toy") == data / "toy"
    assert locate_dataset("toy", marker="a.txt") == data / "toy"
    # data_dir itself is the data set folder
    assert locate_dataset("other", data / "toy", marker=["zzz", "a.txt"]) == data / "toy"
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_locate_dataset_missing_lists_places(tmp_path):
    with pytest.raises(DataError) as exc:
        locate_dataset("toy", tmp_path, marker="a.txt")
    msg = str(exc.value)
    assert str(tmp_path / "toy") in msg and str(tmp_path / "toy.tgz") in msg
    assert "a.txt" in msg


def test_locate_dataset_rejects_unsafe_archive(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    make_tgz(data / "toy.tgz", {"../evil.txt": b"x"})
    with pytest.raises(DataError, match="toy.tgz"):
        locate_dataset("toy", data)
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "cache" / "toy").exists()
    assert not any((tmp_path / "cache").iterdir())  # temp folder cleaned up


def test_locate_dataset_corrupt_archive(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "toy.tgz").write_bytes(b"not a tar file at all")
    with pytest.raises(DataError, match="toy.tgz"):
        locate_dataset("toy", data)


# ------------------------------------------------------------------------ MNIST


def fake_mnist(folder: Path, n_train=12, n_test=7, dotted=True, compress=False) -> MnistArrays:
    rng = np.random.default_rng(0)
    arrays = MnistArrays(
        rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_train).astype(np.int64),
        rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, n_test).astype(np.int64),
    )
    folder.mkdir(parents=True, exist_ok=True)
    sep = "." if dotted else "-"
    ext = ".gz" if compress else ""
    for prefix, x, y in (("train", arrays.train_x, arrays.train_y),
                         ("t10k", arrays.test_x, arrays.test_y)):
        write_idx(folder / f"{prefix}-images{sep}idx3-ubyte{ext}", x, compress)
        write_idx(folder / f"{prefix}-labels{sep}idx1-ubyte{ext}", y.astype(np.uint8), compress)
    return arrays


@pytest.mark.parametrize("dotted,compress", [(True, False), (False, True)])
def test_load_mnist_generated(tmp_path, dotted, compress):
    want = fake_mnist(tmp_path / "data" / "mnist", dotted=dotted, compress=compress)
    got = load_mnist(tmp_path / "data")
    for w, g in zip(want, got):
        np.testing.assert_array_equal(g, w)
    assert got.train_x.dtype == np.uint8 and got.train_y.dtype == np.int64


def test_load_mnist_from_archive(tmp_path):
    src = tmp_path / "src" / "mnist"
    want = fake_mnist(src)
    data = tmp_path / "data"
    data.mkdir()
    make_tgz(data / "mnist.tgz", {f"mnist/{p.name}": p.read_bytes() for p in src.iterdir()})
    got = load_mnist(data)
    np.testing.assert_array_equal(got.test_x, want.test_x)


def test_load_mnist_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    fake_mnist(folder)
    write_idx(folder / "t10k-labels.idx1-ubyte", np.zeros(6, np.uint8))
    with pytest.raises(DataError, match="t10k-labels.idx1-ubyte"):
        load_mnist(tmp_path)


def test_load_mnist_bad_label(tmp_path):
    folder = tmp_path / "mnist"
    fake_mnist(folder)
    write_idx(folder / "train-labels.idx1-ubyte", np.full(12, 10, np.uint8))
    with pytest.raises(DataError, match="train-labels.idx1-ubyte"):
        load_mnist(tmp_path)


def test_load_mnist_missing_file(tmp_path):
    folder = tmp_path / "mnist"
    fake_mnist(folder)
    (folder / "t10k-images.idx3-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-images"):
        load_mnist(tmp_path)


def test_mnist_sample():
    s = load_mnist_sample()
    assert isinstance(s, MnistArrays)
    assert s.train_x.shape == (5000, 28, 28) and s.train_x.dtype == np.uint8
    assert s.test_x.shape == (1000, 28, 28) and s.test_x.dtype == np.uint8
    assert s.train_y.shape == (5000,) and s.train_y.dtype == np.int64
    assert s.test_y.shape == (1000,) and s.test_y.dtype == np.int64
    assert set(np.unique(s.train_y)) == set(range(10))
    assert set(np.unique(s.test_y)) == set(range(10))
    # stratified: every class holds between 8% and 12% of each split
    assert np.bincount(s.train_y).min() > 400 and np.bincount(s.train_y).max() < 600
    assert np.bincount(s.test_y).min() > 80 and np.bincount(s.test_y).max() < 120
    for x in (s.train_x, s.test_x):
        assert x.min() == 0 and x.max() == 255


def test_to_tensor_dataset():
    x = np.array([[[0, 255], [51, 102]]], dtype=np.uint8)
    y = np.array([7], dtype=np.uint8)
    raw = to_tensor_dataset(x, y, normalize=False)
    img, label = raw[0]
    assert img.shape == (1, 2, 2) and img.dtype == torch.float32
    assert label.dtype == torch.int64 and int(label) == 7
    torch.testing.assert_close(img, torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))
    norm = to_tensor_dataset(x, y)
    torch.testing.assert_close(norm.tensors[0], (raw.tensors[0] - 0.1307) / 0.3081)

    s = load_mnist_sample()
    ds = to_tensor_dataset(s.test_x, s.test_y)
    assert ds.tensors[0].shape == (1000, 1, 28, 28) and len(ds) == 1000
    assert abs(float(ds.tensors[0].mean())) < 0.1  # roughly standardised
    with pytest.raises(DataError):
        to_tensor_dataset(x.astype(np.float32), y)
    with pytest.raises(DataError):
        to_tensor_dataset(x, np.array([1, 2]))


# ------------------------------------------------------------------ integration


@pytest.mark.integration
def test_full_mnist_integration():
    data = os.environ.get(ENV_DATA)
    if not data:
        pytest.skip(f"{ENV_DATA} not set: point it at the folder holding mnist.tgz "
                    "(e.g. /work/shared/data) to run this test")
    try:
        m = load_mnist(data)
    except DataError as exc:
        if "not found" in str(exc):
            pytest.skip(f"MNIST absent from {ENV_DATA}={data!r}: {exc}")
        raise
    assert m.train_x.shape == (60000, 28, 28) and m.train_y.shape == (60000,)
    assert m.test_x.shape == (10000, 28, 28) and m.test_y.shape == (10000,)
    assert m.train_x.dtype == np.uint8 and m.train_y.dtype == np.int64
    assert np.bincount(m.train_y, minlength=10).tolist()[:2] == [5923, 6742]
    assert np.bincount(m.test_y, minlength=10).tolist()[:2] == [980, 1135]

    res = resources.files("mobileprune.data").joinpath("_sample", "mnist_sample.npz")
    with np.load(io.BytesIO(res.read_bytes())) as z:
        np.testing.assert_array_equal(z["train_x"], m.train_x[z["train_idx"]])
        np.testing.assert_array_equal(z["train_y"], m.train_y[z["train_idx"]])
        np.testing.assert_array_equal(z["test_x"], m.test_x[z["test_idx"]])
        np.testing.assert_array_equal(z["test_y"], m.test_y[z["test_idx"]])
