"""pipeline.runner: one resumable loop around a list of phases (issue 20).

A toy pipeline (a noise phase that draws from the global RNG, a training phase with
dropout on shuffled data, another noise phase) is interrupted in the middle of phase 2,
epoch 2, and resumed in a fresh model with another global seed: the weights and the
history equal those of an uninterrupted run bit for bit, the finished phase is not run
again, and the interrupted epoch is redone from the state saved after epoch 1.
"""

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.checkpoint import load_checkpoint
from mobileprune.errors import CheckpointError
from mobileprune.pipeline.runner import Context, Runner, StateDict
from mobileprune.pipeline.runstate import run_inputs
from mobileprune.pipeline.train import cosine_lr

BATCHES = 4  # per epoch


class Stop(Exception):
    pass


@dataclass
class Noise(StateDict):
    """One unit: perturb every weight with the global RNG (a resumed run that redid it,
    or that did not restore the RNG, would end elsewhere)."""

    name: str
    calls: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    clock = property(lambda self: self.name)

    def run(self, ctx):
        self.calls += 1
        with torch.no_grad():
            for p in ctx.model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        ctx.values["noise"] += 1


@dataclass
class Train(StateDict):
    """``epochs`` epochs of SGD with momentum and cosine decay (optimizer and scheduler
    state to restore); ``stop_at``: raise at that optimizer step of this call."""

    name: str
    epochs: int
    stop_at: int | None = None
    calls: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    clock = property(lambda self: self.name)

    def run(self, ctx):
        self.calls += 1
        opt = torch.optim.SGD(ctx.model.parameters(), lr=0.05, momentum=0.9)
        steps = itertools.count(1)

        def after_step():
            if next(steps) == self.stop_at:
                raise Stop

        ctx.epochs(self, self.epochs, opt, scheduler=cosine_lr(opt, self.epochs * len(ctx.loader)),
                   train={"after_step": after_step})


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))


def _loader():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16 * BATCHES, 8, generator=g)
    y = torch.randint(0, 3, (16 * BATCHES,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True,
                      generator=torch.Generator().manual_seed(2))


def _run(run_dir: Path | None, *, stop_at=None, model=None, seed=0, fingerprint="toy", resume=True,
         log=None):
    """Run the toy phases; returns (model, context, phases)."""
    model = model if model is not None else _model()
    loader = _loader()
    phases = [Noise("a"), Train("b", epochs=3, stop_at=stop_at), Noise("c")]
    ctx = Context(model, loader, log=log if log is not None else (lambda s: None), progress=False,
                  values={"noise": 0})
    torch.manual_seed(seed)
    runner = Runner(phases, ctx, state_path=run_dir / "state.pt" if run_dir else None,
                    fingerprint=fingerprint, inputs=run_inputs(model, loader), resume=resume)
    runner.run()
    return model, ctx, phases


def _without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


@pytest.fixture(scope="module")
def reference():
    model, ctx, phases = _run(None)
    return model.state_dict(), ctx


def test_uninterrupted_run_records_every_phase(reference):
    _, ctx = reference
    assert [h["epoch"] for h in ctx.history] == [1, 2, 3]
    assert ctx.values["noise"] == 2
    assert set(ctx.seconds) == {"a", "b", "c", "total"}
    assert ctx.seconds["total"] == pytest.approx(sum(v for k, v in ctx.seconds.items() if k != "total"),
                                                 abs=0.01)


def test_interrupted_in_phase_2_epoch_2_resumes_bit_identical(reference, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Stop):  # in the middle of epoch 2 of phase "b"
        _run(run_dir, stop_at=BATCHES + 2)
    saved = load_checkpoint(run_dir / "state.pt")["extra"]
    assert saved["done"] == ["a"] and saved["phases"]["b"]["epochs"] == 1
    assert saved["phases"]["b"]["optimizer"] is not None  # the SGD momentum, for the resume

    lines = []
    model, ctx, phases = _run(run_dir, model=_model(), seed=123, log=lines.append)  # a new model object
    assert lines[0].startswith("resuming from") and "b after epoch 1" in lines[0]
    a, b, c = phases
    assert (a.calls, b.calls, c.calls) == (0, 1, 1)  # the finished phase is not run again
    assert [line.split(":")[0] for line in lines[1:]] == ["b 2/3", "b 3/3"]  # epoch 2 redone
    ref_state, ref_ctx = reference
    for k, v in ref_state.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert _without_seconds(ctx.history) == _without_seconds(ref_ctx.history)
    assert ctx.values == ref_ctx.values
    assert set(ctx.seconds) == set(ref_ctx.seconds)
    assert ctx.seconds["b"] >= saved["phase_seconds"]["b"]  # summed over both runs


def test_finished_run_runs_and_writes_nothing(tmp_path):
    run_dir = tmp_path / "run"
    first, _, _ = _run(run_dir)
    before = (run_dir / "state.pt").read_bytes()
    model, ctx, phases = _run(run_dir, model=_model())
    assert [p.calls for p in phases] == [0, 0, 0]
    assert (run_dir / "state.pt").read_bytes() == before
    for k, v in first.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert [h["epoch"] for h in ctx.history] == [1, 2, 3]


def test_other_settings_or_inputs_are_refused_and_nothing_written(tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Stop):
        _run(run_dir, stop_at=2)
    before = (run_dir / "state.pt").read_bytes()
    with pytest.raises(CheckpointError, match="different config.*--fresh"):
        _run(run_dir, fingerprint="other")
    other = _model()
    with torch.no_grad():
        other[0].weight[0, 0] += 1e-3
    with pytest.raises(CheckpointError, match="other model weights.*--fresh"):
        _run(run_dir, model=other)
    assert (run_dir / "state.pt").read_bytes() == before
    _, ctx, phases = _run(run_dir, fingerprint="other", resume=False)  # starting over is explicit
    assert [p.calls for p in phases] == [1, 1, 1]
    assert load_checkpoint(run_dir / "state.pt")["extra"]["fingerprint"] == "other"


def test_state_of_an_older_layout_is_refused(tmp_path):
    from mobileprune.checkpoint import save_checkpoint

    run_dir = tmp_path / "run"
    model = _model()
    save_checkpoint(run_dir / "state.pt", model, kind="run-state",
                    extra={"fingerprint": "toy", "position": {"stage": 0}})
    with pytest.raises(CheckpointError, match="older mobileprune.*--fresh"):
        _run(run_dir)


def test_state_file_is_never_half_written(reference, tmp_path, monkeypatch):
    """A save interrupted while writing (here: half the bytes, then Ctrl-C) leaves the
    previous state whole; resuming from it ends as the uninterrupted run."""
    real_save = torch.save
    calls, last = itertools.count(1), {}

    def torn_save(obj, f, *a, **kw):
        real_save(obj, f, *a, **kw)
        data = Path(f).read_bytes()
        if next(calls) == 3:  # the save after epoch 2 of "b"
            Path(f).write_bytes(data[: len(data) // 2])
            raise KeyboardInterrupt
        last["bytes"] = data

    run_dir = tmp_path / "run"
    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir)
    monkeypatch.setattr(torch, "save", real_save)
    assert sorted(p.name for p in run_dir.iterdir()) == ["state.pt"]  # no temporary file left
    assert (run_dir / "state.pt").read_bytes() == last["bytes"]
    extra = load_checkpoint(run_dir / "state.pt")["extra"]
    assert extra["done"] == ["a"] and extra["phases"]["b"]["epochs"] == 1
    model, ctx, _ = _run(run_dir, model=_model(), seed=7)
    ref_state, ref_ctx = reference
    for k, v in ref_state.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert _without_seconds(ctx.history) == _without_seconds(ref_ctx.history)


def test_phase_names_must_be_unique():
    with pytest.raises(ValueError, match="unique"):
        Runner([Noise("a"), Noise("a")], Context(_model(), _loader()))
