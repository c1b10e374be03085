"""ResNets and VGG-style networks for 3x32x32 CIFAR images.

* :class:`CifarResNet`: the CIFAR-10 ResNets of He et al. 2016 ("Deep Residual
  Learning for Image Recognition", section 4.2): a 3x3 conv with 16 filters, three
  stages of ``n`` basic blocks (two 3x3 conv + batch norm each) with 16, 32 and 64
  channels on 32x32, 16x16 and 8x8 feature maps (the first block of stages 2 and 3
  has stride 2), global average pooling and a 64 -> 10 fully connected layer;
  ``6n + 2`` weighted layers. :func:`resnet20` (``n = 3``) and :func:`resnet56`
  (``n = 9``).

  **Shortcuts.** Where a block changes the shape (stride 2, more channels) the
  default is **option B** of the paper: a projection shortcut, 1x1 conv with stride 2
  followed by batch norm (``shortcut="B"``). It is a plain, prunable layer and keeps
  every channel of a block's output tied to learned weights, which channel and filter
  pruning need. The paper's own CIFAR experiments used **option A** (identity with
  stride-2 subsampling and zero-padded extra channels, no parameters); it is available
  as ``shortcut="A"``. Parameter counts: ResNet-20 272,474 (B) / 269,722 (A),
  ResNet-56 855,770 (B) / 853,018 (A).

* :class:`VGGCifar` / :func:`vgg_cifar`: VGG-11/13/16/19 feature extractors
  (conv3x3-BN-ReLU, 2x2 max-pools) adapted to 32x32 inputs (after five pools the map
  is 512 x 1 x 1) with a small classifier ``fc1`` 512 -> 512, ReLU, ``fc2`` 512 ->
  classes (``hidden=0`` gives a single linear layer).

All models are traceable with :func:`torch.fx.symbolic_trace` (no data-dependent
control flow). Weights are initialised as in the paper (He normal for convs,
batch norm scale 1 and shift 0).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

__all__ = ["BasicBlock", "CifarResNet", "resnet20", "resnet56", "VGGCifar", "vgg_cifar",
           "VGG_CFGS"]


def _positive_int(owner: str, name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}")
    return value


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the extra channels."""

    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = planes - in_planes
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad[0], self.pad[1]))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, pad_channels={self.pad}"


class BasicBlock(nn.Module):
    r"""Residual basic block: conv3x3-BN-ReLU-conv3x3-BN, plus shortcut, then ReLU.

    Args:
        in_planes (int): input channels.
        planes (int): output channels.
        stride (int, optional): stride of the first conv (and of the shortcut).
            Default: ``1``.
        shortcut (str, optional): ``"B"`` (1x1 conv + BN projection) or ``"A"``
            (subsample + zero-pad) where the shape changes; the identity otherwise.
            Default: ``"B"``.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1,
                 shortcut: str = "B") -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.shortcut: nn.Module
        if stride == 1 and in_planes == planes:
            self.shortcut = nn.Identity()
        elif shortcut == "B":
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes),
            )
        else:
            self.shortcut = _PadShortcut(in_planes, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    r"""ResNet-(6n+2) for CIFAR (He et al. 2016, section 4.2).

    Args:
        n (int): basic blocks per stage (3 for ResNet-20, 9 for ResNet-56).
        num_classes (int, optional): number of classes. Default: ``10``.
        in_channels (int, optional): image channels. Default: ``3``.
        shortcut (str, optional): ``"B"`` (projection, default) or ``"A"``
            (zero-padding identity); see the module documentation. Default: ``"B"``.
        widths (sequence of int, optional): channels of the three stages.
            Default: ``(16, 32, 64)``.

    Raises:
        ConfigError: if an argument is invalid.

    Shape:
        input ``(N, in_channels, H, W)`` (32x32 for CIFAR), output
        ``(N, num_classes)`` logits.

    Examples:
        >>> m = resnet20()
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
        >>> sum(p.numel() for p in m.parameters())
        272474
    """

    def __init__(self, n: int, num_classes: int = 10, in_channels: int = 3,
                 shortcut: str = "B", widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        _positive_int("CifarResNet", "n", n)
        _positive_int("CifarResNet", "num_classes", num_classes)
        _positive_int("CifarResNet", "in_channels", in_channels)
        if not isinstance(shortcut, str) or shortcut.upper() not in ("A", "B"):
            raise ConfigError(f"CifarResNet: shortcut must be 'A' or 'B', got {shortcut!r}")
        widths = tuple(widths)
        if len(widths) != 3:
            raise ConfigError(f"CifarResNet: widths must hold 3 values, got {widths!r}")
        for w in widths:
            _positive_int("CifarResNet", "widths", w)
        shortcut = shortcut.upper()
        if shortcut == "A" and any(b < a for a, b in zip(widths, widths[1:])):
            raise ConfigError("CifarResNet: option-A shortcuts need non-decreasing widths")
        self.n, self.num_classes, self.shortcut_type = n, num_classes, shortcut

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        in_planes = widths[0]
        stages = []
        for i, planes in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(widths[-1], num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))

    def extra_repr(self) -> str:
        return f"depth={6 * self.n + 2}, shortcut={self.shortcut_type!r}"


def resnet20(num_classes: int = 10, in_channels: int = 3, shortcut: str = "B") -> CifarResNet:
    """ResNet-20 for CIFAR (``n = 3``; 272,474 parameters with option-B shortcuts)."""
    return CifarResNet(3, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


def resnet56(num_classes: int = 10, in_channels: int = 3, shortcut: str = "B") -> CifarResNet:
    """ResNet-56 for CIFAR (``n = 9``; 855,770 parameters with option-B shortcuts)."""
    return CifarResNet(9, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


#: Conv widths of the VGG variants; ``"M"`` is a 2x2 max-pool.
VGG_CFGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512,
              "M", 512, 512, 512, 512, "M"),
}


class VGGCifar(nn.Module):
    r"""VGG-style network for CIFAR: conv3x3-BN-ReLU blocks, max-pools, small classifier.

    The conv layers are plain attributes ``conv1`` .. ``convK`` (with ``bn1`` ..
    ``bnK``) and the classifier ``fc1`` (and ``fc2`` if ``hidden > 0``), so pruning
    configurations can name them.

    Args:
        cfg (str or sequence, optional): ``"vgg11"``, ``"vgg13"``, ``"vgg16"``,
            ``"vgg19"`` (see :data:`VGG_CFGS`) or an explicit list of conv widths and
            ``"M"`` (max-pool). Default: ``"vgg11"``.
        num_classes (int, optional): number of classes. Default: ``10``.
        in_channels (int, optional): image channels. Default: ``3``.
        input_size (int, optional): height and width of the square input; must be
            divisible by ``2 ** pools``. Default: ``32``.
        hidden (int, optional): units of the hidden classifier layer; ``0`` for a
            single linear classifier. Default: ``512``.
        batchnorm (bool, optional): batch norm after each conv (convs then have no
            bias). Default: ``True``.
        dropout (float, optional): dropout before each classifier layer.
            Default: ``0.0``.

    Raises:
        ConfigError: if ``cfg`` is unknown or malformed or the input is too small.

    Shape:
        input ``(N, in_channels, input_size, input_size)``, output
        ``(N, num_classes)`` logits.

    Examples:
        >>> m = vgg_cifar("vgg11")
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(self, cfg: str | Sequence[int | str] = "vgg11", num_classes: int = 10,
                 in_channels: int = 3, input_size: int = 32, hidden: int = 512,
                 batchnorm: bool = True, dropout: float = 0.0) -> None:
        super().__init__()
        if isinstance(cfg, str):
            key = cfg.lower().replace("-", "").replace("_", "")
            if key not in VGG_CFGS:
                raise ConfigError(
                    f"VGGCifar: unknown cfg {cfg!r}; known: {', '.join(sorted(VGG_CFGS))}")
            name, layers = key, VGG_CFGS[key]
        else:
            name, layers = "custom", tuple(cfg)
        for v in layers:
            if v != "M" and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"VGGCifar: cfg entries must be positive ints or 'M', got {v!r}")
        if not any(v != "M" for v in layers):
            raise ConfigError("VGGCifar: cfg has no conv layer")
        _positive_int("VGGCifar", "num_classes", num_classes)
        _positive_int("VGGCifar", "in_channels", in_channels)
        _positive_int("VGGCifar", "input_size", input_size)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 0:
            raise ConfigError(f"VGGCifar: hidden must be a non-negative integer, got {hidden!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"VGGCifar: dropout must be in [0, 1), got {dropout!r}")
        pools = sum(1 for v in layers if v == "M")
        if input_size % (2 ** pools):
            raise ConfigError(
                f"VGGCifar: input_size {input_size} is not divisible by 2**{pools} "
                f"({pools} max-pools)")
        self.cfg_name, self.batchnorm, self.hidden = name, bool(batchnorm), hidden

        # The forward plan: ("conv", k) or ("pool", 0), fixed at construction.
        plan: list[tuple[str, int]] = []
        c_in, k = in_channels, 0
        for v in layers:
            if v == "M":
                plan.append(("pool", 0))
                continue
            k += 1
            setattr(self, f"conv{k}", nn.Conv2d(c_in, v, 3, padding=1, bias=not self.batchnorm))
            if self.batchnorm:
                setattr(self, f"bn{k}", nn.BatchNorm2d(v))
            plan.append(("conv", k))
            c_in = v
        self._plan = tuple(plan)
        self.num_convs = k
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(float(dropout))
        side = input_size // (2 ** pools)
        features = c_in * side * side
        if hidden:
            self.fc1 = nn.Linear(features, hidden)
            self.fc2 = nn.Linear(hidden, num_classes)
        else:
            self.fc1 = nn.Linear(features, num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for op, k in self._plan:
            if op == "pool":
                x = self.pool(x)
                continue
            x = getattr(self, f"conv{k}")(x)
            if self.batchnorm:
                x = getattr(self, f"bn{k}")(x)
            x = self.relu(x)
        x = self.fc1(self.drop(self.flatten(x)))
        if self.hidden:
            x = self.fc2(self.drop(self.relu(x)))
        return x

    def extra_repr(self) -> str:
        return f"cfg={self.cfg_name!r}, batchnorm={self.batchnorm}, hidden={self.hidden}"


def vgg_cifar(cfg: str | Sequence[int | str] = "vgg11", num_classes: int = 10,
              in_channels: int = 3, **kwargs) -> VGGCifar:
    """VGG-style CIFAR network; see :class:`VGGCifar` (``cfg`` ``"vgg11"`` .. ``"vgg19"``)."""
    return VGGCifar(cfg, num_classes=num_classes, in_channels=in_channels, **kwargs)
