"""benchmarks/methods.py end to end on the embedded MNIST sample: a row with its own dense
model (``dense:``), a compacted row, a two-stage row (``then:``), rows counted against the
dense model they started from, and a rerun served from the cache without training."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mobileprune.checkpoint import load_checkpoint, restore_model

ROOT = Path(__file__).resolve().parents[1]

SUITE = {
    "title": "methods.py test suite",
    "model": "lenet300100",
    "dataset": "mnist-sample",
    "dense": {"epochs": 1, "optimizer": "adam", "lr": 1.0e-3},
    "methods": [
        {"name": "own_dense", "dense": {"epochs": 2}, "method": "l0_group_lasso", "lam": 5.0, "eta": 0.02,
         "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 1, "fold_dead": True, "compact": True}},
        {"name": "staged", "method": "group_lasso", "lam": 5.0,
         "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 0},
         "then": {"method": "l0", "eta": 0.05, "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 1}}},
    ],
}
DENSE_WEIGHTS = 784 * 300 + 300 * 100 + 100 * 10


@pytest.fixture(scope="module")
def methods():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        spec = importlib.util.spec_from_file_location("bench_methods", ROOT / "benchmarks" / "methods.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.fixture(scope="module")
def ran(methods, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("methods")
    suite = tmp / "tiny.yaml"
    suite.write_text(yaml.safe_dump(SUITE))
    argv = [str(suite), "--work-dir", str(tmp / "work"), "--out-dir", str(tmp / "out")]
    assert methods.main(argv) == 0
    return methods, argv, tmp


def nonzeros(model) -> int:
    return sum(int(torch.count_nonzero(p)) for n, p in model.named_parameters() if n.endswith("weight"))


def test_rows_are_counted_against_their_own_start(ran):
    _, _, tmp = ran
    results = json.loads((tmp / "out" / "methods_tiny.json").read_text())["results"]
    assert set(results) == {"dense", "dense_epochs2", "own_dense", "staged"}
    work = tmp / "work" / "tiny"
    assert (work / "dense.pt").exists() and (work / "dense_epochs2.pt").exists()
    # the compacted row: its model has fewer weights than it started with, yet the row
    # counts compression against the 266,200 weights of the dense model
    final = restore_model(load_checkpoint(work / "own_dense.run" / "state.pt"))
    assert sum(m.weight.numel() for m in final.modules() if hasattr(m, "weight")) < DENSE_WEIGHTS
    row = results["own_dense"]
    assert row["weights"] == DENSE_WEIGHTS
    assert row["nonzero_weights"] == nonzeros(final)
    assert row["weight_compression"] == pytest.approx(DENSE_WEIGHTS / nonzeros(final))
    assert row["config"]["dense"] == {"epochs": 2}
    assert results["dense_epochs2"]["weights"] == DENSE_WEIGHTS
    assert results["dense_epochs2"]["weight_compression"] == pytest.approx(1.0, abs=0.01)


def test_then_stage_runs_on_the_first_stage_result(ran):
    _, _, tmp = ran
    work = tmp / "work" / "tiny"
    results = json.loads((tmp / "out" / "methods_tiny.json").read_text())["results"]
    first = restore_model(load_checkpoint(work / "staged.run" / "state.pt"))
    second = restore_model(load_checkpoint(work / "staged.then.run" / "state.pt"))
    # the l0 stage only removes weights: its support lies inside the first stage's
    for (n, a), (_, b) in zip(first.named_parameters(), second.named_parameters()):
        if n.endswith("weight"):
            assert not bool(((b != 0) & (a == 0)).any()), n
    assert nonzeros(second) < nonzeros(first)
    assert results["staged"]["nonzero_weights"] == nonzeros(second)


def test_rerun_is_served_from_the_cache(ran, monkeypatch):
    methods, argv, tmp = ran
    out = tmp / "out" / "methods_tiny.json"
    before = json.loads(out.read_text())["results"]

    def boom(*a, **k):
        raise AssertionError("a cached row was trained again")

    for fn in ("fit", "proximal_prune", "admm_prune"):
        monkeypatch.setattr(methods, fn, boom)
    assert methods.main(argv) == 0
    assert json.loads(out.read_text())["results"] == before
    md = (tmp / "out" / "methods_tiny.md").read_text()
    assert "| own_dense |" in md and "| staged |" in md and "| dense_epochs2 |" in md


def test_unknown_method_name_is_an_error(ran, capsys):
    methods, argv, _ = ran
    with pytest.raises(SystemExit):
        methods.main([*argv, "--methods", "own_dense", "typo_row"])
    assert "typo_row" in capsys.readouterr().err
