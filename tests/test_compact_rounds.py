"""compact_in_place and schedule.compact: pruning rounds that continue on the smaller
network, with resume across the change of shapes."""

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint
from mobileprune.surgery.compact import compact, compact_in_place
from mobileprune.errors import CheckpointError, ConfigError, UnsupportedModelError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import proximal_prune


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 6, 3)
        self.bn = nn.BatchNorm2d(6)
        self.fc1 = nn.Linear(6 * 4 * 4, 12)
        self.fc2 = nn.Linear(12, 3)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


class HardCoded(Net):
    def forward(self, x):  # the size 12 is written into the forward
        x = torch.relu(self.bn(self.conv(x)))
        h = torch.relu(self.fc1(x.flatten(1)))
        return self.fc2(h.reshape(-1, 12))


def _dead(model):
    torch.manual_seed(0)
    with torch.no_grad():
        model.conv.weight[[1, 4]] = 0      # two dead filters (constant bias after BN)
        model.fc1.weight[[0, 5, 7]] = 0    # three dead hidden units (relu(b) into fc2's bias)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def test_compact_in_place_swaps_the_smaller_layers_into_the_same_object():
    m = _dead(Net())
    x = torch.randn(5, 1, 6, 6)
    ref = m(x)
    small = compact(m, x[:1])
    changed = compact_in_place(m, x[:1])
    # the same object, now with compact's layer sizes and values
    assert changed == {"conv": ((6, 1, 3, 3), (4, 1, 3, 3)), "bn": ((6,), (4,)),
                       "fc1": ((12, 96), (9, 64)), "fc2": ((3, 12), (3, 9))}
    assert {k: v.shape for k, v in m.state_dict().items()} == \
        {k: v.shape for k, v in small.state_dict().items()}
    for k, v in small.state_dict().items():
        assert torch.equal(m.state_dict()[k], v), k
    assert torch.allclose(m(x), ref, atol=1e-5)
    # training a fresh optimizer over m.parameters() trains the new layers
    assert {id(p) for p in m.parameters()} == {id(p) for p in (m.conv.weight, m.conv.bias, m.bn.weight,
                                                               m.bn.bias, m.fc1.weight, m.fc1.bias,
                                                               m.fc2.weight, m.fc2.bias)}
    assert compact_in_place(m, x[:1]) == {}  # nothing dead left


def test_compact_in_place_keeps_training_flags_and_a_live_model_untouched():
    m = Net().train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert compact_in_place(m, torch.randn(1, 1, 6, 6)) == {}
    assert m.training and all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    d = _dead(Net()).train()
    compact_in_place(d, torch.randn(1, 1, 6, 6))
    assert d.training and d.bn.training and d.fc1.out_features == 9


def test_compact_in_place_rejects_hard_coded_sizes_and_leaves_the_model_as_it_was():
    m = _dead(HardCoded())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(UnsupportedModelError, match="hard-coded sizes"):
        compact_in_place(m, torch.randn(1, 1, 6, 6))
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_compacted_run_state_restores_into_a_fresh_model(tmp_path):
    m = _dead(Net())
    compact_in_place(m, torch.randn(1, 1, 6, 6))
    save_checkpoint(tmp_path / "s.pt", m, kind="run-state", extra={"compacted": True})
    fresh = restore_model(load_checkpoint(tmp_path / "s.pt"), Net())
    assert fresh.fc1.weight.shape == (9, 64)
    x = torch.randn(3, 1, 6, 6)
    assert torch.equal(fresh.eval()(x), m(x))
    # without the flag a run state of other shapes is a foreign checkpoint
    save_checkpoint(tmp_path / "p.pt", m, kind="run-state")
    with pytest.raises(CheckpointError, match="different architecture"):
        restore_model(load_checkpoint(tmp_path / "p.pt"), Net())


# ----------------------------------------------------------------- schedule.compact
@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)  # deterministic order


def _cfg(**sched):
    # row group lasso on fc1 kills hidden units (fc1 rows); l0 on fc2 single weights
    return {"method": "l0_group_lasso", "lam": 0.0, "eta": 1e-4,
            "layers": {"fc1": {"grouping": "linear_out", "lam": 30.0, "eta": 1e-4}},
            "schedule": {"rounds": 3, "prox_epochs": 1, "retrain_epochs": 1, "lam_factor": 1.5,
                         "prox_lr": 1e-3, "retrain_lr": 1e-3, "compact": True, "fold_dead": True,
                         "distill": 0.5, **sched}}


def _weak(seed=0):
    torch.manual_seed(seed)
    m = LeNet300100()
    with torch.no_grad():
        m.fc1.weight[:150] *= 0.01  # 150 weak hidden units: the group lasso kills them
    return m


def test_schedule_compact_trains_the_smaller_model(data):
    m = _weak()
    given = copy.deepcopy(m)
    seen = []
    res = proximal_prune(m, data, _cfg(), log=seen.append)
    assert res.compacted and res.model is m
    assert m.fc1.out_features < 300 and m.fc2.in_features == m.fc1.out_features
    assert any(line.startswith("compacted: fc1 (300, 784) -> ") for line in seen)
    # every round compacted what it killed: no dead unit is left in the final model
    x = data.dataset[0][0].unsqueeze(0)
    assert compact_in_place(copy.deepcopy(m), x) == {}
    # the recorded shapes chain from the given model to the final one
    shapes = [h["compacted"]["fc1"] for h in res.history if h.get("compacted", {}).get("fc1")]
    assert shapes[0][0] == [300, 784] and shapes[-1][1] == list(m.fc1.weight.shape)
    assert all(a[1] == b[0] for a, b in zip(shapes, shapes[1:]))
    # the masks and report describe the smaller model
    assert res.masks["fc1.weight"].shape == m.fc1.weight.shape
    assert torch.equal(res.masks["fc2.weight"], m.fc2.weight != 0)
    assert given.fc1.out_features == 300  # the teacher copy / caller's copy untouched
    t = res.report["totals"]
    n_given = sum(getattr(given, n).weight.numel() for n in ("fc1", "fc2", "fc3"))
    nz = sum(int((getattr(m, n).weight != 0).sum()) for n in ("fc1", "fc2", "fc3"))
    assert t["original_weights"] == n_given == 266200 and t["nonzero"] == nz
    assert t["weight_compression"] == pytest.approx(n_given / nz)
    assert t["original_parameters"] == sum(p.numel() for p in given.parameters())


def test_schedule_compact_resumes_across_the_change_of_shapes(data, tmp_path):
    """Interrupted after round 1 (the model already compacted), resumed with a fresh copy
    of the model as given: the same result as one uninterrupted run."""
    full = _weak()
    res_full = proximal_prune(copy.deepcopy(full), data, _cfg(), run_dir=tmp_path / "a",
                              log=lambda s: None)

    def stop_after_round_1(line):  # its line is logged once the round is saved
        if line.startswith("round 1/"):
            raise KeyboardInterrupt
    m = copy.deepcopy(full)
    with pytest.raises(KeyboardInterrupt):
        proximal_prune(m, data, _cfg(), run_dir=tmp_path / "b", log=stop_after_round_1)
    st = load_checkpoint(tmp_path / "b" / "state.pt")
    assert st["extra"]["rounds_done"] == 1 and st["extra"]["compacted"]
    assert st["architecture"]["fc1.weight"][0] < 300
    lines = []
    res = proximal_prune(copy.deepcopy(full), data, _cfg(), run_dir=tmp_path / "b", log=lines.append)
    assert "resuming from" in lines[0] and "1 of 3 rounds done" in lines[0]
    sd_a, sd_b = res_full.model.state_dict(), res.model.state_dict()
    assert {k: v.shape for k, v in sd_a.items()} == {k: v.shape for k, v in sd_b.items()}
    for k in sd_a:
        assert torch.allclose(sd_a[k], sd_b[k], atol=1e-6), k
    # a different starting model is refused
    with pytest.raises(CheckpointError, match="other model weights"):
        proximal_prune(LeNet300100(num_classes=3), data, _cfg(), run_dir=tmp_path / "b",
                       log=lambda s: None)


def test_schedule_compact_validated(data):
    with pytest.raises(ConfigError, match="schedule.compact"):
        proximal_prune(LeNet300100(), data, _cfg(compact="yes"), log=lambda s: None)


def _compressions(model):
    from mobileprune.sparsity.report import layer_report

    t = layer_report(model)["totals"]
    return t["weight_compression"], t["param_compression"]


def test_reports_of_a_model_shrunk_in_the_users_loop_count_against_the_model_it_started_as(tmp_path):
    m = _dead(Net())
    x = torch.randn(1, 1, 6, 6)
    # sizes of the model as given, counted by hand: conv 6*9, fc1 12*96, fc2 3*12 weights
    weights = 6 * 9 + 12 * 96 + 3 * 12
    params = weights + 6 + 2 * 6 + 12 + 3  # biases and the BatchNorm affine parameters
    assert sum(p.numel() for p in m.parameters()) == params
    nz = sum(int(torch.count_nonzero(l.weight)) for l in (m.conv, m.fc1, m.fc2))
    nzp = sum(int(torch.count_nonzero(p)) for p in m.parameters())
    assert _compressions(m) == (pytest.approx(weights / nz), pytest.approx(params / nzp))
    small = compact(m, x)  # a new model
    compact_in_place(m, x)  # the same object
    for model in (m, small):
        nz_small = sum(int(torch.count_nonzero(l.weight)) for l in (model.conv, model.fc1, model.fc2))
        nzp_small = sum(int(torch.count_nonzero(p)) for p in model.parameters())
        assert _compressions(model) == (pytest.approx(weights / nz_small), pytest.approx(params / nzp_small))
    # a second compaction, after more units died, still counts against the first size
    with torch.no_grad():
        m.fc1.weight[[0, 1]] = 0
    compact_in_place(m, x)
    assert m.fc1.out_features == 7
    nz2 = sum(int(torch.count_nonzero(l.weight)) for l in (m.conv, m.fc1, m.fc2))
    assert _compressions(m)[0] == pytest.approx(weights / nz2)
    assert _compressions(compact(copy.deepcopy(m), x))[0] == pytest.approx(weights / nz2)
    # through a compacted checkpoint, restored into a fresh model
    save_checkpoint(tmp_path / "c.pt", m, kind="compacted")
    fresh = restore_model(load_checkpoint(tmp_path / "c.pt"), _dead(Net()))
    assert fresh.fc1.out_features == 7
    assert _compressions(fresh)[0] == pytest.approx(weights / nz2)
    # an explicit original wins; a model never compacted has no recorded size
    from mobileprune.sparsity.report import layer_report
    assert layer_report(m, original={"weights": 10 * nz2, "parameters": 1})["totals"][
        "weight_compression"] == pytest.approx(10.0)
    assert "original_weights" not in layer_report(Net())["totals"]
    live = Net()
    assert compact_in_place(live, x) == {} and "original_weights" not in layer_report(live)["totals"]
