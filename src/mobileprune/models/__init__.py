"""Built-in model zoo, addressed by name from configs, checkpoints and the CLI."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from .har import HARCNN
from .lenet import LeNet5, LeNet300100

MODELS: dict[str, Callable[..., nn.Module]] = {
    "lenet5": LeNet5,
    "lenet300100": LeNet300100,
    "harcnn": HARCNN,
}


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the built-in model ``name`` (see :data:`MODELS`)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; built-in models are: {', '.join(sorted(MODELS))}"
        )
    return MODELS[key](**kwargs)


__all__ = ["MODELS", "build_model", "LeNet5", "LeNet300100"]
