"""How a recipe's steps run: each stage is a cached step (:mod:`elastigraph.recipes.cache`)
named by the hash of its settings and its inputs' ids, computed under its lock, with the
ranks of a ``torchrun`` job agreeing on every done/not-done decision (only rank 0
writes); the data a step trains on; and how independent work is spread -- a level's
retrains as one fleet (:func:`elastigraph.train.fleet.train_fleet`, ``fleet="auto"``: on
CUDA), and pieces of the protocol and the steps themselves on an executor
(:mod:`elastigraph.recipes.executors`: this process, local worker processes, or Ray).

:class:`Execution` is the machinery the protocol (:class:`~elastigraph.recipes.runner.Runner`)
stands on; nothing here knows the E-LTH protocol. A step's id never depends on how it ran.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Iterator, Mapping

import torch
from torch import nn

from .. import masks as _masks
from ..errors import ConfigError
from ..train.tasks import Task, get_task, task_of_data
from ..train.text import is_text_dataset
from .cache import StepCache, StepRecord, load_tensors, save_tensors, step_id
from .executors import Executor, InProcess, RayExecutor, make_executor

if TYPE_CHECKING:  # annotations only: the schema imports the baselines, which import this module
    from .schema import DatasetSpec, ModelSpec, Recipe

STEPS_DIR = "steps"

Log = Callable[[str], None]
ProgressFactory = Callable[[str], ContextManager[Callable[[int, int, dict], None]]]
"""``factory(label)`` -> context manager yielding a ``train(progress=...)`` callback,
e.g. :func:`elastigraph.train.rich_progress`."""


class StepDiverged(Exception):
    """Raised by :meth:`Steps.step` instead of running a step one of whose inputs is a
    diverged training (its weights are NaN/inf): the caller skips what depends on it."""


def diverged(rec: "StepRecord | None") -> bool:
    """Whether ``rec`` is a training step that diverged."""
    return rec is not None and bool(rec.result.get("diverged"))


# --------------------------------------------------------------------------- distribution


def _world() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment; (0, 1) otherwise."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def _ensure_process_group(device: str | None) -> None:
    """Join torchrun's process group the way ``train()`` would (nccl on CUDA, gloo on
    CPU), so that the runner can agree on cache decisions before the first training."""
    from ..train import distributed as _dist

    ctx = _dist.from_env()
    cuda = torch.cuda.is_available() and (device in (None, "auto") or str(device).startswith("cuda"))
    dev = torch.device("cuda", ctx.local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    _dist.init(ctx, dev)


def _broadcast(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


# --------------------------------------------------------------------------- data and training


def layer_density(mask: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """Per-tensor density of a mask, in the mask's order (for the per-layer plot)."""
    return {k: float(v.float().mean()) for k, v in mask.items()}


def normalized_batches(ds: Any, n: int, batch_size: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` training batches in a seeded order, normalised as the training loop does
    (uint8 -> float, per-channel mean/std of ``ds.spec``): the data SNIP/GraSP score on."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(ds), generator=g)
    if getattr(ds.spec, "task", "classification") != "classification":  # token ids: fed as they are
        return [(ds.x[idx].long(), ds.y[idx].long()) for idx in
                (perm[i * batch_size : (i + 1) * batch_size] for i in range(n)) if len(idx)]
    mean = torch.tensor(ds.spec.mean).view(1, -1, 1, 1)
    std = torch.tensor(ds.spec.std).view(1, -1, 1, 1)
    out = []
    for i in range(n):
        idx = perm[i * batch_size : (i + 1) * batch_size]
        if len(idx) == 0:
            break
        out.append(((ds.x[idx].float() / 255.0 - mean) / std, ds.y[idx]))
    return out


@functools.lru_cache(maxsize=4)
def _load_dataset(name: str, root: str | None, split: str, limit: int | None, seed: int) -> Any:
    """``load_dataset``, memoised per process: several recipes (or seeds) run in one
    process read the files once. The loop never modifies a dataset."""
    from ..train.data import load_dataset

    return load_dataset(name, root=root, split=split, limit=limit, seed=seed)


def split_validation(ds: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """``(train, val)``: a seeded random ``fraction`` of ``ds`` held out as the
    validation split (at least one image on each side), the rest for training."""
    n = len(ds)
    n_val = min(n - 1, max(1, round(n * fraction)))
    if n < 2 or not hasattr(ds, "subset"):
        raise ConfigError(
            f"dataset.val_fraction={fraction}: cannot hold out a validation split from {type(ds).__name__} "
            f"with {n} image(s); use an in-memory dataset with at least 2 images or val_fraction: 0"
        )
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed) + 7919))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)


def derived_seed(seed: int, purpose: str) -> int:
    """A seed for ``purpose`` (e.g. ``"reinit"``) that differs from ``seed`` and from every
    other run seed's, reproducibly: the first 31 bits of sha256(purpose:seed)."""
    return int(hashlib.sha256(f"{purpose}:{seed}".encode()).hexdigest()[:8], 16) & 0x7FFFFFFF



@dataclass
class _Data:
    train: Any
    test: Any
    val: Any = None

    @property
    def shape(self) -> tuple[int, int]:
        return self.train.spec.in_chans, self.train.spec.num_classes

    @property
    def image_size(self) -> int:
        return self.train.spec.image_size


# --------------------------------------------------------------------------- fleets and workers

FLEET_MODES = ("auto", "on", "off")


@dataclass
class RetrainRequest:
    """One retrain step: ``spec`` under ``mask_step``'s mask from ``weights_step``'s
    ``weights_file`` (the seeded initialisation when ``None``), from ``start_step``."""

    spec: ModelSpec
    seed: int
    mask_step: StepRecord
    weights_step: StepRecord | None
    weights_file: str
    start_step: int
    label: str
    init_seed: int | None = None
    dataset: DatasetSpec | None = None  # the target's task (None: the recipe's dataset)


# --------------------------------------------------------------------------- execution


class Steps:
    """Cached steps and the data and training they run, for one validated :class:`Recipe`
    run into ``out``: every step is computed once (under its lock, by rank 0 or by every
    rank for training), its id the hash of its settings and inputs."""

    def __init__(self, recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None,
                 cache: str | Path | None = None, wait: bool = False, executor: Executor | None = None):
        self.recipe = recipe
        self.executor = executor if executor is not None else InProcess()
        self.out = Path(out)
        self.rank, self.world = _world()
        self.cache = StepCache(Path(cache) if cache is not None else self.out / STEPS_DIR,
                               warn=None if self.rank == 0 else (lambda msg: None))
        self.wait = wait
        self.log = log if (log is not None and self.rank == 0) else (lambda s: None)
        self.progress = progress
        self.executed = 0
        self.skipped = 0
        self.diverged_skips: list[str] = []
        self._data: dict[str, _Data] = {}

    # ----- plumbing

    def _fork(self) -> "Steps":
        """A twin of this run for a piece of it that runs beside it (in a thread): the same
        recipe, cache, data and executor, its own counters and collected rows."""
        twin = copy.copy(self)
        twin.executed = twin.skipped = 0
        twin.diverged_skips = []
        return twin

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def data(self, ds: DatasetSpec | None = None) -> _Data:
        """The train/val/test splits of ``ds`` (default: the recipe's dataset; a target
        with its own ``dataset`` trains and is evaluated on that one)."""
        ds = ds or self.recipe.dataset
        key = self._dataset_key(ds)
        if key not in self._data:
            train = _load_dataset(ds.name, ds.root, "train", ds.train_limit, ds.seed)
            test = _load_dataset(ds.name, ds.root, "test", ds.test_limit, ds.seed)
            val = None
            if is_text_dataset(ds.name):  # a corpus brings its own validation split (by file)
                val = _load_dataset(ds.name, ds.root, "val", ds.test_limit, ds.seed)
            elif ds.val_fraction:
                train, val = split_validation(train, ds.val_fraction, ds.seed)
            self._data[key] = _Data(train, test, val)
        return self._data[key]

    def _dataset_settings(self, ds: DatasetSpec | None = None) -> dict[str, Any]:
        settings = (ds or self.recipe.dataset).model_dump()
        if is_text_dataset(settings["name"]):  # the corpus's content, not only its name, keys every step
            settings["corpus_sha256"] = self.data(ds).train.spec.sha256
        return settings

    @property
    def task(self) -> Task:
        """What the recipe's dataset is for: its metrics and their direction."""
        return get_task(task_of_data(self.data().train))

    def _dataset_key(self, ds: DatasetSpec | None) -> str:
        return json.dumps((ds or self.recipe.dataset).model_dump(), sort_keys=True)

    def step(
        self,
        kind: str,
        settings: dict[str, Any],
        inputs: Mapping[str, StepRecord | None],
        fn: Callable[[Path], dict[str, Any]],
        *,
        collective: bool = False,
        label: str = "",
    ) -> StepRecord:
        """Run ``fn(step_dir) -> result`` unless the step is already done.

        ``collective`` steps (training) run on every rank; the others run on rank 0 while
        the rest wait. Only rank 0 writes files and the marker. A diverged input (a training
        whose weights are NaN/inf) raises :class:`StepDiverged` instead."""
        bad = [v for v in inputs.values() if diverged(v)]
        if bad:
            raise StepDiverged(f"{label or kind}: needs the weights of {bad[0].id}, which diverged")
        ids = {k: v.id for k, v in inputs.items() if v is not None}
        sid = step_id(kind, settings, ids)
        done = self.cache.done(sid) if self.writer else False
        if self.world > 1:
            done = _broadcast(done)
        if done:
            return self._skip(sid, label)
        # The per-step lock: another run sharing this cache (--cache) may be computing the
        # step; wait for it, then take its result instead of computing it twice.
        lock = self.cache.lock(sid, poll=lambda pid: self.log(f"[wait] {sid} is being computed by {_holder(pid)}")) \
            if self.writer else contextlib.nullcontext()
        with lock:
            done = self.cache.done(sid) if self.writer else False
            if self.world > 1:
                done = _broadcast(done)
            if done:
                return self._skip(sid, label)
            self.log(f"[run ] {sid} {label}")
            t0 = time.perf_counter()
            rec: StepRecord | None = None
            if collective or self.writer:
                d = self.cache.prepare(sid) if self.writer else self.cache.dir(sid)  # clean folder: no leftovers
                result = self.executor.compute(self, sid, fn, d, inputs, label=label, training=collective)
                result = {**result, "wall_s": round(time.perf_counter() - t0, 3)}
                if self.writer:
                    rec = self.cache.finish(sid, kind, settings, ids, result)
            if self.world > 1:
                _barrier()
        self.executed += 1
        return rec if rec is not None else self.cache.load(sid)

    def _skip(self, sid: str, label: str) -> StepRecord:
        self.skipped += 1
        self.log(f"[skip] {sid} {label}")
        return self.cache.load(sid)

    def _train(
        self,
        model: nn.Module,
        *,
        seed: int,
        mask: Mapping[str, torch.Tensor] | None,
        start_step: int,
        label: str,
        rewind_step: int | None = None,
        ds: DatasetSpec | None = None,
        cfg: Any = None,
    ):
        from ..train import train

        cfg = cfg or self._config(seed)
        d = self.data(ds)
        bar = self.progress(label) if self.progress is not None and self.writer else contextlib.nullcontext(None)
        with bar as cb, self._divergence_log():
            res = train(
                model, d.train, d.test, cfg, mask=dict(mask) if mask is not None else None,
                rewind_step=rewind_step, start_step=start_step, progress=cb,
            )
        _add_validation(res, model, d.val, cfg.device)  # ``model`` holds the trained weights, masked entries zero
        return res

    def _config(self, seed: int):
        """The recipe's :class:`~elastigraph.train.TrainConfig` for ``seed``."""
        from ..train import TrainConfig

        device = {"device": self.recipe.device} if self.recipe.device else {}
        return TrainConfig(**self.recipe.train.settings(), seed=seed, task=self.task.name, **device)

    def _build(self, spec: ModelSpec, seed: int, ds: DatasetSpec | None = None) -> nn.Module:
        """``spec`` for ``ds``'s images and classes, with the initialisation drawn from
        torch's generator seeded with ``seed``."""
        torch.manual_seed(seed)
        data = self.data(ds)
        in_chans, num_classes = data.shape
        return spec.build(in_chans=in_chans, num_classes=num_classes, img_size=data.image_size)

    def _train_settings(self, spec: ModelSpec, seed: int, ds: DatasetSpec | None = None, *,
                        fleet: bool = False) -> dict[str, Any]:
        return {
            "model": spec.label,
            "dataset": self._dataset_settings(ds),
            "train": self.recipe.train.settings(),
            "seed": seed,
            "device": self.recipe.device,
            "threads": torch.get_num_threads(),  # CPU results differ between thread counts
            "numerics": self.numerics(fleet=fleet),
        }

    def numerics(self, *, fleet: bool = False) -> str:
        """The arithmetic a training step of this run computes in, part of every training
        step's id: ``"bf16-autocast"`` (alone on CUDA with ``train.amp``, the default) or
        ``"fp32"`` (the CPU; ``amp: false``; and every fleet, which trains in fp32 on CUDA:
        see :mod:`elastigraph.train.fleet`). Where a fleet computes what training alone
        computes (the CPU, or ``amp: false``; up to the order of float sums) both give the
        same id and share the cached step; where they differ (a GPU with bf16) they are two
        steps, so which number a step holds never depends on how the cache was filled."""
        from ..train import TrainConfig

        amp = self.recipe.train.settings().get("amp", TrainConfig.amp)  # unset: TrainConfig's default
        if fleet or not self._cuda() or not amp:
            return "fp32"
        return "bf16-autocast"

    def _cuda(self) -> bool:
        """Whether this run's trainings run on CUDA (where the executor runs them)."""
        return self.executor.cuda(self.recipe.device)

    @contextlib.contextmanager
    def _divergence_log(self) -> Iterator[None]:
        """A training's :class:`~elastigraph.train.loop.DivergenceWarning` as one
        ``[diverged]`` log line (other warnings pass through unchanged)."""
        import warnings

        from ..train.loop import DivergenceWarning

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DivergenceWarning)
            yield
        for w in caught:
            if issubclass(w.category, DivergenceWarning):
                self.log(f"[diverged] {w.message}")
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)

    def _skipped_diverged(self, what: str) -> None:
        """Log and remember work skipped because a training it needs diverged."""
        self.log(f"[skip] {what}")
        self.diverged_skips.append(what)


class Execution(Steps):
    """:class:`Steps` plus the scheduling of independent work: a level's retrain steps as
    one fleet (``fleet``: ``auto`` = on CUDA, ``on``, ``off``), and pieces of the protocol
    beside each other on an executor (:mod:`elastigraph.recipes.executors`: ``"local"``,
    in this process or over ``workers`` worker processes, ``None`` = chosen from the
    hardware and the training length; ``"ray"``, every step a task on the Ray cluster at
    ``address``, a failed one retried ``max_retries`` times); the protocol subclasses it."""

    def __init__(self, recipe: Recipe, out: str | Path, *, fleet: str = "auto", workers: int | None = None,
                 executor: str | Executor = "local", address: str | None = None, max_retries: int | None = None,
                 **kw: Any):
        if fleet not in FLEET_MODES:
            raise ConfigError(f"fleet={fleet!r}: use one of {FLEET_MODES}")
        ex = make_executor(executor, workers=workers, address=address, max_retries=max_retries)
        if isinstance(ex, RayExecutor) and fleet == "on":
            raise ConfigError("fleet='on' trains a level's retrains together in one process; with executor 'ray' "
                              "every training is its own task: use fleet 'auto' or 'off'")
        super().__init__(recipe, out, executor=ex, **kw)
        self.fleet = fleet
        self.workers = workers

    # ----- retrain steps: alone, as fleets, or in worker processes

    def retrain(
        self, spec: ModelSpec, seed: int, *, mask_step: StepRecord, weights_step: StepRecord | None,
        weights_file: str, start_step: int, label: str, init_seed: int | None = None, ds: DatasetSpec | None = None,
    ) -> StepRecord:
        """Train ``spec`` under ``mask_step``'s mask from ``weights_step``'s weights (or a
        fresh initialisation drawn with ``init_seed``, default ``seed``, when ``None``), the
        LR schedule resumed at ``start_step``; data order always follows ``seed``."""
        return self.retrain_many([RetrainRequest(spec, seed, mask_step, weights_step, weights_file, start_step, label,
                                                 init_seed, ds)])[0]

    def _retrain_key(self, req: RetrainRequest, *, fleet: bool = False
                     ) -> tuple[str, dict[str, Any], dict[str, StepRecord | None]]:
        settings = {**self._train_settings(req.spec, req.seed, req.dataset, fleet=fleet), "start_step": req.start_step,
                    "weights_file": req.weights_file}
        if req.init_seed is not None and req.weights_step is None:
            settings["init_seed"] = req.init_seed
        return "retrain", settings, {"mask": req.mask_step, "weights": req.weights_step}

    def _retrain_model(self, req: RetrainRequest) -> tuple[nn.Module, dict[str, torch.Tensor]]:
        fresh = req.init_seed is not None and req.weights_step is None
        model = self._build(req.spec, req.init_seed if fresh else req.seed, req.dataset)
        if req.weights_step is not None:
            model.load_state_dict(load_tensors(req.weights_step.file(req.weights_file)))
        return model, _masks.load_mask(req.mask_step.file("mask.safetensors"))

    def _retrain_one(self, req: RetrainRequest) -> StepRecord:
        kind, settings, inputs = self._retrain_key(req)

        def fn(d: Path) -> dict[str, Any]:
            model, mask = self._retrain_model(req)
            res = self._train(model, seed=req.seed, mask=mask, start_step=req.start_step, label=req.label, ds=req.dataset)
            if self.writer:
                save_tensors(d / "final.safetensors", res.final_state)
            return _train_result(res, sparsity=_masks.sparsity(mask))

        return self.step(kind, settings, inputs, fn, collective=True, label=req.label)

    def retrain_many(self, requests: list[RetrainRequest]) -> list[StepRecord]:
        """Every retrain step of ``requests`` (independent of each other), in order.

        With fleets on, requests that can share a fleet (same architecture and start
        step; seeds may differ) train together; otherwise, with worker processes, they
        run in parallel; otherwise one after another. The steps' ids and files are the
        same whichever way they ran (a fleet-trained step records ``fleet: K``)."""
        out: list[StepRecord | None] = [None] * len(requests)
        todo = list(range(len(requests)))
        if self._fleets_on() and len(requests) > 1:
            groups: dict[tuple, list[int]] = {}
            for i in todo:
                r = requests[i]
                groups.setdefault((r.spec.label, r.start_step, self._dataset_key(r.dataset)), []).append(i)
            todo = []
            for idx in groups.values():
                recs = self._retrain_fleet([requests[i] for i in idx]) if len(idx) > 1 else None
                if recs is None:
                    todo += idx
                else:
                    for i, rec in zip(idx, recs):
                        out[i] = rec
            todo.sort()
        if self.executor.parallel and len(todo) > 1:
            futures = {i: self._submit("retrain_many", requests=[requests[i]]) for i in todo
                       if not self.cache.done(step_id(*self._key_ids(requests[i])))}
            for i in todo:
                if i in futures:
                    self.executed += futures[i].result()
                out[i] = self._retrain_one(requests[i]) if i not in futures else self._load_retrain(requests[i])
        else:
            for i in todo:
                out[i] = self._retrain_one(requests[i])
        return out  # type: ignore[return-value]

    def _key_ids(self, req: RetrainRequest, *, fleet: bool = False) -> tuple[str, dict[str, Any], dict[str, str]]:
        kind, settings, inputs = self._retrain_key(req, fleet=fleet)
        return kind, settings, {k: v.id for k, v in inputs.items() if v is not None}

    def _load_retrain(self, req: RetrainRequest) -> StepRecord:
        return self.cache.load(step_id(*self._key_ids(req)))

    def _retrain_fleet(self, reqs: list[RetrainRequest]) -> list[StepRecord] | None:
        """Train the not-yet-done steps of ``reqs`` as one fleet; ``None`` when they
        cannot share one (the caller then runs them alone)."""
        from ..train.fleet import can_fleet, train_fleet

        keys = [self._key_ids(r, fleet=True) for r in reqs]  # fleet numerics: see numerics()
        sids = [step_id(*k) for k in keys]
        with contextlib.ExitStack() as stack:
            for sid in sorted(set(sids)):
                stack.enter_context(self.cache.lock(sid))
            pending = [i for i, sid in enumerate(sids) if not self.cache.done(sid) and sid not in sids[:i]]
            if len(pending) < 2:
                return None
            built = [self._retrain_model(reqs[i]) for i in pending]
            cfgs = [self._config(reqs[i].seed) for i in pending]
            data = self.data(reqs[pending[0]].dataset)  # a fleet shares one dataset (grouped by it)
            why = can_fleet(built[0][0], cfgs[0], data.train)
            if why is not None:
                self.log(f"[info] no fleet for {reqs[0].spec.label}: {why}")
                return None
            label = f"fleet of {len(pending)}: {reqs[pending[0]].label} + {len(pending) - 1} more"
            for i in pending:
                self.log(f"[run ] {sids[i]} {reqs[i].label} (fleet of {len(pending)})")
                self.cache.prepare(sids[i])
            t0 = time.perf_counter()
            bar = self.progress(label) if self.progress is not None else contextlib.nullcontext(None)
            with bar as cb, self._divergence_log():
                results = train_fleet([m for m, _ in built], data.train, data.test, cfgs,
                                      masks=[mk for _, mk in built], start_step=reqs[pending[0]].start_step, progress=cb)
            wall = round(time.perf_counter() - t0, 3)
            for (model, _), res in zip(built, results):  # as _train: validation metrics when split off
                _add_validation(res, model, data.val, cfgs[0].device)
            for i, (_, mk), res in zip(pending, built, results):
                d = self.cache.dir(sids[i])
                save_tensors(d / "final.safetensors", res.final_state)
                result = {**_train_result(res, sparsity=_masks.sparsity(mk)), "fleet": len(pending), "wall_s": wall}
                self.cache.finish(sids[i], keys[i][0], keys[i][1], keys[i][2], result)
                self.executed += 1
        out = []
        for i, sid in enumerate(sids):
            if i not in pending:
                self.skipped += 1
                self.log(f"[skip] {sid} {reqs[i].label}")
            out.append(self.cache.load(sid))
        return out

    # ----- fleets and executors

    def _fleets_on(self) -> bool:
        """Fleets train where they pay: on a GPU (``auto``), or when asked (``on``);
        never under torchrun, nor on Ray (every training is its own task there)."""
        if self.world > 1 or self.fleet == "off" or isinstance(self.executor, RayExecutor):
            return False
        return self.fleet == "on" or self._cuda()

    def _submit(self, method: str, **kw: Any) -> Future:
        """Run ``self.<method>(**kw)`` beside this one on the executor (a worker process, or
        a thread whose steps are Ray tasks); the future's result is the number of steps
        it executed. The caller replays the piece afterwards and finds its steps done."""
        return self.executor.submit(self, method, **kw)


def _holder(pid: str) -> str:
    """Who holds a step's lock, for the ``[wait]`` line: this run's own side-by-side
    pieces are threads of this process (Ray executor), others a PID."""
    return "another piece of this run" if pid == str(os.getpid()) else f"PID {pid}"


def _num(x: Any) -> float | None:
    """A float for JSON, None for NaN/inf (strict JSON has neither)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _add_validation(res: Any, model: nn.Module, val: Any, device: str) -> None:
    """Set ``res.val_metrics``: the task's metrics of the trained ``model`` on the
    validation split (``None`` without one)."""
    res.val_metrics = None
    if val is not None:
        from ..train.loop import evaluate_metrics

        res.val_metrics = evaluate_metrics(model, val, device=device)


def _train_result(res: Any, *, sparsity: float) -> dict[str, Any]:
    """A training step's result: ``test_<key>`` and ``val_<key>`` for every metric of the
    task (classification: ``test_acc``, ``test_loss``, ``val_acc``, ``val_loss``)."""
    task = get_task((res.config or {}).get("task") or "classification")
    test = res.metrics or {"accuracy": res.test_acc, "loss": res.test_loss}
    val = res.val_metrics or {}
    return {
        **{f"test_{m.key}": _num(test.get(m.name)) for m in task.metrics},
        "steps": int(res.steps),
        "sparsity": float(sparsity),
        "images_per_s": _num(res.images_per_s),
        "device": str(res.device),
        **{f"val_{m.key}": _num(val.get(m.name)) for m in task.metrics},
        **({"diverged": True, "diverged_at": int(res.diverged_at)} if getattr(res, "diverged", False) else {}),
    }


