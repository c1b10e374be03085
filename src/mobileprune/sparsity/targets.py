"""Choosing prunable weights and their per-weight targets, with validation.

A pruning config says which weights are pruned and how much. It is a plain dict (or a
YAML file holding one)::

    default: 0.9              # fraction pruned for every selected weight not listed
                              # below; omit it (or null) to leave those weights dense
    types: [Conv2d, Linear]   # which layer types are prunable (default: all of
                              # SUPPORTED_TYPES, see below)
    exclude: [fc2]            # names or patterns never pruned
    layers:                   # per-weight targets, first match wins after exact names
      conv1: 0.8              # fraction of the weights pruned, in [0, 1)
      fc1: {keep: 4000}       # or the number of weights kept
      "re:conv[2-9]": {sparsity: 0.95}
      "lstm.weight_hh_*": 0.95                        # a glob
      "type:Linear": 0.97
      conv2: {structure: filter, sparsity: 0.5}      # structured: half the filters
      conv3: [{structure: filter, keep: 40},          # several sets at once
              {structure: channel, keep: 30}]

**The prunable unit is one weight parameter** of a supported layer (a :class:`WeightSlot`).
It is named by the module's qualified name for layers with one weight (``conv1``,
``features.0``, ``emb``, ``attn.out_proj``: the ``.weight`` suffix is left out) and by
the qualified parameter name for layers with several (``lstm.weight_ih_l0``,
``lstm.weight_hh_l1_reverse``, ``lstm.weight_hr_l0``, ``attn.in_proj_weight``,
``attn.q_proj_weight``). Supported layer types (:data:`SUPPORTED_TYPES`): Linear (on
an input of any rank), Conv1d/2d/3d, ConvTranspose1d/2d/3d, RNN, LSTM, GRU (every
``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*``), MultiheadAttention (its
``in_proj_weight`` or ``q/k/v_proj_weight``; ``out_proj`` is a Linear) and Embedding.

**Default selection**: ``types`` defaults to every supported type, and ``default``
applies to every weight of those types except position embeddings (an Embedding whose
own name starts with ``pos``, e.g. ``pos_embed``, ``position_embeddings``), which only
an exact name selects. Never pruned, whatever the config: biases (``bias``,
``bias_ih_l*``, ``in_proj_bias``, ``bias_k``...), normalisation layers (BatchNorm,
LayerNorm, GroupNorm, InstanceNorm, RMSNorm) and any parameter that is not the weight of
a supported layer (``cls_token``, a bare ``pos_embed`` parameter, PReLU...).
:func:`explain` (and :func:`mobileprune.sparsity.report.layer_report`) lists every parameter of
the model with its target or the reason it is left dense.

Keys of ``layers`` (and of ``exclude``): an exact weight name (the parameter name with
``.weight`` also works), the name of a multi-weight module (``lstm``: all its weights;
``attn``: its ``in_proj_weight`` or ``q/k/v_proj_weight`` and its ``out_proj``),
``re:<regex>`` (:func:`re.fullmatch` against the weight name or the parameter name), a
glob with ``*``, ``?`` or ``[...]`` (:func:`fnmatch.fnmatchcase`, the same two names:
``encoder.*.in_proj_weight``, ``*.out_proj.weight``) or
``type:<ClassName>`` (the weight's layer is an instance of that supported class:
``type:Linear`` also matches ``attn.out_proj``). Exact weight names take precedence,
then module names, then patterns in the order listed.

Structures (seed 003, section 2.4; the GEMM view of a conv weight ``(F, C, *k)`` is
``F`` rows by ``C*K`` columns): ``unstructured`` (single weights, the default),
``filter`` (an output unit), ``channel`` (an input unit), ``shape`` (one ``(c, *k)``
position across all filters = a GEMM column), ``block`` (4 consecutive filters at one
GEMM column, a 4x1 tile that the sparse engine runs with its blocked kernel: faster than
``unstructured`` at the same sparsity; a ragged last tile is padded and counts as one
group) and ``head`` (one attention head). For
structured sets ``sparsity`` is the fraction of *groups* pruned and ``keep`` the number
of groups kept. A list of targets puts several constraint sets on one weight; each gets
its own ADMM variables. What a group is, per layer type: seed 003 (section 2.4) defines
``filter`` as the GEMM rows producing one output unit and ``channel`` as the weights
reading one input unit; a recurrent layer computes all its gates with one GEMM per input
(``x`` and ``h``) whose rows are the gate blocks stacked, so the rows producing hidden
unit ``h`` are its row in every gate block (one hidden unit is one group):

========================= ============================== ===============================
weight                    ``filter``                     ``channel``
========================= ============================== ===============================
Linear / Conv (F, C, *k)  a filter / output neuron       an input channel / feature
ConvTranspose (C, F, *k)  output channel ``w[:, f]``     input channel ``w[c]``
RNN ``weight_ih/hh``      a hidden unit ``h``: its row   a column: input feature
(G*H, C), G gates         in every gate block (rows      (``ih_l0``), unit of the layer
                          ``g*H + h``, g < G; LSTM       below, both directions
                          i,f,g,o: G=4; GRU r,z,n: 3)    (``ih_l1+``), previous state
RNN ``weight_hr`` (P, H)  a projected unit (row)         a hidden unit (column)
Embedding (N, D)          one embedding dimension        one token: its embedding row
                          ``w[:, d]`` (an output)        ``w[n]`` (an input, one-hot)
========================= ============================== ===============================

``shape`` and ``block`` exist for Linear and Conv only (``block`` not on grouped or
depthwise convs). ``head`` exists on attention weights only:
head ``j`` (``d = embed_dim / num_heads`` rows or columns) is its rows of q, k and v in
``in_proj_weight`` (rows ``b*E + j*d + i``, b < 3, i < d), its rows of
``q/k/v_proj_weight``, its columns of ``out_proj``; the other structures of ``out_proj``
are those of a Linear, and ``in_proj_weight`` / ``q/k/v_proj_weight`` take ``channel``
(an input feature) but not ``filter`` (a single q, k or v feature does not remove
anything). The head sets of one MultiheadAttention, and the hidden-unit (``filter``)
sets of ``weight_ih_l<k>`` and ``weight_hh_l<k>`` of one layer and direction, are
projected jointly by :class:`~mobileprune.sparsity.admm.ADMMPruner` (each weight within its own
``keep``), so the same heads and hidden units go from every weight. Grouped
ConvTranspose takes ``unstructured`` only. A structure a weight does not take raises
:class:`ConfigError` naming the weight and the structures it takes.

Nothing is silent. Every problem raises :class:`~mobileprune.errors.ConfigError` naming
it: an unknown name or a pattern matching no prunable weight (with the closest names,
:func:`closest_names`, and the list of prunable weights), a config that selects no
weight of the model (with the reasons), a model with no prunable weight, a structure
the weight does not take, a fraction outside ``[0, 1)``, a count larger than the
weight. A target that keeps every unit (``sparsity: 0``, or ``keep`` = the size) prunes
nothing and raises a ``UserWarning`` naming it (:func:`warn_no_op`); ``exclude`` leaves
a weight dense without one.

``sparsity: s`` keeps ``floor(n * (1 - s))`` weights (or groups), so the achieved
sparsity is never below the target; for ``block`` it keeps ``floor(numel * (1 - s) / 4)``
tiles, the weight budget of the same unstructured target (the padded tiles of a layer
whose filter count is not a multiple of 4 add nothing to it). Tied weights (one parameter used by two layers)
are one unit, under the first name.
"""

from __future__ import annotations

import difflib
import fnmatch
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from mobileprune.errors import ConfigError
from mobileprune.math.groups import BLOCK_ROWS

#: Layer types with prunable weights (``types:`` and ``type:`` keys name them).
SUPPORTED_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ConvTranspose3d, nn.RNN, nn.LSTM, nn.GRU, nn.MultiheadAttention, nn.Embedding)
#: The default ``types``: every supported type.
DEFAULT_TYPES: tuple[type[nn.Module], ...] = SUPPORTED_TYPES
#: Layers whose weight is ``(out, in, *k)`` with one weight per module (unit caps, compaction).
GEMM_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
TYPE_NAMES = {t.__name__: t for t in SUPPORTED_TYPES}
NORM_TYPES: tuple[type[nn.Module], ...] = tuple(
    t for t in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, getattr(nn, "RMSNorm", None))
    if t is not None)
STRUCTURES = ("unstructured", "filter", "channel", "shape", "block", "head")
_STRUCTURE_ALIASES = {"row": "filter", "neuron": "filter", "column": "channel", "input": "channel",
                      "unit": "filter", "hidden": "filter"}
_KNOWN_TOP = {"default", "types", "exclude", "layers", "name"}
_KNOWN_LAYER = {"sparsity", "keep", "structure"}
_PATTERN_CHARS = "*?["


@dataclass(frozen=True)
class LayerTarget:
    """The resolved target of one prunable weight.

    Attributes:
        name: the weight's name (module docstring), e.g. ``"features.0"`` or
            ``"lstm.weight_hh_l0"``.
        param_name: qualified parameter name, e.g. ``"features.0.weight"``.
        shape: shape of the weight tensor.
        keep: number of weights (unstructured) or groups (structured) allowed to be
            nonzero (``alpha_i`` of seed 003).
        structure: ``"unstructured"``, ``"filter"``, ``"channel"``, ``"shape"``,
            ``"block"`` or ``"head"``; for the structured ones ``keep`` counts groups.
        module: qualified name of the module owning the weight (default: ``name``).
        grouping, blocks, unit: the grouping of :func:`mobileprune.math.groups.to_unit_groups`
            that makes one group per unit of ``structure`` (default: ``structure``, 1, 1).
        joint: label shared by the targets whose groups are the same units and are
            projected together (the heads of one MultiheadAttention, the hidden units of
            one recurrent layer and direction), or ``None``.
    """

    name: str
    param_name: str
    shape: tuple[int, ...]
    keep: int
    structure: str = "unstructured"
    module: str | None = None
    grouping: str | None = None
    blocks: int = 1
    unit: int = 1
    joint: str | None = None

    @property
    def module_name(self) -> str:
        return self.name if self.module is None else self.module

    @property
    def plain(self) -> bool:
        """Whether the groups are those of :func:`mobileprune.math.groups.to_groups` of
        ``structure`` on a layer's own ``weight`` (Linear, Conv)."""
        return (self.grouping in (None, self.structure) and self.blocks == 1 and self.unit == 1
                and self.module_name == self.name)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def _layout(self) -> tuple[str, int, int]:
        return self.grouping or self.structure, self.blocks, self.unit

    @property
    def units(self) -> int:
        """Number of weights (unstructured) or groups (structured) the target counts."""
        if self.structure == "unstructured":
            return self.numel
        from mobileprune.math.groups import unit_group_shape

        return unit_group_shape(self.shape, *self._layout())[0]

    @property
    def sparsity(self) -> float:
        return 1.0 - self.keep / self.units

    def to_groups(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` (or a mask of its shape) as ``(groups, n)``, one group per unit."""
        from mobileprune.math.groups import to_unit_groups

        return to_unit_groups(w, *self._layout())

    def from_groups(self, g: torch.Tensor) -> torch.Tensor:
        """Exact inverse of :meth:`to_groups`."""
        from mobileprune.math.groups import from_unit_groups

        grouping, blocks, unit = self._layout()
        return from_unit_groups(g, grouping, self.shape, blocks, unit)

    def count(self, w: torch.Tensor) -> int:
        """Nonzero weights (unstructured) or nonzero groups (structured) of ``w``."""
        if self.structure == "unstructured":
            return int(torch.count_nonzero(w))
        return int((self.to_groups(w) != 0).any(dim=1).sum())


@dataclass
class WeightSlot:
    """One prunable weight of a model: a (module, parameter) pair (module docstring).

    ``structures`` maps each structure the weight takes to its ``(grouping, blocks,
    unit)`` layout (:func:`mobileprune.math.groups.to_unit_groups`); ``notes`` says why a
    structure is not taken, where that needs saying; ``joint`` maps a structure to the
    label of the weights whose groups of it are the same units (``LayerTarget.joint``);
    ``owner`` is the multi-weight module the weight belongs to (``lstm``, ``attn``).
    """

    name: str
    param_name: str
    module_name: str
    attr: str
    module: nn.Module = field(repr=False, compare=False)
    structures: dict[str, tuple[str, int, int]]
    notes: dict[str, str] = field(default_factory=dict)
    position: bool = False
    joint: dict[str, str] = field(default_factory=dict)
    owner: str | None = None

    @property
    def type_name(self) -> str:
        return type(self.module).__name__

    @property
    def weight(self) -> torch.Tensor:
        return getattr(self.module, self.attr)

    def takes(self) -> list[str]:
        return ["unstructured", *self.structures]


_GEMM = {"filter": ("filter", 1, 1), "channel": ("channel", 1, 1), "shape": ("shape", 1, 1),
         "block": ("block", 1, 1)}
_GEMM_2D = {"filter": _GEMM["filter"], "channel": _GEMM["channel"]}
#: weights stored (inputs, outputs, ...): ConvTranspose (C, F, *k), Embedding (N, D)
_TRANSPOSED = {"filter": ("channel", 1, 1), "channel": ("filter", 1, 1)}
_NO_SHAPE = "'shape' (a GEMM column of the seed's conv view) exists for Linear and Conv weights only"
_NO_BLOCK = "'block' (4 filters at one GEMM column, for the sparse engine) exists for Linear and Conv weights only"
_GEMM_ONLY = {"shape": _NO_SHAPE, "block": _NO_BLOCK}
_GROUPED_BLOCK = ("'block' tiles 4 consecutive filters, which a grouped or depthwise conv spreads over "
                  "groups reading different inputs; use 'unstructured' or 'filter'")


def _qual(prefix: str, attr: str) -> str:
    return f"{prefix}.{attr}" if prefix else attr


def _slot(mname: str, m: nn.Module, attr: str, structures, notes=None, *, own_name: bool = False,
          joint: dict[str, str] | None = None) -> WeightSlot | None:
    p = getattr(m, attr, None)
    if not isinstance(p, torch.Tensor) or isinstance(p, nn.parameter.UninitializedParameter):
        return None
    name = mname if own_name else _qual(mname, attr)
    pos = isinstance(m, nn.Embedding) and mname.rpartition(".")[2].lower().startswith("pos")
    return WeightSlot(name, _qual(mname, attr), mname, attr, m, dict(structures), dict(notes or {}),
                      pos, dict(joint or {}), None if own_name else mname)


def _rnn_slot(mname: str, m: nn.RNNBase, attr: str, gates: int) -> WeightSlot | None:
    """A recurrent weight; the hidden units of ``weight_ih_l<k>`` and ``weight_hh_l<k>``
    (same layer and direction) are one joint set of units."""
    if attr.startswith("weight_hr"):  # projection (P, H): rows are projected units
        return _slot(mname, m, attr, _GEMM_2D, _GEMM_ONLY)
    layer = attr.split("_", 2)[2]  # "l0", "l1_reverse"
    return _slot(mname, m, attr, {"filter": ("filter", gates, 1), "channel": _GEMM["channel"]},
                 _GEMM_ONLY, joint={"filter": f"{mname}:{layer}"})


def _module_slots(mname: str, m: nn.Module) -> list[WeightSlot]:
    """The weight slots of one module (none for an unsupported type)."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        if m.groups == 1:
            return [_slot(mname, m, "weight", _TRANSPOSED, _GEMM_ONLY, own_name=True)]
        note = "a grouped ConvTranspose weight mixes the output channels of every group in dim 1"
        return [_slot(mname, m, "weight", {}, dict.fromkeys(("filter", "channel", "shape", "block"), note),
                      own_name=True)]
    if isinstance(m, nn.modules.conv._ConvNd) and m.groups > 1:  # the engine blocks rows per group
        return [_slot(mname, m, "weight", {k: v for k, v in _GEMM.items() if k != "block"},
                      {"block": _GROUPED_BLOCK}, own_name=True)]
    if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
        return [_slot(mname, m, "weight", _GEMM, own_name=True)]
    if isinstance(m, nn.Embedding):  # (N, D): a lookup of one-hot inputs, transposed GEMM
        return [_slot(mname, m, "weight", _TRANSPOSED, _GEMM_ONLY, own_name=True)]
    if isinstance(m, nn.RNNBase):
        gates = {"LSTM": 4, "GRU": 3}.get(m.mode, 1)
        return [_rnn_slot(mname, m, a, gates) for a in m._flat_weights_names if a.startswith("weight")]
    if isinstance(m, nn.MultiheadAttention):
        d = m.head_dim
        notes = {"filter": "one row of q, k or v removes nothing; prune whole heads with 'head'",
                 **_GEMM_ONLY}
        if m.in_proj_weight is not None:
            layouts = {"in_proj_weight": ("filter", 3, d)}
        else:
            layouts = {a: ("filter", 1, d) for a in ("q_proj_weight", "k_proj_weight", "v_proj_weight")}
        return [_slot(mname, m, a, {"head": lay, "channel": _GEMM["channel"]}, notes,
                      joint={"head": f"{mname}:head"})
                for a, lay in layouts.items()]
    return []


def weight_slots(model: nn.Module) -> dict[str, WeightSlot]:
    """Every prunable weight of ``model`` (any supported type), in module order.

    A parameter shared by several layers is listed once, under its first name (the
    one ``model.named_parameters()`` uses).
    """
    out: dict[str, WeightSlot] = {}
    seen: set[int] = set()
    for mname, m in model.named_modules():
        for slot in _module_slots(mname, m):
            if slot is None or id(slot.weight) in seen:
                continue
            seen.add(id(slot.weight))
            out[slot.name] = slot
    for mname, m in model.named_modules():  # out_proj (a Linear) takes heads too
        proj = out.get(_qual(mname, "out_proj")) if isinstance(m, nn.MultiheadAttention) else None
        if proj is not None and proj.module is m.out_proj:
            proj.structures["head"] = ("channel", 1, m.head_dim)
            proj.joint["head"], proj.owner = f"{mname}:head", mname
    return out


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
        types, exclude, layers_raw = parse_selection(cfg, "target")
        layers = {k: _parse_targets(k, v) for k, v in layers_raw.items()}
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
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"malformed YAML in {p}{where}: {what}") from None


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


def parse_selection(cfg: Mapping[str, Any], spec: str
                    ) -> tuple[tuple[type[nn.Module], ...], tuple[str, ...], dict[str, Any]]:
    """The layer selection of a config, checked: ``(types, exclude, layers)`` from its
    ``types`` (:func:`parse_types`), ``exclude`` (a name or pattern, or a list of them)
    and ``layers`` (a mapping of layer name or pattern -> ``spec``, values unchecked)
    keys; every ``re:`` pattern must compile and every ``type:`` key name a known type.
    The one reader of these keys for ADMM targets and proximal regularisers alike."""
    types = parse_types(cfg.get("types"))
    exclude = cfg.get("exclude") or ()
    if isinstance(exclude, str):
        exclude = (exclude,)
    if not isinstance(exclude, (list, tuple)) or not all(isinstance(e, str) for e in exclude):
        raise ConfigError(f"'exclude' must be a list of layer names or patterns, got {exclude!r}")
    layers = cfg.get("layers") or {}
    if not isinstance(layers, Mapping):
        raise ConfigError(f"'layers' must be a mapping of layer name/pattern -> {spec}")
    layers = {str(k): v for k, v in layers.items()}
    for what, keys in (("'layers'", layers), ("'exclude'", exclude)):
        for key in keys:
            if key.startswith("re:"):
                try:
                    re.compile(key[3:])
                except re.error as exc:
                    raise ConfigError(f"invalid regular expression in {key!r} ({what}): {exc}") from None
            elif key.startswith("type:") and key[5:] not in TYPE_NAMES:
                raise ConfigError(f"unknown layer type in {key!r} ({what}); supported: {sorted(TYPE_NAMES)}")
    return types, tuple(exclude), layers


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


def _is_type(module: nn.Module, type_name: str) -> bool:
    return any(c.__name__ == type_name for c in type(module).__mro__)


def is_pattern(key: str) -> bool:
    """Whether a config key is a pattern (``re:``, ``type:`` or a glob), not a name."""
    return key.startswith(("re:", "type:")) or any(c in key for c in _PATTERN_CHARS)


def matches(key: str, name: str, module: nn.Module) -> bool:
    """Whether config key ``key`` (exact name, ``re:<regex>``, glob or ``type:<Class>``)
    selects the weight ``name`` of ``module`` (patterns only for a module name)."""
    if key.startswith("re:"):
        return re.fullmatch(key[3:], name) is not None
    if key.startswith("type:"):
        return _is_type(module, key[5:])
    if any(c in key for c in _PATTERN_CHARS):
        return fnmatch.fnmatchcase(name, key)
    return key == name


def matches_slot(key: str, slot: WeightSlot) -> bool:
    """Whether pattern ``key`` selects ``slot``: a glob or ``re:`` key against its weight
    name or its parameter name (``*.out_proj.weight`` and ``*.out_proj`` both work), a
    ``type:`` key against its layer."""
    return (matches(key, slot.name, slot.module)
            or (slot.param_name != slot.name and matches(key, slot.param_name, slot.module)))


def closest_names(key: str, names: Iterable[str], n: int = 3) -> list[str]:
    """The (at most ``n``) ``names`` most similar to config key ``key``, best first.

    A glob or ``re:`` key: the names containing the most characters of its literal
    fragments (``encoder.*.in_proj`` -> ``encoder.`` and ``.in_proj``), ties in model
    order; an exact key, or a pattern no name shares a fragment with:
    :func:`difflib.get_close_matches` (ratio >= 0.5) of the key without its prefix.
    """
    names = list(dict.fromkeys(names))
    probe = key[3:] if key.startswith("re:") else key
    if is_pattern(key):
        parts = [f for f in re.split(r"[*?\[\]().+^$|\\{}]+" if key.startswith("re:") else r"[*?\[\]]+",
                                     probe) if f]
        score = {s: sum(len(f) for f in parts if f in s) for s in names}
        best = [s for s in sorted(names, key=lambda s: -score[s]) if score[s] > 0][:n]
        if best:
            return best
        probe = "".join(parts)
    return difflib.get_close_matches(probe, names, n=n, cutoff=0.5)


def _listing(key: str, candidates: Mapping[str, WeightSlot], limit: int = 30) -> str:
    """``closest names: ...; prunable layers are: ...`` for an error about ``key`` (for a
    ``type:`` key: the types of the prunable weights instead of the closest names)."""
    if key.startswith("type:"):
        hint = f"types of the prunable weights: {', '.join(dict.fromkeys(s.type_name for s in candidates.values()))}; "
    else:
        close = closest_names(key, [x for s in candidates.values() for x in (s.name, s.param_name)])
        hint = f"closest names: {', '.join(close)}; " if close else ""
    names = list(candidates)
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return f"{hint}prunable layers are: {', '.join(names[:limit])}{more}"


def _exact(key: str, slot: WeightSlot) -> bool:
    return key in (slot.name, slot.param_name)


def _module_key(key: str, slot: WeightSlot) -> bool:
    """``key`` names the multi-weight module owning ``slot`` (``lstm``; ``attn`` owns
    its ``in_proj_weight`` or ``q/k/v_proj_weight`` and its ``out_proj``)."""
    return key == slot.owner


def prunable_layers(model: nn.Module, types: tuple[type[nn.Module], ...] = DEFAULT_TYPES) -> dict[str, nn.Module]:
    """Modules of ``model`` whose type is in ``types`` and that own a ``weight`` tensor
    (layers with one prunable weight; :func:`weight_slots` lists every weight)."""
    return {
        name: m
        for name, m in model.named_modules()
        if isinstance(m, types) and isinstance(getattr(m, "weight", None), torch.Tensor)
    }


def _load(config: Mapping[str, Any] | PruneConfig | str | Path) -> PruneConfig:
    if isinstance(config, (str, Path)):
        return PruneConfig.from_yaml(config)
    return PruneConfig.from_dict(config)


def check_name(key: str, model: nn.Module, slots: Mapping[str, WeightSlot],
                candidates: Mapping[str, WeightSlot], types, what: str = "pruning config") -> None:
    """Raise :class:`ConfigError` unless exact key ``key`` names a candidate weight."""
    if any(_exact(key, s) or _module_key(key, s) for s in candidates.values()):
        return
    modules = dict(model.named_modules())
    params = {n: p for n, p in model.named_parameters()}
    slot = next((s for s in slots.values() if _exact(key, s) or _module_key(key, s)), None)
    if slot is not None:
        why = (f"it is a {slot.type_name}, not one of {[t.__name__ for t in types]}" if not
               isinstance(slot.module, types) else "excluded by 'types'")
    elif key in modules:
        why = f"it is a {type(modules[key]).__name__}, not one of {[t.__name__ for t in types]}"
    elif key in params:
        why = dense_reason(key, model)
    elif key in TYPE_NAMES:
        why = f"no module or parameter has that name; to select by type write 'type:{key}'"
    else:
        why = "no such module or parameter"
    raise ConfigError(f"unknown layer {key!r} in {what} ({why}); {_listing(key, candidates)}")


def select(model: nn.Module, layers: Mapping[str, Any], exclude: Iterable[str], has_default: bool,
           types: tuple[type[nn.Module], ...], what: str = "pruning config"
           ) -> tuple[dict[str, tuple[WeightSlot, str | None]], dict[str, str]]:
    """The weights a config selects, shared by :func:`resolve_targets` and
    :class:`mobileprune.sparsity.proximal.ProximalPruner`.

    Returns ``(chosen, reasons)``: ``chosen[name] = (slot, key)`` with the ``layers``
    key that selects it (``None``: the default), in model order; ``reasons[name]`` why
    a weight of ``model`` is not chosen. Raises :class:`ConfigError` for an exact key
    (of ``layers`` or ``exclude``) naming no candidate weight and a pattern matching none.
    """
    slots = weight_slots(model)
    exclude = tuple(exclude)
    check_keys(model, layers, types, what, slots)
    check_keys(model, exclude, types, "'exclude'", slots)
    chosen: dict[str, tuple[WeightSlot, str | None]] = {}
    reasons: dict[str, str] = {}
    for name, slot in slots.items():
        key = _pick(slot, layers)
        why = _why_not(slot, key, exclude, has_default, types)
        if why is None:
            chosen[name] = (slot, key)
        else:
            reasons[name] = why
    return chosen, reasons


def check_keys(model: nn.Module, keys: Iterable[str], types: tuple[type[nn.Module], ...],
               what: str = "pruning config", slots: Mapping[str, WeightSlot] | None = None) -> None:
    """Raise :class:`ConfigError` unless ``model`` has a weight of ``types`` and every
    exact key names one (:func:`check_name`) and every pattern matches one."""
    slots = weight_slots(model) if slots is None else slots
    candidates = {n: s for n, s in slots.items() if isinstance(s.module, types)}
    if not candidates:
        raise ConfigError(
            f"model {type(model).__name__} has no prunable layer of types {[t.__name__ for t in types]}"
            + (f" (it has {sorted(slots)})" if slots else ""))
    for key in keys:
        if not is_pattern(key):
            check_name(key, model, slots, candidates, types, what)
        elif not any(matches_slot(key, s) for s in candidates.values()):
            raise ConfigError(f"pattern {key!r} in {what} matches no prunable layer; "
                              f"{_listing(key, candidates)}")


def _hits(key: str, slot: WeightSlot) -> bool:
    if is_pattern(key):
        return matches_slot(key, slot)
    return _exact(key, slot) or _module_key(key, slot)


def _pick(slot: WeightSlot, layers: Mapping[str, Any]) -> str | None:
    """The ``layers`` key selecting ``slot``: exact name, module name, first pattern."""
    for test in (_exact, _module_key):
        key = next((k for k in layers if not is_pattern(k) and test(k, slot)), None)
        if key is not None:
            return key
    return next((k for k in layers if is_pattern(k) and matches_slot(k, slot)), None)


def _why_not(slot: WeightSlot, key: str | None, exclude: tuple[str, ...], has_default: bool,
             types: tuple[type[nn.Module], ...]) -> str | None:
    """Why ``slot`` stays dense (``None``: it is selected)."""
    if not isinstance(slot.module, types):
        return f"not selected: type {slot.type_name} is not in 'types'"
    hit = next((e for e in exclude if _hits(e, slot)), None)
    if hit is not None:
        return f"excluded by config ({hit!r})"
    if key is not None and (not slot.position or _exact(key, slot)):
        return None
    if slot.position:
        return "position embedding: never pruned unless named exactly"
    return None if has_default else "no default given"


def dense_reason(param_name: str, model: nn.Module) -> str:
    """Why parameter ``param_name`` of ``model`` is never a prunable weight."""
    mname, _, attr = param_name.rpartition(".")
    module = model.get_submodule(mname)
    if "bias" in attr:
        return "bias: never pruned"
    if isinstance(module, NORM_TYPES):
        return f"not selected: type {type(module).__name__} is never pruned (normalisation)"
    if "pos" in attr.lower():
        return "position embedding: never pruned"
    return (f"not selected: {type(module).__name__}.{attr} is not the weight of a supported layer "
            f"type ({', '.join(TYPE_NAMES)})")


class TargetList(list):
    """A list of :class:`LayerTarget` with ``reasons``: ``{parameter name: why it is
    left dense}`` for every other parameter of the model (see :func:`explain`)."""

    reasons: dict[str, str]


def resolve_targets(model: nn.Module, config: Mapping[str, Any] | PruneConfig | str | Path) -> TargetList:
    """Resolve ``config`` against ``model`` into one :class:`LayerTarget` per constraint set.

    ``config`` is a dict, a :class:`PruneConfig` or the path of a YAML file. The result
    follows the model's module order; its ``reasons`` attribute says why every other
    parameter is left dense. Raises :class:`ConfigError` on any mismatch.
    """
    cfg = _load(config)
    chosen, reasons = select(model, cfg.layers, cfg.exclude, cfg.default is not None, cfg.types)
    out = TargetList()
    for name, (slot, key) in chosen.items():
        out.extend(_make_target(slot, sp) for sp in (cfg.default if key is None else cfg.layers[key]))
    if not out:
        raise ConfigError(f"the pruning config selects no layer of this model ({_summary(reasons)}); "
                          "give a 'default' or name weights under 'layers'")
    warn_no_op(out)
    out.reasons = _all_reasons(model, weight_slots(model), reasons)
    return out


def _summary(reasons: Mapping[str, str], limit: int = 4) -> str:
    """``name: reason`` for the first ``limit`` weights left dense, and how many more."""
    items = [f"{n}: {r}" for n, r in list(reasons.items())[:limit]]
    more = len(reasons) - limit
    return "; ".join(items) + (f"; and {more} more" if more > 0 else "")


def warn_no_op(targets: Iterable[LayerTarget]) -> None:
    """Warn (``UserWarning``) naming every target that keeps all of its weight's units
    (``sparsity: 0``, or ``keep`` = the size): such a target prunes nothing."""
    idle = [f"{t.name} ({t.structure} keep {t.keep} of {t.units})" for t in targets if t.keep >= t.units]
    if idle:
        warnings.warn(f"{len(idle)} pruning target(s) keep every unit and prune nothing: "
                      f"{', '.join(idle)}; give a sparsity > 0, or 'exclude' the weight to leave it "
                      "dense on purpose", UserWarning, stacklevel=3)


def _all_reasons(model: nn.Module, slots: Mapping[str, WeightSlot], reasons: Mapping[str, str]) -> dict[str, str]:
    by_param = {s.param_name: reasons[n] for n, s in slots.items() if n in reasons}
    prunable = {s.param_name for s in slots.values()}
    return {p: by_param[p] if p in by_param else dense_reason(p, model)
            for p, _ in model.named_parameters() if p in by_param or p not in prunable}


def explain(model: nn.Module, config: Mapping[str, Any] | PruneConfig | str | Path | None = None
            ) -> dict[str, str]:
    """``{parameter name: what happens to it}`` for every parameter of ``model``: the
    names of its targets (``"target conv1: unstructured keep 50"``) or the reason it is
    left dense. Without ``config``, the weights a config could select say so."""
    if config is None:
        slots = weight_slots(model)
        selectable = {s.param_name: f"prunable ({s.type_name}: {', '.join(s.takes())})" for s in slots.values()}
        return {p: selectable.get(p) or dense_reason(p, model) for p, _ in model.named_parameters()}
    targets = resolve_targets(model, config)
    out = dict(targets.reasons)
    for t in targets:
        desc = f"{t.structure} keep {t.keep} of {t.units}"
        prev = out.get(t.param_name)
        out[t.param_name] = f"{prev}; {desc}" if prev else f"target {t.name}: {desc}"
    return {p: out[p] for p, _ in model.named_parameters()}


def _make_target(slot: WeightSlot, spec: Mapping[str, Any]) -> LayerTarget:
    shape = tuple(slot.weight.shape)
    name = slot.name
    structure = spec.get("structure", "unstructured")
    layout = ("weight", 1, 1)
    if structure == "unstructured":
        n, unit = math.prod(shape), "weights"
    elif structure not in slot.structures:
        why = slot.notes.get(structure)
        raise ConfigError(f"structure {structure!r} is not defined for {name!r} ({slot.type_name}, "
                          f"weight {shape})" + (f": {why}" if why else "")
                          + f"; it takes {', '.join(map(repr, slot.takes()))}")
    else:
        from mobileprune.math.groups import unit_group_shape

        layout = slot.structures[structure]
        n, unit = unit_group_shape(shape, *layout)[0], f"{structure} groups"
    if "keep" in spec:
        keep = spec["keep"]
        if keep > n:
            raise ConfigError(f"layer {name!r} has {n} {unit} but the config keeps {keep}")
    else:  # block: the tiles that hold the weights the sparsity leaves (padding adds none)
        size = math.prod(shape) / BLOCK_ROWS if structure == "block" else n
        keep = math.floor(size * (1.0 - spec["sparsity"]) + 1e-9)
        if keep < 1:
            raise ConfigError(
                f"sparsity {spec['sparsity']} on layer {name!r} ({n} {unit}) keeps no {unit[:-1]}; "
                "give a smaller sparsity or a 'keep' count")
    plain = structure == "unstructured" or (name == slot.module_name and layout == (structure, 1, 1))
    return LayerTarget(name=name, param_name=slot.param_name, shape=shape, keep=int(keep),
                       structure=structure, module=None if name == slot.module_name else slot.module_name,
                       grouping=None if plain else layout[0], blocks=layout[1], unit=layout[2],
                       joint=slot.joint.get(structure))
