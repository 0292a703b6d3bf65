"""What every pruning method shares: which tensors it prunes, the mask it starts from,
and the exact, deterministic top-k selection that turns scores into a nested mask."""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Literal, Mapping

import torch
from torch import nn

from .. import masks
from ..errors import ConfigError, MaskError, ModelTypeError
from ..masks import Mask

Scope = Literal["global", "layerwise"]
SCOPES = ("global", "layerwise")


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (Python's ``round`` rounds halves to even)."""
    return int(math.floor(x + 0.5))


def check_scope(scope: str, method: str) -> None:
    if scope not in SCOPES:
        raise ConfigError(f"{method}: scope must be one of {SCOPES}, got {scope!r}")


def check_unit(value: Any, what: str, method: str) -> float:
    """A float in [0, 1] (sparsity, fraction), else :class:`ConfigError`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{method}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


def installed_mask_in_state(state: Mapping[str, torch.Tensor]) -> Mask:
    """The ``torch.nn.utils.prune`` masks stored in a state_dict, by public name."""
    return {
        k[: -len("_mask")]: state[k].detach().to("cpu") != 0
        for k in state
        if k.endswith("_mask") and k[: -len("_mask")] + "_orig" in state
    }


def resolve(
    shapes: Mapping[str, torch.Size],
    *,
    model: nn.Module | None,
    names: Iterable[str] | None,
    mask: Mapping[str, torch.Tensor] | None,
    include_first: bool,
    include_last: bool,
    method: str,
    label: str,
) -> tuple[list[str], Mask, Mask]:
    """Which tensors to prune and the mask to start from.

    The pruned set is ``names`` if given, else the keys of ``mask``, else
    :func:`masks.prunable_parameters`. Returns ``(names, current, extra)``: ``current`` is
    the starting mask over ``names`` (dense where ``mask`` has no entry) and ``extra`` the
    entries of ``mask`` outside ``names``, carried through unchanged.
    """
    given: Mask = {}
    if mask is not None:
        given = masks._as_mask(mask, f"mask given to {method} for {label}")
        for k, t in given.items():
            if k not in shapes:
                raise MaskError(f"{method}: mask key {k!r} is not a parameter of {label}")
            if tuple(t.shape) != tuple(shapes[k]):
                raise MaskError(
                    f"{method}: mask entry {k!r} has shape {tuple(t.shape)} but {label}.{k} has "
                    f"shape {tuple(shapes[k])}"
                )
    if names is not None:
        if isinstance(names, str):
            raise ConfigError(f"{method}: names must be a list of parameter names, got the string {names!r}")
        chosen = list(dict.fromkeys(names))
        unknown = [n for n in chosen if n not in shapes]
        if unknown:
            raise MaskError(f"{method}: {unknown[:3]} are not parameters of {label}")
    elif mask is not None:
        chosen = list(given)
    elif model is not None:
        chosen = masks.prunable_parameters(model, include_first=include_first, include_last=include_last)
    else:
        raise ConfigError(
            f"{method}: a state_dict does not say which tensors are prunable; pass names=[...] or "
            "mask=elastigraph.masks.full_mask(model)"
        )
    if not chosen:
        raise ConfigError(f"{method}: {label} has no tensors to prune (names/mask empty or no conv/linear weights)")
    current = {n: given[n] if n in given else torch.ones(shapes[n], dtype=torch.bool) for n in chosen}
    extra = {k: v for k, v in given.items() if k not in current}
    return chosen, current, extra


def require_values(model: nn.Module, method: str) -> None:
    """:class:`ModelTypeError` when ``model`` has parameters on the meta device: ``method``
    scores weight values, and a meta tensor has a shape but no values."""
    meta = [n for n, p in model.named_parameters() if p.is_meta]
    if meta:
        raise ModelTypeError(
            f"{method}: {type(model).__name__} has {len(meta)} parameter(s) on the meta device ({meta[:3]}): they "
            f"have shapes but no values, and {method} scores weight values; build the model on the CPU (or "
            "model.to_empty(device='cpu') and load its weights). Only prune.random works from shapes alone")


def model_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Parameter shapes by public name (``weight``, not ``weight_orig``)."""
    return masks._param_shapes(model)


def resolve_model(
    model: nn.Module,
    *,
    names: Iterable[str] | None,
    mask: Mapping[str, torch.Tensor] | None,
    include_first: bool,
    include_last: bool,
    method: str,
    needs_values: bool = True,
) -> tuple[list[str], Mask, Mask]:
    """:func:`resolve` for a model; with no ``mask`` given, masks installed in the model
    (``torch.nn.utils.prune``) are the starting point, so pruned weights stay pruned.
    ``needs_values``: the method reads the weights (every one but random pruning), so a
    model on the meta device (shapes only) is refused up front."""
    if not isinstance(model, nn.Module):
        raise ConfigError(f"{method}: expected an nn.Module, got {type(model).__name__}")
    if needs_values:
        require_values(model, method)
    if mask is None:
        installed = masks.from_model(model)
        if installed:
            mask = installed
            if names is None:  # prune what prunable_parameters says, starting from the installed masks
                names = masks.prunable_parameters(model, include_first=include_first, include_last=include_last)
    return resolve(
        model_shapes(model),
        model=model,
        names=names,
        mask=mask,
        include_first=include_first,
        include_last=include_last,
        method=method,
        label=type(model).__name__,
    )


def select(
    scores: Mapping[str, torch.Tensor],
    current: Mask,
    *,
    scope: str,
    density: float | None = None,
    keep_remaining: float | None = None,
    clamp: bool = False,
    method: str,
) -> Mask:
    """Keep the highest-scoring entries among those ``current`` keeps; the rest are
    pruned (masks are nested). Exactly ``k = round(total * density)`` entries are kept, or
    ``round(kept * keep_remaining)``; per tensor with ``scope="layerwise"``. Ties keep the
    entry that comes first (tensor order, then flat index): a stable sort, no randomness.
    ``clamp`` caps k at what is still kept instead of raising."""
    if (density is None) == (keep_remaining is None):
        raise ConfigError(f"{method}: give exactly one of density and keep_remaining")
    names = list(current)
    if scope == "global":
        groups = [names]
    else:
        groups = [[n] for n in names]
    out: Mask = {}
    for group in groups:
        alive = torch.cat([current[n].flatten() for n in group])
        kept = int(alive.sum())
        if density is not None:
            k = round_half_up(alive.numel() * density)
        else:
            k = round_half_up(kept * keep_remaining)
        if k > kept:
            if not clamp:
                where = "in total" if scope == "global" else f"in {group[0]!r}"
                raise ConfigError(
                    f"{method}: the target keeps {k} weights {where} but the current mask keeps only "
                    f"{kept}: pruning never regrows weights; choose a higher sparsity"
                )
            k = kept
        flat = torch.cat([scores[n].detach().to("cpu", torch.float64).flatten() for n in group])
        idx = alive.nonzero().squeeze(1)
        cand = flat[idx]
        if torch.isnan(cand).any():
            bad = [n for n in group if torch.isnan(scores[n].detach().to("cpu", torch.float64)[current[n]]).any()]
            raise ConfigError(f"{method}: scores of {bad[:3]} contain NaN (diverged weights or gradients?)")
        keep = torch.zeros(alive.numel(), dtype=torch.bool)
        keep[idx[_top_k_stable(cand, k)]] = True
        for n, part in zip(group, torch.split(keep, [current[n].numel() for n in group])):
            out[n] = part.view(current[n].shape).clone()
    return out


def _top_k_stable(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` largest entries of the 1-d ``x``, ties going to the lower index:
    the same set as the first k of a stable descending sort, in O(n) (``kthvalue``)."""
    n = x.numel()
    if k <= 0:
        return torch.zeros(0, dtype=torch.long)
    if k >= n:
        return torch.arange(n)
    thr = torch.kthvalue(x, n - k + 1).values  # the k-th largest value
    above = (x > thr).nonzero().squeeze(1)
    ties = (x == thr).nonzero().squeeze(1)[: k - above.numel()]
    return torch.cat([above, ties])


def scoring_copy(model: nn.Module, current: Mask) -> nn.Module:
    """A deep copy of ``model`` with plain parameters (installed prune masks made
    permanent) and the weights ``current`` prunes set to zero; the input is untouched."""
    net = masks.copy_model(model)
    if masks.from_model(net):
        masks.remove(net)
    with torch.no_grad():
        for n, b in current.items():
            p = net.get_parameter(n)
            p.mul_(b.to(device=p.device, dtype=p.dtype))
    return net


def batches_of(batches: Iterable[Any], method: str, model: nn.Module | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield the ``(x, y)`` pairs of ``batches``; :class:`ConfigError` for anything else or
    none. With ``model``, the model/data pairing is checked on the first batch before it
    is used (:func:`elastigraph.train.pairing.check_pairing`) and every batch's targets
    against the model's outputs."""
    from ..train.pairing import check_pairing, check_targets

    if batches is None or isinstance(batches, (str, bytes, torch.Tensor)) or not hasattr(batches, "__iter__"):
        raise ConfigError(f"{method}: batches must be an iterable of (inputs, targets) pairs of tensors "
                          f"(e.g. a list or a DataLoader), got {type(batches).__name__}")
    n = 0
    outputs = None
    for b in batches:
        if not (isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[0], torch.Tensor)):
            raise ConfigError(
                f"{method}: each batch must be an (inputs, targets) pair of tensors, got {type(b).__name__}"
            )
        x, y = b[0], b[1]
        per_token = isinstance(y, torch.Tensor) and not x.is_floating_point() and x.dim() == 2 and y.shape == x.shape
        if not isinstance(y, torch.Tensor) or (y.dim() != 1 and not per_token) or len(y) != len(x) or (
                y.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8) and len(y) and int(y.min()) < 0):
            raise ConfigError(
                f"{method}: batch {n}: targets must be a 1-D tensor of {len(x)} class indices >= 0 "
                f"(one per input; for token ids x of shape (N, T): next tokens of the same shape), got {type(y).__name__} {tuple(getattr(y, 'shape', ()))}"
            )
        if model is not None:
            data = f"{method} batch {n}"
            if outputs is None:
                outputs = check_pairing(model, x, y, data_name=data, sequence=per_token)
            else:
                check_targets(y, outputs, model=type(model).__name__, data=data)
        n += 1
        yield x, y
    if n == 0:
        raise ConfigError(f"{method}: no batches given; pass an iterable of (inputs, targets) pairs")
