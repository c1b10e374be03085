"""proximal_prune: the MobilePrune round schedule end to end, with resume."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import CheckpointError, ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline import proximal_prune


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(1))


CFG = {"method": "l0_group_lasso", "lam": 20.0, "eta": 1e-3,
       "schedule": {"rounds": 3, "prox_epochs": 1, "retrain_epochs": 1, "lam_factor": 2.0,
                    "eta_factor": 2.0, "increase_every": 1}}


def test_rounds_prune_groups_and_keep_them_pruned(data, tmp_path):
    torch.manual_seed(0)
    m = LeNet300100()
    res = proximal_prune(m, data, CFG, eval_loader=data, run_dir=tmp_path / "run", log=lambda s: None)
    assert [h["round"] for h in res.history] == [1, 2, 3]
    # lam doubled after rounds 1 and 2 (not after the last one)
    lams = [h["regularizers"]["fc1.weight"]["lam"] for h in res.history]
    assert lams == [20.0, 40.0, 80.0]
    # Whole input columns of fc1 are zero, and the report counts them.
    w = m.fc1.weight.detach()
    active = int((w.abs().sum(0) > 0).sum())
    assert active < 784
    row = {r["layer"]: r for r in res.report["layers"]}["fc1"]
    assert row["active_in"] == active and row["nonzero"] == int((w != 0).sum())
    # Masked retraining kept the pruned weights at zero: nonzeros never grow after prox.
    for h in res.history:
        assert h["nonzero_total"] <= h["nonzero_after_prox"]
    for name, mask in res.masks.items():
        assert torch.equal(mask, dict(m.named_parameters())[name].detach() != 0)


def test_resume_and_config_mismatch(data, tmp_path):
    torch.manual_seed(0)
    short = {**CFG, "schedule": {**CFG["schedule"], "rounds": 2}}
    proximal_prune(LeNet300100(), data, short, run_dir=tmp_path / "run", log=lambda s: None)
    logs = []
    m = LeNet300100()
    # Same run dir, same config: nothing left to do, model restored from the state.
    res = proximal_prune(m, data, short, run_dir=tmp_path / "run", log=logs.append)
    assert any("resuming" in s and "2 of 2" in s for s in logs)
    assert len(res.history) == 2
    with pytest.raises(CheckpointError, match="different config"):
        proximal_prune(LeNet300100(), data, CFG, run_dir=tmp_path / "run", log=lambda s: None)


def test_config_errors(data):
    with pytest.raises(ConfigError, match="schedule"):
        proximal_prune(LeNet300100(), data, {**CFG, "schedule": {"epochs": 3}}, log=lambda s: None)
    with pytest.raises(ConfigError, match="lam"):
        proximal_prune(LeNet300100(), data, {**CFG, "lam": -1.0}, log=lambda s: None)
