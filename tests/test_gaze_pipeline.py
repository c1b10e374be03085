"""Eye tracking end to end (seed 003, section 4.2): ITrackerMobile, its Table 5 config,
ADMM pruning in the user's own training loop on GazeCapture-style batches (four inputs,
a regression loss), masked retraining, and the four-input sparse runtime."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from mobileprune import ADMMPruner, MaskEnforcer, load_config, resolve_targets
from mobileprune.data.gaze import GazeArrays, GazeDataset
from mobileprune.models import build_model
from mobileprune.runtime import load
from mobileprune.deploy.sparse import export_sparse

# seed 003, Table 5: "Matrices sparsity" per layer (fc2 not pruned)
TABLE5 = {"conv_e1": 0.30, "conv_e2": 0.995, "conv_e3": 0.995, "conv_e4": 0.85,
          "conv_f1": 0.30, "conv_f2": 0.995, "conv_f3": 0.995, "conv_f4": 0.85,
          "fc_e1": 0.94, "fc_f1": 0.98, "fc_f2": 0.82, "fc_fg1": 0.995, "fc_fg2": 0.97,
          "fc1": 0.985}


def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: m.weight for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))}


def test_itracker_matches_table5_weight_counts():
    model = build_model("itracker")
    counts = {n: w.numel() for n, w in _weights(model).items()}
    # Table 5's counts, conv-e1/f1 read as 3 x 5 x 5 x 64 = 4,800 (the table says 4,875)
    seed = {"conv_e1": 4800, "conv_e2": 102400, "conv_e3": 73728, "conv_e4": 8192,
            "fc_e1": 65536, "fc_f1": 32768, "fc_f2": 8192, "fc_fg1": 160000,
            "fc_fg2": 32768, "fc1": 40960, "fc2": 256}
    for k in range(1, 5):
        seed[f"conv_f{k}"] = seed[f"conv_e{k}"]
    assert counts == seed and sum(counts.values()) == 718_720
    y = model(torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64),
              torch.zeros(2, 625))
    assert y.shape == (2, 2)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("itracker", size=48)


def test_table5_config_keeps_the_seeds_budget():
    model = build_model("itracker")
    cfg = load_config("itracker-table5")
    assert {k: v for k, v in cfg["layers"].items()} == TABLE5 and cfg["exclude"] == ["fc2"]
    targets = {t.name: t for t in resolve_targets(model, cfg)}
    assert set(targets) == set(TABLE5)
    w = _weights(model)
    for name, s in TABLE5.items():
        n = w[name].numel()
        assert targets[name].keep == math.floor(n * (1 - s) + 1e-9), name
    kept = sum(t.keep for t in targets.values()) + w["fc2"].numel()
    assert kept == 19_650  # 718,720 / 19,650 = 36.6x; the seed: 36x (19,765 kept)


def _gaze_batches(n: int, size: int, seed: int) -> GazeArrays:
    """GazeCapture-like arrays whose target depends on the face position in the grid and
    on the eye crops' brightness (something a network can learn)."""
    rng = np.random.default_rng(seed)
    face = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    left = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    right = rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8)
    grid = np.zeros((n, 25, 25), np.float32)
    xy = rng.integers(0, 15, (n, 2))
    for i, (x, y) in enumerate(xy):
        grid[i, y:y + 10, x:x + 10] = 1
    target = np.stack([xy[:, 0] - 7.0 + (left.mean((1, 2, 3)) - 127.5) / 20,
                       xy[:, 1] - 7.0 + (right.mean((1, 2, 3)) - 127.5) / 20], 1)
    return GazeArrays(face, left, right, grid.reshape(n, 625), target.astype(np.float32),
                      np.zeros(n, np.int32), np.arange(n, dtype=np.int32))


def test_admm_in_own_loop_then_sparse_runtime(tmp_path):
    """The README's own-loop recipe on a four-input regression model: ADMM (Eqs. 5-7)
    towards Table 5, masked mapping, masked retraining with Adam; every layer lands on
    its exact budget, the shared eye tower is pruned once, and the sparse runtime gives
    the torch output on the dataset's batches."""
    torch.manual_seed(0)
    size = 32
    data = GazeDataset(_gaze_batches(48, size, seed=1))
    loader = DataLoader(data, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    model = build_model("itracker", size=size)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pruner = ADMMPruner(model, load_config("itracker-table5"), rho=1e-2, update_every=2)
    for _ in range(2):
        for (face, left, right, grid), y in loader:
            loss = nn.functional.mse_loss(model(face, left, right, grid), y) + pruner.penalty()
            opt.zero_grad()
            loss.backward()
            opt.step()
            pruner.step()
    masks = pruner.finalize()
    targets = {t.name: t for t in resolve_targets(model, load_config("itracker-table5"))}
    with MaskEnforcer(model, masks, opt):
        for (face, left, right, grid), y in loader:
            loss = nn.functional.mse_loss(model(face, left, right, grid), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    w = _weights(model)
    for name, t in targets.items():
        assert int((w[name] != 0).sum()) == t.keep, name
        assert torch.equal(w[name] != 0, masks[f"{name}.weight"].bool()), name
    assert int((w["fc2"] != 0).sum()) == w["fc2"].numel()  # excluded

    model.eval()
    (face, left, right, grid), _ = next(iter(DataLoader(data, batch_size=5)))
    path = tmp_path / "itracker.mpsparse"
    rep = export_sparse(model, (face[:1], left[:1], right[:1], grid[:1]), path)
    kept = sum(t.keep for t in targets.values()) + w["fc2"].numel()
    assert rep["totals"]["nnz"] == kept  # each layer once, the eye tower included
    sm = load(path)
    got = sm(face.numpy(), left.numpy(), right.numpy(), grid.numpy())
    with torch.no_grad():
        ref = model(face, left, right, grid).numpy()
    assert np.abs(got - ref).max() <= 1e-4 * np.abs(ref).max()


def test_admm_prune_pipeline_regression_metric(tmp_path):
    """The one-call ADMM pipeline on the four-input regression model: ``loss_fn`` (MSE) and
    ``metric`` (mean distance in the targets' unit) replace cross-entropy and accuracy;
    every layer lands on its Table 5 budget; the report counts MACs through all inputs."""
    from mobileprune import admm_prune
    from mobileprune.pipeline.train import mean_distance

    torch.manual_seed(0)
    data = GazeDataset(_gaze_batches(32, 32, seed=2))
    loader = DataLoader(data, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    test = DataLoader(GazeDataset(_gaze_batches(16, 32, seed=3), mean=data.mean), batch_size=16)
    model = build_model("itracker", size=32)
    config = {"admm": {"epochs": 1, "lr": 1e-3, "rho": 1e-2, "update_every": 1},
              "retrain": {"epochs": 1, "lr": 1e-3},
              "stages": [load_config("itracker-table5")]}
    logs: list[str] = []
    res = admm_prune(model, loader, config, eval_loader=test, run_dir=tmp_path / "run",
                     loss_fn=nn.functional.mse_loss, metric=mean_distance, log=logs.append)
    # the metric, computed apart, after pruning
    (face, left, right, grid), y = next(iter(test))
    with torch.no_grad():
        want = float(torch.linalg.vector_norm(model(face, left, right, grid) - y, dim=1).mean())
    assert res.report["metrics"]["mean_distance_after"] == pytest.approx(want, rel=1e-5)
    assert res.report["metrics"]["mean_distance_before"] > 0
    assert [h["test_mean_distance"] for h in res.history if h["phase"] == "retrain"]
    assert all(h.get("train_accuracy") is None for h in res.history if "loss" in h)
    assert any("mean_distance before pruning" in line for line in logs)
    assert res.report["totals"]["all_targets_met"] is True
    w = _weights(model)
    for t in resolve_targets(model, load_config("itracker-table5")):
        assert int((w[t.name] != 0).sum()) == t.keep, t.name
    assert res.report["totals"]["macs"] > 0  # MACs counted with the four example inputs
    # the accuracy default refuses regression targets with a clear message
    from mobileprune.errors import ConfigError
    from mobileprune.pipeline.train import evaluate
    with pytest.raises(ConfigError, match="not class indices"):
        evaluate(model, test)
