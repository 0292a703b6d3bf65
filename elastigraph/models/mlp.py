"""Fully connected ReLU networks for small images (the LeNet-300-100 family of open_lth /
the E-LTH paper's ``mnist_lenet_*``): the image is flattened, then hidden
``nn.Linear`` + ReLU layers, then one linear head.

The first hidden layer maps the flattened image (784 values for 28x28x1) to the hidden
width, so it changes the shape: the graph analysis treats it as the stage's block 0 (kept
as is by a transfer) and the equal-width hidden layers after it as the blocks a transfer
replicates or drops. Layers are ``fc_layers.<i>`` then ``fc``, as in open_lth.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ModelNameError


class MLP(nn.Module):
    """``hidden`` widths (e.g. ``(300, 100)`` = LeNet-300-100) for ``in_chans`` x
    ``img_size`` x ``img_size`` images and ``num_classes`` outputs."""

    def __init__(self, hidden: Sequence[int], num_classes: int = 10, in_chans: int = 1, img_size: int | Sequence[int] = 28):
        super().__init__()
        hidden = tuple(int(h) for h in hidden)
        if not hidden or any(h < 1 for h in hidden):
            raise ModelNameError(f"MLP needs at least one hidden layer of positive width, got hidden={hidden}")
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if in_chans < 1 or h < 1 or w < 1:
            raise ModelNameError(f"MLP input must be positive: in_chans={in_chans}, img_size={img_size}")
        self.hidden = hidden
        sizes = (in_chans * h * w, *hidden)
        self.fc_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.fc = nn.Linear(hidden[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(x, 1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)


def mlp(depth: int = 2, width: int = 300, **kw) -> MLP:
    """``depth`` hidden layers all of ``width`` units (``mlp?depth=4&width=300``)."""
    if int(depth) < 1 or int(width) < 1:
        raise ModelNameError(f"mlp needs depth >= 1 and width >= 1, got depth={depth}, width={width}")
    return MLP([int(width)] * int(depth), **kw)
