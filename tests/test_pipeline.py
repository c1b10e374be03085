"""End-to-end tests of mobileprune.pipeline.prune.admm_prune on tiny generated data."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.checkpoint import load_checkpoint
from mobileprune.errors import CheckpointError
from mobileprune.models import LeNet300100
from mobileprune.pipeline.prune import PipelineConfig, admm_prune
from mobileprune.sparsity.report import to_json, to_markdown

LAYERS = {"fc1": 300 * 784, "fc2": 100 * 300, "fc3": 10 * 100}
CONFIG = {
    "stages": [{"default": 0.9}, {"default": 0.97}],
    "admm": {"epochs": 2, "lr": 1e-3, "rho": 1e-2, "rho_multiplier": 1.5},
    "retrain": {"epochs": 2, "lr": 1e-3},
}
BATCHES_PER_EPOCH = 4
EPOCH_RECORDS = 2 * (2 + 2)  # stages x (admm + retrain epochs)


def make_data(n, seed):
    """4 classes: the class says which image quadrant holds a bright square."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 4, (n,), generator=g)
    x = 0.3 * torch.randn(n, 1, 28, 28, generator=g)
    for i in range(n):
        r, c = divmod(int(y[i]), 2)
        x[i, 0, 14 * r + 3: 14 * r + 11, 14 * c + 3: 14 * c + 11] += 1.0
    return TensorDataset(x, y)


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """One intra-op thread: faster and steadier on a shared 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def data():
    train = make_data(64 * BATCHES_PER_EPOCH, seed=0)
    test = make_data(128, seed=1)
    return train, test


def loaders(data):
    train, test = data
    # shuffled with the global RNG (no generator): the pipeline saves/restores it
    return DataLoader(train, batch_size=64, shuffle=True), DataLoader(test, batch_size=128)


def initial_model():
    torch.manual_seed(123)
    return LeNet300100()


class Interrupt(Exception):
    pass


class FailAfter:
    """Wraps a loader and raises after ``n`` batches in total (a simulated crash)."""

    def __init__(self, loader, n):
        self.loader, self.n, self.seen = loader, n, 0

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.seen == self.n:
                raise Interrupt(f"simulated crash after {self.n} batches")
            self.seen += 1
            yield batch


def run(data, run_dir=None, model=None, config=CONFIG, train_wrap=None, seed=0, resume=True):
    train_loader, test_loader = loaders(data)
    if train_wrap is not None:
        train_loader = train_wrap(train_loader)
    logs: list[str] = []
    torch.manual_seed(seed)
    result = admm_prune(model if model is not None else initial_model(), train_loader, config,
                        eval_loader=test_loader, run_dir=run_dir, resume=resume, progress=False,
                        model_name="lenet300100", log=logs.append)
    return result, logs


def epoch_records(history):
    return [h for h in history if h.get("phase") in ("admm", "retrain")]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """One uninterrupted run with a run directory."""
    run_dir = tmp_path_factory.mktemp("reference")
    result, logs = run(data, run_dir)
    return result, logs, run_dir


def test_final_targets_met(reference):
    result, logs, _ = reference
    params = dict(result.model.named_parameters())
    for name, n in LAYERS.items():
        keep = n * 3 // 100  # floor(n * (1 - 0.97)) in exact integer arithmetic
        nnz = int(torch.count_nonzero(params[f"{name}.weight"]))
        assert nnz <= keep, f"{name}: {nnz} nonzero > {keep}"
        row = next(r for r in result.report["layers"] if r["layer"] == name)
        assert row["target_keep"] == keep
        assert row["nonzero"] == nnz
        assert row["meets_target"] is True
        # the mask of the final stage has exactly `keep` entries and covers the support
        mask = result.masks[f"{name}.weight"]
        assert int(mask.sum()) == keep
        assert not torch.any((params[f"{name}.weight"] != 0) & ~mask)
    totals = result.report["totals"]
    assert totals["all_targets_met"] is True
    total_w = sum(LAYERS.values())
    nz = sum(int(torch.count_nonzero(params[f"{n}.weight"])) for n in LAYERS)
    assert totals["weights"] == total_w and totals["nonzero"] == nz
    assert totals["weight_compression"] == pytest.approx(total_w / nz)
    # the rule is learnable: far above the 25% chance level even at 97% sparsity
    assert result.report["metrics"]["accuracy_after"] > 0.6


def test_stage2_support_is_subset_of_stage1(reference):
    result, _, run_dir = reference
    s1 = load_checkpoint(run_dir / "stage1.pt")
    s2 = load_checkpoint(run_dir / "stage2.pt")
    assert s1["kind"] == s2["kind"] == "pruned"
    for name, n in LAYERS.items():
        key = f"{name}.weight"
        w1 = s1["state_dict"][key]
        w2 = s2["state_dict"][key]
        assert int(torch.count_nonzero(w1)) <= n // 10
        assert int(torch.count_nonzero(w2)) <= n * 3 // 100
        assert not torch.any((w2 != 0) & ~(w1 != 0)), f"{name}: stage 2 revived a weight"
        assert not torch.any(s2["masks"][key] & ~s1["masks"][key])
        assert not torch.any((w1 != 0) & ~s1["masks"][key])
        # the final model is the stage-2 checkpoint
        assert torch.equal(w2, result.model.state_dict()[key])


def test_run_dir_contents_and_history(reference):
    result, logs, run_dir = reference
    names = {p.name for p in run_dir.iterdir()}
    assert names == {"state.pt", "stage1.pt", "stage2.pt"}
    assert len(epoch_records(result.history)) == EPOCH_RECORDS
    phases = [h["phase"] for h in result.history]
    assert phases.count("masked-mapping") == 2 and phases.count("done") == 2
    assert not any("resuming" in line for line in logs)
    assert any("accuracy before pruning" in line for line in logs)


def test_report_markdown_and_json(reference):
    result, _, _ = reference
    md = to_markdown(result.report, title="LeNet-300-100")
    for name in LAYERS:
        assert f"| {name} |" in md
    assert "weight compression" in md
    parsed = json.loads(to_json(result.report))
    assert [r["layer"] for r in parsed["layers"]] == list(LAYERS)
    assert parsed["totals"]["nonzero"] == result.report["totals"]["nonzero"]


def test_no_run_dir_same_result_as_with_run_dir(data, reference):
    result, _ = run(data, run_dir=None)
    ref = reference[0]
    for k, v in ref.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v)


@pytest.mark.parametrize("crash_after", [
    6,    # stage 1, ADMM epoch 2 (ADMM + optimizer state restored)
    14,   # stage 1, retrain epoch 2 (optimizer + cosine scheduler restored)
    22,   # stage 2, ADMM epoch 2 (stage-1 masks + ADMM state restored)
])
def test_resume_after_interruption(data, reference, tmp_path, crash_after):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        run(data, run_dir, train_wrap=lambda ld: FailAfter(ld, crash_after))
    assert (run_dir / "state.pt").exists()
    saved = load_checkpoint(run_dir / "state.pt")
    done_epochs = crash_after // BATCHES_PER_EPOCH
    assert len(epoch_records(saved["extra"]["history"])) == done_epochs
    # resume into a differently initialised model, with a different RNG seed
    fresh = initial_model()  # the weights the run started from (a digest checks them)
    torch.manual_seed(999)
    result, logs = run(data, run_dir, model=fresh, seed=999)
    assert any("resuming" in line for line in logs)
    assert result.model is fresh
    records = epoch_records(result.history)
    assert len(records) == EPOCH_RECORDS
    assert [(r["stage"], r["phase"], r["epoch"]) for r in records] == \
        [(r["stage"], r["phase"], r["epoch"]) for r in epoch_records(reference[0].history)]
    assert result.report["totals"]["all_targets_met"] is True
    # the model, optimizer, ADMM state and RNG are restored, so the resumed run
    # reproduces the uninterrupted one
    ref = reference[0]
    for k, v in ref.model.state_dict().items():
        assert torch.equal(result.model.state_dict()[k], v), k


def test_rerun_of_finished_run_does_not_train_again(data, reference, tmp_path):
    run_dir = tmp_path / "run"
    first, _ = run(data, run_dir)
    state_before = (run_dir / "state.pt").read_bytes()
    again, logs = run(data, run_dir, model=initial_model())
    assert any("resuming" in line for line in logs)
    assert len(epoch_records(again.history)) == EPOCH_RECORDS
    for k, v in first.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)
    assert (run_dir / "state.pt").read_bytes() == state_before


def test_different_config_same_run_dir_raises(data, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupt):
        run(data, run_dir, train_wrap=lambda ld: FailAfter(ld, 5))
    other = copy.deepcopy(CONFIG)
    other["stages"][1] = {"default": 0.95}
    with pytest.raises(CheckpointError, match="different config"):
        run(data, run_dir, config=other)
    assert PipelineConfig.from_dict(other).fingerprint() != \
        PipelineConfig.from_dict(CONFIG).fingerprint()
    # resume=False starts over with the new config in the same directory
    result, logs = run(data, run_dir, config=other, resume=False)
    assert not any("resuming" in line for line in logs)
    assert len(epoch_records(result.history)) == EPOCH_RECORDS
    saved = load_checkpoint(run_dir / "state.pt")
    assert saved["extra"]["fingerprint"] == PipelineConfig.from_dict(other).fingerprint()


def test_different_input_model_same_run_dir_raises(data, tmp_path):
    """An interrupted `prune a.pt --out p.pt` must not be resumed by `prune b.pt --out p.pt`
    (issue 20: the resumed run returned the model pruned from a.pt)."""
    run_dir = tmp_path / "run"
    run(data, run_dir)  # a finished run: its state stays in run_dir
    other = initial_model()
    with torch.no_grad():
        other.fc2.weight[0, 0] += 1e-3  # one weight differs
    before = (run_dir / "state.pt").read_bytes()
    with pytest.raises(CheckpointError, match="other model weights.*--fresh"):
        run(data, run_dir, model=other)
    assert (run_dir / "state.pt").read_bytes() == before  # the refused run wrote nothing
    # other training data (a different size) is refused too
    train, test = data
    smaller = (torch.utils.data.Subset(train, range(len(train) - 64)), test)
    with pytest.raises(CheckpointError, match="other training data"):
        run(smaller, run_dir)
    # starting over is explicit
    result, logs = run(data, run_dir, model=other, resume=False)
    assert not any("resuming" in line for line in logs)
    saved = load_checkpoint(run_dir / "state.pt")
    from mobileprune.checkpoint import state_digest
    assert saved["extra"]["input_digest"] != state_digest(initial_model())


def test_state_digest_sees_every_value_and_name():
    from mobileprune.checkpoint import state_digest
    a, b = initial_model(), initial_model()
    assert state_digest(a) == state_digest(b)
    with torch.no_grad():
        b.fc3.bias[-1] = torch.nextafter(b.fc3.bias[-1], torch.tensor(1.0))  # one ulp
    assert state_digest(a) != state_digest(b)
    c = initial_model()
    c.fc1.weight.data = c.fc1.weight.data.double()  # same values, other dtype
    assert state_digest(a) != state_digest(c)
