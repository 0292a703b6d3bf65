"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al.
2020), as a driver around a user-supplied training callable."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from .. import masks
from ..errors import ConfigError
from ..masks import Mask
from . import _core
from .magnitude import magnitude

State = dict[str, torch.Tensor]
TrainFn = Callable[[nn.Module, Mask], tuple]


@dataclass
class ImpLevel:
    """One IMP level: its mask, the weights trained under it, the rewind point all levels
    restart from, and whatever else ``train_fn`` returned (``result``)."""

    level: int
    mask: Mask
    sparsity: float
    trained_state: State
    rewind_state: State
    result: Any = None


def _snapshot(state: Any, what: str, level: int) -> State:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(f"imp level {level}: train_fn's {what} must be a state_dict (name -> tensor)")
    return {k: v.detach().to("cpu", copy=True) for k, v in masks.plain_state(state).items()}


def _call(train_fn: TrainFn, model: nn.Module, mask: Mask, level: int) -> tuple[State, Any, Any]:
    out = train_fn(model, {k: v.clone() for k, v in mask.items()})
    if not isinstance(out, tuple) or len(out) not in (2, 3):
        raise ConfigError(
            f"imp level {level}: train_fn must return (trained_state_dict, rewind_state_dict) or "
            f"(trained, rewind, result), got {type(out).__name__}"
        )
    return out[0], out[1], out[2] if len(out) == 3 else None


def _start_model(base: nn.Module, rewind: State, mask: Mask, level: int) -> nn.Module:
    """A fresh copy of the model holding the rewind weights, pruned weights zeroed."""
    net = copy.deepcopy(base)
    try:
        net.load_state_dict({k: v for k, v in rewind.items()}, strict=True)
    except RuntimeError as e:
        raise ConfigError(
            f"imp level {level}: the rewind state_dict does not fit {type(base).__name__}: {e}"
        ) from e
    with torch.no_grad():
        for n, b in mask.items():
            p = net.get_parameter(n)
            p.mul_(b.to(device=p.device, dtype=p.dtype))
    return net


def imp(
    model: nn.Module,
    train_fn: TrainFn,
    *,
    rounds: int,
    fraction: float = 0.2,
    scope: str = "global",
    names: Iterable[str] | None = None,
    include_first: bool = True,
    include_last: bool = True,
    on_level: Callable[[ImpLevel], None] | None = None,
    start: ImpLevel | tuple[int, Mapping[str, torch.Tensor], State, State] | None = None,
) -> list[ImpLevel]:
    """Run IMP with rewinding for ``rounds`` pruning rounds; level n has density
    ``(1 - fraction) ** n`` up to rounding (each round keeps ``round(kept * (1 - fraction))``).

    ``train_fn(model, mask) -> (trained_state, rewind_state[, result])`` trains ``model``
    (a fresh copy holding the weights to start from) under ``mask``. Level 0 is the dense
    run; its ``rewind_state`` (the weights at step k; k = 0 is the original LTH) is the
    rewind point of every later level, whose own second element is ignored (may be None).
    Level n: ``mask_n = magnitude(trained_{n-1}, mask_{n-1}, fraction)``, the model is
    reset to the rewind weights (pruned ones zeroed) and trained under ``mask_n``.
    ``on_level`` is called after each level is trained (e.g. to cache it); ``start`` (an
    :class:`ImpLevel` or ``(level, mask, trained_state, rewind_state)``) resumes after that
    level. Returns the levels from ``start``'s (or 0) to ``rounds``; ``model`` is unchanged.
    """
    method = "imp"
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ConfigError(f"{method}: rounds must be an integer >= 0, got {rounds!r}")
    fraction = _core.check_unit(fraction, "fraction", method)
    _core.check_scope(scope, method)
    if not callable(train_fn):
        raise ConfigError(f"{method}: train_fn must be callable (model, mask) -> (trained, rewind)")
    if isinstance(model, nn.Module):
        _core.require_values(model, method)
    base = masks.copy_model(model)
    if masks.from_model(base):
        masks.remove(base)

    levels: list[ImpLevel] = []
    if start is None:
        names_, mask0, _ = _core.resolve_model(
            base, names=names, mask=None, include_first=include_first, include_last=include_last, method=method
        )
        trained, rewind, result = _call(train_fn, copy.deepcopy(base), mask0, 0)
        if rewind is None:
            raise ConfigError(f"{method} level 0: train_fn must return the rewind state_dict of the dense run")
        prev = ImpLevel(0, mask0, 0.0, _snapshot(trained, "trained state", 0), _snapshot(rewind, "rewind state", 0), result)
        if on_level is not None:
            on_level(prev)
    else:
        if not isinstance(start, ImpLevel):
            if not (isinstance(start, tuple) and len(start) == 4):
                raise ConfigError(f"{method}: start must be an ImpLevel or (level, mask, trained_state, rewind_state)")
            lvl, m, tr, rw = start
            start = ImpLevel(lvl, m, 0.0, tr, rw)
        if isinstance(start.level, bool) or not isinstance(start.level, int) or not 0 <= start.level <= rounds:
            raise ConfigError(f"{method}: start level must be an integer in [0, rounds={rounds}], got {start.level!r}")
        m = masks.check_mask(base, start.mask, model_name=type(model).__name__)
        if not m:
            raise ConfigError(f"{method}: the start mask is empty; it must cover the prunable tensors")
        prev = ImpLevel(
            start.level, m, masks.sparsity(m), _snapshot(start.trained_state, "trained state", start.level),
            _snapshot(start.rewind_state, "rewind state", start.level), start.result,
        )
    levels.append(prev)

    for level in range(prev.level + 1, rounds + 1):
        mask = magnitude(prev.trained_state, prev.mask, fraction=fraction, scope=scope)
        net = _start_model(base, prev.rewind_state, mask, level)
        trained, _, result = _call(train_fn, net, mask, level)
        prev = ImpLevel(level, mask, masks.sparsity(mask), _snapshot(trained, "trained state", level),
                        prev.rewind_state, result)
        if on_level is not None:
            on_level(prev)
        levels.append(prev)
    return levels
