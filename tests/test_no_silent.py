"""No silent no-op on the pruning side (issue 19, acceptance): each public pruning
operation on a model or config where it can do nothing says so, by an error
(:class:`~mobileprune.errors.ConfigError`) or a ``UserWarning``, and the message says
what is wrong and what to do.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mobileprune import admm_prune
from mobileprune.errors import ConfigError
from mobileprune.sparsity.admm import ADMMPruner
from mobileprune.sparsity.masks import MaskEnforcer
from mobileprune.sparsity.proximal import ProximalPruner
from mobileprune.sparsity.report import layer_report, to_markdown
from mobileprune.sparsity.targets import explain, resolve_targets


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 10)
        self.lstm = nn.LSTM(10, 10, batch_first=True)
        self.attn = nn.MultiheadAttention(10, 2, batch_first=True)
        self.norm = nn.LayerNorm(10)
        self.fc = nn.Linear(10, 3)


def no_prunable() -> nn.Module:
    return nn.Sequential(nn.LayerNorm(4), nn.ReLU(), nn.PReLU())


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("config,parts", [
    # a pattern matching nothing: named, with the closest names
    ({"layers": {"lstm.weight_hh_*_reverse": 0.5}},
     ["pattern 'lstm.weight_hh_*_reverse'", "matches no prunable layer", "closest names: lstm.weight_hh_l0"]),
    ({"layers": {"re:attn\\.k_proj.*": 0.5}}, ["'re:attn\\\\.k_proj.*'", "closest names: attn."]),
    ({"exclude": ["fc2"], "default": 0.5}, ["unknown layer 'fc2'", "closest names: fc"]),
    ({"layers": {"type:Conv2d": 0.5}}, ["'type:Conv2d'", "types of the prunable weights: Embedding, LSTM"]),
    ({"layers": {"lstm.weight_ih": 0.5}}, ["unknown layer 'lstm.weight_ih'", "closest names: lstm.weight_ih_l0"]),
    ({"layers": {"Linear": 0.5}}, ["unknown layer 'Linear'", "write 'type:Linear'"]),
    # a parameter that is never a prunable weight: why
    ({"layers": {"fc.bias": 0.5}}, ["unknown layer 'fc.bias'", "bias: never pruned"]),
    ({"layers": {"norm": 0.5}}, ["unknown layer 'norm'", "LayerNorm"]),
    # the selection is empty: why, and what to do
    ({"default": 0.5, "exclude": ["*"]},
     ["selects no layer", "emb: excluded by config ('*')", "give a 'default' or name weights"]),
    ({"default": 0.5, "types": ["Conv2d"]}, ["has no prunable layer of types ['Conv2d']"]),
    # a structure the weight does not take
    ({"layers": {"emb": {"structure": "shape", "sparsity": 0.5}}},
     ["structure 'shape' is not defined for 'emb'", "Embedding", "it takes 'unstructured', 'filter', 'channel'"]),
    ({"layers": {"fc": {"structure": "head", "sparsity": 0.5}}}, ["'head' is not defined for 'fc'"]),
    ({"layers": {"attn.in_proj_weight": {"structure": "filter", "sparsity": 0.5}}},
     ["'filter' is not defined", "prune whole heads with 'head'"]),
    ({"layers": {"lstm.weight_hh_l0": {"structure": "shape", "sparsity": 0.5}}}, ["'shape' is not defined"]),
    # nothing would be kept, or more than there is
    ({"layers": {"attn": {"structure": "head", "keep": 3}}}, ["has 2 head groups but the config keeps 3"]),
    ({"layers": {"fc": 0.99}}, ["keeps no weight"]),
])
def test_config_errors_say_what_and_why(config, parts):
    for op in (lambda: resolve_targets(Net(), config), lambda: ADMMPruner(Net(), config),
               lambda: explain(Net(), config)):
        with pytest.raises(ConfigError) as info:
            op()
        for part in parts:
            assert part in str(info.value), (part, str(info.value))


def test_model_without_prunable_weight_is_an_error():
    for op in (lambda: ADMMPruner(no_prunable(), {"default": 0.9}),
               lambda: ProximalPruner(no_prunable(), {"method": "l0", "eta": 1e-3})):
        with pytest.raises(ConfigError, match="model Sequential has no prunable layer"):
            op()


def test_proximal_selection_that_matches_nothing():
    with pytest.raises(ConfigError, match="pattern 'lstm.*_reverse' in 'layers' matches no prunable layer"):
        ProximalPruner(Net(), {"method": "l0", "eta": 1e-3, "layers": {"lstm.*_reverse": {}}})
    with pytest.raises(ConfigError, match="selects no layer"):
        ProximalPruner(Net(), {"method": "l0", "eta": 1e-3, "exclude": ["*"]})


def test_admm_prune_refuses_before_training():
    data = DataLoader(TensorDataset(torch.randn(4, 10), torch.zeros(4, dtype=torch.long)), batch_size=2)
    model = nn.Sequential(nn.Linear(10, 3))
    with pytest.raises(ConfigError, match="pattern 'fc\\*' .*matches no prunable layer"):
        admm_prune(model, data, {"stages": [{"layers": {"fc*": 0.5}}],
                                 "admm": {"epochs": 1}, "retrain": {"epochs": 1}})


# ------------------------------------------------------------------ warnings


def test_target_of_zero_warns_naming_the_weights():
    with pytest.warns(UserWarning, match=r"prune nothing: fc \(unstructured keep 30 of 30\); "
                                         r"give a sparsity > 0, or 'exclude'"):
        ADMMPruner(Net(), {"layers": {"fc": 0.0, "emb": 0.5}})
    with pytest.warns(UserWarning, match=r"keep every unit .*attn\.in_proj_weight \(head keep 2 of 2\)"):
        resolve_targets(Net(), {"layers": {"attn": {"structure": "head", "keep": 2}}})
    with pytest.warns(UserWarning, match="6 pruning target"):  # default 0: every weight named
        resolve_targets(Net(), {"default": 0.0})


def test_no_warning_when_something_is_pruned():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        masks = ADMMPruner(Net(), {"default": 0.5, "exclude": ["fc"]}).finalize()
        m = Net()
        MaskEnforcer(m, {"fc.weight": torch.rand(3, 10) > 0.5}).remove()
    assert set(masks) >= {"emb.weight", "lstm.weight_ih_l0", "attn.in_proj_weight"}


def test_report_on_dense_model_warns_and_says_so():
    with pytest.warns(UserWarning, match="the model is dense: none of its 6 prunable weights has a zero"):
        rep = layer_report(Net())
    assert "nothing was pruned" in rep["totals"]["note"]
    assert "- note: the model is dense" in to_markdown(rep)
    with pytest.warns(UserWarning, match="Sequential has no prunable weight"):
        rep = layer_report(no_prunable())
    assert rep["layers"] == [] and [r["parameter"] for r in rep["parameters"]] == ["0.weight", "0.bias", "2.weight"]
    m = Net()
    ADMMPruner(m, {"default": 0.5}).finalize()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert "note" not in layer_report(m)["totals"]


def test_mask_enforcer_that_holds_nothing_warns():
    m = Net()
    with pytest.warns(UserWarning, match="MaskEnforcer got no masks"):
        MaskEnforcer(m, {}).remove()
    full = {n: torch.ones_like(p, dtype=torch.bool) for n, p in m.named_parameters() if n.endswith("weight")}
    with pytest.warns(UserWarning, match="keep every entry, so no weight is held at zero"):
        MaskEnforcer(m, full).remove()
    with pytest.raises(KeyError, match="does not have"):
        MaskEnforcer(m, {"fc2.weight": torch.ones(3, 10, dtype=torch.bool)})


def test_proximal_regulariser_of_zero_weights_warns():
    with pytest.warns(UserWarning, match="prox_step prunes nothing there: emb, lstm.weight_ih_l0"):
        ProximalPruner(Net(), {"method": "l0"})
    with pytest.warns(UserWarning, match="every penalty weight 0, so prox_step prunes nothing there: fc;"):
        ProximalPruner(Net(), {"method": "l0", "eta": 1e-3, "layers": {"fc": {"eta": 0.0}}})
    with pytest.raises(ConfigError, match="does not use 'lam'"):  # a weight the method ignores
        ProximalPruner(Net(), {"method": "l1", "lam": 1e-3})
