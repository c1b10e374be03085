"""The eye-tracking network of seed 003 (section 4.2, Table 5): a mobile iTracker.

iTracker (Krafka et al., "Eye Tracking for Everyone", CVPR 2016) predicts where on the
screen a person looks, in centimetres from the camera (GazeCapture's ``XCam``, ``YCam``),
from four inputs: crops of the face, the left eye and the right eye, and the *face grid*
(a 25 x 25 binary mask of where the face lies in the camera frame). Seed 003 prunes a
small variant of it for phones; its Table 5 lists every layer's weight count, and
:class:`ITrackerMobile` reproduces those counts layer for layer:

===========  ======================================  =========  ===============
seed layer   here                                    weights    seed (Table 5)
===========  ======================================  =========  ===============
conv-e1      ``conv_e1`` Conv2d(3, 64, 5, stride 2)  4,800      4,875 [#]_
conv-e2      ``conv_e2`` Conv2d(64, 64, 5)           102,400    102,400
conv-e3      ``conv_e3`` Conv2d(64, 128, 3)          73,728     73,728
conv-e4      ``conv_e4`` Conv2d(128, 64, 1)          8,192      8,192
conv-f1..f4  ``conv_f1`` .. ``conv_f4`` (the same)   189,120    189,195
fc-e1        ``fc_e1`` Linear(512, 128)              65,536     65,536
fc-f1        ``fc_f1`` Linear(256, 128)              32,768     32,768
fc-f2        ``fc_f2`` Linear(128, 64)               8,192      8,192
fc-fg1       ``fc_fg1`` Linear(625, 256)             160,000    160,000
fc-fg2       ``fc_fg2`` Linear(256, 128)             32,768     32,768
fc1          ``fc1`` Linear(320, 128)                40,960     40,960
fc2          ``fc2`` Linear(128, 2)                  256        256
total                                                718,720    718,870
===========  ======================================  =========  ===============

.. [#] 4,875 = 3 x 5 x 5 x 65 does not fit a 64-filter layer (conv-e2 takes 64
   channels: 102,400 = 64 x 64 x 5 x 5); read as a typo, the counts here use 64.

As in iTracker, one eye tower (``conv_e*``) serves both eyes (shared weights); its two
256-feature outputs are concatenated into ``fc_e1``. The face tower has its own weights.
The towers take ``size x size`` RGB crops (default 64, any multiple of 32): conv
(5x5, stride 2) -> pool -> conv 5x5 -> pool -> conv 3x3 -> pool -> conv 1x1 -> pool, each
conv followed by ReLU, leaving 64 channels of ``size / 32`` squared positions (256
features at 64 x 64, which is what the seed's fc-e1 and fc-f1 counts imply). iTracker's
local response normalisation is left out (it has no weights and no mobile kernel).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ITrackerMobile"]


class ITrackerMobile(nn.Module):
    """Seed 003's eye-tracking network (Table 5): ``forward(face, left, right, grid)``.

    Args:
        size: height and width of the face and eye crops (a multiple of 32).
        grid: side of the face grid (25 in GazeCapture); ``grid`` input shape
            ``(N, grid * grid)`` (the mask flattened row-major) or ``(N, grid, grid)``.
        outputs: regression outputs (2: ``XCam``, ``YCam`` in centimetres).

    Inputs are float tensors ``face``, ``left``, ``right`` of shape ``(N, 3, size, size)``
    and ``grid``; the output is ``(N, outputs)``.
    """

    def __init__(self, size: int = 64, grid: int = 25, outputs: int = 2) -> None:
        super().__init__()
        if size < 32 or size % 32:
            raise ValueError(f"size must be a positive multiple of 32, got {size!r}")
        if grid < 1 or outputs < 1:
            raise ValueError(f"grid and outputs must be >= 1, got {grid!r}, {outputs!r}")
        self.size, self.grid_size = size, grid
        for t in ("e", "f"):  # eye tower (shared by both eyes) and face tower
            setattr(self, f"conv_{t}1", nn.Conv2d(3, 64, 5, stride=2, padding=2))
            setattr(self, f"conv_{t}2", nn.Conv2d(64, 64, 5, padding=2))
            setattr(self, f"conv_{t}3", nn.Conv2d(64, 128, 3, padding=1))
            setattr(self, f"conv_{t}4", nn.Conv2d(128, 64, 1))
        self.pool = nn.MaxPool2d(2)
        self.relu = nn.ReLU()
        feat = 64 * (size // 32) ** 2
        self.fc_e1 = nn.Linear(2 * feat, 128)
        self.fc_f1 = nn.Linear(feat, 128)
        self.fc_f2 = nn.Linear(128, 64)
        self.fc_fg1 = nn.Linear(grid * grid, 256)
        self.fc_fg2 = nn.Linear(256, 128)
        self.fc1 = nn.Linear(128 + 64 + 128, 128)
        self.fc2 = nn.Linear(128, outputs)

    def _tower(self, x: torch.Tensor, t: str) -> torch.Tensor:
        for i in range(1, 5):
            x = self.pool(self.relu(getattr(self, f"conv_{t}{i}")(x)))
        return torch.flatten(x, 1)

    def forward(self, face: torch.Tensor, left: torch.Tensor, right: torch.Tensor,
                grid: torch.Tensor) -> torch.Tensor:
        eyes = torch.cat([self._tower(left, "e"), self._tower(right, "e")], dim=1)
        eyes = self.relu(self.fc_e1(eyes))
        f = self.relu(self.fc_f2(self.relu(self.fc_f1(self._tower(face, "f")))))
        g = self.relu(self.fc_fg2(self.relu(self.fc_fg1(torch.flatten(grid, 1)))))
        return self.fc2(self.relu(self.fc1(torch.cat([eyes, f, g], dim=1))))
