r"""Data sets for mobileprune: locating the data directory and loading MNIST.

mobileprune never downloads data. Full data sets are read from a directory the user
names with ``--data-dir`` or the environment variable ``MOBILEPRUNE_DATA``; archives
found there are unpacked once into a cache (``MOBILEPRUNE_CACHE``). A small MNIST
sample is embedded in the package (:func:`load_mnist_sample`).
"""

from mobileprune.data.mnist import (
    MNIST_MEAN,
    MNIST_STD,
    MnistArrays,
    load_mnist,
    load_mnist_sample,
    parse_idx,
    read_idx,
    to_tensor_dataset,
)
from mobileprune.data.paths import (
    ENV_CACHE,
    ENV_DATA,
    cache_dir,
    locate_dataset,
    resolve_data_dir,
)

__all__ = [
    "ENV_CACHE",
    "ENV_DATA",
    "MNIST_MEAN",
    "MNIST_STD",
    "MnistArrays",
    "cache_dir",
    "load_mnist",
    "load_mnist_sample",
    "locate_dataset",
    "parse_idx",
    "read_idx",
    "resolve_data_dir",
    "to_tensor_dataset",
]
