r"""Image data sets: CIFAR-10 (pickle batches, JPEG folders, ConvNetJS PNG strips) and
FER-2013 (JPEG folders, Kaggle csv), plus a cached reader for image folders.

Every loader returns :class:`ImageArrays`: ``uint8`` images of shape ``(N, C, H, W)``
and ``int64`` labels, for a training and a test split, with the class names.
:func:`channel_stats` and :func:`to_normalized_dataset` turn them into standardised
``float32`` tensors.

Data sets are read from the user's data directory (``--data-dir`` or
``$MOBILEPRUNE_DATA``), unpacked or as archives unpacked once into the cache; see
:mod:`mobileprune.data.paths`. Decoding JPEG/PNG files needs Pillow (``pip install
pillow``); decoded image folders are cached as ``.npz`` files in
:func:`~mobileprune.data.paths.cache_dir` so that tens of thousands of small JPEGs
are decoded only once.

Label conventions:

* CIFAR-10: the official order :data:`CIFAR10_CLASSES` (airplane = 0 ... truck = 9).
* FER-2013: the Kaggle ``emotion`` codes, :data:`FER2013_CLASSES` (angry = 0,
  disgust = 1, fear = 2, happy = 3, sad = 4, surprise = 5, neutral = 6), whether read
  from the csv or from the class folders. With ``merge_disgust=True`` (seed 003) the
  rare *disgust* class is merged into *angry*, giving six classes
  :data:`FER2013_CLASSES_MERGED` (angry = 0, fear = 1, happy = 2, sad = 3,
  surprise = 4, neutral = 5); see :func:`merge_fer2013_disgust`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import TensorDataset

from mobileprune.data.paths import cache_dir, locate_dataset, resolve_data_dir, write_npz_cache
from mobileprune.errors import DataError

__all__ = [
    "CIFAR10_CLASSES",
    "FER2013_CLASSES",
    "FER2013_CLASSES_MERGED",
    "IMAGE_EXTENSIONS",
    "ImageArrays",
    "ImageFolder",
    "load_cifar10_pickle",
    "load_image_folder",
    "load_cifar10",
    "load_cifar10_convnetjs",
    "parse_convnetjs_labels",
    "load_fer2013",
    "load_fer2013_csv",
    "merge_fer2013_disgust",
    "channel_stats",
    "to_normalized_dataset",
]

#: CIFAR-10 class names in label order (the order of ``batches.meta``).
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                   "horse", "ship", "truck")
#: FER-2013 class names in the order of the Kaggle ``emotion`` codes 0..6.
FER2013_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
#: FER-2013 classes after merging *disgust* into *angry* (seed 003).
FER2013_CLASSES_MERGED = ("angry", "fear", "happy", "sad", "surprise", "neutral")
#: File name suffixes read by :func:`load_image_folder` (case-insensitive).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")

_CIFAR_PICKLE_DIR = "cifar-10-batches-py"
_CIFAR_PICKLE_ARCHIVE = "cifar-10-python.tar.gz"
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SHAPE = (3, 32, 32)
_CONVNETJS_ROWS = 1000
_CONVNETJS_TEST_BATCH = 50
_CONVNETJS_LABELS = "cifar10_labels.js"
_CONVNETJS_TRAIN_SIZE = 50000
_FER_SIDE = 48
_FER_PIXELS = _FER_SIDE * _FER_SIDE
_FER_CSV_COLUMNS = ("emotion", "pixels", "usage")  # order of a csv without header
_FER_MERGE = np.array([0, 0, 1, 2, 3, 4, 5], dtype=np.int64)
_FER_TEST_PARTS = {"all": ("PublicTest", "PrivateTest"), "public": ("PublicTest",),
                   "private": ("PrivateTest",)}
_CACHE_VERSION = 1
_CACHE_SUBDIR = "image-folders"


class ImageArrays(NamedTuple):
    r"""An image data set as numpy arrays.

    Attributes:
        train_x (numpy.ndarray): training images, ``uint8`` of shape ``(N, C, H, W)``.
        train_y (numpy.ndarray): training labels, ``int64`` of shape ``(N,)``.
        test_x (numpy.ndarray): test images, ``uint8`` of shape ``(M, C, H, W)``.
        test_y (numpy.ndarray): test labels, ``int64`` of shape ``(M,)``.
        classes (tuple of str): class names; label ``i`` is ``classes[i]``.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: tuple[str, ...]


class ImageFolder(NamedTuple):
    r"""The images of one folder of class sub-folders (see :func:`load_image_folder`).

    Attributes:
        x (numpy.ndarray): images, ``uint8`` of shape ``(N, C, H, W)``, ordered by
            class, then by file name.
        y (numpy.ndarray): labels, ``int64`` of shape ``(N,)``: indices into
            ``classes``.
        classes (tuple of str): class names (sub-folder names).
        files (tuple of str): path of each image relative to the folder, e.g.
            ``"cat/0001.jpg"``.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    files: tuple[str, ...]


# ----------------------------------------------------------------- CIFAR pickles


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickler that only rebuilds numpy arrays (no arbitrary code execution)."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol-2 pickles of bytes written by Python 3
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name} in a data batch")


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch -> uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``."""
    try:
        with open(path, "rb") as f:
            obj = _NumpyUnpickler(f, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read CIFAR-10 batch {str(path)!r}: {exc}") from exc
    except Exception as exc:  # pickle raises many types on garbage input
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} is not a valid python pickle batch: {exc}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} holds a {type(obj).__name__}, expected a dict "
            "with keys b'data' and b'labels'")
    obj = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    if "data" not in obj or "labels" not in obj:
        raise DataError(
            f"CIFAR-10 batch {str(path)!r} lacks key "
            f"{'data' if 'data' not in obj else 'labels'!r} (keys: {sorted(map(str, obj))})")
    data, labels = obj["data"], obj["labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != 3072:
        desc = (f"{data.dtype} of shape {data.shape}" if isinstance(data, np.ndarray)
                else type(data).__name__)
        raise DataError(
            f"CIFAR-10 batch {str(path)!r}: 'data' holds {desc}, expected uint8 of shape "
            "(N, 3072)")
    try:
        y = np.asarray(labels)
    except Exception as exc:
        raise DataError(f"CIFAR-10 batch {str(path)!r}: unreadable labels: {exc}") from exc
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r}: 'labels' holds {y.dtype} of shape {y.shape}, "
            "expected N integers")
    if len(y) != len(data):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r}: {len(data)} images but {len(y)} labels")
    if len(y) and (y.min() < 0 or y.max() > 9):
        raise DataError(
            f"CIFAR-10 batch {str(path)!r}: labels outside 0..9 (min {y.min()}, "
            f"max {y.max()})")
    return data.reshape(-1, *_CIFAR_SHAPE).copy(), y.astype(np.int64)


def _cifar_meta_classes(root: Path) -> tuple[str, ...]:
    path = root / "batches.meta"
    if not path.is_file():
        return CIFAR10_CLASSES
    try:
        with open(path, "rb") as f:
            meta = _NumpyUnpickler(f, encoding="bytes").load()
        names = meta.get(b"label_names", meta.get("label_names"))
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except Exception as exc:
        raise DataError(
            f"CIFAR-10 meta file {str(path)!r} is malformed: {exc}") from exc
    if len(classes) != 10:
        raise DataError(
            f"CIFAR-10 meta file {str(path)!r} lists {len(classes)} label names, expected 10")
    return classes


def load_cifar10_pickle(root: str | os.PathLike[str]) -> ImageArrays:
    r"""Read the official CIFAR-10 python batches from the folder ``root``.

    ``root`` is the folder ``cifar-10-batches-py`` of ``cifar-10-python.tar.gz``: the
    training batches ``data_batch_1`` .. ``data_batch_5``, the test batch
    ``test_batch`` and optionally ``batches.meta`` (class names). Each batch is a
    pickled dict with ``b'data'``, a ``uint8`` array of shape ``(N, 3072)`` (the 1024
    red, then 1024 green, then 1024 blue values of each image, rows top to bottom) and
    ``b'labels'``, a list of ``N`` ints in 0..9. Only numpy arrays may be rebuilt
    from the pickles: a file referring to any other Python object is rejected, so a
    tampered file cannot run code.

    Args:
        root (str or os.PathLike): the folder holding the batches.

    Returns:
        ImageArrays: ``uint8`` images ``(N, 3, 32, 32)`` (50,000 train and 10,000 test
        for the official files), ``int64`` labels, and the class names.

    Raises:
        DataError: naming the file, if a batch is missing, is not a valid pickle of
            the format above, or has labels outside 0..9.

    Examples:
        >>> d = load_cifar10_pickle("cifar-10-batches-py")  # doctest: +SKIP
        >>> d.train_x.shape, d.classes[0]  # doctest: +SKIP
        ((50000, 3, 32, 32), 'airplane')
    """
    root = Path(root)
    missing = [n for n in _CIFAR_TRAIN_BATCHES + (_CIFAR_TEST_BATCH,) if not (root / n).is_file()]
    if missing:
        raise DataError(
            f"CIFAR-10 python batches incomplete in {str(root)!r}: missing {', '.join(missing)}")
    parts = [_read_cifar_batch(root / n) for n in _CIFAR_TRAIN_BATCHES]
    test_x, test_y = _read_cifar_batch(root / _CIFAR_TEST_BATCH)
    return ImageArrays(np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]),
                       test_x, test_y, _cifar_meta_classes(root))


# ----------------------------------------------------------------- image folders


def _pil():
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "decoding JPEG/PNG images needs Pillow: install it with 'pip install pillow'"
        ) from exc
    return Image


def _pil_version() -> str:
    """Pillow's version (part of the cache keys: decoding may change with it); "" if absent."""
    try:
        import PIL
    except ImportError:  # pragma: no cover - decoding will report it
        return ""
    return str(PIL.__version__)


def _as_size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)  # type: ignore[union-attr]
        except (TypeError, ValueError) as exc:
            raise DataError(f"size must be an int or (height, width), got {size!r}") from exc
    if h < 1 or w < 1:
        raise DataError(f"size must be positive, got {size!r}")
    return h, w


def _scan_folder(root: Path, classes: Sequence[str] | None) -> tuple[
        tuple[str, ...], list[tuple[str, int]], list[tuple[str, int, int]]]:
    """Class names, (relative file, label) pairs and (file, size, mtime) stats."""
    if not root.is_dir():
        raise DataError(f"image folder {str(root)!r} does not exist or is not a directory")
    if classes is None:
        classes = tuple(sorted(e.name for e in os.scandir(root)
                               if e.is_dir() and not e.name.startswith(".")))
        if not classes:
            raise DataError(f"image folder {str(root)!r} has no class sub-folders")
    else:
        classes = tuple(str(c) for c in classes)
        if len(set(classes)) != len(classes):
            raise DataError(f"duplicate class names in {classes!r}")
        missing = [c for c in classes if not (root / c).is_dir()]
        if missing:
            raise DataError(
                f"image folder {str(root)!r} lacks the class sub-folder(s) "
                f"{', '.join(missing)}")
    items: list[tuple[str, int]] = []
    stats: list[tuple[str, int, int]] = []
    for label, cls in enumerate(classes):
        entries = sorted((e for e in os.scandir(root / cls)
                          if e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()),
                         key=lambda e: e.name)
        for e in entries:
            rel = f"{cls}/{e.name}"
            st = e.stat()
            items.append((rel, label))
            stats.append((rel, st.st_size, st.st_mtime_ns))
    if not items:
        raise DataError(
            f"image folder {str(root)!r} holds no {'/'.join(IMAGE_EXTENSIONS)} files in "
            f"its class sub-folders {', '.join(classes)}")
    return classes, items, stats


def _cache_path(root: Path, classes: tuple[str, ...], size, grayscale: bool,
                stats: list[tuple[str, int, int]]) -> Path:
    h = hashlib.sha256()
    h.update(json.dumps({"v": _CACHE_VERSION, "root": str(root.resolve()),
                         "mtime_ns": root.stat().st_mtime_ns, "classes": classes,
                         "size": size, "gray": grayscale, "pillow": _pil_version()}).encode())
    for rel, nbytes, mtime in stats:
        h.update(f"\n{rel}\0{nbytes}\0{mtime}".encode())
    # The prefix names the folder and the arguments; the suffix its current content.
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{root.parent.name}-{root.name}")[:60]
    what = json.dumps([str(root.resolve()), classes, size, grayscale])
    where = hashlib.sha256(what.encode()).hexdigest()[:8]
    return cache_dir() / _CACHE_SUBDIR / f"{name}-{where}-{h.hexdigest()[:24]}.npz"


def _read_cache(path: Path, n: int, classes: tuple[str, ...]) -> ImageFolder | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y = z["x"], z["y"]
            cached_classes = tuple(str(c) for c in z["classes"])
            files = tuple(str(f) for f in z["files"])
    except (OSError, KeyError, ValueError, EOFError):
        return None
    if (x.dtype != np.uint8 or x.ndim != 4 or len(x) != n or y.shape != (n,)
            or cached_classes != classes or len(files) != n):
        return None
    return ImageFolder(x, y.astype(np.int64), classes, files)


def _write_cache(path: Path, folder: ImageFolder) -> None:
    write_npz_cache(path, {"x": folder.x, "y": folder.y,
                           "classes": np.array(folder.classes, dtype=str),
                           "files": np.array(folder.files, dtype=str)}, "image")


def _decode(root: Path, items: list[tuple[str, int]], size: tuple[int, int] | None,
            grayscale: bool) -> np.ndarray:
    image = _pil()
    mode = "L" if grayscale else "RGB"
    out: np.ndarray | None = None
    first = ""
    for i, (rel, _) in enumerate(items):
        path = root / rel
        try:
            with image.open(path) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as exc:
            raise DataError(f"cannot decode image {str(path)!r}: {exc}") from exc
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if out is None:
            out = np.empty((len(items),) + arr.shape, dtype=np.uint8)
            first = rel
        elif arr.shape != out.shape[1:]:
            raise DataError(
                f"image {str(path)!r} is {arr.shape[1]}x{arr.shape[0]}, but {first!r} is "
                f"{out.shape[2]}x{out.shape[1]}; all images of {str(root)!r} must have the "
                "same size (or pass size=...)")
        out[i] = arr
    assert out is not None
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2))


def load_image_folder(
    root: str | os.PathLike[str],
    classes: Sequence[str] | None = None,
    size: int | Sequence[int] | None = None,
    grayscale: bool = False,
    cache: bool = True,
) -> ImageFolder:
    r"""Read the images of one split stored as ``<root>/<class>/<file>`` folders.

    ``root`` is one split folder, e.g. ``cifar10-jpg/train``; its sub-folders are the
    classes and hold ``.jpg``, ``.jpeg`` or ``.png`` files (other files and hidden
    sub-folders are ignored). Images are ordered by class, then by file name, and
    decoded with Pillow to RGB (or gray).

    Decoding is cached: the arrays are saved as an ``.npz`` file in
    ``cache_dir()/image-folders/``, keyed by the folder's absolute path and
    modification time, the name, size and modification time of every image, the
    arguments and the Pillow version, so any change of the folder triggers a new
    decoding. The cache file is written atomically (temporary file, then rename); if
    it cannot be written, a :class:`RuntimeWarning` is issued and the arrays are
    returned anyway.

    Args:
        root (str or os.PathLike): the split folder.
        classes (sequence of str, optional): class sub-folders to read, in label
            order; other sub-folders are ignored. Default: ``None`` (all
            non-hidden sub-folders, sorted by name).
        size (int or (int, int), optional): resize every image to ``size`` x ``size``
            or ``(height, width)`` (bilinear). Default: ``None``: no resizing, and all
            images must have the same size.
        grayscale (bool, optional): decode to one gray channel instead of RGB.
            Default: ``False``.
        cache (bool, optional): use and write the decoded-image cache.
            Default: ``True``.

    Returns:
        ImageFolder: ``x`` uint8 ``(N, C, H, W)`` with ``C`` 3 (or 1), ``y`` int64
        ``(N,)``, ``classes`` and the relative ``files``.

    Raises:
        DataError: if the folder or a requested class sub-folder is missing, it holds
            no image, an image cannot be decoded (naming the file), images differ in
            size while ``size`` is ``None``, or Pillow is not installed.

    Examples:
        >>> f = load_image_folder("cifar10-jpg/train")  # doctest: +SKIP
        >>> f.x.shape, f.classes[:2], f.files[0]  # doctest: +SKIP
        ((50000, 3, 32, 32), ('airplane', 'automobile'), 'airplane/0000.jpg')
    """
    root = Path(root)
    hw = _as_size(size)
    cls, items, stats = _scan_folder(root, classes)
    key_path = _cache_path(root, cls, hw, bool(grayscale), stats) if cache else None
    if key_path is not None and key_path.is_file():
        hit = _read_cache(key_path, len(items), cls)
        if hit is not None:
            return hit
    x = _decode(root, items, hw, bool(grayscale))
    folder = ImageFolder(x, np.array([lab for _, lab in items], dtype=np.int64), cls,
                         tuple(rel for rel, _ in items))
    if key_path is not None:
        _write_cache(key_path, folder)
    return folder


# ----------------------------------------------------------------------- CIFAR-10


def _check_cifar_split(x: np.ndarray, where: str) -> None:
    if x.shape[1:] != _CIFAR_SHAPE:
        raise DataError(f"CIFAR-10 images in {where!r} have shape {x.shape[1:]}, "
                        f"expected {_CIFAR_SHAPE}")


def load_cifar10(data_dir: str | os.PathLike[str] | None = None) -> ImageArrays:
    r"""Load CIFAR-10 from the data directory.

    Two layouts are recognised, in this order:

    1. the official python batches: folder ``cifar-10-batches-py`` (or the data
       directory itself holding ``data_batch_1``), or the official archive
       ``cifar-10-python.tar.gz`` (unpacked once into the cache); read with
       :func:`load_cifar10_pickle`; exact pixels;
    2. the JPEG folders of ``cifar10-jpg.tgz``: ``cifar10-jpg/{train,test}/<class>/
       NNNN.jpg`` (or the unpacked folder ``cifar10-jpg``), read with
       :func:`load_image_folder` (cached). These are a quality-75 JPEG re-encoding
       (about 30.5 dB PSNR), so accuracies come out a little below published
       CIFAR-10 numbers. File ``NNNN`` of a class is the ``NNNN``-th image of that
       class in the official order; images are ordered by class here, so shuffle
       before training.

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to the
            environment variable ``MOBILEPRUNE_DATA``. Default: ``None``.

    Returns:
        ImageArrays: ``uint8`` images ``(50000, 3, 32, 32)`` / ``(10000, 3, 32, 32)``,
        ``int64`` labels in the order of :data:`CIFAR10_CLASSES`.

    Raises:
        DataError: if neither layout is found (the message lists the places looked
            at), or a file is malformed.

    Examples:
        >>> c = load_cifar10("/work/shared/data")  # doctest: +SKIP
        >>> c.train_x.shape, c.test_x.shape  # doctest: +SKIP
        ((50000, 3, 32, 32), (10000, 3, 32, 32))
    """
    root = resolve_data_dir(data_dir)
    if ((root / _CIFAR_PICKLE_DIR).is_dir() or (root / "data_batch_1").is_file()
            or (root / _CIFAR_PICKLE_ARCHIVE).is_file()):
        folder = locate_dataset(_CIFAR_PICKLE_DIR, data_dir, archive=_CIFAR_PICKLE_ARCHIVE,
                                marker="data_batch_1")
        return load_cifar10_pickle(folder)
    try:
        folder = locate_dataset("cifar10-jpg", data_dir, archive="cifar10-jpg.tgz")
    except DataError as exc:
        raise DataError(
            f"CIFAR-10 not found in data directory {str(root)!r}: looked for the python "
            f"batches ({_CIFAR_PICKLE_DIR}/ or {_CIFAR_PICKLE_ARCHIVE}) and the JPEG "
            f"folders (cifar10-jpg/ or cifar10-jpg.tgz)") from exc
    train = load_image_folder(folder / "train", classes=CIFAR10_CLASSES)
    test = load_image_folder(folder / "test", classes=CIFAR10_CLASSES)
    _check_cifar_split(train.x, str(folder / "train"))
    _check_cifar_split(test.x, str(folder / "test"))
    return ImageArrays(train.x, train.y, test.x, test.y, CIFAR10_CLASSES)


def parse_convnetjs_labels(text: str, name: str = "<labels>") -> np.ndarray:
    r"""Parse the ConvNetJS CIFAR-10 label file ``var labels=[6, 9, ...];``.

    Args:
        text (str): the file content.
        name (str, optional): file name used in error messages. Default:
            ``"<labels>"``.

    Returns:
        numpy.ndarray: ``int64`` labels in 0..9.

    Raises:
        DataError: if the content is not one ``labels`` array of integers in 0..9.

    Examples:
        >>> parse_convnetjs_labels("var labels=[6, 9, 9];").tolist()
        [6, 9, 9]
    """
    m = re.fullmatch(r"\s*(?:var\s+)?labels\s*=\s*\[([^\]]*)\]\s*;?\s*", text)
    if m is None:
        raise DataError(f"ConvNetJS label file {name!r} is not of the form "
                        "'var labels=[...];'")
    body = m.group(1).strip()
    tokens = [t.strip() for t in body.split(",")] if body else []
    if tokens and tokens[-1] == "":
        tokens.pop()  # trailing comma
    bad = next((i for i, t in enumerate(tokens) if not t.isdigit()), None)
    if bad is not None:
        raise DataError(f"ConvNetJS label file {name!r}: entry {bad} ({tokens[bad]!r}) is "
                        "not a non-negative integer")
    y = np.array([int(t) for t in tokens], dtype=np.int64)
    if len(y) and y.max() > 9:
        raise DataError(f"ConvNetJS label file {name!r}: label {int(y.max())} outside 0..9")
    return y


def _read_convnetjs_png(path: Path) -> np.ndarray:
    image = _pil()
    try:
        with image.open(path) as im:
            if im.mode not in ("RGB", "RGBA", "P"):
                raise DataError(f"ConvNetJS batch {str(path)!r} has image mode {im.mode}, "
                                "expected RGB or RGBA")
            a = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot decode ConvNetJS batch {str(path)!r}: {exc}") from exc
    if a.shape != (_CONVNETJS_ROWS, 32 * 32, 3):
        raise DataError(
            f"ConvNetJS batch {str(path)!r} is {a.shape[1]}x{a.shape[0]} pixels, expected "
            f"{32 * 32}x{_CONVNETJS_ROWS} (one 32x32 image per row)")
    # Row r is image r: its 1024 pixels in row-major order (y, then x), RGB each.
    return np.ascontiguousarray(a.reshape(_CONVNETJS_ROWS, 32, 32, 3).transpose(0, 3, 1, 2))


def load_cifar10_convnetjs(data_dir: str | os.PathLike[str] | None = None) -> ImageArrays:
    r"""Load the lossless CIFAR-10 subset of ConvNetJS (``cifar10-convnetjs.tgz``).

    The folder ``cifar10-convnetjs`` (or its archive, or a data directory holding
    ``cifar10_labels.js`` directly) holds PNG strips ``cifar10_batch_<k>.png``: 1000
    rows of 1024 RGB pixels, row ``r`` being image ``1000 k + r`` of the official
    order, its pixels row-major (pixel ``(y, x)`` at column ``32 y + x``); batches
    ``0`` .. ``49`` are training images, batch ``50`` the first 1000 test images.
    ``cifar10_labels.js`` is ``var labels=[...]``: the 50,000 training labels then the
    labels of the test images present. Every training batch present is read, in
    order of ``k`` (the shared archive has batches 0..3: 4,000 training images).

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to the
            environment variable ``MOBILEPRUNE_DATA``. Default: ``None``.

    Returns:
        ImageArrays: ``uint8`` images ``(1000 * batches, 3, 32, 32)`` for training
        and ``(1000, 3, 32, 32)`` for test, ``int64`` labels, :data:`CIFAR10_CLASSES`.

    Raises:
        DataError: if the folder, the label file, the test batch or every training
            batch is missing, a PNG is not 1024x1000 RGB, or there are too few labels.

    Examples:
        >>> c = load_cifar10_convnetjs("/work/shared/data")  # doctest: +SKIP
        >>> c.train_x.shape, c.test_x.shape  # doctest: +SKIP
        ((4000, 3, 32, 32), (1000, 3, 32, 32))
    """
    folder = locate_dataset("cifar10-convnetjs", data_dir, archive="cifar10-convnetjs.tgz",
                            marker=_CONVNETJS_LABELS)
    label_path = folder / _CONVNETJS_LABELS
    try:
        text = label_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read ConvNetJS label file {str(label_path)!r}: {exc}") from exc
    labels = parse_convnetjs_labels(text, str(label_path))
    need = _CONVNETJS_TRAIN_SIZE + _CONVNETJS_ROWS
    if len(labels) < need:
        raise DataError(
            f"ConvNetJS label file {str(label_path)!r} holds {len(labels)} labels, expected "
            f"at least {need} (50,000 training labels, then 1,000 test labels)")
    ks = [k for k in range(_CONVNETJS_TRAIN_SIZE // _CONVNETJS_ROWS)
          if (folder / f"cifar10_batch_{k}.png").is_file()]
    if not ks:
        raise DataError(f"no ConvNetJS training batch cifar10_batch_<0..49>.png in "
                        f"{str(folder)!r}")
    test_path = folder / f"cifar10_batch_{_CONVNETJS_TEST_BATCH}.png"
    if not test_path.is_file():
        raise DataError(f"ConvNetJS test batch {str(test_path)!r} is missing")
    train_x = np.concatenate([_read_convnetjs_png(folder / f"cifar10_batch_{k}.png")
                              for k in ks])
    train_y = np.concatenate([labels[k * _CONVNETJS_ROWS:(k + 1) * _CONVNETJS_ROWS]
                              for k in ks])
    test_x = _read_convnetjs_png(test_path)
    test_y = labels[_CONVNETJS_TRAIN_SIZE:need].copy()
    return ImageArrays(train_x, train_y, test_x, test_y, CIFAR10_CLASSES)


# ----------------------------------------------------------------------- FER-2013


def merge_fer2013_disgust(y: np.ndarray) -> np.ndarray:
    r"""Map FER-2013 labels 0..6 (Kaggle codes) to six classes, *disgust* -> *angry*.

    The mapping is angry 0 -> 0, disgust 1 -> 0, fear 2 -> 1, happy 3 -> 2, sad 4 -> 3,
    surprise 5 -> 4, neutral 6 -> 5 (:data:`FER2013_CLASSES_MERGED`).

    Args:
        y (numpy.ndarray): integer labels in 0..6.

    Returns:
        numpy.ndarray: ``int64`` labels in 0..5.

    Raises:
        DataError: if a label is outside 0..6.

    Examples:
        >>> merge_fer2013_disgust(np.arange(7)).tolist()
        [0, 0, 1, 2, 3, 4, 5]
    """
    y = np.asarray(y)
    if len(y) and (y.min() < 0 or y.max() > 6):
        raise DataError(f"FER-2013 labels must be in 0..6, got min {y.min()}, max {y.max()}")
    return _FER_MERGE[y.astype(np.int64)]


def _fer_test_parts(test: str) -> tuple[str, ...]:
    if test not in _FER_TEST_PARTS:
        raise DataError(f"test must be one of {', '.join(_FER_TEST_PARTS)}, got {test!r}")
    return _FER_TEST_PARTS[test]


def _fer_finish(train_x, train_y, test_x, test_y, merge_disgust: bool) -> ImageArrays:
    if merge_disgust:
        return ImageArrays(train_x, merge_fer2013_disgust(train_y), test_x,
                           merge_fer2013_disgust(test_y), FER2013_CLASSES_MERGED)
    return ImageArrays(train_x, train_y, test_x, test_y, FER2013_CLASSES)


def _fer_source(data_dir: str | os.PathLike[str] | None) -> tuple[Path | None, Path | None]:
    """``(folder, None)`` for the FER-2013 folder with ``train/`` and ``test/``, else
    ``(None, csv)`` for a Kaggle ``fer2013.csv``; DataError if there is neither."""
    root = resolve_data_dir(data_dir)
    csvs = [root / "fer2013.csv", root / "fer2013" / "fer2013.csv"]
    csv_path = next((p for p in csvs if p.is_file()), None)
    try:
        folder = locate_dataset("fer2013", data_dir, archive="fer2013.tgz")
    except DataError as exc:
        if csv_path is not None:
            return None, csv_path
        raise DataError(f"{exc}; or a Kaggle csv {' or '.join(map(str, csvs))}") from exc
    if not ((folder / "train").is_dir() and (folder / "test").is_dir()):
        if csv_path is not None:
            return None, csv_path
        raise DataError(f"FER-2013 folder {str(folder)!r} has no train/ and test/ "
                        "sub-folders and no fer2013.csv was found")
    return folder, None


def _fer_folder(folder: Path) -> ImageFolder:
    """The 48x48 gray images of a FER-2013 split folder, labelled by Kaggle code."""
    f = load_image_folder(folder, classes=FER2013_CLASSES, grayscale=True)
    if f.x.shape[1:] != (1, _FER_SIDE, _FER_SIDE):
        raise DataError(f"FER-2013 images in {str(folder)!r} are "
                        f"{f.x.shape[3]}x{f.x.shape[2]}, expected 48x48")
    return f


def _fer_test_selection(tst: ImageFolder, parts: tuple[str, ...], folder: Path) -> np.ndarray:
    """Mask of the test images whose file name starts with one of ``parts`` + ``_``."""
    prefixes = tuple(p + "_" for p in parts)
    keep = np.array([Path(rel).name.startswith(prefixes) for rel in tst.files], dtype=bool)
    if not keep.any():
        raise DataError(f"no FER-2013 test image of {str(folder)!r} has a name "
                        f"starting with {' or '.join(prefixes)}")
    return keep


def load_fer2013(data_dir: str | os.PathLike[str] | None = None, merge_disgust: bool = True,
                 test: str = "all") -> ImageArrays:
    r"""Load FER-2013 (48x48 gray faces, 7 expressions) from the data directory.

    The folder ``fer2013`` (or the archive ``fer2013.tgz``, unpacked once into the
    cache) holds ``{train,test}/<angry,disgust,fear,happy,neutral,sad,surprise>/
    *.jpg``; test file names start with ``PublicTest_`` or ``PrivateTest_``. These are
    read with :func:`load_image_folder` (cached). If there are no such folders but a
    Kaggle ``fer2013.csv`` (in the data directory or in ``fer2013/``), it is read with
    :func:`load_fer2013_csv`.

    Labels follow the Kaggle codes (:data:`FER2013_CLASSES`) whatever the source;
    with ``merge_disgust`` (seed 003) *disgust* is merged into *angry*, see
    :func:`merge_fer2013_disgust`.

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to the
            environment variable ``MOBILEPRUNE_DATA``. Default: ``None``.
        merge_disgust (bool, optional): six classes instead of seven.
            Default: ``True``.
        test (str, optional): test images to return: ``"all"`` (the whole test
            folder: PublicTest and PrivateTest, 7,178 images), ``"public"`` or
            ``"private"`` (3,589 each, selected by file name prefix).
            Default: ``"all"``.

    Returns:
        ImageArrays: ``uint8`` images ``(28709, 1, 48, 48)`` / ``(7178, 1, 48, 48)``
        for the full data set, ``int64`` labels, class names.

    Raises:
        DataError: if the data set is not found, an image is not 48x48, or a file is
            malformed.

    Examples:
        >>> f = load_fer2013("/work/shared/data")  # doctest: +SKIP
        >>> f.train_x.shape, f.classes  # doctest: +SKIP
        ((28709, 1, 48, 48), ('angry', 'fear', 'happy', 'sad', 'surprise', 'neutral'))
    """
    parts = _fer_test_parts(test)
    folder, csv_path = _fer_source(data_dir)
    if folder is None:
        return load_fer2013_csv(csv_path, merge_disgust, test)
    train, tst = _fer_folder(folder / "train"), _fer_folder(folder / "test")
    if test == "all":  # every test image, whatever its name
        return _fer_finish(train.x, train.y, tst.x, tst.y, merge_disgust)
    keep = _fer_test_selection(tst, parts, folder / "test")
    return _fer_finish(train.x, train.y, tst.x[keep], tst.y[keep], merge_disgust)


def _parse_fer_pixels(text: str) -> np.ndarray | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        try:
            px = np.fromstring(text, dtype=np.int64, sep=" ")
        except (ValueError, DeprecationWarning):
            return None
    if px.size != _FER_PIXELS or px.min() < 0 or px.max() > 255:
        return None
    return px.astype(np.uint8)


def _fer_csv_error(path: Path, line: int, why: str) -> DataError:
    """The error for a bad line of the FER-2013 csv: ``FER-2013 csv '<path>' line <n>: ...``."""
    return DataError(f"FER-2013 csv {str(path)!r} line {line}: {why}")


def _fer_csv_header(row: list[str], path: Path) -> tuple[dict[str, int], int]:
    """Column index of ``emotion``, ``pixels`` and ``usage``, and the number of columns."""
    names = [c.strip().lower() for c in row]
    missing = [c for c in _FER_CSV_COLUMNS if c not in names]
    if missing:
        raise _fer_csv_error(path, 1, f"header {row!r} lacks column(s) {', '.join(missing)}")
    return {c: names.index(c) for c in _FER_CSV_COLUMNS}, len(names)


def _fer_csv_row(row: list[str], line: int, path: Path, cols: dict[str, int],
                 ncols: int) -> tuple[int, np.ndarray, str]:
    """Emotion code, ``uint8`` pixels and usage of one data row of the csv."""
    if len(row) != ncols:
        raise _fer_csv_error(path, line, f"{len(row)} fields, expected {ncols}")
    emo, usage = row[cols["emotion"]].strip(), row[cols["usage"]].strip()
    if not (emo.isdigit() and int(emo) <= 6):
        raise _fer_csv_error(path, line, f"emotion {emo!r} is not an integer in 0..6")
    px = _parse_fer_pixels(row[cols["pixels"]])
    if px is None:
        raise _fer_csv_error(path, line, f"pixels must be {_FER_PIXELS} space-separated "
                                         "integers in 0..255")
    if usage not in ("Training", "PublicTest", "PrivateTest"):
        raise _fer_csv_error(path, line, f"unknown Usage {usage!r} (expected Training, "
                                         "PublicTest or PrivateTest)")
    return int(emo), px, usage


def _read_fer_csv(path: Path, parts: tuple[str, ...]) -> dict[str, list[tuple[int, np.ndarray]]]:
    """``(emotion, pixels)`` of the rows of each split: ``"train"`` (Training) and
    ``"test"`` (the test ``parts``); blank rows are skipped."""
    rows: dict[str, list[tuple[int, np.ndarray]]] = {"train": [], "test": []}
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            cols, ncols = {c: i for i, c in enumerate(_FER_CSV_COLUMNS)}, 3
            first = True
            for row in reader:
                if not row or all(not c.strip() for c in row):
                    continue
                is_header = first and not row[0].strip().isdigit()
                first = False
                if is_header:
                    cols, ncols = _fer_csv_header(row, path)
                    continue
                emo, px, usage = _fer_csv_row(row, reader.line_num, path, cols, ncols)
                if usage == "Training":
                    rows["train"].append((emo, px))
                elif usage in parts:
                    rows["test"].append((emo, px))
    except OSError as exc:
        raise DataError(f"cannot read FER-2013 csv {str(path)!r}: {exc}") from exc
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"FER-2013 csv {str(path)!r} is not a valid csv file: {exc}") from exc
    return rows


def _fer_stack(rows: list[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 (N, 1, 48, 48)`` and ``int64`` labels of ``(emotion, pixels)`` rows."""
    x = (np.stack([px for _, px in rows]) if rows
         else np.empty((0, _FER_PIXELS), np.uint8))
    return (x.reshape(-1, 1, _FER_SIDE, _FER_SIDE),
            np.array([emo for emo, _ in rows], dtype=np.int64))


def load_fer2013_csv(path: str | os.PathLike[str], merge_disgust: bool = True,
                     test: str = "all") -> ImageArrays:
    r"""Read the Kaggle FER-2013 csv (``fer2013.csv``).

    The file has a header ``emotion,pixels,Usage`` (any column order; names are
    matched case-insensitively; without a header the order ``emotion,pixels,Usage`` is
    assumed). ``emotion`` is the Kaggle code 0..6 (:data:`FER2013_CLASSES`),
    ``pixels`` 2304 space-separated values 0..255 (48x48, row-major), ``Usage`` one
    of ``Training`` (the training split, 28,709 rows), ``PublicTest`` and
    ``PrivateTest`` (3,589 rows each; the test split is both by default, as in the
    folders of ``fer2013.tgz``).

    Args:
        path (str or os.PathLike): the csv file.
        merge_disgust (bool, optional): merge *disgust* into *angry* (six classes,
            seed 003). Default: ``True``.
        test (str, optional): ``"all"``, ``"public"`` or ``"private"``: which test rows
            form the test split. Default: ``"all"``.

    Returns:
        ImageArrays: ``uint8`` images ``(N, 1, 48, 48)``, ``int64`` labels, class names.

    Raises:
        DataError: naming the file and the line number, if the header lacks a column,
            a row has the wrong number of fields, an emotion outside 0..6, not exactly
            2304 integer pixels in 0..255, or an unknown usage; or if the file cannot
            be read or has no training row.

    Examples:
        >>> f = load_fer2013_csv("fer2013.csv")  # doctest: +SKIP
        >>> f.train_x.shape, f.test_x.shape  # doctest: +SKIP
        ((28709, 1, 48, 48), (7178, 1, 48, 48))
    """
    path = Path(path)
    rows = _read_fer_csv(path, _fer_test_parts(test))
    if not rows["train"]:
        raise DataError(f"FER-2013 csv {str(path)!r} has no Training row")
    return _fer_finish(*_fer_stack(rows["train"]), *_fer_stack(rows["test"]), merge_disgust)


# ---------------------------------------------------------------- normalisation


def channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    r"""Per-channel mean and standard deviation of ``uint8`` images, on the [0, 1] scale.

    Computed exactly from per-channel histograms (no float copy of the images).

    Args:
        x (numpy.ndarray): ``uint8`` images of shape ``(N, C, H, W)``.

    Returns:
        tuple of numpy.ndarray: ``mean`` and ``std``, ``float64`` of shape ``(C,)``.

    Raises:
        DataError: if ``x`` is not a non-empty ``uint8`` array of 4 dimensions.

    Examples:
        >>> x = np.array([0, 255], dtype=np.uint8).reshape(2, 1, 1, 1)
        >>> [v.tolist() for v in channel_stats(x)]
        [[0.5], [0.5]]
    """
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4 or x.size == 0:
        raise DataError(f"images must be non-empty uint8 (N, C, H, W), got {x.dtype} "
                        f"of shape {x.shape}")
    values = np.arange(256, dtype=np.float64)
    mean, std = np.empty(x.shape[1]), np.empty(x.shape[1])
    for c in range(x.shape[1]):
        hist = np.bincount(x[:, c].ravel(), minlength=256).astype(np.float64)
        n = hist.sum()
        m = (hist * values).sum() / n
        var = max((hist * (values - m) ** 2).sum() / n, 0.0)
        mean[c], std[c] = m / 255.0, np.sqrt(var) / 255.0
    return mean, std


def to_normalized_dataset(x: np.ndarray, y: np.ndarray, mean: Sequence[float],
                          std: Sequence[float]) -> TensorDataset:
    r"""``uint8`` images to a standardised ``float32`` :class:`~torch.utils.data.TensorDataset`.

    Images are scaled to [0, 1], then channel ``c`` becomes ``(x - mean[c]) / std[c]``
    (use training-split statistics from :func:`channel_stats` for both splits).

    Args:
        x (numpy.ndarray): ``uint8`` images ``(N, C, H, W)``.
        y (numpy.ndarray): integer labels ``(N,)``.
        mean (sequence of float): per-channel means on the [0, 1] scale.
        std (sequence of float): per-channel standard deviations on the [0, 1]
            scale; zeros are replaced by 1.

    Returns:
        torch.utils.data.TensorDataset: ``float32`` images ``(N, C, H, W)`` and
        ``int64`` labels.

    Raises:
        DataError: if shapes or dtypes do not match.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DataError(f"images must be uint8 (N, C, H, W), got {x.dtype} of shape {x.shape}")
    if y.ndim != 1 or len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be N={len(x)} integers, got {y.dtype} of shape {y.shape}")
    mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float32)).reshape(1, -1, 1, 1)
    std_np = np.asarray(std, dtype=np.float32)
    std_np = np.where(std_np > 0, std_np, 1.0).astype(np.float32)
    std_t = torch.as_tensor(std_np).reshape(1, -1, 1, 1)
    if mean_t.shape[1] != x.shape[1] or std_t.shape[1] != x.shape[1]:
        raise DataError(f"mean/std have {mean_t.shape[1]}/{std_t.shape[1]} values for "
                        f"{x.shape[1]} channels")
    images = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32)
    images.div_(255.0).sub_(mean_t).div_(std_t)
    return TensorDataset(images, torch.from_numpy(y.astype(np.int64)))
