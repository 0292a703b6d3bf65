"""Pruning methods, each a pure function from a model (its weights, the current mask,
data where needed, a target) to a NEW :data:`elastigraph.masks.Mask`:

- :func:`magnitude`: one IMP round or one-shot magnitude pruning;
- :func:`imp`: iterative magnitude pruning with rewinding, around a training callable;
- :func:`random`, :func:`snip`, :func:`grasp`, :func:`synflow`: pruning at init;
- :func:`shuffle`: a mask's entries permuted within each tensor (exact per-tensor counts:
  the layerwise random and permuted-copies baselines);
- :func:`wanda`: one-shot |w| times input-norm pruning per output row, from calibration
  batches (language models); it and :func:`magnitude` also make N:M masks (``n_m="2:4"``).

Common rules: the pruned tensors are ``names``, else the mask's keys, else
:func:`elastigraph.masks.prunable_parameters` (``include_first``/``include_last``);
already-pruned weights stay pruned; exactly ``round(total * density)`` weights are
kept, ties broken by tensor then index order; models and masks given are never changed.
Look a method up by name with :func:`by_name` (``METHODS`` lists them).
"""

from __future__ import annotations

from typing import Callable

from ..errors import StrategyError
from .at_init import grasp, grasp_scores, infer_input_shape, random, snip, synflow
from .imp import ImpLevel, imp
from .magnitude import magnitude
from .shuffle import shuffle
from .wanda import wanda, wanda_scores

METHODS: dict[str, Callable[..., object]] = {
    "imp": imp,
    "magnitude": magnitude,
    "random": random,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
    "wanda": wanda,
}


def by_name(name: str) -> Callable[..., object]:
    """The pruning method called ``name`` (a key of :data:`METHODS`)."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise StrategyError(
            f"unknown pruning method {name!r}; valid names: {', '.join(sorted(METHODS))}"
        ) from None


__all__ = [
    "METHODS",
    "by_name",
    "magnitude",
    "imp",
    "ImpLevel",
    "random",
    "snip",
    "grasp",
    "grasp_scores",
    "synflow",
    "shuffle",
    "wanda",
    "wanda_scores",
    "infer_input_shape",
]
