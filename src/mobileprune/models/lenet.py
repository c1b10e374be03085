"""LeNet models used by both seeds on MNIST.

* :class:`LeNet5` is the Caffe variant used by ADMM pruning (seed 003, Table 1) and by
  MobilePrune (seed 000): conv 1->20 5x5, max-pool, conv 20->50 5x5, max-pool,
  fc 800->500, ReLU, fc 500->10. 431,080 parameters.
* :class:`LeNet300100` is the fully connected 784-300-100-10 network
  (266,610 parameters).
"""

from __future__ import annotations

import torch
from torch import nn


class LeNet5(nn.Module):
    """Caffe LeNet-5 for 1x28x28 inputs (431,080 parameters)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 20, 5)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 50, 5)
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(800, 500)
        self.relu = nn.ReLU()
        self.fc2 = nn.Linear(500, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv2(x))
        x = self.relu(self.fc1(self.flatten(x)))
        return self.fc2(x)


class LeNet300100(nn.Module):
    """Fully connected LeNet-300-100 for 28x28 inputs (266,610 parameters)."""

    def __init__(self, num_classes: int = 10, in_features: int = 784) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(in_features, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.fc1(self.flatten(x)))
        x = self.relu(self.fc2(x))
        return self.fc3(x)
