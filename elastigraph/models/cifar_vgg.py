"""CIFAR-style VGG-11/13/16/19 (as in open_lth / the E-LTH code): stages of 3x3
conv-BN-ReLU layers with 64/128/256/512/512 channels and a 2x2 max-pool between stages,
global average pooling and one linear head. The pools use ``ceil_mode`` and the head
pools adaptively, so 28x28 inputs (Fashion-MNIST) work as well as 32x32."""

from __future__ import annotations

from typing import Sequence

import torch.nn.functional as F
from torch import nn

from ..errors import ModelNameError
from ._init import apply_init

WIDTHS = (64, 128, 256, 512, 512)
DEPTHS: dict[int, tuple[int, ...]] = {
    11: (1, 1, 2, 2, 2),
    13: (2, 2, 2, 2, 2),
    16: (2, 2, 3, 3, 3),
    19: (2, 2, 4, 4, 4),
}


class ConvBlock(nn.Module):
    """3x3 conv (with bias, as open_lth) -> BatchNorm -> ReLU."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn = nn.BatchNorm2d(c_out)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    """VGG-``depth`` (11, 13, 16, 19) for small images; ``depths`` (convs per stage, five
    entries) and ``widths`` override the plan, e.g. ``depths=(2, 2, 5, 5, 5)``. Layers
    are ``layers.<i>`` (ConvBlock or MaxPool2d) as in open_lth, then ``fc``.
    ``init="open_lth"`` initialises as open_lth / the E-LTH code (see ``models._init.INITS``)."""

    def __init__(
        self,
        depth: int = 16,
        num_classes: int = 10,
        in_chans: int = 3,
        depths: Sequence[int] | None = None,
        widths: Sequence[int] = WIDTHS,
        init: str = "pytorch",
    ):
        super().__init__()
        if depths is None:
            if depth not in DEPTHS:
                raise ModelNameError(
                    f"CIFAR VGG depth must be one of {sorted(DEPTHS)} (or pass depths=(n1, ..., n5)), got {depth}"
                )
            depths = DEPTHS[depth]
        depths, widths = tuple(int(d) for d in depths), tuple(int(w) for w in widths)
        if len(depths) != len(widths) or any(d < 1 for d in depths):
            raise ModelNameError(
                f"CIFAR VGG needs one positive conv count per stage: depths={depths} for widths={widths}"
            )
        # VGG-N names count the three FC layers of the original ImageNet VGG; the CIFAR
        # variant (open_lth) keeps one, so VGG-16 has 13 convs + 1 linear.
        self.depth = sum(depths) + 3
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, (d, w) in enumerate(zip(depths, widths)):
            if i > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for _ in range(d):
                layers.append(ConvBlock(c_in, w))
                c_in = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)
        apply_init(self, init, model_name=f"cifar_vgg_{self.depth}")

    def forward(self, x):
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))
