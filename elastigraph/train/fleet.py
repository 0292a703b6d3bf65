"""Fleet training: K independent masked networks of one architecture trained together.

Each member has its own starting weights, mask, seed (so its own data order and
augmentation, exactly the stream :func:`~elastigraph.train.train` would give it) and
BatchNorm statistics; what they share is the architecture, every other training setting
and the step loop. The K copies are stacked into one set of ``(K, ...)`` tensors
(``torch.func.stack_module_state``) and run as one batched network
(``torch.func.vmap`` over ``functional_call``: convolutions become one grouped
convolution, linears one batched matmul), with one optimizer over the stacked tensors.
SGD and AdamW are element-wise, so stacking changes nothing in the update; BatchNorm
running statistics are stacked buffers updated in place per member.

Why ``torch.func`` rather than a hand-written grouped-network rewrite: vmap already
lowers a batched conv/linear/norm to the grouped kernels such a rewrite would emit, for
any module the normal loop trains (timm ViTs included), with no per-architecture code;
see docs/benchmarks.md for the measurements.

Equivalence with training each member alone: same data, same update rule, masked
entries exactly zero, BN buffers included. On CPU the batched kernels can sum in a
different order than the single-network ones, so weights agree to float tolerance,
not bit for bit (the tests bound the difference); evaluation runs each member alone,
so the reported metrics are what the member's weights give.
"""

from __future__ import annotations

import contextlib
import copy
import time
from typing import Mapping, Sequence

import torch
from torch import Tensor, nn

from .. import masks as _masks
from ..errors import ConfigError, DatasetError
from . import distributed as _dist
from .data import ArrayDataset
from .loop import (
    Progress, StepEngine, TrainConfig, TrainResult, _ArrayBatches, _evaluate, _Normalizer, _plain_keys, _resolve_device,
    check_data_fits, lr_at, step_loop, steps_per_epoch, total_steps,
)
from .tasks import get_task

_SHARED_EXEMPT = ("seed",)


def _math_attention():
    """``scaled_dot_product_attention`` limited to its math kernel (a context manager)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        return torch.backends.cuda.sdp_kernel(enable_flash=False, enable_mem_efficient=False, enable_math=True)
    return sdpa_kernel([SDPBackend.MATH])


def fleet_key(cfg: TrainConfig) -> tuple:
    """What members of one fleet must share: every TrainConfig field but the seed."""
    d = cfg.to_dict()
    return tuple((k, str(v)) for k, v in sorted(d.items()) if k not in _SHARED_EXEMPT)


def stochastic_modules(model: nn.Module) -> list[str]:
    """Names of modules that draw random numbers in training mode (dropout with p > 0,
    stochastic depth): a fleet cannot replay each member's own draws, so such models
    train alone."""
    out = []
    for name, m in model.named_modules():
        p = getattr(m, "p", None) if isinstance(m, nn.modules.dropout._DropoutNd) else None
        p = getattr(m, "drop_prob", p)  # timm DropPath
        if isinstance(p, (int, float)) and p > 0:
            out.append(name or type(m).__name__)
    return out


def can_fleet(model: nn.Module, cfg: TrainConfig, train_set) -> str | None:
    """``None`` when ``model`` can train in a fleet with ``cfg`` on ``train_set``,
    otherwise why not (one line)."""
    if cfg.task != "classification":
        return f"fleets train classification only; a {cfg.task!r} model trains alone"
    if not isinstance(train_set, ArrayDataset):
        return "the training set is not held in memory (ImageFolder data trains alone)"
    if _dist.from_env().enabled:
        return "fleets do not run under torchrun (DDP trains one network over all ranks)"
    bad = stochastic_modules(model)
    if bad:
        return f"modules {bad[:3]} draw random numbers in training mode"
    return None


def _member_masks(models: Sequence[nn.Module], masks: Sequence[Mapping[str, Tensor] | None]) -> list[dict[str, Tensor]]:
    """Per member: its mask (given, or installed in the model), checked against it."""
    out = []
    for i, (m, mk) in enumerate(zip(models, masks)):
        if mk is None:
            mk = _masks.from_model(m) or {}
        out.append(dict(_masks.check_mask(m, mk, model_name=f"fleet member {i}")) if mk else {})
    return out


def train_fleet(
    models: Sequence[nn.Module],
    train_set: ArrayDataset,
    test_set: ArrayDataset | None,
    cfgs: Sequence[TrainConfig],
    *,
    masks: Sequence[Mapping[str, Tensor] | None] | None = None,
    rewind_step: int | None = None,
    start_step: int = 0,
    progress: Progress | None = None,
) -> list[TrainResult]:
    """Train ``models[i]`` under ``masks[i]`` with ``cfgs[i]`` for every ``i`` at once;
    returns one :class:`TrainResult` per member, as ``train()`` would for it alone, and
    leaves each model holding its trained weights (plain parameters, masked entries
    zero) on the device it came from, like ``train()``.

    The configs may differ only in ``seed``; ``rewind_step``/``start_step`` are shared.
    Members are the same architecture (same state_dict keys and shapes). ``progress``
    gets the mean over members of ``train_loss``/``test_acc``. Each result's
    ``images_per_s`` is the fleet's aggregate (all members' images per second)."""
    t0 = time.perf_counter()
    k = len(models)
    if k == 0:
        raise ConfigError("train_fleet needs at least one model")
    if len(cfgs) != k:
        raise ConfigError(f"train_fleet: {k} models but {len(cfgs)} TrainConfigs; give one config per model")
    masks = list(masks) if masks is not None else [None] * k
    if len(masks) != k:
        raise ConfigError(f"train_fleet: {k} models but {len(masks)} masks; give one mask (or None) per model")
    key0 = fleet_key(cfgs[0])
    for i, c in enumerate(cfgs[1:], 1):
        if fleet_key(c) != key0:
            diff = sorted(f for f, v in c.to_dict().items() if f != "seed" and str(v) != str(cfgs[0].to_dict()[f]))
            raise ConfigError(f"train_fleet: member {i}'s TrainConfig differs from member 0's in {diff}; "
                              "fleet members may differ only in seed (train the others in their own fleet)")
    from ..errors import ModelTypeError

    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise ModelTypeError(f"train_fleet: member {i} is a {type(m).__name__}, not an nn.Module")
        if any(p.is_meta for p in m.parameters()):
            raise ModelTypeError(f"train_fleet: member {i} ({type(m).__name__}) has parameters on the meta device (no "
                                 "values); build it on the CPU or model.to_empty(device=...) + load_state_dict")
    cfg = cfgs[0]
    why = can_fleet(models[0], cfg, train_set)
    if why is not None:
        raise ConfigError(f"train_fleet: {why}; use train() for each model instead")
    if len(train_set) == 0:
        raise DatasetError(f"train_set {train_set.spec.name!r} is empty")
    ctx = _dist.DistContext()
    device = _resolve_device(cfg.device, ctx)
    total = total_steps(cfg, len(train_set))
    if not 0 <= start_step <= total:
        raise ConfigError(f"start_step={start_step} is outside the run's {total} steps")
    if rewind_step is not None and not start_step <= rewind_step <= total:
        raise ConfigError(f"rewind_step={rewind_step} must lie in [start_step={start_step}, total steps={total}]")
    batch = min(cfg.batch_size, len(train_set))
    cuda = device.type == "cuda"
    # A fleet trains in fp32 (cuDNN's TF32 convolutions on CUDA), also when cfg.amp asks
    # for bf16: under vmap, autocast's bf16 activations meet BatchNorm's fp32 running
    # statistics in the batched backward ("Expected running_mean to have type BFloat16",
    # torch 2.11, H200; measured by benchmarks/gpu_check.sh). Fleet-trained runner steps
    # record ``fleet: K``.
    amp_ctx = contextlib.nullcontext

    mks = _member_masks(models, masks)
    home0 = next(iter(models[0].parameters()), torch.empty(0)).device
    probe_norm = _Normalizer(train_set.spec, home0, channels_last=False)
    for ds in (train_set, test_set):  # before any change to the models; one architecture: member 0 speaks for all
        if ds is not None:
            check_data_fits(models[0], ds, probe_norm, home0, amp_ctx, get_task(cfg.task), "fleet member 0")
    homes = [next(iter(m.parameters()), torch.empty(0)).device for m in models]
    orders = [_plain_keys(m) for m in models]
    for m in models:  # plain parameters from here on; the fleet applies the masks itself
        if _masks.from_model(m):
            _masks.remove(m)
    ref = {n: (tuple(v.shape), v.dtype) for n, v in models[0].state_dict().items()}
    for i, m in enumerate(models[1:], 1):
        sd = {n: (tuple(v.shape), v.dtype) for n, v in m.state_dict().items()}
        if sd != ref:
            diff = sorted(set(sd.items()) ^ set(ref.items()))[:3]
            raise ConfigError(f"train_fleet: model {i} is not the same architecture as model 0 (state differs at {diff})")
    mask_keys = sorted(set().union(*[set(mk) for mk in mks]), key=list(ref).index)

    for m in models:
        m.to(device)
    template = copy.deepcopy(models[0]).to("meta")
    template.train()
    params = {n: torch.stack([dict(m.named_parameters())[n].detach() for m in models]).requires_grad_(p.requires_grad)
              for n, p in models[0].named_parameters()}
    buffers = {n: torch.stack([dict(m.named_buffers())[n].detach() for m in models]).clone()
               for n, _ in models[0].named_buffers()}
    stacked_mask = {
        n: torch.stack([mk[n].to(device, params[n].dtype) if n in mk else torch.ones_like(params[n][0])
                        for mk in mks])
        for n in mask_keys
    }

    def effective(p: dict[str, Tensor]) -> dict[str, Tensor]:
        return {n: (v * stacked_mask[n] if n in stacked_mask else v) for n, v in p.items()}

    def member_forward(p, b, x):
        return torch.func.functional_call(template, (p, b), (x,))

    def batched_forward(p, b, x):
        # the fused attention kernels' backward rejects vmap's batched strides on CUDA
        # ("LSE is not correctly aligned", torch 2.11): attention takes the math kernel
        with _math_attention() if cuda else contextlib.nullcontext():
            return vmapped(p, b, x)

    vmapped = torch.func.vmap(member_forward, in_dims=(0, 0, 0), randomness="error")
    fwd = torch.compile(batched_forward) if cfg.compile else batched_forward

    trainable = [v for v in params.values() if v.requires_grad]
    if cfg.optimizer == "adamw":
        opt = torch.optim.AdamW(trainable, lr=lr_at(cfg, start_step, total), weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(trainable, lr=lr_at(cfg, start_step, total), momentum=cfg.momentum,
                              nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    shared = ArrayDataset(train_set.x.to(device), train_set.y.to(device), train_set.spec)
    streams = [_ArrayBatches(shared, batch, c.seed, cfg.augment, device, ctx) for c in cfgs]
    norm = _Normalizer(train_set.spec, device, channels_last=False)
    task = get_task(cfg.task)  # classification (can_fleet)
    if test_set is not None:
        test_set = ArrayDataset(test_set.x.to(device), test_set.y.to(device), test_set.spec)
    eval_bs = max(256, 2 * batch)
    spe = steps_per_epoch(len(train_set), batch)

    def member_state(i: int) -> dict[str, Tensor]:
        """Member i's plain state (mask folded, pruned entries exactly zero) on the CPU."""
        out = {}
        for n, v in params.items():
            w = v[i].detach()
            if n in stacked_mask:
                w = torch.where(stacked_mask[n][i] != 0, w * stacked_mask[n][i], torch.zeros((), dtype=w.dtype, device=w.device))
            out[n] = w
        out.update({n: v[i] for n, v in buffers.items()})
        rank = {key: j for j, key in enumerate(orders[i])}
        return {n: out[n].to("cpu", copy=True).contiguous() for n in sorted(out, key=lambda q: rank.get(q, len(rank)))}

    def load_member(i: int) -> None:
        st = member_state(i)
        models[i].load_state_dict(st)

    class _FleetEngine(StepEngine):
        """The fleet as the loop's step engine: one batched forward of every member."""

        def __init__(self) -> None:
            self.k, self.loss_shape, self.sparse_checks = k, (k,), cuda

        def losses(self, step: int) -> Tensor:
            xs, ys = zip(*(s(step) for s in streams))
            xb, yb = torch.stack(xs), torch.stack(ys)
            with amp_ctx():
                out = fwd(effective(params), buffers, norm(xb))
            return torch.stack([task.loss(out[i], yb[i], label_smoothing=cfg.label_smoothing) for i in range(k)])

        def backward(self, losses: Tensor) -> None:
            losses.sum().backward()

        def snapshot(self) -> list[dict]:
            return [member_state(i) for i in range(k)]

        def evaluate(self) -> list[dict[str, float]]:
            out = []
            for i in range(k):
                if test_set is None:
                    out.append({m.name: float("nan") for m in task.metrics})
                    continue
                load_member(i)
                with torch.no_grad():
                    out.append(_evaluate(models[i], test_set, norm, device, amp_ctx, ctx, eval_bs, task))
            return out

        def train_losses(self, loss_sum: Tensor, n_loss: int) -> list[float]:
            return [float(loss_sum[i].double().item()) / max(1, n_loss) for i in range(k)]

        def progress_view(self, lasts: list[dict]) -> dict:
            return {f: sum(h[f] for h in lasts) / len(lasts) for f in ("train_loss", "test_acc", "test_loss")}

        def finite(self, i: int) -> bool:
            return all(bool(torch.isfinite(v[i]).all()) for v in params.values() if v.is_floating_point())

        def label(self, i: int) -> str:
            return f"fleet member {i}"

    try:
        run = step_loop(_FleetEngine(), opt, cfg, total=total, start_step=start_step, rewind_step=rewind_step,
                        spe=spe, device=device, progress=progress, t0=t0)
    finally:
        for i in range(k):
            load_member(i)
            models[i].to(homes[i])
    wall = time.perf_counter() - t0
    results = []
    for i in range(k):
        sd = models[i].state_dict()
        rank = {key: j for j, key in enumerate(orders[i])}
        final = {n: sd[n].detach().to("cpu", copy=True).contiguous() for n in sorted(sd, key=lambda q: rank.get(q, len(rank)))}
        last = run.lasts[i]
        results.append(TrainResult(
            final_state=final, rewind_state=run.rewinds[i], history=run.histories[i],
            test_acc=float(last.get("test_acc", float("nan"))), test_loss=float(last.get("test_loss", float("nan"))),
            steps=total - start_step, wall_s=wall,
            images_per_s=(total - start_step) * batch * k / run.train_s if run.train_s > 0 else float("nan"),
            device=str(device), config=cfgs[i].to_dict(), metrics=dict(run.metrics[i]),
            diverged=run.diverged_at[i] is not None, diverged_at=run.diverged_at[i],
        ))
    return results


__all__ = ["train_fleet", "fleet_key", "can_fleet", "stochastic_modules"]
