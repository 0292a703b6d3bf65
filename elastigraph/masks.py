"""One mask type for the whole library: ``{parameter name: bool tensor}``.

Everything that produces or consumes a ticket's mask (transfer, pruning, training,
files) goes through this module: validation, which tensors are prunable, installing a
mask into a model's forward (``torch.nn.utils.prune`` style) and reading it back.
"""

from __future__ import annotations

from typing import Iterable, Mapping

import torch
from torch import nn
from torch.nn.utils import prune as _tprune

from .errors import MaskError, MaskTypeError

Mask = dict[str, torch.Tensor]
"""Parameter name (as in ``model.named_parameters()``) -> bool tensor of the same shape."""


def _model_label(model: nn.Module, name: str | None) -> str:
    return name or type(model).__name__


def _param_shapes(model: nn.Module) -> dict[str, torch.Size]:
    """Parameter names and shapes; for a model pruned with torch.nn.utils.prune the
    ``weight_orig`` entries are reported under their public name ``weight``."""
    shapes: dict[str, torch.Size] = {}
    for n, p in model.named_parameters():
        if n.endswith("_orig"):
            n = n[: -len("_orig")]
        shapes[n] = p.shape
    return shapes


def check_mask(model: nn.Module, mask: Mapping[str, torch.Tensor], *, model_name: str | None = None) -> Mask:
    """Validate ``mask`` against ``model`` and return a new dict of bool CPU tensors.

    Accepts bool tensors or numeric tensors holding only 0 and 1, for any subset of the
    model's parameters. Raises :class:`MaskError` naming the offending key.
    """
    label = _model_label(model, model_name)
    if not isinstance(mask, Mapping):
        raise MaskTypeError(
            f"mask for {label} must be a dict of parameter name -> 0/1 tensor, got {type(mask).__name__}"
        )
    shapes = _param_shapes(model)
    out: Mask = {}
    for key, t in mask.items():
        if not isinstance(key, str):
            raise MaskTypeError(f"mask for {label}: key {key!r} is not a string parameter name")
        if not isinstance(t, torch.Tensor):
            raise MaskTypeError(f"mask for {label}: entry {key!r} is a {type(t).__name__}, expected a tensor")
        if key not in shapes:
            close = [n for n in shapes if n.endswith(key.split(".")[-1])][:3]
            hint = f"; parameters with a similar name: {close}" if close else ""
            raise MaskError(
                f"mask key {key!r} is not a parameter of {label} "
                f"(mask keys must be names from model.named_parameters(){hint})"
            )
        if tuple(t.shape) != tuple(shapes[key]):
            raise MaskError(
                f"mask entry {key!r} has shape {tuple(t.shape)} but {label}.{key} has shape {tuple(shapes[key])}"
            )
        if t.dtype == torch.bool:
            b = t.detach().to("cpu").clone()
        else:
            td = t.detach().to("cpu")
            if td.is_complex() or not bool(((td == 0) | (td == 1)).all()):
                bad = td[(td != 0) & (td != 1)].flatten()[:3].tolist()
                raise MaskError(
                    f"mask entry {key!r} for {label} is not binary (found values such as {bad}); "
                    "use a bool tensor or one holding only 0 and 1"
                )
            b = td != 0
        out[key] = b
    return out


def prunable_parameters(
    model: nn.Module,
    *,
    include_first: bool = True,
    include_last: bool = True,
    layer_types: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear),
) -> list[str]:
    """Names of the weights that pruning considers: conv and linear weights by default
    (biases, norms and embeddings never), in module order. ``include_first``/``include_last``
    switch the first such layer (the stem) and the last one (the classifier)."""
    names = [
        f"{mname}.weight" if mname else "weight"
        for mname, m in model.named_modules()
        if isinstance(m, layer_types) and getattr(m, "weight", None) is not None
    ]
    if names and not include_first:
        names = names[1:]
    if names and not include_last:
        names = names[:-1]
    return names


def full_mask(model: nn.Module, names: Iterable[str] | None = None) -> Mask:
    """An all-ones (dense) mask over ``names`` (default: :func:`prunable_parameters`)."""
    shapes = _param_shapes(model)
    names = prunable_parameters(model) if names is None else list(names)
    missing = [n for n in names if n not in shapes]
    if missing:
        raise MaskError(f"{type(model).__name__} has no parameter(s) {missing[:3]}")
    return {n: torch.ones(shapes[n], dtype=torch.bool) for n in names}


def _split(name: str) -> tuple[str, str]:
    mod, _, attr = name.rpartition(".")
    return mod, attr


def install(model: nn.Module, mask: Mapping[str, torch.Tensor], *, model_name: str | None = None) -> nn.Module:
    """Put ``mask`` into ``model``'s forward with ``torch.nn.utils.prune`` (``weight_orig``
    parameter, ``weight_mask`` buffer, a pre-forward hook). Pruned entries of the
    effective weight are exactly zero whatever the optimizer does to ``weight_orig``.
    Entries already installed are replaced. Returns ``model``."""
    m = check_mask(model, mask, model_name=model_name)
    for name, b in m.items():
        mod_name, attr = _split(name)
        module = model.get_submodule(mod_name)
        if hasattr(module, attr + "_mask"):
            getattr(module, attr + "_mask").copy_(b.to(getattr(module, attr + "_mask").dtype))
            continue
        device = getattr(module, attr).device
        _tprune.custom_from_mask(module, attr, b.to(device))
    return model


def from_model(model: nn.Module) -> Mask:
    """Read the masks that ``torch.nn.utils.prune`` installed in ``model`` (its
    ``*_mask`` buffers), keyed by the public parameter name (``layer.weight``)."""
    out: Mask = {}
    for mod_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, _tprune.BasePruningMethod):
                hooks = hook._pruning_methods if isinstance(hook, _tprune.PruningContainer) else [hook]
                attr = hooks[-1]._tensor_name
                buf = getattr(module, attr + "_mask")
                out[f"{mod_name}.{attr}" if mod_name else attr] = buf.detach().to("cpu") != 0
    return out


def remove(model: nn.Module) -> nn.Module:
    """Make installed masks permanent (``prune.remove``): plain parameters again, with
    pruned entries zero. Returns ``model``."""
    for name in list(from_model(model)):
        mod_name, attr = _split(name)
        _tprune.remove(model.get_submodule(mod_name), attr)
    return model


def density(mask: Mapping[str, torch.Tensor]) -> float:
    """Fraction of entries kept over all tensors of ``mask`` (1.0 for an empty mask)."""
    total = sum(t.numel() for t in mask.values())
    kept = sum(int(t.sum()) for t in mask.values())
    return kept / total if total else 1.0


def sparsity(mask: Mapping[str, torch.Tensor]) -> float:
    """1 - :func:`density`."""
    return 1.0 - density(mask)
