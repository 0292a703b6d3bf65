"""The tiny recipe the runner tests share (issue 17: one definition instead of copies):
a ResNet-14 -> ResNet-20 stretch at width 4 on 64 synthetic images, 2 training steps per
step. ``tiny(**overrides)`` gives a fresh dict with top-level sections replaced or, for
mappings, merged (``tiny(prune={"rounds": 1})`` keeps the other prune settings)."""

from __future__ import annotations

import copy
from typing import Any

BASE: dict[str, Any] = {
    "name": "tiny",
    "dataset": {"name": "synthetic", "train_limit": 64, "test_limit": 32},
    "source": "cifar_resnet_14?width=4",
    "prune": {"rounds": 2, "fraction": 0.2, "rewind_step": 1},
    "train": {"steps": 2, "batch_size": 16, "augment": False},
    "targets": [{"model": "cifar_resnet_20?width=4"}],
    "baselines": ["random", "dense"],
    "seeds": [0],
    "device": "cpu",
}


def tiny(**overrides: Any) -> dict[str, Any]:
    out = copy.deepcopy(BASE)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **copy.deepcopy(value)}
        else:
            out[key] = copy.deepcopy(value)
    return out
