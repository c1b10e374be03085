"""Report counts against hand counts."""

import json

import pytest
import torch
from torch import nn

from mobileprune.models import LeNet5, LeNet300100
from mobileprune.sparsity.report import layer_report, to_json, to_markdown
from mobileprune.sparsity.targets import resolve_targets


def test_lenet5_hand_counts():
    m = LeNet5()
    with torch.no_grad():
        for p in m.parameters():  # no weight exactly 0 by chance (PyTorch's init can give one)
            p.copy_(torch.rand(p.shape, generator=torch.Generator().manual_seed(0)) + 0.1)
        m.conv1.weight[3:] = 0                  # 3 of 20 filters active
        m.conv2.weight[:, 5:] = 0               # 5 of 20 input channels active
        m.conv2.weight[:, :5, 0, 0] = 0         # 5*50 more zeros
        m.fc1.weight[:, :100] = 0               # 700 of 800 inputs active
        m.fc1.bias.zero_()
    r = layer_report(m, resolve_targets(m, {"default": 0.5}), example_input=torch.zeros(1, 1, 28, 28))
    L = {row["layer"]: row for row in r["layers"]}
    assert L["conv1"]["nonzero"] == 3 * 25 and L["conv1"]["active_out"] == 3
    assert L["conv2"]["nonzero"] == 50 * 5 * 24 and L["conv2"]["active_in"] == 5
    assert L["fc1"]["active_in"] == 700 and L["fc1"]["active_out"] == 500
    # MACs: conv1 24x24 outputs, conv2 8x8, fc 1 position
    assert L["conv1"]["macs"] == 500 * 576 and L["conv1"]["nonzero_macs"] == 75 * 576
    assert L["conv1"]["active_macs"] == 3 * 1 * 25 * 576
    assert L["conv2"]["macs"] == 25000 * 64 and L["conv2"]["active_macs"] == 50 * 5 * 25 * 64
    assert L["fc1"]["macs"] == 400000 and L["fc1"]["nonzero_macs"] == 350000
    t = r["totals"]
    assert t["weights"] == 430500 and t["parameters"] == 431080
    assert t["nonzero"] == 75 + 6000 + 350000 + 5000
    assert t["nonzero_parameters"] == t["nonzero"] + 20 + 50 + 0 + 10
    assert t["macs"] == 288000 + 1600000 + 400000 + 5000
    assert t["all_targets_met"] is False        # conv2/fc2 untouched vs 50% target
    assert L["conv1"]["meets_target"] is True and L["fc2"]["meets_target"] is False
    md = to_markdown(r)
    assert "| conv1 | Conv2d | 20x1x5x5 | 500 | 75 |" in md
    assert json.loads(to_json(r))["totals"]["macs"] == t["macs"]


def test_dense_model_report_and_inf_compression():
    m = LeNet300100()
    with pytest.warns(UserWarning, match="the model is dense: none of its 3 prunable weights"):
        r = layer_report(m)
    assert "nothing was pruned" in r["totals"]["note"] and "- note: the model is dense" in to_markdown(r)
    assert r["totals"]["weights"] == 784 * 300 + 300 * 100 + 100 * 10
    assert r["totals"]["weight_compression"] == 1.0
    z = nn.Sequential(nn.Linear(3, 2, bias=False))
    nn.init.zeros_(z[0].weight)
    rz = layer_report(z)
    assert rz["totals"]["weight_compression"] == float("inf")
    assert json.loads(to_json(rz))["totals"]["weight_compression"] == "inf"
