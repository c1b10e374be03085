"""Tests of mobileprune.sparsity.targets: config validation and target resolution."""

from __future__ import annotations

import math

import pytest
import yaml
from torch import nn

from mobileprune.errors import ConfigError
from mobileprune.models import LeNet5
from mobileprune.sparsity.targets import PruneConfig, prunable_layers, resolve_targets


class Net(nn.Module):
    """Prunable layers conv1 (500 weights), conv2 (80), head.0 (7), head.1 (3), fc1 (100)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 20, 5)          # 500 weights
        self.conv2 = nn.Conv2d(20, 4, 1)          # 80 weights
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.Linear(7, 1), nn.Linear(1, 3))  # 7 and 3 weights
        self.fc1 = nn.Linear(10, 10)              # 100 weights


def targets_by_name(model, cfg):
    return {t.name: t for t in resolve_targets(model, cfg)}


def raises(model, cfg, *substrings):
    with pytest.raises(ConfigError) as info:
        resolve_targets(model, cfg)
    msg = str(info.value)
    for s in substrings:
        assert s in msg, f"{s!r} not in error message {msg!r}"
    return msg


# ------------------------------------------------------------------ errors


def test_unknown_layer_lists_prunable_layers():
    msg = raises(Net(), {"layers": {"conv3": 0.5}}, "unknown layer 'conv3'", "no such module")
    for name in ("conv1", "conv2", "head.0", "head.1", "fc1"):
        assert name in msg


def test_non_prunable_module_name():
    msg = raises(Net(), {"layers": {"relu": 0.5}}, "'relu'", "ReLU", "prunable layers are")
    assert "conv1" in msg
    # a container is not prunable either
    raises(Net(), {"layers": {"head": 0.5}}, "'head'", "Sequential")


def test_layer_outside_configured_types():
    raises(Net(), {"types": ["Conv2d"], "layers": {"fc1": 0.5}}, "'fc1'", "Linear", "Conv2d")


def test_regex_matching_nothing():
    raises(Net(), {"layers": {"re:dense.*": 0.5}}, "re:dense.*", "matches no prunable layer",
           "conv1")
    # fullmatch: "conv" alone does not match "conv1"
    raises(Net(), {"layers": {"re:conv": 0.5}}, "re:conv", "matches no prunable layer")


def test_type_pattern_matching_nothing():
    raises(Net(), {"layers": {"type:Conv1d": 0.5}}, "type:Conv1d", "matches no prunable layer")


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, float("nan")])
def test_sparsity_out_of_range(value):
    raises(Net(), {"layers": {"conv1": value}}, "sparsity", "'conv1'", "[0, 1)")
    raises(Net(), {"layers": {"conv1": {"sparsity": value}}}, "sparsity", "[0, 1)")
    raises(Net(), {"default": value}, "sparsity", "'default'", "[0, 1)")


def test_sparsity_string_and_bool():
    raises(Net(), {"layers": {"conv1": "0.5"}}, "'conv1'", "number or a mapping", "'0.5'")
    raises(Net(), {"layers": {"conv1": {"sparsity": "0.5"}}}, "sparsity", "'0.5'")
    raises(Net(), {"layers": {"conv1": True}}, "'conv1'", "number or a mapping", "True")
    raises(Net(), {"layers": {"conv1": {"sparsity": True}}}, "sparsity", "True")
    raises(Net(), {"default": True}, "'default'", "True")
    raises(Net(), {"default": [[0.5]]}, "'default'", "number or a mapping")
    raises(Net(), {"default": []}, "'default'", "empty")


@pytest.mark.parametrize("keep", [0, -3, 2.5, "4", True])
def test_keep_invalid(keep):
    raises(Net(), {"layers": {"conv1": {"keep": keep}}}, "'keep'", "'conv1'", "positive integer",
           repr(keep))


def test_keep_larger_than_layer():
    raises(Net(), {"layers": {"conv2": {"keep": 81}}}, "'conv2'", "80 weights", "keeps 81")


def test_keep_equal_to_layer_is_valid_but_warns():
    with pytest.warns(UserWarning, match=r"prune nothing: conv2 \(unstructured keep 80 of 80\)"):
        assert targets_by_name(Net(), {"layers": {"conv2": {"keep": 80}}})["conv2"].keep == 80


def test_sparsity_that_keeps_nothing():
    # 3 weights at 90% -> floor(0.3) = 0 weights kept
    raises(Net(), {"layers": {"head.1": 0.9}}, "'head.1'", "keeps no weight")


def test_both_sparsity_and_keep():
    raises(Net(), {"layers": {"conv1": {"sparsity": 0.5, "keep": 3}}}, "'conv1'",
           "exactly one of 'sparsity' or 'keep'")
    raises(Net(), {"layers": {"conv1": {}}}, "exactly one of 'sparsity' or 'keep'")


def test_unknown_keys():
    raises(Net(), {"default": 0.5, "layer": {"conv1": 0.5}}, "unknown key", "'layer'")
    raises(Net(), {"layers": {"conv1": {"sparsity": 0.5, "kepp": 2}}}, "unknown key", "'kepp'",
           "'conv1'")


def test_unknown_type():
    raises(Net(), {"default": 0.5, "types": ["Dense"]}, "unknown layer type", "Dense", "Linear")
    raises(Net(), {"layers": {"type:Dense": 0.5}}, "unknown layer type", "type:Dense")


def test_unknown_structure():
    raises(Net(), {"layers": {"conv1": {"sparsity": 0.5, "structure": "diagonal"}}},
           "unknown structure", "'diagonal'")


def test_model_without_prunable_layer():
    raises(nn.Sequential(nn.ReLU()), {"default": 0.5}, "no prunable layer", "Sequential")
    # a model whose only prunable layer is of an excluded type names what it has
    raises(nn.Sequential(nn.Linear(3, 3)), {"default": 0.5, "types": ["Conv2d"]},
           "no prunable layer", "Conv2d", "'0'")


def test_invalid_regex():
    raises(Net(), {"layers": {"re:conv(": 0.5}}, "invalid regular expression", "re:conv(")
    raises(Net(), {"default": 0.5, "exclude": ["re:[a-"]}, "invalid regular expression")


@pytest.mark.parametrize("cfg, words", [
    ({"exclude": ["re:[a-"]}, ["invalid regular expression", "re:[a-", "'exclude'"]),
    ({"layers": {"type:Dense": {}}}, ["unknown layer type", "type:Dense", "'layers'"]),
    ({"exclude": [3]}, ["'exclude' must be a list", "3"]),
    ({"layers": ["conv1"]}, ["'layers' must be a mapping"]),
    ({"types": ["Dense"]}, ["unknown layer type", "Dense"]),
])
def test_selection_keys_read_alike_by_both_methods(cfg, words):
    """``types`` / ``exclude`` / ``layers`` mean the same to ADMM targets and to the
    proximal regularisers: one reader, one message (sparsity.targets.parse_selection)."""
    from mobileprune.sparsity.proximal import ProximalPruner

    admm = {"default": 0.5, **{k: ({n: 0.5 for n in v} if k == "layers" and isinstance(v, dict) else v)
                               for k, v in cfg.items()}}
    prox = {"method": "l1", "beta": 0.1, **cfg}
    for make in (lambda: PruneConfig.from_dict(admm), lambda: ProximalPruner(LeNet5(), prox)):
        with pytest.raises(ConfigError) as exc:
            make()
        for w in words:
            assert w in str(exc.value), (w, str(exc.value))


def test_config_that_prunes_nothing():
    for cfg in ({}, {"default": None}, {"layers": {}}, {"exclude": ["conv1"]}):
        raises(Net(), cfg, "prunes nothing")
    # everything excluded: nothing selected for this model
    raises(Net(), {"default": 0.5, "exclude": ["re:.*"]}, "selects no layer")


def test_config_not_a_mapping():
    raises(Net(), [0.5], "must be a mapping")
    with pytest.raises(ConfigError, match="'layers' must be a mapping"):
        PruneConfig.from_dict({"layers": [0.5]})


def test_yaml_missing_and_malformed(tmp_path):
    missing = tmp_path / "nope.yaml"
    raises(Net(), missing, "config file not found", "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("default: 0.9\nlayers: {conv1: [0.5\n  fc1: : :\n")
    raises(Net(), bad, "malformed YAML", "bad.yaml")
    with pytest.raises(ConfigError, match="malformed YAML"):
        PruneConfig.from_yaml(bad)


def test_config_errors_are_value_errors():
    with pytest.raises(ValueError):
        resolve_targets(Net(), {"default": 2.0})


# ------------------------------------------------------------------ positive cases


def test_keep_is_floor_of_n_times_one_minus_s():
    with pytest.warns(UserWarning, match="conv2"):
        t = targets_by_name(Net(), {"layers": {"conv1": 0.9, "head.0": 0.5, "fc1": 0.97,
                                               "conv2": 0.0}})
    assert t["conv1"].keep == 50        # 500 * 0.1 (0.1 is inexact in binary)
    assert t["head.0"].keep == 3        # floor(3.5)
    assert t["fc1"].keep == 3           # floor(100 * 0.03)
    assert t["conv2"].keep == 80        # sparsity 0 keeps everything
    for name, n, s in (("conv1", 500, 0.9), ("head.0", 7, 0.5), ("fc1", 100, 0.97)):
        assert t[name].numel == n
        assert t[name].sparsity >= s - 1e-12  # achieved sparsity never below target
    assert t["conv1"].param_name == "conv1.weight"
    assert t["conv1"].shape == (20, 1, 5, 5)


def test_keep_count_on_lenet5():
    t = targets_by_name(LeNet5(), {"default": 0.9})
    assert {k: v.keep for k, v in t.items()} == {
        "conv1": 50, "conv2": 2500, "fc1": 40000, "fc2": 500}
    for k, v in t.items():
        assert v.keep == math.floor(round(v.numel * 0.1, 6))


def test_precedence_exact_pattern_type_default():
    cfg = {
        "default": 0.5,
        "layers": {
            "re:conv.*": 0.8,       # first pattern: conv1, conv2
            "re:conv1|fc1": 0.6,    # would match conv1 too, but the first pattern wins
            "type:Linear": 0.7,     # head.0, head.1, fc1
            "head.1": {"keep": 2},  # exact name beats the type pattern
        },
    }
    t = targets_by_name(Net(), cfg)
    assert t["conv1"].keep == math.floor(500 * 0.2 + 1e-9)
    assert t["conv2"].keep == 16  # 80 * 0.2
    assert t["fc1"].keep == 40  # "re:conv1|fc1" is listed before "type:Linear"
    assert t["head.0"].keep == 2  # floor(7 * 0.3) = 2 via type:Linear
    assert t["head.1"].keep == 2
    # exact beats patterns even when the pattern is listed first
    t = targets_by_name(Net(), {"layers": {"re:.*": 0.5, "conv2": {"keep": 5}}})
    assert t["conv2"].keep == 5 and t["conv1"].keep == 250


def test_default_applies_only_to_unlisted_and_absent_default_leaves_dense():
    t = targets_by_name(Net(), {"default": 0.5, "layers": {"fc1": 0.9}})
    assert set(t) == {"conv1", "conv2", "head.0", "head.1", "fc1"}
    assert t["conv1"].keep == 250 and t["fc1"].keep == 10
    t = targets_by_name(Net(), {"layers": {"fc1": 0.9}})
    assert set(t) == {"fc1"}


def test_exclude_names_and_patterns():
    t = targets_by_name(Net(), {"default": 0.5, "exclude": ["conv1", "re:head\\..*"]})
    assert set(t) == {"conv2", "fc1"}
    # exclude also wins over an explicit target
    t = targets_by_name(Net(), {"default": 0.5, "exclude": "fc1", "layers": {"fc1": 0.9}})
    assert "fc1" not in t


def test_types_restrict_candidates():
    t = targets_by_name(Net(), {"default": 0.5, "types": ["Conv2d"]})
    assert set(t) == {"conv1", "conv2"}
    assert set(prunable_layers(Net())) == {"conv1", "conv2", "head.0", "head.1", "fc1"}


def test_result_follows_module_order():
    names = [t.name for t in resolve_targets(Net(), {"layers": {"fc1": 0.5, "conv1": 0.5}})]
    assert names == ["conv1", "fc1"]


def test_to_dict_from_dict_round_trip(tmp_path):
    cfg = PruneConfig.from_dict({
        "name": "demo", "default": 0.9, "types": ["Conv2d", "Linear"],
        "exclude": ["head.1"],
        "layers": {"conv1": {"keep": 7}, "re:conv[2-9]": 0.95, "type:Linear": {"sparsity": 0.5}},
    })
    d = cfg.to_dict()
    again = PruneConfig.from_dict(d)
    assert again == cfg
    assert again.to_dict() == d
    # through a YAML file
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(d))
    from_file = PruneConfig.from_yaml(path)
    assert from_file == cfg
    model = Net()
    assert resolve_targets(model, path) == resolve_targets(model, cfg)
    assert resolve_targets(model, str(path)) == resolve_targets(model, d)
    t = targets_by_name(model, from_file)
    assert t["conv1"].keep == 7 and t["conv2"].keep == 4 and t["fc1"].keep == 50
    assert "head.1" not in t


def test_yaml_file_with_layer_patterns(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text('layers:\n  conv1: 0.8\n  "re:head\\\\.[01]": {keep: 1}\n')
    t = targets_by_name(Net(), path)
    assert t["conv1"].keep == 100 and t["head.0"].keep == 1 and t["head.1"].keep == 1
    assert set(t) == {"conv1", "head.0", "head.1"}


# ------------------------------------------------------------------ regressions


def test_top_level_structure_is_validated():
    try:
        resolve_targets(Net(), {"default": 0.5, "structure": "bogus"})
    except ConfigError:
        return
    raise AssertionError("top-level structure 'bogus' accepted without error")


@pytest.mark.parametrize("cfg", [{"default": 0.5, "exclude": [1]},
                                 {"default": 0.5, "types": 5},
                                 {"default": 0.5, "types": [{"a": 1}]}])
def test_malformed_exclude_or_types_raise_config_error(cfg):
    with pytest.raises(ConfigError):
        resolve_targets(Net(), cfg)
