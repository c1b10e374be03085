"""Data sets addressed by name from the CLI and the pipelines.

* ``mnist-sample``: the small real MNIST sample shipped in the package (offline).
* ``mnist``: full MNIST from the directory named by ``--data-dir`` or
  ``$MOBILEPRUNE_DATA`` (unpacked, or the ``mnist.tgz`` archive).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.data import DataLoader, RandomSampler, Subset, TensorDataset

from mobileprune.errors import ConfigError, DataError


@dataclass
class DataBundle:
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]


def _mnist(arrays) -> DataBundle:
    from mobileprune.data import to_tensor_dataset

    return DataBundle(train=to_tensor_dataset(arrays.train_x, arrays.train_y),
                      test=to_tensor_dataset(arrays.test_x, arrays.test_y),
                      num_classes=10, input_shape=(1, 28, 28))


def _mnist_full(data_dir):
    from mobileprune.data import load_mnist

    return _mnist(load_mnist(data_dir))


def _mnist_sample(data_dir):
    from mobileprune.data import load_mnist_sample

    return _mnist(load_mnist_sample())


def _har(name: str) -> Callable[..., DataBundle]:
    """HAR data set ``name`` (see :mod:`mobileprune.data.har`), standardised per
    channel (or feature) with training statistics."""

    def load(data_dir) -> DataBundle:
        from mobileprune.data.har import load_har_dataset, normalize

        d = normalize(load_har_dataset(name, data_dir))
        tensors = [torch.from_numpy(a) for a in (d.train_x, d.train_y, d.test_x, d.test_y)]
        return DataBundle(train=TensorDataset(*tensors[:2]), test=TensorDataset(*tensors[2:]),
                          num_classes=len(d.classes), input_shape=tuple(d.train_x.shape[1:]))

    return load


def _images(loader_name: str) -> Callable[..., DataBundle]:
    """Image data set from :mod:`mobileprune.data.images`, standardised per channel
    with the mean and standard deviation of its training split."""

    def load(data_dir) -> DataBundle:
        from mobileprune.data import images

        d = getattr(images, loader_name)(data_dir)
        mean, std = images.channel_stats(d.train_x)
        return DataBundle(train=images.to_normalized_dataset(d.train_x, d.train_y, mean, std),
                          test=images.to_normalized_dataset(d.test_x, d.test_y, mean, std),
                          num_classes=len(d.classes), input_shape=tuple(d.train_x.shape[1:]))

    return load


DATASETS: dict[str, Callable[..., DataBundle]] = {
    "mnist": _mnist_full,
    "mnist-sample": _mnist_sample,
    # HAR (mobileprune.data.har): ucihar = UCI-HAR rebuilt from hapt.tgz, 9x128.
    "ucihar": _har("ucihar"),
    "ucihar-official": _har("ucihar-official"),
    "wisdm-raw": _har("wisdm-raw"),
    "wisdm-arff": _har("wisdm-arff"),
    "wisdm2019": _har("wisdm2019"),
    "pamap2": _har("pamap2"),
    # Images (mobileprune.data.images): CIFAR-10 (python batches or cifar10-jpg.tgz),
    # its lossless ConvNetJS subset (4k train / 1k test), FER-2013 (6 classes).
    "cifar10": _images("load_cifar10"),
    "cifar10-convnetjs": _images("load_cifar10_convnetjs"),
    "fer2013": _images("load_fer2013"),
}


def load_dataset(name: str, data_dir=None) -> DataBundle:
    """Load data set ``name`` (see :data:`DATASETS`)."""
    if name not in DATASETS:
        raise ConfigError(f"unknown data set {name!r}; available: {', '.join(sorted(DATASETS))}")
    bundle = DATASETS[name](data_dir)
    for split in ("train", "test"):
        if len(getattr(bundle, split)) == 0:
            raise DataError(f"data set {name} has an empty {split} split; check the files in its "
                            "folder (--data-dir or $MOBILEPRUNE_DATA)")
    return bundle


def make_loaders(bundle: DataBundle, batch_size: int = 128, eval_batch_size: int = 1000,
                 seed: int = 0) -> tuple[DataLoader, DataLoader]:
    """Shuffled training loader (seeded) and sequential test loader; in a ``torchrun``
    group the training loader reads this rank's share (``batch_size`` per rank)."""
    from mobileprune import distributed

    test = DataLoader(bundle.test, batch_size=eval_batch_size)
    if distributed.active():  # this rank's share of each epoch (torchrun)
        return DataLoader(bundle.train, batch_size=batch_size,
                          sampler=distributed.sampler(bundle.train, seed)), test
    g = torch.Generator().manual_seed(seed)
    return DataLoader(bundle.train, batch_size=batch_size, shuffle=True, generator=g), test


#: seed of the holdout drawn by :func:`holdout_split` (fixed: the split is part of the run)
HOLDOUT_SEED = 0


def holdout_split(loader: DataLoader, fraction: float, *, seed: int = HOLDOUT_SEED,
                  eval_batch_size: int = 1000) -> tuple[DataLoader, DataLoader]:
    """Split the training data of ``loader`` into ``(train, validation)`` loaders: a fixed
    random ``fraction`` of its samples (drawn with their own generator seeded by ``seed``,
    so no global random state is used and every call gives the same split) is held out
    for validation, read in order in batches of ``eval_batch_size``; the training loader
    reads the rest like ``loader`` (batch size, shuffling with ``loader``'s own
    generator, so a run that saves that generator's state resumes the same batch order;
    in a ``torchrun`` group, this rank's share). Raises :class:`ConfigError` when the
    fraction leaves either part empty or the data set is not map-style (no ``len``)."""
    from mobileprune import distributed

    data = loader.dataset
    if not (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        raise ConfigError("a validation split needs a map-style training set (len and indexing), "
                          f"got {type(data).__name__}")
    n = len(data)
    k = round(n * fraction)
    if not 0 < k < n:
        raise ConfigError(f"a validation fraction of {fraction} of {n} training samples leaves "
                          f"{'no validation' if k < 1 else 'no training'} sample")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    held, kept = (Subset(data, order[a:b].sort().values.tolist()) for a, b in ((0, k), (k, n)))
    common = {"batch_size": loader.batch_size, "drop_last": loader.drop_last,
              "collate_fn": loader.collate_fn, "num_workers": loader.num_workers}
    if distributed.active():
        train = DataLoader(kept, sampler=distributed.sampler(kept, seed), **common)
    else:
        train = DataLoader(kept, shuffle=isinstance(loader.sampler, RandomSampler),
                           generator=loader.generator, **common)
    return train, DataLoader(held, batch_size=eval_batch_size, collate_fn=loader.collate_fn)
