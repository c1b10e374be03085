"""The one masked-retraining loop (pipeline/retrain.py, issue 20 item 1): pruned weights
stay exactly 0.0 after every optimizer step in both pipelines (checked from the weights
themselves, not through MaskEnforcer), an interrupted retraining resumes after the saved
epoch, and the run report records the wall time of every phase."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import mobileprune.pipeline.retrain as retrain
from conftest import tiny_images
from mobileprune.checkpoint import load_checkpoint
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import admm_prune, proximal_prune
from mobileprune.pipeline.retrain import masked_retrain

ADMM = {"default": 0.9, "admm": {"epochs": 1, "rho": 1e-2}, "retrain": {"epochs": 3}}
PROX = {"method": "l0_group_lasso", "lam": 20.0, "eta": 1e-3,
        "schedule": {"rounds": 2, "prox_epochs": 1, "retrain_epochs": 1, "final_retrain_epochs": 3}}
REAL_TRAIN_EPOCH = retrain.train_epoch
RETRAIN_PHASE = {"admm": "stage1 retrain", "prox": "final retrain"}  # what the resume test cuts


class Interrupt(Exception):
    pass


def _loader():
    return tiny_images(32, n=128)  # 4 batches an epoch


def _net() -> LeNet300100:
    torch.manual_seed(0)
    return LeNet300100()


def _prune(kind: str, model: nn.Module, run_dir=None):
    torch.manual_seed(0)
    if kind == "admm":
        return admm_prune(model, _loader(), ADMM, run_dir=run_dir, log=lambda s: None)
    return proximal_prune(model, _loader(), copy.deepcopy(PROX), run_dir=run_dir, log=lambda s: None)


class ZeroWatch:
    """Wraps the shared loop's ``train_epoch``. When a retraining starts (its first epoch
    or, resumed, a new ``desc`` containing "retrain"), the weights that are exactly 0.0 are its pruned set; after every
    optimizer step of its epochs the zeros at those positions are counted again. The
    masks are read from the weights, independently of MaskEnforcer."""

    def __init__(self, monkeypatch, stop_at: str | None = None) -> None:
        self.real, self.stop_at = REAL_TRAIN_EPOCH, stop_at
        self.descs: list[str] = []
        self.pruned: dict[str, torch.Tensor] = {}
        self.steps, self.phase, self.starts = 0, None, []
        monkeypatch.setattr(retrain, "train_epoch", self)

    def __call__(self, model, loader, opt, **kw):
        desc = kw["desc"]
        self.descs.append(desc)
        if desc == self.stop_at:
            raise Interrupt(desc)
        if "retrain" not in desc:
            return self.real(model, loader, opt, **kw)
        weights = {n: p for n, p in model.named_parameters() if p.dim() > 1}
        phase, epoch = desc.rsplit(" ", 1)
        if phase != self.phase or epoch.startswith("1/"):
            self.phase = phase
            self.starts.append(desc)
            self.pruned = {n: (w.detach() == 0) for n, w in weights.items()}
            assert sum(int(m.sum()) for m in self.pruned.values()) > 0, f"{desc}: nothing pruned"

        def check(*_):
            for n, w in weights.items():
                zeros = int((w.detach()[self.pruned[n]] == 0).sum())
                assert zeros == int(self.pruned[n].sum()), f"{desc}: {n} regrew a pruned weight"
            self.steps += 1
        handle = opt.register_step_post_hook(check)  # after MaskEnforcer's (registered first)
        try:
            return self.real(model, loader, opt, **kw)
        finally:
            handle.remove()


@pytest.mark.parametrize("kind", ["admm", "prox"])
def test_pruned_weights_stay_zero_through_the_shared_loop(kind, monkeypatch):
    watch = ZeroWatch(monkeypatch)
    res = _prune(kind, _net())
    expected = {"admm": ["stage1 retrain 1/3"],  # the pipeline numbers its one-at-a-time rounds
                "prox": ["round 1 retrain 1/1", "round 2 retrain 1/1", "final retrain 1/3"]}[kind]
    assert watch.starts == expected
    assert watch.steps == 4 * sum("retrain" in d for d in watch.descs)  # 4 batches an epoch
    for n, m in res.masks.items():  # the pipeline's masks: pruned where the last retraining was
        assert int((~m.bool() & ~watch.pruned[n]).sum()) == 0
        w = dict(res.model.named_parameters())[n].detach()
        assert int((w[~m.bool()] == 0).sum()) == int((~m.bool()).sum())


@pytest.mark.parametrize("kind", ["admm", "prox"])
def test_interrupted_retraining_resumes_after_the_saved_epoch(kind, tmp_path, monkeypatch):
    phase = RETRAIN_PHASE[kind]
    watch = ZeroWatch(monkeypatch, stop_at=f"{phase} 2/3")
    with pytest.raises(Interrupt):
        _prune(kind, _net(), tmp_path / "run")
    pruned = watch.pruned
    extra = load_checkpoint(tmp_path / "run" / "state.pt")["extra"]
    assert extra["phases"][phase]["epochs"] == 1  # the runner's state of the interrupted phase
    assert extra["phase_seconds"][phase] > 0  # the interrupted phase's time so far is kept

    again = ZeroWatch(monkeypatch)
    res = _prune(kind, _net(), tmp_path / "run")
    assert again.descs == [f"{phase} 2/3", f"{phase} 3/3"]  # nothing before it is redone
    for n, m in pruned.items():  # the same pruned set, still exactly zero
        assert torch.equal(again.pruned[n], m)
        w = dict(res.model.named_parameters())[n].detach()
        assert int((w[m] == 0).sum()) == int(m.sum())
    seconds = res.report["seconds"]
    assert seconds[phase] > extra["phase_seconds"][phase]
    assert seconds["total"] == pytest.approx(sum(v for k, v in seconds.items() if k != "total"), abs=0.01)
    if kind == "admm":  # RNG and loader state are restored: the uninterrupted run, exactly
        monkeypatch.setattr(retrain, "train_epoch", REAL_TRAIN_EPOCH)
        ref = _prune(kind, _net(), tmp_path / "ref")
        for k, v in ref.model.state_dict().items():
            assert torch.equal(res.model.state_dict()[k], v), k
        assert [h["epoch"] for h in res.history if h.get("phase") == "retrain"] == [1, 2, 3]


def test_report_records_wall_time_per_phase():
    res = _prune("prox", _net())
    assert set(res.report["seconds"]) == {"rounds", "final retrain", "total"}
    res = _prune("admm", _net())
    assert set(res.report["seconds"]) == {"stage1 admm", "stage1 retrain", "total"}
    assert all(v >= 0 for v in res.report["seconds"].values())


def test_masked_retrain_resume_hook_continues_exactly():
    """The loop on its own: stopping after epoch 1 and resuming from the state given to
    ``checkpoint`` gives the weights of the uninterrupted run; the records say the epochs."""
    x, y = torch.randn(64, 8, generator=torch.Generator().manual_seed(0)), torch.arange(64) % 3
    loader = DataLoader(TensorDataset(x, y), batch_size=16)

    def setup():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
        masks = {"0.weight": torch.rand(16, 8) > 0.7}
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        return model, masks, opt, torch.optim.lr_scheduler.StepLR(opt, 3, 0.5)

    model, masks, opt, sched = setup()
    full = masked_retrain(model, loader, opt, 3, masks=masks, scheduler=sched)
    assert [r["epoch"] for r in full] == [1, 2, 3]

    states = []

    def stop_after_one(state, rec):
        states.append(copy.deepcopy(state))
        raise Interrupt

    m2, masks2, opt2, sched2 = setup()
    with pytest.raises(Interrupt):
        masked_retrain(m2, loader, opt2, 3, masks=masks2, scheduler=sched2, checkpoint=stop_after_one)
    kept = copy.deepcopy(m2.state_dict())
    m3, masks3, opt3, sched3 = setup()
    m3.load_state_dict(kept)
    rest = masked_retrain(m3, loader, opt3, 3, masks=masks3, scheduler=sched3, resume=states[0])
    assert [r["epoch"] for r in rest] == [2, 3]
    for k, v in model.state_dict().items():
        assert torch.equal(m3.state_dict()[k], v), k
    w = m3[0].weight.detach()
    assert int((w[~masks3["0.weight"]] == 0).sum()) == int((~masks3["0.weight"]).sum())
