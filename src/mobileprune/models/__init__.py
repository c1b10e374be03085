"""Built-in model zoo, addressed by name from configs, checkpoints and the CLI."""

from __future__ import annotations

import inspect
import math
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from ..errors import ConfigError
from .fer import FERNet
from .gaze import ITrackerMobile
from .har import HARCNN
from .lenet import LeNet5, LeNet300100
from .resnet_cifar import resnet20, resnet56, vgg_cifar

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "lenet300100": LeNet300100,
    "harcnn": HARCNN,
    "fernet": FERNet,  # FER-2013 CNN of seed 003, Table 3 (6 classes, 1x48x48)
    "resnet20": resnet20,  # CIFAR ResNets (option-B shortcuts), 3x32x32
    "resnet56": resnet56,
    "vggcifar": vgg_cifar,  # VGG-11 for CIFAR by default (cfg="vgg16", ...)
    "itracker": ITrackerMobile,  # eye tracking of seed 003, Table 5 (4 inputs, gaze in cm)
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the built-in model ``name`` (see :data:`MODELS`)."""
    key = _key(name)
    try:
        return MODELS[key](**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(f"model {name} cannot be built with {kwargs}: {exc}") from None


def _key(name: str) -> str:
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; built-in models are: {', '.join(sorted(MODELS))}")
    return key


def model_settings(name: str) -> dict[str, Any]:
    """The constructor settings of built-in model ``name`` with their defaults
    (``inspect.Parameter.empty`` where there is none)."""
    params = inspect.signature(MODELS[_key(name)]).parameters
    return {k: p.default for k, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


# settings a data set determines: input shape (without batch) and class count -> value
_FROM_DATA: dict[str, Callable[[Sequence[int], int], Any]] = {
    "num_classes": lambda shape, k: k,
    "in_channels": lambda shape, k: shape[0],
    "in_features": lambda shape, k: math.prod(shape),
    "window": lambda shape, k: shape[-1],
    "input_size": lambda shape, k: shape[-1],
}


def kwargs_for_data(name: str, input_shape: Sequence[int], num_classes: int,
                    overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Constructor settings of built-in model ``name`` for a data set of samples shaped
    ``input_shape`` with ``num_classes`` classes (``num_classes``, ``in_channels``,
    ``in_features``, ``window``, ``input_size`` where the model takes them), then
    ``overrides``; a setting the model does not take is a :class:`ConfigError`."""
    settings = model_settings(name)
    kw = {k: f(tuple(input_shape), num_classes) for k, f in _FROM_DATA.items() if k in settings}
    open_ended = any(p.kind == p.VAR_KEYWORD
                     for p in inspect.signature(MODELS[_key(name)]).parameters.values())
    extra = sorted(set(overrides or {}) - set(settings))
    if extra and not open_ended:
        raise ConfigError(f"model {name} has no setting {', '.join(extra)}; its settings are: "
                          + ", ".join(settings))
    return {**kw, **(overrides or {})}


__all__ = ["MODELS", "build_model", "model_settings", "kwargs_for_data", "LeNet5", "LeNet300100", "FERNet", "ITrackerMobile", "resnet20", "resnet56",
           "vgg_cifar"]
