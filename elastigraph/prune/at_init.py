"""Pruning at initialization, the E-LTH baselines: random, SNIP, GraSP and SynFlow.
Each scores the prunable weights on a private copy of the model and keeps the best
``round(total * (1 - sparsity))`` of them, among those the current mask keeps."""

from __future__ import annotations

from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..graph import infer_input_shape
from ..masks import Mask
from ..seeds import seeded
from ..train.tasks import Task
from . import _core

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _finish(new: Mask, extra: Mask) -> Mask:
    return {**new, **{k: v.clone() for k, v in extra.items()}}


def random(
    model: nn.Module,
    sparsity: float,
    *,
    scope: str = "global",
    seed: int | None = None,
    generator: torch.Generator | None = None,
    names: Iterable[str] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> Mask:
    """Random pruning: every weight is kept with the same probability, with the kept count
    exact (the top-k of a random permutation). ``seed`` or ``generator`` make it
    reproducible; with neither, torch's global generator is used."""
    method = "random"
    _core.check_scope(scope, method)
    sparsity = _core.check_unit(sparsity, "sparsity", method)
    generator = seeded(seed, generator, method=method)
    names_, current, extra = _core.resolve_model(
        model, names=names, mask=mask, include_first=include_first, include_last=include_last, method=method,
        needs_values=False,
    )
    scores = _core.ReplayedUniform({n: current[n].shape for n in names_}, generator)  # one tensor at a time
    return _finish(_core.select(scores, current, scope=scope, density=1.0 - sparsity, method=method), extra)


def _weights(net: nn.Module, names: Sequence[str]) -> list[torch.Tensor]:
    """The prunable parameters of ``net``, the only ones that need gradients."""
    for p in net.parameters():
        p.requires_grad_(False)
    params = [net.get_parameter(n) for n in names]
    for p in params:
        p.requires_grad_(True)
    return params


def snip(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sparsity: float,
    *,
    loss_fn: LossFn = F.cross_entropy,
    scope: str = "global",
    train_mode: bool = False,
    names: Iterable[str] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> Mask:
    """SNIP (Lee et al. 2019): score ``|w * dL/dw|`` with ``dL/dw`` summed over ``batches``
    (the gradient of the summed batch losses, as the GraSP authors' SNIP code accumulates
    it), on a copy of the masked model; keep the top ``1 - sparsity``. BatchNorm is in
    eval mode while scoring (running statistics, as snip-public, Synaptic-Flow and
    ElasticLTH do); ``train_mode=True`` uses batch statistics instead."""
    method = "snip"
    _core.check_scope(scope, method)
    sparsity = _core.check_unit(sparsity, "sparsity", method)
    names_, current, extra = _core.resolve_model(
        model, names=names, mask=mask, include_first=include_first, include_last=include_last, method=method
    )
    net = _core.scoring_copy(model, current)
    net.train(train_mode)
    params = _weights(net, names_)
    grads = [torch.zeros_like(p) for p in params]
    for x, y in _core.batches_of(batches, method, net):
        g = torch.autograd.grad(loss_fn(Task.output(net(x)), y), params, allow_unused=True)
        for acc, gi in zip(grads, g):
            if gi is not None:
                acc.add_(gi)
    scores = {n: (p.detach() * g).abs() for n, p, g in zip(names_, params, grads)}
    return _finish(_core.select(scores, current, scope=scope, density=1.0 - sparsity, method=method), extra)


def grasp_scores(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    current: Mask,
    *,
    temperature: float = 200.0,
    loss_fn: LossFn = F.cross_entropy,
    train_mode: bool = False,
) -> dict[str, torch.Tensor]:
    """GraSP's ``S = -w ⊙ (H g)`` for the tensors of ``current``: ``g`` the gradient of the
    summed batch losses on logits divided by ``temperature`` (zero where pruned), ``H g`` by
    double backprop, both on a masked copy. High ``S``: removing the weight hurts gradient
    flow least; :func:`grasp` prunes those. BatchNorm in eval mode unless ``train_mode``."""
    names_ = list(current)
    net = _core.scoring_copy(model, current)
    data = list(_core.batches_of(batches, "grasp", net))  # iterated twice
    net.train(train_mode)
    params = _weights(net, names_)
    live = [current[n].to(device=p.device, dtype=p.dtype) for n, p in zip(names_, params)]
    g = [torch.zeros_like(p) for p in params]
    for x, y in data:
        gi = torch.autograd.grad(loss_fn(Task.output(net(x)) / temperature, y), params, allow_unused=True)
        for acc, d in zip(g, gi):
            if d is not None:
                acc.add_(d)
    g = [gj * m for gj, m in zip(g, live)]
    hg = [torch.zeros_like(p) for p in params]
    for x, y in data:
        gi = torch.autograd.grad(loss_fn(Task.output(net(x)) / temperature, y), params, create_graph=True, allow_unused=True)
        z = sum((gj * d).sum() for gj, d in zip(g, gi) if d is not None)
        if not isinstance(z, torch.Tensor) or not z.requires_grad:
            continue  # the loss does not depend on the prunable weights at second order
        hz = torch.autograd.grad(z, params, allow_unused=True)
        for acc, d in zip(hg, hz):
            if d is not None:
                acc.add_(d)
    return {n: -(p.detach() * h) for n, p, h in zip(names_, params, hg)}


def grasp(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    sparsity: float,
    *,
    temperature: float = 200.0,
    loss_fn: LossFn = F.cross_entropy,
    scope: str = "global",
    train_mode: bool = False,
    names: Iterable[str] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> Mask:
    """GraSP (Wang et al. 2020): score ``S = -w ⊙ (H g)`` (:func:`grasp_scores`) and remove
    the weights with the HIGHEST scores, keeping the ``1 - sparsity`` lowest, as in the
    authors' code (``topk`` of the scores are pruned). The authors' re-initialisation of
    linear layers before scoring is not done: the model's weights are scored as given.
    BatchNorm is in eval mode while scoring (the reference code's default);
    ``train_mode=True`` scores with batch statistics."""
    method = "grasp"
    _core.check_scope(scope, method)
    sparsity = _core.check_unit(sparsity, "sparsity", method)
    names_, current, extra = _core.resolve_model(
        model, names=names, mask=mask, include_first=include_first, include_last=include_last, method=method
    )
    scores = grasp_scores(model, batches, current, temperature=temperature, loss_fn=loss_fn, train_mode=train_mode)
    keep_low = {n: -s for n, s in scores.items()}
    return _finish(_core.select(keep_low, current, scope=scope, density=1.0 - sparsity, method=method), extra)


def synflow(
    model: nn.Module,
    sparsity: float,
    *,
    iterations: int = 100,
    input_shape: Sequence[int] | None = None,
    scope: str = "global",
    names: Iterable[str] | None = None,
    mask: Mapping[str, torch.Tensor] | None = None,
    include_first: bool = True,
    include_last: bool = True,
) -> Mask:
    """SynFlow (Tanaka et al. 2020), data-free: on a float64 copy in eval mode whose
    parameters and buffers are replaced by their absolute values, R = sum of the output
    on an all-ones input, score ``|w * dR/dw|``; prune ``iterations`` times on the
    exponential schedule ``density_i = d0 * (d / d0) ** (i / iterations)`` (d0: the
    starting density, 1 for a dense model), re-masking and re-scoring between rounds."""
    method = "synflow"
    _core.check_scope(scope, method)
    sparsity = _core.check_unit(sparsity, "sparsity", method)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ConfigError(f"{method}: iterations must be a positive integer, got {iterations!r}")
    names_, current, extra = _core.resolve_model(
        model, names=names, mask=mask, include_first=include_first, include_last=include_last, method=method
    )
    if input_shape is not None and (not isinstance(input_shape, (tuple, list, torch.Size)) or not input_shape or any(
            isinstance(d, bool) or not isinstance(d, int) or not 0 < d < 2**31 for d in input_shape)):
        raise ConfigError(f"{method}: input_shape must be positive integers without the batch dimension, "
                          f"such as (3, 32, 32); got {input_shape!r}")
    shape = tuple(input_shape) if input_shape is not None else infer_input_shape(model)
    net = _core.scoring_copy(model, {})
    net.double().eval()
    with torch.no_grad():
        for t in net.state_dict().values():  # parameters and buffers (BN statistics), as the reference
            if t.is_floating_point():
                t.abs_()
    params = _weights(net, names_)
    absw = [p.detach().clone() for p in params]
    device = params[0].device
    x = torch.ones((1, *shape), dtype=torch.float64, device=device)
    total = sum(t.numel() for t in current.values())
    d0 = sum(int(t.sum()) for t in current.values()) / total
    target = 1.0 - sparsity
    if target > d0 + 1e-12:
        raise ConfigError(
            f"{method}: target density {target:.4g} is above the starting mask's {d0:.4g}; "
            "pruning never regrows weights"
        )
    for i in range(1, iterations + 1):
        with torch.no_grad():
            for n, p, w in zip(names_, params, absw):
                p.copy_(w * current[n].to(device=device, dtype=w.dtype))
        try:
            out = net(x)
        except Exception as e:
            raise ConfigError(
                f"{method}: {type(model).__name__} failed on an all-ones input of shape {(1, *shape)} "
                f"({type(e).__name__}: {e}); pass input_shape= (without the batch dimension)"
            ) from e
        if not isinstance(out, torch.Tensor):
            raise ConfigError(f"{method}: {type(model).__name__} returned a {type(out).__name__}, expected a tensor")
        grads = torch.autograd.grad(out.sum(), params, allow_unused=True)
        scores = {
            n: (p.detach() * g).abs() if g is not None else torch.zeros_like(p)
            for n, p, g in zip(names_, params, grads)
        }
        density = target if i == iterations else d0 * (target / d0) ** (i / iterations) if d0 > 0 else 0.0
        current = _core.select(
            scores, current, scope=scope, density=density, clamp=i < iterations, method=method
        )
    return _finish(current, extra)
