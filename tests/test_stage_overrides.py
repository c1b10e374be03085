"""Per-stage overrides of the ADMM / retraining settings in a progressive schedule."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline import PipelineConfig, admm_prune


def test_overrides_apply_to_their_stage_only():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    cfg = {"admm": {"epochs": 1}, "retrain": {"epochs": 1},
           "stages": [{"default": 0.5}, {"default": 0.8, "retrain": {"epochs": 3}, "admm": {"epochs": 2}}]}
    res = admm_prune(LeNet300100(), loader, cfg, log=lambda s: None)
    count = lambda stage, phase: sum(1 for h in res.history if h["stage"] == stage and h["phase"] == phase)
    assert (count("stage1", "admm"), count("stage1", "retrain")) == (1, 1)
    assert (count("stage2", "admm"), count("stage2", "retrain")) == (2, 3)
    # Round trip keeps the overrides, and a config without overrides is unchanged by them.
    c = PipelineConfig.from_dict(cfg)
    assert PipelineConfig.from_dict(c.to_dict()).fingerprint() == c.fingerprint()
    plain = PipelineConfig.from_dict({"stages": [{"default": 0.5}]})
    assert "retrain" not in plain.to_dict()["stages"][0]


def test_bad_override_named():
    with pytest.raises(ConfigError, match="stage 2 admm"):
        PipelineConfig.from_dict({"stages": [{"default": 0.5}, {"default": 0.8, "admm": {"rhoo": 1}}]})
