"""fold_dead_weights: zero in place the weights compact() would drop, folding constants
into biases. Checked against hand-computed folds, a torch reference output, compact()
and dead_weights()."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mobileprune.surgery.compact import compact, dead_weights, fold_dead_weights
from mobileprune.errors import UnsupportedModelError


class MLP(nn.Module):
    def __init__(self, bias2: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(6, 5)
        self.fc2 = nn.Linear(5, 4, bias=bias2)
        self.fc3 = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class ConvNet(nn.Module):
    def __init__(self, padding: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 3, 3, padding=padding)
        self.fc = nn.Linear(3 * (4 + 2 * padding) ** 2, 2)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(x, 1))


def _nonzero(m: nn.Module) -> int:
    return sum(int((p != 0).sum()) for n, p in m.named_parameters() if n.endswith("weight"))


def test_dead_hidden_unit_outgoing_weights_folded_by_hand():
    torch.manual_seed(0)
    m = MLP().eval()
    with torch.no_grad():
        m.fc1.weight[2] = 0        # hidden unit 2 of fc1: constant relu(b) ...
        m.fc1.bias[2] = 0.7        # ... = 0.7
        m.fc2.weight[:, 4] = 0     # hidden unit 4 of fc1: output unused
    x = torch.randn(32, 6)
    ref = m(x)
    b2 = m.fc2.bias.detach().clone()
    col = m.fc2.weight[:, 2].detach().clone()
    row4 = int((m.fc1.weight[4] != 0).sum())
    counts = fold_dead_weights(m, x[:1])
    assert counts == {"fc1.weight": row4, "fc2.weight": int((col != 0).sum()), "fc3.weight": 0}
    assert torch.all(m.fc2.weight[:, 2] == 0) and torch.all(m.fc1.weight[4] == 0)
    torch.testing.assert_close(m.fc2.bias.detach(), b2 + 0.7 * col)
    torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-6)
    # idempotent
    assert sum(fold_dead_weights(m, x[:1]).values()) == 0


def test_negative_bias_unit_is_zero_constant_and_dropped_without_fold():
    m = MLP().eval()
    with torch.no_grad():
        m.fc1.weight[1] = 0
        m.fc1.bias[1] = -0.3      # relu(-0.3) = 0: nothing to fold
    b2 = m.fc2.bias.detach().clone()
    x = torch.randn(16, 6)
    ref = m(x)
    fold_dead_weights(m, x[:1])
    assert torch.all(m.fc2.weight[:, 1] == 0)
    assert torch.equal(m.fc2.bias.detach(), b2)
    torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-6)


def test_consumer_without_bias_keeps_columns_that_need_a_fold():
    m = MLP(bias2=False).eval()
    with torch.no_grad():
        m.fc1.weight[0] = 0
        m.fc1.bias[0] = 0.5       # needs a bias in fc2 to fold: kept
        m.fc1.weight[3] = 0
        m.fc1.bias[3] = -1.0      # constant 0: dropped
    col0 = m.fc2.weight[:, 0].detach().clone()
    x = torch.randn(16, 6)
    ref = m(x)
    counts = fold_dead_weights(m, x[:1])
    assert m.fc2.bias is None
    assert torch.equal(m.fc2.weight[:, 0].detach(), col0)
    assert torch.all(m.fc2.weight[:, 3] == 0) and counts["fc2.weight"] == 4
    torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("padding", [0, 1])
def test_conv_filter_constant_folded_only_without_zero_padding(padding):
    torch.manual_seed(1)
    m = ConvNet(padding).eval()
    with torch.no_grad():
        m.conv1.weight[1] = 0
        m.conv1.bias[1] = 0.4     # channel 1 of conv2's input is the constant 0.4
        m.conv2.weight[2] = 0
        m.conv2.bias[2] = -0.2    # conv2 filter 2: constant 0 into fc
    x = torch.randn(8, 1, 8, 8)
    ref = m(x)
    w2 = m.conv2.weight.detach().clone()
    b2 = m.conv2.bias.detach().clone()
    fold_dead_weights(m, x[:1])
    torch.testing.assert_close(m(x), ref, rtol=0, atol=1e-5)
    hw = (4 + 2 * padding) ** 2
    assert torch.all(m.fc.weight[:, 2 * hw:3 * hw] == 0)  # flatten: channel 2's features
    if padding == 0:  # every receptive field inside the input: exact fold
        assert torch.all(m.conv2.weight[:, 1] == 0)
        expect = b2 + 0.4 * w2[:, 1].sum((1, 2))
        expect[2] = b2[2]  # a removed filter's bias is left alone
        torch.testing.assert_close(m.conv2.bias.detach(), expect)
    else:  # zero padding: border outputs see 0, not 0.4 -> kept
        assert torch.equal(m.conv2.weight[:, 1][[0, 1]], w2[:, 1][[0, 1]])


def test_agrees_with_compact_and_dead_weights():
    torch.manual_seed(3)
    m = ConvNet().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.mul_((torch.rand_like(p) > 0.3).float())
        m.conv1.weight[0] = 0
        m.conv1.weight[3] = 0
        m.conv2.weight[1] = 0
        m.fc.weight[:, :16] = 0   # conv2 filter 0 unused
    x = torch.randn(4, 1, 8, 8)
    dead = dead_weights(m, x[:1])
    n_dead = sum(int(v.sum()) for v in dead.values())
    assert n_dead > 0
    before = _nonzero(m)
    small = compact(m, x[:1])
    folded = copy.deepcopy(m)
    counts = fold_dead_weights(folded, x[:1])
    assert {k: v for k, v in counts.items()} == {k: int(v.sum()) for k, v in dead.items()}
    assert _nonzero(folded) == before - n_dead
    # nothing left to remove, and compacting gives the same model size and outputs
    assert not any(bool(v.any()) for v in dead_weights(folded, x[:1]).values())
    small2 = compact(folded, x[:1])
    assert sum(p.numel() for p in small.parameters()) == sum(p.numel() for p in small2.parameters())
    torch.testing.assert_close(small2(x), m(x), rtol=0, atol=1e-5)


def test_training_flags_kept_and_untraceable_model_rejected():
    m = MLP().train()
    with torch.no_grad():
        m.fc1.weight[0] = 0
    fold_dead_weights(m, torch.randn(1, 6))
    assert m.training and m.fc1.training

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return self.fc(x) if x.sum() > 0 else x

    with pytest.raises(UnsupportedModelError, match="trace"):
        fold_dead_weights(Branchy(), torch.randn(1, 3))
