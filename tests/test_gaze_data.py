"""Tests of the GazeCapture loader (mobileprune.data.gaze) on small generated sessions
written in the documented on-disk layout (JSON files + frames/*.jpg)."""

from __future__ import annotations

import json
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mobileprune.data import gaze
from mobileprune.data.gaze import GRID_SIZE, GazeArrays, GazeDataset, load_gazecapture
from mobileprune.data.paths import ENV_CACHE, ENV_DATA
from mobileprune.errors import DataError

Image = pytest.importorskip("PIL.Image")

FRAME_W, FRAME_H = 96, 72
BACKGROUND = (128, 128, 128)
LEFT_COLOR = (30, 210, 40)    # subject's left eye: right side of the image
RIGHT_COLOR = (40, 50, 220)   # subject's right eye: left side of the image
JPEG_TOL = 8                  # quality=100, no chroma subsampling, flat blocks


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_DATA, raising=False)


# ------------------------------------------------------------------ generated data


def face_color(session: int, frame: int) -> tuple[int, int, int]:
    return (200, 30 + 17 * frame, 60 + 9 * (session % 10))


def draw_frame(face, left, right, fcolor) -> np.ndarray:
    """Ground-truth frame: flat background, a face block, two eye blocks (boxes are
    integer ``(x, y, w, h)`` in frame pixels; parts outside the frame are dropped)."""
    img = np.empty((FRAME_H, FRAME_W, 3), np.uint8)
    img[:] = BACKGROUND
    for (x, y, w, h), color in ((face, fcolor), (left, LEFT_COLOR), (right, RIGHT_COLOR)):
        img[max(y, 0):max(y + h, 0), max(x, 0):max(x + w, 0)] = color
    return img


def write_session(root: Path, sid: int, split: str, faces, grids, targets,
                  invalid=None, frames_json=True):
    """One session folder. ``faces``: per frame face box (x, y, w, h); the eye boxes
    are at fixed offsets inside it. ``invalid``: {json file name: [frames]} whose
    IsValid is 0. Returns the ground-truth frames and eye boxes (frame coordinates)."""
    invalid = invalid or {}
    folder = root / f"{sid:05d}"
    (folder / "frames").mkdir(parents=True)
    n = len(faces)
    names = [f"{i:05d}.jpg" for i in range(n)]
    boxes = {"appleFace.json": [], "appleLeftEye.json": [], "appleRightEye.json": []}
    truth = []
    for i, (x, y, w, h) in enumerate(faces):
        # Eye boxes relative to the face box's top-left corner.
        lrel = (w * 3 // 5, h // 4, w // 4, h // 5)
        rrel = (w // 8 + 6, h // 4, w // 4 + 1, h // 5 + 1)
        boxes["appleFace.json"].append((x, y, w, h))
        boxes["appleLeftEye.json"].append(lrel)
        boxes["appleRightEye.json"].append(rrel)
        lbox = (x + lrel[0], y + lrel[1], lrel[2], lrel[3])
        rbox = (x + rrel[0], y + rrel[1], rrel[2], rrel[3])
        img = draw_frame((x, y, w, h), lbox, rbox, face_color(sid, i))
        Image.fromarray(img).save(folder / "frames" / names[i], quality=100, subsampling=0)
        truth.append({"img": img, "face": (x, y, w, h), "left": lbox, "right": rbox})
    for fname, bx in boxes.items():
        d = {k: [float(b[j]) for b in bx] for j, k in enumerate("XYWH")}
        d["IsValid"] = [0 if i in invalid.get(fname, ()) else 1 for i in range(n)]
        (folder / fname).write_text(json.dumps(d))
    grid = {k: [int(g[j]) for g in grids] for j, k in enumerate("XYWH")}
    grid["IsValid"] = [0 if i in invalid.get("faceGrid.json", ()) else 1 for i in range(n)]
    (folder / "faceGrid.json").write_text(json.dumps(grid))
    (folder / "dotInfo.json").write_text(json.dumps({
        "DotNum": list(range(n)), "XPts": [100.0] * n, "YPts": [200.0] * n,
        "XCam": [float(t[0]) for t in targets], "YCam": [float(t[1]) for t in targets],
        "Time": [0.1 * i for i in range(n)]}))
    if frames_json:
        (folder / "frames.json").write_text(json.dumps(names))
    (folder / "info.json").write_text(json.dumps({
        "TotalFrames": n, "NumFaceDetections": n, "NumEyeDetections": n,
        "Dataset": split, "DeviceName": "iPhone 6"}))
    (folder / "screen.json").write_text(json.dumps(
        {"H": [568.0] * n, "W": [320.0] * n, "Orientation": [1] * n}))
    (folder / "motion.json").write_text("[]")
    return truth


def make_gazecapture(root: Path) -> dict:
    """Three sessions: 00002 train (6 frames, 4 of them invalid in one IsValid array
    each), 00005 val (3 frames, the first with a face box sticking out of the frame's
    top-left corner; no frames.json), 00010 test (3 frames, face grids at the borders)."""
    rng = np.random.default_rng(0)
    sessions = {}
    faces = [(10, 8, 40, 40), (30, 12, 44, 40), (20, 20, 36, 40), (12, 10, 40, 36),
             (40, 4, 40, 44), (50, 20, 40, 48)]
    grids = [(3, 5, 7, 9), (4, 6, 8, 8), (5, 5, 5, 5), (6, 6, 6, 6), (7, 7, 5, 5),
             (9, 2, 6, 10)]
    targets = rng.normal(0, 5, (6, 2)).round(4)
    invalid = {"faceGrid.json": [1], "appleFace.json": [2], "appleLeftEye.json": [3],
               "appleRightEye.json": [4]}
    sessions[2] = dict(truth=write_session(root, 2, "train", faces, grids, targets, invalid),
                       grids=grids, targets=targets, valid=[0, 5])
    faces = [(-10, -6, 40, 30), (30, 20, 40, 40), (8, 8, 48, 40)]
    grids = [(2, 3, 10, 12), (10, 11, 4, 3), (12, 1, 6, 7)]
    targets = rng.normal(0, 5, (3, 2)).round(4)
    sessions[5] = dict(truth=write_session(root, 5, "val", faces, grids, targets,
                                           frames_json=False),
                       grids=grids, targets=targets, valid=[0, 1, 2])
    faces = [(20, 10, 40, 40), (46, 30, 50, 50), (0, 0, 32, 40)]
    grids = [(1, 1, 4, 6), (20, 22, 10, 8), (24, 25, 3, 3)]  # corner; clipped; clipped
    targets = rng.normal(0, 5, (3, 2)).round(4)
    sessions[10] = dict(truth=write_session(root, 10, "test", faces, grids, targets),
                        grids=grids, targets=targets, valid=[0, 1, 2])
    return sessions


@pytest.fixture
def gc(tmp_path):
    data = tmp_path / "data"
    return data, make_gazecapture(data / "gazecapture")


# ------------------------------------------------------------- reference checks


def hand_grid(x: int, y: int, w: int, h: int) -> np.ndarray:
    """The 25 x 25 face grid of 1-indexed (x, y, w, h), cell by cell, flattened."""
    m = np.zeros((GRID_SIZE, GRID_SIZE), np.float32)
    for r in range(GRID_SIZE):
        for c in range(GRID_SIZE):
            if y - 1 <= r < y - 1 + h and x - 1 <= c < x - 1 + w:
                m[r, c] = 1
    return m.reshape(-1)


def check_crop(crop: np.ndarray, img: np.ndarray, box, tol: int = JPEG_TOL) -> int:
    """Compare a resized ``(3, s, s)`` crop with the ground-truth frame: every output
    pixel whose source neighbourhood (within the bilinear filter's reach) is one flat
    colour must have that colour, zeros outside the frame. Returns the number of
    pixels checked."""
    x, y, w, h = box
    s = crop.shape[1]
    pad = 64
    padded = np.zeros((img.shape[0] + 2 * pad, img.shape[1] + 2 * pad, 3), np.int64)
    padded[pad:pad + img.shape[0], pad:pad + img.shape[1]] = img
    reach = math.ceil(max(w, h) / s) + 1
    checked = 0
    for r in range(s):
        sy = y + int((r + 0.5) * h / s) + pad
        for c in range(s):
            sx = x + int((c + 0.5) * w / s) + pad
            hood = padded[sy - reach:sy + reach + 1, sx - reach:sx + reach + 1].reshape(-1, 3)
            if (hood == hood[0]).all():
                diff = np.abs(crop[:, r, c].astype(np.int64) - hood[0]).max()
                assert diff <= tol, (r, c, crop[:, r, c], hood[0])
                checked += 1
    return checked


def frame_rows(arrays: GazeArrays, session: int) -> dict[int, int]:
    return {int(f): i for i, (s, f) in enumerate(zip(arrays.session, arrays.frame))
            if s == session}


# ------------------------------------------------------------------------- tests


def test_crops_grid_targets_and_validity(gc):
    data, sessions = gc
    a = load_gazecapture(data, split="all", size=16)
    assert a.face.dtype == a.left.dtype == a.right.dtype == np.uint8
    assert a.face.shape == a.left.shape == a.right.shape == (8, 3, 16, 16)
    assert a.grid.dtype == np.float32 and a.grid.shape == (8, 625)
    assert a.target.dtype == np.float32 and a.target.shape == (8, 2)
    assert a.session.dtype == np.int32 and a.frame.dtype == np.int32
    # Sorted sessions; only frames valid in all four IsValid arrays (00002: 0 and 5).
    assert a.session.tolist() == [2, 2, 5, 5, 5, 10, 10, 10]
    assert a.frame.tolist() == [0, 5, 0, 1, 2, 0, 1, 2]
    for sid, info in sessions.items():
        rows = frame_rows(a, sid)
        assert sorted(rows) == info["valid"]
        for f, i in rows.items():
            t = info["truth"][f]
            # Face crop: the frame's pixels wherever the colour is flat (zeros outside).
            assert check_crop(a.face[i], t["img"], t["face"]) >= 30
            # Eye crops are entirely their block's colour: a left/right swap fails.
            for crop, color in ((a.left[i], LEFT_COLOR), (a.right[i], RIGHT_COLOR)):
                diff = np.abs(crop.astype(int) - np.array(color).reshape(3, 1, 1))
                assert diff.max() <= JPEG_TOL, (sid, f)
            np.testing.assert_array_equal(a.grid[i], hand_grid(*info["grids"][f]))
            np.testing.assert_array_equal(
                a.target[i], np.asarray(info["targets"][f], dtype=np.float32))
    # The face crop of each frame has that frame's own face colour.
    i = frame_rows(a, 2)[5]
    assert np.abs(a.face[i, :, 0, 0].astype(int) - face_color(2, 5)).max() <= JPEG_TOL


def test_face_grid_border_cases(gc):
    data, _ = gc
    a = load_gazecapture(data, split="test", size=8)
    g = a.grid.reshape(-1, 25, 25)
    # (1, 1, 4, 6): starts at cell (0, 0).
    assert g[0, 0, 0] == 1 and g[0, :6, :4].all() and g[0].sum() == 24
    # (20, 22, 10, 8): rows 21..24, columns 19..24 after clipping.
    assert g[1].sum() == 4 * 6 and g[1, 21:, 19:].all()
    # (24, 25, 3, 3): the bottom row only, columns 23..24.
    assert g[2].sum() == 2 and g[2, 24, 23:].all()


def test_box_outside_frame_is_zero_padded(gc):
    data, sessions = gc
    s = 20
    a = load_gazecapture(data, split="val", size=s)
    i = frame_rows(a, 5)[0]
    x, y, w, h = sessions[5]["truth"][0]["face"]  # (-10, -6, 40, 30)
    zero = (a.face[i] == 0).all(axis=0)
    # By hand: 10 of 40 columns and 6 of 30 rows lie outside the frame.
    out_cols, out_rows = s * -x / w, s * -y / h
    expect = s * s * (1 - (1 + x / w) * (1 + y / h))
    assert abs(zero.sum() - expect) <= 2 * s
    assert abs(zero.all(axis=0).sum() - out_cols) <= 1
    assert abs(zero.all(axis=1).sum() - out_rows) <= 1
    # Not shifted: inside the frame the crop is the frame (no zero there).
    assert not zero[math.ceil(out_rows) + 1:, math.ceil(out_cols) + 1:].any()
    check_crop(a.face[i], sessions[5]["truth"][0]["img"], (x, y, w, h))


def test_split_selection_and_session_limits(gc):
    data, _ = gc
    for split, sid, n in (("train", 2, 2), ("val", 5, 3), ("test", 10, 3)):
        a = load_gazecapture(data, split=split, size=8)
        assert set(a.session.tolist()) == {sid} and len(a.face) == n
    assert load_gazecapture(data, split="all", size=8, max_sessions=2).session.tolist() \
        == [2, 2, 5, 5, 5]
    assert set(load_gazecapture(data, "all", 8, sessions=[10, "00005"]).session) == {5, 10}
    assert set(load_gazecapture(data, "all", 8, sessions=["10"]).session) == {10}
    with pytest.raises(DataError, match="no valid frame"):
        load_gazecapture(data, "train", 8, sessions=[5])  # 00005 is a val session
    with pytest.raises(DataError, match="no session 00003"):
        load_gazecapture(data, "all", 8, sessions=[3])


def test_root_locations(gc, tmp_path, monkeypatch):
    data, _ = gc
    ref = load_gazecapture(data, "val", size=8, cache=False)
    # The data directory itself holding the sessions, and $MOBILEPRUNE_DATA.
    same = load_gazecapture(data / "gazecapture", "val", size=8, cache=False)
    np.testing.assert_array_equal(same.face, ref.face)
    monkeypatch.setenv(ENV_DATA, str(data))
    np.testing.assert_array_equal(load_gazecapture(None, "val", 8, cache=False).left,
                                  ref.left)
    # An archive gazecapture.tgz, unpacked into the cache.
    packed = tmp_path / "packed"
    packed.mkdir()
    with tarfile.open(packed / "gazecapture.tgz", "w:gz") as tf:
        tf.add(data / "gazecapture", arcname="gazecapture")
    np.testing.assert_array_equal(load_gazecapture(packed, "val", 8).right, ref.right)


def _del(path: Path) -> None:
    path.unlink()


def _shorten(path: Path, key: str) -> None:
    d = json.loads(path.read_text())
    d[key] = d[key][:-1]
    path.write_text(json.dumps(d))


def _set(path: Path, key: str, value) -> None:
    d = json.loads(path.read_text())
    d[key] = value
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("file, change, split, match", [
    ("appleLeftEye.json", _del, "train", "lacks appleLeftEye.json"),
    ("dotInfo.json", _del, "train", "lacks dotInfo.json"),
    ("info.json", _del, "all", "lacks info.json"),
    ("faceGrid.json", lambda p: _shorten(p, "H"), "train",
     r"faceGrid.json .*'H' has 5 entries but frames.json has 6"),
    ("appleFace.json", lambda p: _shorten(p, "IsValid"), "val",
     r"appleFace.json .*'IsValid' has 2 entries but info.json TotalFrames has 3"),
    ("dotInfo.json", lambda p: _set(p, "XCam", None), "train", r"dotInfo.json .*'XCam'"),
    ("appleRightEye.json", lambda p: p.write_text("{oops"), "train",
     "appleRightEye.json .*not valid JSON"),
    ("info.json", lambda p: _set(p, "Dataset", "training"), "all", "info.json .*'training'"),
    ("frames/00005.jpg", _del, "train", r"00005.jpg.* does not exist"),
    ("frames/00000.jpg", lambda p: p.write_bytes(b"not a jpeg"), "train",
     r"cannot decode frame image .*00000.jpg"),
])
def test_session_errors_name_the_file(gc, file, change, split, match):
    data, _ = gc
    change(data / "gazecapture" / "00002" / file if split != "val"
           else data / "gazecapture" / "00005" / file)
    with pytest.raises(DataError, match=match):
        load_gazecapture(data, split=split, size=8)


def test_argument_and_location_errors(gc, tmp_path):
    data, _ = gc
    with pytest.raises(DataError, match="unknown GazeCapture split 'training'"):
        load_gazecapture(data, split="training")
    for bad in (0, -3, 2.5, True):
        with pytest.raises(DataError, match="size"):
            load_gazecapture(data, size=bad)
    with pytest.raises(DataError, match="no data directory"):
        load_gazecapture(None)
    with pytest.raises(DataError, match="does not exist"):
        load_gazecapture(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="'gazecapture' not found.*5-digit"):
        load_gazecapture(tmp_path / "empty")
    (tmp_path / "e2" / "gazecapture").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no session folder"):
        load_gazecapture(tmp_path / "e2")
    # No valid frame at all in a split.
    grid = data / "gazecapture" / "00010" / "faceGrid.json"
    _set(grid, "IsValid", [0, 0, 0])
    with pytest.raises(DataError, match="no valid frame .* split 'test'"):
        load_gazecapture(data, split="test")


def test_cache_reuse_and_rebuild(gc, monkeypatch):
    data, sessions = gc
    first = load_gazecapture(data, split="train", size=12)
    cached = list((Path(os.environ[ENV_CACHE]) / "gazecapture-arrays").glob("*.npz"))
    assert len(cached) == 1 and not list(cached[0].parent.glob(".*tmp"))
    frames = data / "gazecapture" / "00002" / "frames"
    hidden = frames.with_name("frames-away")
    frames.rename(hidden)  # the cache must not need the frames
    again = load_gazecapture(data, split="train", size=12)
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    # Another size is another cache entry (and needs the frames).
    with pytest.raises(DataError, match="does not exist"):
        load_gazecapture(data, split="train", size=10)
    # A corrupt cache file is not trusted: it is decoded again (which now fails) ...
    cached[0].write_bytes(b"junk")
    with pytest.raises(DataError, match="00000.jpg"):
        load_gazecapture(data, split="train", size=12)
    # ... and rebuilt once the frames are back.
    hidden.rename(frames)
    rebuilt = load_gazecapture(data, split="train", size=12)
    for x, y in zip(first, rebuilt):
        np.testing.assert_array_equal(x, y)
    with np.load(cached[0]) as z:
        assert z["face"].shape == (2, 3, 12, 12)
    # A changed JSON file invalidates the cache; the stale file is removed.
    dot = data / "gazecapture" / "00002" / "dotInfo.json"
    d = json.loads(dot.read_text())
    d["XCam"][0] = 42.5
    dot.write_text(json.dumps(d))
    os.utime(dot, ns=(1, 1))
    changed = load_gazecapture(data, split="train", size=12)
    assert changed.target[0, 0] == 42.5
    assert len(list(cached[0].parent.glob("*.npz"))) == 1
    # So does a changed box (the targets, sessions and frames stay the same).
    face = data / "gazecapture" / "00002" / "appleFace.json"
    d = json.loads(face.read_text())
    d["X"][0] += 1.0
    face.write_text(json.dumps(d))
    os.utime(face, ns=(2, 2))
    moved = load_gazecapture(data, split="train", size=12)
    assert not np.array_equal(moved.face[0], changed.face[0])
    np.testing.assert_array_equal(moved.target, changed.target)
    # A well-formed npz that was not written for these files (foreign key) is rebuilt.
    path = next(cached[0].parent.glob("*.npz"))
    with np.load(path) as z:
        fake = {k: z[k] for k in z.files}
    fake["face"] = np.zeros_like(fake["face"])
    fake["key"] = np.array("0" * 24)
    with open(path, "wb") as f:
        np.savez(f, **fake)
    np.testing.assert_array_equal(load_gazecapture(data, split="train", size=12).face,
                                  moved.face)


def test_gaze_dataset_and_loader(gc):
    data, _ = gc
    a = load_gazecapture(data, split="all", size=8)
    ds = GazeDataset(a)
    assert len(ds) == len(a.face)
    by_hand = np.array([[a_.astype(np.float64)[:, c].mean() / 255 for c in range(3)]
                        for a_ in (a.face, a.left, a.right)])
    np.testing.assert_allclose(ds.mean, by_hand, rtol=1e-6)
    (face, left, right, grid), target = ds[3]
    for t, src, m in ((face, a.face, by_hand[0]), (left, a.left, by_hand[1]),
                      (right, a.right, by_hand[2])):
        assert t.dtype == torch.float32 and t.shape == (3, 8, 8)
        ref = src[3].astype(np.float64) / 255 - m.reshape(3, 1, 1)
        np.testing.assert_allclose(t.numpy(), ref, atol=1e-6)
    assert grid.dtype == torch.float32 and grid.shape == (625,)
    np.testing.assert_array_equal(grid.numpy(), a.grid[3])
    np.testing.assert_array_equal(target.numpy(), a.target[3])
    # A given mean (e.g. the training set's) is used as is; (3,) is shared.
    ds2 = GazeDataset(a, mean=[0.5, 0.25, 0.0])
    assert ds2.mean.shape == (3, 3) and (ds2.mean[2] == [0.5, 0.25, 0.0]).all()
    np.testing.assert_allclose(ds2[0][0][1][1].numpy(), a.left[0, 1] / 255 - 0.25,
                               atol=1e-6)
    with pytest.raises(DataError, match="mean"):
        GazeDataset(a, mean=[0.5, 0.5])
    (bf, bl, br, bg), bt = next(iter(DataLoader(ds, batch_size=3, shuffle=False)))
    assert bf.shape == bl.shape == br.shape == (3, 3, 8, 8)
    assert bg.shape == (3, 625) and bt.shape == (3, 2) and bt.dtype == torch.float32
    np.testing.assert_array_equal(bt.numpy(), a.target[:3])


def test_module_exports():
    assert set(gaze.__all__) >= {"load_gazecapture", "GazeArrays", "GazeDataset"}
