"""One schema for pruning configs, checked whole before any work (issue 20, item 2).

A config is validated in one pass that collects **every** error, each with its path,
the YAML line it comes from and, for an unknown key, the closest valid name::

    admm.epohcs: unknown key; did you mean 'epochs'? (line 3)
    retrain.lr: must be a number > 0, got -1 (line 4)

The sections and their keys are the dataclasses the pipelines run on
(:class:`~mobileprune.pipeline.prune.ADMMSettings`, ``RetrainSettings``,
``ProxSchedule``) and the pruning-target keys of :mod:`mobileprune.sparsity.targets`;
each value is then checked by the same code that builds the section, one key at a time
(so one bad key does not hide the next), and the whole config last (cross-key rules).
:func:`markdown` writes ``docs/config.md`` from the same tables.
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Callable, Mapping

import yaml

from mobileprune.errors import ConfigError
from mobileprune.sparsity.targets import STRUCTURES

__all__ = ["check_config", "validate", "markdown", "DOCS"]

# what each key means; the defaults come from the dataclasses
DOCS: dict[str, str] = {
    "epochs": "epochs of this phase", "optimizer": "sgd, adam or adamw", "lr": "learning rate",
    "weight_decay": "L2 weight decay of the optimizer", "momentum": "SGD momentum",
    "distill": "weight a in [0, 1] of distillation from the model as given",
    "temperature": "distillation temperature T", "shift": "random translation of the inputs by up "
    "to this many pixels", "rho": "ADMM penalty rho (seed 003, Eq. 5)",
    "rho_multiplier": "rho is multiplied by this after every Z/U update", "rho_max": "rho's ceiling",
    "rho_final": "rho at the phase's last Z/U update: derives the multiplier from the phase's "
    "length (replaces rho_multiplier); null: use rho_multiplier",
    "update_every": "optimizer steps between Z/U updates (Eqs. 6-7); null: once per epoch",
    "nested": "a stage may only prune further what the previous stage kept",
    "reallocate_dead": "masked mapping gives the budget of dead weights to live ones",
    "cosine": "cosine learning-rate decay", "regrow": "RigL fraction of each layer's weights "
    "swapped at first (0: fixed masks)", "regrow_every": "steps between mask updates with regrow",
    "rounds": "rounds of (prox epochs, retrain epochs)", "prox_epochs": "PALM / proximal epochs per round",
    "retrain_epochs": "masked retraining epochs per round", "lam_factor": "lam is multiplied by "
    "this every increase_every rounds", "eta_factor": "eta is multiplied by this every "
    "increase_every rounds", "increase_every": "rounds between lam / eta increases",
    "mode": "palm (exact PALM with backtracking) or proximal (optimizer step, then the prox)",
    "prox_optimizer": "optimizer of the proximal steps", "prox_lr": "learning rate of the proximal steps",
    "retrain_lr": "learning rate of masked retraining", "retrain_weight_decay": "weight decay of "
    "masked retraining", "target_nonzero": "stop the rounds at this many nonzero weights",
    "final_retrain_epochs": "masked retraining after the last round",
    "final_retrain_lr": "its learning rate (default retrain_lr)", "final_distill": "its "
    "distillation weight (default distill)", "final_project": "project onto target_nonzero "
    "before the final retraining", "project_margin": "stop the rounds within target_nonzero * "
    "(1 + margin)", "fold_dead": "zero weights that cannot change the output, fold their constants",
    "compact": "remove dead units in place between rounds", "max_units": "{layer: k}: at most k "
    "output units", "max_inputs": "{layer: k}: at most k input units", "structure_epochs":
    "retraining epochs after the first max_units cut", "structure_lr": "their learning rate",
    "final_regrow": "RigL fraction in the final retraining", "final_refill": "fill the budget with "
    "the largest-gradient inactive weights first", "final_shift": "shift in the final retraining only",
    "val_fraction": "hold out this fraction of the training data and keep the epoch of best "
    "validation accuracy (0: off)",
    "final_val_fraction": "hold out this fraction of the training data in the final retraining "
    "and keep its epoch of best validation accuracy",
}
TARGET_KEYS = {"default": "fraction pruned of every selected weight not listed in layers",
               "types": "layer types that are prunable", "exclude": "names or patterns never pruned",
               "layers": "per-weight targets: name, glob, re: or type: -> fraction or {keep, "
                         f"sparsity, structure}} (structure: {', '.join(STRUCTURES)})",
               "name": "the stage's name"}
PROX_KEYS = {"method": "l0_group_lasso (MobilePrune), l0, l1, l2, group_lasso, sparse_group_lasso",
             "lam": "group-norm weight", "eta": "l0 weight", "beta": "l1 weight",
             "lam_root": "scale lam by sqrt(group size)", "grouping": "how weights form groups"}
META_KEYS = {"model": "the model the config was written for (informative)",
             "dataset": "the data set to prune with (default: the checkpoint's)"}


def _classes():
    from mobileprune.pipeline import admm_run as p, proximal_run as q

    return {"admm": p.ADMMSettings, "retrain": p.RetrainSettings, "schedule": q.ProxSchedule}


class _Marks:
    """YAML line numbers by key path (``("admm", "lr")``), from ``yaml.compose``."""

    def __init__(self, text: str | None) -> None:
        self.lines: dict[tuple, int] = {}
        if text:
            try:
                self._walk(yaml.compose(text), ())
            except yaml.YAMLError:
                pass

    def _walk(self, node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                self.lines[path + (k.value,)] = k.start_mark.line + 1
                self._walk(v, path + (k.value,))
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                self.lines[path + (i,)] = v.start_mark.line + 1
                self._walk(v, path + (i,))

    def at(self, path: tuple) -> str:
        for n in range(len(path), 0, -1):
            if path[:n] in self.lines:
                return f" (line {self.lines[path[:n]]})"
        return ""


def _name(path: tuple) -> str:
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in path).replace(".[", "[")


def _unknown(raw: Mapping, allowed, path: tuple, marks: _Marks, errors: list[str]) -> None:
    for key in raw:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), list(allowed), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(allowed))}"
            errors.append(f"{_name(path + (key,))}: unknown key{hint}{marks.at(path + (key,))}")


def _say(path: tuple, message: str, marks: _Marks) -> str:
    """``path: message (line N)``, without repeating a key the message already names."""
    first = message.split(" ", 1)[0].strip("'")
    named = bool(path) and str(path[-1]) in first
    return f"{message if named or not path else _name(path) + ': ' + message}{marks.at(path)}"


def _each(check: Callable[[dict], Any], raw: Mapping, path: tuple, marks: _Marks,
          errors: list[str]) -> None:
    """``check(raw)``; when it fails, ``check({key: value})`` for every key alone, so that
    every bad value is reported (a rule between keys is reported once, as a whole)."""
    try:
        check(dict(raw))
        return
    except (ConfigError, TypeError, ValueError) as exc:
        whole = _say(path, str(exc), marks)
    found = []
    for key, value in raw.items():
        try:
            check({key: value})
        except (ConfigError, TypeError, ValueError) as exc:
            found.append(_say(path + (key,), str(exc), marks))
    errors.extend(found or [whole])


def _section(name: str, raw: Any, path: tuple, marks: _Marks, errors: list[str]) -> None:
    from mobileprune.pipeline.prune import _settings

    cls = _classes()[name]
    if raw is None:
        return
    if not isinstance(raw, Mapping):
        errors.append(f"{_name(path)}: must be a mapping of settings{marks.at(path)}")
        return
    fields = {f.name for f in dataclasses.fields(cls)}
    _unknown(raw, fields, path, marks, errors)
    known = {k: v for k, v in raw.items() if k in fields}
    build = (lambda d: cls(**d)) if name == "schedule" else (lambda d: _settings(cls, d, name))
    _each(build, known, path, marks, errors)


def _targets(raw: Mapping, path: tuple, marks: _Marks, errors: list[str]) -> None:
    from mobileprune.sparsity.targets import PruneConfig

    part = {k: v for k, v in raw.items() if k in TARGET_KEYS}
    _each(PruneConfig.from_dict, part, path, marks, errors)


def validate(raw: Any, marks: _Marks | None = None) -> list[str]:
    """Every error of the pruning config ``raw`` (ADMM when it has no ``method`` or
    ``method: admm``, else a proximal method of seed 000); ``[]`` when it is valid."""
    marks = marks or _Marks(None)
    if not isinstance(raw, Mapping):
        return [f"a config must be a mapping of keys, got {type(raw).__name__}"]
    errors: list[str] = []
    if raw.get("method", "admm") == "admm":
        _admm(raw, marks, errors)
    else:
        _prox(raw, marks, errors)
    if not errors:  # the rules between keys, once every key is right
        errors += _whole(raw)
    return errors


def _admm(raw: Mapping, marks: _Marks, errors: list[str]) -> None:
    top = {"stages", "admm", "retrain", "method", *META_KEYS} | (set() if "stages" in raw else set(TARGET_KEYS))
    _unknown(raw, top, (), marks, errors)
    for sec in ("admm", "retrain"):
        _section(sec, raw.get(sec), (sec,), marks, errors)
    stages = raw.get("stages")
    if stages is None:
        _targets(raw, (), marks, errors)
        return
    if not isinstance(stages, list) or not stages:
        errors.append(f"stages: must be a non-empty list of pruning configs{marks.at(('stages',))}")
        return
    for i, st in enumerate(stages):
        path = ("stages", i)
        if not isinstance(st, Mapping):
            errors.append(f"{_name(path)}: must be a mapping{marks.at(path)}")
            continue
        _unknown(st, {*TARGET_KEYS, "admm", "retrain"}, path, marks, errors)
        _targets(st, path, marks, errors)
        for sec in ("admm", "retrain"):
            _section(sec, st.get(sec), path + (sec,), marks, errors)


def _prox(raw: Mapping, marks: _Marks, errors: list[str]) -> None:
    from mobileprune.sparsity.regularizers import METHODS

    _unknown(raw, {*PROX_KEYS, "types", "exclude", "layers", "name", "schedule", *META_KEYS},
             (), marks, errors)
    if raw.get("method") not in METHODS:
        errors.append(f"method: must be admm or one of {', '.join(METHODS)}, got "
                      f"{raw.get('method')!r}{marks.at(('method',))}")
    _section("schedule", raw.get("schedule"), ("schedule",), marks, errors)


def _whole(raw: Mapping) -> list[str]:
    from mobileprune.pipeline.prune import PipelineConfig, split_prox_config

    try:
        if raw.get("method", "admm") == "admm":
            PipelineConfig.from_dict({k: v for k, v in raw.items() if k != "method"})
        else:
            split_prox_config(raw)
    except (ConfigError, TypeError, ValueError) as exc:
        return [str(exc)]
    return []


def check_config(path: str | Path, method: str | None = None) -> dict[str, Any]:
    """Read and validate the config file ``path`` (a built-in name works too) for
    ``method`` (default: its ``method`` key, else ADMM); raise one :class:`ConfigError`
    listing every error, else return the config."""
    from mobileprune.sparsity.targets import config_path, load_yaml

    p = config_path(path)
    raw = load_yaml(p)
    if isinstance(raw, Mapping) and method is not None and "method" not in raw:
        raw = {**raw, "method": method} if method != "admm" else raw
    errors = validate(raw, _Marks(p.read_text()))
    if errors:
        raise ConfigError(f"{p}: {len(errors)} error(s): " + "; ".join(errors))
    return raw


def markdown() -> str:
    """``docs/config.md``: every key of every section with its default and meaning."""
    out = ["# Pruning configs", "", "Generated by `python -m mobileprune.pipeline.config` from the "
           "schema the pipelines validate with (`mobileprune config check FILE`; "
           "`mobileprune config show NAME` prints a built-in config).", ""]
    for title, table in (("Targets (ADMM stages and proximal configs)", TARGET_KEYS),
                         ("Proximal methods (seed 000), top level", PROX_KEYS),
                         ("Informative keys", META_KEYS)):
        out += [f"## {title}", "", "| key | meaning |", "|---|---|"]
        out += [f"| `{k}` | {v} |" for k, v in table.items()] + [""]
    for sec, cls in _classes().items():
        out += [f"## `{sec}:`", "", "| key | default | meaning |", "|---|---|---|"]
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else "-"
            out.append(f"| `{f.name}` | `{default}` | {DOCS.get(f.name, '')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
