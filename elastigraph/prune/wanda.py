"""Wanda (Sun et al. 2024, "A Simple and Effective Pruning Approach for Large Language
Models"): score each weight by ``|W_ij| * ||X_j||_2``, its magnitude times the L2 norm of
its input feature over calibration data, and prune each output row (per output, not
globally) to the target sparsity, or to an N:M pattern; no retraining, no gradients.

Reference: github.com/locuslab/wanda, ``lib/layerwrapper.py`` (``WrappedGPT.add_batch``:
the running mean of the squared input-feature norms per calibration sample) and
``lib/prune.py`` ``prune_wanda`` (``W_metric = |W| * sqrt(scaler_row)``; unstructured:
a stable ascending sort per row, its first ``int(columns * sparsity)`` pruned; N:M: in each
group of M inputs the ``M - N`` lowest pruned). Difference: the reference calibrates one
decoder block at a time on the outputs of the blocks it already pruned; here every layer
is calibrated in one pass of the model as given (dense, or under ``mask``), which needs
no knowledge of the model's block structure.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .. import masks
from ..errors import ConfigError
from ..masks import Mask
from . import _core


def _linear_like(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or type(m).__name__ == "Conv1D"


def _user_of(model: nn.Module, name: str, tied: Mapping[str, list[str]]) -> tuple[str, nn.Module]:
    """The linear-like module that uses parameter ``name`` as its weight (a tied
    embedding/LM head: the head)."""
    for each in tied.get(name, [name]):
        mod_name, _, attr = each.rpartition(".")
        mod = model.get_submodule(mod_name)
        if attr == "weight" and _linear_like(mod):
            return each, mod
    mod = model.get_submodule(name.rpartition(".")[0])
    raise ConfigError(
        f"wanda: {name!r} is the weight of a {type(mod).__name__}; Wanda scores the inputs of linear layers "
        "(nn.Linear, transformers Conv1D) only: leave it out with names=[...] (or include_first=False / "
        "include_last=False), or use prune.magnitude for it")


class _InputNorms:
    """``WrappedGPT.add_batch`` of the reference: ``scaler_row``, the squared L2 norm of
    each input feature summed over every token, divided by the number of samples."""

    def __init__(self, columns: int, device: torch.device):
        self.scaler_row = torch.zeros(columns, device=device)
        self.nsamples = 0

    def __call__(self, _module: nn.Module, inputs: tuple[Any, ...], _output: Any) -> None:
        inp = inputs[0].detach()
        if inp.dim() == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        inp = inp.reshape(-1, inp.shape[-1]).t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(torch.float32)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def wanda_scores(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    names: Iterable[str],
    *,
    current: Mask | None = None,
) -> dict[str, torch.Tensor]:
    """Wanda's ``|W| * sqrt(scaler_row)`` per parameter in ``names``, as ``(outputs,
    inputs)`` float32 matrices, from one no-grad pass over ``batches`` in eval mode (on a
    masked copy when ``current`` is given, else on ``model`` itself, hooks removed after)."""
    names = list(names)
    net = _core.scoring_copy(model, current) if current is not None else model
    tied = masks.tied_names(net)
    users = {n: _user_of(net, n, tied) for n in names}
    data = list(_core.batches_of(batches, "wanda", net))  # checked (one probe forward) before hooks count
    stats: dict[str, _InputNorms] = {}
    handles = []
    modes = [(m, m.training) for m in net.modules()]
    try:
        net.eval()
        for n, (_, mod) in users.items():
            w = mod.weight
            cols = w.shape[1] if isinstance(mod, nn.Linear) else w.shape[0]
            stats[n] = _InputNorms(cols, w.device)
            handles.append(mod.register_forward_hook(stats[n]))
        with torch.no_grad():
            for x, _y in data:
                net(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    out = {}
    for n, (_, mod) in users.items():
        if stats[n].nsamples == 0:
            raise ConfigError(f"wanda: {n!r} ({type(mod).__name__}) was never called on the calibration batches; "
                              "leave it out with names=[...]")
        w = _core.as_rows(mod.weight.detach(), isinstance(mod, nn.Linear))
        out[n] = (torch.abs(w) * torch.sqrt(stats[n].scaler_row.reshape((1, -1)))).to("cpu")
    return out


def wanda(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sparsity: float | None = None,
    *,
    n_m: str | tuple[int, int] | None = None,
    names: Iterable[str] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> Mask:
    """Wanda pruning: in every pruned weight, each output row keeps the entries with the
    largest ``|W_ij| * ||X_j||_2`` (inputs ``X`` of the layer over ``batches``, a few
    calibration batches of the task's data as ``(inputs, targets)`` pairs): the row's
    lowest ``int(inputs * sparsity)`` are pruned (ties: the lower index first, the
    reference's stable sort), or with ``n_m="2:4"`` (``(4, 8)``, ...) the ``M - N`` lowest
    of each group of M consecutive inputs. Linear layers only (nn.Linear, transformers
    ``Conv1D``). Weights ``mask`` (or installed masks) prune stay pruned; the model is not
    changed."""
    method = "wanda"
    if (sparsity is None) == (n_m is None):
        raise ConfigError(f"{method}: give sparsity (unstructured, per output row) or n_m (N:M), exactly one")
    if n_m is not None:
        nm = _core.parse_n_m(n_m, method)
    else:
        sparsity = _core.check_unit(sparsity, "sparsity", method)
    explicit = mask is not None
    names_, current, extra = _core.resolve_model(
        model, names=names, mask=mask, include_first=include_first, include_last=include_last, method=method
    )
    scores = wanda_scores(model, batches, names_, current=current if explicit else None)
    out: Mask = {}
    for n in names_:
        in_last = _core.input_last(model, n)
        metric = scores[n]
        alive = _core.as_rows(current[n], in_last)
        if n_m is not None:
            keep = _core.n_m_keep(metric, alive, *nm, name=n, method=method, prune_low_first=True)
        else:
            if torch.isnan(metric[alive]).any():
                raise ConfigError(f"{method}: scores of {n!r} contain NaN (diverged weights or activations?)")
            metric = metric.masked_fill(~alive, -1.0)  # already pruned: first in the sort (scores are >= 0)
            indices = torch.sort(metric, dim=-1, stable=True)[1][:, : int(metric.shape[1] * sparsity)]
            pruned = torch.zeros_like(alive)
            pruned.scatter_(1, indices, True)
            keep = ~pruned & alive
        out[n] = _core.from_rows(keep, current[n], in_last)
    return {**out, **{k: v.clone() for k, v in extra.items()}}
