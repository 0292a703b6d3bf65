"""One masked-training loop: SGD with momentum, step/cosine schedules with warm-up,
weight decay, label smoothing, periodic evaluation. CUDA first (bf16 autocast,
channels_last, optional torch.compile, the dataset held on the GPU and normalised /
augmented there), the same code on CPU, DDP under torchrun.

The mask lives in the forward (``elastigraph.masks.install``: ``weight_orig`` parameter,
``weight_mask`` buffer, a pre-forward hook), so pruned weights are exactly zero in every
forward whatever momentum and weight decay do to ``weight_orig``.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import masks as _masks
from ..errors import ConfigError, DatasetError
from . import distributed as _dist
from .config import MAX_SEED, TrainConfig, check_seed, device_problem  # noqa: F401 (re-exported)
from .data import ArrayDataset, FolderDataset
from .tasks import Task, get_task, task_of_data
from .text import TokenDataset

_DATASETS = (ArrayDataset, FolderDataset, TokenDataset)

Progress = Callable[[int, int, dict], None]
"""``progress(step, total, metrics)``: called after every optimizer step (rank 0 only)."""

@dataclass
class TrainResult:
    """What :func:`train` returns. ``final_state``/``rewind_state`` are plain state_dicts
    (no ``*_orig``/``*_mask`` keys) on the CPU with masked entries exactly zero;
    ``steps`` counts the optimizer steps of this call; ``history`` has one record per
    evaluation: ``step`` (global), ``epoch``, ``train_loss`` (mean since the previous
    record), ``test_<key>`` for each metric of the task (classification: ``test_acc``,
    ``test_loss``; language modelling: ``test_bpb``, ``test_loss``), ``lr``, ``time_s``
    (since the call started). ``metrics`` holds the final test metrics by name;
    ``test_acc`` is NaN for a task without accuracy."""

    final_state: dict[str, Tensor]
    rewind_state: dict[str, Tensor] | None
    history: list[dict]
    test_acc: float
    test_loss: float
    steps: int
    wall_s: float
    images_per_s: float
    device: str
    config: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)
    val_metrics: dict | None = None
    """The task's metrics on a validation split, where the caller measured them."""
    diverged: bool = False
    """True when training stopped at a non-finite loss; the metrics are then NaN."""
    diverged_at: int | None = None
    """The global step whose loss was NaN or inf (``None`` unless ``diverged``)."""


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per pass over ``n`` images (last partial batch dropped)."""
    return max(1, n // batch_size)


def total_steps(cfg: TrainConfig, n: int) -> int:
    """Length of the whole training run in steps: ``cfg.steps`` or ``epochs`` passes."""
    if cfg.steps is not None:
        return cfg.steps
    return max(1, round(cfg.epochs * steps_per_epoch(n, cfg.batch_size)))


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate of (0-based) ``step`` of a ``total``-step run: linear warm-up to
    ``cfg.lr`` over ``warmup_steps``, then step decay by ``gamma`` at each milestone
    (``round(m * total)``), cosine decay to 0 over the steps after warm-up, or constant."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "step":
        passed = sum(step >= round(m * total) for m in cfg.milestones)
        return cfg.lr * cfg.gamma**passed
    if cfg.schedule == "cosine":
        span = max(1, total - cfg.warmup_steps)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - cfg.warmup_steps) / span)))
    return cfg.lr


# --------------------------------------------------------------------------- helpers


def _resolve_device(name: str, ctx: _dist.DistContext) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"TrainConfig.device={name!r} is not a torch device ('auto', 'cpu', 'cuda', 'cuda:1')") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"TrainConfig.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
        if ctx.enabled:
            dev = torch.device("cuda", ctx.local_rank)
        elif dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(dev)
    return dev


def _plain_state(model: nn.Module, order: list[str]) -> dict[str, Tensor]:
    """``model``'s state with installed masks folded in (``weight = weight_orig *
    weight_mask``), plain keys in ``order`` first, contiguous CPU copies."""
    out = {k: v.detach().to("cpu", copy=True).contiguous()
           for k, v in _masks.plain_state(model.state_dict()).items()}
    rank = {k: i for i, k in enumerate(order)}
    return dict(sorted(out.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def _plain_keys(model: nn.Module) -> list[str]:
    """State-dict keys of ``model`` as they will be once masks are removed."""
    return list(_masks.plain_state(model.state_dict(keep_vars=True), fold_mask=False))


class _Normalizer:
    """uint8 batch -> normalised float batch on the device, with the loop's random crop
    (zero padding) + flip done as one gather."""

    def __init__(self, spec, device: torch.device, channels_last: bool):
        c = spec.in_chans
        self.mean = torch.tensor(spec.mean, device=device).view(1, c, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(spec.std, device=device).view(1, c, 1, 1) * 255)
        self.channels_last = channels_last

    def __call__(self, x: Tensor) -> Tensor:
        x = (x.float() - self.mean) * self.inv_std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x


def _crop_flip(x: Tensor, off: Tensor, flip: Tensor, pad: int) -> Tensor:
    """Crop ``x`` (N,C,H,W) at offsets ``off`` (2,N) of its zero-padded copy, mirroring the
    rows with ``flip``: torchvision's RandomCrop(padding) + RandomHorizontalFlip, batched."""
    n, c, h, w = x.shape
    xp = F.pad(x, (pad, pad, pad, pad))
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = off[0][:, None] + ar_h
    cols = off[1][:, None] + torch.where(flip[:, None], ar_w.flip(0), ar_w)
    return xp[
        torch.arange(n, device=x.device)[:, None, None, None],
        torch.arange(c, device=x.device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]


class _ArrayBatches:
    """Global batches of an ArrayDataset held on the device: a seeded permutation per
    epoch (seed, epoch), seeded crop/flip per step (seed, step), so the data stream at
    step k is the same whether training starts at 0 or resumes at k, and whatever the
    number of DDP ranks (each takes rows ``rank::world`` of every global batch)."""

    def __init__(self, ds: ArrayDataset, batch: int, seed: int, augment: bool, device, ctx):
        self.x = ds.x.to(device)
        self.y = ds.y.to(device)
        self.n, self.batch, self.seed, self.augment = len(ds), min(batch, len(ds)), seed, augment
        self.spe = steps_per_epoch(self.n, self.batch)
        self.pad = 2 if getattr(ds.spec, "image_size", 32) < 32 else 4
        self.device, self.ctx = device, ctx
        self.gen = torch.Generator(device=device)
        self._epoch, self._perm = -1, None

    def __call__(self, step: int) -> tuple[Tensor, Tensor]:
        epoch, i = divmod(step, self.spe)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._epoch = torch.randperm(self.n, generator=g).to(self.device), epoch
        idx = self._perm[i * self.batch : (i + 1) * self.batch]
        sl = slice(self.ctx.rank, None, self.ctx.world)
        xb, yb = self.x[idx[sl]], self.y[idx[sl]]
        if self.augment:
            self.gen.manual_seed(self.seed * 1_000_003 + 7919 * step + 1)
            off = torch.randint(0, 2 * self.pad + 1, (2, len(idx)), generator=self.gen, device=self.device)
            flip = torch.rand(len(idx), generator=self.gen, device=self.device) < 0.5
            xb = _crop_flip(xb, off[:, sl], flip[sl], self.pad)
        return xb, yb


class _StepSampler(torch.utils.data.Sampler):
    """Batch sampler yielding this rank's share of the global batch of every step in
    ``[start, total)`` (same seeded per-epoch permutations as _ArrayBatches)."""

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int, ctx):
        self.n, self.batch, self.seed, self.start, self.total, self.ctx = n, min(batch, n), seed, start, total, ctx
        self.spe = steps_per_epoch(n, self.batch)

    def __len__(self) -> int:
        return self.total - self.start

    def __iter__(self):
        perm, cur = None, -1
        for step in range(self.start, self.total):
            epoch, i = divmod(step, self.spe)
            if epoch != cur:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
                perm, cur = torch.randperm(self.n, generator=g), epoch
            yield perm[i * self.batch : (i + 1) * self.batch][self.ctx.rank :: self.ctx.world].tolist()


def _loader(ds: FolderDataset, batch_sampler, device: torch.device, world: int):
    workers = max(1, min(8, (os.cpu_count() or 2) // max(1, world) - 1))
    return torch.utils.data.DataLoader(
        ds, batch_sampler=batch_sampler, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=False,
    )


def _input_prep(task: Task, spec, device: torch.device, channels_last: bool) -> Callable[[Tensor], Tensor]:
    """What the model is fed from a stored batch: normalised images, or token ids."""
    if task.image_inputs:
        return _Normalizer(spec, device, channels_last)
    return lambda x: x.long()


@torch.no_grad()
def _evaluate(net: nn.Module, test_set, norm, device, amp_ctx, ctx, batch: int, task: Task) -> dict[str, float]:
    """The task's metrics of ``net`` in eval mode on ``test_set`` (by metric name), each
    rank taking rows ``rank::world`` and the sums all-reduced."""
    was_training = net.training
    net.eval()
    sums = torch.zeros(len(task.sums), device=device, dtype=torch.float64)
    try:
        if isinstance(test_set, FolderDataset):
            mine = list(range(ctx.rank, len(test_set), ctx.world))
            chunks = [mine[i : i + batch] for i in range(0, len(mine), batch)]
            it = ((x.to(device, non_blocking=True), y.to(device, non_blocking=True))
                  for x, y in _loader(test_set.with_mode(train=False, augment=False), chunks, device, ctx.world))
        else:
            x_all, y_all = test_set.x[ctx.rank :: ctx.world], test_set.y[ctx.rank :: ctx.world]
            it = ((x_all[i : i + batch].to(device, non_blocking=True), y_all[i : i + batch].to(device, non_blocking=True))
                  for i in range(0, len(y_all), batch))
        for xb, yb in it:
            with amp_ctx():
                out = net(norm(xb))
            sums += task.eval_sums(out, yb)
        _dist.all_reduce_sum(sums, ctx)
    finally:
        net.train(was_training)
    return task.finish(dict(zip(task.sums, sums.tolist())))


def evaluate(model: nn.Module, test_set: ArrayDataset | FolderDataset | TokenDataset, *, device: str = "auto",
             batch_size: int = 1024, mask: Mapping[str, Tensor] | None = None) -> tuple[float, float]:
    """(test loss, test accuracy) of ``model`` (under ``mask`` if given) without changing
    it: evaluation runs on a copy. Accuracy is NaN for a task without one (language
    modelling); :func:`evaluate_metrics` gives every metric of the data's task."""
    m = evaluate_metrics(model, test_set, device=device, batch_size=batch_size, mask=mask)
    return m["loss"], m.get("accuracy", float("nan"))


def evaluate_metrics(model: nn.Module, test_set: ArrayDataset | FolderDataset | TokenDataset, *,
                     device: str = "auto", batch_size: int = 1024,
                     mask: Mapping[str, Tensor] | None = None) -> dict[str, float]:
    """Every metric of ``test_set``'s task (by name: ``accuracy``/``loss``, or
    ``bits_per_byte``/``loss``) of ``model`` under ``mask``, evaluated on a copy."""
    if not isinstance(test_set, _DATASETS):
        raise DatasetError(f"test_set must be a dataset from load_dataset (ArrayDataset, FolderDataset or "
                           f"TokenDataset), got {type(test_set).__name__}")
    err = device_problem(device)
    if err:
        raise ConfigError(f"evaluate device: {err}")
    from ..errors import ModelTypeError

    if not isinstance(model, nn.Module):
        raise ModelTypeError(f"evaluate needs an nn.Module, got {type(model).__name__}")
    if any(p.is_meta for p in model.parameters()):
        raise ModelTypeError(f"evaluate: {type(model).__name__} has parameters on the meta device (no values); build "
                             "it on the CPU or load a state dict with model.to_empty(device=...) + load_state_dict")
    dev = _resolve_device(device, _dist.DistContext())
    net = _masks.copy_model(model).to(dev)
    if mask is not None:
        _masks.install(net, mask)
    task = get_task(task_of_data(test_set))
    norm = _input_prep(task, test_set.spec, dev, channels_last=False)
    check_data_fits(net, test_set, norm, dev, contextlib.nullcontext, task)
    return _evaluate(net, test_set, norm, dev, contextlib.nullcontext, _dist.DistContext(), batch_size, task)


@contextlib.contextmanager
def rich_progress(description: str = "training", *, console=None) -> Iterator[Progress]:
    """A rich progress bar as a ``progress`` callback for :func:`train`::

        with rich_progress("IMP round 3") as cb:
            train(model, tr, te, cfg, progress=cb)
    """
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as _P, TextColumn, TimeRemainingColumn

    with _P(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"), console=console, transient=False) as bar:
        # the description is user text (model specs, recipe labels such as '[/bold]x'): shown
        # as written, never parsed as rich markup (a MarkupError would end the run)
        task = bar.add_task(escape(str(description)), total=None, info="")

        def cb(step: int, total: int, metrics: dict) -> None:
            info = f"lr {metrics['lr']:.4g}"
            if "test_acc" in metrics:
                info += f"  loss {metrics['train_loss']:.3f}  acc {metrics['test_acc']:.2%}"
            elif "test_bpb" in metrics:
                info += f"  loss {metrics['train_loss']:.3f}  {metrics['test_bpb']:.3f} bits/byte"
            bar.update(task, completed=step, total=total, info=info)

        yield cb


# --------------------------------------------------------------------------- train


def _first_rows(ds, device: torch.device) -> tuple[Tensor, Tensor]:
    """The first (up to) two examples of ``ds`` as the loop stores them, on ``device``."""
    if isinstance(ds, FolderDataset):
        x, y = ds.with_mode(train=False, augment=False)[0]
        return x.unsqueeze(0).to(device), torch.as_tensor([y]).to(device)
    return ds.x[:2].to(device), ds.y[:2].to(device)


def check_data_fits(model: nn.Module, ds, norm=None, device: torch.device | None = None, amp_ctx=None,
                    task: Task | None = None, model_name: str | None = None) -> int:
    """:func:`~elastigraph.train.pairing.check_pairing` of ``model`` on the first rows of
    ``ds``, fed as the loop feeds them (normalised, on ``device``, under ``amp_ctx``);
    the data's classes from its spec. One forward of two examples, before any training.
    Defaults: the data's task, the model's device, no autocast."""
    from .pairing import check_pairing

    task = task or get_task(task_of_data(ds))
    if device is None:
        device = next(iter(model.parameters()), torch.empty(0)).device
    norm = norm or _input_prep(task, ds.spec, device, channels_last=False)
    amp_ctx = amp_ctx or contextlib.nullcontext
    if len(ds) == 0:
        return 0
    x, y = _first_rows(ds, device)
    classes = getattr(ds.spec, "num_classes", None) if task.image_inputs else None
    return check_pairing(model, norm(x), y.long() if not task.image_inputs else y, num_classes=classes,
                         model_name=model_name, data_name=repr(ds.spec.name), autocast=amp_ctx,
                         sequence=not task.image_inputs)


def _check_train_args(model: Any, train_set: Any, test_set: Any, cfg: Any, start_step: Any, rewind_step: Any) -> None:
    """Types of :func:`train`'s arguments, checked before any work (named errors)."""
    from ..errors import ModelTypeError

    if not isinstance(model, nn.Module):
        raise ModelTypeError(f"train needs an nn.Module, got {type(model).__name__}")
    if not isinstance(cfg, TrainConfig):
        raise ConfigError(f"cfg must be a TrainConfig (e.g. TrainConfig(steps=100, lr=0.1)), got {type(cfg).__name__}")
    if not isinstance(train_set, _DATASETS):
        raise DatasetError(f"train_set must be a dataset from load_dataset (ArrayDataset, FolderDataset or TokenDataset), "
                           f"got {type(train_set).__name__}")
    if test_set is not None and not isinstance(test_set, _DATASETS):
        raise DatasetError(f"test_set must be an ArrayDataset, FolderDataset, TokenDataset or None, got {type(test_set).__name__}")
    for what, ds in (("train_set", train_set), ("test_set", test_set)):
        if ds is not None and task_of_data(ds) != cfg.task:
            raise ConfigError(f"{what} {ds.spec.name!r} is data for the {task_of_data(ds)!r} task but "
                              f"TrainConfig.task={cfg.task!r}; use TrainConfig(task={task_of_data(ds)!r})")
    if isinstance(train_set, TokenDataset):
        from .text import lm_model_problem

        err = lm_model_problem(model, train_set.spec)
        if err:
            raise ConfigError(err)
    if isinstance(start_step, bool) or not isinstance(start_step, int):
        raise ConfigError(f"start_step must be an integer step, got {start_step!r}")
    if rewind_step is not None and (isinstance(rewind_step, bool) or not isinstance(rewind_step, int)):
        raise ConfigError(f"rewind_step must be an integer step or None, got {rewind_step!r}")
    if any(p.is_meta for p in model.parameters()):
        raise ModelTypeError(f"{type(model).__name__} has parameters on the meta device (no values); build it on "
                             "the CPU or load a state dict with model.to_empty(device=...) + load_state_dict")



DIVERGENCE_CHECK_EVERY = 25
"""On CUDA (and under DDP) the loss is checked for NaN/inf every this many steps (and at
every evaluation and the rewind step): reading it is a device sync (an all-reduce under
DDP). On one CPU process, every step."""


class DivergenceWarning(UserWarning):
    """A training run stopped because its loss became NaN or infinite."""


def divergence_due(sparse: bool, step: int, start_step: int, total: int, cfg: TrainConfig, rewind_step: int | None) -> bool:
    """Whether the loop reads its non-finite-loss flag before (0-based) ``step``'s update:
    every step unless ``sparse`` (CUDA, DDP); then every :data:`DIVERGENCE_CHECK_EVERY`
    steps, before an evaluation or the rewind point, and on the last step (the same on
    every DDP rank)."""
    done = step + 1
    return (not sparse or (done - start_step) % DIVERGENCE_CHECK_EVERY == 0 or eval_due(cfg, done, total)
            or done == rewind_step)


def warn_diverged(what: str, step: int, total: int, lr: float) -> None:
    """The one message a diverged training gives (a :class:`DivergenceWarning`)."""
    import warnings

    warnings.warn(f"{what} diverged: the loss is NaN/inf at step {step + 1} of {total} (lr {lr:.4g}); training "
                  "stopped there and the run is recorded as diverged (metrics NaN). Lower the learning rate "
                  "(or gamma, warm-up, ...) to train it", DivergenceWarning, stacklevel=3)


def eval_due(cfg: TrainConfig, done: int, total: int) -> bool:
    """Whether the run evaluates after ``done`` of ``total`` steps: every
    ``cfg.eval_every`` steps and at the end (one rule for ``train`` and fleets, whose
    histories must line up)."""
    return done == total or (cfg.eval_every is not None and done % cfg.eval_every == 0)


# --------------------------------------------------------------------------- the step loop


@dataclass
class LoopRun:
    """What :func:`step_loop` returns, one entry per member of the engine."""

    histories: list[list[dict]]
    lasts: list[dict]
    metrics: list[dict]
    rewinds: list[dict | None]
    train_s: float
    diverged_at: list[int | None]
    """Per member: the step whose loss was NaN/inf (``None``: it trained to the end)."""


class StepEngine:
    """What the one training loop (:func:`step_loop`) drives: ``k`` members (one network,
    or a fleet of ``k`` trained as one batched network) sharing the step loop, the
    schedule, the evaluation and rewind points. :func:`train` plugs in one network,
    :func:`elastigraph.train.fleet.train_fleet` a fleet."""

    k: int = 1
    is_main: bool = True
    loss_shape: tuple[int, ...] = ()
    """Shape of what :meth:`losses` returns (``()`` for one network, ``(k,)`` for a fleet)."""

    def start(self) -> None:
        """Called once before the first step (inside the loop's RNG fork)."""

    def losses(self, step: int) -> Tensor:
        """Forward the batch of ``step``: the loss of every member (a tensor of ``k`` or a scalar)."""
        raise NotImplementedError

    def backward(self, losses: Tensor) -> None:
        losses.backward()

    def snapshot(self) -> list[dict]:
        """Every member's plain state now (the rewind point)."""
        raise NotImplementedError

    def evaluate(self) -> list[dict[str, float]]:
        """Every member's test metrics (by metric name)."""
        raise NotImplementedError

    def train_losses(self, loss_sum: Tensor, n_loss: int) -> list[float]:
        """Every member's mean training loss since the last record."""
        raise NotImplementedError

    def progress_view(self, lasts: list[dict]) -> dict:
        """What the progress callback shows besides the learning rate."""
        return {k: v for k, v in lasts[0].items() if k != "lr"}

    sparse_checks: bool = False
    """Read the non-finite-loss flag only every :data:`DIVERGENCE_CHECK_EVERY` steps (and
    at evaluations, the rewind point and the end): on CUDA or under DDP, where reading it
    waits for the device."""

    def first_bad(self, bad_at: Tensor) -> list[int]:
        """Per member, the first step whose loss was NaN/inf (``total`` if none)."""
        return [int(v) for v in bad_at.reshape(-1).tolist()]

    def finite(self, i: int) -> bool:
        """Whether member ``i``'s weights are all finite."""
        raise NotImplementedError

    def label(self, i: int) -> str:
        """How a divergence warning names member ``i``."""
        return f"member {i}"

    def finish(self) -> None:
        """Called once after the last step (inside the loop's RNG fork)."""


def step_loop(engine: StepEngine, opt: torch.optim.Optimizer, cfg: TrainConfig, *, total: int, start_step: int,
              rewind_step: int | None, spe: int, device: torch.device, progress: Progress | None,
              t0: float) -> LoopRun:
    """The one training loop: steps ``start_step..total`` of the schedule (learning rate
    per step, one optimizer step per batch), the rewind snapshot, evaluation every
    ``cfg.eval_every`` steps and at the end (:func:`eval_due`), progress; the random
    number stream forked and seeded by ``(cfg.seed, start_step)``. The engine says what
    a step is for one network or a fleet."""
    k = engine.k
    cuda = device.type == "cuda"
    task = get_task(cfg.task)
    keys = sorted(task.metrics, key=lambda m: m.key != "loss")  # history fields: test_loss first
    histories: list[list[dict]] = [[] for _ in range(k)]
    lasts: list[dict] = [{} for _ in range(k)]
    metrics: list[dict] = [{} for _ in range(k)]
    rewinds: list[dict | None] = [None] * k
    diverged_at: list[int | None] = [None] * k

    def record(step: int, lr: float, loss_sum: Tensor, n_loss: int) -> None:
        evals = engine.evaluate()
        tls = engine.train_losses(loss_sum, n_loss)
        for i in range(k):
            if diverged_at[i] is not None:
                continue  # NaN weights: nothing to show; the member's result says it diverged
            lasts[i] = {"step": step, "epoch": step / spe, "train_loss": tls[i] if n_loss else float("nan"),
                        **{f"test_{m.key}": evals[i][m.name] for m in keys}, "lr": lr,
                        "time_s": time.perf_counter() - t0}
            metrics[i] = evals[i]
            histories[i].append(lasts[i])

    train_s = 0.0
    with torch.random.fork_rng(devices=[device.index] if cuda else []):
        torch.manual_seed(cfg.seed * 1_000_003 + start_step)
        engine.start()
        if rewind_step == start_step:
            rewinds = list(engine.snapshot())
        loss_sum = torch.zeros(engine.loss_shape, device=device)
        bad_at = torch.full(engine.loss_shape, total, dtype=torch.long, device=device)  # first non-finite loss
        n_loss, lr = 0, lr_at(cfg, start_step, total)
        t_seg = time.perf_counter()
        for step in range(start_step, total):
            lr = lr_at(cfg, step, total)
            for g in opt.param_groups:
                g["lr"] = lr
            losses = engine.losses(step)
            # a member's divergence is its own (the summed loss's gradient is 1 per member): it
            # is recorded and trains on, NaN, until every member has diverged
            bad_at = torch.where(~torch.isfinite(losses.detach()) & (bad_at == total), step, bad_at)
            if divergence_due(engine.sparse_checks, step, start_step, total, cfg, rewind_step):
                for i, b in enumerate(engine.first_bad(bad_at)):
                    if b < total and diverged_at[i] is None:
                        diverged_at[i] = b
                if all(d is not None for d in diverged_at):
                    break
            opt.zero_grad(set_to_none=True)
            engine.backward(losses)
            opt.step()
            loss_sum += losses.detach()
            n_loss += 1
            done = step + 1
            is_eval = eval_due(cfg, done, total)
            if is_eval or done == rewind_step:
                if cuda:
                    torch.cuda.synchronize(device)
                train_s += time.perf_counter() - t_seg
                if done == rewind_step:
                    rewinds = [st if diverged_at[i] is None else None for i, st in enumerate(engine.snapshot())]
                if is_eval:
                    record(done, lr, loss_sum, n_loss)
                    loss_sum.zero_()
                    n_loss = 0
                t_seg = time.perf_counter()
            if progress is not None and engine.is_main:
                seen = [h for h in lasts if h]
                progress(done, total, {"lr": lr, **(engine.progress_view(seen) if seen else {})})
        if start_step == total:  # nothing to train: still report where the model stands
            record(total, lr, loss_sum, 0)
        for i in range(k):  # the last updates made the weights (or their loss) NaN/inf: no later step shows it
            if diverged_at[i] is None and total > start_step and (
                    not engine.finite(i) or not math.isfinite(metrics[i].get("loss", 0.0))):
                diverged_at[i] = total - 1
        task_nan = {m.name: float("nan") for m in task.metrics}
        for i, d in enumerate(diverged_at):
            if d is not None:  # its weights are NaN/inf: nothing to evaluate
                lasts[i], metrics[i] = {}, dict(task_nan)
                warn_diverged(engine.label(i), d, total, lr_at(cfg, d, total))
        engine.finish()
    return LoopRun(histories, lasts, metrics, rewinds, train_s, diverged_at)


class _SingleEngine(StepEngine):
    """One network (DDP-wrapped under torchrun): :func:`train`'s engine."""

    def __init__(self, model, fwd, fwd_eval, next_batch, norm, amp_ctx, task: Task, cfg: TrainConfig, ctx,
                 device, test_set, eval_bs: int, order: list[str]):
        self.model, self.fwd, self.fwd_eval, self.next_batch, self.norm = model, fwd, fwd_eval, next_batch, norm
        self.amp_ctx, self.task, self.cfg, self.ctx, self.device = amp_ctx, task, cfg, ctx, device
        self.test_set, self.eval_bs, self.order = test_set, eval_bs, order
        self.is_main = ctx.is_main
        self.sparse_checks = device.type == "cuda" or ctx.enabled

    def first_bad(self, bad_at: Tensor) -> list[int]:
        return [int(_dist.all_reduce_min(bad_at.clone(), self.ctx))]  # the same on every DDP rank

    def finite(self, i: int) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters() if p.is_floating_point())

    def label(self, i: int) -> str:
        return f"train {type(self.model).__name__}"

    def start(self) -> None:
        self.model.train()

    def losses(self, step: int) -> Tensor:
        xb, yb = self.next_batch(step)
        with self.amp_ctx():
            out = self.fwd(self.norm(xb))
        return self.task.loss(out, yb, label_smoothing=self.cfg.label_smoothing)

    def snapshot(self) -> list[dict]:
        _dist.broadcast_buffers(self.model, self.ctx)
        return [_plain_state(self.model, self.order)]

    def evaluate(self) -> list[dict[str, float]]:
        _dist.broadcast_buffers(self.model, self.ctx)
        if self.test_set is None:
            return [{m.name: float("nan") for m in self.task.metrics}]
        return [_evaluate(self.fwd_eval, self.test_set, self.norm, self.device, self.amp_ctx, self.ctx,
                          self.eval_bs, self.task)]

    def train_losses(self, loss_sum: Tensor, n_loss: int) -> list[float]:
        return [_dist.all_reduce_sum(loss_sum.detach().clone().double(), self.ctx).item()
                / max(1, n_loss * self.ctx.world)]

    def finish(self) -> None:
        _dist.broadcast_buffers(self.model, self.ctx)


def train(
    model: nn.Module,
    train_set: ArrayDataset | FolderDataset,
    test_set: ArrayDataset | FolderDataset | None,
    cfg: TrainConfig,
    *,
    mask: Mapping[str, Tensor] | None = None,
    rewind_step: int | None = None,
    start_step: int = 0,
    progress: Progress | None = None,
) -> TrainResult:
    """Train ``model`` in place under ``mask`` from global step ``start_step`` to the end
    of the run (the LR schedule and data order continue from there; the optimizer's
    momentum starts fresh), evaluating every ``cfg.eval_every`` steps and at the end.

    ``model`` is modified: it ends up holding the trained weights, on the device it came
    from, as plain parameters (the mask hooks are removed; masked entries are zero).
    A mask already installed in ``model`` (``masks.install``) is used when ``mask`` is
    None. ``rewind_step`` (in ``[start_step, total]``) also returns the weights at that
    step. Under torchrun (``WORLD_SIZE > 1``) trains with DDP, each rank taking its
    share of every ``cfg.batch_size`` global batch; every rank returns the same weights
    and metrics (timings are each rank's own).
    """
    t0 = time.perf_counter()
    _check_train_args(model, train_set, test_set, cfg, start_step, rewind_step)
    ctx = _dist.from_env()
    device = _resolve_device(cfg.device, ctx)
    _dist.init(ctx, device)
    if len(train_set) == 0:
        raise DatasetError(f"train_set {train_set.spec.name!r} is empty")
    total = total_steps(cfg, len(train_set))
    if not 0 <= start_step <= total:
        raise ConfigError(f"start_step={start_step} is outside the run's {total} steps")
    if rewind_step is not None and not start_step <= rewind_step <= total:
        raise ConfigError(f"rewind_step={rewind_step} must lie in [start_step={start_step}, total steps={total}]")
    batch = min(cfg.batch_size, len(train_set))
    if batch % ctx.world:
        raise ConfigError(f"batch_size {batch} is not divisible by the {ctx.world} DDP ranks; use a multiple of {ctx.world}")

    cuda = device.type == "cuda"
    channels_last = cfg.channels_last and cuda
    amp_ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (cfg.amp and cuda) else contextlib.nullcontext
    home = next(iter(model.parameters()), torch.empty(0)).device
    order = _plain_keys(model)
    if mask is None:
        mask = _masks.from_model(model) or None
    try:
        model.to(device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if mask is not None:
            _masks.install(model, mask)
        task = get_task(cfg.task)
        norm = _input_prep(task, train_set.spec, device, channels_last)
        for ds in (train_set, test_set):
            if ds is not None:
                check_data_fits(model, ds, norm, device, amp_ctx, task)
        net = _dist.wrap(model, ctx, device)
        fwd = torch.compile(net) if cfg.compile else net
        fwd_eval = torch.compile(model) if cfg.compile else model
        params = [p for p in net.parameters() if p.requires_grad]
        if cfg.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr_at(cfg, start_step, total), weight_decay=cfg.weight_decay)
        else:
            opt = torch.optim.SGD(params, lr=lr_at(cfg, start_step, total), momentum=cfg.momentum,
                                  nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        if isinstance(train_set, FolderDataset):
            sampler = _StepSampler(len(train_set), batch, cfg.seed, start_step, total, ctx)
            dl = iter(_loader(train_set.with_mode(train=True, augment=cfg.augment), sampler, device, ctx.world))

            def next_batch(step: int) -> tuple[Tensor, Tensor]:
                x, y = next(dl)
                return x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        else:
            next_batch = _ArrayBatches(train_set, batch, cfg.seed, cfg.augment and task.image_inputs, device, ctx)
        eval_bs = max(256, 2 * batch // ctx.world)
        if isinstance(test_set, (ArrayDataset, TokenDataset)):  # held on the device too, like the train set
            test_set = type(test_set)(test_set.x.to(device), test_set.y.to(device), test_set.spec)
        engine = _SingleEngine(model, fwd, fwd_eval, next_batch, norm, amp_ctx, task, cfg, ctx, device, test_set,
                               eval_bs, order)
        run = step_loop(engine, opt, cfg, total=total, start_step=start_step, rewind_step=rewind_step,
                        spe=steps_per_epoch(len(train_set), batch), device=device, progress=progress, t0=t0)
    finally:
        if _masks.from_model(model):
            _masks.remove(model)
        model.to(home)
        if channels_last:
            model.to(memory_format=torch.contiguous_format)
    final_state = _plain_state(model, order)
    steps = total - start_step
    dev_label = str(device) + (f" x{ctx.world} (ddp)" if ctx.enabled else "")
    last = run.lasts[0]
    return TrainResult(
        final_state=final_state,
        rewind_state=run.rewinds[0],
        history=run.histories[0],
        test_acc=float(last.get("test_acc", float("nan"))),
        test_loss=float(last.get("test_loss", float("nan"))),
        steps=steps,
        wall_s=time.perf_counter() - t0,
        images_per_s=steps * batch / run.train_s if run.train_s > 0 else float("nan"),
        device=dev_label,
        config=cfg.to_dict(),
        metrics=dict(run.metrics[0]),
        diverged=run.diverged_at[0] is not None,
        diverged_at=run.diverged_at[0],
    )


__all__ = ["MAX_SEED", "check_seed", "device_problem", "DivergenceWarning", "DIVERGENCE_CHECK_EVERY", "TrainConfig",
           "TrainResult", "train", "evaluate", "StepEngine", "step_loop", "LoopRun",
           "evaluate_metrics", "check_data_fits", "lr_at", "total_steps", "steps_per_epoch", "rich_progress"]
