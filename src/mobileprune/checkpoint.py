"""Checkpoints readable with plain ``torch.load(path, weights_only=True)``.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only (no pickled
classes), so it loads in the safe ``weights_only`` mode of PyTorch::

    {
      "format": "mobileprune.checkpoint", "format_version": 1,
      "kind": "dense" | "pruned" | "compacted" | "run-state",
      "model": {"name": "lenet5", "kwargs": {...}},   # built-in zoo entry, or name None
      "architecture": {"fc1.weight": [500, 800], ...},  # parameter shapes
      "state_dict": {...}, "masks": {...},             # bool masks of pruned weights
      "config": {...}, "metrics": {...}, "extra": {...}
    }

Writes are atomic: the file is written beside the target under a temporary name and
renamed over it only once complete, so an interrupted or failed run never leaves a
truncated file nor destroys the previous one.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mobileprune.errors import CheckpointError
from mobileprune.files import atomic_write, atomic_write_text  # noqa: F401 (re-exported)
from mobileprune.graph.registry import module_handler
from mobileprune.sparsity.report import ORIGINAL_SIZE, size_of

FORMAT = "mobileprune.checkpoint"
FORMAT_VERSION = 1
KINDS = ("dense", "pruned", "compacted", "run-state")
_SIZE_ATTRS = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features",
               "input_size", "hidden_size", "num_heads")
_RESIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d,
              nn.RNNBase, nn.MultiheadAttention)


def layer_sizes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Sizes of the resizable layers (Conv, Linear, BatchNorm, LSTM / GRU / RNN hidden
    units, attention heads) of ``model``.

    Stored in checkpoints of compacted models (``kind="compacted"``) so that
    :func:`restore_model` can rebuild the smaller layers into a fresh instance of the
    model's class before loading the weights.
    """
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, _RESIZABLE):
            d = {a: getattr(m, a) for a in _SIZE_ATTRS if hasattr(m, a)}
            d["bias"] = getattr(m, "bias", None) is not None
            out[name] = d
    return out


def _resize_layers(model: nn.Module, sizes: Mapping[str, Mapping[str, Any]]) -> None:
    """Cut every listed layer of ``model`` to the recorded sizes, in place, through its op
    handler's ``resize`` (the one place a layer is resized; the values come from the
    following ``load_state_dict``)."""
    modules = dict(model.named_modules())
    for name, d in sizes.items():
        old = modules.get(name)
        h = module_handler(old) if isinstance(old, _RESIZABLE) else None
        if h is None:
            raise CheckpointError(f"checkpoint resizes layer {name!r}, which the model does not have")
        cur = {a: getattr(old, a) for a in _SIZE_ATTRS if hasattr(old, a)}
        has_bias = getattr(old, "bias", None) is not None
        if cur == {a: d[a] for a in cur} and has_bias == d["bias"]:
            continue
        if has_bias and not d["bias"]:
            raise CheckpointError(f"checkpoint has no bias for layer {name!r}, the model has one")
        n_in, n_out = _unit_counts(d, old)
        shift = torch.zeros(n_out, dtype=torch.float64) if d["bias"] and not has_bias else None
        try:
            h.resize(old, None if n_in is None else torch.arange(n_in), torch.arange(n_out), shift)
        except (ValueError, IndexError, RuntimeError) as exc:
            raise CheckpointError(f"checkpoint sizes of layer {name!r} do not fit it ({exc})") from None
        if any(getattr(old, a) != d[a] for a in cur):
            raise CheckpointError(f"checkpoint sizes of layer {name!r} do not fit it: "
                                  f"{ {a: d[a] for a in cur} }")


def _unit_counts(d: Mapping[str, Any], old: nn.Module) -> tuple[int | None, int]:
    """(inputs, outputs) of a recorded layer size (BatchNorm: (None, features); a
    recurrent layer: (input features, hidden units); attention: (None, inner dims of the
    heads))."""
    if "hidden_size" in d:
        return int(d["input_size"]), int(d["hidden_size"])
    if "num_heads" in d:
        return None, int(d["num_heads"]) * old.head_dim
    if "num_features" in d:
        return None, int(d["num_features"])
    if "in_features" in d:
        return int(d["in_features"]), int(d["out_features"])
    return int(d["in_channels"]), int(d["out_channels"])


def state_digest(model: nn.Module) -> str:
    """SHA-256 of ``model``'s state dict (names, dtypes, shapes and values, in order):
    the fingerprint of the weights a run starts from (issue 20, item 3), equal for two
    models exactly when their states are."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def architecture_of(model: nn.Module) -> dict[str, list[int]]:
    """Parameter and buffer shapes of ``model``, used to recognise foreign checkpoints."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def save_checkpoint(path: str | Path, model: nn.Module, *, kind: str = "dense",
                    model_name: str | None = None, model_kwargs: Mapping[str, Any] | None = None,
                    masks: Mapping[str, Tensor] | None = None,
                    config: Mapping[str, Any] | None = None,
                    metrics: Mapping[str, Any] | None = None,
                    extra: Mapping[str, Any] | None = None) -> Path:
    """Save ``model`` and its pruning metadata atomically to ``path``.

    For ``kind="compacted"``, and for any kind whose ``extra`` has ``"compacted": True``
    (e.g. the run state of a pruning run that removes dead units between rounds), the
    layer sizes are recorded too (:func:`layer_sizes`), so that :func:`restore_model`
    can rebuild the smaller layers, with the size of the model before compaction when
    the model carries it (:data:`mobileprune.sparsity.report.ORIGINAL_SIZE`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    extra = dict(extra or {})
    if kind == "compacted" or extra.get("compacted") is True:
        extra["layer_sizes"] = layer_sizes(model)
        if getattr(model, ORIGINAL_SIZE, None):
            extra.setdefault("original_size", dict(getattr(model, ORIGINAL_SIZE)))
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": {"name": model_name, "kwargs": dict(model_kwargs or {})},
        "architecture": architecture_of(model),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "masks": {k: v.detach().cpu().bool() for k, v in (masks or {}).items()},
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "extra": extra,
    }
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


_PICKLED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_UNPICKLER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def _load_failure(exc: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, in one line: a whole
    pickled object (``torch.save(model)``) gets what to save instead; anything else its
    error's gist, without torch's advice to load untrusted files with ``weights_only=False``
    (which would run code from the file)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = _PICKLED_GLOBAL.search(text)
    if found:
        return (f"it holds pickled Python objects ({found.group(1)}), not only tensors, and "
                "mobileprune reads tensors only (torch.load with weights_only=True runs no code "
                "from the file): save the weights with torch.save(model.state_dict(), PATH) and, on "
                "the command line, name the model with --model package.module:factory")
    detail = _UNPICKLER_DETAIL.search(text)
    first = detail.group(1) if detail else next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return (f"the file is corrupt, truncated or not a PyTorch checkpoint "
            f"({type(exc).__name__}{': ' + first[:160] if first else ''})")


def read_tensor_file(path: str | Path) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU (tensors and plain containers
    only: nothing in the file runs), or a one-line :class:`CheckpointError` saying why not."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a mobileprune checkpoint (``weights_only=True``).

    Raises :class:`CheckpointError` for a missing, corrupt, truncated or foreign file.
    """
    path = Path(path)
    ckpt = read_tensor_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a mobileprune checkpoint (no 'format': {FORMAT!r} field); "
            "a plain state_dict can be loaded with model.load_state_dict(torch.load(...))"
        )
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {ckpt.get('format_version')!r}; "
            f"this mobileprune reads version {FORMAT_VERSION}"
        )
    for key in ("state_dict", "architecture", "masks", "model"):
        if not isinstance(ckpt.get(key), dict):
            raise CheckpointError(f"{path} is damaged: field {key!r} missing or malformed")
    return ckpt


def check_architecture(ckpt: Mapping[str, Any], model: nn.Module, source: str = "checkpoint") -> None:
    """Raise :class:`CheckpointError` if ``ckpt`` was not saved from ``model``'s architecture."""
    want = ckpt["architecture"]
    have = architecture_of(model)
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = sorted(k for k in set(want) & set(have) if list(want[k]) != list(have[k]))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"keys missing from the model: {missing[:5]}")
        if unexpected:
            parts.append(f"model keys absent from the checkpoint: {unexpected[:5]}")
        if shapes:
            parts.append("shape mismatches: " + ", ".join(
                f"{k} {tuple(want[k])} vs {tuple(have[k])}" for k in shapes[:5]))
        raise CheckpointError(
            f"{source} was saved from a different architecture than {type(model).__name__}: "
            + "; ".join(parts)
        )


_SIZE_DIMS = {"out_features": 0, "out_channels": 0, "num_features": 0, "in_features": 1}


def _check_sizes(sizes: Mapping[str, Any], state: Mapping[str, Tensor], source: str) -> None:
    """The recorded layer sizes of a compacted checkpoint must be those of its stored
    weights: checked before any layer is rebuilt, so a damaged or crafted file cannot
    make the loader allocate more than the file holds."""
    for name, d in sizes.items():
        if isinstance(d, Mapping) and ("hidden_size" in d or "num_heads" in d):
            _check_unit_sizes(name, d, state, source)
            continue
        w = state.get(f"{name}.weight", state.get(f"{name}.running_mean"))
        if not isinstance(d, Mapping) or w is None:
            raise CheckpointError(f"{source} is damaged: layer_sizes names {name!r}, whose weight "
                                  "it does not hold")
        for attr, dim in _SIZE_DIMS.items():
            if attr in d and (w.dim() <= dim or d[attr] != w.shape[dim]):
                raise CheckpointError(f"{source} is damaged: layer_sizes gives {name}.{attr} = "
                                      f"{d[attr]!r}, its stored weight is {tuple(w.shape)}")
        if "in_channels" in d and (w.dim() < 2 or d["in_channels"] != w.shape[1] * d.get("groups", 1)):
            raise CheckpointError(f"{source} is damaged: layer_sizes gives {name}.in_channels = "
                                  f"{d['in_channels']!r}, its stored weight is {tuple(w.shape)}")


def _check_unit_sizes(name: str, d: Mapping[str, Any], state: Mapping[str, Tensor],
                      source: str) -> None:
    """:func:`_check_sizes` of a recurrent layer (``hidden_size`` / ``input_size`` are
    the column counts of ``weight_hh_l0`` / ``weight_ih_l0``) or an attention (its
    q / k / v rows split in ``num_heads`` heads)."""
    if "hidden_size" in d:
        dims = {"hidden_size": "weight_hh_l0", "input_size": "weight_ih_l0"}
        for attr, w_name in dims.items():
            w = state.get(f"{name}.{w_name}")
            if w is None or w.dim() != 2 or d.get(attr) != w.shape[1]:
                raise CheckpointError(f"{source} is damaged: layer_sizes gives {name}.{attr} = "
                                      f"{d.get(attr)!r}, its stored {w_name} does not match")
        return
    w = state.get(f"{name}.in_proj_weight", state.get(f"{name}.q_proj_weight"))
    heads = d["num_heads"]
    if w is None or isinstance(heads, bool) or not isinstance(heads, int) or heads < 1 \
            or w.shape[0] % heads:
        raise CheckpointError(f"{source} is damaged: layer_sizes gives {name}.num_heads = "
                              f"{heads!r}, which does not divide its stored q / k / v rows")


def restore_model(ckpt: Mapping[str, Any], model: nn.Module | None = None,
                  source: str = "checkpoint") -> nn.Module:
    """Rebuild the model of ``ckpt`` (from the zoo, or into the given ``model``).

    The architecture is checked before any weight is copied. A checkpoint of a compacted
    model first swaps its smaller layers into ``model`` (in place); the model then
    remembers the size it had before compaction (the one saved in the checkpoint, else
    that of the model as built or given; :data:`mobileprune.sparsity.report.ORIGINAL_SIZE`), so
    reports count compressions against it.
    """
    if model is None:
        from mobileprune.models import build_model

        name = ckpt["model"].get("name")
        if not name:
            raise CheckpointError(
                f"{source} holds a custom model: pass the model instance to restore it into"
            )
        model = build_model(name, **ckpt["model"].get("kwargs", {}))
    extra = ckpt.get("extra") or {}
    sizes = extra.get("layer_sizes")
    if sizes and (ckpt.get("kind") == "compacted" or extra.get("compacted") is True):
        before = extra.get("original_size") or getattr(model, ORIGINAL_SIZE, None) or size_of(model)
        _check_sizes(sizes, ckpt["state_dict"], source)
        _resize_layers(model, sizes)
        setattr(model, ORIGINAL_SIZE, dict(before))
    check_architecture(ckpt, model, source)
    model.load_state_dict(ckpt["state_dict"])
    return model
