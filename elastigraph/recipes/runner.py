"""Run a recipe: source IMP -> transfer to each target -> retrain, plus baselines at the
same sparsity, for every seed (the protocol of docs/elth.md).

Every stage is a cached step (:mod:`elastigraph.recipes.cache`) named by the hash of
its settings and its inputs' ids, so a rerun -- after a finished run, a crash or a
SIGKILL -- skips what is done and ends with the same results. Under ``torchrun`` every
rank trains (``train()`` does the DDP part), only rank 0 writes files, and the ranks
agree on each step's done/not-done decision before acting on it.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import torch
from torch import nn

from .. import masks as _masks
from ..errors import ConfigError, StrategyError
from .cache import StepCache, StepRecord, load_tensors, save_tensors, step_id, write_json
from .schema import MASK_BASELINES, ModelSpec, Recipe, TargetSpec

RESULTS = "results.json"
STEPS_DIR = "steps"

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


@dataclass
class _Data:
    train: Any
    test: Any

    @property
    def shape(self) -> tuple[int, int]:
        return self.train.spec.in_chans, self.train.spec.num_classes

    @property
    def image_size(self) -> int:
        return self.train.spec.image_size


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

    def __init__(self, recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None):
        self.recipe = recipe
        self.out = Path(out)
        self.cache = StepCache(self.out / STEPS_DIR)
        self.rank, self.world = _world()
        self.log = log if (log is not None and self.rank == 0) else (lambda s: None)
        self.progress = progress
        self.executed = 0
        self.skipped = 0
        self._data: _Data | None = None
        self.lmc_rows: list[dict[str, Any]] = []

    # ----- plumbing

    @property
    def writer(self) -> bool:
        return self.rank == 0

    def data(self) -> _Data:
        if self._data is None:
            ds = self.recipe.dataset
            train = _load_dataset(ds.name, ds.root, "train", ds.train_limit, ds.seed)
            test = _load_dataset(ds.name, ds.root, "test", ds.test_limit, ds.seed)
            self._data = _Data(train, test)
        return self._data

    def _dataset_settings(self) -> dict[str, Any]:
        return self.recipe.dataset.model_dump()

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
        done = self.cache.done(sid)
        if self.world > 1:
            done = _broadcast(done)
        if done:
            self.skipped += 1
            self.log(f"[skip] {sid} {label}")
            return self.cache.load(sid)
        self.log(f"[run ] {sid} {label}")
        t0 = time.perf_counter()
        rec: StepRecord | None = None
        if collective or self.writer:
            d = self.cache.dir(sid)
            if self.writer:
                if d.exists():  # left by a killed run: start the step from a clean folder
                    shutil.rmtree(d)
                d.mkdir(parents=True)
            result = fn(d)
            result = {**result, "wall_s": round(time.perf_counter() - t0, 3)}
            if self.writer:
                rec = self.cache.finish(sid, kind, settings, ids, result)
        if self.world > 1:
            _barrier()
        self.executed += 1
        return rec if rec is not None else self.cache.load(sid)

    def _train(
        self,
        model: nn.Module,
        *,
        seed: int,
        mask: Mapping[str, torch.Tensor] | None,
        start_step: int,
        label: str,
        rewind_step: int | None = None,
    ):
        from ..train import train

        cfg = self._config(seed)
        d = self.data()
        bar = self.progress(label) if self.progress is not None and self.writer else contextlib.nullcontext(None)
        with bar as cb:
            return train(
                model, d.train, d.test, cfg, mask=dict(mask) if mask is not None else None,
                rewind_step=rewind_step, start_step=start_step, progress=cb,
            )

    def _config(self, seed: int):
        """The recipe's :class:`~elastigraph.train.TrainConfig` for ``seed``."""
        from ..train import TrainConfig

        device = {"device": self.recipe.device} if self.recipe.device else {}
        return TrainConfig(**self.recipe.train.settings(), seed=seed, **device)

    def _build(self, spec: ModelSpec, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        in_chans, num_classes = self.data().shape
        return spec.build(in_chans=in_chans, num_classes=num_classes, img_size=self.data().image_size)

    def _train_settings(self, spec: ModelSpec, seed: int) -> dict[str, Any]:
        return {
            "model": spec.label,
            "dataset": self._dataset_settings(),
            "train": self.recipe.train.settings(),
            "seed": seed,
            "device": self.recipe.device,
        }

    # ----- stages

    def dense(self, spec: ModelSpec, seed: int, role: str, name: str) -> StepRecord:
        """Level 0: dense training from the seeded initialisation; keeps the weights at
        the rewind step (``rewind.safetensors``) and the final ones (``final.safetensors``)."""
        k = self.recipe.prune.rewind_step
        settings = {**self._train_settings(spec, seed), "rewind_step": k}

        def fn(d: Path) -> dict[str, Any]:
            from ..train import total_steps

            total = total_steps(self._config(seed), len(self.data().train))
            if k > total:
                raise ConfigError(
                    f"recipe {self.recipe.name!r}: prune.rewind_step={k} lies beyond the {total} training steps; "
                    "lower prune.rewind_step or train longer (train.steps / train.epochs)"
                )
            model = self._build(spec, seed)
            res = self._train(model, seed=seed, mask=None, start_step=0, rewind_step=k, label=f"{role} {name} dense")
            if self.writer:
                save_tensors(d / "rewind.safetensors", res.rewind_state)
                save_tensors(d / "final.safetensors", res.final_state)
            return _train_result(res, sparsity=0.0)

        return self.step("dense", settings, {}, fn, collective=True, label=f"{role} {name} dense seed={seed}")

    def imp_level(
        self, spec: ModelSpec, seed: int, level: int, prev: StepRecord, dense: StepRecord, role: str, name: str
    ) -> StepRecord:
        """IMP level ``level``: prune ``fraction`` of the weights still alive in ``prev``'s
        final weights (global magnitude), rewind the survivors to ``dense``'s rewind
        weights and retrain under the new mask."""
        p = self.recipe.prune
        settings = {**self._train_settings(spec, seed), "level": level, "fraction": p.fraction, "rewind_step": p.rewind_step,
                    **p.prunable()}

        def fn(d: Path) -> dict[str, Any]:
            from .. import prune

            model = self._build(spec, seed)
            model.load_state_dict(load_tensors(prev.file("final.safetensors")))
            prev_mask = _masks.load_mask(prev.file("mask.safetensors")) if level > 1 else None
            mask = prune.magnitude(model, fraction=p.fraction, mask=prev_mask, **p.prunable())
            model.load_state_dict(load_tensors(dense.file("rewind.safetensors")))
            res = self._train(model, seed=seed, mask=mask, start_step=p.rewind_step, label=f"{role} {name} IMP level {level}")
            if self.writer:
                _masks.save_mask(mask, d / "mask.safetensors")
                save_tensors(d / "final.safetensors", res.final_state)
            return {**_train_result(res, sparsity=_masks.sparsity(mask)), "layers": layer_density(mask)}

        return self.step(
            "imp", settings, {"prev": prev, "dense": dense}, fn, collective=True,
            label=f"{role} {name} IMP level={level} seed={seed}",
        )

    def imp_levels(self, spec: ModelSpec, seed: int, upto: int, role: str, name: str) -> tuple[StepRecord, list[StepRecord]]:
        """The dense run and IMP levels 1..``upto`` of ``spec`` (index ``i`` = level ``i+1``)."""
        dense = self.dense(spec, seed, role, name)
        levels: list[StepRecord] = []
        prev = dense
        for level in range(1, upto + 1):
            prev = self.imp_level(spec, seed, level, prev, dense, role, name)
            levels.append(prev)
        return dense, levels

    def transfer(self, target: TargetSpec, seed: int, level: StepRecord, src_dense: StepRecord) -> StepRecord:
        """Move the source's level mask and its rewind weights onto ``target``."""
        settings = {
            "source": self.recipe.source.label, "target": target.model.label,
            "strategy": target.strategy, "mapping": target.mapping, "seed": seed,
            "dataset": self._dataset_settings(),
        }
        if target.start_at_step_zero:  # only when set: older runs keep their step ids
            settings["start_at_step_zero"] = True

        def fn(d: Path) -> dict[str, Any]:
            from ..transfer import transfer

            src = self._build(self.recipe.source, seed)  # the seeded init = the dense run's step 0
            if not target.start_at_step_zero:
                src.load_state_dict(load_tensors(src_dense.file("rewind.safetensors")))
            src_mask = _masks.load_mask(level.file("mask.safetensors"))
            dst = self._build(target.model, seed)
            x = self.data().train.x
            ticket = transfer(src, src_mask, dst, strategy=target.strategy, mapping=target.mapping,
                              example_input=(2, *x.shape[1:]))
            _masks.save_mask(ticket.mask, d / "mask.safetensors")
            save_tensors(d / "weights.safetensors", ticket.weights)
            write_json(d / "plan.json", ticket.plan.to_dict())
            return {
                "sparsity": _masks.sparsity(ticket.mask),
                "source_sparsity": _masks.sparsity(src_mask),
                "mapping": ticket.plan.mapping_string(),
                "layers": layer_density(ticket.mask),
                "source_layers": layer_density(src_mask),
            }

        return self.step(
            "transfer", settings, {"mask": level, "weights": src_dense}, fn,
            label=f"{self.recipe.source_name} -> {target.name} seed={seed}",
        )

    def mask_baseline(self, method: str, target: TargetSpec, seed: int, sparsity: float, weights: StepRecord | None) -> StepRecord:
        """A ``method`` mask (random/snip/grasp/synflow) for ``target`` at ``sparsity``,
        scored on the target's rewind weights (``weights``) or its initialisation."""
        bs = self.recipe.baseline_settings
        settings = {
            "method": method, "target": target.model.label, "seed": seed, "sparsity": round(sparsity, 10),
            "batches": bs.batches if method in ("snip", "grasp") else None,
            "iterations": bs.synflow_iterations if method == "synflow" else None,
            "dataset": self._dataset_settings() if method in ("snip", "grasp") else None,
            "batch_size": self.recipe.train.batch_size if method in ("snip", "grasp") else None,
            **self.recipe.prune.prunable(),
        }

        def fn(d: Path) -> dict[str, Any]:
            model = self._build(target.model, seed)
            if weights is not None:
                model.load_state_dict(load_tensors(weights.file("rewind.safetensors")))
            mask = self._score_mask(method, model, sparsity, seed)
            _masks.save_mask(mask, d / "mask.safetensors")
            return {"sparsity": _masks.sparsity(mask), "layers": layer_density(mask)}

        return self.step("mask", settings, {"weights": weights}, fn, label=f"{method} {target.name} seed={seed}")

    def _score_mask(self, method: str, model: nn.Module, sparsity: float, seed: int) -> dict[str, torch.Tensor]:
        from .. import prune

        torch.manual_seed(seed)
        bs = self.recipe.baseline_settings
        kw = self.recipe.prune.prunable()  # the same tensors as the IMP tickets
        if method == "random":
            return prune.random(model, sparsity, seed=seed, **kw)
        if method == "synflow":
            d = self.data()
            x = d.train.x[:1]
            return prune.synflow(model, sparsity, iterations=bs.synflow_iterations, input_shape=tuple(x.shape[1:]), **kw)
        batches = normalized_batches(self.data().train, bs.batches, self.recipe.train.batch_size or 128, seed)
        if method == "snip":
            return prune.snip(model, batches, sparsity, **kw)
        if method == "grasp":
            return prune.grasp(model, batches, sparsity, **kw)
        raise StrategyError(f"unknown baseline {method!r}; known: {list(MASK_BASELINES)}")

    def retrain(
        self, spec: ModelSpec, seed: int, *, mask_step: StepRecord, weights_step: StepRecord | None,
        weights_file: str, start_step: int, label: str,
    ) -> StepRecord:
        """Train ``spec`` under ``mask_step``'s mask from ``weights_step``'s weights (or
        the seeded initialisation when ``None``), the LR schedule resumed at ``start_step``."""
        settings = {**self._train_settings(spec, seed), "start_step": start_step, "weights_file": weights_file}

        def fn(d: Path) -> dict[str, Any]:
            model = self._build(spec, seed)
            if weights_step is not None:
                model.load_state_dict(load_tensors(weights_step.file(weights_file)))
            mask = _masks.load_mask(mask_step.file("mask.safetensors"))
            res = self._train(model, seed=seed, mask=mask, start_step=start_step, label=label)
            if self.writer:
                save_tensors(d / "final.safetensors", res.final_state)
            return _train_result(res, sparsity=_masks.sparsity(mask))

        return self.step(
            "retrain", settings, {"mask": mask_step, "weights": weights_step}, fn, collective=True, label=label,
        )

    # ----- the protocol

    def run(self) -> RunSummary:
        """Run every seed of the recipe; write ``results.json``, CSV and plots (rank 0)."""
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
        for seed in r.seeds:
            src_dense, src_levels = self.imp_levels(r.source, seed, p.rounds, "source", r.source_name)
            for lv, rec in [(0, src_dense)] + list(enumerate(src_levels, 1)):
                records.append(_record(seed, "source", r.source.label, r.source_name, lv, "imp" if lv else "dense", rec))
            for target in r.targets:
                records += self._target(target, seed, levels, top, src_dense, src_levels, layers)
        summary = RunSummary(self.out, self.executed, self.skipped, records)
        if self.writer:
            results = {
                "recipe": r.name,
                "source": r.source_name,
                "targets": [t.name for t in r.targets],
                "seeds": r.seeds,
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

    def _target(
        self, target: TargetSpec, seed: int, levels: list[int], top: int,
        src_dense: StepRecord, src_levels: list[StepRecord], layers: list[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        r = self.recipe
        k = r.prune.rewind_step
        base = set(r.baselines)
        need_dense = bool(base & {"dense", "imp"}) or (bool(base & set(MASK_BASELINES)) and r.baseline_settings.weights == "rewind")
        tgt_dense, tgt_levels = None, []
        if "imp" in base:
            tgt_dense, tgt_levels = self.imp_levels(target.model, seed, top, "target", target.name)
        elif need_dense:
            tgt_dense = self.dense(target.model, seed, "target", target.name)
        out: list[dict[str, Any]] = []
        name = target.name
        if "dense" in base and tgt_dense is not None:
            out.append(_record(seed, "target", target.model.label, name, 0, "dense", tgt_dense))
        for lv in levels:
            src_level = src_levels[lv - 1]
            tr = self.transfer(target, seed, src_level, src_dense)
            rt = self.retrain(
                target.model, seed, mask_step=tr, weights_step=tr, weights_file="weights.safetensors",
                start_step=0 if target.start_at_step_zero else k,
                label=f"retrain transferred {name} level={lv} seed={seed}",
            )
            out.append(_record(seed, "target", target.model.label, name, lv, "transfer", rt))
            entry: dict[str, Any] = {
                "seed": seed, "target": name, "level": lv,
                "source": tr.result["source_layers"], "transfer": tr.result["layers"],
            }
            if "imp" in base:
                imp = tgt_levels[lv - 1]
                out.append(_record(seed, "target", target.model.label, name, lv, "imp", imp))
                entry["imp"] = imp.result["layers"]
            for method in [b for b in r.baselines if b in MASK_BASELINES]:
                use_rewind = r.baseline_settings.weights == "rewind"
                mb = self.mask_baseline(method, target, seed, tr.result["sparsity"], tgt_dense if use_rewind else None)
                rb = self.retrain(
                    target.model, seed, mask_step=mb, weights_step=tgt_dense if use_rewind else None,
                    weights_file="rewind.safetensors", start_step=k if use_rewind else 0,
                    label=f"retrain {method} {name} level={lv} seed={seed}",
                )
                out.append(_record(seed, "target", target.model.label, name, lv, method, rb))
            layers.append(entry)
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
                           weights_file=weights_file, start_step=start,
                           label=f"lmc {method} {target.name} level={lv} seed={seed}")
            self.lmc_rows.append({"seed": seed, "target": target.name, "model": target.model.label, "level": lv,
                                  "method": method, "step": rec.id,
                                  **{k_: v for k_, v in rec.result.items() if k_ not in ("wall_s", "device")}})

    def lmc(
        self, spec: ModelSpec, seed: int, *, mask_step: StepRecord, weights_step: StepRecord, weights_file: str,
        start_step: int, label: str,
    ) -> StepRecord:
        """Linear mode connectivity of one ticket (:func:`elastigraph.analyses.linear_mode_connectivity`):
        two trainings from ``weights_step``'s weights under ``mask_step``'s mask with the
        recipe's two data seeds, the interpolation evaluated at ``lmc.points`` points."""
        s = self.recipe.lmc
        settings = {**self._train_settings(spec, seed), "start_step": start_step, "weights_file": weights_file,
                    "points": s.points, "data_seeds": list(s.data_seeds)}

        def fn(d: Path) -> dict[str, Any]:
            from ..analyses import linear_mode_connectivity

            model = self._build(spec, seed)
            model.load_state_dict(load_tensors(weights_step.file(weights_file)))
            mask = _masks.load_mask(mask_step.file("mask.safetensors"))
            data = self.data()
            res = linear_mode_connectivity(model, data.train, data.test, self._config(seed), mask=mask,
                                           start_step=start_step, data_seeds=s.data_seeds, points=s.points)
            if self.writer:
                for tag, st in zip("ab", res.states or ()):
                    save_tensors(d / f"final_{tag}.safetensors", st)
            return {**res.to_dict(), "sparsity": _masks.sparsity(mask)}

        return self.step("lmc", settings, {"mask": mask_step, "weights": weights_step}, fn, collective=True, label=label)


def _num(x: Any) -> float | None:
    """A float for JSON, None for NaN/inf (strict JSON has neither)."""
    return float(x) if x is not None and math.isfinite(float(x)) else None


def _train_result(res: Any, *, sparsity: float) -> dict[str, Any]:
    return {
        "test_acc": _num(res.test_acc),
        "test_loss": _num(res.test_loss),
        "steps": int(res.steps),
        "sparsity": float(sparsity),
        "images_per_s": _num(res.images_per_s),
        "device": str(res.device),
    }


def _record(seed: int, role: str, model: str, name: str, level: int, method: str, rec: StepRecord) -> dict[str, Any]:
    """One row of results.json/CSV (no timings, so reruns compare equal)."""
    res = rec.result
    return {
        "seed": seed,
        "role": role,
        "model": model,
        "target": name,
        "level": level,
        "method": method,
        "sparsity": round(float(res["sparsity"]), 6),
        "test_acc": res["test_acc"],
        "test_loss": res["test_loss"],
        "steps": int(res["steps"]),
        "step": rec.id,
    }


def run_recipe(
    recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None
) -> RunSummary:
    """Run ``recipe`` into directory ``out`` (resumable; see :class:`Runner`)."""
    return Runner(copy.deepcopy(recipe), out, log=log, progress=progress).run()
