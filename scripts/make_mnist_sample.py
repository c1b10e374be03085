#!/usr/bin/env python
r"""Build the MNIST sample embedded in mobileprune (``src/mobileprune/data/_sample``).

Draws 5,000 images from the official MNIST training split and 1,000 from the
official test split, stratified by class (each class gets its share of the split,
rounded by largest remainder so the totals are exact), with a fixed seed. Images are
stored uint8 with :func:`numpy.savez_compressed` together with their indices in the
official splits (``train_idx``, ``test_idx``). Also writes ``_sample/README.md``.

The archive is read in memory; nothing is extracted to disk.

Usage (from the repository root)::

    .venv/bin/python scripts/make_mnist_sample.py [ARCHIVE]

``ARCHIVE`` defaults to ``../shared/data/mnist.tgz`` relative to the repository root.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mobileprune.data.mnist import parse_idx  # noqa: E402
from mobileprune.errors import DataError  # noqa: E402

DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "mnist.tgz"
DEFAULT_OUT = REPO / "src" / "mobileprune" / "data" / "_sample" / "mnist_sample.npz"
SEED = 0


def read_member(tf: tarfile.TarFile, split: str, kind: str, rank: int) -> np.ndarray:
    """Return the IDX array of ``<split>-<kind>`` found anywhere in the archive."""
    names = {f"{split}-{kind}-idx{rank}-ubyte", f"{split}-{kind}.idx{rank}-ubyte"}
    for m in tf.getmembers():
        if m.isfile() and Path(m.name).name in names:
            f = tf.extractfile(m)
            assert f is not None
            return parse_idx(f.read(), m.name)
    raise DataError(f"archive has none of {sorted(names)}")


def stratified_indices(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``n`` indices without replacement, each class in proportion to its count."""
    classes, counts = np.unique(labels, return_counts=True)
    exact = n * counts / counts.sum()
    quota = np.floor(exact).astype(np.int64)
    # Largest remainder; ties go to the smaller class label (stable sort).
    order = np.argsort(-(exact - quota), kind="stable")
    quota[order[: n - quota.sum()]] += 1
    picked = [
        rng.choice(np.flatnonzero(labels == c), size=q, replace=False)
        for c, q in zip(classes, quota)
    ]
    return np.sort(np.concatenate(picked)).astype(np.int64)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


README = """\
# Embedded MNIST sample

`mnist_sample.npz` is a small sample of **MNIST** by Yann LeCun and Corinna Cortes
(<http://yann.lecun.com/exdb/mnist/>), licensed under
[CC BY-SA 3.0](https://creativecommons.org/licenses/by-sa/3.0/). This sample is a
derivative of MNIST (a subset, pixels unchanged) and is shared under the same license.

## Content

| array | dtype | shape | meaning |
|---|---|---|---|
| `train_x` | uint8 | ({n_train}, 28, 28) | images from the official training split |
| `train_y` | uint8 | ({n_train},) | their labels (0..9) |
| `train_idx` | int64 | ({n_train},) | their indices in the official training split (sorted) |
| `test_x` | uint8 | ({n_test}, 28, 28) | images from the official test split (t10k) |
| `test_y` | uint8 | ({n_test},) | their labels (0..9) |
| `test_idx` | int64 | ({n_test},) | their indices in the official test split (sorted) |

Load it with `mobileprune.data.load_mnist_sample()`.

## How it was drawn

From the full MNIST files (60,000 train / 10,000 test), {n_train} training and
{n_test} test images were drawn without replacement, stratified by class: each class
gets its share of the split's size in proportion to its frequency in the official
split (rounded by largest remainder so the totals are exact), and its images are
drawn uniformly at random with `numpy.random.default_rng({seed})` (training split
first, then test). Pixels and labels are copied unchanged.

Per-class counts (classes 0..9):

- train: {train_counts}
- test: {test_counts}

Source archive: `mnist.tgz`, SHA-256 `{sha}`.

## Command

```
{command}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", nargs="?", type=Path, default=DEFAULT_ARCHIVE,
                        help=f"MNIST archive (default: {DEFAULT_ARCHIVE})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output .npz (README.md is written next to it)")
    parser.add_argument("--n-train", type=int, default=5000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)

    with tarfile.open(args.archive, "r:*") as tf:
        full = {
            "train_x": read_member(tf, "train", "images", 3),
            "train_y": read_member(tf, "train", "labels", 1),
            "test_x": read_member(tf, "t10k", "images", 3),
            "test_y": read_member(tf, "t10k", "labels", 1),
        }
    rng = np.random.default_rng(args.seed)
    train_idx = stratified_indices(full["train_y"], args.n_train, rng)
    test_idx = stratified_indices(full["test_y"], args.n_test, rng)
    out = {
        "train_x": full["train_x"][train_idx],
        "train_y": full["train_y"][train_idx],
        "train_idx": train_idx,
        "test_x": full["test_x"][test_idx],
        "test_y": full["test_y"][test_idx],
        "test_idx": test_idx,
    }
    for k in ("train_x", "train_y", "test_x", "test_y"):
        assert out[k].dtype == np.uint8, k
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, **out)

    cmd_args = []
    if args.archive.resolve() != DEFAULT_ARCHIVE.resolve():
        cmd_args.append(str(args.archive))
    if args.out.resolve() != DEFAULT_OUT.resolve():
        cmd_args += ["--out", str(args.out)]
    for flag, val, default in (("--n-train", args.n_train, 5000),
                               ("--n-test", args.n_test, 1000),
                               ("--seed", args.seed, SEED)):
        if val != default:
            cmd_args += [flag, str(val)]
    command = " ".join([".venv/bin/python scripts/make_mnist_sample.py", *cmd_args])
    readme = README.format(
        n_train=args.n_train,
        n_test=args.n_test,
        seed=args.seed,
        train_counts=", ".join(str(c) for c in np.bincount(out["train_y"], minlength=10)),
        test_counts=", ".join(str(c) for c in np.bincount(out["test_y"], minlength=10)),
        sha=sha256(args.archive),
        command=command,
    )
    (args.out.parent / "README.md").write_text(readme, encoding="utf-8")
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes): "
          f"{len(train_idx)} train, {len(test_idx)} test")
    return 0


if __name__ == "__main__":
    sys.exit(main())
