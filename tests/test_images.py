"""Tests of the image data sets (mobileprune.data.images) and the image models
(FERNet, CIFAR ResNets, VGG) on small generated files."""

from __future__ import annotations

import csv
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.fx

from mobileprune.data.paths import ENV_CACHE, ENV_DATA
from mobileprune.data.registry import DATASETS, load_dataset
from mobileprune.errors import ConfigError, DataError
from mobileprune.models import MODELS, build_model
from mobileprune.models.fer import FERNet
from mobileprune.models.resnet_cifar import VGG_CFGS, CifarResNet, resnet20, resnet56, vgg_cifar

from mobileprune.data import images
from mobileprune.data.images import (
    CIFAR10_CLASSES,
    FER2013_CLASSES,
    FER2013_CLASSES_MERGED,
    channel_stats,
    load_cifar10,
    load_cifar10_convnetjs,
    load_cifar10_pickle,
    load_fer2013,
    load_fer2013_csv,
    load_image_folder,
    merge_fer2013_disgust,
    parse_convnetjs_labels,
    to_normalized_dataset,
)

try:
    from PIL import Image
except ImportError:  # Pillow is a dependency; without it only decoding tests skip
    Image = None

needs_pil = pytest.mark.skipif(Image is None, reason="Pillow is needed to decode JPEG/PNG")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: faster and steadier on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, tmp_path):
    """Unit tests use a private cache; integration tests use the configured one."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
        monkeypatch.delenv(ENV_DATA, raising=False)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# ------------------------------------------------------------------ CIFAR pickles


def write_cifar_batch(path: Path, x: np.ndarray, y: np.ndarray, protocol: int = 2) -> None:
    """Write a batch like the official files: bytes keys, (N, 3072) uint8, list labels."""
    d = {b"batch_label": b"generated", b"labels": [int(v) for v in y],
         b"data": x.reshape(len(x), -1), b"filenames": [b"f.png"] * len(x)}
    path.write_bytes(pickle.dumps(d, protocol=protocol))


def make_cifar_pickles(root: Path, n: int = 4, seed: int = 0, meta: bool = True):
    rng = _rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    xs, ys = [], []
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        y = rng.integers(0, 10, n)
        write_cifar_batch(root / name, x, y, protocol=2 if i % 2 else 5)
        xs.append(x), ys.append(y)
    if meta:
        (root / "batches.meta").write_bytes(pickle.dumps(
            {b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}, 2))
    return np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5]


def test_cifar_pickle_roundtrip(tmp_path):
    tx, ty, vx, vy = make_cifar_pickles(tmp_path / "cifar-10-batches-py")
    d = load_cifar10_pickle(tmp_path / "cifar-10-batches-py")
    assert d.train_x.shape == (20, 3, 32, 32) and d.train_x.dtype == np.uint8
    assert d.train_y.dtype == np.int64 and d.test_x.shape == (4, 3, 32, 32)
    np.testing.assert_array_equal(d.train_x, tx)
    np.testing.assert_array_equal(d.train_y, ty)
    np.testing.assert_array_equal(d.test_x, vx)
    np.testing.assert_array_equal(d.test_y, vy)
    assert d.classes == CIFAR10_CLASSES


def test_cifar_pickle_pixel_layout(tmp_path):
    # The 3072 bytes are the red plane, then green, then blue, each row-major.
    root = tmp_path / "b"
    make_cifar_pickles(root, n=1)
    flat = np.zeros((1, 3072), dtype=np.uint8)
    flat[0, 0] = 10          # red (0, 0)
    flat[0, 1024 + 33] = 20  # green (1, 1)
    flat[0, 2048 + 31] = 30  # blue (0, 31)
    write_cifar_batch(root / "test_batch", flat, np.array([3]))
    x = load_cifar10_pickle(root).test_x[0]
    assert x[0, 0, 0] == 10 and x[1, 1, 1] == 20 and x[2, 0, 31] == 30
    assert int(x.sum()) == 60


def test_cifar_pickle_errors(tmp_path):
    root = tmp_path / "b"
    make_cifar_pickles(root, n=2)
    write_cifar_batch(root / "data_batch_3", np.zeros((2, 3000), np.uint8), np.array([1, 2]))
    with pytest.raises(DataError, match="data_batch_3.*3072"):
        load_cifar10_pickle(root)
    write_cifar_batch(root / "data_batch_3", np.zeros((2, 3072), np.uint8), np.array([1]))
    with pytest.raises(DataError, match="data_batch_3.*2 images but 1 labels"):
        load_cifar10_pickle(root)
    write_cifar_batch(root / "data_batch_3", np.zeros((1, 3072), np.uint8), np.array([10]))
    with pytest.raises(DataError, match="data_batch_3.*outside 0..9"):
        load_cifar10_pickle(root)
    (root / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10_pickle(root)
    # A pickle referring to anything but numpy arrays is refused, not executed.
    (root / "data_batch_3").write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(DataError, match="data_batch_3.*forbidden"):
        load_cifar10_pickle(root)
    (root / "data_batch_3").unlink()
    with pytest.raises(DataError, match="missing data_batch_3"):
        load_cifar10_pickle(root)


@needs_pil
def test_cifar_pickle_numpy1_module_path(tmp_path):
    # Files written with numpy 1.x (the official ones) name numpy.core.multiarray.
    root = tmp_path / "b"
    make_cifar_pickles(root, n=1)
    x = np.arange(3072, dtype=np.uint32).astype(np.uint8).reshape(1, 3072)
    raw = pickle.dumps({b"data": x, b"labels": [7]}, protocol=2)
    assert b"numpy._core.multiarray" in raw
    (root / "test_batch").write_bytes(raw.replace(b"numpy._core.multiarray",
                                                  b"numpy.core.multiarray"))
    d = load_cifar10_pickle(root)
    np.testing.assert_array_equal(d.test_x.reshape(1, 3072), x)
    assert d.test_y.tolist() == [7]


def test_load_cifar10_prefers_pickles(tmp_path):
    tx, ty, _, _ = make_cifar_pickles(tmp_path / "cifar-10-batches-py", n=1)
    make_image_tree(tmp_path / "cifar10-jpg", CIFAR10_CLASSES, per_class=1, ext=".png")
    d = load_cifar10(tmp_path)
    np.testing.assert_array_equal(d.train_x, tx)


def test_load_cifar10_official_archive(tmp_path):
    src = tmp_path / "src"
    tx, ty, _, _ = make_cifar_pickles(src / "cifar-10-batches-py", n=1)
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar-10-python.tar.gz", "w:gz") as tf:
        tf.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    d = load_cifar10(data)
    np.testing.assert_array_equal(d.train_y, ty)


# ------------------------------------------------------------------ image folders


def save_image(path: Path, arr: np.ndarray) -> None:
    """Save ``arr`` (H, W, 3) or (H, W) uint8 as PNG/JPEG according to the suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        im.save(path, quality=95)
    else:
        im.save(path, compress_level=1)


def make_image_tree(root: Path, classes, per_class: int = 2, ext: str = ".png",
                    side: int = 32, gray: bool = False, seed: int = 0, names=None,
                    splits=("train", "test")):
    """``root/<split>/<class>/NNNN<ext>``; returns {split: (x (N,C,H,W), y, files)}."""
    rng = _rng(seed)
    out = {}
    for split in splits:
        xs, ys, files = [], [], []
        for label, cls in enumerate(sorted(classes)):
            for i in range(per_class):
                shape = (side, side) if gray else (side, side, 3)
                if ext == ".png":
                    arr = rng.integers(0, 256, shape, dtype=np.uint8)
                else:  # smooth content survives JPEG almost unchanged
                    arr = np.full(shape, 40 + 20 * label + 5 * i, dtype=np.uint8)
                name = names(split, cls, i) if names else f"{i:04d}{ext}"
                save_image(root / split / cls / name, arr)
                xs.append(arr[None] if gray else arr.transpose(2, 0, 1))
                ys.append(label)
                files.append(f"{cls}/{name}")
        out[split] = (np.stack(xs), np.array(ys), files)
    return out


@needs_pil
def test_image_folder_png_exact(tmp_path):
    ref = make_image_tree(tmp_path / "set", ["dog", "cat", "bird"], per_class=2)
    f = load_image_folder(tmp_path / "set" / "train")
    assert f.classes == ("bird", "cat", "dog")  # sorted
    assert f.x.shape == (6, 3, 32, 32) and f.x.dtype == np.uint8 and f.y.dtype == np.int64
    assert f.y.tolist() == [0, 0, 1, 1, 2, 2]
    assert f.files[0] == "bird/0000.png" and f.files[-1] == "dog/0001.png"
    np.testing.assert_array_equal(f.x, ref["train"][0])


@needs_pil
def test_image_folder_jpg_classes_gray_size(tmp_path):
    make_image_tree(tmp_path / "set", ["a", "b"], per_class=2, ext=".jpg")
    root = tmp_path / "set" / "train"
    (root / "a" / "notes.txt").write_text("ignored")
    f = load_image_folder(root, classes=["b", "a"])  # explicit label order
    assert f.classes == ("b", "a") and f.y.tolist() == [0, 0, 1, 1]
    assert f.files[0] == "b/0000.jpg"
    assert abs(int(f.x[0].astype(int).mean()) - 60) <= 2  # label 1 of the sorted tree
    g = load_image_folder(root, grayscale=True, size=(8, 16))
    assert g.x.shape == (4, 1, 8, 16)
    h = load_image_folder(root, size=5)
    assert h.x.shape == (4, 3, 5, 5)
    with pytest.raises(DataError, match="lacks the class sub-folder.*zebra"):
        load_image_folder(root, classes=["a", "zebra"])


@needs_pil
def test_image_folder_errors(tmp_path):
    root = tmp_path / "train"
    save_image(root / "a" / "0.png", np.zeros((4, 4, 3), np.uint8))
    save_image(root / "a" / "1.png", np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(DataError, match=r"1\.png.*same size"):
        load_image_folder(root)
    assert load_image_folder(root, size=4).x.shape == (2, 3, 4, 4)
    (root / "a" / "1.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot decode image .*1\.png"):
        load_image_folder(root)
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no"):
        load_image_folder(tmp_path / "empty")


@needs_pil
def test_image_folder_cache(tmp_path, monkeypatch):
    ref = make_image_tree(tmp_path / "set", ["a", "b"], per_class=2, splits=("train",))
    root = tmp_path / "set" / "train"
    first = load_image_folder(root)
    cached = list((Path(os.environ[ENV_CACHE]) / "image-folders").glob("*.npz"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*tmp"))

    def boom(*a, **k):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(images, "_decode", boom)
    again = load_image_folder(root)
    np.testing.assert_array_equal(again.x, first.x)
    assert again.files == first.files and again.classes == first.classes
    np.testing.assert_array_equal(again.x, ref["train"][0])
    monkeypatch.undo()
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))

    # Changing a file invalidates the cache (and the stale file is removed).
    new = np.full((32, 32, 3), 7, np.uint8)
    save_image(root / "b" / "0001.png", new)
    os.utime(root / "b" / "0001.png", ns=(1, 1))
    changed = load_image_folder(root)
    assert (changed.x[3] == 7).all()
    assert len(list(cached[0].parent.glob("*.npz"))) == 1
    # A corrupt cache file is ignored.
    only = next(cached[0].parent.glob("*.npz"))
    only.write_bytes(b"junk")
    np.testing.assert_array_equal(load_image_folder(root).x, changed.x)
    # cache=False neither reads nor writes.
    only.unlink()
    load_image_folder(root, cache=False)
    assert not list(cached[0].parent.glob("*.npz"))


@needs_pil
def test_load_cifar10_jpg_layout_and_archive(tmp_path):
    src = tmp_path / "src"
    make_image_tree(src / "cifar10-jpg", CIFAR10_CLASSES, per_class=1, ext=".jpg")
    data = tmp_path / "data"
    data.mkdir()
    with tarfile.open(data / "cifar10-jpg.tgz", "w:gz") as tf:
        tf.add(src / "cifar10-jpg", arcname="cifar10-jpg")
    d = load_cifar10(data)
    assert d.train_x.shape == (10, 3, 32, 32) and d.test_x.shape == (10, 3, 32, 32)
    assert d.train_y.tolist() == list(range(10)) and d.classes == CIFAR10_CLASSES
    with pytest.raises(DataError, match="CIFAR-10 not found.*cifar-10-batches-py.*cifar10-jpg"):
        load_cifar10(tmp_path / "src" / "cifar10-jpg" / "train")


# ------------------------------------------------------------------ ConvNetJS


def write_convnetjs(root: Path, batches: dict[int, np.ndarray], labels: np.ndarray) -> None:
    """Each batch: uint8 (1000, 3, 32, 32) -> PNG of 1000 rows x 1024 RGB pixels,
    pixel (y, x) of image r at column 32*y + x of row r."""
    root.mkdir(parents=True, exist_ok=True)
    for k, x in batches.items():
        strip = x.transpose(0, 2, 3, 1).reshape(1000, 1024, 3)
        Image.fromarray(strip).save(root / f"cifar10_batch_{k}.png", compress_level=1)
    (root / "cifar10_labels.js").write_text("var labels=[" + ", ".join(map(str, labels)) + "];\n")


@needs_pil
def test_convnetjs_layout(tmp_path):
    rng = _rng(1)
    b0 = np.zeros((1000, 3, 32, 32), np.uint8)
    b0[:, :, ::4, ::3] = rng.integers(0, 256, (1000, 3, 8, 11), dtype=np.uint8)
    b0[5, 0, 1, 2], b0[5, 1, 1, 2], b0[5, 2, 30, 31] = 11, 22, 33
    b2 = np.roll(b0, 1, axis=0)
    b50 = b0[::-1].copy()
    labels = rng.integers(0, 10, 51000)
    write_convnetjs(tmp_path / "cifar10-convnetjs", {0: b0, 2: b2, 50: b50}, labels)
    d = load_cifar10_convnetjs(tmp_path)
    assert d.train_x.shape == (2000, 3, 32, 32) and d.test_x.shape == (1000, 3, 32, 32)
    np.testing.assert_array_equal(d.train_x[:1000], b0)
    np.testing.assert_array_equal(d.train_x[1000:], b2)  # batch 2 = train images 2000..2999
    np.testing.assert_array_equal(d.test_x, b50)
    assert d.train_x[5, 0, 1, 2] == 11 and d.train_x[5, 2, 30, 31] == 33
    np.testing.assert_array_equal(d.train_y[:1000], labels[:1000])
    np.testing.assert_array_equal(d.train_y[1000:], labels[2000:3000])
    np.testing.assert_array_equal(d.test_y, labels[50000:])
    assert d.train_y.dtype == np.int64 and d.classes == CIFAR10_CLASSES


@needs_pil
def test_convnetjs_errors(tmp_path):
    root = tmp_path / "cifar10-convnetjs"
    x = np.zeros((1000, 3, 32, 32), np.uint8)
    write_convnetjs(root, {0: x, 50: x}, np.zeros(50999, int))
    with pytest.raises(DataError, match="50999 labels"):
        load_cifar10_convnetjs(tmp_path)
    (root / "cifar10_labels.js").write_text("labels = [1, 2, x];")
    with pytest.raises(DataError, match="entry 2"):
        load_cifar10_convnetjs(tmp_path)
    write_convnetjs(root, {}, np.zeros(51000, int))
    Image.fromarray(np.zeros((999, 1024, 3), np.uint8)).save(root / "cifar10_batch_0.png")
    with pytest.raises(DataError, match=r"cifar10_batch_0\.png.*1024x1000"):
        load_cifar10_convnetjs(tmp_path)
    (root / "cifar10_batch_50.png").unlink()
    with pytest.raises(DataError, match="cifar10_batch_50"):
        load_cifar10_convnetjs(tmp_path)


def test_parse_convnetjs_labels():
    assert parse_convnetjs_labels("var labels=[6, 9,9 ,4];\n").tolist() == [6, 9, 9, 4]
    assert parse_convnetjs_labels("var labels=[];").tolist() == []
    for bad in ("labels=[1,2", "var x=[1]", "var labels=[1,-2]", "var labels=[12]"):
        with pytest.raises(DataError):
            parse_convnetjs_labels(bad, "f.js")


# ------------------------------------------------------------------ FER-2013


def write_fer_csv(path: Path, rows, header=("emotion", "pixels", "Usage")) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        if header:
            w.writerow(header)
        w.writerows(rows)


def fer_rows(rng, spec):
    """spec: list of (emotion, usage) -> rows and the (N, 48, 48) pixel arrays."""
    rows, pix = [], []
    for emo, usage in spec:
        p = rng.integers(0, 256, 2304)
        rows.append([emo, " ".join(map(str, p)), usage])
        pix.append(p.reshape(48, 48))
    return rows, pix


def test_fer_csv_and_merge(tmp_path):
    rng = _rng(2)
    spec = [(0, "Training"), (1, "Training"), (2, "Training"), (3, "Training"),
            (4, "Training"), (5, "Training"), (6, "Training"), (1, "PublicTest"),
            (6, "PrivateTest"), (4, "PublicTest")]
    rows, pix = fer_rows(rng, spec)
    path = tmp_path / "fer2013.csv"
    write_fer_csv(path, rows)
    d7 = load_fer2013_csv(path, merge_disgust=False)
    assert d7.classes == FER2013_CLASSES and len(d7.classes) == 7
    assert d7.train_x.shape == (7, 1, 48, 48) and d7.train_x.dtype == np.uint8
    assert d7.train_y.tolist() == [0, 1, 2, 3, 4, 5, 6] and d7.test_y.tolist() == [1, 6, 4]
    np.testing.assert_array_equal(d7.train_x[3, 0], pix[3])
    np.testing.assert_array_equal(d7.test_x[1, 0], pix[8])
    d6 = load_fer2013_csv(path)  # merge_disgust=True by default (seed 003)
    assert d6.classes == ("angry", "fear", "happy", "sad", "surprise", "neutral")
    # by hand: angry 0->0, disgust 1->0, fear 2->1, happy 3->2, sad 4->3, surprise 5->4,
    # neutral 6->5
    assert d6.train_y.tolist() == [0, 0, 1, 2, 3, 4, 5] and d6.test_y.tolist() == [0, 5, 3]
    assert [d6.classes[v] for v in d6.train_y] == [
        "angry", "angry", "fear", "happy", "sad", "surprise", "neutral"]
    np.testing.assert_array_equal(d6.train_x, d7.train_x)
    assert load_fer2013_csv(path, test="public").test_y.tolist() == [0, 3]
    assert load_fer2013_csv(path, test="private").test_y.tolist() == [5]
    assert merge_fer2013_disgust(np.arange(7)).tolist() == [0, 0, 1, 2, 3, 4, 5]
    with pytest.raises(DataError):
        merge_fer2013_disgust(np.array([7]))
    with pytest.raises(DataError, match="test must be"):
        load_fer2013_csv(path, test="both")


def test_fer_csv_other_column_order_and_no_header(tmp_path):
    rng = _rng(3)
    rows, pix = fer_rows(rng, [(3, "Training"), (2, "PrivateTest")])
    path = tmp_path / "a.csv"
    write_fer_csv(path, [[r[0], r[2], r[1]] for r in rows], header=("emotion", " Usage", " pixels"))
    d = load_fer2013_csv(path, merge_disgust=False)
    assert d.train_y.tolist() == [3] and d.test_y.tolist() == [2]
    np.testing.assert_array_equal(d.test_x[0, 0], pix[1])
    write_fer_csv(path, rows, header=None)
    assert load_fer2013_csv(path, merge_disgust=False).train_y.tolist() == [3]


@pytest.mark.parametrize("bad,match", [
    (lambda r: [r[0], r[1] + " 7", r[2]], "pixels must be 2304"),
    (lambda r: [r[0], r[1].replace(" ", " x ", 1), r[2]], "pixels must be 2304"),
    (lambda r: [r[0], "256 " + r[1].split(" ", 1)[1], r[2]], "in 0..255"),
    (lambda r: ["7", r[1], r[2]], "emotion '7'"),
    (lambda r: [r[0], r[1], "Validation"], "unknown Usage 'Validation'"),
    (lambda r: [r[0], r[1]], "2 fields, expected 3"),
])
def test_fer_csv_malformed_row_names_line(tmp_path, bad, match):
    rng = _rng(4)
    rows, _ = fer_rows(rng, [(0, "Training")] * 5)
    rows[3] = bad(rows[3])  # header is line 1, so rows[3] is line 5
    path = tmp_path / "fer2013.csv"
    write_fer_csv(path, rows)
    with pytest.raises(DataError, match=f"fer2013.csv.*line 5.*{match}") as exc:
        load_fer2013_csv(path)
    assert "line 5" in str(exc.value)


def test_fer_csv_header_and_io_errors(tmp_path):
    path = tmp_path / "f.csv"
    write_fer_csv(path, [], header=("emotion", "pixels"))
    with pytest.raises(DataError, match="line 1.*usage"):
        load_fer2013_csv(path)
    write_fer_csv(path, [])
    with pytest.raises(DataError, match="no Training row"):
        load_fer2013_csv(path)
    with pytest.raises(DataError, match="cannot read"):
        load_fer2013_csv(tmp_path / "missing.csv")


def _fer_name(split, cls, i):
    if split == "train":
        return f"Training_{i}.jpg"
    return f"{'PublicTest' if i % 2 == 0 else 'PrivateTest'}_{i}.png"


@needs_pil
def test_fer_folders(tmp_path):
    folder_classes = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    make_image_tree(tmp_path / "fer2013", folder_classes, per_class=2, ext=".jpg", side=48,
                    gray=True, names=_fer_name, splits=("train",))
    ref = make_image_tree(tmp_path / "fer2013", folder_classes, per_class=3, ext=".png",
                          side=48, gray=True, names=_fer_name, splits=("test",))
    d7 = load_fer2013(tmp_path, merge_disgust=False)
    assert d7.classes == FER2013_CLASSES
    assert d7.train_x.shape == (14, 1, 48, 48) and d7.test_x.shape == (21, 1, 48, 48)
    # labels follow the Kaggle codes, not the alphabetical folder order
    assert d7.train_y.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6]
    by_file = dict(zip(load_image_folder(tmp_path / "fer2013" / "test",
                                         classes=FER2013_CLASSES).files, d7.test_y))
    assert by_file["neutral/PublicTest_0.png"] == 6 and by_file["sad/PrivateTest_1.png"] == 4
    assert by_file["surprise/PublicTest_2.png"] == 5
    d6 = load_fer2013(tmp_path)
    assert d6.classes == FER2013_CLASSES_MERGED
    assert d6.train_y.tolist() == [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    # the exact PNG pixels of neutral/PublicTest_0.png (alphabetical index 4 in ref)
    x_ref = ref["test"][0][4 * 3]
    np.testing.assert_array_equal(d6.test_x[list(by_file).index("neutral/PublicTest_0.png")],
                                  x_ref)
    pub, priv = load_fer2013(tmp_path, test="public"), load_fer2013(tmp_path, test="private")
    assert len(pub.test_y) == 14 and len(priv.test_y) == 7


def test_fer_csv_fallback_and_missing(tmp_path):
    rows, _ = fer_rows(_rng(5), [(1, "Training"), (0, "PublicTest")])
    write_fer_csv(tmp_path / "fer2013.csv", rows)
    assert load_fer2013(tmp_path).train_y.tolist() == [0]
    (tmp_path / "fer2013.csv").unlink()
    with pytest.raises(DataError, match="fer2013.*fer2013.csv"):
        load_fer2013(tmp_path)


# ------------------------------------------------------------------ normalisation


def test_channel_stats_and_normalized_dataset():
    rng = _rng(6)
    x = rng.integers(0, 256, (50, 3, 4, 5), dtype=np.uint8)
    mean, std = channel_stats(x)
    f = x.astype(np.float64) / 255
    np.testing.assert_allclose(mean, f.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, f.std(axis=(0, 2, 3)), rtol=1e-10)
    ds = to_normalized_dataset(x, np.arange(50), mean, std)
    img, lab = ds.tensors
    assert img.dtype == torch.float32 and lab.dtype == torch.int64 and img.shape == x.shape
    assert torch.allclose(img.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(img.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5)
    const = np.full((2, 1, 2, 2), 9, np.uint8)
    m, s = channel_stats(const)
    assert s[0] == 0 and torch.isfinite(to_normalized_dataset(const, [0, 1], m, s).tensors[0]).all()
    with pytest.raises(DataError):
        channel_stats(x.astype(np.float32))
    with pytest.raises(DataError):
        to_normalized_dataset(x, np.arange(49), mean, std)


def test_registered_datasets(tmp_path):
    for name in ("cifar10", "cifar10-convnetjs", "fer2013"):
        assert name in DATASETS
    make_cifar_pickles(tmp_path / "cifar-10-batches-py", n=3)
    b = load_dataset("cifar10", tmp_path)
    assert b.num_classes == 10 and b.input_shape == (3, 32, 32)
    x, y = b.train.tensors
    assert x.dtype == torch.float32 and x.shape == (15, 3, 32, 32) and y.dtype == torch.int64
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert b.test.tensors[0].shape == (3, 3, 32, 32)
    rows, _ = fer_rows(_rng(7), [(k, "Training") for k in range(7)] + [(2, "PublicTest")])
    write_fer_csv(tmp_path / "fer2013.csv", rows)
    f = load_dataset("fer2013", tmp_path)
    assert f.num_classes == 6 and f.input_shape == (1, 48, 48)
    assert f.train.tensors[1].tolist() == [0, 0, 1, 2, 3, 4, 5]
    with torch.no_grad():
        assert build_model("fernet")(f.test.tensors[0]).shape == (1, 6)


# ------------------------------------------------------------------ models


FER_TABLE3 = {"conv1": 288, "conv2": 9216, "conv3": 9216, "conv4": 18432, "conv5": 36864,
              "conv6": 36864, "conv7": 73728, "conv8": 147456, "conv9": 147456,
              "fc1": 294912, "fc2": 4096, "fc3": 384}


def test_fernet_matches_table3():
    m = FERNet()
    counts = {n: m.get_submodule(n).weight.numel() for n in FER_TABLE3}
    assert counts == FER_TABLE3 and sum(counts.values()) == 778_912
    weights = sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight"))
    assert weights == 778_912
    biases = 3 * 32 + 3 * 64 + 3 * 128 + 64 + 64 + 6
    assert sum(p.numel() for p in m.parameters()) == 778_912 + biases
    with torch.no_grad():
        assert m(torch.zeros(3, 1, 48, 48)).shape == (3, 6)
        assert FERNet(num_classes=7)(torch.zeros(1, 1, 48, 48)).shape == (1, 7)
    bn = FERNet(batchnorm=True, dropout=0.3)
    assert sum(bn.get_submodule(n).weight.numel() for n in FER_TABLE3) == 778_912
    assert bn.conv1.bias is None and isinstance(bn.bn9, torch.nn.BatchNorm2d)
    with pytest.raises(ConfigError):
        FERNet(input_size=50)
    with pytest.raises(ConfigError):
        FERNet(dropout=1.0)


def resnet_params(n: int, shortcut: str = "B", classes: int = 10) -> int:
    """Hand count: conv 3x3 weights k*k*cin*cout, BN 2*c, fc (64+1)*classes."""
    total = 9 * 3 * 16 + 2 * 16  # stem conv + BN
    cin = 16
    for c in (16, 32, 64):
        for j in range(n):
            total += 9 * cin * c + 2 * c + 9 * c * c + 2 * c
            if cin != c and shortcut == "B":
                total += cin * c + 2 * c  # 1x1 projection + BN
            cin = c
    return total + 64 * classes + classes


def test_resnet_parameter_counts():
    assert resnet_params(3) == 272_474 and resnet_params(3, "A") == 269_722  # ~0.27M
    assert resnet_params(9) == 855_770  # ~0.85M
    for model, expected in ((resnet20(), resnet_params(3)), (resnet56(), resnet_params(9)),
                            (resnet20(shortcut="A"), resnet_params(3, "A")),
                            (CifarResNet(2, num_classes=5), resnet_params(2, classes=5))):
        assert sum(p.numel() for p in model.parameters()) == expected
    layers = sum(1 for m in resnet20().modules()
                 if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert layers + 1 == 20  # 19 conv3x3 + fc
    with pytest.raises(ConfigError):
        CifarResNet(3, shortcut="C")


def vgg_params(cfg, classes=10, hidden=512, in_ch=3, side=1) -> int:
    """Hand count: conv 3x3 without bias + BN per conv; fc1 sees cin * side**2 inputs."""
    total, cin = 0, in_ch
    for v in cfg:
        if v != "M":
            total += 9 * cin * v + 2 * v
            cin = v
    feats = cin * side * side
    if hidden:
        return total + (feats + 1) * hidden + (hidden + 1) * classes
    return total + (feats + 1) * classes


def test_vgg_parameter_counts():
    assert sum(p.numel() for p in vgg_cifar().parameters()) == vgg_params(VGG_CFGS["vgg11"])
    m = vgg_cifar("vgg16", num_classes=100, hidden=0)
    assert sum(p.numel() for p in m.parameters()) == vgg_params(VGG_CFGS["vgg16"], 100, 0)
    assert m.num_convs == 13 and not hasattr(m, "fc2")
    tiny = vgg_cifar([8, "M", 16, "M"], in_channels=1, input_size=8, hidden=4)
    assert sum(p.numel() for p in tiny.parameters()) == vgg_params([8, "M", 16, "M"], 10, 4,
                                                                   in_ch=1, side=2)
    with torch.no_grad():
        assert tiny(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ConfigError):
        vgg_cifar("vgg12")
    with pytest.raises(ConfigError):
        vgg_cifar("vgg11", input_size=48 + 8)


@pytest.mark.parametrize("name,shape", [
    # small inputs keep the test cheap; the ResNets pool globally, so any size works
    ("fernet", (2, 1, 48, 48)), ("resnet20", (2, 3, 8, 8)), ("resnet56", (2, 3, 8, 8)),
    ("vggcifar", (2, 3, 32, 32)),
])
def test_models_registered_and_fx_traceable(name, shape):
    torch.manual_seed(0)
    model = build_model(name).eval()
    assert name in MODELS
    gm = torch.fx.symbolic_trace(model)
    x = torch.randn(*shape)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (2, 6 if name == "fernet" else 10)
        torch.testing.assert_close(gm(x), out)


def test_model_name_normalisation_and_variants():
    assert isinstance(build_model("FERNet"), FERNet)
    assert isinstance(build_model("ResNet-20"), CifarResNet)
    assert build_model("vgg_cifar", cfg="vgg13").cfg_name == "vgg13"
    for model in (resnet20(shortcut="A"), FERNet(batchnorm=True, dropout=0.5),
                  vgg_cifar("vgg11", hidden=0, dropout=0.2)):
        torch.fx.symbolic_trace(model)


# ------------------------------------------------------------------ integration


def _real_data_dir() -> str:
    data = os.environ.get(ENV_DATA)
    if not data:
        pytest.skip(f"{ENV_DATA} not set: point it at the folder holding cifar10-jpg.tgz, "
                    "cifar10-convnetjs.tgz and fer2013.tgz (e.g. /work/shared/data) to run "
                    "this test")
    return data


def _load_or_skip(fn, data, what):
    try:
        return fn(data)
    except DataError as exc:
        if "not found" in str(exc):
            pytest.skip(f"{what} absent from {ENV_DATA}={data!r}: {exc}")
        raise


@pytest.mark.integration
@needs_pil
def test_real_fer2013_integration():
    data = _real_data_dir()
    d = _load_or_skip(load_fer2013, data, "FER-2013")
    assert d.train_x.shape == (28709, 1, 48, 48) and d.test_x.shape == (7178, 1, 48, 48)
    assert d.train_x.dtype == np.uint8 and d.train_y.dtype == np.int64
    # angry + disgust, fear, happy, sad, surprise, neutral (counts of fer2013.tgz)
    assert np.bincount(d.train_y).tolist() == [3995 + 436, 4097, 7215, 4830, 3171, 4965]
    assert np.bincount(d.test_y).tolist() == [958 + 111, 1024, 1774, 1247, 831, 1233]


@pytest.mark.integration
@needs_pil
def test_real_cifar10_integration():
    data = _real_data_dir()
    d = _load_or_skip(load_cifar10, data, "CIFAR-10")
    assert d.train_x.shape == (50000, 3, 32, 32) and d.test_x.shape == (10000, 3, 32, 32)
    assert np.bincount(d.train_y).tolist() == [5000] * 10
    assert np.bincount(d.test_y).tolist() == [1000] * 10


@pytest.mark.integration
@needs_pil
def test_real_cifar10_convnetjs_integration():
    data = _real_data_dir()
    d = _load_or_skip(load_cifar10_convnetjs, data, "CIFAR-10 ConvNetJS")
    assert d.train_x.shape == (4000, 3, 32, 32) and d.test_x.shape == (1000, 3, 32, 32)
    assert d.train_y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # official order
    # Pixel layout check against the JPEG copy (file NNNN of a class = its NNNN-th image
    # in the official order): small difference (JPEG q75) when paired right, large when not.
    from mobileprune.data.paths import locate_dataset

    try:
        jpg = locate_dataset("cifar10-jpg", data, archive="cifar10-jpg.tgz")
    except DataError:
        pytest.skip("cifar10-jpg.tgz absent: layout cross-check skipped")
    seen: dict[int, int] = {}
    right, wrong = [], []
    for i in range(40):
        c = int(d.train_y[i])
        j = seen.get(c, 0)
        seen[c] = j + 1
        ref = np.asarray(Image.open(jpg / "train" / CIFAR10_CLASSES[c] / f"{j:04d}.jpg")
                         .convert("RGB")).transpose(2, 0, 1).astype(float)
        right.append(np.abs(d.train_x[i] - ref).mean())
        wrong.append(np.abs(d.train_x[i + 1] - ref).mean())
    assert np.mean(right) < 10 and np.mean(wrong) > 30
