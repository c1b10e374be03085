"""1-D CNN for human activity recognition (MobilePrune's HAR model, seed 000).

:class:`HARCNN` is the network of ``methods.md`` section 2.4: ``depth`` (five) Conv1d
layers of ``width`` (128) channels, kernel ``k``, no bias, no padding, each followed by
a ReLU; flatten; ``Linear(width * (window - depth * (k - 1)), hidden)``, ReLU,
``Linear(hidden, num_classes)``.

Usual configurations (input ``(N, C, T)``):

* UCI-HAR: ``HARCNN(9, 6, 128, kernel_size=5)`` -- 1,716,546 parameters;
* WISDM: ``HARCNN(3, 6, 80, kernel_size=10)``;
* PAMAP2: ``HARCNN(40, 12, 128, kernel_size=10)``.

Layers are plain attributes named ``conv1`` .. ``conv<depth>``, ``fc1`` and ``fc2`` (no
``Sequential``), so parameter names such as ``conv3.weight`` are stable for pruning
configurations and checkpoints.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["HARCNN"]


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"HARCNN: {name} must be a positive integer, got {value!r}")
    return value


class HARCNN(nn.Module):
    r"""Five-layer 1-D CNN for windows of inertial signals.

    Args:
        in_channels (int): number of input signals ``C`` (9 for UCI-HAR).
        num_classes (int): number of activities.
        window (int): window length ``T`` in samples (128 for UCI-HAR).
        width (int, optional): channels of every conv layer. Default: ``128``.
        kernel_size (int, optional): conv kernel length ``k``. Default: ``5``.
        depth (int, optional): number of conv layers. Default: ``5``.
        hidden (int, optional): units of the hidden fully connected layer.
            Default: ``100``.

    Raises:
        ConfigError: if an argument is not a positive integer, or the window is too
            short: each unpadded conv removes ``k - 1`` samples, so ``window`` must be
            larger than ``depth * (kernel_size - 1)``.

    Shape:
        input ``(N, in_channels, window)``, output ``(N, num_classes)`` logits.

    Examples:
        >>> m = HARCNN(9, 6, 128)
        >>> m(torch.zeros(2, 9, 128)).shape
        torch.Size([2, 6])
        >>> sum(p.numel() for p in m.parameters())
        1716546
    """

    def __init__(self, in_channels: int, num_classes: int, window: int, width: int = 128,
                 kernel_size: int = 5, depth: int = 5, hidden: int = 100) -> None:
        super().__init__()
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes),
                            ("window", window), ("width", width),
                            ("kernel_size", kernel_size), ("depth", depth),
                            ("hidden", hidden)):
            _positive_int(name, value)
        out_len = window - depth * (kernel_size - 1)
        if out_len < 1:
            raise ConfigError(
                f"HARCNN: window {window} is too short for {depth} unpadded conv layers "
                f"of kernel {kernel_size} (each removes {kernel_size - 1} samples); "
                f"need window > {depth * (kernel_size - 1)}"
            )
        self.in_channels, self.num_classes, self.window = in_channels, num_classes, window
        self.width, self.kernel_size, self.depth, self.hidden = width, kernel_size, depth, hidden
        self.out_len = out_len
        self.conv_names = [f"conv{i}" for i in range(1, depth + 1)]
        for i, name in enumerate(self.conv_names):
            setattr(self, name, nn.Conv1d(in_channels if i == 0 else width, width,
                                          kernel_size, bias=False))
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(width * out_len, hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.conv_names:
            x = self.relu(getattr(self, name)(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"window={self.window}, out_len={self.out_len}")
