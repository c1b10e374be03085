"""pipeline.fit: dense training, resumable after every epoch."""

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.errors import CheckpointError, ConfigError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import fit


def _loader(seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, 28, 28, generator=g)
    y = (x[:, 0, :14].mean((1, 2)) > 0).long()
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def test_fit_resumes_after_interruption(tmp_path):
    path = tmp_path / "s.pt"
    torch.manual_seed(0)
    a = LeNet300100()
    init = {k: v.clone() for k, v in a.state_dict().items()}
    torch.manual_seed(5)
    res_a = fit(a, _loader(), epochs=3, optimizer="adam", lr=1e-3, eval_loader=_loader(),
                log=lambda s: None)

    b = LeNet300100()
    b.load_state_dict(init)
    torch.manual_seed(5)
    loader = _loader()
    # "interrupted" after 2 epochs: a run asking for 3 epochs, stopped by raising in log
    seen = []

    def stop_after_two(msg):
        seen.append(msg)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(b, loader, epochs=3, optimizer="adam", lr=1e-3, eval_loader=_loader(),
            state_path=path, log=stop_after_two)
    c = LeNet300100()  # fresh process: new model object, state from the file
    torch.manual_seed(123)  # RNG restored from the state file
    res_c = fit(c, loader, epochs=3, optimizer="adam", lr=1e-3, eval_loader=_loader(),
                state_path=path, log=lambda s: None)
    assert len(res_c["history"]) == 3
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
    assert res_c["test_accuracy"] == res_a["test_accuracy"]


def test_fit_rejects_other_settings_and_bad_values(tmp_path):
    path = tmp_path / "s.pt"
    m = LeNet300100()
    fit(m, _loader(), epochs=1, lr=1e-3, state_path=path, log=lambda s: None)
    with pytest.raises(CheckpointError, match="other settings"):
        fit(m, _loader(), epochs=2, lr=1e-3, state_path=path, log=lambda s: None)
    with pytest.raises(ConfigError, match="fit.lr"):
        fit(m, _loader(), epochs=1, lr=-1.0, log=lambda s: None)


def test_fit_shift_augments_and_is_part_of_the_settings(tmp_path):
    init = LeNet300100().state_dict()
    runs = {}
    for shift in (0, 2):
        m = LeNet300100()
        m.load_state_dict(init)
        torch.manual_seed(1)
        fit(m, _loader(), epochs=1, lr=1e-3, shift=shift, state_path=tmp_path / f"{shift}.pt",
            log=lambda s: None)
        runs[shift] = m.fc1.weight.detach().clone()
    assert not torch.equal(runs[0], runs[2])  # shifted inputs: other gradients
    with pytest.raises(CheckpointError, match="other settings"):  # not resumed as shift 0
        fit(LeNet300100(), _loader(), epochs=1, lr=1e-3, shift=0, state_path=tmp_path / "2.pt",
            log=lambda s: None)
    with pytest.raises(ConfigError, match="shift"):
        fit(LeNet300100(), _loader(), epochs=1, shift=-1, log=lambda s: None)


def test_fit_resumes_a_state_written_before_the_runner(tmp_path):
    """A state in fit's layout before the runner (epochs done as its history, optimizer
    and scheduler at the top level; rewritten here from an interrupted run) resumes to
    the weights of the uninterrupted run."""
    from mobileprune.checkpoint import load_checkpoint, restore_model, save_checkpoint

    torch.manual_seed(0)
    init = LeNet300100().state_dict()
    a = LeNet300100()
    a.load_state_dict(init)
    torch.manual_seed(5)
    fit(a, _loader(), epochs=3, lr=1e-3, log=lambda s: None)

    def stop(line):
        raise KeyboardInterrupt
    b = LeNet300100()
    b.load_state_dict(init)
    torch.manual_seed(5)
    path = tmp_path / "s.pt"
    with pytest.raises(KeyboardInterrupt):  # after epoch 1 (its line is logged once it is saved)
        fit(b, _loader(), epochs=3, lr=1e-3, state_path=path, log=stop)
    st = load_checkpoint(path)
    extra, phase = st["extra"], st["extra"]["phases"]["train"]
    old = {"fingerprint": extra["fingerprint"], "optimizer": phase["optimizer"],
           "scheduler": phase["scheduler"], "history": extra["history"],
           "seconds": sum(h["seconds"] for h in extra["history"]), "rng": extra["rng"],
           "loader_rng": extra["loader_rng"]}
    save_checkpoint(path, restore_model(st, LeNet300100()), kind="run-state", extra=old)
    c = LeNet300100()
    torch.manual_seed(123)
    res = fit(c, _loader(), epochs=3, lr=1e-3, state_path=path, log=lambda s: None)
    assert [h["epoch"] for h in res["history"]] == [1, 2, 3]
    for k, v in a.state_dict().items():
        assert torch.equal(v, c.state_dict()[k]), k
