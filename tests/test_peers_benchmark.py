"""benchmarks/peers.py cell logic on the embedded MNIST sample: every method lands on its
compression target (nonzeros counted from the weights), the budget split and the layer
allocation are what the docs say, and the report names the columns mobileprune loses."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from mobileprune.data.registry import load_dataset, make_loaders
from mobileprune.models import build_model

ROOT = Path(__file__).resolve().parents[1]
DENSE_WEIGHTS = 20 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "benchmarks" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_peers"] = mod  # dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
        yield mod
    finally:
        sys.modules.pop("bench_peers", None)


@pytest.fixture(scope="module")
def data(peers):
    torch.manual_seed(0)
    bundle = load_dataset("mnist-sample")
    train, test = make_loaders(bundle, batch_size=128, seed=0)
    # tiny epochs: 512 training images, 256 test images
    train = DataLoader(Subset(train.dataset, range(512)), batch_size=128, shuffle=True)
    test = DataLoader(Subset(test.dataset, range(256)), batch_size=256)
    dense = build_model("lenet5")
    peers.finetune(dense, train, 1)
    return peers.Data(train, test, bundle.train[0][0].unsqueeze(0), dense.eval())


def test_layer_keeps_clips_and_redistributes(peers):
    sizes = [500, 25_000, 400_000, 5_000]
    keeps = peers.layer_keeps(sizes, [250, 2000, 3250, 500], 43_050)
    assert sum(keeps) == 43_050 and keeps[0] == 500  # conv1 full, its share moved on
    assert all(k <= s for k, s in zip(keeps, sizes))
    # the rest keeps the template's 2000 : 3250 : 500 ratios (largest remainder)
    rest = 43_050 - 500
    for k, t in zip(keeps[1:], (2000, 3250, 500)):
        assert abs(k - rest * t / 5750) < 1
    assert peers.layer_keeps(sizes, [250, 2000, 3250, 500], 6000) == [250, 2000, 3250, 500]


def test_cubic_schedule(peers):
    assert peers.cubic_keep(1000, 100, 0.0) == 1000
    assert peers.cubic_keep(1000, 100, 1.0) == peers.cubic_keep(1000, 100, 7.0) == 100
    # halfway: sparsity 0.9 * (1 - 0.5^3) = 0.7875 -> 212.5 kept
    assert peers.cubic_keep(1000, 100, 0.5) in (212, 213)
    mids = [peers.cubic_keep(1000, 100, t / 10) for t in range(11)]
    assert mids == sorted(mids, reverse=True)


#: output positions per weight of each layer (conv1 24x24, conv2 8x8, fc1, fc2)
POSITIONS = {"conv1": 576, "conv2": 64, "fc1": 1, "fc2": 1}


@pytest.fixture
def channels_last():
    """Train as the benchmark does by default (channels_last on for conv models)."""
    from mobileprune.pipeline.train import set_training_speed

    set_training_speed("fp32", True)
    yield
    set_training_speed("fp32", False)  # as tests/conftest.py sets it


@pytest.mark.parametrize("method", ["torch_oneshot", "torch_iterative", "admm", "l0_group_lasso"])
def test_unstructured_cells_hit_the_target(peers, data, method, channels_last):
    model, info, seconds, keep = peers.prune_cell(method, 2, 71.0, data)
    assert keep == round(DENSE_WEIGHTS / 71)
    mods = dict(model.named_modules())
    counts = {n: int((mods[n].weight != 0).sum()) for n in POSITIONS}
    assert not any(hasattr(mods[n], "weight_mask") for n in POSITIONS)  # torch.prune made permanent
    assert keep - 2 <= sum(counts.values()) <= keep
    row = peers.measure(model, data, seconds, info.pop("engine"), DENSE_WEIGHTS)
    assert row["nonzero"] == sum(counts.values())
    assert abs(row["compression"] - 71.0) < 0.05
    # nonzero MACs: every nonzero weight multiplies once per output position
    assert row["macs"] == sum(c * POSITIONS[n] for n, c in counts.items())
    assert row["engine"] == "mobileprune runtime" and row["latency_ms"] > 0


def test_torch_pruning_cell(peers, data):
    pytest.importorskip("torch_pruning")
    row = peers.run_cell("torch_pruning", 1, 10.0, data)
    units = row["info"]["units"]
    assert units[-1] == 10 and units[0] < 20  # classes kept, conv1 filters removed
    # the compacted model's weights: count them from the unit counts
    c1, c2, f1, _ = units
    assert row["nonzero"] <= c1 * 25 + c2 * c1 * 25 + f1 * c2 * 16 + 10 * f1
    assert 5 < row["compression"] < 20 and row["engine"].startswith("torch")


def test_render_says_where_mobileprune_loses(peers):
    base = {"budget": 4, "target": 71.0, "nonzero": 6063, "compression": 71.0, "macs": 100_000,
            "seconds": 100.0, "engine": "mobileprune runtime", "latency_ms": 0.05,
            "latency_p10_ms": 0.04}
    cells = {"a": {**base, "method": "torch_iterative", "test_accuracy": 0.99,
                   "info": {"cpu_seconds": 90.0, "loadavg": [1.0, 1.0, 1.0]}},
             "b": {**base, "method": "admm", "test_accuracy": 0.98, "seconds": 150.0,
                   "info": {"cpu_seconds": 80.0, "loadavg": [2.0, 1.0, 1.0]}}}
    md = peers.render({"cells": cells})
    assert "test accuracy: **torch_iterative** leads (99.00 %; best mobileprune admm 98.00 %)" in md
    # time is compared as CPU time: admm's 80 s CPU leads although its wall time is longer
    assert "CPU time" not in md.split("does NOT lead")[1]
    cells["b"]["info"]["cpu_seconds"] = 95.0
    assert "CPU time: **torch_iterative** leads (90 s; best mobileprune admm 95 s)" in peers.render({"cells": cells})
    cells["b"]["info"]["cpu_seconds"] = 80.0
    cells["b"]["test_accuracy"] = 0.99
    assert "mobileprune leads every column here." in peers.render({"cells": cells})
    assert json.loads(json.dumps(cells)) == cells


def test_saved_models_are_retimed_together(peers, data, tmp_path):
    key = peers.cell_key("torch_oneshot", 1, 10.0)
    row = peers.run_cell("torch_oneshot", 1, 10.0, data, save=tmp_path / "torch_oneshot_1_10.pt")
    results = {"cells": {key: row, "admm/1/10": {**row, "method": "admm"}},  # no saved model
               "dense": {"latency_ms": -1.0}}
    assert peers.retime(results, tmp_path, data) == 1
    assert results["cells"][key]["latency_timing"] == "interleaved" and results["cells"][key]["latency_ms"] > 0
    assert "latency_timing" not in results["cells"]["admm/1/10"]
    assert results["dense"]["latency_ms"] > 0 and results["dense"]["latency_runtime_ms"] > 0
    del results["dense"]
    md = peers.render(results)
    assert md.count(" * |") == 1  # the row timed alone is marked


def test_grid_reruns_only_cells_of_an_older_method_version(peers, tmp_path, monkeypatch):
    """A saved cell is kept while its method's settings version is current; an admm cell
    saved before ``METHOD_VERSION["admm"]`` (no version: 1) runs again; a missing cell runs."""
    ran = []
    monkeypatch.setattr(peers, "run_cell", lambda m, b, t, data, save=None: (
        ran.append(m) or {"method": m, "version": peers.METHOD_VERSION.get(m, 1), "test_accuracy": 0.9,
                         "nonzero": 1, "compression": 71.0, "seconds": 1.0}))
    monkeypatch.setattr(peers, "render", lambda results: "")
    monkeypatch.setattr(peers, "machine", lambda: {})
    cells = {peers.cell_key("torch_oneshot", 4, 71.0): {"method": "torch_oneshot"},
             peers.cell_key("admm", 4, 71.0): {"method": "admm"}}
    results = {"cells": dict(cells), "dense": {}}
    args = type("A", (), {"budgets": [4], "targets": [71.0], "methods": ["torch_oneshot", "admm", "torch_iterative"],
                          "models": str(tmp_path / "models")})()
    peers.run_grid(args, None, results, tmp_path / "peers")
    assert peers.METHOD_VERSION["admm"] >= 2
    assert ran == ["admm", "torch_iterative"]
    assert results["cells"][peers.cell_key("admm", 4, 71.0)]["version"] == peers.METHOD_VERSION["admm"]
    assert json.loads((tmp_path / "peers.json").read_text())["cells"].keys() == results["cells"].keys()
    assert results["cells"][peers.cell_key("torch_oneshot", 4, 71.0)] == {"method": "torch_oneshot"}
    ran.clear()
    peers.run_grid(args, None, results, tmp_path / "peers")  # all current now: nothing runs
    assert ran == []
    # --redo-unsaved: the cells without a saved model in --models run again, the saved one not
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "torch_oneshot_4_71.pt").write_bytes(b"")  # the name run_grid saves under
    args.redo_unsaved = True
    peers.run_grid(args, None, results, tmp_path / "peers")
    assert ran == ["admm", "torch_iterative"]
