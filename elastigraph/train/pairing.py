"""Does a model fit its data? Checked once, before any work, by every entry point that
feeds data to a model (``train``, ``train_fleet``, ``evaluate``, SNIP, GraSP, the CLI):
one forward of two examples in eval mode (no gradients, no state change, no random
numbers drawn) under the conditions the work will run in, then the output against the
targets. A mismatch raises :class:`~elastigraph.errors.PairingError` naming both sides
(the model's first layer, parameter precision and device; the data's input shape,
precision and classes) instead of a RuntimeError from deep inside torch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch import Tensor, nn

from ..errors import PairingError

_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def describe_model(model: nn.Module, name: str | None = None) -> str:
    """``'CifarResNet (first layer conv: Conv2d taking 3 channels; float32 parameters on cpu)'``."""
    label = name or type(model).__name__
    first = next(((n, m) for n, m in model.named_modules()
                  if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.Embedding))), None)
    parts = []
    if first is not None:
        n, m = first
        if isinstance(m, nn.Linear):
            takes = f"{m.in_features} input features"
        elif isinstance(m, nn.Embedding):
            takes = f"token ids below {m.num_embeddings}"
        else:
            takes = f"{m.in_channels} channel(s)"
        parts.append(f"first layer {n or '<root>'}: {type(m).__name__} taking {takes}")
    params = [p for p in model.parameters() if p.is_floating_point()]
    if params:
        dtypes = sorted({str(p.dtype).replace("torch.", "") for p in params})
        parts.append(f"{'/'.join(dtypes)} parameters on {params[0].device}")
    return f"{label} ({'; '.join(parts)})" if parts else label


def describe_data(x: Tensor, y: Tensor | None, name: str, num_classes: int | None = None) -> str:
    """``'fashion_mnist (inputs (1, 28, 28) float32 on cpu; 10 classes)'``."""
    parts = [f"inputs {tuple(x.shape[1:])} {str(x.dtype).replace('torch.', '')} on {x.device}"]
    if num_classes is not None:
        parts.append(f"{num_classes} classes")
    elif y is not None and y.numel() and not y.is_floating_point():
        parts.append(f"labels up to {int(y.max())}")
    return f"{name} ({'; '.join(parts)})"


def check_targets(y: Any, outputs: int, *, model: str, data: str) -> None:
    """Targets are integer class (or token) indices in ``[0, outputs)``, else
    :class:`PairingError` naming both sides. Cheap (no forward): run on every batch."""
    if not isinstance(y, Tensor):
        raise PairingError(f"{data}: targets must be a tensor of class indices, got {type(y).__name__}")
    if y.dtype not in _INT_DTYPES:
        raise PairingError(
            f"{data}: targets are {str(y.dtype).replace('torch.', '')}, but {model} is trained on class indices; "
            "give integer labels (y.long()), not one-hot or probabilities")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= outputs):
        bad = int(y.max()) if int(y.max()) >= outputs else int(y.min())
        raise PairingError(
            f"{data} has label {bad}, but {model} has {outputs} outputs (labels 0..{outputs - 1}); "
            f"build the model with num_classes={int(y.max()) + 1} or more, or relabel the data")


def _modes(model: nn.Module) -> list[tuple[nn.Module, bool]]:
    return [(m, m.training) for m in model.modules()]


def check_pairing(
    model: nn.Module,
    x: Tensor,
    y: Tensor | None = None,
    *,
    num_classes: int | None = None,
    model_name: str | None = None,
    data_name: str = "the data",
    autocast: Callable[[], Any] | None = None,
    sequence: bool = False,
) -> int:
    """Run ``model`` on (up to) the first two rows of ``x`` and check the result against
    the data: the forward must succeed, the output must have one row of class scores
    per input (``(N, K)``; ``sequence=True``: ``(N, T, K)`` for token targets), ``K``
    must cover ``num_classes`` (the data's classes, when known) and the targets ``y``
    must be integer indices below ``K``. Returns ``K``. The model is left exactly as it
    was (modes restored; eval mode and ``no_grad``, so no statistics move)."""
    mname = describe_model(model, model_name)
    dname = describe_data(x, y, data_name, num_classes)
    probe = x[:2]
    modes = _modes(model)
    try:
        model.eval()
        with torch.no_grad(), (autocast or contextlib.nullcontext)():
            out = model(probe)
    except Exception as e:  # the model's own error: translated, both sides named
        pdt = {p.dtype for p in model.parameters() if p.is_floating_point()}
        hint = ""
        first = next((m for m in model.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))), None)
        if first is not None and probe.dim() >= 3 and probe.shape[1] != first.in_channels:
            hint = (f"; the data has {probe.shape[1]} channel(s) and the model takes {first.in_channels}: build the "
                    f"model with in_chans={probe.shape[1]}")
        elif probe.is_floating_point() and pdt and probe.dtype not in pdt:
            hint = (f"; the model computes in {'/'.join(sorted(str(d).replace('torch.', '') for d in pdt))} but the "
                    f"data is {str(probe.dtype).replace('torch.', '')}: convert the model with model.float()")
        raise PairingError(
            f"{mname} does not accept the inputs of {dname}{hint} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''})") from None
    finally:
        for m, t in modes:
            m.training = t
    out = getattr(out, "logits", out)
    want = 3 if sequence else 2
    if not isinstance(out, Tensor) or out.dim() != want or out.shape[0] != len(probe):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise PairingError(
            f"{mname} returns {shape} for {len(probe)} inputs of {dname}; the loss needs one row of class scores "
            f"per input, shape ({len(probe)}, {'T, ' if sequence else ''}classes)")
    k = int(out.shape[-1])
    if num_classes is not None and k < num_classes:
        raise PairingError(
            f"{mname} has {k} outputs but {dname} has {num_classes} classes; build the model with "
            f"num_classes={num_classes}")
    if y is not None:
        check_targets(y, k, model=mname, data=dname)
    return k


__all__ = ["check_pairing", "check_targets", "describe_model", "describe_data"]
