"""Magnitude pruning: one IMP round (remove a fraction of the remaining weights) or
one-shot pruning to a target sparsity, on a model's or a state_dict's weights."""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn

from ..errors import ConfigError
from .. import masks
from ..masks import Mask
from . import _core


def magnitude(
    model_or_state: nn.Module | Mapping[str, torch.Tensor],
    mask: Mapping[str, torch.Tensor] | None = None,
    *,
    fraction: float | None = None,
    sparsity: float | None = None,
    scope: str = "global",
    names: Iterable[str] | None = None,
    include_first: bool = True,
    include_last: bool = True,
    n_m: str | tuple[int, int] | None = None,
) -> Mask:
    """A new mask keeping the largest-|w| weights among those ``mask`` keeps.

    ``fraction`` (default 0.2): remove that share of the *remaining* weights, one IMP round
    (keeps ``round(kept * (1 - fraction))``). ``sparsity``: one-shot, keep
    ``round(total * (1 - sparsity))`` of all prunable weights. ``scope="global"`` ranks all
    tensors together (the LTH papers), ``"layerwise"`` each tensor on its own. For a
    state_dict, which tensors to prune comes from ``names`` or ``mask``. Nothing is modified.

    ``n_m="2:4"`` (or ``(4, 8)``, ...): N:M semi-structured instead, in every pruned tensor
    each run of M consecutive weights along the input dimension keeps its N largest |w|
    (ties: the lower index), among those ``mask`` keeps; the sparsity is 1 - N/M. A
    state_dict's tensors are taken as ``(out, in, ...)``; a model's GPT-2 ``Conv1D``
    weights as the ``(in, out)`` they are.
    """
    method = "magnitude"
    _core.check_scope(scope, method)
    if fraction is not None and sparsity is not None:
        raise ConfigError(f"{method}: give fraction (one IMP round) or sparsity (one shot), not both")
    if n_m is not None:
        if fraction is not None or sparsity is not None or scope != "global":
            raise ConfigError(f"{method}: n_m={n_m!r} sets the sparsity (1 - N/M, per group of M inputs); "
                              "give it without fraction, sparsity or scope")
        n_m = _core.parse_n_m(n_m, method)
        sparsity = 0.0  # not used
    elif sparsity is None:
        fraction = _core.check_unit(0.2 if fraction is None else fraction, "fraction", method)
    else:
        sparsity = _core.check_unit(sparsity, "sparsity", method)

    if isinstance(model_or_state, nn.Module):
        names_, current, extra = _core.resolve_model(
            model_or_state, names=names, mask=mask, include_first=include_first,
            include_last=include_last, method=method,
        )
        weights = {n: model_or_state.get_parameter(n + "_orig" if _has_orig(model_or_state, n) else n)
                   for n in names_}
    elif isinstance(model_or_state, Mapping):
        raw = model_or_state
        if mask is None:
            installed = _core.installed_mask_in_state(raw)
            mask = installed or None
        state = masks.plain_state(raw)
        # weight_orig/weight_mask pairs (a state_dict of a prune-installed model) become the
        # effective weight; their masks are the starting mask unless one is given.
        bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        if bad:
            raise ConfigError(f"{method}: state_dict entries {bad[:3]} are not name -> tensor")
        shapes = {k: v.shape for k, v in state.items()}
        names_, current, extra = _core.resolve(
            shapes, model=None, names=names, mask=mask, include_first=include_first,
            include_last=include_last, method=method, label="the state_dict",
        )
        weights = {n: state[n] for n in names_}
    else:
        raise ConfigError(
            f"{method}: expected an nn.Module or a state_dict, got {type(model_or_state).__name__}"
        )
    nonfloat = [n for n, w in weights.items() if not w.is_floating_point()]
    if nonfloat:
        raise ConfigError(f"{method}: tensors {nonfloat[:3]} are not floating-point weights")
    if n_m is not None:
        model = model_or_state if isinstance(model_or_state, nn.Module) else None
        new = {}
        for name in names_:
            il = _core.input_last(model, name)
            keep = _core.n_m_keep(_core.as_rows(weights[name].detach(), il), _core.as_rows(current[name], il),
                                  *n_m, name=name, method=method, transform=torch.abs)
            new[name] = _core.from_rows(keep, current[name], il)
        return {**new, **{k: v.clone() for k, v in extra.items()}}
    # |w| is taken chunk by chunk inside select: no copy of the weights is made
    if sparsity is not None:
        new = _core.select(weights, current, scope=scope, density=1.0 - sparsity, method=method, transform=torch.abs,
                               nonnegative=True)
    else:
        new = _core.select(weights, current, scope=scope, keep_remaining=1.0 - fraction, method=method,
                           transform=torch.abs, nonnegative=True)
    return {**new, **{k: v.clone() for k, v in extra.items()}}


def _has_orig(model: nn.Module, name: str) -> bool:
    mod, _, attr = name.rpartition(".")
    return hasattr(model.get_submodule(mod), attr + "_orig")
