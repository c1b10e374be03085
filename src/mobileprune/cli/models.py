"""Models for the commands: a checkpoint of a built-in model, a user's own model
(``--model package.module:factory`` with a state-dict file), a built-in model sized for
a data set (``train``), and the check that a model accepts a data set's samples."""

from __future__ import annotations

import importlib
from typing import Any, Sequence

import yaml

from mobileprune.errors import CheckpointError, ConfigError

__all__ = ["parse_model_args", "import_factory", "load_model", "check_accepts", "describe_models"]

# a model built from a checkpoint's recorded settings may hold at most this many
# parameters more than the weights stored in it (a compacted model is smaller than the
# one its settings build; a crafted file must not make the loader allocate gigabytes)
_GROWTH = 64
_FLOOR = 1 << 24


def parse_model_args(items: Sequence[str] | None) -> dict[str, Any]:
    """``--model-arg key=value`` (repeatable) as a dict; values are read as YAML
    scalars or lists (``width=64``, ``dropout=0.2``, ``cfg=vgg16``, ``widths=[8,16,32]``)."""
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"--model-arg takes key=value (e.g. width=64), got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError:
            raise ConfigError(f"--model-arg {key}: cannot read the value {text!r}") from None
    return out


def import_factory(spec: str):
    """The callable named by ``package.module:factory`` (``--model``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--model takes package.module:factory (an importable callable that "
                          f"returns the model), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"--model {spec}: cannot import {module_name} ({exc}); is it on "
                          "PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model {spec}: {module_name} has no callable {attr!r}")
    return fn


def _meta_size(name: str, kwargs: dict) -> int:
    """Parameters of built-in model ``name`` with ``kwargs``, built on the meta device
    (nothing allocated)."""
    import torch

    from mobileprune.models import build_model

    with torch.device("meta"):
        return sum(p.numel() for p in build_model(name, **kwargs).parameters())


def _check_settings(ckpt: dict, source: str) -> None:
    """Refuse a checkpoint whose recorded model settings build a model far larger than
    the weights it holds, before the model is built."""
    model = ckpt["model"]
    if not model.get("name"):
        return
    stored = sum(t.numel() for t in ckpt["state_dict"].values() if hasattr(t, "numel"))
    wanted = _meta_size(model["name"], dict(model.get("kwargs") or {}))
    if wanted > max(_GROWTH * stored, _FLOOR):
        raise CheckpointError(f"{source}: its model settings {model.get('kwargs')} build "
                              f"{wanted:,} parameters for {stored:,} stored weights; the file is "
                              "damaged or crafted")


def _check_finite(model, source: str) -> None:
    import torch

    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{source}: {name} holds NaN or Inf values; retrain or restore "
                                  "the model from an earlier checkpoint")


def load_model(path: str, factory: str | None = None) -> tuple[dict, Any]:
    """``(checkpoint, model)`` from ``path``: a mobileprune checkpoint of a built-in model,
    or with ``factory`` (``package.module:factory``) the user's model built by it and
    loaded from ``path`` (a mobileprune checkpoint or a plain state dict). The weights
    must be finite."""
    from mobileprune.checkpoint import load_checkpoint, restore_model

    if factory is None:
        ckpt = load_checkpoint(path)
        _check_settings(ckpt, str(path))
        model = restore_model(ckpt, source=str(path))
    else:
        ckpt, model = _load_user_model(path, factory)
    _check_finite(model, str(path))
    return ckpt, model


def _load_user_model(path: str, factory: str) -> tuple[dict, Any]:
    import torch

    from mobileprune.checkpoint import architecture_of, load_checkpoint, read_tensor_file, restore_model

    model = import_factory(factory)()
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"--model {factory} returned {type(model).__name__}, not a torch.nn.Module")
    raw = read_tensor_file(path)
    if isinstance(raw, dict) and raw.get("format") == "mobileprune.checkpoint":
        ckpt = load_checkpoint(path)
        return ckpt, restore_model(ckpt, model, str(path))
    if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
        raise CheckpointError(f"{path} is not a state dict (a dict of tensors) nor a mobileprune "
                              "checkpoint")
    ckpt = {"model": {"name": None, "kwargs": {}, "factory": factory}, "state_dict": raw,
            "architecture": {k: list(v.shape) for k, v in raw.items()}, "masks": {}, "extra": {},
            "kind": "dense"}
    try:
        model.load_state_dict(raw)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path} does not fit the model of {factory}: {first}") from None
    ckpt["architecture"] = architecture_of(model)
    return ckpt, model


def check_accepts(model, input_shape: Sequence[int], what: str) -> None:
    """Raise :class:`ConfigError` when ``model`` cannot run on one sample shaped
    ``input_shape`` (a model / data set mismatch), naming both."""
    import torch

    from mobileprune.pipeline.train import forward

    shapes = input_shape if input_shape and isinstance(input_shape[0], (list, tuple)) else [input_shape]
    x = [torch.zeros(1, *s) for s in shapes]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            forward(model, x if len(x) > 1 else x[0])
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{type(model).__name__} does not accept {what} (samples shaped "
                          f"{list(input_shape)}): {first}; pick a model for that data, or "
                          "set its size with --model-arg") from None
    finally:
        model.train(was)


def describe_models() -> str:
    """One line per built-in model with its settings and defaults (for ``--help``)."""
    import inspect

    from mobileprune.models import MODELS, model_settings

    lines = []
    for name in sorted(MODELS):
        parts = [k if v is inspect.Parameter.empty else f"{k}={v!r}"
                 for k, v in model_settings(name).items()]
        lines.append(f"  {name}({', '.join(parts)})")
    return "\n".join(lines)

