"""Run a recipe: source IMP -> transfer to each target -> retrain, plus baselines at the
same sparsity, for every seed (the protocol of docs/elth.md).

Every stage is a cached step (:mod:`elastigraph.recipes.cache`) named by the hash of
its settings and its inputs' ids, so a rerun -- after a finished run, a crash or a
SIGKILL -- skips what is done and ends with the same results. Under ``torchrun`` every
rank trains (``train()`` does the DDP part), only rank 0 writes files, and the ranks
agree on each step's done/not-done decision before acting on it.

Throughput (docs/benchmarks.md): the retrain steps of one level (the transferred ticket
and the mask baselines: same architecture, same training settings) go through one
:meth:`Runner.retrain_many`, which trains them as one fleet
(:func:`elastigraph.train.fleet.train_fleet`) where fleets are on (``fleet="auto"``: on
CUDA), or spreads them over worker processes (``workers``; each pinned to its share of
the cores, or one GPU). With several seeds the workers take whole seeds. A step's id
never depends on how it ran; every step is computed under its lock
(:meth:`StepCache.lock`), so workers sharing a cache never compute one step twice.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import json
import math
import platform
import os
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

from .. import masks as _masks
from ..errors import ConfigError, SegmentMismatchError
from ..train.tasks import Task, get_task, task_of_data
from ..train.text import is_text_dataset
from .cache import StepCache, StepRecord, load_tensors, save_tensors, step_id, write_json
from . import baselines
from .schema import DatasetSpec, ModelSpec, Recipe, TargetSpec

RESULTS = "results.json"
STEPS_DIR = "steps"
LOCK_FILE = ".lock"

Log = Callable[[str], None]
ProgressFactory = Callable[[str], ContextManager[Callable[[int, int, dict], None]]]
"""``factory(label)`` -> context manager yielding a ``train(progress=...)`` callback,
e.g. :func:`elastigraph.train.rich_progress`."""


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


# --------------------------------------------------------------------------- adapters to the library


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


def environment() -> dict[str, Any]:
    """What changes the numbers besides the recipe: torch version and CPU thread count
    (on CPU, results are bit-exact only for the same machine, torch and thread count)."""
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": torch.version.cuda if torch.cuda.is_available() else None,
    }


ACCURACY_SPLITS = {
    "test_acc": "the dataset's test split (never used to choose anything)",
    "val_acc": "validation split: dataset.val_fraction of the training set, held out from training (None without one)",
}
"""Which split each accuracy of results.json comes from."""


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


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def _init_worker(counter: Any, n: int, threads: int, gpus: int) -> None:
    """Worker start-up: take the next index; pin to that share of the cores (or one GPU)."""
    with counter.get_lock():
        i = counter.value
        counter.value += 1
    if gpus:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
    cores = _cores()
    share = max(1, len(cores) // n)
    mine = cores[(i * share) % len(cores):][:share] or cores
    try:
        os.sched_setaffinity(0, mine)
    except (AttributeError, OSError):
        pass
    torch.set_num_threads(threads)


_WORKER_RUNNERS: dict[str, "Runner"] = {}


def _worker_job(recipe: Recipe, out: str, cache: str, fleet: str, what: str, kw: dict[str, Any]) -> int:
    """Run one job in a worker process; returns the number of steps it executed."""
    runner = _WORKER_RUNNERS.get(cache)
    if runner is None:
        runner = _WORKER_RUNNERS[cache] = Runner(recipe, out, cache=cache, fleet=fleet, workers=1)
    before = runner.executed
    if what == "retrain":
        runner.retrain_many([kw["req"]])
    elif what == "chain":
        runner._target_chain(recipe.targets[kw["target"]], kw["seed"], kw["top"])
    elif what == "seed":
        p = recipe.prune
        levels = p.transfer_levels()
        runner._run_seed(kw["seed"], levels, max(levels), [])
    else:  # pragma: no cover -- internal
        raise ValueError(what)
    return runner.executed - before


# --------------------------------------------------------------------------- runner


@dataclass
class RunSummary:
    """What a run did: where it wrote, how many steps ran or came from the cache, and the
    flat result records (also in ``results.json``)."""

    out: Path
    executed: int
    skipped: int
    records: list[dict[str, Any]] = field(default_factory=list)
    results_path: Path | None = None


class Runner:
    """Executes one validated :class:`Recipe` into ``out`` (see module docstring)."""

    def __init__(self, recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None,
                 cache: str | Path | None = None, wait: bool = False, fleet: str = "auto", workers: int | None = None):
        if fleet not in FLEET_MODES:
            raise ConfigError(f"fleet={fleet!r}: use one of {FLEET_MODES}")
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ConfigError(f"workers={workers}: use a number >= 1, or None to choose automatically")
        self.recipe = recipe
        self.out = Path(out)
        self.rank, self.world = _world()
        self.cache = StepCache(Path(cache) if cache is not None else self.out / STEPS_DIR,
                               warn=None if self.rank == 0 else (lambda msg: None))
        self.wait = wait
        self.log = log if (log is not None and self.rank == 0) else (lambda s: None)
        self.progress = progress
        self.fleet = fleet
        self.workers = workers
        self.executed = 0
        self.skipped = 0
        self._data: dict[str, _Data] = {}
        self._pool: Any = None
        self.lmc_rows: list[dict[str, Any]] = []

    # ----- plumbing

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
        the rest wait. Only rank 0 writes files and the marker."""
        ids = {k: v.id for k, v in inputs.items() if v is not None}
        sid = step_id(kind, settings, ids)
        done = self.cache.done(sid) if self.writer else False
        if self.world > 1:
            done = _broadcast(done)
        if done:
            return self._skip(sid, label)
        # The per-step lock: another run sharing this cache (--cache) may be computing the
        # step; wait for it, then take its result instead of computing it twice.
        lock = self.cache.lock(sid, poll=lambda pid: self.log(f"[wait] {sid} is being computed by PID {pid}")) \
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
                result = fn(d)
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
        with bar as cb:
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

    def _train_settings(self, spec: ModelSpec, seed: int, ds: DatasetSpec | None = None) -> dict[str, Any]:
        return {
            "model": spec.label,
            "dataset": self._dataset_settings(ds),
            "train": self.recipe.train.settings(),
            "seed": seed,
            "device": self.recipe.device,
            "threads": torch.get_num_threads(),  # CPU results differ between thread counts
        }

    # ----- stages

    def dense(self, spec: ModelSpec, seed: int, role: str, name: str, ds: DatasetSpec | None = None) -> StepRecord:
        """Level 0: dense training from the seeded initialisation; keeps the weights at
        the rewind step (``rewind.safetensors``) and the final ones (``final.safetensors``)."""
        k = self.recipe.prune.rewind_step
        settings = {**self._train_settings(spec, seed, ds), "rewind_step": k}

        def fn(d: Path) -> dict[str, Any]:
            from ..train import total_steps

            total = total_steps(self._config(seed), len(self.data(ds).train))
            if k > total:
                raise ConfigError(
                    f"recipe {self.recipe.name!r}: prune.rewind_step={k} lies beyond the {total} training steps; "
                    "lower prune.rewind_step or train longer (train.steps / train.epochs)"
                )
            model = self._build(spec, seed, ds)
            res = self._train(model, seed=seed, mask=None, start_step=0, rewind_step=k, label=f"{role} {name} dense", ds=ds)
            if self.writer:
                save_tensors(d / "rewind.safetensors", res.rewind_state)
                save_tensors(d / "final.safetensors", res.final_state)
            return _train_result(res, sparsity=0.0)

        return self.step("dense", settings, {}, fn, collective=True, label=f"{role} {name} dense seed={seed}")

    def imp_level(
        self, spec: ModelSpec, seed: int, level: int, prev: StepRecord, dense: StepRecord, role: str, name: str,
        ds: DatasetSpec | None = None,
    ) -> StepRecord:
        """IMP level ``level``: prune ``fraction`` of the weights still alive in ``prev``'s
        final weights (global magnitude), rewind the survivors to ``dense``'s rewind
        weights and retrain under the new mask."""
        p = self.recipe.prune
        settings = {**self._train_settings(spec, seed, ds), "level": level, "fraction": p.fraction, "rewind_step": p.rewind_step,
                    **p.prunable()}

        def fn(d: Path) -> dict[str, Any]:
            from .. import prune

            model = self._build(spec, seed, ds)
            model.load_state_dict(load_tensors(prev.file("final.safetensors")))
            prev_mask = _masks.load_mask(prev.file("mask.safetensors")) if level > 1 else None
            mask = prune.magnitude(model, fraction=p.fraction, mask=prev_mask, **p.prunable())
            model.load_state_dict(load_tensors(dense.file("rewind.safetensors")))
            res = self._train(model, seed=seed, mask=mask, start_step=p.rewind_step, label=f"{role} {name} IMP level {level}", ds=ds)
            if self.writer:
                _masks.save_mask(mask, d / "mask.safetensors")
                save_tensors(d / "final.safetensors", res.final_state)
            return {**_train_result(res, sparsity=_masks.sparsity(mask)), "layers": layer_density(mask)}

        return self.step(
            "imp", settings, {"prev": prev, "dense": dense}, fn, collective=True,
            label=f"{role} {name} IMP level={level} seed={seed}",
        )

    def imp_levels(
        self, spec: ModelSpec, seed: int, upto: int, role: str, name: str, ds: DatasetSpec | None = None,
    ) -> tuple[StepRecord, list[StepRecord]]:
        """The dense run and IMP levels 1..``upto`` of ``spec`` on ``ds`` (default the
        recipe's dataset; index ``i`` = level ``i+1``)."""
        dense = self.dense(spec, seed, role, name, ds)
        levels: list[StepRecord] = []
        prev = dense
        for level in range(1, upto + 1):
            prev = self.imp_level(spec, seed, level, prev, dense, role, name, ds)
            levels.append(prev)
        return dense, levels

    def transfer(self, target: TargetSpec, seed: int, level: StepRecord, src_dense: StepRecord,
                 *, trained: bool = False) -> StepRecord:
        """Move the source's level mask and its rewind weights (``trained``: the level's
        trained weights, for healing) onto ``target``; keeps the mask, the weights, the
        plan and ``blocks.json`` (per target block: stage, block, source block and its
        parameter names; the permuted baseline reads the copies there)."""
        settings = {
            "source": self.recipe.source.label, "target": target.model.label,
            "strategy": target.strategy, "mapping": target.mapping, "seed": seed,
            "dataset": self._dataset_settings(), "format": 2,
        }
        if target.start_at_step_zero:  # only when set: older runs keep their step ids
            settings["start_at_step_zero"] = True
        if target.dataset is not None:  # another task: the target is built for its classes
            settings["target_dataset"] = self._dataset_settings(target.dataset)
        if target.head != "keep":
            settings["head"] = target.head
        if trained:
            settings["weights"] = "trained"

        def fn(d: Path) -> dict[str, Any]:
            from ..transfer import transfer

            src = self._build(self.recipe.source, seed)  # the seeded init = the dense run's step 0
            if trained:
                src.load_state_dict(load_tensors(level.file("final.safetensors")))
            elif not target.start_at_step_zero:
                src.load_state_dict(load_tensors(src_dense.file("rewind.safetensors")))
            src_mask = _masks.load_mask(level.file("mask.safetensors"))
            dst = self._build(target.model, seed, target.dataset)
            x = self.data().train.x
            try:
                ticket = transfer(src, src_mask, dst, strategy=target.strategy, mapping=target.mapping,
                                  example_input=(2, *x.shape[1:]), head=target.head, seed=derived_seed(seed, "head"))
            except SegmentMismatchError as e:
                if "head='reinit'" not in str(e):
                    raise
                raise SegmentMismatchError(f"{e} In a recipe: set `head: reinit` on target {target.name!r}.") from None
            _masks.save_mask(ticket.mask, d / "mask.safetensors")
            save_tensors(d / "weights.safetensors", ticket.weights)
            write_json(d / "plan.json", ticket.plan.to_dict())
            write_json(d / "blocks.json", [
                {"stage": st, "dst_block": j, "src_block": i, "params": list(names)} for st, j, i, names in ticket.blocks
            ])
            return {
                "sparsity": _masks.sparsity(ticket.mask),
                "source_sparsity": _masks.sparsity(src_mask),
                "mapping": ticket.plan.mapping_string(),
                "layers": layer_density(ticket.mask),
                "source_layers": layer_density(src_mask),
                "copied": copied_tensors(ticket.blocks),
                "reinit_head": list(ticket.reinit),
            }

        return self.step(
            "transfer", settings, {"mask": level, "weights": level if trained else src_dense}, fn,
            label=f"{self.recipe.source_name} -> {target.name}{' (trained)' if trained else ''} seed={seed}",
        )

    def heal(self, target: TargetSpec, seed: int, lv: int, tr: StepRecord) -> StepRecord:
        """"Up-scale, then heal": train the transferred *trained* ticket ``tr`` under its
        mask for ``heal.steps`` steps; the result holds the metrics and the sparsity (share
        of exact zeros in the masked tensors) before and after. The sparsity never drops:
        a drop is an error, not a number."""
        h = self.recipe.heal
        assert h is not None
        settings = {**self._train_settings(target.model, seed, target.dataset), "heal": h.overrides()}
        label = f"heal {target.name} level={lv} seed={seed}"

        def fn(d: Path) -> dict[str, Any]:
            from ..train import TrainConfig
            from ..train.loop import evaluate_metrics

            model = self._build(target.model, seed, target.dataset)
            model.load_state_dict(load_tensors(tr.file("weights.safetensors")))
            mask = _masks.load_mask(tr.file("mask.safetensors"))
            data = self.data(target.dataset)
            cfg = TrainConfig(**{**self._config(seed).to_dict(), "epochs": 1.0, **h.overrides()})
            before = evaluate_metrics(model, data.test, device=cfg.device, mask=mask)
            zeros_before = _zero_share(model.state_dict(), mask)
            res = self._train(model, seed=seed, mask=mask, start_step=0, label=label, ds=target.dataset, cfg=cfg)
            zeros_after = _zero_share(res.final_state, mask)
            if zeros_after < zeros_before - 1e-12:
                raise ConfigError(f"{label}: the share of zero weights in the masked tensors fell from "
                                  f"{zeros_before:.4%} to {zeros_after:.4%}; the mask did not hold during training")
            if self.writer:
                save_tensors(d / "final.safetensors", res.final_state)
            task = get_task(cfg.task)
            return {**_train_result(res, sparsity=_masks.sparsity(mask)),
                    "before": {m.key: _num(before[m.name]) for m in task.metrics},
                    "sparsity_before": zeros_before, "sparsity_after": zeros_after}

        return self.step("heal", settings, {"ticket": tr}, fn, collective=True, label=label)

    def retrain(
        self, spec: ModelSpec, seed: int, *, mask_step: StepRecord, weights_step: StepRecord | None,
        weights_file: str, start_step: int, label: str, init_seed: int | None = None, ds: DatasetSpec | None = None,
    ) -> StepRecord:
        """Train ``spec`` under ``mask_step``'s mask from ``weights_step``'s weights (or a
        fresh initialisation drawn with ``init_seed``, default ``seed``, when ``None``), the
        LR schedule resumed at ``start_step``; data order always follows ``seed``."""
        return self.retrain_many([RetrainRequest(spec, seed, mask_step, weights_step, weights_file, start_step, label,
                                                 init_seed, ds)])[0]

    def _retrain_key(self, req: RetrainRequest) -> tuple[str, dict[str, Any], dict[str, StepRecord | None]]:
        settings = {**self._train_settings(req.spec, req.seed, req.dataset), "start_step": req.start_step, "weights_file": req.weights_file}
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
        if self._pool is not None and len(todo) > 1:
            futures = {i: self._submit("retrain", req=requests[i]) for i in todo
                       if not self.cache.done(step_id(*self._key_ids(requests[i])))}
            for i in todo:
                if i in futures:
                    self.executed += futures[i].result()
                out[i] = self._retrain_one(requests[i]) if i not in futures else self._load_retrain(requests[i])
        else:
            for i in todo:
                out[i] = self._retrain_one(requests[i])
        return out  # type: ignore[return-value]

    def _key_ids(self, req: RetrainRequest) -> tuple[str, dict[str, Any], dict[str, str]]:
        kind, settings, inputs = self._retrain_key(req)
        return kind, settings, {k: v.id for k, v in inputs.items() if v is not None}

    def _load_retrain(self, req: RetrainRequest) -> StepRecord:
        return self.cache.load(step_id(*self._key_ids(req)))

    def _retrain_fleet(self, reqs: list[RetrainRequest]) -> list[StepRecord] | None:
        """Train the not-yet-done steps of ``reqs`` as one fleet; ``None`` when they
        cannot share one (the caller then runs them alone)."""
        from ..train.fleet import can_fleet, train_fleet

        keys = [self._key_ids(r) for r in reqs]
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
            with bar as cb:
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

    # ----- fleets and workers

    def _cuda(self) -> bool:
        dev = self.recipe.device
        return torch.cuda.is_available() and (dev in (None, "auto") or str(dev).startswith("cuda"))

    def _fleets_on(self) -> bool:
        """Fleets train where they pay: on a GPU (``auto``), or when asked (``on``);
        never under torchrun."""
        if self.world > 1 or self.fleet == "off":
            return False
        return self.fleet == "on" or self._cuda()

    def _auto_workers(self) -> int:
        """One worker per GPU on CUDA, per core on a CPU; 1 when the trainings are so
        short (< 50 steps) that starting processes would cost more than it saves."""
        from ..train import total_steps

        if self.world > 1:
            return 1
        if total_steps(self._config(0), len(self.data().train)) < 50:
            return 1
        if self._cuda():
            return max(1, torch.cuda.device_count())
        return max(1, min(8, len(_cores())))

    def _start_pool(self) -> None:
        n = self.workers if self.workers is not None else self._auto_workers()
        if n <= 1 or self.world > 1:
            return
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        ctx = mp.get_context("spawn")
        counter = ctx.Value("i", 0)
        cuda = self._cuda()
        gpus = torch.cuda.device_count() if cuda else 0
        threads = max(1, torch.get_num_threads() // n)
        # the thread count is part of every training step's key (CPU results depend on it):
        # the parent computes steps' ids and trains some steps itself, so it uses the
        # workers' count too -- a step's id and result do not depend on where it ran
        self._parent_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        self._pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                         initargs=(counter, n, threads, gpus))
        self.log(f"[info] {n} worker processes ({'one GPU each' if gpus else f'{threads} thread(s) each, pinned'})")

    def _stop_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            if getattr(self, "_parent_threads", None):
                torch.set_num_threads(self._parent_threads)
                self._parent_threads = None

    def _submit(self, what: str, **kw: Any) -> Future:
        return self._pool.submit(_worker_job, self.recipe, str(self.out), str(self.cache.root), self.fleet, what, kw)

    def imp_matched(
        self, spec: ModelSpec, seed: int, sparsity_of: StepRecord, role: str, name: str, ds: DatasetSpec | None = None,
    ) -> StepRecord:
        """The target's IMP ticket at the exact global sparsity of ``sparsity_of``'s mask (the
        transferred ticket): take the deepest IMP level ``L`` that is not sparser (level 0 =
        the dense run), prune its *trained* weights by global magnitude, among the weights
        its mask keeps, down to exactly the same kept count, rewind the survivors and
        retrain -- one more IMP round with the fraction that hits the sparsity. When level
        ``L`` already has that count, it is the answer (no extra step)."""
        p = self.recipe.prune
        goal = _masks.load_mask(sparsity_of.file("mask.safetensors"))
        keep = sum(int(t.sum()) for t in goal.values())
        total = sum(t.numel() for t in goal.values())
        kept = [total]  # IMP's exact kept counts per level (prune._core.select, round half up)
        while len(kept) <= 200 and kept[-1] > keep:
            kept.append(int(math.floor(kept[-1] * (1.0 - p.fraction) + 0.5)))
        level = max(i for i, k in enumerate(kept) if k >= keep)
        dense, levels = self.imp_levels(spec, seed, level, role, name, ds)
        prev = levels[level - 1] if level else dense
        if kept[level] == keep:
            return prev
        sparsity = 1.0 - keep / total
        settings = {**self._train_settings(spec, seed, ds), "from_level": level, "keep": keep, "rewind_step": p.rewind_step,
                    **p.prunable()}

        def fn(d: Path) -> dict[str, Any]:
            from .. import prune

            model = self._build(spec, seed, ds)
            model.load_state_dict(load_tensors(prev.file("final.safetensors")))
            prev_mask = _masks.load_mask(prev.file("mask.safetensors")) if level else None
            mask = prune.magnitude(model, sparsity=sparsity, mask=prev_mask, **p.prunable())
            got = sum(int(t.sum()) for t in mask.values())
            if got != keep or set(mask) != set(goal):
                raise ConfigError(
                    f"recipe {self.recipe.name!r}: the sparsity-matched IMP ticket of {name} keeps {got} weights in "
                    f"{len(mask)} tensors, the transferred ticket {keep} in {len(goal)}: their prunable sets differ"
                )
            model.load_state_dict(load_tensors(dense.file("rewind.safetensors")))
            res = self._train(model, seed=seed, mask=mask, start_step=p.rewind_step,
                              label=f"{role} {name} IMP matched to {100 * sparsity:.2f}%", ds=ds)
            if self.writer:
                _masks.save_mask(mask, d / "mask.safetensors")
                save_tensors(d / "final.safetensors", res.final_state)
            return {**_train_result(res, sparsity=_masks.sparsity(mask)), "layers": layer_density(mask),
                    "from_level": level}

        return self.step(
            "imp-matched", settings, {"prev": prev, "dense": dense}, fn, collective=True,
            label=f"{role} {name} IMP matched to {100 * sparsity:.2f}% seed={seed}",
        )

    # ----- the protocol

    def run(self) -> RunSummary:
        """Run every seed of the recipe; write ``results.json``, CSV and plots (rank 0).
        Rank 0 holds the output folder's lock (``OUT/.lock``) for the whole run: a second
        run on the same folder is refused naming this one's PID, or waits (``wait=True``)."""
        if not self.writer:
            return self._run()
        from .cache import FolderLock, remove_temp_files

        self.out.mkdir(parents=True, exist_ok=True)
        lock = FolderLock(self.out / LOCK_FILE, f"output folder {str(self.out)!r}")
        lock.acquire(wait=self.wait, on_wait=lambda pid: self.log(f"[wait] {self.out} is in use by PID {pid}"))
        try:
            remove_temp_files(self.out)  # left by a run killed while writing results/plots
            return self._run()
        finally:
            lock.release()

    def _run(self) -> RunSummary:
        if self.world > 1:
            _ensure_process_group(self.recipe.device)
        r = self.recipe
        p = r.prune
        levels = p.transfer_levels()
        top = max(levels)
        records: list[dict[str, Any]] = []
        layers: list[dict[str, Any]] = []
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "recipe.json", r.model_dump(mode="json"))
        self._start_pool()
        step_threads = torch.get_num_threads()  # what every step of this run trains with
        try:
            if self._pool is not None and len(r.seeds) > 1:  # whole seeds to the workers
                jobs = [self._submit("seed", seed=seed) for seed in r.seeds]
                for j in jobs:
                    self.executed += j.result()
            for seed in r.seeds:
                records += self._run_seed(seed, levels, top, layers)
        finally:
            self._stop_pool()
        summary = RunSummary(self.out, self.executed, self.skipped, records)
        if self.writer:
            data = self.data()
            env = {**environment(), "threads": step_threads, "devices": sorted({str(x["device"]) for x in records if x.get("device")})}
            results = {
                "recipe": r.name,
                "source": r.source_name,
                "targets": [t.name for t in r.targets],
                "seeds": r.seeds,
                "environment": env,
                "task": task_block(self.task),
                "accuracy_splits": {
                    **_splits(self.task),
                    "sizes": _sizes(data),
                    **({"target_sizes": {t.name: {"dataset": t.dataset.name, **_sizes(self.data(t.dataset))}
                                         for t in r.targets if t.dataset is not None}}
                       if any(t.dataset is not None for t in r.targets) else {}),
                },
                "records": records,
                "layer_density": layers,
            }
            if r.analyses:
                results["lmc"] = self.lmc_rows
            write_json(self.out / RESULTS, results)
            summary.results_path = self.out / RESULTS
            from ..report import write_report

            write_report(self.out)
            if self.lmc_rows:
                from ..analyses import plot_lmc, write_lmc_csv

                write_lmc_csv(self.lmc_rows, self.out / "lmc.csv")
                plot_lmc(self.lmc_rows, self.out / "lmc.png")
        return summary

    def _run_seed(self, seed: int, levels: list[int], top: int, layers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The protocol for one seed: the source's IMP, then every target."""
        r = self.recipe
        chains = []
        if self._pool is not None:  # the targets' own IMP/dense runs need no source: start them now
            seen = set()
            for i, t in enumerate(r.targets):
                if t.model.label not in seen:
                    seen.add(t.model.label)
                    chains.append(self._submit("chain", target=i, seed=seed, top=top))
        src_dense, src_levels = self.imp_levels(r.source, seed, r.prune.rounds, "source", r.source_name)
        for c in chains:
            self.executed += c.result()
        records = []
        for lv, rec in [(0, src_dense)] + list(enumerate(src_levels, 1)):
            records.append(_record(seed, "source", r.source.label, r.source_name, lv, "imp" if lv else "dense", rec))
        for target in r.targets:
            records += self._target(target, seed, levels, top, src_dense, src_levels, layers)
        return records

    def _target_runs(self, target: TargetSpec, seed: int, top: int) -> tuple[StepRecord | None, list[StepRecord]]:
        """The target's own dense run and IMP levels 1..``top``, as far as the recipe's
        baselines need them (:func:`baselines.prepared`): ``(dense or None, levels)``."""
        needs = baselines.prepared(self.recipe.baselines, self.recipe.baseline_settings)
        if "imp" in needs:
            return self.imp_levels(target.model, seed, top, "target", target.name, target.dataset)
        if "dense" in needs:
            return self.dense(target.model, seed, "target", target.name, target.dataset), []
        return None, []

    def _target_chain(self, target: TargetSpec, seed: int, top: int) -> None:
        """The target's own dense/IMP runs, as :meth:`_target` will ask for them."""
        self._target_runs(target, seed, top)

    def _target(
        self, target: TargetSpec, seed: int, levels: list[int], top: int,
        src_dense: StepRecord, src_levels: list[StepRecord], layers: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """Transfer every level's ticket to ``target``, retrain it, and run each baseline of
        the recipe against it (one registered function per baseline and level; the
        target's own tickets, ``reference`` baselines, are recorded first)."""
        r = self.recipe
        k = r.prune.rewind_step
        listed = [baselines.get(b) for b in r.baselines]
        per_level = [b for b in listed if not b.once and b.reference] + [b for b in listed if not b.once and not b.reference]
        tgt_dense, tgt_levels = self._target_runs(target, seed, top)
        out: list[dict[str, Any]] = []
        name, model = target.name, target.model.label
        for b in listed:
            if b.once:
                rec = b.fn(baselines.Level(self, b, target, seed, 0, None, tgt_dense, tgt_levels))
                if rec is not None:
                    out.append(_record(seed, "target", model, name, 0, b.name, rec))
        for lv in levels:
            src_level = src_levels[lv - 1]
            tr = self.transfer(target, seed, src_level, src_dense)
            # the level's retrains (transferred ticket + baselines) go through one
            # retrain_many, which trains them as a fleet or in parallel where that pays
            requests = [RetrainRequest(target.model, seed, tr, tr, "weights.safetensors",
                                       0 if target.start_at_step_zero else k,
                                       f"retrain transferred {name} level={lv} seed={seed}", dataset=target.dataset)]
            pending = [b.fn(baselines.Level(self, b, target, seed, lv, tr, tgt_dense, tgt_levels)) for b in per_level]
            requests += [q for q in pending if isinstance(q, RetrainRequest)]
            trained = iter(self.retrain_many(requests))
            rt = next(trained)
            rbs = [next(trained) if isinstance(q, RetrainRequest) else q for q in pending]
            out.append(_record(seed, "target", model, name, lv, "transfer", rt))
            entry: dict[str, Any] = {
                "seed": seed, "target": name, "level": lv,
                "source": tr.result["source_layers"], "transfer": tr.result["layers"],
            }
            for b, rb in zip(per_level, rbs):
                if rb is not None:
                    out.append(_record(seed, "target", model, name, lv, b.name, rb))
                    if b.reference:
                        entry[b.name] = rb.result["layers"]
            layers.append(entry)
            if r.heal is not None:  # up-scale the trained ticket, then heal it under its mask
                trained_tr = self.transfer(target, seed, src_level, src_dense, trained=True)
                out.append(_record(seed, "target", model, name, lv, "heal", self.heal(target, seed, lv, trained_tr)))
            if r.analyses:
                self._analyses(target, seed, lv, tr, tgt_levels[lv - 1] if tgt_levels else None, tgt_dense)
        return out

    # ----- analyses (recipe ``analyses:``; results under ``results.json["lmc"]``)

    def _analyses(
        self, target: TargetSpec, seed: int, lv: int, tr: StepRecord, imp: StepRecord | None, tgt_dense: StepRecord | None,
    ) -> None:
        """The recipe's analyses of level ``lv``: linear mode connectivity of the
        transferred ticket and of the target's own IMP ticket (when ``imp`` runs)."""
        r = self.recipe
        if "lmc" not in r.analyses or (r.lmc.levels is not None and lv not in r.lmc.levels):
            return
        k = r.prune.rewind_step
        tickets = []
        if "transfer" in r.lmc.tickets:
            tickets.append(("transfer", tr, tr, "weights.safetensors", 0 if target.start_at_step_zero else k))
        done = {(x["seed"], x["model"], x["level"]) for x in self.lmc_rows if x["method"] == "imp"}
        if ("imp" in r.lmc.tickets and imp is not None and tgt_dense is not None
                and (seed, target.model.label, lv) not in done):  # a second target of one model: measured once
            tickets.append(("imp", imp, tgt_dense, "rewind.safetensors", k))
        for method, mask_step, weights_step, weights_file, start in tickets:
            rec = self.lmc(target.model, seed, mask_step=mask_step, weights_step=weights_step,
                           weights_file=weights_file, start_step=start, ds=target.dataset,
                           label=f"lmc {method} {target.name} level={lv} seed={seed}")
            self.lmc_rows.append({"seed": seed, "target": target.name, "model": target.model.label, "level": lv,
                                  "method": method, "step": rec.id,
                                  **{k_: v for k_, v in rec.result.items() if k_ not in ("wall_s", "device")}})

    def lmc(
        self, spec: ModelSpec, seed: int, *, mask_step: StepRecord, weights_step: StepRecord, weights_file: str,
        start_step: int, label: str, ds: DatasetSpec | None = None,
    ) -> StepRecord:
        """Linear mode connectivity of one ticket (:func:`elastigraph.analyses.linear_mode_connectivity`):
        two trainings from ``weights_step``'s weights under ``mask_step``'s mask with the
        recipe's two data seeds, the interpolation evaluated at ``lmc.points`` points."""
        s = self.recipe.lmc
        settings = {**self._train_settings(spec, seed, ds), "start_step": start_step, "weights_file": weights_file,
                    "points": s.points, "data_seeds": list(s.data_seeds)}

        def fn(d: Path) -> dict[str, Any]:
            from ..analyses import linear_mode_connectivity

            model = self._build(spec, seed, ds)
            model.load_state_dict(load_tensors(weights_step.file(weights_file)))
            mask = _masks.load_mask(mask_step.file("mask.safetensors"))
            data = self.data(ds)
            res = linear_mode_connectivity(model, data.train, data.test, self._config(seed), mask=mask,
                                           start_step=start_step, data_seeds=s.data_seeds, points=s.points)
            if self.writer:
                for tag, st in zip("ab", res.states or ()):
                    save_tensors(d / f"final_{tag}.safetensors", st)
            return {**res.to_dict(), "sparsity": _masks.sparsity(mask)}

        return self.step("lmc", settings, {"mask": mask_step, "weights": weights_step}, fn, collective=True, label=label)


def task_block(task: Task) -> dict[str, Any]:
    """The ``task`` entry of results.json: what reports read the metrics and their
    direction from (``metrics[0]`` is the primary one)."""
    return {"name": task.name, "metrics": [
        {"name": m.name, "key": m.key, "label": m.label, "higher_is_better": m.higher_is_better,
         "scale": m.scale, "unit": m.unit} for m in task.metrics]}


def _splits(task: Task) -> dict[str, str]:
    if task.name == "classification":
        return dict(ACCURACY_SPLITS)
    key = task.primary.key
    return {f"test_{key}": "the corpus's test split (files chosen by hash; never used to choose anything)",
            f"val_{key}": "the corpus's validation split (files chosen by hash), never trained on"}


def copied_tensors(blocks: Any) -> list[str]:
    """Parameter names of the target blocks that are copies: a target block whose source
    block already fed an earlier target block of its stage (the authors' ``permute_copy``
    shuffles the same ones: every target position of a source block after the first).
    ``blocks``: :attr:`elastigraph.transfer.Ticket.blocks` rows or their ``blocks.json`` dicts."""
    seen: set[tuple[int, int]] = set()
    out: list[str] = []
    for row in blocks:
        st, j, i, names = (row["stage"], row["dst_block"], row["src_block"], row["params"]) if isinstance(row, Mapping) else row
        if (st, i) in seen:
            out += list(names)
        seen.add((st, i))
    return out


def _sizes(data: _Data) -> dict[str, int]:
    return {"train": len(data.train), "val": len(data.val) if data.val is not None else 0, "test": len(data.test)}


def _read_json(path: Path) -> Any:
    import json

    return json.loads(Path(path).read_text())


def _num(x: Any) -> float | None:
    """A float for JSON, None for NaN/inf (strict JSON has neither)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _zero_share(state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> float:
    """The share of exactly-zero entries in ``state``'s masked tensors (its real
    sparsity: what a user loading the weights gets)."""
    zeros = sum(int((state[k] == 0).sum()) for k in mask)
    total = sum(int(state[k].numel()) for k in mask)
    return zeros / total if total else 0.0


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
    }


def _record(seed: int, role: str, model: str, name: str, level: int, method: str, rec: StepRecord) -> dict[str, Any]:
    """One row of results.json/CSV (no timings, so reruns compare equal)."""
    res = rec.result
    tests = [k for k in res if k.startswith("test_")]  # the task's metrics, primary first
    primary = tests[0][len("test_"):] if tests else "acc"
    return {
        "seed": seed,
        "role": role,
        "model": model,
        "target": name,
        "level": level,
        "method": method,
        "sparsity": round(float(res["sparsity"]), 6),
        **{k: res[k] for k in tests},
        f"val_{primary}": res.get(f"val_{primary}"),
        **({k: res[k] for k in ("before", "sparsity_before", "sparsity_after") if k in res}),
        "steps": int(res["steps"]),
        "device": res.get("device"),
        "step": rec.id,
    }


def run_recipe(
    recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None,
    cache: str | Path | None = None, wait: bool = False, fleet: str = "auto", workers: int | None = None,
) -> RunSummary:
    """Run ``recipe`` into directory ``out`` (resumable; see :class:`Runner`). ``cache``:
    a step cache folder shared with other runs (default ``out/steps``); ``wait``: queue
    behind another run holding ``out`` instead of failing. ``fleet``: ``"auto"`` (fleets
    on CUDA), ``"on"`` or ``"off"``; ``workers``: parallel worker processes (``None``: one
    per GPU or core when the trainings are long enough to pay for them; ``1``: none)."""
    if not isinstance(recipe, Recipe):
        from ..errors import RecipeError

        raise RecipeError(f"run_recipe needs a Recipe (load_recipe(path_or_dict)), got {type(recipe).__name__}")
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"run_recipe out must be a folder path, got {out!r}")
    if cache is not None and (isinstance(cache, bool) or not isinstance(cache, (str, os.PathLike))):
        raise ConfigError(f"run_recipe cache must be a folder path, got {cache!r}")
    return Runner(copy.deepcopy(recipe), out, log=log, progress=progress, cache=cache, wait=wait,
                  fleet=fleet, workers=workers).run()
