"""MobileNetV2 for small images: torchvision's MobileNetV2 (same blocks and module
names as ``tv:mobilenet_v2``) with a stride-1 stem and the CIFAR stride plan
(overall stride 8: 32 px -> 4x4, 28 px -> 4x4 before the head)."""

from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import ModelNameError

# (expansion t, channels c, blocks n, stride s) per stage; strides as in the common
# CIFAR adaptation (stride 1 in the stem and the first two stages).
CIFAR_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 1),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def cifar_mobilenet_v2(
    *,
    num_classes: int = 10,
    in_chans: int = 3,
    depths: Sequence[int] | None = None,
    inverted_residual_setting: Sequence[Sequence[int]] | None = None,
    width_mult: float = 1.0,
    dropout: float = 0.2,
) -> nn.Module:
    """MobileNetV2 for 28/32 px inputs. ``depths`` (7 block counts) changes only the
    number of blocks per stage; ``inverted_residual_setting`` replaces the whole
    ``(t, c, n, s)`` table."""
    from torchvision.models import MobileNetV2

    if depths is not None and inverted_residual_setting is not None:
        raise ModelNameError("cifar_mobilenet_v2: pass depths= or inverted_residual_setting=, not both")
    setting = [list(r) for r in (inverted_residual_setting or CIFAR_SETTING)]
    if depths is not None:
        depths = [int(d) for d in depths]
        if len(depths) != len(setting) or any(d < 1 for d in depths):
            raise ModelNameError(
                f"cifar_mobilenet_v2: depths needs {len(setting)} positive block counts, got {depths}"
            )
        for row, d in zip(setting, depths):
            row[2] = d
    if any(len(r) != 4 for r in setting):
        raise ModelNameError(f"cifar_mobilenet_v2: every setting row is (t, c, n, s), got {setting}")
    model = MobileNetV2(num_classes=num_classes, width_mult=width_mult,
                        inverted_residual_setting=setting, dropout=dropout)
    stem: nn.Conv2d = model.features[0][0]
    new_stem = nn.Conv2d(in_chans, stem.out_channels, 3, 1, 1, bias=False)
    nn.init.kaiming_normal_(new_stem.weight, mode="fan_out")  # torchvision's init for convs
    model.features[0][0] = new_stem
    return model
