"""Choosing prunable layers and their per-layer targets, with validation.

A pruning config says which layers are pruned and how much. It is a plain dict (or a
YAML file holding one)::

    default: 0.9              # fraction pruned for every prunable layer not listed
                              # below; omit it (or null) to leave those layers dense
    types: [Conv2d, Linear]   # which layer types are prunable (default: Linear,
                              # Conv1d, Conv2d)
    exclude: [fc2]            # names or patterns never pruned
    layers:                   # per-layer targets, first match wins after exact names
      conv1: 0.8              # fraction of the weights pruned, in [0, 1)
      fc1: {keep: 4000}       # or the number of weights kept
      "re:conv[2-9]": {sparsity: 0.95}
      "type:Linear": 0.97
      conv2: {structure: filter, sparsity: 0.5}      # structured: half the filters
      conv3: [{structure: filter, keep: 40},          # several sets at once
              {structure: channel, keep: 30}]

Structures (seed 003, section 2.4; the GEMM view of a conv weight ``(F, C, *k)`` is
``F`` rows by ``C*K`` columns): ``unstructured`` (single weights, the default),
``filter`` (whole filters / Linear rows = output neurons), ``channel`` (whole input
channels / Linear columns = input neurons) and ``shape`` (one ``(c, kh, kw)`` position
across all filters = a GEMM column). For structured sets ``sparsity`` is the fraction
of *groups* pruned and ``keep`` the number of groups kept. A list of targets puts
several constraint sets on one layer; each gets its own ADMM variables.

Keys of ``layers`` are an exact module name (``model.named_modules()``), ``re:<regex>``
(matched with :func:`re.fullmatch` against the module name) or ``type:<ClassName>``.
Exact names take precedence over patterns; among patterns the first listed wins.

Every problem raises :class:`~mobileprune.errors.ConfigError` naming it: an unknown
layer name (with the list of prunable layers), a pattern matching nothing, a fraction
outside ``[0, 1)``, a count larger than the layer, a model with no prunable layer.

The unit of a target is the layer's ``weight`` tensor; biases are not pruned (they are
counted in the report). ``sparsity: s`` keeps ``floor(n * (1 - s))`` weights, so the
achieved sparsity is never below the target.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from .errors import ConfigError

DEFAULT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)
TYPE_NAMES = {t.__name__: t for t in (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)}
STRUCTURES = ("unstructured", "filter", "channel", "shape")
_STRUCTURE_ALIASES = {"row": "filter", "neuron": "filter", "column": "channel", "input": "channel"}
_KNOWN_TOP = {"default", "types", "exclude", "layers", "name"}
_KNOWN_LAYER = {"sparsity", "keep", "structure"}


@dataclass(frozen=True)
class LayerTarget:
    """The resolved target of one prunable layer.

    Attributes:
        name: qualified module name, e.g. ``"features.0"``.
        param_name: qualified parameter name, e.g. ``"features.0.weight"``.
        shape: shape of the weight tensor.
        keep: number of weights (unstructured) or groups (structured) allowed to be
            nonzero (``alpha_i`` of seed 003).
        structure: ``"unstructured"``, ``"filter"``, ``"channel"`` or ``"shape"``; for
            the structured ones ``keep`` counts groups of :mod:`mobileprune.groups`.
    """

    name: str
    param_name: str
    shape: tuple[int, ...]
    keep: int
    structure: str = "unstructured"

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def units(self) -> int:
        """Number of weights (unstructured) or groups (structured) the target counts."""
        if self.structure == "unstructured":
            return self.numel
        from .groups import group_shape

        return group_shape(self.shape, self.structure)[0]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.keep / self.units

    def count(self, w: torch.Tensor) -> int:
        """Nonzero weights (unstructured) or nonzero groups (structured) of ``w``."""
        if self.structure == "unstructured":
            return int(torch.count_nonzero(w))
        from .groups import count_nonzero_groups

        return count_nonzero_groups(w, self.structure)


@dataclass
class PruneConfig:
    """A validated, model-independent pruning config (see the module docstring)."""

    default: list[dict[str, Any]] | None = None
    types: tuple[type[nn.Module], ...] = DEFAULT_TYPES
    exclude: tuple[str, ...] = ()
    layers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    name: str | None = None

    @classmethod
    def from_dict(cls, cfg: Mapping[str, Any] | "PruneConfig") -> "PruneConfig":
        """Parse and validate a config dict (raises :class:`ConfigError`)."""
        if isinstance(cfg, PruneConfig):
            return cfg
        if not isinstance(cfg, Mapping):
            raise ConfigError(f"a pruning config must be a mapping, got {type(cfg).__name__}")
        unknown = set(cfg) - _KNOWN_TOP
        if unknown:
            raise ConfigError(
                f"unknown key(s) {sorted(unknown)} in pruning config; "
                f"allowed keys are {sorted(_KNOWN_TOP)}"
            )
        default = cfg.get("default")
        default = None if default is None else _parse_targets("default", default)
        types = parse_types(cfg.get("types"))
        exclude = cfg.get("exclude") or ()
        if isinstance(exclude, str):
            exclude = (exclude,)
        if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
            raise ConfigError(f"'exclude' must be a list of layer names or patterns, got {exclude!r}")
        layers_raw = cfg.get("layers") or {}
        if not isinstance(layers_raw, Mapping):
            raise ConfigError("'layers' must be a mapping of layer name/pattern -> target")
        layers = {str(k): _parse_targets(str(k), v) for k, v in layers_raw.items()}
        for key in list(layers) + list(exclude):
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as exc:
                    raise ConfigError(f"invalid regular expression in {key!r}: {exc}") from None
            if key.startswith("type:") and key[5:] not in TYPE_NAMES:
                raise ConfigError(f"unknown layer type in {key!r}; supported: {sorted(TYPE_NAMES)}")
        if default is None and not layers:
            raise ConfigError("the pruning config prunes nothing: give 'default' or 'layers'")
        return cls(default=default, types=types, exclude=tuple(exclude), layers=layers,
                   name=cfg.get("name"))

    @classmethod
    def from_yaml(cls, path: str | Path) -> "PruneConfig":
        """Read a config from a YAML file."""
        return cls.from_dict(load_yaml(path))

    def to_dict(self) -> dict[str, Any]:
        """A plain, YAML/JSON-serialisable form that :meth:`from_dict` reads back."""
        out: dict[str, Any] = {
            "default": None if self.default is None else [dict(d) for d in self.default],
            "types": [t.__name__ for t in self.types],
            "exclude": list(self.exclude),
            "layers": {k: [dict(d) for d in v] for k, v in self.layers.items()},
        }
        if self.name is not None:
            out["name"] = self.name
        return out


def _yaml_loader():
    """``yaml.SafeLoader`` that also reads ``1e-3`` and ``5E+2`` as floats (YAML 1.2).

    PyYAML implements YAML 1.1, where a float needs a dot, so ``lr: 1e-3`` would
    silently become the string ``"1e-3"``.
    """
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return Loader


def load_yaml(path: str | Path) -> Any:
    """Load a YAML file, with a clear error for missing or malformed files."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        return yaml.load(p.read_text(), Loader=_yaml_loader())
    except yaml.YAMLError as exc:
        raise ConfigError(f"malformed YAML in {p}: {exc}") from None


def builtin_configs() -> list[str]:
    """Names of the configs shipped with mobileprune (``src/mobileprune/configs``)."""
    from importlib import resources

    return sorted(x.name[:-5] for x in (resources.files("mobileprune") / "configs").iterdir()
                  if x.name.endswith(".yaml"))


def config_path(name_or_path: str | Path) -> Path:
    """The YAML file of a config: ``name_or_path`` if it is a file, else the built-in
    config of that name (:func:`builtin_configs`); :class:`ConfigError` otherwise."""
    from importlib import resources

    p = Path(name_or_path)
    if p.is_file():
        return p
    ref = resources.files("mobileprune") / "configs" / f"{name_or_path}.yaml"
    if ref.is_file():
        return Path(str(ref))
    raise ConfigError(f"config {str(name_or_path)!r} is neither a file nor a built-in config "
                      f"({', '.join(builtin_configs())})")


def load_config(name_or_path: str | Path) -> Any:
    """Load a pruning or pipeline config: a YAML file, or a built-in config by name (e.g.
    ``"lenet5-71x"``, ``"itracker-table5"``), ready for :class:`ADMMPruner`,
    :func:`admm_prune` or :class:`PruneConfig`."""
    return load_yaml(config_path(name_or_path))


def _parse_targets(key: str, value: Any) -> list[dict[str, Any]]:
    """One target or a list of targets (several constraint sets on one layer)."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ConfigError(f"target list of {key!r} is empty")
        specs = [_parse_target(key, v) for v in value]
        structures = [s["structure"] for s in specs]
        if len(set(structures)) != len(structures):
            raise ConfigError(f"target list of {key!r} repeats a structure: {structures}")
        return specs
    return [_parse_target(key, value)]


def _parse_target(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        raise ConfigError(f"target of {key!r} must be a number or a mapping, got {value!r}")
    if isinstance(value, (int, float)):
        value = {"sparsity": value}
    if not isinstance(value, Mapping):
        raise ConfigError(f"target of {key!r} must be a number or a mapping, got {value!r}")
    unknown = set(value) - _KNOWN_LAYER
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in target of {key!r}; allowed: {sorted(_KNOWN_LAYER)}")
    if ("sparsity" in value) == ("keep" in value):
        raise ConfigError(f"target of {key!r} needs exactly one of 'sparsity' or 'keep'")
    out: dict[str, Any] = {}
    if "sparsity" in value:
        s = value["sparsity"]
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not (0.0 <= s < 1.0):
            raise ConfigError(
                f"sparsity of {key!r} must be a fraction pruned in [0, 1), got {s!r}"
            )
        out["sparsity"] = float(s)
    else:
        k = value["keep"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ConfigError(f"'keep' of {key!r} must be a positive integer count, got {k!r}")
        out["keep"] = k
    structure = value.get("structure", "unstructured")
    structure = _STRUCTURE_ALIASES.get(structure, structure)
    if structure not in STRUCTURES:
        raise ConfigError(f"unknown structure {structure!r} for {key!r}; supported: {list(STRUCTURES)}")
    out["structure"] = structure
    return out


def parse_types(raw: Any) -> tuple[type[nn.Module], ...]:
    """Validate a ``types:`` entry (a type name or a list of them); ``None``: the defaults."""
    if raw is None:
        return DEFAULT_TYPES
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, (list, tuple)):
        raise ConfigError(f"'types' must be a list of layer type names, got {raw!r}")
    bad = [t for t in raw if not isinstance(t, str) or t not in TYPE_NAMES]
    if bad:
        raise ConfigError(f"unknown layer type(s) {bad} in 'types'; supported: {sorted(TYPE_NAMES)}")
    return tuple(TYPE_NAMES[t] for t in raw)


def matches(key: str, name: str, module: nn.Module) -> bool:
    """Whether config key ``key`` (exact name, ``re:<regex>`` or ``type:<Class>``)
    selects module ``module`` named ``name``."""
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    if key.startswith("type:"):
        return type(module).__name__ == key[5:]
    return key == name


def prunable_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> dict[str, nn.Module]:
    """Modules of ``model`` whose type is in ``types`` and that own a ``weight`` tensor."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, types) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def resolve_targets(model: nn.Module, config: Mapping[str, Any] | PruneConfig | str | Path) -> list[LayerTarget]:
    """Resolve ``config`` against ``model`` into one :class:`LayerTarget` per pruned layer.

    ``config`` is a dict, a :class:`PruneConfig` or the path of a YAML file. The result
    follows the model's module order. Raises :class:`ConfigError` on any mismatch.
    """
    if isinstance(config, (str, Path)):
        cfg = PruneConfig.from_yaml(config)
    else:
        cfg = PruneConfig.from_dict(config)
    candidates = prunable_layers(model, cfg.types)
    if not candidates:
        all_prunable = prunable_layers(model, tuple(TYPE_NAMES.values()))
        raise ConfigError(
            f"model {type(model).__name__} has no prunable layer of types "
            f"{[t.__name__ for t in cfg.types]}"
            + (f" (it has {sorted(all_prunable)})" if all_prunable else "")
        )
    modules = dict(model.named_modules())
    # Exact names must name a prunable layer.
    for key in cfg.layers:
        if key.startswith(("re:", "type:")):
            continue
        if key not in candidates:
            why = (f"it is a {type(modules[key]).__name__}, not one of "
                   f"{[t.__name__ for t in cfg.types]}") if key in modules else "no such module"
            raise ConfigError(
                f"unknown layer {key!r} in pruning config ({why}); prunable layers are: "
                f"{', '.join(candidates)}"
            )
    used: set[str] = set()
    out: list[LayerTarget] = []
    for name, module in candidates.items():
        if any(matches(p, name, module) for p in cfg.exclude):
            continue
        spec = cfg.layers.get(name)
        if spec is not None:
            used.add(name)
        else:
            for key, val in cfg.layers.items():
                if key.startswith(("re:", "type:")) and matches(key, name, module):
                    spec = val
                    used.add(key)
                    break
        if spec is None:
            spec = cfg.default
        if spec is None:
            continue
        out.extend(_make_target(name, module, sp) for sp in spec)
    for key in cfg.layers:
        if key.startswith(("re:", "type:")) and key not in used:
            if not any(matches(key, n, m) for n, m in candidates.items()):
                raise ConfigError(
                    f"pattern {key!r} in pruning config matches no prunable layer; "
                    f"prunable layers are: {', '.join(candidates)}"
                )
    if not out:
        raise ConfigError("the pruning config selects no layer of this model")
    return out


def _make_target(name: str, module: nn.Module, spec: Mapping[str, Any]) -> LayerTarget:
    shape = tuple(module.weight.shape)
    structure = spec.get("structure", "unstructured")
    if structure == "unstructured":
        n, unit = math.prod(shape), "weights"
    else:
        from .groups import group_shape

        if len(shape) < 2:
            raise ConfigError(f"structure {structure!r} needs a weight of >= 2 dims; {name!r} has {shape}")
        n, unit = group_shape(shape, structure)[0], f"{structure} groups"
    if "keep" in spec:
        keep = spec["keep"]
        if keep > n:
            raise ConfigError(
                f"layer {name!r} has {n} {unit} but the config keeps {keep}"
            )
    else:
        keep = math.floor(n * (1.0 - spec["sparsity"]) + 1e-9)
        if keep < 1:
            raise ConfigError(
                f"sparsity {spec['sparsity']} on layer {name!r} ({n} {unit}) keeps no {unit[:-1]}; "
                "give a smaller sparsity or a 'keep' count"
            )
    return LayerTarget(name=name, param_name=f"{name}.weight" if name else "weight",
                       shape=shape, keep=int(keep), structure=structure)
