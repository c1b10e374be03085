"""``admm.rho_final``: the rho schedule that ends at a given rho whatever the phase's
length (the multiplier is derived from the number of Z/U updates, seed 003 Eqs. 6-7)."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import ConfigError
from mobileprune.pipeline.prune import PipelineConfig, admm_prune
from mobileprune.sparsity import admm as admm_mod
from mobileprune.sparsity.admm import rho_multiplier_for


def test_multiplier_hand_values():
    # 1e-3 -> 1 in 6 updates: 10 ** (3 / 6)
    assert rho_multiplier_for(1e-3, 1.0, 6) == pytest.approx(math.sqrt(10))
    assert rho_multiplier_for(0.5, 0.5, 4) == 1.0
    assert rho_multiplier_for(1e-3, 1.0, 0) == 1.0  # no update: rho stays
    with pytest.raises(ConfigError, match="must be finite and >= rho"):
        rho_multiplier_for(1e-2, 1e-3, 5)


def _loader(n=80, batch=16):  # 5 steps per epoch
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 12, generator=g)
    return DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=batch)


def _rhos(monkeypatch, admm: dict) -> list[float]:
    """rho after every Z/U update of one ADMM stage on a small MLP."""
    seen = []
    update = admm_mod.ADMMPruner.update

    def spy(self):
        out = update(self)
        seen.append(self.rho)
        return out

    monkeypatch.setattr(admm_mod.ADMMPruner, "update", spy)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 2))
    admm_prune(model, _loader(), {"default": 0.5, "admm": admm, "retrain": {"epochs": 0}},
               log=lambda s: None)
    return seen


def test_rho_reaches_rho_final_at_the_last_update_every_steps(monkeypatch):
    # 3 epochs x 5 steps, an update every 2 steps: 7 updates, geometric from 1e-3 to 0.5
    rhos = _rhos(monkeypatch, {"epochs": 3, "rho": 1e-3, "rho_final": 0.5, "update_every": 2})
    assert len(rhos) == 7
    assert rhos[-1] == pytest.approx(0.5, rel=1e-9)
    ratios = [b / a for a, b in zip([1e-3] + rhos[:-1], rhos)]
    assert ratios == pytest.approx([500 ** (1 / 7)] * 7, rel=1e-9)


def test_rho_final_with_one_update_per_epoch(monkeypatch):
    rhos = _rhos(monkeypatch, {"epochs": 4, "rho": 1e-2, "rho_final": 0.16})
    assert rhos == pytest.approx([0.02, 0.04, 0.08, 0.16], rel=1e-9)


def test_rho_multiplier_still_rules_without_rho_final(monkeypatch):
    rhos = _rhos(monkeypatch, {"epochs": 2, "rho": 1e-2, "rho_multiplier": 3.0})
    assert rhos == pytest.approx([0.03, 0.09], rel=1e-9)


@pytest.mark.parametrize("admm, match", [
    ({"rho": 1e-2, "rho_final": 1e-3}, r"admm.rho_final' must lie between 'admm.rho' \(0.01\)"),
    ({"rho_final": 5.0, "rho_max": 1.0}, r"and 'admm.rho_max' \(1.0\), got 5.0"),
    ({"rho_final": "big"}, "admm.rho_final' must be a number"),
    ({"rho_final": 0.0}, "admm.rho_final' must be > 0"),
])
def test_bad_rho_final_named_at_load(admm, match):
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_dict({"default": 0.5, "admm": admm})


def test_rho_final_with_update_every_needs_a_sized_loader():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            g = torch.Generator().manual_seed(0)
            for _ in range(4):
                x = torch.randn(12, generator=g)
                yield x, int(x[0] > 0)

    model = nn.Sequential(nn.Linear(12, 2))
    cfg = {"default": 0.5, "admm": {"epochs": 1, "rho_final": 0.1, "update_every": 2}}
    with pytest.raises(ConfigError, match="needs a data loader with a length"):
        admm_prune(model, DataLoader(Stream(), batch_size=2), cfg, log=lambda s: None)
