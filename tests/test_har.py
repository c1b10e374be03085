"""Tests of the HAR data loaders (mobileprune.data.har) and the HARCNN model.

Unit tests write tiny files of each layout into ``tmp_path``; integration tests read the
real archives from ``$MOBILEPRUNE_DATA`` and skip when they are absent.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mobileprune.data import ENV_CACHE, ENV_DATA, locate_dataset
from mobileprune.data import har
from mobileprune.data.har import (
    PAMAP2_CHANNELS,
    PAMAP2_COLUMNS,
    UCIHAR_CHANNELS,
    UCIHAR_CLASSES,
    WISDM_CLASSES,
    HARData,
    load_pamap2,
    load_ucihar,
    load_ucihar_rebuilt,
    load_wisdm2019,
    load_wisdm_arff,
    load_wisdm_raw,
    normalize,
    rebuild_ucihar_from_hapt,
)
from mobileprune.errors import ConfigError, DataError
from mobileprune.models import build_model
from mobileprune.models.har import HARCNN


@pytest.fixture(autouse=True)
def _isolated_cache(request, monkeypatch, tmp_path):
    """Unit tests use a private cache; integration tests use the configured one."""
    if request.node.get_closest_marker("integration") is None:
        monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))


def assert_names_line(exc: pytest.ExceptionInfo, filename: str, line: int) -> None:
    msg = str(exc.value)
    assert filename in msg, msg
    assert re.search(rf"\bline {line}\b", msg), msg


def replace_line(path: Path, lineno: int, text: str) -> None:
    lines = path.read_text().splitlines(keepends=True)
    lines[lineno - 1] = text + "\n"
    path.write_text("".join(lines))


# --------------------------------------------------------------------------- UCI-HAR


def ucihar_value(split: int, n: int, c: int, t: int) -> float:
    return split * 50000 + n * 2000 + c * 200 + t + 0.5


def write_ucihar(root: Path, labels=((1, 6, 3), (2, 5))) -> Path:
    for s, (split, ys) in enumerate(zip(("train", "test"), labels)):
        folder = root / split / "Inertial Signals"
        folder.mkdir(parents=True)
        for c, ch in enumerate(UCIHAR_CHANNELS):
            rows = ["  " + " ".join(f"{ucihar_value(s, n, c, t):.7e}" for t in range(128))
                    for n in range(len(ys))]
            (folder / f"{ch}_{split}.txt").write_text("\n".join(rows) + "\n")
        (root / split / f"y_{split}.txt").write_text("".join(f"{y}\n" for y in ys))
        (root / split / f"subject_{split}.txt").write_text("".join(f"{s + 1}\n" for _ in ys))
    return root


def test_load_ucihar_shapes_transpose_labels(tmp_path):
    d = load_ucihar(write_ucihar(tmp_path / "UCI HAR Dataset"))
    assert d.train_x.shape == (3, 9, 128) and d.test_x.shape == (2, 9, 128)
    assert d.train_x.dtype == np.float32 and d.train_x.flags.c_contiguous
    assert d.train_y.dtype == np.int64
    np.testing.assert_array_equal(d.train_y, [0, 5, 2])
    np.testing.assert_array_equal(d.test_y, [1, 4])
    assert d.classes == UCIHAR_CLASSES and d.channels == UCIHAR_CHANNELS
    for s, x in enumerate((d.train_x, d.test_x)):
        for n, c, t in [(0, 0, 0), (1, 4, 77), (len(x) - 1, 8, 127), (0, 6, 5)]:
            assert x[n, c, t] == ucihar_value(s, n, c, t)
    # the parent folder of "UCI HAR Dataset" works too
    assert load_ucihar(tmp_path).train_x.shape == (3, 9, 128)


@pytest.mark.parametrize("bad", ["1.0 2.0", "1.0 " * 127 + "oops"])
def test_load_ucihar_malformed_row(tmp_path, bad):
    root = write_ucihar(tmp_path)
    path = root / "train" / "Inertial Signals" / "body_gyro_y_train.txt"
    replace_line(path, 2, bad)
    with pytest.raises(DataError) as exc:
        load_ucihar(root)
    assert_names_line(exc, "body_gyro_y_train.txt", 2)


def test_load_ucihar_bad_label_and_missing_file(tmp_path):
    root = write_ucihar(tmp_path)
    (root / "test" / "y_test.txt").write_text("2\n7\n")
    with pytest.raises(DataError) as exc:
        load_ucihar(root)
    assert_names_line(exc, "y_test.txt", 2)
    (root / "test" / "y_test.txt").write_text("2\n5\n")
    (root / "train" / "Inertial Signals" / "total_acc_z_train.txt").unlink()
    with pytest.raises(DataError, match="total_acc_z_train.txt"):
        load_ucihar(root)
    with pytest.raises(DataError, match="train"):
        load_ucihar(tmp_path / "nowhere")


def test_load_ucihar_count_mismatch(tmp_path):
    root = write_ucihar(tmp_path)
    (root / "train" / "y_train.txt").write_text("1\n2\n")
    with pytest.raises(DataError, match="disagree"):
        load_ucihar(root)


# --------------------------------------------------------------------------- HAPT

FS = 50.0


def write_hapt(base: Path) -> tuple[Path, dict]:
    """Three tiny recordings: users 1 and 3 train, user 2 test (official split)."""
    raw = base / "HAPT Data Set" / "RawData"
    raw.mkdir(parents=True)
    n = 900
    t = np.arange(n)
    labels, ramps = [], {}
    for e, u in ((1, 1), (2, 2), (3, 3)):
        acc = np.tile([0.1 * u, -0.2, 0.95], (n, 1))          # constant: no body part
        ramp = 0.001 * t + 0.1 * e                             # slow ramp on gyro x
        gyro = np.column_stack([ramp, np.full(n, 0.5), np.full(n, -0.25 * u)])
        np.savetxt(raw / f"acc_exp{e:02d}_user{u:02d}.txt", acc, fmt="%.10f")
        np.savetxt(raw / f"gyro_exp{e:02d}_user{u:02d}.txt", gyro, fmt="%.10f")
        ramps[(e, u)] = ramp
        # walking rows 1..300 (300 rows: 3 windows), transition 7 (skipped),
        # sitting rows 351..650 (300 rows; guard 12 -> 276 rows: 3 windows),
        # laying rows 651..850 (200 rows -> 1 window; with guard 176 -> 1).
        labels += [(e, u, 1, 1, 300), (e, u, 7, 301, 350), (e, u, 4, 351, 650),
                   (e, u, 6, 651, 850)]
    np.savetxt(raw / "labels.txt", np.array(labels), fmt="%d")
    return raw, ramps


def test_rebuild_from_hapt(tmp_path):
    raw, ramps = write_hapt(tmp_path / "hapt")
    d = rebuild_ucihar_from_hapt(raw.parent)
    assert isinstance(d, HARData)
    assert d.train_x.shape == (14, 9, 128) and d.test_x.shape == (7, 9, 128)
    assert d.train_x.flags.c_contiguous and d.train_x.dtype == np.float32
    np.testing.assert_array_equal(d.test_y, [0, 0, 0, 3, 3, 3, 5])
    np.testing.assert_array_equal(d.train_y, [0, 0, 0, 3, 3, 3, 5] * 2)
    assert d.channels == UCIHAR_CHANNELS and d.classes == UCIHAR_CLASSES
    x = d.test_x  # user 2, experiment 2
    # channel order: body_acc (0: the acc is constant), body_gyro, total_acc (g)
    np.testing.assert_allclose(x[:, 0:3], 0.0, atol=1e-4)
    np.testing.assert_allclose(x[:, 4], 0.5, atol=1e-4)
    np.testing.assert_allclose(x[:, 5], -0.5, atol=1e-4)
    np.testing.assert_allclose(x[:, 6], 0.2, atol=1e-4)
    np.testing.assert_allclose(x[:, 8], 0.95, atol=1e-4)
    # time order (real transpose): gyro x of window n is the ramp from its start;
    # windows start at rows 0, 64, 128 (walking) and 350 + 12 + 64 k (sitting).
    ramp = ramps[(2, 2)]
    for n, start in [(0, 0), (2, 128), (3, 362), (5, 490), (6, 662)]:
        np.testing.assert_allclose(x[n, 3], ramp[start:start + 128], atol=1e-3)
    # guard 0: sitting keeps 300 rows -> 3 windows, laying 200 rows -> 2 windows
    d0 = rebuild_ucihar_from_hapt(raw.parent, static_guard=0, cache=False)
    np.testing.assert_array_equal(np.bincount(d0.test_y, minlength=6), [3, 0, 0, 3, 0, 2])
    np.testing.assert_allclose(d0.test_x[3, 3], ramp[350:478], atol=1e-3)


def test_rebuild_from_hapt_cache(tmp_path, monkeypatch):
    raw, _ = write_hapt(tmp_path / "hapt")
    first = rebuild_ucihar_from_hapt(raw)  # RawData itself is accepted too
    cache = Path(os.environ[ENV_CACHE])
    files = [p.name for p in cache.iterdir()]
    assert len(files) == 1 and files[0].startswith("ucihar-rebuilt-") and files[0].endswith(".npz")

    def boom(*a, **k):
        raise AssertionError("rebuilt although cached")

    monkeypatch.setattr(har, "_filter_hapt", boom)
    again = rebuild_ucihar_from_hapt(raw)
    for a, b in zip(first[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError):  # other parameters: other cache entry
        rebuild_ucihar_from_hapt(raw, static_guard=3)


def test_rebuild_from_hapt_errors(tmp_path):
    raw, _ = write_hapt(tmp_path / "hapt")
    lab = raw / "labels.txt"
    good = lab.read_text()
    replace_line(lab, 3, "1 1 4 351")
    with pytest.raises(DataError) as exc:
        rebuild_ucihar_from_hapt(raw, cache=False)
    assert_names_line(exc, "labels.txt", 3)
    lab.write_text(good)
    replace_line(lab, 5, "2 2 1 1 5000")  # beyond the recording
    with pytest.raises(DataError) as exc:
        rebuild_ucihar_from_hapt(raw, cache=False)
    assert_names_line(exc, "labels.txt", 5)
    lab.write_text(good)
    acc = raw / "acc_exp03_user03.txt"
    replace_line(acc, 10, "0.3 -0.2 x")
    with pytest.raises(DataError) as exc:
        rebuild_ucihar_from_hapt(raw, cache=False)
    assert_names_line(exc, "acc_exp03_user03.txt", 10)
    (raw / "gyro_exp01_user01.txt").unlink()
    with pytest.raises(DataError, match="gyro_exp01_user01.txt"):
        rebuild_ucihar_from_hapt(raw, cache=False)
    with pytest.raises(DataError, match="labels.txt"):
        rebuild_ucihar_from_hapt(tmp_path / "empty")


def test_load_ucihar_rebuilt_from_archive(tmp_path):
    write_hapt(tmp_path / "src" / "hapt")
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "hapt.tgz", "w:gz") as tf:
        tf.add(tmp_path / "src" / "hapt", arcname="hapt")
    d = load_ucihar_rebuilt(data_dir)
    assert d.train_x.shape == (14, 9, 128) and d.test_x.shape == (7, 9, 128)
    with pytest.raises(DataError, match="hapt"):
        load_ucihar_rebuilt(tmp_path)


# --------------------------------------------------------------------------- normalize


def test_normalize_uses_training_stats_only():
    rng = np.random.default_rng(0)
    train = (rng.normal(size=(40, 3, 16)) * [[[1.0], [5.0], [0.0]]]
             + [[[2.0], [-1.0], [7.0]]]).astype(np.float32)
    test = (rng.normal(size=(10, 3, 16)) * 3 + 10).astype(np.float32)
    d = HARData(train, np.zeros(40, np.int64), test, np.zeros(10, np.int64), ["a"],
                ["c0", "c1", "c2"])
    n, mean, std = normalize(d, return_stats=True)
    np.testing.assert_allclose(n.train_x.mean(axis=(0, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(n.train_x.std(axis=(0, 2))[:2], 1, atol=1e-5)
    assert np.isfinite(n.train_x).all()  # constant channel: centred, not divided by 0
    np.testing.assert_allclose(mean, train.mean(axis=(0, 2)), rtol=1e-5)
    expected = (test.mean(axis=(0, 2)) - mean) / np.where(std > 0, std, 1)
    np.testing.assert_allclose(n.test_x.mean(axis=(0, 2)), expected, rtol=1e-4)
    assert np.all(np.abs(n.test_x.mean(axis=(0, 2))) > 0.5)  # not re-centred on test
    assert n.train_x.dtype == np.float32 and n.classes == ["a"]
    np.testing.assert_array_equal(d.train_x, train)  # input untouched


def test_normalize_features():
    f = har.WisdmFeatures(np.array([[1.0, 2.0], [3.0, 2.0]], np.float32), np.zeros(2, np.int64),
                          np.array([[5.0, 4.0]], np.float32), np.zeros(1, np.int64), ["a"],
                          ["f0", "f1"])
    n = normalize(f)
    np.testing.assert_allclose(n.train_x, [[-1, 0], [1, 0]])
    np.testing.assert_allclose(n.test_x, [[3, 2]])
    assert n.features == ["f0", "f1"]


# --------------------------------------------------------------------------- WISDM raw


def wisdm_rows():
    """(user, activity, x, y, z) rows: runs of 100, 100, 90 (2 windows), 60 samples."""
    rows = []
    for user, act, length in [(1, "Walking", 100), (1, "Jogging", 100), (2, "Sitting", 90),
                              (3, "Standing", 60), (4, "Upstairs", 100)]:
        for t in range(length):
            rows.append((user, act, user * 1000 + t, user + t / 100, -t / 10, 9.81))
    return rows


def write_wisdm_raw(path: Path) -> list:
    rows = wisdm_rows()
    # records i % 7 == 4 get a trailing empty field and share the line of record i - 1,
    # which is followed by a blank line
    recs = [f"{u},{a},{ts},{x},{y},{z}{',' if i % 7 == 4 else ''};"
            for i, (u, a, ts, x, y, z) in enumerate(rows)]
    out, i = [], 0
    while i < len(recs):
        if i % 7 == 3 and i + 1 < len(recs):
            out += [recs[i] + recs[i + 1], ""]
            i += 2
        else:
            out.append(recs[i])
            i += 1
    # a record with an empty z, then a double ';'
    out.append("4,Upstairs,999,1.0,2.0,;;")
    path.write_text("\n".join(out) + "\n")
    return rows


def test_load_wisdm_raw(tmp_path):
    rows = write_wisdm_raw(tmp_path / "WISDM_ar_v1.1_raw.txt")
    d = load_wisdm_raw(tmp_path, window=40, step=20)
    assert d.channels == ["x", "y", "z"] and d.classes == WISDM_CLASSES
    # runs: 100 -> 4 windows, 100 -> 4, 90 -> 3, 60 -> 2, 100 -> 4 (user 4 = test)
    assert d.train_x.shape == (13, 3, 40) and d.test_x.shape == (4, 3, 40)
    np.testing.assert_array_equal(d.train_y, [0] * 4 + [1] * 4 + [4] * 3 + [5] * 2)
    np.testing.assert_array_equal(d.test_y, [2] * 4)
    vals = np.array([r[3:] for r in rows], np.float32)
    # window 5 of train = Jogging run (starts at row 100), second window (offset 20)
    np.testing.assert_array_equal(d.train_x[5], vals[120:160].T)
    np.testing.assert_array_equal(d.test_x[3], vals[350 + 60:350 + 100].T)
    assert d.train_x[5, 1, 7] == vals[127, 1]
    d2 = load_wisdm_raw(tmp_path / "WISDM_ar_v1.1_raw.txt", window=40, step=20,
                        test_users=[2, 3])
    assert len(d2.test_y) == 5 and len(d2.train_y) == 12
    with pytest.raises(DataError, match="9"):
        load_wisdm_raw(tmp_path, window=40, step=20, test_users=[9])


@pytest.mark.parametrize("bad, why", [
    ("1,Walking,5,1.0,2.0;", "fields"),
    ("1,Flying,5,1.0,2.0,3.0;", "activity"),
    ("1,Walking,5,1.0,abc,3.0;", "number"),
    ("1,Walking,5,1.0,2.0,3.0;x,Walking,5,1.0,2.0,3.0;", "number"),
])
def test_load_wisdm_raw_malformed(tmp_path, bad, why):
    path = tmp_path / "raw.txt"
    write_wisdm_raw(path)
    replace_line(path, 6, bad)
    with pytest.raises(DataError, match=why) as exc:
        load_wisdm_raw(path)
    assert_names_line(exc, "raw.txt", 6)


def test_load_wisdm_raw_missing(tmp_path):
    with pytest.raises(DataError, match="WISDM_ar_v1.1_raw.txt"):
        load_wisdm_raw(tmp_path)


# --------------------------------------------------------------------------- WISDM ARFF

ARFF_HEADER = """% test file\r
@relation activity_recognition_labeled\r
\r
@attribute "UNIQUE_ID" numeric\r
@attribute "user" {"1" , "2", "3", "4"}\r
@attribute "X0" numeric\r
@attribute "XAVG" numeric\r
@attribute "RESULTANT" numeric\r
@attribute class{ "Walking" , "Jogging" , "Upstairs" , "Downstairs" , "Sitting" , "Standing" }\r
\r
@data\r
"""


def write_arff(path: Path) -> Path:
    rows = [
        "1,1,0.1,2,10,Walking",
        "2,1,?,4,12,Jogging",
        "3,2,0.3,?,14,Sitting",
        "4,3,0.5,8,?,Standing",
        "5,4,9.0,?,20,Upstairs",
        "6,4,?,100,22,Walking",
    ]
    path.write_text(ARFF_HEADER + "\r\n".join(rows) + "\r\n")
    return path


def test_load_wisdm_arff(tmp_path):
    d = load_wisdm_arff(write_arff(tmp_path / "WISDM_ar_v1.1_transformed.arff"))
    assert d.features == ["X0", "XAVG", "RESULTANT"]
    assert d.classes == WISDM_CLASSES
    # 4 users -> test user 4 (last 30%)
    np.testing.assert_array_equal(d.train_y, [0, 1, 4, 5])
    np.testing.assert_array_equal(d.test_y, [2, 0])
    assert d.train_x.dtype == np.float32 and d.train_x.shape == (4, 3)
    # '?' imputed with the TRAINING column means: X0 -> 0.3, XAVG -> 14/3, RESULTANT -> 12
    np.testing.assert_allclose(d.train_x[:, 0], [0.1, 0.3, 0.3, 0.5], rtol=1e-6)
    np.testing.assert_allclose(d.train_x[:, 1], [2, 4, 14 / 3, 8], rtol=1e-6)
    np.testing.assert_allclose(d.train_x[:, 2], [10, 12, 14, 12], rtol=1e-6)
    np.testing.assert_allclose(d.test_x, [[9.0, 14 / 3, 20], [0.3, 100, 22]], rtol=1e-6)
    d2 = load_wisdm_arff(tmp_path, test_users=[1])
    np.testing.assert_array_equal(d2.test_y, [0, 1])


@pytest.mark.parametrize("bad, why", [("7,2,0.3,1,Sitting", "expected 6"),
                                      ("7,2,0.3,1,2,Flying", "class"),
                                      ("7,2,0.3,zz,2,Sitting", "number")])
def test_load_wisdm_arff_malformed(tmp_path, bad, why):
    path = write_arff(tmp_path / "w.arff")
    replace_line(path, 14, bad)  # third data row
    with pytest.raises(DataError, match=why) as exc:
        load_wisdm_arff(path)
    assert_names_line(exc, "w.arff", 14)


def test_load_wisdm_arff_missing(tmp_path):
    with pytest.raises(DataError, match="arff"):
        load_wisdm_arff(tmp_path)


# --------------------------------------------------------------------------- WISDM 2019


def write_wisdm2019(folder: Path, with_timestamp: bool = False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    values = {}
    for subject in (1600, 1601, 1602, 1603):
        lines = []
        for letter, length in (("A", 100), ("D", 60), ("M", 100)):
            v = np.column_stack([np.arange(length) + subject, -np.arange(length) / 4,
                                 np.full(length, ord(letter))]).astype(np.float32)
            values[(subject, letter)] = v
            for i, (x, y, z) in enumerate(v):
                ts = f"{i}," if with_timestamp else ""
                lines.append(f"{subject},{letter},{ts}{x},{y},{z};")
        if subject == 1601:  # all data twice, like the real file of subject 1629
            lines = lines + lines
        (folder / f"data_{subject}_accel_watch.txt").write_text("\n".join(lines) + "\n")
    return values


@pytest.mark.parametrize("with_timestamp", [False, True])
def test_load_wisdm2019(tmp_path, with_timestamp):
    values = write_wisdm2019(tmp_path / "wisdm2019_watch_accel_reduced", with_timestamp)
    d = load_wisdm2019(tmp_path, window=40, step=20)
    assert d.classes == ["walking", "sitting", "kicking"] and d.channels == ["x", "y", "z"]
    # per subject: A 100 -> 4 windows, D 60 -> 2, M 100 -> 4; test subject 1603
    assert d.train_x.shape == (30, 3, 40) and d.test_x.shape == (10, 3, 40)
    np.testing.assert_array_equal(d.test_y, [0] * 4 + [1] * 2 + [2] * 4)
    np.testing.assert_array_equal(d.test_x[5], values[(1603, "D")][20:60].T)
    np.testing.assert_array_equal(d.train_x[10 + 8], values[(1601, "M")][40:80].T)
    dup = load_wisdm2019(tmp_path, window=40, step=20, drop_duplicates=False)
    assert len(dup.train_y) == 40
    one = tmp_path / "wisdm2019_watch_accel_reduced" / "data_1600_accel_watch.txt"
    with pytest.raises(DataError, match="at least 2"):  # one file = one subject
        load_wisdm2019(one, window=40, step=20)


def test_load_wisdm2019_malformed_and_missing(tmp_path):
    folder = tmp_path / "w"
    write_wisdm2019(folder)
    path = folder / "data_1602_accel_watch.txt"
    replace_line(path, 42, "1602,A,1.0,2.0;")
    with pytest.raises(DataError) as exc:
        load_wisdm2019(folder)
    assert_names_line(exc, "data_1602_accel_watch.txt", 42)
    replace_line(path, 42, "1602,Z,1.0,2.0,3.0;")
    with pytest.raises(DataError, match="activity") as exc:
        load_wisdm2019(folder)
    assert_names_line(exc, "data_1602_accel_watch.txt", 42)
    with pytest.raises(DataError, match="data_"):
        load_wisdm2019(tmp_path / "empty")


# --------------------------------------------------------------------------- PAMAP2


def pamap2_table(subject: int) -> np.ndarray:
    """Rows: 50 transient, 300 walking (4), 30 transient, 200 lying (1), 150 rope (24)."""
    acts = [0] * 50 + [4] * 300 + [0] * 30 + [1] * 200 + [24] * 150
    n = len(acts)
    t = np.arange(n)
    table = t[:, None] * 0.25 + np.arange(54)[None, :] * 10.0 + (subject - 100) * 1000.0
    table[:, 0] = t / 100.0
    table[:, 1] = acts
    table[:, 2] = np.where(t % 10 == 0, 80.0 + t // 10, np.nan)  # heart rate ~10 Hz
    table[:3, 20] = np.nan  # leading NaN on chest temperature
    table[100:105, 5] = np.nan  # dropped packet on hand acc16 y
    return table


def write_pamap2(folder: Path, subjects=(101, 102, 103)) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    tables = {}
    for s in subjects:
        tab = pamap2_table(s)
        tables[s] = tab
        lines = [" ".join("NaN" if np.isnan(v) else repr(float(v)) for v in row) for row in tab]
        (folder / f"subject{s}.dat").write_text("\n".join(lines) + "\n")
    return tables


def test_load_pamap2(tmp_path):
    tables = write_pamap2(tmp_path / "PAMAP2_Dataset" / "Protocol")
    d = load_pamap2(tmp_path, window=100, step=50)
    assert len(d.channels) == 40 and d.channels == PAMAP2_CHANNELS
    assert len(PAMAP2_COLUMNS) == 40 and len(set(PAMAP2_COLUMNS)) == 40
    assert PAMAP2_CHANNELS[0] == "heart_rate" and PAMAP2_CHANNELS[1] == "hand_temp"
    assert len(d.classes) == 12 and d.classes[0] == "lying" and d.classes[-1] == "rope_jumping"
    # per subject: walking 300 -> 5 windows, lying 200 -> 3, rope 150 -> 2; test = 103
    assert d.train_x.shape == (20, 40, 100) and d.test_x.shape == (10, 40, 100)
    walking, lying, rope = (d.classes.index(n) for n in ("walking", "lying", "rope_jumping"))
    np.testing.assert_array_equal(d.test_y, [walking] * 5 + [lying] * 3 + [rope] * 2)
    tab = tables[103]
    # window 1 of subject 103: walking rows 50 + 50 .. 50 + 150
    x = d.test_x[1]
    for c in (1, 4, 10, 27, 39):
        np.testing.assert_array_equal(x[c], tab[100:200, PAMAP2_COLUMNS[c]])
    # forward-filled heart rate: value of the last multiple of 10
    rows = np.arange(100, 200)
    np.testing.assert_allclose(x[0], 80.0 + rows // 10)
    # forward-filled dropped packet (col 5 = hand acc16 y = channel 3)
    np.testing.assert_array_equal(x[3, :5], tab[99, 5])
    np.testing.assert_array_equal(x[3, 5:], tab[105:200, 5])
    d2 = load_pamap2(tmp_path / "PAMAP2_Dataset" / "Protocol", window=100, step=50,
                     test_subjects=[101], activities=[4, 24])
    assert d2.classes == ["walking", "rope_jumping"]
    assert len(d2.test_y) == 7 and len(d2.train_y) == 14


def test_pamap2_forward_fill(tmp_path):
    nan = np.nan
    a = np.array([[nan, 1.0, nan], [2.0, nan, nan], [nan, nan, nan], [5.0, 3.0, nan]])
    np.testing.assert_array_equal(har._ffill(a), [[2, 1, 0], [2, 1, 0], [2, 1, 0], [5, 3, 0]])
    write_pamap2(tmp_path, subjects=(101, 102))
    d = load_pamap2(tmp_path, window=100, step=50)
    assert np.isfinite(d.train_x).all() and np.isfinite(d.test_x).all()


def test_load_pamap2_malformed(tmp_path):
    write_pamap2(tmp_path, subjects=(101, 102))
    path = tmp_path / "subject102.dat"
    replace_line(path, 77, " ".join(["1.0"] * 53))
    with pytest.raises(DataError) as exc:
        load_pamap2(tmp_path)
    assert_names_line(exc, "subject102.dat", 77)
    replace_line(path, 77, " ".join(["1.0", "8"] + ["1.0"] * 52))  # activity 8 unknown
    with pytest.raises(DataError, match="activity") as exc:
        load_pamap2(tmp_path)
    assert_names_line(exc, "subject102.dat", 77)
    with pytest.raises(DataError, match="subject1NN.dat"):
        load_pamap2(tmp_path / "nothing")


# --------------------------------------------------------------------------- HARCNN


def test_harcnn_shape_and_names():
    m = HARCNN(9, 6, 128)
    assert m(torch.randn(4, 9, 128)).shape == (4, 6)
    names = [n for n, _ in m.named_parameters()]
    assert names == [f"conv{i}.weight" for i in range(1, 6)] + [
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"]
    assert isinstance(build_model("harcnn", in_channels=3, num_classes=6, window=80,
                                  kernel_size=10), HARCNN)


@pytest.mark.parametrize("c, classes, window, k", [(9, 6, 128, 5), (3, 6, 80, 10),
                                                   (40, 12, 128, 10)])
def test_harcnn_parameter_count(c, classes, window, k):
    m = HARCNN(c, classes, window, kernel_size=k)
    out_len = window - 5 * (k - 1)
    hand = (128 * c * k + 4 * 128 * 128 * k          # conv1, conv2..conv5 (no bias)
            + 128 * out_len * 100 + 100                # fc1
            + 100 * classes + classes)                 # fc2
    assert sum(p.numel() for p in m.parameters()) == hand
    assert all(getattr(m, f"conv{i}").bias is None for i in range(1, 6))
    assert m(torch.zeros(1, c, window)).shape == (1, classes)
    if (c, k) == (9, 5):
        assert hand == 1_716_546


def test_harcnn_window_too_short():
    with pytest.raises(ConfigError, match="too short"):
        HARCNN(3, 6, 45, kernel_size=10)  # 5 * 9 = 45 samples removed
    assert HARCNN(3, 6, 46, kernel_size=10, width=4, hidden=3)(torch.zeros(1, 3, 46)).shape == (1, 6)
    with pytest.raises(ConfigError):
        HARCNN(3, 6, 80, kernel_size=0)


# --------------------------------------------------------------------------- real data


def _real(archive: str) -> Path:
    if not os.environ.get(ENV_DATA):
        pytest.skip(f"{ENV_DATA} is not set: set it to the folder holding {archive}")
    path = Path(os.environ[ENV_DATA]) / archive
    if not path.is_file():
        pytest.skip(f"{archive} not found in {ENV_DATA}={os.environ[ENV_DATA]}")
    return path


@pytest.mark.integration
def test_real_ucihar_rebuild_counts():
    _real("hapt.tgz")
    _real("ucihar-meta.tgz")
    meta = locate_dataset("ucihar_meta", archive="ucihar-meta.tgz", marker="y_train.txt")
    d = load_ucihar_rebuilt()
    assert d.train_x.shape[1:] == (9, 128) and np.isfinite(d.train_x).all()
    for ours, name in ((d.train_y, "y_train.txt"), (d.test_y, "y_test.txt")):
        official = np.bincount(np.loadtxt(meta / name, dtype=np.int64) - 1, minlength=6)
        counts = np.bincount(ours, minlength=6)
        rel = np.abs(counts / official - 1)
        assert rel.max() <= 0.02, (name, counts.tolist(), official.tolist())
    # total_acc in g: mean of the total acceleration norm is about 1
    norm = np.linalg.norm(d.train_x[:, 6:9], axis=1).mean()
    assert 0.95 < norm < 1.1


@pytest.mark.integration
def test_real_wisdm_arff_and_2019():
    _real("wisdm.tgz")
    folder = locate_dataset("wisdm", archive="wisdm.tgz")
    a = load_wisdm_arff(folder)
    assert len(a.train_y) + len(a.test_y) == 5418
    assert a.train_x.shape[1] == 43 and len(a.features) == 43
    assert a.classes == WISDM_CLASSES
    assert np.isfinite(a.train_x).all() and np.isfinite(a.test_x).all()
    w = load_wisdm2019(folder)
    assert w.train_x.shape[1:] == (3, 80) and w.test_x.shape[1:] == (3, 80)
    assert w.classes == ["walking", "jogging", "stairs", "sitting", "standing", "kicking"]
    # 51 subjects: 2400 samples per (subject, activity) -> 59 windows; 1616 has no
    # jogging, 1642 no stairs, 1629's duplicated data is dropped: 304 runs.
    assert len(w.train_y) + len(w.test_y) == 304 * 59
    assert len(w.test_y) == 15 * 6 * 59 - 59  # subjects 1636..1650, 1642 lacks stairs
