"""Per-stage overrides of the ADMM / retraining settings in a progressive schedule."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import PipelineConfig, admm_prune


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


def test_yaml_exponent_floats_are_numbers(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("admm: {lr: 1e-3, rho: 5E-4}\nretrain: {lr: 3e-4}\ndefault: 0.5\n")
    cfg = PipelineConfig.from_yaml(p)
    assert cfg.admm.lr == 1e-3 and cfg.admm.rho == 5e-4 and cfg.retrain.lr == 3e-4


@pytest.mark.parametrize("bad, match", [
    ({"admm": {"lr": "fast"}}, "admm.lr' must be a number"),
    ({"admm": {"rho": -1.0}}, "admm.rho' must be > 0"),
    ({"retrain": {"weight_decay": -0.1}}, "retrain.weight_decay' must be >= 0"),
    ({"retrain": {"distill": 1.5}}, r"retrain.distill' is a weight in \[0, 1\]"),
    ({"admm": {"update_every": 0}}, "admm.update_every' must be > 0"),
    ({"admm": {"epochs": True}}, "admm.epochs' must be a non-negative integer"),
])
def test_bad_settings_named_at_load(bad, match):
    with pytest.raises(ConfigError, match=match):
        PipelineConfig.from_dict({"default": 0.5, **bad})


def _loader():
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=32)


def test_non_nested_stage_may_choose_weights_the_previous_stage_pruned():
    cfg = {"admm": {"epochs": 1, "rho": 1e-3}, "retrain": {"epochs": 0},
           "stages": [{"default": 0.5}, {"default": 0.6, "admm": {"nested": False, "lr": 0.05}}]}
    torch.manual_seed(0)
    res = admm_prune(LeNet300100(), _loader(), cfg, log=lambda s: None)
    nested = {**cfg, "stages": [cfg["stages"][0], {"default": 0.6, "admm": {"lr": 0.05}}]}
    torch.manual_seed(0)
    res_n = admm_prune(LeNet300100(), _loader(), nested, log=lambda s: None)
    w_free = res.model.fc1.weight != 0
    w_nest = res_n.model.fc1.weight != 0
    # stage 1 is identical in both runs; nested keeps a subset of its support
    assert int(w_free.sum()) == int(w_nest.sum())
    assert bool((w_free & ~w_nest).any())  # the free stage picked some other weights


def test_runs_saved_by_an_older_version_still_resume(tmp_path):
    from mobileprune.checkpoint import load_checkpoint, save_checkpoint

    cfg = {"default": 0.5, "admm": {"epochs": 1}, "retrain": {"epochs": 2}}
    run = tmp_path / "run"
    torch.manual_seed(0)
    admm_prune(LeNet300100(), _loader(), cfg, run_dir=run, log=lambda s: None)
    st = load_checkpoint(run / "state.pt")
    # rewrite it as an older version did: full-settings fingerprint, no newer keys
    old_cfg = st["config"]
    for section in ("admm", "retrain"):
        old_cfg[section].pop("shift"), old_cfg[section].pop("nested", None)
    from mobileprune.models import LeNet300100 as L
    m = L()
    m.load_state_dict(st["state_dict"])
    save_checkpoint(run / "state.pt", m, kind="run-state", masks=st["masks"], config=old_cfg,
                    extra={**{k: v for k, v in st["extra"].items()
                              if k not in ("input_digest", "data", "version")},
                           "fingerprint": "0123456789abcdef"})
    logs = []
    admm_prune(LeNet300100(), _loader(), cfg, run_dir=run, log=logs.append)
    assert any("resuming" in s for s in logs)
    with pytest.raises(Exception, match="different config"):
        admm_prune(LeNet300100(), _loader(), {**cfg, "retrain": {"epochs": 3}}, run_dir=run,
                   log=lambda s: None)


@pytest.mark.parametrize("stop_at", ["stage1 admm 1/", "stage1 retrain 1/"])
def test_runs_in_the_layout_before_the_runner_still_resume(tmp_path, stop_at):
    """A state as admm_prune wrote it before the runner (a position: stage, phase, epoch;
    ADMM, optimizer and scheduler states at the top level; rewritten here from an
    interrupted run) resumes to the weights of the uninterrupted run."""
    from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint

    cfg = {"default": 0.5, "admm": {"epochs": 2}, "retrain": {"epochs": 2}}

    def go(run_dir, log=lambda s: None):
        torch.manual_seed(0)
        loader = DataLoader(_loader().dataset, batch_size=16, shuffle=True,
                            generator=torch.Generator().manual_seed(1))
        return admm_prune(LeNet300100(), loader, cfg, run_dir=run_dir, log=log)

    def stop(line):
        if line.startswith(stop_at):
            raise KeyboardInterrupt
    ref = go(None)
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "run", log=stop)
    st = load_checkpoint(tmp_path / "run" / "state.pt")
    extra = st["extra"]
    name = next(p for p in extra["phases"] if p not in extra["done"])
    phase = extra["phases"][name]
    old = {**{k: extra[k] for k in ("input_digest", "data", "version", "fingerprint", "history",
                                    "accuracy_before", "rng", "loader_rng", "phase_seconds")},
           "position": {"stage": 0, "phase": name.split()[1], "epoch": phase["epochs"]},
           "admm": phase.get("admm"), "optimizer": phase["optimizer"],
           "scheduler": phase["scheduler"], "allowed": None}
    save_checkpoint(tmp_path / "run" / "state.pt", restore_model(st, LeNet300100()), kind="run-state",
                    masks=st["masks"], config=st["config"], extra=old)
    logs = []
    res = go(tmp_path / "run", log=logs.append)
    assert logs[0].startswith("resuming") and f"{name} after epoch 1" in logs[0]
    for k, v in ref.model.state_dict().items():
        assert torch.equal(res.model.state_dict()[k], v), k
