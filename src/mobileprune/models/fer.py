"""CNN for facial expression recognition on FER-2013 (ADMM pruning, seed 003, Table 3).

:class:`FERNet` is the network of ``methods.md`` section 1: three blocks of three 3x3
convolutions (padding 1) with 32, 64 and 128 filters, each conv followed by a ReLU, a
2x2 max-pool after each block (48 -> 24 -> 12 -> 6), then ``fc1`` 4608 -> 64, ``fc2``
64 -> 64 and ``fc3`` 64 -> classes with ReLUs in between. The weights of the nine conv
and three fc layers are

=======  =======  =======  =======  =======  =======  =======  ========  ========
conv1    conv2    conv3    conv4    conv5    conv6    conv7    conv8     conv9
=======  =======  =======  =======  =======  =======  =======  ========  ========
288      9,216    9,216    18,432   36,864   36,864   73,728   147,456   147,456
=======  =======  =======  =======  =======  =======  =======  ========  ========

and ``fc1`` 294,912, ``fc2`` 4,096, ``fc3`` 384: 778,912 weights, exactly the count of
the seed's Table 3 (which counts weights only, no biases and no batch-norm
parameters). With the default arguments the model has 779,718 parameters (the 778,912
weights plus 806 biases).

Layers are plain attributes named ``conv1`` .. ``conv9`` and ``fc1`` .. ``fc3`` (no
``Sequential``), so parameter names such as ``conv7.weight`` match the layer names of
the seed's Table 3 and pruning configurations can use them directly.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["FERNet"]

#: Filters of the three conv blocks (three convs each).
_BLOCK_WIDTHS = (32, 64, 128)
_CONVS_PER_BLOCK = 3


class FERNet(nn.Module):
    r"""The FER-2013 CNN of seed 003 (Table 3): 9 conv3x3 + 3 fc layers.

    Args:
        num_classes (int, optional): number of expressions. Default: ``6`` (seed 003
            merges *disgust* into *angry*; use ``7`` for the original classes).
        in_channels (int, optional): image channels. Default: ``1`` (gray).
        input_size (int, optional): height and width of the square input; must be a
            multiple of 8 (three 2x2 pools). Default: ``48``, giving ``fc1`` 4608
            inputs (128 x 6 x 6).
        batchnorm (bool, optional): put a :class:`~torch.nn.BatchNorm2d` (named
            ``bn1`` .. ``bn9``) between each conv and its ReLU. The convs then have no
            bias (the batch norm's shift replaces it). The seed's Table 3 has no batch
            norm. Default: ``False``.
        dropout (float, optional): dropout probability applied to the inputs of
            ``fc1``, ``fc2`` and ``fc3`` during training. Default: ``0.0`` (none).

    Raises:
        ConfigError: if an argument is out of range.

    Shape:
        input ``(N, in_channels, input_size, input_size)``, output
        ``(N, num_classes)`` logits.

    Examples:
        >>> m = FERNet()
        >>> m(torch.zeros(2, 1, 48, 48)).shape
        torch.Size([2, 6])
        >>> sum(m.get_submodule(n).weight.numel() for n in m.layer_names)
        778912
    """

    #: Names of the conv and fc layers, in forward order (the rows of Table 3).
    layer_names: tuple[str, ...] = tuple(f"conv{i}" for i in range(1, 10)) + (
        "fc1", "fc2", "fc3")

    def __init__(self, num_classes: int = 6, in_channels: int = 1, input_size: int = 48,
                 batchnorm: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        for name, value in (("num_classes", num_classes), ("in_channels", in_channels),
                            ("input_size", input_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"FERNet: {name} must be a positive integer, got {value!r}")
        if input_size % 8:
            raise ConfigError(
                f"FERNet: input_size must be a multiple of 8 (three 2x2 max-pools), "
                f"got {input_size}"
            )
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"FERNet: dropout must be in [0, 1), got {dropout!r}")
        self.num_classes, self.in_channels, self.input_size = num_classes, in_channels, input_size
        self.batchnorm, self.dropout_p = bool(batchnorm), float(dropout)

        c_in, k = in_channels, 1
        for width in _BLOCK_WIDTHS:
            for _ in range(_CONVS_PER_BLOCK):
                setattr(self, f"conv{k}",
                        nn.Conv2d(c_in, width, 3, padding=1, bias=not self.batchnorm))
                if self.batchnorm:
                    setattr(self, f"bn{k}", nn.BatchNorm2d(width))
                c_in, k = width, k + 1
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(self.dropout_p)
        side = input_size // 8
        self.fc1 = nn.Linear(_BLOCK_WIDTHS[-1] * side * side, 64)
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = 1
        for _ in _BLOCK_WIDTHS:
            for _ in range(_CONVS_PER_BLOCK):
                x = getattr(self, f"conv{k}")(x)
                if self.batchnorm:
                    x = getattr(self, f"bn{k}")(x)
                x = self.relu(x)
                k += 1
            x = self.pool(x)
        x = self.relu(self.fc1(self.drop(self.flatten(x))))
        x = self.relu(self.fc2(self.drop(x)))
        return self.fc3(self.drop(x))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, in_channels={self.in_channels}, "
                f"input_size={self.input_size}, batchnorm={self.batchnorm}, "
                f"dropout={self.dropout_p}")
