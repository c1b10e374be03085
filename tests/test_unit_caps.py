"""schedule.max_units / max_inputs / structure_epochs and cap_units: hard limits on the
number of filters, neurons and inputs, held through the proximal rounds."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import tiny_images
from mobileprune.checkpoint import load_checkpoint
from mobileprune.errors import ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import cap_units, proximal_prune


def _active(w: torch.Tensor) -> tuple[int, int]:
    w = w.detach().reshape(w.shape[0], w.shape[1], -1)
    return int((w != 0).any(2).any(1).sum()), int((w != 0).any(2).any(0).sum())


def test_cap_units_keeps_the_units_of_largest_norm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    conv, fc = copy.deepcopy(net[0].weight), copy.deepcopy(net[3].weight)
    units = cap_units(net, {"0": 4, "3": 2}, {"0": 2, "3": 30})
    # by hand: the 4 filters of largest norm, then the 2 input channels of largest norm
    # among what is left; fc: 2 rows, then 30 columns
    keep_f = conv.flatten(1).norm(dim=1).argsort(descending=True)[:4]
    c = torch.zeros_like(conv)
    c[keep_f] = conv[keep_f]
    keep_c = c.transpose(0, 1).flatten(1).norm(dim=1).argsort(descending=True)[:2]
    expect = torch.zeros_like(conv)
    expect[:, keep_c] = c[:, keep_c]
    assert torch.equal(net[0].weight, expect)
    keep_r = fc.norm(dim=1).argsort(descending=True)[:2]
    f = torch.zeros_like(fc)
    f[keep_r] = fc[keep_r]
    keep_cols = f.norm(dim=0).argsort(descending=True)[:30]
    expect = torch.zeros_like(fc)
    expect[:, keep_cols] = f[:, keep_cols]
    assert torch.equal(net[3].weight, expect)
    assert units == {"0": {"out": 4, "in": 2}, "3": {"out": 2, "in": 30}}
    assert _active(net[0].weight) == (4, 2) and _active(net[3].weight) == (2, 30)
    # idempotent: a second cut changes nothing
    before = copy.deepcopy(net.state_dict())
    cap_units(net, {"0": 4, "3": 2}, {"0": 2, "3": 30})
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())


def test_cap_units_rejects_bad_names_and_counts():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(ConfigError, match="'fc9' is not a Conv/Linear layer"):
        cap_units(net, {"fc9": 1})
    with pytest.raises(ConfigError, match=r"max_inputs\['0'\] = 5 is larger than the layer \(4 units\)"):
        cap_units(net, None, {"0": 5})
    w = net[0].weight.detach().clone()
    cap_units(net, {"0": 5}, strict=False)  # a layer already smaller: left alone
    assert torch.equal(net[0].weight, w)


@pytest.fixture()
def data():
    return tiny_images(32)


def _cfg(**sched):
    # weak l0 pressure: cut units would grow back in the prox phases without the cap
    return {"method": "l0", "eta": 1e-8,
            "schedule": {"rounds": 2, "prox_epochs": 1, "retrain_epochs": 1, "prox_lr": 1e-2,
                         "retrain_lr": 1e-3, "max_units": {"fc1": 20, "fc2": 10},
                         "max_inputs": {"fc1": 100}, "structure_epochs": 2, "distill": 0.5, **sched}}


def test_caps_hold_through_the_rounds(data):
    torch.manual_seed(0)
    m = LeNet300100()
    lines = []
    res = proximal_prune(m, data, _cfg(), log=lines.append)
    # fc2's 300 input columns stay: without fold_dead nothing zeroes a dead unit's outputs
    assert "capped units: fc1 20 out / 100 in, fc2 10 out / 300 in" in lines
    assert sum(line.startswith("structure retrain ") for line in lines) == 2
    assert _active(m.fc1.weight)[0] <= 20 and _active(m.fc1.weight)[1] <= 100
    assert _active(m.fc2.weight)[0] <= 10
    assert res.history[0]["round"] == 0 and res.history[0]["capped"]["fc1"] == {"out": 20, "in": 100}
    assert m.fc1.weight.shape == (300, 784)  # without compact the layers keep their sizes


def test_caps_with_compact_give_the_smaller_layers_and_resume(data, tmp_path):
    torch.manual_seed(0)
    full = LeNet300100()
    cfg = _cfg(compact=True, fold_dead=True)
    a = proximal_prune(copy.deepcopy(full), data, cfg, run_dir=tmp_path / "a", log=lambda s: None).model
    # (the model's input pixels cannot be removed: fc1 keeps 784 columns, <= 100 of them nonzero)
    assert a.fc1.out_features <= 20 and _active(a.fc1.weight)[1] <= 100 and a.fc2.out_features <= 10
    assert a.fc2.in_features == a.fc1.out_features and a.fc3.in_features == a.fc2.out_features

    def stop_in_structure(line):  # interrupted after one of the two structure epochs
        if line.startswith("structure retrain 1/"):
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        proximal_prune(copy.deepcopy(full), data, cfg, run_dir=tmp_path / "b", log=stop_in_structure)
    st = load_checkpoint(tmp_path / "b" / "state.pt")
    assert st["extra"]["phases"]["structure"]["epochs"] == 1 and "structure" not in st["extra"]["done"]
    lines = []
    b = proximal_prune(copy.deepcopy(full), data, cfg, run_dir=tmp_path / "b", log=lines.append).model
    assert not any(line.startswith("capped units") for line in lines)  # not cut twice
    assert [line for line in lines if line.startswith("structure retrain")][0].startswith("structure retrain 2/2")
    sd_a, sd_b = a.state_dict(), b.state_dict()
    assert {k: v.shape for k, v in sd_a.items()} == {k: v.shape for k, v in sd_b.items()}
    for k in sd_a:
        assert torch.allclose(sd_a[k], sd_b[k], atol=1e-6), k


def test_caps_validated(data):
    with pytest.raises(ConfigError, match="schedule.structure_epochs needs"):
        proximal_prune(LeNet300100(), data, {"method": "l0", "eta": 1e-4,
                                             "schedule": {"structure_epochs": 2}}, log=lambda s: None)
    with pytest.raises(ConfigError, match=r"schedule.max_units\['fc1'\]"):
        proximal_prune(LeNet300100(), data, _cfg(max_units={"fc1": 0}), log=lambda s: None)
    with pytest.raises(ConfigError, match="'conv9' is not a Conv/Linear layer"):
        proximal_prune(LeNet300100(), data, _cfg(max_units={"conv9": 3}), log=lambda s: None)
    with pytest.raises(ConfigError, match="larger than the layer"):
        proximal_prune(LeNet300100(), data, _cfg(max_inputs={"fc1": 785}), log=lambda s: None)


def test_an_input_cap_chooses_among_the_inputs_of_the_units_kept_upstream():
    """conv2 capped to 3 filters and fc1 to 40 inputs: with fold_dead the 40 inputs are
    all positions of those 3 filters (48 live columns), none of a cut filter."""
    from mobileprune.models import LeNet5

    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=g)
    loader = DataLoader(TensorDataset(x, (x[:, 0, :14].mean((1, 2)) > 0).long()), batch_size=32)
    torch.manual_seed(0)
    m = LeNet5()
    cfg = {"method": "l0", "eta": 1e-8,
           "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 0, "fold_dead": True,
                        "max_units": {"conv2": 3}, "max_inputs": {"fc1": 40}}}
    res = proximal_prune(m, loader, cfg, log=lambda s: None)
    assert res.history[0]["capped"]["fc1"]["in"] == 40
    live_filters = set((m.conv2.weight != 0).flatten(1).any(1).nonzero().flatten().tolist())
    live_cols = (m.fc1.weight != 0).any(0).nonzero().flatten()
    assert len(live_filters) == 3 and len(live_cols) == 40
    assert {int(c) // 16 for c in live_cols} <= live_filters
