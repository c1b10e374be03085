"""Shared test data."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset


def tiny_images(batch_size: int, n: int = 96) -> DataLoader:
    """``n`` random 1x28x28 images, label: is the upper half's mean positive (learnable,
    so training changes the weights in a meaningful way); fixed order."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def pytest_configure(config):
    """Train in float32 and the standard layout in tests, whatever the CPU: results (and
    hand-computed references) must not depend on whether the machine has bfloat16.
    tests/test_training_speed.py switches the fast settings on where it tests them. A
    subprocess (torchrun, `python -m mobileprune`) reads MOBILEPRUNE_PRECISION."""
    import os

    from mobileprune.pipeline.train import set_training_speed

    os.environ["MOBILEPRUNE_PRECISION"] = "fp32"
    set_training_speed("fp32", False)
