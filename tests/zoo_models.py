"""The zoo: public architectures, each built small, for ``tests/test_zoo.py`` and
``benchmarks/zoo.py`` (issue 19, item 7).

Every entry of :data:`ZOO` builds an untrained model (no pretrained weights, nothing is
downloaded) with randomised BatchNorm statistics, in eval mode, and a small example
input (batch 1), so that every step of the zoo runs in seconds.

torchvision and timm are optional (the ``zoo`` extra, never runtime dependencies):
torchvision 0.28 on PyPI is a CUDA build whose C ops do not load with the CPU torch;
its models import once ``torchvision._meta_registrations`` is an empty module
(:func:`import_torchvision`, the one place that does this). timm imports torchvision,
so :func:`import_timm` goes through it. An entry whose package is missing says so
(:func:`missing`).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

INSTALL_HINT = "pip install --no-deps -c constraints.txt torchvision timm (the 'zoo' extra)"


def import_torchvision() -> types.ModuleType:
    """Import torchvision without its C ops (see the module docstring).

    Raises:
        ImportError: torchvision is not installed.
    """
    if "torchvision" not in sys.modules:
        name = "torchvision._meta_registrations"
        sys.modules.setdefault(name, types.ModuleType(name))
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType:
    """Import timm (after :func:`import_torchvision`, which timm imports).

    Raises:
        ImportError: timm or torchvision is not installed.
    """
    import_torchvision()
    return importlib.import_module("timm")


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class ZooModel:
    """One architecture of the zoo.

    Attributes:
        name: the row's name (``--only NAME`` in the benchmark).
        source: ``"torchvision"``, ``"timm"``, ``"torch"`` or ``"mobileprune"``.
        build: returns the untrained model (called with the seed set).
        shapes: the example input's shapes, one per ``forward`` argument, batch 1.
        note: what is non-default about the construction (small sizes), for the table.
    """

    name: str
    source: str
    build: Callable[[], nn.Module]
    shapes: tuple[tuple[int, ...], ...]
    note: str = ""

    def requires(self) -> tuple[str, ...]:
        """The optional packages this entry imports."""
        return {"torchvision": ("torchvision",), "timm": ("torchvision", "timm")}.get(self.source, ())


def missing(entry: ZooModel) -> str | None:
    """Why ``entry`` cannot be built here (a missing package), or ``None``."""
    absent = [p for p in entry.requires() if not _installed(p)]
    if absent:
        return f"{' and '.join(absent)} not installed ({INSTALL_HINT})"
    return None


@torch.no_grad()
def he_init(model: nn.Module) -> None:
    """He-normal weights (std ``sqrt(2 / fan_in)``) for every Conv and Linear: the
    built-in models keep PyTorch's default init, whose signal shrinks ~2.5x per ReLU
    layer, so the 12 layers of FERNet would give an output that does not depend on
    the input."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


@torch.no_grad()
def fill_zero_weights(model: nn.Module, seed: int = 0) -> None:
    """Give every weight initialised to all zeros (torchvision's ViT head) random
    values of std 0.02: a zero head makes every output 0, which any export reproduces."""
    g = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        if p.dim() >= 2 and not bool(p.any()):
            p.copy_(0.02 * torch.randn(p.shape, generator=g))


@torch.no_grad()
def calibrate(model: nn.Module, shapes: tuple[tuple[int, ...], ...], seed: int = 0, batch: int = 64) -> None:
    """Set every BatchNorm's running statistics to those of one random batch of
    ``batch`` inputs (64: deep layers see 1x1 maps, so fewer samples give noisy statistics and an ill-conditioned model; as training would: the norms then normalise the activations the
    weights really produce, so the signal survives depth and pruning), then give the
    affine parameters random values; the model is left in eval mode."""
    norms = [m for m in model.modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    g = torch.Generator().manual_seed(seed + 2)
    xs = tuple(torch.randn(batch, *s[1:], generator=g) for s in shapes)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = 1.0
    model.train()
    model(*xs)
    model.eval()
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
        # a channel (nearly) constant over the batch would divide by sqrt(eps): outputs
        # then amplify float rounding ~300x, which no exported engine reproduces
        m.running_var.clamp_(min=max(0.1 * float(m.running_var.mean()), 1e-3))
        if m.affine:
            m.weight.copy_(0.5 + torch.rand(m.num_features, generator=g))
            m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))


def build(entry: ZooModel, seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """``(model, example inputs)`` for ``entry``: the model untrained (seeded), its
    zero weights filled and its BatchNorms calibrated (:func:`fill_zero_weights`,
    :func:`calibrate`; the built-in models He-initialised, :func:`he_init`), in eval
    mode; inputs random with the entry's shapes, batch 1.

    Raises:
        ImportError: a package the entry needs is missing (see :func:`missing`).
    """
    torch.manual_seed(seed)
    model = entry.build().eval()
    if entry.source == "mobileprune":
        he_init(model)
    fill_zero_weights(model, seed)
    calibrate(model, entry.shapes, seed)
    g = torch.Generator().manual_seed(seed + 1)
    inputs = tuple(torch.randn(*s, generator=g) for s in entry.shapes)
    return model, inputs


# ---------------------------------------------------------------------------------------
# sequence models (plain torch)

class RNNClassifier(nn.Module):
    """A recurrent classifier: ``(N, T, features)`` -> LSTM or GRU (2 layers) -> the
    last step's hidden state -> Linear -> ``(N, classes)``."""

    def __init__(self, cell: str, features: int = 8, hidden: int = 32, classes: int = 5) -> None:
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


class TransformerClassifier(nn.Module):
    """``(N, T, features)`` -> Linear embedding -> ``nn.TransformerEncoder`` (2 layers,
    4 heads, batch first) -> mean over time -> Linear -> ``(N, classes)``."""

    def __init__(self, features: int = 8, d_model: int = 32, classes: int = 5) -> None:
        super().__init__()
        self.embed = nn.Linear(features, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=4, dim_feedforward=64, dropout=0.1,
                                           batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.fc = nn.Linear(d_model, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(self.embed(x)).mean(dim=1))


# ---------------------------------------------------------------------------------------
# constructors

def _tv(fn: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return getattr(import_torchvision().models, fn)(weights=None, **kwargs)
    return make


def _tv_vit() -> nn.Module:
    from_vit = import_torchvision().models.vision_transformer
    return from_vit.VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2,
                                      hidden_dim=32, mlp_dim=64, num_classes=10)


def _timm(arch: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        return import_timm().create_model(arch, pretrained=False, num_classes=10, **kwargs)
    return make


def _mp(name: str, **kwargs: Any) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        from mobileprune.models import build_model
        return build_model(name, **kwargs)
    return make


IMG = ((1, 3, 32, 32),)
IMG64 = ((1, 3, 64, 64),)
SEQ = ((1, 16, 8),)

#: The zoo, in table order.
ZOO: tuple[ZooModel, ...] = (
    ZooModel("tv_resnet18", "torchvision", _tv("resnet18", num_classes=10), IMG),
    ZooModel("tv_mobilenet_v2", "torchvision", _tv("mobilenet_v2", num_classes=10), IMG),
    ZooModel("tv_mobilenet_v3_small", "torchvision", _tv("mobilenet_v3_small", num_classes=10), IMG),
    ZooModel("tv_efficientnet_b0", "torchvision", _tv("efficientnet_b0", num_classes=10), IMG),
    ZooModel("tv_shufflenet_v2", "torchvision", _tv("shufflenet_v2_x0_5", num_classes=10), IMG,
             "x0.5"),
    ZooModel("tv_squeezenet", "torchvision", _tv("squeezenet1_1", num_classes=10), IMG64, "1.1"),
    ZooModel("tv_densenet121", "torchvision", _tv("densenet121", num_classes=10), IMG),
    ZooModel("tv_vit", "torchvision", _tv_vit, IMG,
             "VisionTransformer 32x32, patch 8, 2 layers, 2 heads, dim 32, mlp 64"),
    ZooModel("timm_mobilenetv4_conv_small", "timm", _timm("mobilenetv4_conv_small"), IMG,
             "BatchNormAct2d"),
    ZooModel("timm_efficientnet_b0", "timm", _timm("efficientnet_b0"), IMG, "BatchNormAct2d"),
    ZooModel("timm_deit_tiny", "timm", _timm("deit_tiny_patch16_224", img_size=32, patch_size=8, depth=2),
             IMG, "32x32, patch 8, depth 2"),
    ZooModel("timm_convnext_atto", "timm", _timm("convnext_atto"), IMG),
    ZooModel("timm_mobilevit_xxs", "timm", _timm("mobilevit_xxs"), IMG64),
    ZooModel("timm_efficientvit_b0", "timm", _timm("efficientvit_b0"), IMG64),
    ZooModel("lstm_classifier", "torch", lambda: RNNClassifier("lstm"), SEQ,
             "2-layer LSTM 8->32, T=16"),
    ZooModel("gru_classifier", "torch", lambda: RNNClassifier("gru"), SEQ, "2-layer GRU 8->32, T=16"),
    ZooModel("transformer_classifier", "torch", TransformerClassifier, SEQ,
             "TransformerEncoder 2 layers, d 32, 4 heads, T=16"),
    ZooModel("mp_lenet5", "mobileprune", _mp("lenet5"), ((1, 1, 28, 28),)),
    ZooModel("mp_lenet300100", "mobileprune", _mp("lenet300100"), ((1, 784),)),
    ZooModel("mp_fernet", "mobileprune", _mp("fernet"), ((1, 1, 48, 48),)),
    ZooModel("mp_harcnn_ucihar", "mobileprune", _mp("harcnn", in_channels=9, num_classes=6, window=128),
             ((1, 9, 128),), "UCI-HAR: 9 x 128"),
    ZooModel("mp_harcnn_small", "mobileprune",
             _mp("harcnn", in_channels=3, num_classes=6, window=40, width=32, kernel_size=3, depth=3),
             ((1, 3, 40),), "3 x 40, width 32, kernel 3, depth 3"),
    ZooModel("mp_itracker", "mobileprune", _mp("itracker"),
             ((1, 3, 64, 64), (1, 3, 64, 64), (1, 3, 64, 64), (1, 625)), "4 inputs"),
    ZooModel("mp_resnet20", "mobileprune", _mp("resnet20"), IMG),
)

BY_NAME: dict[str, ZooModel] = {e.name: e for e in ZOO}
