r"""GazeCapture eye tracking (Krafka et al., CVPR 2016, "Eye Tracking for Everyone").

:func:`load_gazecapture` reads the data set in its documented on-disk layout and
returns the iTracker inputs as :class:`GazeArrays`: face, left-eye and right-eye crops
(``uint8``), the 25 x 25 face grid (flattened, ``float32``) and the gaze target in
centimetres relative to the camera. :class:`GazeDataset` turns them into a
:class:`torch.utils.data.Dataset` yielding ``((face, left, right, grid), target)``.

Layout: a root folder (``<data_dir>/gazecapture/``, an archive
``<data_dir>/gazecapture.tgz`` unpacked once into the cache, or the data directory
itself if it holds the session folders) with one folder per recording session, named
by five digits (``00002``). Each session holds a folder ``frames/`` of JPEG frames and
JSON files whose arrays are indexed by frame number:

* ``appleFace.json``, ``appleLeftEye.json``, ``appleRightEye.json``: ``X``, ``Y``
  (top-left corner in pixels; relative to the frame for the face, relative to the
  top-left corner of the *face box* for the eyes), ``W``, ``H``, ``IsValid``. The left
  eye is the subject's left eye (it appears on the right of the image).
* ``dotInfo.json``: ``XCam``, ``YCam``: the gaze target in cm relative to the camera
  (the regression target); ``DotNum``, ``XPts``, ``YPts``, ``Time`` are not used.
* ``faceGrid.json``: ``X``, ``Y`` (1-indexed top-left cell), ``W``, ``H`` on a 25 x 25
  grid, ``IsValid``.
* ``frames.json``: the frame file names in ``frames/`` (optional: without it the names
  ``00000.jpg`` .. are generated from ``info.json``'s ``TotalFrames``).
* ``info.json``: ``Dataset`` (``"train"``, ``"val"`` or ``"test"``), ``TotalFrames``,
  ...; ``screen.json`` and ``motion.json`` are not used.

Like iTracker, only frames with a valid face grid and valid face and eye detections
(all four ``IsValid`` flags set) are used. Box coordinates are truncated to integers
as in the reference PyTorch preparation script of iTracker.

Decoding needs Pillow. The decoded arrays are cached as ``.npz`` files in
``cache_dir()/gazecapture-arrays/``. Note the size of the full data set: one frame takes
``9 * size**2 + 2,500`` bytes (about 39 KB at ``size=64``), i.e. tens of GB for the
whole training split; use ``max_sessions`` or ``sessions`` for subsets.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mobileprune.data.images import _pil, _pil_version, channel_stats
from mobileprune.data.paths import cache_dir, locate_dataset, resolve_data_dir, write_npz_cache
from mobileprune.errors import DataError

__all__ = [
    "GAZE_SPLITS",
    "GRID_SIZE",
    "GazeArrays",
    "GazeDataset",
    "load_gazecapture",
]

#: Values of ``split`` accepted by :func:`load_gazecapture` (``"all"``: every session).
GAZE_SPLITS = ("train", "val", "test", "all")
#: Side of the square face grid (iTracker: 25 x 25 cells).
GRID_SIZE = 25

_BOX_FILES = ("appleFace.json", "appleLeftEye.json", "appleRightEye.json")
_BOX_KEYS = ("X", "Y", "W", "H", "IsValid")
_SESSION_RE = re.compile(r"\d{5}")
_CACHE_VERSION = 1
_CACHE_SUBDIR = "gazecapture-arrays"  # not "gazecapture": gazecapture.tgz unpacks there
_ARRAY_NAMES = ("face", "left", "right", "grid", "target", "session", "frame")


class GazeArrays(NamedTuple):
    r"""The valid frames of GazeCapture sessions as numpy arrays (iTracker inputs).

    Attributes:
        face (numpy.ndarray): face crops, ``uint8`` of shape ``(N, 3, size, size)``, RGB.
        left (numpy.ndarray): crops of the subject's left eye (right side of the
            image), ``uint8`` ``(N, 3, size, size)``.
        right (numpy.ndarray): crops of the subject's right eye, ``uint8``
            ``(N, 3, size, size)``.
        grid (numpy.ndarray): face grids, ``float32`` of shape ``(N, 625)``: the 25 x 25
            mask flattened row-major (cell ``(row, col)`` at ``row * 25 + col``), as
            iTracker's face-grid fully connected layer takes it.
        target (numpy.ndarray): gaze target ``(XCam, YCam)`` in cm relative to the
            camera, ``float32`` ``(N, 2)``.
        session (numpy.ndarray): session number (``int("00002")`` = 2) of each frame,
            ``int32`` ``(N,)``.
        frame (numpy.ndarray): index of each frame in its session's JSON arrays (and
            in ``frames.json``), ``int32`` ``(N,)``.
    """

    face: np.ndarray
    left: np.ndarray
    right: np.ndarray
    grid: np.ndarray
    target: np.ndarray
    session: np.ndarray
    frame: np.ndarray


class _Session(NamedTuple):
    """What the JSON files of one session say about its valid frames."""

    name: str
    files: tuple[str, ...]  # frame file names, one per valid frame
    frames: np.ndarray      # int32 indices of the valid frames
    face: np.ndarray        # int64 (n, 4) x, y, w, h in frame pixels
    left: np.ndarray        # int64 (n, 4), already offset by the face corner
    right: np.ndarray
    grid: np.ndarray        # int64 (n, 4) 1-indexed x, y, w, h
    target: np.ndarray      # float32 (n, 2)


# ------------------------------------------------------------------ JSON reading


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise DataError(f"GazeCapture session {str(path.parent)!r} lacks {path.name} "
                        f"({str(path)!r} does not exist)")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except OSError as exc:
        raise DataError(f"cannot read {path.name} {str(path)!r}: {exc}") from exc
    except (ValueError, UnicodeDecodeError) as exc:
        raise DataError(f"{path.name} {str(path)!r} is not valid JSON: {exc}") from exc


def _json_object(path: Path) -> dict[str, Any]:
    obj = _read_json(path)
    if not isinstance(obj, dict):
        raise DataError(f"{path.name} {str(path)!r} holds a {type(obj).__name__}, "
                        "expected a JSON object")
    return obj


def _numeric(obj: dict[str, Any], key: str, path: Path, n: int, ref: str) -> np.ndarray:
    """``obj[key]`` as a float64 array of length ``n`` (``ref`` names where n is from)."""
    if key not in obj:
        raise DataError(f"{path.name} {str(path)!r} lacks the key {key!r} "
                        f"(keys: {', '.join(sorted(map(str, obj)))})")
    values = obj[key]
    if not isinstance(values, list):
        raise DataError(f"{path.name} {str(path)!r}: {key!r} holds a "
                        f"{type(values).__name__}, expected an array")
    if len(values) != n:
        raise DataError(f"{path.name} {str(path)!r}: array {key!r} has {len(values)} "
                        f"entries but {ref} has {n}; the arrays must have one entry per "
                        "frame")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path.name} {str(path)!r}: array {key!r} holds non-numeric "
                        f"values: {exc}") from exc
    if arr.shape != (n,):
        raise DataError(f"{path.name} {str(path)!r}: array {key!r} must hold {n} numbers")
    return arr


def _session_split(folder: Path) -> str:
    path = folder / "info.json"
    info = _json_object(path)
    split = info.get("Dataset")
    if split not in ("train", "val", "test"):
        raise DataError(f"info.json {str(path)!r}: 'Dataset' is {split!r}, expected "
                        "'train', 'val' or 'test'")
    return split


def _frame_names(folder: Path) -> tuple[list[str], str]:
    """Frame file names and the name of the file their count comes from."""
    path = folder / "frames.json"
    if path.is_file():
        names = _read_json(path)
        if not isinstance(names, list) or not all(isinstance(s, str) for s in names):
            raise DataError(f"frames.json {str(path)!r} must hold an array of file names")
        bad = [s for s in names if Path(s).name != s or s in ("", ".", "..")]
        if bad:
            raise DataError(f"frames.json {str(path)!r}: {bad[0]!r} is not a plain file "
                            "name")
        return names, "frames.json"
    info_path = folder / "info.json"
    total = _json_object(info_path).get("TotalFrames")
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise DataError(f"GazeCapture session {str(folder)!r} has no frames.json and "
                        f"info.json {str(info_path)!r} has no valid 'TotalFrames' "
                        f"({total!r})")
    return [f"{i:05d}.jpg" for i in range(total)], "info.json TotalFrames"


def _read_session(folder: Path) -> _Session:
    names, ref = _frame_names(folder)
    n = len(names)
    boxes, valid = [], np.ones(n, dtype=bool)
    for fname in _BOX_FILES + ("faceGrid.json",):
        path = folder / fname
        obj = _json_object(path)
        cols = [_numeric(obj, k, path, n, ref) for k in _BOX_KEYS]
        valid &= cols[4] > 0  # 1 = detected; 0 (or a null) = not
        boxes.append(np.stack(cols[:4], axis=1))
    dot_path = folder / "dotInfo.json"
    dot = _json_object(dot_path)
    target = np.stack([_numeric(dot, k, dot_path, n, ref) for k in ("XCam", "YCam")],
                      axis=1)
    idx = np.flatnonzero(valid)
    for fname, b in zip(_BOX_FILES + ("faceGrid.json",), boxes):
        bad = np.flatnonzero(~np.isfinite(b[idx]).all(axis=1))
        if len(bad):
            raise DataError(f"{fname} {str(folder / fname)!r}: frame {int(idx[bad[0]])} is "
                            "marked valid but its box holds a non-number")
    # Truncation to integers as in iTracker's prepareDataset.py (astype(int)).
    face, left, right = (np.trunc(b[idx]).astype(np.int64) for b in boxes[:3])
    left[:, :2] += face[:, :2]  # eye boxes are relative to the face box
    right[:, :2] += face[:, :2]
    grid = np.rint(boxes[3][idx]).astype(np.int64)
    for fname, b in zip(_BOX_FILES + ("faceGrid.json",), (face, left, right, grid)):
        small = np.flatnonzero((b[:, 2] < 1) | (b[:, 3] < 1))
        if len(small):
            raise DataError(
                f"{fname} {str(folder / fname)!r}: frame {int(idx[small[0]])} is marked "
                f"valid but its box is {int(b[small[0], 2])}x{int(b[small[0], 3])} "
                "pixels/cells (W and H must be >= 1)")
    if not np.isfinite(target[idx]).all():
        raise DataError(f"dotInfo.json {str(dot_path)!r}: XCam/YCam of a valid frame is "
                        "not a finite number")
    return _Session(folder.name, tuple(names[i] for i in idx), idx.astype(np.int32),
                    face, left, right, grid, target[idx].astype(np.float32))


# ----------------------------------------------------------------- crops, grids


def _crop(img: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The ``(h, w, 3)`` region ``box = (x, y, w, h)`` of ``img``; zeros outside it."""
    x, y, w, h = (int(v) for v in box)
    out = np.zeros((h, w, img.shape[2]), dtype=img.dtype)
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, img.shape[1]), min(y + h, img.shape[0])
    if x1 > x0 and y1 > y0:
        out[y0 - y:y1 - y, x0 - x:x1 - x] = img[y0:y1, x0:x1]
    return out


def _face_grid(grid: np.ndarray) -> np.ndarray:
    """``(n, 4)`` 1-indexed ``X, Y, W, H`` -> ``float32 (n, 625)`` row-major masks."""
    cells = np.arange(GRID_SIZE)
    x0, y0 = grid[:, 0:1] - 1, grid[:, 1:2] - 1
    cols = (cells >= x0) & (cells < x0 + grid[:, 2:3])  # (n, 25), clipped by arange
    rows = (cells >= y0) & (cells < y0 + grid[:, 3:4])
    mask = rows[:, :, None] & cols[:, None, :]
    return mask.reshape(len(grid), GRID_SIZE * GRID_SIZE).astype(np.float32)


def _session_numbers(sessions: list[_Session]) -> np.ndarray:
    """``int32`` session number of every valid frame of ``sessions``, in order."""
    return np.concatenate([np.full(len(s.frames), int(s.name), np.int32) for s in sessions])


def _decode(root: Path, sessions: list[_Session], size: int) -> GazeArrays:
    image = _pil()
    n = sum(len(s.frames) for s in sessions)
    face = np.empty((n, size, size, 3), np.uint8)
    left, right = np.empty_like(face), np.empty_like(face)
    i = 0
    for s in sessions:
        for k, fname in enumerate(s.files):
            path = root / s.name / "frames" / fname
            if not path.is_file():
                raise DataError(f"frame file {str(path)!r} (frame {int(s.frames[k])} of "
                                f"session {s.name}) does not exist")
            try:
                with image.open(path) as im:
                    img = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (OSError, ValueError, SyntaxError) as exc:
                raise DataError(f"cannot decode frame image {str(path)!r}: {exc}") from exc
            for out, box in ((face, s.face[k]), (left, s.left[k]), (right, s.right[k])):
                crop = image.fromarray(_crop(img, box))
                out[i] = np.asarray(crop.resize((size, size), image.BILINEAR))
            i += 1
    return GazeArrays(
        np.ascontiguousarray(face.transpose(0, 3, 1, 2)),
        np.ascontiguousarray(left.transpose(0, 3, 1, 2)),
        np.ascontiguousarray(right.transpose(0, 3, 1, 2)),
        _face_grid(np.concatenate([s.grid for s in sessions])),
        np.concatenate([s.target for s in sessions]),
        _session_numbers(sessions),
        np.concatenate([s.frames for s in sessions]),
    )


# ------------------------------------------------------------------------ cache


def _cache_key(root: Path, split: str, size: int, sessions: list[_Session]) -> tuple[Path, str]:
    """Cache file path and the key stored inside it."""
    names = [s.name for s in sessions]
    what = json.dumps([str(root.resolve()), split, size, names])
    h = hashlib.sha256(json.dumps({"v": _CACHE_VERSION, "what": what,
                                   "pillow": _pil_version()}).encode())
    for s in sessions:  # the JSON files decide which frames and boxes are used
        for fname in _BOX_FILES + ("faceGrid.json", "dotInfo.json", "frames.json",
                                   "info.json"):
            try:
                st = (root / s.name / fname).stat()
                h.update(f"\n{s.name}/{fname}\0{st.st_size}\0{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"\n{s.name}/{fname}\0-".encode())
    where = hashlib.sha256(what.encode()).hexdigest()[:8]
    label = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{root.name}-{split}-{size}")[:60]
    key = h.hexdigest()[:24]
    return cache_dir() / _CACHE_SUBDIR / f"{label}-{where}-{key}.npz", key


def _read_cache(path: Path, key: str, size: int, sessions: list[_Session]) -> GazeArrays | None:
    """The cached arrays if the file is intact and matches ``sessions``, else None."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            arrays = GazeArrays(*(z[k] for k in _ARRAY_NAMES))
    except (OSError, KeyError, ValueError, EOFError, TypeError):
        return None
    n = sum(len(s.frames) for s in sessions)
    img = (n, 3, size, size)
    expect = {"face": (np.uint8, img), "left": (np.uint8, img), "right": (np.uint8, img),
              "grid": (np.float32, (n, GRID_SIZE * GRID_SIZE)),
              "target": (np.float32, (n, 2)), "session": (np.int32, (n,)),
              "frame": (np.int32, (n,))}
    for name, (dtype, shape) in expect.items():
        a = getattr(arrays, name)
        if a.dtype != dtype or a.shape != shape:
            return None
    ref_session = _session_numbers(sessions)
    ref_frame = np.concatenate([s.frames for s in sessions])
    if not (np.array_equal(arrays.session, ref_session)
            and np.array_equal(arrays.frame, ref_frame)
            and np.array_equal(arrays.target, np.concatenate([s.target for s in sessions]))):
        return None
    return arrays


def _write_cache(path: Path, key: str, arrays: GazeArrays) -> None:
    write_npz_cache(path, {"key": np.array(key), **arrays._asdict()}, "GazeCapture")


# ----------------------------------------------------------------------- loader


def _find_root(data_dir: str | os.PathLike[str] | None) -> Path:
    base = resolve_data_dir(data_dir)
    try:
        return locate_dataset("gazecapture", base)
    except DataError as exc:
        if _session_folders(base):
            return base  # the data directory itself is the GazeCapture root
        raise DataError(f"{exc}; or session folders with 5-digit names (e.g. 00002) "
                        f"directly in {base}") from exc


def _session_folders(root: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(root)
                      if _SESSION_RE.fullmatch(e.name) and e.is_dir())
    except OSError as exc:
        raise DataError(f"cannot list GazeCapture folder {str(root)!r}: {exc}") from exc


def _session_names(sessions: Iterable[int | str]) -> list[str]:
    if isinstance(sessions, (str, int)):
        sessions = [sessions]
    out = []
    for s in sessions:
        if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s <= 99999:
            out.append(f"{int(s):05d}")
        elif isinstance(s, str) and s.isdigit() and len(s) <= 5:
            out.append(s.zfill(5))
        else:
            raise DataError(f"session {s!r} is not a GazeCapture session number "
                            "(e.g. 2 or '00002')")
    return out


def _check_args(split: str, size: int, max_sessions: int | None) -> int:
    """Check the arguments of :func:`load_gazecapture`; returns ``size`` as an int."""
    if split not in GAZE_SPLITS:
        raise DataError(f"unknown GazeCapture split {split!r}: expected one of "
                        f"{', '.join(GAZE_SPLITS)}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"size must be a positive integer, got {size!r}")
    if max_sessions is not None and (isinstance(max_sessions, bool) or max_sessions < 1):
        raise DataError(f"max_sessions must be a positive integer, got {max_sessions!r}")
    return int(size)


def _select_sessions(root: Path, split: str, sessions: Sequence[int | str] | None,
                     max_sessions: int | None) -> list[str]:
    """Sorted names of the sessions to read: those of ``split`` (among ``sessions`` if
    given), at most ``max_sessions``; every ``info.json`` looked at is checked."""
    names = _session_folders(root)
    if not names:
        raise DataError(f"GazeCapture folder {str(root)!r} holds no session folder "
                        "(5-digit names such as 00002)")
    if sessions is not None:
        wanted = _session_names(sessions)
        missing = sorted(set(wanted) - set(names))
        if missing:
            raise DataError(f"GazeCapture folder {str(root)!r} has no session "
                            f"{', '.join(missing)}")
        names = sorted(set(wanted))
    of = {s: _session_split(root / s) for s in names}  # also checks every info.json
    if split != "all":
        names = [s for s in names if of[s] == split]
    if max_sessions is not None:
        names = names[:max_sessions]
    return names


def _valid_sessions(root: Path, names: list[str], split: str) -> list[_Session]:
    """The sessions ``names`` that have a valid frame; DataError if none has."""
    parsed = [_read_session(root / s) for s in names]
    parsed = [s for s in parsed if len(s.frames)]
    if not parsed:
        raise DataError(f"GazeCapture folder {str(root)!r} has no valid frame (face, both "
                        f"eyes and face grid detected) in split {split!r}"
                        + (f" among sessions {', '.join(names)}" if names else
                           " (no session of that split)"))
    return parsed


def _decode_cached(root: Path, split: str, size: int, parsed: list[_Session],
                   cache: bool) -> GazeArrays:
    """The decoded frames of ``parsed``, from the cache if it matches (with ``cache``)."""
    key_path, key = _cache_key(root, split, size, parsed) if cache else (None, "")
    if key_path is not None and key_path.is_file():
        hit = _read_cache(key_path, key, size, parsed)
        if hit is not None:
            return hit
    arrays = _decode(root, parsed, size)
    if key_path is not None:
        _write_cache(key_path, key, arrays)
    return arrays


def load_gazecapture(
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    size: int = 64,
    max_sessions: int | None = None,
    sessions: Sequence[int | str] | None = None,
    cache: bool = True,
) -> GazeArrays:
    r"""Load the valid frames of GazeCapture sessions as iTracker inputs.

    The root folder is ``<data_dir>/gazecapture/`` (or the archive
    ``<data_dir>/gazecapture.tgz``, unpacked once into the cache), or the data
    directory itself if it holds session folders; see the module docstring for the
    files of a session. Sessions are read in sorted order and only those whose
    ``info.json`` ``Dataset`` equals ``split`` are kept.

    For every frame whose face grid and face and eye detections are all valid:

    * face crop: the ``appleFace`` box ``(X, Y, W, H)`` of the frame; eye crops: the
      ``appleLeftEye``/``appleRightEye`` boxes moved by the face box's top-left corner
      (the eye boxes are relative to the face box). Coordinates are truncated to
      integers. Parts of a box outside the frame are filled with zeros (the box is
      not shifted into the frame). Each crop is resized to ``size`` x ``size`` with
      Pillow's bilinear filter and kept as RGB.
    * face grid: a 25 x 25 mask with ones at rows ``Y-1 .. Y+H-2`` and columns
      ``X-1 .. X+W-2`` (``faceGrid.json`` is 1-indexed), clipped to the grid,
      flattened row-major to 625 values.
    * target: ``(XCam, YCam)`` of ``dotInfo.json`` in cm.

    Decoding is cached as an ``.npz`` file in ``cache_dir()/gazecapture-arrays/``, keyed by
    the resolved root, ``split``, ``size``, the selected sessions, the size and
    modification time of their JSON files and the Pillow version; it is written
    atomically (temporary file, then rename). A cache file that is unreadable or does
    not match the JSON files is ignored and rewritten. Frames are not checked once
    cached.

    Args:
        data_dir (str or os.PathLike, optional): data directory; defaults to the
            environment variable ``MOBILEPRUNE_DATA``. Default: ``None``.
        split (str, optional): ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every
            session). Default: ``"train"``.
        size (int, optional): side of the square face and eye crops. Default: ``64``.
        max_sessions (int, optional): read only the first ``max_sessions`` sessions
            of the split (sorted by name). Default: ``None`` (all).
        sessions (sequence of int or str, optional): read only these sessions (e.g.
            ``[2, "00003"]``), as far as they belong to ``split``. Default: ``None``.
        cache (bool, optional): use and write the cache. Default: ``True``.

    Returns:
        GazeArrays: ``face``, ``left``, ``right`` ``uint8 (N, 3, size, size)``,
        ``grid`` ``float32 (N, 625)``, ``target`` ``float32 (N, 2)``, ``session`` and
        ``frame`` ``int32 (N,)``.

    Raises:
        DataError: if the data directory or the data set is not found, ``split`` is
            unknown, ``size`` < 1, ``max_sessions`` < 1, a requested session does not
            exist, a session lacks a JSON file or a key (naming it), its arrays differ
            in length (naming the file, the key and both lengths), a frame file is
            missing or cannot be decoded (naming it), or no valid frame is left.

    Examples:
        >>> g = load_gazecapture("/work/shared/data", "val", size=64)  # doctest: +SKIP
        >>> g.face.shape[1:], g.grid.shape[1:], g.target.dtype  # doctest: +SKIP
        ((3, 64, 64), (625,), dtype('float32'))
    """
    size = _check_args(split, size, max_sessions)
    root = _find_root(data_dir)
    names = _select_sessions(root, split, sessions, max_sessions)
    return _decode_cached(root, split, size, _valid_sessions(root, names, split), cache)


# ----------------------------------------------------------------------- dataset


class GazeDataset(Dataset):
    r"""iTracker inputs as a :class:`~torch.utils.data.Dataset`.

    Item ``i`` is ``((face, left, right, grid), target)``: three ``float32`` images
    ``(3, size, size)`` scaled to [0, 1] minus the per-channel mean of their stream,
    the ``float32 (625,)`` face grid and the ``float32 (2,)`` target, so a
    :class:`~torch.utils.data.DataLoader` yields batches of the same structure.

    Args:
        arrays (GazeArrays): the frames, e.g. from :func:`load_gazecapture`.
        mean (array-like, optional): per-channel means on the [0, 1] scale, shape
            ``(3,)`` (shared by the three streams) or ``(3, 3)`` (rows: face, left,
            right; columns: R, G, B). Default: ``None``: computed from ``arrays``
            (use the training set's :attr:`mean` for the other splits).

    Attributes:
        mean (numpy.ndarray): ``float32 (3, 3)``, the means subtracted (rows face,
            left, right).
    """

    def __init__(self, arrays: GazeArrays, mean: Any = None) -> None:
        n = len(arrays.face)
        if any(len(a) != n for a in arrays[:5]) or arrays.face.ndim != 4:
            raise DataError("GazeArrays fields must be arrays with the same first dimension")
        self.arrays = arrays
        if mean is None:
            mean = np.stack([channel_stats(a)[0] for a in arrays[:3]])
        mean = np.asarray(mean, dtype=np.float32)
        if mean.shape == (3,):
            mean = np.tile(mean, (3, 1))
        if mean.shape != (3, 3):
            raise DataError(f"mean must have shape (3,) or (3, 3), got {mean.shape}")
        self.mean = mean
        self._mean = torch.from_numpy(mean).reshape(3, 3, 1, 1)

    def __len__(self) -> int:
        return len(self.arrays.face)

    def __getitem__(self, i: int):
        a = self.arrays
        images = tuple(torch.from_numpy(np.asarray(x[i])).to(torch.float32).div_(255.0)
                       .sub_(self._mean[k]) for k, x in enumerate(a[:3]))
        grid = torch.from_numpy(np.asarray(a.grid[i], dtype=np.float32))
        target = torch.from_numpy(np.asarray(a.target[i], dtype=np.float32))
        return (*images, grid), target
