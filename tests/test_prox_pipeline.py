"""proximal_prune: the MobilePrune round schedule end to end, with resume."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import CheckpointError, ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import proximal_prune


@pytest.fixture()
def data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True,
                      generator=torch.Generator().manual_seed(1))


def _net() -> LeNet300100:
    """The same initial model every time (a run resumes only from the weights it started from)."""
    torch.manual_seed(0)
    return LeNet300100()


CFG = {"method": "l0_group_lasso", "lam": 20.0, "eta": 1e-3,
       "schedule": {"rounds": 3, "prox_epochs": 1, "retrain_epochs": 1, "lam_factor": 2.0,
                    "eta_factor": 2.0, "increase_every": 1}}


def test_rounds_prune_groups_and_keep_them_pruned(data, tmp_path):
    torch.manual_seed(0)
    m = _net()
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
    proximal_prune(_net(), data, short, run_dir=tmp_path / "run", log=lambda s: None)
    logs = []
    m = _net()
    # Same run dir, same config: nothing left to do, model restored from the state.
    res = proximal_prune(m, data, short, run_dir=tmp_path / "run", log=logs.append)
    assert any("resuming" in s and "2 of 2" in s for s in logs)
    assert len(res.history) == 2
    with pytest.raises(CheckpointError, match="different config"):
        proximal_prune(_net(), data, CFG, run_dir=tmp_path / "run", log=lambda s: None)


def test_config_errors(data):
    with pytest.raises(ConfigError, match="schedule"):
        proximal_prune(_net(), data, {**CFG, "schedule": {"epochs": 3}}, log=lambda s: None)
    with pytest.raises(ConfigError, match="lam"):
        proximal_prune(_net(), data, {**CFG, "lam": -1.0}, log=lambda s: None)


def _sched(**kw):
    return {**CFG, "schedule": {**CFG["schedule"], **kw}}


def test_project_margin_stops_early_and_trims(data):
    def loader():  # the same batch order in every run
        return DataLoader(data.dataset, batch_size=32, shuffle=True,
                          generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    full = proximal_prune(_net(), loader(), _sched(rounds=4), log=lambda s: None)
    nz = [h["nonzero_total"] for h in full.history]
    target = nz[1] - 1  # round 2 misses it by one weight
    margin = 2 / target  # ... but is within the margin
    torch.manual_seed(0)
    res = proximal_prune(_net(), loader(), _sched(rounds=4, target_nonzero=target, final_project=True,
                                                     project_margin=margin), log=lambda s: None)
    assert [(h["round"], h.get("projected", False)) for h in res.history] == [(1, False), (2, False),
                                                                              (2, True)]
    assert res.history[1]["nonzero_total"] == nz[1] and res.history[-1]["nonzero_total"] == target


def test_target_nonzero_stops_the_rounds(data):
    torch.manual_seed(0)
    full = proximal_prune(_net(), data, _sched(rounds=4), log=lambda s: None)
    nz = [h["nonzero_total"] for h in full.history]
    assert nz[0] > nz[1] > nz[2]  # each round prunes further
    target = (nz[0] + nz[1]) // 2  # reached after round 2, not after round 1
    torch.manual_seed(0)
    res = proximal_prune(_net(), data, _sched(rounds=4, target_nonzero=target),
                         log=lambda s: None)
    assert [h["round"] for h in res.history] == [1, 2]
    assert res.history[0]["nonzero_total"] > target >= res.history[1]["nonzero_total"]


def test_final_retrain_keeps_masks_distills_and_resumes(data, tmp_path):
    torch.manual_seed(0)
    cfg = _sched(rounds=2, distill=0.5, final_retrain_epochs=3, final_retrain_lr=1e-3)
    m = _net()

    class Stop(Exception):
        pass

    def interrupt(s):
        if s.startswith("final retrain 2/3"):
            raise Stop
    with pytest.raises(Stop):
        proximal_prune(m, data, cfg, run_dir=tmp_path / "run", log=interrupt)
    assert (tmp_path / "run" / "teacher.pt").exists()  # the dense model, for the resume
    logs = []
    m2 = _net()
    res = proximal_prune(m2, data, cfg, run_dir=tmp_path / "run", log=logs.append)
    assert [s.split(":")[0] for s in logs if s.startswith("final")] == ["final retrain 3/3"]
    assert len(res.history) == 2
    # pruned weights stayed exactly zero through the final retraining
    for name, mask in res.masks.items():
        w = dict(m2.named_parameters())[name].detach()
        assert torch.equal(mask, w != 0)
    assert res.masks["fc1.weight"].sum() < res.masks["fc1.weight"].numel()


@pytest.mark.parametrize("bad, match", [
    ({"distill": 1.5}, "distill"), ({"distill": -0.1}, "distill"),
    ({"final_retrain_epochs": -1}, "final_retrain_epochs"),
    ({"target_nonzero": 2.5}, "target_nonzero"), ({"final_retrain_lr": 0.0}, "final_retrain_lr"),
    ({"temperature": 0}, "temperature"), ({"final_distill": 1.2}, "final_distill"),
    ({"final_distill": -0.5}, "final_distill"), ({"final_project": True}, "target_nonzero"),
    ({"final_project": "yes", "target_nonzero": 10}, "final_project"),
    ({"project_margin": 0.1, "target_nonzero": 10}, "final_project"),
    ({"project_margin": -0.1, "target_nonzero": 10, "final_project": True}, "project_margin"),
    ({"fold_dead": 1}, "fold_dead"),
    ({"shift": -1}, "schedule.shift"), ({"shift": 1.5}, "schedule.shift"),
    ({"shift": 2, "mode": "palm"}, "schedule.shift needs mode 'proximal'")])
def test_schedule_additions_validated(data, bad, match):
    with pytest.raises(ConfigError, match=match):
        proximal_prune(_net(), data, _sched(**bad), log=lambda s: None)


@pytest.mark.parametrize("distill, final_distill, expect_rounds, expect_final", [
    (0.0, 0.5, 0.0, 0.5),    # distillation only in the final retraining
    (0.5, 0.0, 0.5, 0.0),    # only in the rounds
    (0.5, None, 0.5, 0.5)])  # default: the same weight in both phases
def test_final_distill_weight_per_phase(data, tmp_path, monkeypatch, distill, final_distill,
                                        expect_rounds, expect_final):
    import mobileprune.pipeline.palm as palm
    import mobileprune.pipeline.retrain as retrain

    seen = {"rounds": [], "final": []}
    run_rounds, train_epoch = palm.run_rounds, retrain.train_epoch

    def rounds_spy(*a, **kw):
        seen["rounds"].append(kw.get("distill", 0.0) if kw.get("teacher") is not None else 0.0)
        return run_rounds(*a, **kw)

    def final_spy(*a, **kw):  # the one masked-retraining loop: the final retraining's epochs
        if kw["desc"].startswith("final retrain"):
            seen["final"].append(kw.get("distill", 0.0) if kw.get("teacher") is not None else 0.0)
        return train_epoch(*a, **kw)
    monkeypatch.setattr(palm, "run_rounds", rounds_spy)
    monkeypatch.setattr(retrain, "train_epoch", final_spy)
    torch.manual_seed(0)
    proximal_prune(_net(), data, _sched(rounds=2, distill=distill, final_distill=final_distill,
                                               final_retrain_epochs=2),
                   run_dir=tmp_path / "run", log=lambda s: None)
    assert seen["rounds"] == [expect_rounds] * 2
    assert seen["final"] == [expect_final] * 2
    assert (tmp_path / "run" / "teacher.pt").exists()


def test_final_project_lands_on_the_budget_and_resumes(data, tmp_path):
    """Rounds that stop above target_nonzero: final_project trims every layer to its
    largest magnitudes, per-layer counts proportional to the rounds' (independent
    computation below), and the final retraining keeps exactly that support."""
    from mobileprune.math.projection import proportional_counts

    ds = data.dataset

    def loader():  # the same batch order in every run
        return DataLoader(ds, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))
    ev = DataLoader(ds, batch_size=64)
    torch.manual_seed(0)
    plain = _net()
    ref = proximal_prune(plain, loader(), _sched(rounds=2), log=lambda s: None)
    after = {n: dict(plain.named_parameters())[n].detach().clone() for n in ref.masks}
    nnz = {n: int((w != 0).sum()) for n, w in after.items()}
    budget = sum(nnz.values()) // 3
    keep = dict(zip(nnz, proportional_counts(list(nnz.values()), budget)))
    assert sum(keep.values()) == budget and sum(k > 0 for k in keep.values()) >= 2
    # independent: the k largest |w| of each layer (no ties in random float weights)
    expect = {}
    for n, w in after.items():
        if keep[n] == 0:
            expect[n] = torch.zeros_like(w, dtype=torch.bool)
            continue
        thr = w.abs().flatten().sort(descending=True).values[keep[n] - 1]
        expect[n] = w.abs() >= thr
        assert int(expect[n].sum()) == keep[n]

    cfg = _sched(rounds=2, target_nonzero=budget, final_project=True, final_retrain_epochs=2)

    class Stop(Exception):
        pass

    def interrupt(s):
        if s.startswith("final retrain 1/2"):
            raise Stop
    torch.manual_seed(0)
    m = _net()
    logs = []
    with pytest.raises(Stop):
        proximal_prune(m, loader(), cfg, eval_loader=ev, run_dir=tmp_path / "run",
                       log=lambda s: (logs.append(s), interrupt(s)))
    assert any(s.startswith(f"projected onto {budget:,}") for s in logs)
    m2 = _net()
    logs = []
    res = proximal_prune(m2, loader(), cfg, eval_loader=ev, run_dir=tmp_path / "run", log=logs.append)
    assert not any(s.startswith("projected") for s in logs)  # not projected twice
    assert [h.get("projected", False) for h in res.history] == [False, False, True]
    assert res.history[-1]["nonzero_total"] == budget
    for n, mask in res.masks.items():
        w = dict(m2.named_parameters())[n].detach()
        assert torch.equal(mask, expect[n]) and torch.equal(w != 0, expect[n])


def test_proportional_counts():
    from mobileprune.math.projection import proportional_counts

    assert proportional_counts([3979, 1187, 115], 4800) == [3617, 1079, 104]
    assert proportional_counts([1, 1, 1], 2) == [1, 1, 0]      # ties: lower index first
    assert proportional_counts([5, 0, 7], 20) == [5, 0, 7]     # budget above the total
    assert proportional_counts([10, 10], 0) == [0, 0]
    g = torch.Generator().manual_seed(0)
    for _ in range(200):  # brute force: the sum, the bounds, within 1 of the exact share
        c = torch.randint(0, 50, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        t = int(torch.randint(0, sum(c) + 5, (1,), generator=g))
        r = proportional_counts(c, t)
        assert sum(r) == min(t, sum(c)) and all(0 <= a <= b for a, b in zip(r, c))
        if t < sum(c):
            assert all(abs(a - b * t / sum(c)) < 1 for a, b in zip(r, c))
    with pytest.raises(ValueError, match="non-negative"):
        proportional_counts([3, -1], 2)
    with pytest.raises(ValueError, match="total"):
        proportional_counts([3, 1], -2)


def test_fold_dead_zeroes_the_outgoing_weights_of_dead_units(data):
    from mobileprune.surgery.compact import dead_weights

    cfg = {**CFG, "layers": {"fc1": {"grouping": "linear_out", "lam": 60.0}}}
    cfg["schedule"] = {**CFG["schedule"], "rounds": 2, "fold_dead": True, "target_nonzero": 10 ** 9,
                       "final_project": True, "final_retrain_epochs": 1}
    torch.manual_seed(0)
    m = _net()
    with torch.no_grad():
        m.fc1.weight[:50] *= 0.01  # 50 weak hidden units: the row group lasso kills them
    res = proximal_prune(m, data, cfg, log=lambda s: None)
    dead_rows = (m.fc1.weight == 0).all(1)
    assert 0 < int(dead_rows.sum()) < 300
    assert torch.all(m.fc2.weight[:, dead_rows] == 0)
    assert any(h["after_prox"] > 0 for h in res.history if "after_prox" in h)
    x = data.dataset[0][0].unsqueeze(0)
    assert not any(bool(v.any()) for v in dead_weights(m, x).values())
    # the masks of the final retraining kept them zero
    assert torch.equal(res.masks["fc2.weight"], m.fc2.weight.detach() != 0)


def test_shift_augments_every_phase(data, monkeypatch):
    """schedule.shift reaches the proximal, retraining and final phases (one random_shift
    call per batch with that maximum)."""
    import mobileprune.pipeline.train as train

    calls = []
    real = train.random_shift

    def spy(x, max_shift, generator=None):
        calls.append(max_shift)
        return real(x, max_shift, generator)
    monkeypatch.setattr(train, "random_shift", spy)
    proximal_prune(_net(), data, _sched(rounds=1, shift=2, final_retrain_epochs=1),
                   log=lambda s: None)
    batches = len(data)
    assert calls == [2] * (3 * batches)  # 1 prox + 1 retrain + 1 final epoch


@pytest.mark.parametrize("stop_at", ["structure retrain 1/", "round 1/", "final retrain 1/"])
def test_runs_in_the_layout_before_the_runner_still_resume(data, tmp_path, stop_at):
    """A state as proximal_prune wrote it before the runner (rounds done, the caps'
    ``structure`` and the final retraining's ``final`` at the top level, the pruner's
    masks; rewritten here from an interrupted run) resumes to the uninterrupted result."""
    from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint
    from mobileprune.sparsity.proximal import ProximalPruner

    loader = DataLoader(data.dataset, batch_size=32)  # (no shuffling: that layout kept no RNG)
    cfg = _sched(rounds=2, max_units={"fc1": 60}, structure_epochs=2, final_retrain_epochs=2)

    def stop(line):
        if line.startswith(stop_at):
            raise KeyboardInterrupt
    ref = proximal_prune(_net(), loader, cfg, log=lambda s: None)
    with pytest.raises(KeyboardInterrupt):
        proximal_prune(_net(), loader, cfg, run_dir=tmp_path / "run", log=stop)
    st = load_checkpoint(tmp_path / "run" / "state.pt")
    extra, phases = st["extra"], st["extra"]["phases"]
    model = restore_model(st, _net())
    old = {**{k: extra[k] for k in ("input_digest", "data", "version", "fingerprint", "pruner", "history",
                                    "rounds_done", "accuracy_before", "compacted", "phase_seconds")},
           "structure": {**phases["structure"], "done": "structure" in extra["done"]},
           "final": phases["final retrain"] if "rounds" in extra["done"] else None}
    masks = ProximalPruner(model, {k: v for k, v in cfg.items() if k != "schedule"}).masks()
    save_checkpoint(tmp_path / "run" / "state.pt", model, kind="run-state", masks=masks,
                    config=st["config"], extra=old)
    logs = []
    res = proximal_prune(_net(), loader, cfg, run_dir=tmp_path / "run", log=logs.append)
    assert logs[0].startswith("resuming")
    for k, v in ref.model.state_dict().items():
        assert torch.equal(res.model.state_dict()[k], v), k
    assert [h["round"] for h in res.history] == [h["round"] for h in ref.history]


@pytest.mark.parametrize("bad, words", [
    *[({key: -1}, [f"schedule.{key}"]) for key in
      ("rounds", "prox_epochs", "retrain_epochs", "final_retrain_epochs", "shift", "structure_epochs",
       "final_shift", "target_nonzero")],
    ({"increase_every": 0}, ["schedule.increase_every"]), ({"regrow_every": 0}, ["schedule.regrow_every"]),
    *[({key: 0.0}, [f"schedule.{key}"]) for key in
      ("temperature", "lam_factor", "eta_factor", "prox_lr", "retrain_lr", "final_retrain_lr", "structure_lr")],
    ({"retrain_weight_decay": -1e-5}, ["schedule.retrain_weight_decay", ">= 0"]),
    ({"final_regrow": 1.5, "final_retrain_epochs": 1}, ["schedule.final_regrow", "[0, 1]"]),
    *[({key: 1}, [f"schedule.{key}", "true or false"]) for key in
      ("final_project", "fold_dead", "compact", "final_refill")],
    ({"mode": "sgd"}, ["schedule.mode", "palm, proximal"]),
    ({"prox_optimizer": "lbfgs"}, ["schedule.prox_optimizer", "adam"]),
    ({"max_units": {}}, ["schedule.max_units", "non-empty mapping"]),
    ({"max_inputs": {"fc1": 0}}, ["schedule.max_inputs['fc1']"]),
    ({"final_regrow": 0.1}, ["final_regrow needs schedule.final_retrain_epochs"]),
    ({"final_refill": True, "final_retrain_epochs": 1}, ["final_refill needs schedule.target_nonzero"]),
    ({"structure_epochs": 1}, ["structure_epochs needs schedule.max_units"]),
    ({"final_val_fraction": 1.0, "final_retrain_epochs": 1}, ["final_val_fraction", "(0, 1)"]),
    *[({key: None}, [f"schedule.{key}"]) for key in  # None is "not set" for optional keys only
      ("rounds", "prox_epochs", "retrain_epochs", "increase_every", "regrow_every",
       "final_retrain_epochs", "shift", "structure_epochs", "temperature", "lam_factor",
       "eta_factor", "prox_lr", "retrain_lr", "retrain_weight_decay", "project_margin",
       "final_regrow")],
])
def test_every_schedule_key_is_checked_with_its_name(bad, words):
    """Each key of ProxSchedule is refused in one line naming it (the value checks are one
    table, the keys that need another key one list: pipeline.proximal_run)."""
    from mobileprune.pipeline.proximal_run import ProxSchedule

    with pytest.raises(ConfigError) as info:
        ProxSchedule(**bad)
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    ProxSchedule()  # the defaults are valid
