"""The config schema (issue 20, item 2): every error at once with its path, YAML line and
the closest valid key; every field refuses a generated bad value; docs/config.md is
generated from the same tables."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from mobileprune.cli import main
from mobileprune.pipeline.config import DOCS, _classes, _Marks, check_config, markdown, validate
from mobileprune.sparsity.targets import builtin_configs

ROOT = Path(__file__).resolve().parents[1]


def _errors(text: str) -> list[str]:
    return validate(yaml.safe_load(text), _Marks(text))


def test_every_error_is_listed_with_its_line_and_the_closest_key():
    text = ("admm: {epohcs: 2, lr: -1}\n"
            "retrain:\n"
            "  lr: 0\n"
            "stages:\n"
            "  - default: 1.5\n"
            "    layrs: {}\n")
    assert _errors(text) == [
        "admm.epohcs: unknown key; did you mean 'epochs'? (line 1)",
        "'admm.lr' must be > 0, got -1 (line 1)",
        "'retrain.lr' must be > 0, got 0 (line 3)",
        "stages[0].layrs: unknown key; did you mean 'layers'? (line 6)",
        "stages[0].default: sparsity of 'default' must be a fraction pruned in [0, 1), got 1.5 (line 5)",
    ]


def test_schedule_keys_once_checked_late_or_never():
    errs = _errors("method: l1\nlam: 1\nschedule:\n  rounds: -1\n  increase_every: 0\n  mode: exact\n")
    assert errs == ["schedule.rounds must be an integer >= 0, got -1 (line 4)",
                    "schedule.increase_every must be an integer >= 1, got 0 (line 5)",
                    "schedule.mode must be one of palm, proximal, got 'exact' (line 6)"]


def test_a_rule_between_keys_is_reported_once():
    assert _errors("method: l1\nschedule: {final_project: true}\n") == [
        "schedule.final_project needs schedule.target_nonzero (the budget to project onto) (line 2)"]


@pytest.mark.parametrize("section, cls", list(_classes().items()))
def test_every_field_refuses_a_bad_value(section, cls):
    """scikit-learn's check_param_validation: a generated bad value for every field."""
    for f in dataclasses.fields(cls):
        for bad in ("bogus!", -5, [1, 2]):
            raw = ({"method": "l1", "schedule": {f.name: bad}} if section == "schedule"
                   else {"default": 0.5, section: {f.name: bad}})
            errs = validate(raw)
            assert errs and f.name in errs[0], (section, f.name, bad, errs)


def test_builtin_configs_are_valid():
    assert builtin_configs()
    for name in builtin_configs():
        assert isinstance(check_config(name), dict)


def test_docs_cover_every_key_and_are_generated():
    for cls in _classes().values():
        for f in dataclasses.fields(cls):
            assert DOCS.get(f.name), f.name
    assert (ROOT / "docs" / "config.md").read_text() == markdown(), \
        "regenerate: python -m mobileprune.pipeline.config > docs/config.md"


def test_config_commands(tmp_path, capsys):
    assert main(["config", "show", "lenet5-71x"]) == 0
    assert "stages:" in capsys.readouterr().out
    bad = tmp_path / "c.yaml"
    bad.write_text("admm: {epohcs: 2}\nretrain: {lr: -1}\n")
    with pytest.raises(SystemExit) as info:
        main(["config", "check", str(bad)])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 2 and "\n" not in err
    assert "3 error(s)" in err and "prunes nothing" in err and "'epochs'? (line 1)" in err and "(line 2)" in err
    good = tmp_path / "g.yaml"
    good.write_text("method: l0_group_lasso\nlam: 1.0\nschedule: {rounds: 2}\n")
    assert main(["config", "check", str(good)]) == 0
    assert "valid l0_group_lasso config" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["config", "show", "nosuch"])
    assert "built-in" in capsys.readouterr().err
