"""schedule.final_val_fraction: the final retraining keeps its epoch of best validation
accuracy (early stopping by validation, Prechelt 1998), on a held-out part of the
training data; the test data never choose."""

import subprocess
import sys

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.data.registry import holdout_split
from mobileprune.errors import ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import admm_prune, proximal_prune
from mobileprune.pipeline.train import evaluate

N = 200
CFG = {"method": "l0_group_lasso", "lam": 20.0, "eta": 1e-3,
       "schedule": {"rounds": 1, "prox_epochs": 1, "retrain_epochs": 1, "final_retrain_epochs": 6,
                    "final_retrain_lr": 3e-3, "final_val_fraction": 0.25}}


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) + 0.3 * torch.randn(N, generator=g) > 0).long()  # noisy labels
    return TensorDataset(x, y)


def _loader(data: TensorDataset) -> DataLoader:
    return DataLoader(data, batch_size=32, shuffle=True, generator=torch.Generator().manual_seed(1))


def _net() -> LeNet300100:
    torch.manual_seed(0)
    return LeNet300100()


def _run(tmp_path, log=lambda s: None, cfg=CFG, model=None):
    model = model if model is not None else _net()
    res = proximal_prune(model, _loader(_data()), cfg, eval_loader=DataLoader(_data(), batch_size=100),
                         run_dir=tmp_path, log=log)
    return model, res


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_holdout_split_is_fixed_disjoint_and_leaves_global_rng_alone():
    data = _data()
    loader = _loader(data)
    before = torch.get_rng_state()
    train, val = holdout_split(loader, 0.25)
    assert torch.equal(torch.get_rng_state(), before)
    t_idx, v_idx = train.dataset.indices, val.dataset.indices
    assert len(v_idx) == 50 and len(t_idx) == 150 and sorted(t_idx + v_idx) == list(range(N))
    assert holdout_split(loader, 0.25)[1].dataset.indices == v_idx  # the same split every time
    assert train.batch_size == 32 and train.generator is loader.generator
    seen = torch.cat([y for _, y in train])  # every training sample once per epoch
    assert len(seen) == 150 and torch.equal(seen.sort().values, data.tensors[1][t_idx].sort().values)


def test_the_best_validation_epoch_is_returned_with_its_masks(tmp_path):
    model, snaps = _net(), []

    def log(s):  # the weights after every final-retraining epoch, as its log line comes
        if s.startswith("final retrain ") and "/6:" in s:
            snaps.append(_weights(model))
    _, res = _run(tmp_path, log, model=model)
    rec = res.history[-1]
    history = rec["val_history"]
    assert rec["validation"] == "final retrain" and len(history) == len(snaps) == 6
    # the recorded history is the accuracy of each epoch's weights on the held-out samples
    _, val = holdout_split(_loader(_data()), 0.25)
    probe = _net()
    for acc, w in zip(history, snaps):
        probe.load_state_dict(w)
        assert evaluate(probe, val) == pytest.approx(acc)
    best = max(range(6), key=lambda i: (history[i], -i))  # the first epoch with the highest
    assert best < 5 and history[best] > history[-1]  # (these data: the last epoch is not the best)
    assert rec["best_epoch"] == best + 1 and rec["val_accuracy"] == max(history)
    for k, v in _weights(model).items():
        assert torch.equal(v, snaps[best][k]), k
    # the masks hold exactly: every pruned weight is 0.0 and the masks are the support
    for name, mask in res.masks.items():
        w = dict(model.named_parameters())[name].detach()
        assert torch.equal(mask, w != 0)
        assert torch.equal(mask, snaps[-1][name] != 0)  # the same masks as the last epoch
    assert res.masks["fc1.weight"].sum() < res.masks["fc1.weight"].numel()
    # the report's accuracy is the kept model's
    assert res.report["metrics"]["accuracy_after"] == evaluate(model, DataLoader(_data(), batch_size=100))


def test_resume_in_the_final_retraining_gives_the_same_result(tmp_path):
    whole, res = _run(tmp_path / "a")

    class Stop(Exception):
        pass

    def interrupt(s):
        if s.startswith("final retrain 4/6"):
            raise Stop
    with pytest.raises(Stop):
        _run(tmp_path / "b", interrupt)
    logs = []
    again, res2 = _run(tmp_path / "b", logs.append)
    assert any(s.startswith("resuming") and "after epoch 4" in s for s in logs)
    assert [s.split(":")[0] for s in logs if s.startswith("final retrain ")][:2] == \
        ["final retrain 5/6", "final retrain 6/6"]
    assert res2.history[-1] == res.history[-1]
    for k, v in _weights(whole).items():
        assert torch.equal(v, _weights(again)[k]), k
    # a finished run resumes to the kept model, not the last epoch's
    _, res3 = _run(tmp_path / "b")
    assert res3.history[-1] == res.history[-1]


@pytest.mark.parametrize("bad, match", [
    (0, "final_val_fraction must be > 0"), (-0.1, "final_val_fraction must be > 0"),
    (1, r"fraction in \(0, 1\)"), (1.5, r"fraction in \(0, 1\)"), ("x", "finite number")])
def test_bad_fractions_are_refused(bad, match):
    cfg = {**CFG, "schedule": {**CFG["schedule"], "final_val_fraction": bad}}
    with pytest.raises(ConfigError, match=match):
        proximal_prune(_net(), _loader(_data()), cfg, log=lambda s: None)


def test_needs_fixed_masks_and_final_epochs():
    for extra in ({"final_retrain_epochs": 0}, {"final_regrow": 0.3}):
        cfg = {**CFG, "schedule": {**CFG["schedule"], **extra}}
        with pytest.raises(ConfigError, match="final_val_fraction needs"):
            proximal_prune(_net(), _loader(_data()), cfg, log=lambda s: None)
    with pytest.raises(ConfigError, match="leaves no validation sample"):
        holdout_split(_loader(_data()), 0.001)


def test_cli_refuses_a_bad_fraction_in_one_line(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("method: l0_group_lasso\nlam: 1.0\nschedule: {final_retrain_epochs: 2, "
                   "final_val_fraction: 1.0}\n")
    out = subprocess.run([sys.executable, "-m", "mobileprune", "config", "check", str(cfg)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "final_val_fraction" in out.stderr


def test_admm_stage_retraining_keeps_its_best_validation_epoch(tmp_path):
    """The same choice in seed 003's masked retraining (``retrain.val_fraction``)."""
    cfg = {"default": 0.9, "admm": {"epochs": 1, "rho": 1e-2},
           "retrain": {"epochs": 4, "lr": 3e-3, "val_fraction": 0.25}}
    model, snaps = _net(), []

    def log(s):
        if s.startswith("stage1 retrain ") and "/4:" in s:
            snaps.append(_weights(model))
    res = admm_prune(model, _loader(_data()), cfg, run_dir=tmp_path, progress=False, log=log)
    rec = next(h for h in res.history if h.get("validation") == "stage1 retrain")
    history = rec["val_history"]
    best = max(range(4), key=lambda i: (history[i], -i))
    assert len(history) == len(snaps) == 4 and rec["best_epoch"] == best + 1
    for k, v in _weights(model).items():
        assert torch.equal(v, snaps[best][k]), k
    for name, mask in res.masks.items():
        assert torch.equal(mask, dict(model.named_parameters())[name].detach() != 0)
    for bad in ({"val_fraction": 1.0}, {"val_fraction": 0.1, "regrow": 0.3}):
        with pytest.raises(ConfigError, match="val_fraction"):
            admm_prune(_net(), _loader(_data()), {**cfg, "retrain": {"epochs": 2, **bad}},
                       log=lambda s: None)
