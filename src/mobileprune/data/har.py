r"""Human activity recognition data: UCI-HAR, HAPT rebuild, WISDM, PAMAP2.

Every loader returns numpy arrays ready for :class:`~mobileprune.models.har.HARCNN`:
windows ``float32`` of shape ``(N, C, T)`` (channels first; built with a real copy, so
``x[n, c, t]`` is channel ``c`` at time ``t`` of window ``n`` and the array is
C-contiguous) and labels ``int64`` in ``0..len(classes)-1``. Train and test are split
by subject, never by window, so no person appears in both.

* :func:`load_ucihar` -- the official UCI-HAR window files (9 x 128).
* :func:`rebuild_ucihar_from_hapt` / :func:`load_ucihar_rebuilt` -- UCI-HAR-style
  9 x 128 windows rebuilt from the raw HAPT recordings (cached).
* :func:`load_wisdm_raw` -- WISDM v1.1 raw accelerometer file (3 x 80).
* :func:`load_wisdm_arff` -- WISDM v1.1 transformed ARFF (43 features per window).
* :func:`load_wisdm2019` -- WISDM 2019 watch accelerometer files (3 x 80).
* :func:`load_pamap2` -- PAMAP2 Protocol ``.dat`` files (40 x 128).
* :func:`normalize` -- per-channel standardisation with training statistics only.

Malformed files raise :class:`~mobileprune.errors.DataError` naming the file and the
1-based line number. See ``docs/data.md`` for formats, channels and splits.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple, TextIO

import numpy as np

from mobileprune.data.paths import cache_dir, locate_dataset
from mobileprune.errors import DataError
from mobileprune.files import atomic_write

__all__ = [
    "HARData",
    "WisdmFeatures",
    "UCIHAR_CLASSES",
    "UCIHAR_CHANNELS",
    "UCIHAR_TEST_SUBJECTS",
    "WISDM_CLASSES",
    "WISDM2019_ACTIVITIES",
    "PAMAP2_ACTIVITIES",
    "PAMAP2_PROTOCOL_ACTIVITIES",
    "PAMAP2_COLUMNS",
    "PAMAP2_CHANNELS",
    "HAR_DATASETS",
    "normalize",
    "load_ucihar",
    "rebuild_ucihar_from_hapt",
    "load_ucihar_rebuilt",
    "load_wisdm_raw",
    "load_wisdm_arff",
    "load_wisdm2019",
    "load_pamap2",
    "load_har_dataset",
]

PathLike = str | os.PathLike[str]


class HARData(NamedTuple):
    r"""Windows of inertial signals, split by subject.

    Attributes:
        train_x (numpy.ndarray): ``float32`` of shape ``(N, C, T)``, C-contiguous.
        train_y (numpy.ndarray): ``int64`` of shape ``(N,)``, indices into ``classes``.
        test_x (numpy.ndarray): ``float32`` of shape ``(M, C, T)``.
        test_y (numpy.ndarray): ``int64`` of shape ``(M,)``.
        classes (list of str): activity names, in label order.
        channels (list of str): signal names, in channel order.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    channels: list[str]


class WisdmFeatures(NamedTuple):
    r"""WISDM v1.1 transformed features, split by user.

    Attributes:
        train_x (numpy.ndarray): ``float32`` of shape ``(N, F)``, no NaN (missing
            values imputed with training-column means).
        train_y (numpy.ndarray): ``int64`` of shape ``(N,)``.
        test_x (numpy.ndarray): ``float32`` of shape ``(M, F)``.
        test_y (numpy.ndarray): ``int64`` of shape ``(M,)``.
        classes (list of str): activity names, in label order.
        features (list of str): feature (attribute) names, in column order.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    features: list[str]


#: UCI-HAR activities; official labels 1..6 map to 0..5.
UCIHAR_CLASSES = ["walking", "walking_upstairs", "walking_downstairs", "sitting",
                  "standing", "laying"]
#: UCI-HAR channel order (file stems of ``Inertial Signals``).
UCIHAR_CHANNELS = [f"{sig}_{axis}" for sig in ("body_acc", "body_gyro", "total_acc")
                   for axis in "xyz"]
#: Official UCI-HAR test subjects (all others are training subjects).
UCIHAR_TEST_SUBJECTS = (2, 4, 9, 10, 12, 13, 18, 20, 24)
#: WISDM v1.1 activities, in the order of the ARFF header.
WISDM_CLASSES = ["Walking", "Jogging", "Upstairs", "Downstairs", "Sitting", "Standing"]
#: WISDM 2019 activity codes (``activity_key.txt``); there is no code ``N``.
WISDM2019_ACTIVITIES = {
    "A": "walking", "B": "jogging", "C": "stairs", "D": "sitting", "E": "standing",
    "F": "typing", "G": "brushing_teeth", "H": "eating_soup", "I": "eating_chips",
    "J": "eating_pasta", "K": "drinking", "L": "eating_sandwich", "M": "kicking",
    "O": "playing_catch", "P": "dribbling", "Q": "writing", "R": "clapping",
    "S": "folding_clothes",
}
#: PAMAP2 activity ids (0, "transient", is not an activity and is always dropped).
PAMAP2_ACTIVITIES = {
    1: "lying", 2: "sitting", 3: "standing", 4: "walking", 5: "running", 6: "cycling",
    7: "nordic_walking", 9: "watching_tv", 10: "computer_work", 11: "car_driving",
    12: "ascending_stairs", 13: "descending_stairs", 16: "vacuum_cleaning",
    17: "ironing", 18: "folding_laundry", 19: "house_cleaning", 20: "playing_soccer",
    24: "rope_jumping",
}
#: The 12 activities of the PAMAP2 protocol (the default label set).
PAMAP2_PROTOCOL_ACTIVITIES = (1, 2, 3, 4, 5, 6, 7, 12, 13, 16, 17, 24)
_PAMAP2_NCOLS = 54
_PAMAP2_IMUS = (("hand", 3), ("chest", 20), ("ankle", 37))
_PAMAP2_QUANTITIES = ["temp"] + [f"{q}_{a}" for q in ("acc16", "acc6", "gyro", "mag")
                                 for a in "xyz"]
#: 0-based columns of a PAMAP2 ``.dat`` row used as channels: heart rate (2), then per
#: IMU (hand from 3, chest from 20, ankle from 37) temperature, acc16 xyz, acc6 xyz,
#: gyro xyz, mag xyz (13 columns); the 4 orientation columns are invalid and skipped.
PAMAP2_COLUMNS = [2] + [start + j for _, start in _PAMAP2_IMUS for j in range(13)]
#: Names of the 40 PAMAP2 channels, in the order of :data:`PAMAP2_COLUMNS`.
PAMAP2_CHANNELS = ["heart_rate"] + [f"{imu}_{q}" for imu, _ in _PAMAP2_IMUS
                                    for q in _PAMAP2_QUANTITIES]

_UCIHAR_T = 128
_HAPT_FS = 50.0
# Bump when the rebuild recipe changes, so stale caches are not reused.
_REBUILD_VERSION = 1


# --------------------------------------------------------------------------- helpers


def _line_of_row(path: Path, row: int) -> int:
    """1-based line number of the ``row``-th (0-based) non-blank line of ``path``."""
    seen = -1
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                seen += 1
                if seen == row:
                    return lineno
    return 0


def _where(path: Path, lineno: int) -> str:
    return f"{str(path)!r}, line {lineno}"


def _open_text(path: Path) -> TextIO:
    """``path`` opened for reading text (undecodable bytes replaced); DataError if it
    cannot be opened."""
    try:
        return open(path, encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DataError(f"cannot read {str(path)!r}: {exc}") from exc


def _bad_row(path: Path, lineno: int, why: str) -> DataError:
    """The error for a malformed row: ``malformed row in '<path>', line <n>: <why>``."""
    return DataError(f"malformed row in {_where(path, lineno)}: {why}")


def _scan_numeric(path: Path, ncols: int | None, allow_nan: bool) -> None:
    """Find the first malformed line of a whitespace-separated numeric file; raise."""
    expected = ncols
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            if expected is None:
                expected = len(tokens)
            if len(tokens) != expected:
                raise _bad_row(path, lineno, f"expected {expected} whitespace-separated "
                               f"values, found {len(tokens)}")
            for i, tok in enumerate(tokens):
                try:
                    value = float(tok)
                except ValueError:
                    raise _bad_row(path, lineno, f"value {i + 1} {tok[:40]!r} is not a "
                                   "number") from None
                if not allow_nan and not np.isfinite(value):
                    raise _bad_row(path, lineno, f"value {i + 1} is {tok!r} (missing or "
                                   "infinite values are not allowed here)")


def _read_table(path: Path, ncols: int | None = None, *, what: str = "data",
                allow_nan: bool = False, dtype: type = np.float64) -> np.ndarray:
    r"""Read a whitespace-separated numeric table (blank lines skipped).

    The fast path is :func:`numpy.loadtxt`; on any problem the file is rescanned line
    by line so the error names the file and the first bad line.
    """
    if not path.is_file():
        raise DataError(f"{what} file {str(path)!r} not found")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # loadtxt warns on empty files
            arr = np.loadtxt(path, dtype=dtype, ndmin=2, comments=None)
    except (ValueError, UnicodeDecodeError):
        _scan_numeric(path, ncols, allow_nan)
        raise DataError(f"{what} file {str(path)!r} is malformed") from None
    except OSError as exc:
        raise DataError(f"cannot read {what} file {str(path)!r}: {exc}") from exc
    if arr.size == 0:
        raise DataError(f"{what} file {str(path)!r} is empty")
    if (ncols is not None and arr.shape[1] != ncols) or (
            not allow_nan and not np.isfinite(arr).all()):
        _scan_numeric(path, ncols, allow_nan)
    return arr


def _int_column(values: np.ndarray, path: Path, what: str,
                valid: Iterable[int] | None = None) -> np.ndarray:
    """Integer-valued column check; the error names the file and line."""
    values = np.asarray(values, dtype=np.float64).ravel()
    valid = None if valid is None else list(valid)
    ok = np.isfinite(values) & (values == np.round(values))
    if valid is not None:
        ok &= np.isin(values, np.fromiter(valid, dtype=np.float64))
    if not ok.all():
        row = int(np.argmin(ok))
        raise _bad_row(path, _line_of_row(path, row), f"{what} {values[row]:g} is not valid"
                       + (f" (expected one of {sorted(set(valid))})" if valid is not None
                          else ""))
    return values.astype(np.int64)


def _segments(*keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[start, end)`` of the maximal runs where all ``keys`` stay constant."""
    n = len(keys[0])
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    change = np.zeros(n, dtype=bool)
    change[0] = True
    for k in keys:
        change[1:] |= k[1:] != k[:-1]
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], n)
    return starts.astype(np.int64), ends.astype(np.int64)


def _window_starts(starts: np.ndarray, ends: np.ndarray, window: int,
                   step: int) -> tuple[np.ndarray, np.ndarray]:
    """Start index of every full window inside each segment, and its segment index."""
    starts, ends = np.asarray(starts, np.int64), np.asarray(ends, np.int64)
    lengths = ends - starts
    counts = np.where(lengths >= window, (lengths - window) // step + 1, 0)
    seg = np.repeat(np.arange(len(counts)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return starts[seg] + offsets * step, seg


def _gather(signal: np.ndarray, win_starts: np.ndarray, window: int) -> np.ndarray:
    r"""Windows ``(N, C, T)`` of a ``(time, C)`` signal, as a contiguous float32 copy.

    ``sliding_window_view`` of the ``(time, C)`` array along time is the transposed view
    ``(time - T + 1, C, T)``; indexing and :func:`numpy.ascontiguousarray` turn it into
    real ``(N, C, T)`` memory.
    """
    channels = signal.shape[1]
    if len(win_starts) == 0:
        return np.zeros((0, channels, window), dtype=np.float32)
    view = np.lib.stride_tricks.sliding_window_view(signal, window, axis=0)
    return np.ascontiguousarray(view[win_starts], dtype=np.float32)


def _cut_windows(signal: np.ndarray, starts: np.ndarray, ends: np.ndarray,
                 seg_y: np.ndarray, seg_id: np.ndarray, window: int,
                 step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows of ``signal`` inside the segments ``[starts, ends)``, with the label
    ``seg_y`` and subject id ``seg_id`` of each window's segment."""
    win, seg = _window_starts(starts, ends, window, step)
    return _gather(signal, win, window), seg_y[seg], seg_id[seg]


def _concat(parts: Sequence[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate ``(x, y, ids)`` parts (one per file or recording) field by field."""
    return tuple(np.concatenate(field) for field in zip(*parts))


def _glob_first(folders: Iterable[Path], pattern: str) -> list[Path]:
    """Sorted files matching ``pattern`` in the first of ``folders`` that has any."""
    for folder in folders:
        files = sorted(folder.glob(pattern)) if folder.is_dir() else []
        if files:
            return files
    return []


def _check_window(window: int, step: int) -> None:
    for name, v in (("window", window), ("step", step)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DataError(f"{name} must be a positive integer, got {v!r}")


def _split_ids(ids: Iterable[int], test_ids: Iterable[int] | None, test_fraction: float,
               who: str, source: str) -> set[int]:
    """Test ids: the given ones, or the last ``round(test_fraction * n)`` sorted ids."""
    present = sorted({int(i) for i in ids})
    if test_ids is not None:
        wanted = {int(i) for i in test_ids}
        absent = sorted(wanted - set(present))
        if absent:
            raise DataError(
                f"test {who}s {absent} do not occur in {source} ({who}s present: "
                f"{present})"
            )
        return wanted
    if len(present) < 2:
        raise DataError(
            f"{source} holds {len(present)} {who}(s); a split by {who} needs at least 2"
        )
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    k = min(len(present) - 1, max(1, int(round(test_fraction * len(present)))))
    return set(present[-k:])


def _test_mask(ids: np.ndarray, test: set[int]) -> np.ndarray:
    """True where the subject (user) id of a row is a test id."""
    return np.isin(ids, np.fromiter(test, dtype=np.int64))


def _split_rows(x: np.ndarray, y: np.ndarray, is_test: np.ndarray) -> tuple[np.ndarray, ...]:
    """``(train_x, train_y, test_x, test_y)``: C-contiguous ``x`` rows, ``int64`` labels."""
    return (np.ascontiguousarray(x[~is_test]), y[~is_test].astype(np.int64),
            np.ascontiguousarray(x[is_test]), y[is_test].astype(np.int64))


def _assemble(x: np.ndarray, y: np.ndarray, ids: np.ndarray, test: set[int],
              classes: list[str], channels: list[str], source: str) -> HARData:
    is_test = _test_mask(ids, test)
    if not (~is_test).any() or not is_test.any():
        empty = "training" if not (~is_test).any() else "test"
        raise DataError(f"{source}: the {empty} split has no complete window")
    return HARData(*_split_rows(x, y, is_test), list(classes), list(channels))


def normalize(data, *, return_stats: bool = False):
    r"""Standardise each channel with the mean and std of the training split only.

    For :class:`HARData` the statistics are taken over windows and time (axes 0 and
    2) per channel; for 2-D feature arrays (:class:`WisdmFeatures`) per column. The
    same affine map is applied to the test split, so the test mean is generally not
    exactly 0. A channel with zero training std is only centred.

    Args:
        data (HARData or WisdmFeatures): the data to standardise.
        return_stats (bool, optional): also return ``mean`` and ``std`` (float32,
            shape ``(C,)``), e.g. to ship them with a deployed model. Default: ``False``.

    Returns:
        the same kind of tuple with standardised ``float32`` ``train_x``/``test_x``
        (labels and names unchanged); with ``return_stats``, ``(data, mean, std)``.

    Examples:
        >>> d = HARData(np.ones((2, 1, 4), np.float32) * [[[1, 2, 3, 4]]],
        ...             np.zeros(2, np.int64), np.full((1, 1, 4), 5, np.float32),
        ...             np.zeros(1, np.int64), ["a"], ["c"])
        >>> n = normalize(d)
        >>> float(n.train_x.mean()), round(float(n.test_x.mean()), 3)
        (0.0, 2.236)
    """
    x = np.asarray(data.train_x)
    if x.ndim not in (2, 3) or len(x) == 0:
        raise DataError(f"normalize needs a non-empty (N, C, T) or (N, F) train_x, "
                        f"got shape {x.shape}")
    axes = (0, 2) if x.ndim == 3 else (0,)
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)

    def apply(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(((np.asarray(a, np.float64) - mean) / std)
                                    .astype(np.float32))

    out = data._replace(train_x=apply(data.train_x), test_x=apply(data.test_x))
    if return_stats:
        return out, mean.ravel().astype(np.float32), std.ravel().astype(np.float32)
    return out


# --------------------------------------------------------------------------- UCI-HAR


def _ucihar_root(root: Path) -> Path:
    for cand in (root, root / "UCI HAR Dataset"):
        if (cand / "train").is_dir() and (cand / "test").is_dir():
            return cand
    raise DataError(
        f"UCI-HAR not found in {str(root)!r}: expected folders 'train' and 'test' "
        "(or 'UCI HAR Dataset/train' and '.../test')"
    )


def load_ucihar(root: PathLike) -> HARData:
    r"""Load the official UCI-HAR windows (Anguita et al. 2013).

    Layout: ``<root>/{train,test}/Inertial Signals/<signal>_<axis>_<split>.txt`` for
    signal ``body_acc``, ``body_gyro``, ``total_acc`` and axis ``x, y, z`` (one window
    of 128 whitespace-separated floats per line), ``<root>/<split>/y_<split>.txt``
    (labels 1..6) and, checked if present, ``subject_<split>.txt``. ``root`` may also
    be the folder holding ``UCI HAR Dataset``.

    Args:
        root (str or os.PathLike): the ``UCI HAR Dataset`` folder.

    Returns:
        HARData: 9 channels (:data:`UCIHAR_CHANNELS`) x 128 samples; labels 0..5
        (:data:`UCIHAR_CLASSES`); 7,352 train / 2,947 test windows for the official
        files.

    Raises:
        DataError: if a file is missing, a row is malformed (file and line in the
            message), the files of a split disagree on the number of windows, or a
            label is outside 1..6.
    """
    root = _ucihar_root(Path(root))
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        folder = root / split
        signals = []
        for ch in UCIHAR_CHANNELS:
            path = folder / "Inertial Signals" / f"{ch}_{split}.txt"
            signals.append((path, _read_table(path, _UCIHAR_T, what="UCI-HAR signal")))
        y_path = folder / f"y_{split}.txt"
        y = _int_column(_read_table(y_path, 1, what="UCI-HAR label"), y_path, "label",
                        range(1, 7)) - 1
        counts = {str(p): len(a) for p, a in signals}
        counts[str(y_path)] = len(y)
        s_path = folder / f"subject_{split}.txt"
        if s_path.is_file():
            subj = _int_column(_read_table(s_path, 1, what="UCI-HAR subject"), s_path,
                               "subject")
            counts[str(s_path)] = len(subj)
        if len(set(counts.values())) != 1:
            raise DataError(f"UCI-HAR {split} files disagree on the number of windows: "
                            + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        out += [np.ascontiguousarray(np.stack([a for _, a in signals], axis=1),
                                     dtype=np.float32), y]
    return HARData(*out, list(UCIHAR_CLASSES), list(UCIHAR_CHANNELS))


# --------------------------------------------------------------------------- HAPT


def _hapt_raw_dir(root: Path) -> Path:
    for cand in (root / "RawData", root / "HAPT Data Set" / "RawData", root):
        if (cand / "labels.txt").is_file():
            return cand
    raise DataError(
        f"HAPT raw data not found in {str(root)!r}: expected RawData/labels.txt "
        "(or 'HAPT Data Set/RawData/labels.txt')"
    )


def _filter_hapt(acc: np.ndarray, gyro: np.ndarray) -> np.ndarray:
    """UCI-HAR filtering of one recording; returns ``(time, 9)`` in channel order."""
    from scipy.ndimage import median_filter
    from scipy.signal import butter, sosfiltfilt

    noise = butter(3, 20.0, btype="low", fs=_HAPT_FS, output="sos")
    grav = butter(3, 0.3, btype="low", fs=_HAPT_FS, output="sos")
    both = np.concatenate([acc, gyro], axis=1)
    both = median_filter(both, size=(3, 1), mode="nearest")
    both = sosfiltfilt(noise, both, axis=0)
    total_acc, body_gyro = both[:, :3], both[:, 3:]
    gravity = sosfiltfilt(grav, total_acc, axis=0)
    return np.concatenate([total_acc - gravity, body_gyro, total_acc], axis=1)


def _hapt_signature(raw: Path, params: dict) -> str:
    files = []
    for p in sorted(raw.iterdir()):
        if p.is_file() and p.suffix == ".txt":
            st = p.stat()
            files.append([p.name, st.st_size, st.st_mtime_ns])
    blob = json.dumps({"version": _REBUILD_VERSION, "params": params, "files": files},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _load_cached(path: Path) -> HARData | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = [z[k] for k in ("train_x", "train_y", "test_x", "test_y")]
    except (OSError, KeyError, ValueError, EOFError):
        return None  # missing or corrupt: rebuild
    return HARData(*arrays, list(UCIHAR_CLASSES), list(UCIHAR_CHANNELS))


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)
    atomic_write(path, write)


class _HaptLabels(NamedTuple):
    """Columns of HAPT ``labels.txt``: one labelled segment per row."""

    exp: np.ndarray    # experiment number
    user: np.ndarray   # subject
    act: np.ndarray    # activity 1..12
    first: np.ndarray  # first row of the segment (1-based)
    last: np.ndarray   # last row of the segment (1-based, inclusive)


def _read_hapt_labels(lab_path: Path) -> _HaptLabels:
    """Read and check ``labels.txt``; errors name the file and line."""
    table = _read_table(lab_path, 5, what="HAPT labels")
    columns = [("experiment", None), ("user", None), ("activity", range(1, 13)),
               ("start row", None), ("end row", None)]
    lab = _HaptLabels(*(_int_column(table[:, j], lab_path, what, valid)
                        for j, (what, valid) in enumerate(columns)))
    bad = (lab.first < 1) | (lab.last < lab.first)
    if bad.any():
        row = int(np.argmax(bad))
        raise _bad_row(lab_path, _line_of_row(lab_path, row), f"segment rows "
                       f"{lab.first[row]}..{lab.last[row]} are not a valid range")
    return lab


def _hapt_windows(raw: Path, lab: _HaptLabels, rows: np.ndarray, e: int, u: int,
                  static_guard: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows, labels 0..5 and subject ids of recording ``(e, u)`` for the segments
    ``rows`` of ``labels.txt`` (static postures trimmed by ``static_guard``)."""
    acc_path = raw / f"acc_exp{e:02d}_user{u:02d}.txt"
    gyro_path = raw / f"gyro_exp{e:02d}_user{u:02d}.txt"
    acc = _read_table(acc_path, 3, what="HAPT accelerometer")
    gyro = _read_table(gyro_path, 3, what="HAPT gyroscope")
    if len(acc) != len(gyro):
        raise DataError(f"HAPT recordings {str(acc_path)!r} ({len(acc)} rows) and "
                        f"{str(gyro_path)!r} ({len(gyro)} rows) differ in length")
    over = rows[lab.last[rows] > len(acc)]
    if len(over):
        row, lab_path = int(over[0]), raw / "labels.txt"
        raise _bad_row(lab_path, _line_of_row(lab_path, row), f"segment ends at row "
                       f"{lab.last[row]} but {acc_path.name} has {len(acc)} rows")
    guard = np.where(lab.act[rows] >= 4, static_guard, 0)
    return _cut_windows(_filter_hapt(acc, gyro), lab.first[rows] - 1 + guard,
                        lab.last[rows] - guard, lab.act[rows] - 1,
                        np.full(len(rows), u, dtype=np.int64), _UCIHAR_T, _UCIHAR_T // 2)


def _store_rebuild(path: Path, data: HARData) -> None:
    """Cache a rebuild; a failure only warns (attributed to the loader's caller)."""
    try:
        _save_atomic(path, train_x=data.train_x, train_y=data.train_y,
                     test_x=data.test_x, test_y=data.test_y)
    except OSError as exc:
        warnings.warn(f"could not cache the UCI-HAR rebuild in {path}: {exc}",
                      stacklevel=3)


def rebuild_ucihar_from_hapt(hapt_root: PathLike, *, static_guard: int = 12,
                             test_subjects: Sequence[int] = UCIHAR_TEST_SUBJECTS,
                             cache: bool = True) -> HARData:
    r"""Rebuild UCI-HAR-style 9 x 128 windows from the raw HAPT recordings.

    The recipe of the UCI-HAR README, applied to each recording
    ``RawData/{acc,gyro}_expXX_userYY.txt`` (50 Hz; acc in g, gyro in rad/s):

    1. median filter of length 3, then a 3rd-order Butterworth low-pass at 20 Hz,
       zero-phase (forward-backward, :func:`scipy.signal.sosfiltfilt`), on all six
       axes -> ``total_acc`` (g) and ``body_gyro`` (rad/s);
    2. gravity = 3rd-order Butterworth low-pass at 0.3 Hz of ``total_acc`` (zero
       phase); ``body_acc = total_acc - gravity``;
    3. windows of 128 samples with step 64 (50% overlap) inside every segment of
       ``RawData/labels.txt`` with activity 1..6 (no window crosses a segment end).
       The static postures (4 sitting, 5 standing, 6 laying) are first trimmed by
       ``static_guard`` samples at each end: HAPT's relabelling around postural
       transitions left these segments slightly longer than in UCI-HAR, and a guard
       of 12 samples (0.24 s) brings every class within 2% of the official counts
       (see ``docs/data.md``);
    4. subjects in ``test_subjects`` form the test split.

    The result is cached in :func:`~mobileprune.data.paths.cache_dir` as a compressed
    ``.npz`` keyed by the recipe parameters and the names, sizes and modification
    times of the raw files (written atomically: temporary file, then rename).

    Args:
        hapt_root (str or os.PathLike): the ``HAPT Data Set`` folder, its parent, or
            the ``RawData`` folder itself.
        static_guard (int, optional): samples trimmed at both ends of static-posture
            segments. ``0`` gives the plain recipe. Default: ``12``.
        test_subjects (sequence of int, optional): test subjects. Default: the
            official UCI-HAR ones, :data:`UCIHAR_TEST_SUBJECTS`.
        cache (bool, optional): read and write the cache. Default: ``True``.

    Returns:
        HARData: channels :data:`UCIHAR_CHANNELS`, labels 0..5 (:data:`UCIHAR_CLASSES`);
        7,324 train / 2,954 test windows for HAPT v2.1.

    Raises:
        DataError: if ``labels.txt`` or a recording is missing or malformed (file and
            line in the message), or a segment lies outside its recording.
    """
    if isinstance(static_guard, bool) or not isinstance(static_guard, int) or static_guard < 0:
        raise DataError(f"static_guard must be a non-negative integer, got {static_guard!r}")
    raw = _hapt_raw_dir(Path(hapt_root))
    test = sorted({int(s) for s in test_subjects})
    cached = None
    if cache:
        key = _hapt_signature(raw, {"static_guard": static_guard, "test_subjects": test})
        cached = cache_dir() / f"ucihar-rebuilt-{key}.npz"
        hit = _load_cached(cached) if cached.is_file() else None
        if hit is not None:
            return hit
    lab = _read_hapt_labels(raw / "labels.txt")
    keep = lab.act <= 6
    parts = [_hapt_windows(raw, lab, np.flatnonzero(keep & (lab.exp == e) & (lab.user == u)),
                           e, u, static_guard)
             for e, u in sorted(set(zip(lab.exp[keep].tolist(), lab.user[keep].tolist())))]
    if not parts:
        raise DataError(f"{str(raw / 'labels.txt')!r} has no segment of activities 1..6")
    data = _assemble(*_concat(parts), set(test), UCIHAR_CLASSES, UCIHAR_CHANNELS,
                     f"HAPT {str(raw)!r}")
    if cached is not None:
        _store_rebuild(cached, data)
    return data


def load_ucihar_rebuilt(data_dir: PathLike | None = None, **kwargs) -> HARData:
    r"""UCI-HAR windows rebuilt from HAPT found in the data directory.

    The folder ``hapt`` (holding ``HAPT Data Set/RawData``) is found with
    :func:`~mobileprune.data.paths.locate_dataset`, unpacking ``hapt.tgz`` into the
    cache once; then :func:`rebuild_ucihar_from_hapt` (cached) is applied.

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to
            ``$MOBILEPRUNE_DATA``. Default: ``None``.
        **kwargs: passed to :func:`rebuild_ucihar_from_hapt`.

    Returns:
        HARData: see :func:`rebuild_ucihar_from_hapt`.

    Raises:
        DataError: if the data set is not found or malformed.
    """
    folder = locate_dataset("hapt", data_dir, archive="hapt.tgz",
                            marker=("HAPT Data Set/RawData/labels.txt", "RawData/labels.txt"))
    return rebuild_ucihar_from_hapt(folder, **kwargs)


# --------------------------------------------------------------------------- WISDM


def _find_file(path: Path, names: Sequence[str], what: str) -> Path:
    if path.is_file():
        return path
    looked = []
    for sub in ("", "FordhamActivity", "wisdm", "wisdm/FordhamActivity"):
        for name in names:
            cand = path / sub / name if sub else path / name
            if cand.is_file():
                return cand
            looked.append(str(cand))
    raise DataError(f"{what} not found: looked for " + ", ".join(looked))


def _parse_records_fast(path: Path, allowed: tuple[int, ...], label_of: dict[str, int]):
    """Vectorised parse of the common case (one clean record per line), else ``None``.

    Anything unusual (several records on a line, empty fields, bad values) returns
    ``None`` so the line-by-line parser handles it and reports the exact line.
    """
    try:
        text = path.read_text(encoding="utf-8").replace(";", "")
    except (OSError, UnicodeDecodeError):
        return None
    first = next((ln for ln in text.splitlines() if ln.strip()), None)
    if first is None:
        return None
    ncols = first.count(",") + 1
    if ncols not in allowed:
        return None
    numeric = (0, 2, 3, 4) if ncols == 5 else (0, 2, 3, 4, 5)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            num = np.loadtxt(io.StringIO(text), delimiter=",", usecols=numeric, ndmin=2)
            acts = np.loadtxt(io.StringIO(text), delimiter=",", usecols=1, dtype="U64",
                              ndmin=1)
    except ValueError:
        return None
    # No short row (loadtxt would have failed) and no long row (comma count).
    if len(num) == 0 or text.count(",") != (ncols - 1) * len(num) or len(acts) != len(num):
        return None
    users, values = num[:, 0], num[:, -3:]
    if not (np.isfinite(num).all() and (users == np.round(users)).all()):
        return None
    names, inverse = np.unique(np.char.strip(acts), return_inverse=True)
    if any(a not in label_of for a in names.tolist()):
        return None
    codes = np.array([label_of[a] for a in names.tolist()], np.int64)
    return users.astype(np.int64), codes[inverse.ravel()], np.ascontiguousarray(values)


def _parse_records(path: Path, layout: str, label_of: dict[str, int]):
    r"""Parse ``;``-terminated comma records (WISDM v1.1 raw or WISDM 2019).

    ``layout`` ``"v1"``: ``user,activity,timestamp,x,y,z``; ``"2019"``:
    ``subject,activity,x,y,z`` or ``subject,activity,timestamp,x,y,z``. Several records
    per line, empty records (``;;``), blank lines and a trailing empty field are
    accepted; a record with an empty x, y or z is dropped (missing sample).
    """
    allowed = (6,) if layout == "v1" else (5, 6)
    fast = _parse_records_fast(path, allowed, label_of)
    if fast is not None:
        return fast
    users: list[int] = []
    labels: list[int] = []
    values: list[tuple[float, float, float]] = []
    with _open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            for rec in line.split(";"):
                rec = rec.strip()
                if not rec:
                    continue
                fields = [t.strip() for t in rec.split(",")]
                while len(fields) > min(allowed) and fields[-1] == "":
                    fields.pop()
                if len(fields) not in allowed:
                    raise _bad_row(path, lineno, f"expected {' or '.join(map(str, allowed))}"
                                   f" comma-separated fields, found {len(fields)} in "
                                   f"{rec[:60]!r}")
                user, act, *rest = fields
                ts, xyz = (rest[0], rest[1:]) if len(fields) == 6 else ("", rest)
                if act not in label_of:
                    raise _bad_row(path, lineno, f"unknown activity {act[:40]!r} "
                                   f"(expected one of {sorted(label_of)})")
                try:
                    uid = int(user)
                    if ts:
                        float(ts)
                except ValueError:
                    raise _bad_row(path, lineno, f"user {user[:20]!r} or timestamp "
                                   f"{ts[:20]!r} is not a number") from None
                if "" in xyz:
                    continue  # missing value: drop the sample
                try:
                    x, y, z = (float(v) for v in xyz)
                except ValueError:
                    raise _bad_row(path, lineno, f"acceleration {','.join(xyz)[:60]!r} "
                                   "is not three numbers") from None
                if not (np.isfinite(x) and np.isfinite(y) and np.isfinite(z)):
                    raise _bad_row(path, lineno, "non-finite acceleration")
                users.append(uid)
                labels.append(label_of[act])
                values.append((x, y, z))
    return (np.asarray(users, np.int64), np.asarray(labels, np.int64),
            np.asarray(values, np.float64).reshape(-1, 3))


def _windows_by_runs(parts, window: int, step: int, dedupe: bool = False):
    """Windows inside contiguous (file, user, label) runs of parsed record arrays.

    With ``dedupe``, a run identical (user, label and every value) to an earlier run is
    skipped.
    """
    out = []
    seen: set[tuple[int, int, str]] = set()
    for users, labels, values in parts:
        starts, ends = _segments(users, labels)
        if dedupe:
            keep = []
            for s, e in zip(starts.tolist(), ends.tolist()):
                key = (int(users[s]), int(labels[s]),
                       hashlib.sha256(np.ascontiguousarray(values[s:e]).tobytes()).hexdigest())
                keep.append(key not in seen)
                seen.add(key)
            starts, ends = starts[keep], ends[keep]
        out.append(_cut_windows(values, starts, ends, labels[starts], users[starts],
                                window, step))
    return _concat(out)


def load_wisdm_raw(path: PathLike, window: int = 80, step: int = 40, *,
                   test_users: Sequence[int] | None = None,
                   test_fraction: float = 0.3) -> HARData:
    r"""Load the WISDM v1.1 raw accelerometer file (Kwapisz et al. 2010).

    Format (``WISDM_ar_v1.1_raw.txt``, 20 Hz): records ``user,activity,timestamp,x,y,z;``
    where activity is one of :data:`WISDM_CLASSES`; several records may share a line,
    blank lines and empty records are skipped, a trailing empty field is ignored and a
    record with an empty x, y or z is dropped. Records are kept in file order; windows
    of ``window`` samples with step ``step`` are taken inside each run of consecutive
    records with the same user and activity (a window never spans two runs).

    Args:
        path (str or os.PathLike): the file, or a folder holding it (directly or in
            ``FordhamActivity/``).
        window (int, optional): window length in samples. Default: ``80`` (4 s).
        step (int, optional): window step. Default: ``40`` (50% overlap).
        test_users (sequence of int, optional): test users; default: the last
            ``round(test_fraction * n_users)`` users in sorted order.
        test_fraction (float, optional): see ``test_users``. Default: ``0.3``.

    Returns:
        HARData: channels ``["x", "y", "z"]`` (m/s^2, 10 = 1 g), labels indexing
        :data:`WISDM_CLASSES`.

    Raises:
        DataError: if the file is missing, a record is malformed (file and line in the
            message), a test user is absent, or a split has no complete window.
    """
    _check_window(window, step)
    path = _find_file(Path(path), ["WISDM_ar_v1.1_raw.txt"], "WISDM v1.1 raw file")
    users, labels, values = _parse_records(path, "v1", {c: i for i, c in enumerate(WISDM_CLASSES)})
    if len(users) == 0:
        raise DataError(f"WISDM raw file {str(path)!r} holds no record")
    x, y, ids = _windows_by_runs([(users, labels, values)], window, step)
    test = _split_ids(users, test_users, test_fraction, "user", f"{str(path)!r}")
    return _assemble(x, y, ids, test, WISDM_CLASSES, ["x", "y", "z"], f"{str(path)!r}")


_ARFF_ATTR = re.compile(r"""^@attribute\s+("[^"]*"|'[^']*'|[^\s{]+)\s*(.+?)\s*$""",
                        re.IGNORECASE)


def _unquote(s: str) -> str:
    s = s.strip()
    if len(s) >= 2 and s[0] == s[-1] and s[0] in "\"'":
        return s[1:-1]
    return s


class _ArffHeader(NamedTuple):
    """Attributes of an ARFF header and the columns the loader uses."""

    names: list[str]
    kinds: list[list[str] | None]  # None: numeric; list: nominal values
    user_col: int
    class_col: int
    feat_cols: list[int]


def _bad_header(path: Path, lineno: int, line: str) -> DataError:
    """The error for a malformed ARFF header line."""
    return DataError(f"malformed header in {_where(path, lineno)}: {line[:60]!r}")


def _arff_attribute(line: str, path: Path, lineno: int) -> tuple[str, list[str] | None]:
    """Name and kind (``None``: numeric; list: nominal values) of an ``@attribute`` line."""
    m = _ARFF_ATTR.match(line)
    if m is None:
        raise _bad_header(path, lineno, line)
    name, kind = _unquote(m.group(1)), m.group(2).strip()
    if kind.startswith("{") and kind.endswith("}"):
        return name, [_unquote(v) for v in kind[1:-1].split(",")]
    if kind.lower() in ("numeric", "real", "integer"):
        return name, None
    raise DataError(f"unsupported attribute type in {_where(path, lineno)}: {kind[:40]!r}")


def _arff_columns(names: list[str], kinds: list[list[str] | None], path: Path) -> _ArffHeader:
    """The finished header (at ``@data``): columns of ``user``, ``class`` and the features.

    Features are the numeric attributes other than ``user``, ``class`` and ``unique_id``.
    """
    lower = [n.lower() for n in names]
    if "user" not in lower or "class" not in lower:
        raise DataError(f"ARFF header of {str(path)!r} needs attributes 'user' and "
                        f"'class'; found {names}")
    user_col, class_col = lower.index("user"), lower.index("class")
    if kinds[class_col] is None:
        raise DataError(f"ARFF attribute 'class' of {str(path)!r} must be nominal")
    feat_cols = [i for i, (n, k) in enumerate(zip(lower, kinds))
                 if k is None and i not in (user_col, class_col) and n != "unique_id"]
    return _ArffHeader(names, kinds, user_col, class_col, feat_cols)


def _arff_row(line: str, head: _ArffHeader, path: Path,
              lineno: int) -> tuple[int, int, list[float]]:
    """User id, class index and features (``?`` -> NaN) of one ARFF data line."""
    fields = [_unquote(v) for v in line.split(",")]
    if len(fields) != len(head.names):
        raise _bad_row(path, lineno, f"expected {len(head.names)} comma-separated values, "
                                     f"found {len(fields)}")
    cls, classes = fields[head.class_col], head.kinds[head.class_col]
    if cls not in classes:
        raise _bad_row(path, lineno, f"class {cls[:40]!r} is not one of {classes}")
    try:
        uid = int(fields[head.user_col])
        feats = [np.nan if fields[i] == "?" else float(fields[i]) for i in head.feat_cols]
    except ValueError:
        raise _bad_row(path, lineno, "a user id or feature value is not a number") from None
    return uid, classes.index(cls), feats


def _read_arff(path: Path) -> tuple[_ArffHeader, np.ndarray, np.ndarray, np.ndarray]:
    """Header, user ids, labels and ``float64`` features (NaN: missing) of an ARFF file.

    ``%`` comment lines and blank lines are skipped; errors name the file and line.
    """
    names: list[str] = []
    kinds: list[list[str] | None] = []
    head: _ArffHeader | None = None
    rows: list[tuple[int, int, list[float]]] = []
    with _open_text(path) as f:
        for lineno, raw_line in enumerate(f, 1):
            line = raw_line.strip()
            if not line or line.startswith("%"):
                continue
            if head is not None:
                rows.append(_arff_row(line, head, path, lineno))
                continue
            low = line.lower()
            if low.startswith("@attribute"):
                name, kind = _arff_attribute(line, path, lineno)
                names.append(name)
                kinds.append(kind)
            elif low.startswith("@data"):
                head = _arff_columns(names, kinds, path)
            elif not low.startswith("@relation"):
                raise _bad_header(path, lineno, line)
    if head is None:
        raise DataError(f"{str(path)!r} is not an ARFF file: no @data section")
    if not rows:
        raise DataError(f"ARFF file {str(path)!r} has no data rows")
    return (head, np.asarray([r[0] for r in rows], np.int64),
            np.asarray([r[1] for r in rows], np.int64),
            np.asarray([r[2] for r in rows], dtype=np.float64))


def _impute_mean(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    """``float32`` copy of ``x`` with NaN replaced by the mean of the ``train`` rows of
    its column (0 where that column has no value)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column
        fill = np.nanmean(x[train], axis=0)
    fill = np.where(np.isfinite(fill), fill, 0.0)
    return np.where(np.isnan(x), fill, x).astype(np.float32)


def load_wisdm_arff(path: PathLike, *, test_users: Sequence[int] | None = None,
                    test_fraction: float = 0.3) -> WisdmFeatures:
    r"""Load the WISDM v1.1 transformed ARFF (one row of features per 10 s window).

    ``WISDM_ar_v1.1_transformed.arff`` has 46 attributes: ``UNIQUE_ID``, ``user``
    (nominal user id), 43 numeric features (``X0..X9``, ``Y0..Y9``, ``Z0..Z9`` binned
    distributions, ``XAVG``.., ``XPEAK``.., ``XABSOLDEV``.., ``XSTANDDEV``..,
    ``RESULTANT``) and ``class``. ``UNIQUE_ID``, ``user`` and ``class`` are not
    features. ``?`` (missing) becomes NaN, then is imputed with the mean of the
    training column (0 if the whole training column is missing).

    Args:
        path (str or os.PathLike): the ``.arff`` file, or a folder holding it
            (directly or in ``FordhamActivity/``).
        test_users (sequence of int, optional): test users; default: the last
            ``round(test_fraction * n_users)`` users in sorted order.
        test_fraction (float, optional): see ``test_users``. Default: ``0.3``.

    Returns:
        WisdmFeatures: ``float32`` features ``(N, 43)``, labels in the order of the
        header's ``class`` values (:data:`WISDM_CLASSES` for the real file).

    Raises:
        DataError: if the file is missing, the header lacks ``user`` or ``class``, or a
            data row is malformed (file and line in the message).
    """
    path = _find_file(Path(path), ["WISDM_ar_v1.1_transformed.arff"], "WISDM ARFF file")
    head, uid, y, x = _read_arff(path)
    test = _split_ids(uid, test_users, test_fraction, "user", f"{str(path)!r}")
    is_test = _test_mask(uid, test)
    if is_test.all():
        raise DataError(f"{str(path)!r}: the training split is empty")
    return WisdmFeatures(*_split_rows(_impute_mean(x, ~is_test), y, is_test),
                         list(head.kinds[head.class_col]),
                         [head.names[i] for i in head.feat_cols])


def load_wisdm2019(path_or_dir: PathLike, window: int = 80, step: int = 40, *,
                   test_subjects: Sequence[int] | None = None,
                   test_fraction: float = 0.3, drop_duplicates: bool = True) -> HARData:
    r"""Load WISDM 2019 watch accelerometer files (``data_16NN_accel_watch.txt``).

    Lines are ``subject,activityLetter,x,y,z;`` (the reduced subset shipped here) or
    ``subject,activityLetter,timestamp,x,y,z;`` (the original release), 20 Hz, m/s^2.
    Activity letters are those of :data:`WISDM2019_ACTIVITIES`. Windows of ``window``
    samples with step ``step`` are taken inside each run of consecutive lines with the
    same subject and activity within a file.

    Args:
        path_or_dir (str or os.PathLike): one file, or a folder holding the files
            (directly or in ``wisdm2019_watch_accel_reduced/``).
        window (int, optional): window length. Default: ``80`` (4 s).
        step (int, optional): window step. Default: ``40``.
        test_subjects (sequence of int, optional): test subjects; default: the last
            ``round(test_fraction * n_subjects)`` subjects in sorted order (15 of 51:
            1636..1650 for the real subset).
        test_fraction (float, optional): see ``test_subjects``. Default: ``0.3``.
        drop_duplicates (bool, optional): skip a run (subject, activity and every
            sample) identical to an earlier one; the reduced subset's file of subject
            1629 holds all its data twice. Default: ``True``.

    Returns:
        HARData: channels ``["x", "y", "z"]``; classes: the activities present, sorted
        by letter (``walking, jogging, stairs, sitting, standing, kicking`` for the
        reduced subset: letters A, B, C, D, E, M).

    Raises:
        DataError: if no file is found or a line is malformed (file and line in the
            message), a test subject is absent, or a split has no complete window.
    """
    _check_window(window, step)
    root = Path(path_or_dir)
    if root.is_file():
        files = [root]
    else:
        files = _glob_first((root, root / "wisdm2019_watch_accel_reduced",
                             root / "wisdm" / "wisdm2019_watch_accel_reduced"),
                            "data_*_accel_watch.txt")
        if not files:
            raise DataError(f"no WISDM 2019 file data_*_accel_watch.txt found in "
                            f"{str(root)!r} or its wisdm2019_watch_accel_reduced folder")
    letters = sorted(WISDM2019_ACTIVITIES)
    code = {c: i for i, c in enumerate(letters)}
    parts = [_parse_records(p, "2019", code) for p in files]
    parts = [p for p in parts if len(p[0])]
    if not parts:
        raise DataError(f"WISDM 2019 files in {str(root)!r} hold no record")
    x, y, ids = _windows_by_runs(parts, window, step, dedupe=drop_duplicates)
    present = np.unique(np.concatenate([p[1] for p in parts]))
    remap = np.full(len(letters), -1, np.int64)
    remap[present] = np.arange(len(present))
    classes = [WISDM2019_ACTIVITIES[letters[i]] for i in present]
    test = _split_ids(np.concatenate([p[0] for p in parts]), test_subjects,
                      test_fraction, "subject", f"WISDM 2019 {str(root)!r}")
    return _assemble(x, remap[y], ids, test, classes, ["x", "y", "z"],
                     f"WISDM 2019 {str(root)!r}")


# --------------------------------------------------------------------------- PAMAP2


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN per column; leading NaN take the first valid value; all-NaN -> 0."""
    valid = ~np.isnan(a)
    idx = np.where(valid, np.arange(len(a))[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = np.take_along_axis(a, idx, axis=0)
    has = valid.any(axis=0)
    first = np.where(has, valid.argmax(axis=0), 0)
    lead = np.isnan(out)
    out = np.where(lead, a[first, np.arange(a.shape[1])], out)
    return np.where(np.isnan(out), 0.0, out)


def _pamap2_labels(activities: Sequence[int]) -> tuple[list[int], np.ndarray]:
    """Kept activity ids (sorted) and the label of every activity id (-1: dropped)."""
    keep_ids = sorted({int(a) for a in activities})
    unknown = [a for a in keep_ids if a not in PAMAP2_ACTIVITIES]
    if unknown:
        raise DataError(f"unknown PAMAP2 activity ids {unknown}; known: "
                        f"{sorted(PAMAP2_ACTIVITIES)}")
    label_of = np.full(max(PAMAP2_ACTIVITIES) + 1, -1, np.int64)
    label_of[keep_ids] = np.arange(len(keep_ids))
    return keep_ids, label_of


def _pamap2_subject(path: Path) -> int:
    """Subject id ``1NN`` of a file ``subject1NN.dat``."""
    m = re.fullmatch(r"subject(\d+)\.dat", path.name)
    if m is None:
        raise DataError(f"PAMAP2 file name {path.name!r} is not subjectNNN.dat")
    return int(m.group(1))


def _pamap2_windows(path: Path, label_of: np.ndarray, window: int,
                    step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows, labels and subject ids of one ``subject1NN.dat`` (forward-filled)."""
    subject = _pamap2_subject(path)
    table = _read_table(path, _PAMAP2_NCOLS, what="PAMAP2", allow_nan=True,
                        dtype=np.float32)
    act = _int_column(table[:, 1], path, "activity id", [0, *PAMAP2_ACTIVITIES])
    signal = _ffill(table[:, PAMAP2_COLUMNS])
    del table
    starts, ends = _segments(act)
    sel = label_of[act[starts]] >= 0
    starts, ends = starts[sel], ends[sel]
    return _cut_windows(signal, starts, ends, label_of[act[starts]],
                        np.full(len(starts), subject, np.int64), window, step)


def load_pamap2(root: PathLike, window: int = 128, step: int = 64, *,
                test_subjects: Sequence[int] | None = None, test_fraction: float = 0.3,
                activities: Sequence[int] = PAMAP2_PROTOCOL_ACTIVITIES) -> HARData:
    r"""Load PAMAP2 Protocol recordings (Reiss & Stricker 2012) as 40 x ``window``.

    Each ``subject1NN.dat`` (subject id ``1NN`` from the file name) has 54
    space-separated columns at 100 Hz: 0 timestamp (s), 1 activity id, 2 heart rate
    (bpm), then three IMUs (hand 3-19, chest 20-36, ankle 37-53) of 17 columns each:
    temperature, acc +-16 g xyz, acc +-6 g xyz, gyro xyz, magnetometer xyz, 4
    (invalid) orientation values. Missing values (``NaN``, e.g. heart rate between
    its ~9 Hz samples, dropped IMU packets) are forward-filled per column over the
    whole file (leading NaN take the first valid value; an all-NaN column is 0).
    Rows of activity 0 (transient) and of activities not in ``activities`` are
    dropped; windows are taken inside contiguous runs of one activity.

    Channels (:data:`PAMAP2_CHANNELS`, 0-based columns :data:`PAMAP2_COLUMNS`):
    heart rate (2), then for hand (3..15), chest (20..32), ankle (37..49): temperature,
    acc16 xyz, acc6 xyz, gyro xyz, mag xyz -- 1 + 3 x 13 = 40.

    Args:
        root (str or os.PathLike): folder holding ``subject1NN.dat`` files, directly
            or in ``Protocol/`` or ``PAMAP2_Dataset/Protocol/``.
        window (int, optional): window length. Default: ``128`` (1.28 s).
        step (int, optional): window step. Default: ``64``.
        test_subjects (sequence of int, optional): test subjects (e.g. ``[105,
            106]``); default: the last ``round(test_fraction * n)`` subjects in sorted
            order (107, 108, 109 for the full protocol).
        test_fraction (float, optional): see ``test_subjects``. Default: ``0.3``.
        activities (sequence of int, optional): activity ids kept, labelled in sorted
            order. Default: the 12 protocol activities
            :data:`PAMAP2_PROTOCOL_ACTIVITIES`.

    Returns:
        HARData: 40 channels; classes: names of ``sorted(activities)``.

    Raises:
        DataError: if no file is found, a row is malformed (file and line in the
            message), an activity id is unknown, or a split has no complete window.
    """
    _check_window(window, step)
    base = Path(root)
    files = _glob_first((base, base / "Protocol", base / "PAMAP2_Dataset" / "Protocol"),
                        "subject1*.dat")
    if not files:
        raise DataError(f"no PAMAP2 file subject1NN.dat found in {str(base)!r} (also "
                        "looked in Protocol/ and PAMAP2_Dataset/Protocol/)")
    keep_ids, label_of = _pamap2_labels(activities)
    parts = [_pamap2_windows(path, label_of, window, step) for path in files]
    test = _split_ids([_pamap2_subject(p) for p in files], test_subjects, test_fraction,
                      "subject", f"PAMAP2 {str(base)!r}")
    return _assemble(*_concat(parts), test, [PAMAP2_ACTIVITIES[a] for a in keep_ids],
                     PAMAP2_CHANNELS, f"PAMAP2 {str(base)!r}")


# --------------------------------------------------------------------------- by name

#: Names accepted by :func:`load_har_dataset`.
HAR_DATASETS = ("ucihar", "ucihar-official", "wisdm-raw", "wisdm-arff", "wisdm2019",
                "pamap2")


def load_har_dataset(name: str, data_dir: PathLike | None = None):
    r"""Load a HAR data set by name from the data directory (not normalised).

    * ``ucihar``: :func:`load_ucihar_rebuilt` (``hapt`` / ``hapt.tgz``);
    * ``ucihar-official``: :func:`load_ucihar` on folder ``ucihar`` (or archive
      ``ucihar.tgz``) holding ``train/`` and ``test/`` (or ``UCI HAR Dataset/``);
    * ``wisdm-raw``, ``wisdm-arff``, ``wisdm2019``: :func:`load_wisdm_raw`,
      :func:`load_wisdm_arff`, :func:`load_wisdm2019` on folder ``wisdm`` (or
      ``wisdm.tgz``);
    * ``pamap2``: :func:`load_pamap2` on folder ``pamap2`` (or ``pamap2.tgz``).

    Returns:
        HARData, or WisdmFeatures for ``wisdm-arff``.

    Raises:
        DataError: if the name is unknown or the data set is missing or malformed.
    """
    if name == "ucihar":
        return load_ucihar_rebuilt(data_dir)
    if name == "ucihar-official":
        folder = locate_dataset("ucihar", data_dir, archive="ucihar.tgz",
                                marker=("train/y_train.txt", "UCI HAR Dataset/train/y_train.txt"))
        return load_ucihar(folder)
    if name in ("wisdm-raw", "wisdm-arff", "wisdm2019"):
        folder = locate_dataset("wisdm", data_dir, archive="wisdm.tgz")
        loader = {"wisdm-raw": load_wisdm_raw, "wisdm-arff": load_wisdm_arff,
                  "wisdm2019": load_wisdm2019}[name]
        return loader(folder)
    if name == "pamap2":
        return load_pamap2(locate_dataset("pamap2", data_dir, archive="pamap2.tgz"))
    raise DataError(f"unknown HAR data set {name!r}; available: {', '.join(HAR_DATASETS)}")
