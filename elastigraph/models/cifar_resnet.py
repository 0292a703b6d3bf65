"""CIFAR-style ResNet-(6n+2) (He et al. 2016, as in open_lth / the E-LTH code): a 3x3
stem with 16 channels, three stages of n basic blocks (16/32/64 channels, stride 2 and a
1x1 conv shortcut at the first block of stages 2 and 3), global pooling, a linear head."""

from __future__ import annotations

from torch import nn
import torch.nn.functional as F

from ..errors import ModelNameError
from ._init import apply_init


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-``depth`` for small images; ``depth`` must be 6n+2 (20, 32, 44, 56, 110 ...).
    ``init="open_lth"`` initialises as open_lth / the E-LTH code (see ``models._init.INITS``)."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, width: int = 16,
                 init: str = "pytorch"):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ModelNameError(f"CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 56 ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv = nn.Conv2d(in_chans, width, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        stages, c_in = [], width
        for i, c in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(c_in, c, stride=2 if (i > 0 and j == 0) else 1))
                c_in = c
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(c_in, num_classes)
        apply_init(self, init, model_name=f"cifar_resnet_{depth}")

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)
