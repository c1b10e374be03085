"""Training helpers with models of several inputs: batches ``((x1, x2, ...), y)``."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mobileprune import ProximalPruner
from mobileprune.errors import ConfigError
from mobileprune.pipeline.palm import palm_step
from mobileprune.pipeline.train import evaluate, forward, train_epoch


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 8)
        self.b = nn.Linear(3, 8)
        self.out = nn.Linear(16, 3)

    def forward(self, xa, xb):
        return self.out(torch.relu(torch.cat([self.a(xa), self.b(xb)], 1)))


class Pairs(Dataset):
    def __init__(self, n: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.xa, self.xb = torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g)
        self.y = torch.randint(0, 3, (n,), generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return (self.xa[i], self.xb[i]), self.y[i]


def test_train_and_evaluate_take_tuple_inputs():
    torch.manual_seed(0)
    model, data = TwoInputs(), Pairs(40)
    loader = DataLoader(data, batch_size=8)
    with torch.no_grad():  # accuracy by hand, on the whole set at once
        want = float((model(data.xa, data.xb).argmax(1) == data.y).float().mean())
    assert evaluate(model, loader) == pytest.approx(want)
    assert torch.equal(forward(model, (data.xa, data.xb)), model(data.xa, data.xb))
    before = [p.detach().clone() for p in model.parameters()]
    stats = train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1))
    assert 0.0 <= stats["train_accuracy"] <= 1.0 and stats["loss"] > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    with pytest.raises(ConfigError, match="one image input"):
        train_epoch(model, loader, torch.optim.SGD(model.parameters(), lr=0.1), shift=1)


def test_palm_step_takes_tuple_inputs():
    torch.manual_seed(0)
    model, data = TwoInputs(), Pairs(16)
    batch = next(iter(DataLoader(data, batch_size=16)))
    pruner = ProximalPruner(model, {"method": "l1", "beta": 1e-3})
    loss_fn = nn.functional.cross_entropy
    with torch.no_grad():
        f0 = float(loss_fn(model(*batch[0]), batch[1]))
    palm_step(model, loss_fn, batch, pruner)
    with torch.no_grad():
        f1 = float(loss_fn(model(*batch[0]), batch[1]))
    assert f1 < f0  # one PALM sweep with backtracking decreases the smooth loss here
