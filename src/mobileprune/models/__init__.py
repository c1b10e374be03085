"""Built-in model zoo, addressed by name from configs, checkpoints and the CLI."""

from __future__ import annotations

from typing import Any, Callable

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
    key = name.lower().replace("-", "").replace("_", "")
    if key not in MODELS:
        raise ConfigError(
            f"unknown model {name!r}; built-in models are: {', '.join(sorted(MODELS))}"
        )
    return MODELS[key](**kwargs)


__all__ = ["MODELS", "build_model", "LeNet5", "LeNet300100", "FERNet", "ITrackerMobile", "resnet20", "resnet56",
           "vgg_cifar"]
