"""Shared start-up of the benchmark scripts: read a case file, load its data set (or
say why the benchmark is skipped), make the loaders and the work directory."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from mobileprune.data.registry import load_dataset, make_loaders
from mobileprune.errors import DataError
from mobileprune.sparsity.targets import load_yaml


def prepare(case_file: Path, data_dir: str | None, work_dir: Path):
    """``(case, bundle, train_loader, test_loader, work)``, or ``None`` (after printing
    the reason) when the data set is not available."""
    case = load_yaml(case_file)
    torch.manual_seed(case.get("seed", 0))
    try:
        bundle = load_dataset(case["dataset"], data_dir)
    except DataError as exc:
        print(f"skipping benchmark: {exc}", file=sys.stderr)
        return None
    train_loader, test_loader = make_loaders(bundle, batch_size=case.get("batch_size", 128))
    work_dir.mkdir(parents=True, exist_ok=True)
    return case, bundle, train_loader, test_loader, work_dir
