"""torchrun data parallelism (issue 20, item 8) and progress lines for logs (item 7).

The training loop averages gradients over the ranks, so two gloo processes that each
read half of every batch end with the weights and masks of one process training on the
joint batches; ``torchrun --nproc-per-node 2 -m mobileprune prune`` runs end to end,
rank 0 alone writing and printing."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune.checkpoint import load_checkpoint, save_checkpoint
from mobileprune.models import LeNet5
from mobileprune.pipeline.train import LineProgress, train_epoch
from mobileprune.sparsity.masks import MaskEnforcer, masks_from_weights

gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                          reason="torch.distributed with the gloo backend is not available")


def _net() -> nn.Module:
    """No BatchNorm: like DDP, each rank normalises with its own batch's statistics, so
    only a model without it equals one process on the joint batch exactly."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 5))
    with torch.no_grad():
        m[0].weight[:, :, 0] = 0  # a fixed pattern of pruned weights
        m[3].weight[:, ::3] = 0
    return m


def _joint():
    g = torch.Generator().manual_seed(1)
    return torch.randn(6, 8, 1, 8, 8, generator=g), torch.randint(0, 5, (6, 8), generator=g)


def _train(model, batches):
    masks = masks_from_weights(model, ["0.weight", "3.weight"])
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    MaskEnforcer(model, masks).attach(opt)
    train_epoch(model, batches, opt, progress=False)
    return model


def _worker(r: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=r, world_size=world)
    x, y = _joint()
    half = [(x[i, r::world], y[i, r::world]) for i in range(len(x))]  # this rank's half of each batch
    m = _train(_net(), half)
    if r == 0:
        torch.save(m.state_dict(), out)
    dist.barrier()
    dist.destroy_process_group()


@gloo
def test_two_ranks_equal_one_process_on_the_joint_batch(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(2, port, str(out)), nprocs=2, join=True)
    x, y = _joint()
    ref = _train(_net(), [(x[i], y[i]) for i in range(len(x))])
    got = torch.load(out, weights_only=True)
    for k, v in ref.state_dict().items():
        if v.is_floating_point():
            assert torch.allclose(got[k], v, atol=1e-5, rtol=1e-4), k
    assert torch.equal(got["0.weight"] == 0, ref[0].weight == 0)  # masks held on every rank
    assert bool((got["0.weight"][:, :, 0] == 0).all()) and bool((got["3.weight"][:, ::3] == 0).all())


@gloo
def test_torchrun_prune_end_to_end(tmp_path):
    torch.manual_seed(0)
    dense = tmp_path / "dense.pt"
    save_checkpoint(dense, LeNet5(), kind="dense", model_name="lenet5",
                    extra={"dataset": "mnist-sample", "input_shape": [1, 28, 28]})
    out = tmp_path / "p.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "mobileprune", "prune", str(dense), "--sparsity", "0.5", "--admm-epochs", "1",
           "--retrain-epochs", "1", "--batch-size", "256", "--out", str(out), "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.count("saved pruned model to") == 1  # rank 0 alone prints
    rep = json.loads(out.with_suffix(".json").read_text())
    assert rep["distributed"] == {"world_size": 2, "backend": "gloo"}
    ck = load_checkpoint(out)
    assert ck["extra"]["distributed"]["world_size"] == 2
    w = ck["state_dict"]["conv2.weight"]
    assert abs(float((w == 0).float().mean()) - 0.5) < 0.01
    assert not (tmp_path / "p.run").exists() and not (tmp_path / "p.pt.lock").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dense.pt", "p.json", "p.md", "p.pt"]


def test_progress_lines_for_a_log():
    """Off a terminal: a line every N seconds and at the end, with loss, elapsed and ETA."""
    ticks = iter([0.0, 10.0, 31.0, 45.0, 62.0, 80.0, 80.0])
    stream = io.StringIO()
    bar = LineProgress(range(5), "stage1 admm 2/3", 5, 30.0, stream=stream, clock=lambda: next(ticks))
    for i in bar:
        bar.set_postfix(loss=f"{1.0 / (i + 1):.4f}")
    lines = stream.getvalue().splitlines()
    assert lines == [
        "stage1 admm 2/3: step 2/5 (40%), loss 0.5000, elapsed 0m31s, ETA 0m46s",
        "stage1 admm 2/3: step 4/5 (80%), loss 0.2500, elapsed 1m02s, ETA 0m16s",
        "stage1 admm 2/3: step 5/5 (100%), loss 0.2000, elapsed 1m20s",
    ]


def test_training_off_a_terminal_logs_progress(monkeypatch, capsys):
    monkeypatch.setenv("MOBILEPRUNE_PROGRESS_SECONDS", "0")
    m = nn.Linear(4, 3)
    data = DataLoader(TensorDataset(torch.randn(12, 4), torch.randint(0, 3, (12,))), batch_size=4)
    train_epoch(m, data, torch.optim.SGD(m.parameters(), lr=0.1), desc="train 1/1")  # progress=None
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 4 and err[-1].startswith("train 1/1: step 3/3 (100%), loss ")
    assert "acc " in err[-1] and "elapsed" in err[-1]
