"""The E-LTH protocol (docs/elth.md): source IMP -> transfer to each target -> retrain,
plus the recipe's baselines at the same sparsity, for every seed.

Every stage is a cached step (:mod:`elastigraph.recipes.execution`: named by the hash of
its settings and its inputs' ids, computed under its lock, agreed on by every rank under
``torchrun``), so a rerun -- after a finished run, a crash or a SIGKILL -- skips what is
done and ends with the same results. The baselines are registered functions
(:mod:`elastigraph.recipes.baselines`); the retrain steps of one level (the transferred
ticket and its baselines) go through one :meth:`Execution.retrain_many`, which trains them
as one fleet or side by side on the executor where that pays (docs/benchmarks.md); with
several seeds, whole seeds run side by side (in local worker processes, or as threads of
the driver whose steps are Ray tasks). A step's id never depends on how it ran.
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .. import masks as _masks
from ..errors import ConfigError, DivergedError, SegmentMismatchError, StrategyError
from ..transfer import parse_strategy
from ..train.tasks import get_task
from . import baselines
from .baselines import copied_tensors
from .cache import StepRecord, load_tensors, save_tensors, write_json
from .execution import (  # noqa: F401 -- the public names stay importable from here
    FLEET_MODES,
    STEPS_DIR,
    Execution,
    Log,
    ProgressFactory,
    RetrainRequest,
    StepDiverged,
    _Data,
    _ensure_process_group,
    _load_dataset,
    _num,
    _train_result,
    derived_seed,
    diverged,
    layer_density,
    normalized_batches,
    split_validation,
)
from .results import ACCURACY_SPLITS, RESULTS, Record, Results, TaskInfo, environment  # noqa: F401
from .schema import DatasetSpec, ModelSpec, Recipe, TargetSpec

LOCK_FILE = ".lock"
INFLUENCE_BATCHES = 2
"""Batches of the validation split the ``influence`` squeeze scores blocks on."""

# --------------------------------------------------------------------------- runner


@dataclass
class RunSummary:
    """What a run did: where it wrote, how many steps ran or came from the cache, and the
    flat result records (also in ``results.json``); ``diverged``: one line per training
    step that diverged or step skipped because an input diverged."""

    out: Path
    executed: int
    skipped: int
    records: list[dict[str, Any]] = field(default_factory=list)
    results_path: Path | None = None
    diverged: list[str] = field(default_factory=list)


class Stages(Execution):
    """The protocol's steps, each one cached step: a dense run, IMP levels, the transfer
    of a level's ticket, healing, the sparsity-matched IMP ticket and linear mode
    connectivity. :class:`Runner` schedules them."""

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
                if res.rewind_state is not None:  # None: diverged before the rewind step
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
            if diverged(prev):  # the next level prunes prev's NaN weights: the chain stops here
                self.log(f"[skip] {role} {name} IMP levels {level}..{upto} seed={seed}: level {level - 1} diverged")
                break
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
            strategy, mapping = target.strategy, target.mapping
            if mapping is None and parse_strategy(strategy)[1] == "influence":
                strategy, mapping = None, self._influence_mapping(target, seed, level, src_mask, dst)
            try:
                ticket = transfer(src, src_mask, dst, strategy=strategy, mapping=mapping,
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

    def _influence_mapping(self, target: TargetSpec, seed: int, level: StepRecord, src_mask: Any,
                           dst: Any) -> str:
        """The ``influence`` squeeze of a recipe: block influence scored on the source's
        *trained* weights at this level (what the layer-pruning literature scores), on
        :data:`INFLUENCE_BATCHES` batches of the validation split (the training split when
        there is none), as the mapping every ticket of this transfer uses."""
        from ..influence import influence_mapping

        src = self._build(self.recipe.source, seed)
        src.load_state_dict(load_tensors(level.file("final.safetensors")))
        data = self.data()
        split = data.val if data.val is not None else data.train
        batches = normalized_batches(split, INFLUENCE_BATCHES, self.recipe.train.batch_size or 128, seed)
        x = data.train.x
        try:
            return influence_mapping(src, dst, batches, example_input=(2, *x.shape[1:]))
        except StrategyError as e:
            raise StrategyError(f"target {target.name!r}: {e}") from None

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


class Runner(Stages):
    """Executes one validated :class:`Recipe` into ``out`` (see module docstring)."""

    def __init__(self, recipe: Recipe, out: str | Path, **kw: Any):
        super().__init__(recipe, out, **kw)
        self.lmc_rows: list[dict[str, Any]] = []

    def _fork(self) -> "Runner":
        twin = super()._fork()
        twin.lmc_rows = []  # a piece's rows are collected again when the caller replays it
        return twin

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
        records: list[Record] = []
        layers: list[dict[str, Any]] = []
        if self.writer:
            self.out.mkdir(parents=True, exist_ok=True)
            write_json(self.out / "recipe.json", r.model_dump(mode="json"))
        self.executor.start(self)
        step_threads = torch.get_num_threads()  # what every step of this run trains with
        try:
            if self.executor.parallel and len(r.seeds) > 1:  # whole seeds beside each other
                jobs = [self._submit("_run_seed", seed=seed, levels=levels, top=top, layers=[]) for seed in r.seeds]
                for j in jobs:
                    self.executed += j.result()
            for seed in r.seeds:
                records += self._run_seed(seed, levels, top, layers)
        finally:
            self.executor.stop()
        summary = RunSummary(self.out, self.executed, self.skipped, [x.to_dict() for x in records])
        if self.writer:
            task = TaskInfo.of(self.task)
            env = {**environment(), "threads": step_threads, "devices": sorted({str(x.device) for x in records if x.device})}
            splits = {**task.splits(), "sizes": _sizes(self.data())}
            if any(t.dataset is not None for t in r.targets):
                splits["target_sizes"] = {t.name: {"dataset": t.dataset.name, **_sizes(self.data(t.dataset))}
                                          for t in r.targets if t.dataset is not None}
            results = Results(r.name, r.source_name, [t.name for t in r.targets], r.seeds, env, task, splits, records,
                              layers, self.lmc_rows if r.analyses else None,
                              r.hypotheses.model_dump() if r.hypotheses is not None else None)
            write_json(self.out / RESULTS, results.to_dict())
            summary.results_path = self.out / RESULTS
            from ..report import write_report

            write_report(self.out)
            if self.lmc_rows:
                from ..analyses import plot_lmc, write_lmc_csv

                write_lmc_csv(self.lmc_rows, self.out / "lmc.csv")
                plot_lmc(self.lmc_rows, self.out / "lmc.png")
        self._check_divergence(summary)
        return summary

    def _check_divergence(self, summary: RunSummary) -> None:
        """Diverged trainings (and the work skipped because of them) end the run with a
        :class:`DivergedError` -- after results and report are written -- unless the
        recipe says ``expect_divergence: true``; then they are one log line."""
        runs = [f"{x['role']} {x['target']} {x['method']} level={x['level']} seed={x['seed']} at step "
                f"{(x.get('diverged_at') or 0) + 1}" for x in summary.records if x.get("diverged")]
        runs += [f"lmc {x['method']} {x['target']} level={x['level']} seed={x['seed']}"
                 for x in self.lmc_rows if x.get("diverged")]
        summary.diverged = runs + list(dict.fromkeys(self.diverged_skips))
        if not summary.diverged:
            return
        skipped = len(summary.diverged) - len(runs)
        msg = (f"{len(runs)} training(s) of recipe {self.recipe.name!r} diverged (loss NaN/inf): {'; '.join(runs[:3])}"
               f"{' ...' if len(runs) > 3 else ''}; {skipped} dependent piece(s) of work skipped. "
               f"{'results.json and the report in ' + repr(str(self.out)) + ' show them as diverged. ' if self.writer else ''}")
        if self.recipe.expect_divergence:
            self.log(f"[note] {msg}(expected: the recipe sets expect_divergence: true)")
            return
        err = DivergedError(msg + "Lower the learning rate (or gamma, warm-up), or set expect_divergence: true in "
                                  "the recipe if divergence is an expected outcome")
        err.summary = summary
        raise err

    def _run_seed(self, seed: int, levels: list[int], top: int, layers: list[dict[str, Any]]) -> list[Record]:
        """The protocol for one seed: the source's IMP, then every target."""
        r = self.recipe
        chains = []
        if self.executor.parallel:  # the targets' own IMP/dense runs need no source: start them now
            seen = set()
            for i, t in enumerate(r.targets):
                if t.model.label not in seen:
                    seen.add(t.model.label)
                    chains.append(self._submit("_target_chain", target=t, seed=seed, top=top))
        src_dense, src_levels = self.imp_levels(r.source, seed, r.prune.rounds, "source", r.source_name)
        if self.executor.parallel and len(r.targets) > 1:  # every target's transfers and retrains side by side
            chains += [self._submit("_target", target=t, seed=seed, levels=levels, top=top, src_dense=src_dense,
                                    src_levels=src_levels, layers=[]) for t in r.targets]
        for c in chains:  # then replayed in order below: their steps come from the cache
            self.executed += c.result()
        records = []
        for lv, rec in [(0, src_dense)] + list(enumerate(src_levels, 1)):
            records.append(Record.of(seed, "source", r.source.label, r.source_name, lv, "imp" if lv else "dense", rec))
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
    ) -> list[Record]:
        """Transfer every level's ticket to ``target``, retrain it, and run each baseline of
        the recipe against it (one registered function per baseline and level; the
        target's own tickets, ``reference`` baselines, are recorded first)."""
        listed = [baselines.get(b) for b in self.recipe.baselines]
        per_level = self._per_level()
        tgt_dense, tgt_levels = self._target_runs(target, seed, top)
        out: list[Record] = []
        name, model = target.name, target.model.label
        if self.executor.parallel and len(levels) > 1:  # the levels side by side, then replayed below
            pieces = [self._submit("_level_piece", target=target, seed=seed, lv=lv, src_dense=src_dense,
                                   src_levels=src_levels, tgt_dense=tgt_dense, tgt_levels=tgt_levels) for lv in levels]
            for p in pieces:
                self.executed += p.result()
        for b in listed:
            if b.once:
                rec = b.fn(baselines.Level(self, b, target, seed, 0, None, tgt_dense, tgt_levels))
                if rec is not None:
                    out.append(Record.of(seed, "target", model, name, 0, b.name, rec))
        for lv in levels:
            try:
                out += self._target_level(target, seed, lv, src_dense, src_levels, tgt_dense, tgt_levels, layers,
                                          per_level)
            except StepDiverged as e:
                self._skipped_diverged(f"{name} level={lv} seed={seed}: {e}")
        return out

    def _per_level(self) -> list:
        """The recipe's baselines that run at every level, the ``reference`` ones first."""
        listed = [baselines.get(b) for b in self.recipe.baselines]
        return [b for b in listed if not b.once and b.reference] + [b for b in listed if not b.once and not b.reference]

    def _level_piece(self, target: TargetSpec, seed: int, lv: int, src_dense: StepRecord, src_levels: list[StepRecord],
                     tgt_dense: StepRecord | None, tgt_levels: list[StepRecord]) -> None:
        """Level ``lv`` of :meth:`_target` run beside the others (its steps land in the cache;
        the caller replays it for the records)."""
        try:
            self._target_level(target, seed, lv, src_dense, src_levels, tgt_dense, tgt_levels, [], self._per_level())
        except StepDiverged:
            pass  # the replay logs it

    def _target_level(
        self, target: TargetSpec, seed: int, lv: int, src_dense: StepRecord, src_levels: list[StepRecord],
        tgt_dense: StepRecord | None, tgt_levels: list[StepRecord], layers: list[dict[str, Any]], per_level: list,
    ) -> list[Record]:
        """Level ``lv`` of :meth:`_target`: the transfer, its retrain, every baseline, healing
        and the analyses. A training it needs that diverged skips what depends on it."""
        r = self.recipe
        k = r.prune.rewind_step
        name, model = target.name, target.model.label
        out: list[Record] = []
        if lv > len(src_levels):
            raise StepDiverged(f"the source's IMP chain stopped before level {lv} (a level diverged)")
        src_level = src_levels[lv - 1]
        tr = self.transfer(target, seed, src_level, src_dense)
        # the level's retrains (transferred ticket + baselines) go through one
        # retrain_many, which trains them as a fleet or in parallel where that pays
        requests = [RetrainRequest(target.model, seed, tr, tr, "weights.safetensors",
                                   0 if target.start_at_step_zero else k,
                                   f"retrain transferred {name} level={lv} seed={seed}", dataset=target.dataset)]
        if self.executor.parallel and len(per_level) > 1:  # the baselines' masks side by side, replayed below
            pieces = [self._submit("_baseline_piece", name=b.name, target=target, seed=seed, lv=lv, tr=tr,
                                   tgt_dense=tgt_dense, tgt_levels=tgt_levels) for b in per_level]
            for p in pieces:
                self.executed += p.result()
        pending = [self._baseline_or_skip(b, target, seed, lv, tr, tgt_dense, tgt_levels) for b in per_level]
        requests += [q for q in pending if isinstance(q, RetrainRequest)]
        trained = iter(self.retrain_many(requests))
        rt = next(trained)
        rbs = [next(trained) if isinstance(q, RetrainRequest) else q for q in pending]
        out.append(Record.of(seed, "target", model, name, lv, "transfer", rt))
        entry: dict[str, Any] = {
            "seed": seed, "target": name, "level": lv,
            "source": tr.result["source_layers"], "transfer": tr.result["layers"],
        }
        if tr.result.get("mapping"):  # which source block fed which target block ("0:0;3:1")
            entry["mapping"] = tr.result["mapping"]
        for b, rb in zip(per_level, rbs):
            if rb is not None:
                out.append(Record.of(seed, "target", model, name, lv, b.name, rb))
                if b.reference and "layers" in rb.result:
                    entry[b.name] = rb.result["layers"]
        layers.append(entry)
        if r.heal is not None:  # up-scale the trained ticket, then heal it under its mask
            trained_tr = self.transfer(target, seed, src_level, src_dense, trained=True)
            out.append(Record.of(seed, "target", model, name, lv, "heal", self.heal(target, seed, lv, trained_tr)))
        if r.analyses:
            self._analyses(target, seed, lv, tr, tgt_levels[lv - 1] if lv <= len(tgt_levels) else None, tgt_dense)
        return out

    def _baseline_piece(self, name: str, target: TargetSpec, seed: int, lv: int, tr: StepRecord,
                        tgt_dense: StepRecord | None, tgt_levels: list[StepRecord]) -> None:
        """Baseline ``name``'s steps before its retrain (its mask; the sparsity-matched IMP
        ticket) beside the level's other baselines; the caller replays it."""
        self._baseline_or_skip(baselines.get(name), target, seed, lv, tr, tgt_dense, tgt_levels)

    def _baseline_or_skip(self, b: Any, target: TargetSpec, seed: int, lv: int, tr: StepRecord,
                          tgt_dense: StepRecord | None, tgt_levels: list[StepRecord]) -> "RetrainRequest | StepRecord | None":
        """Baseline ``b``'s request or step, or ``None`` (logged) when it needs a training
        that diverged."""
        what = f"{b.name} {target.name} level={lv} seed={seed}"
        try:
            q = b.fn(baselines.Level(self, b, target, seed, lv, tr, tgt_dense, tgt_levels))
        except (StepDiverged, IndexError) as e:  # IndexError: the target's IMP chain stopped early
            self._skipped_diverged(f"{what}: {e if isinstance(e, StepDiverged) else 'its IMP chain diverged'}")
            return None
        if isinstance(q, RetrainRequest) and (diverged(q.mask_step) or diverged(q.weights_step)):
            self._skipped_diverged(f"{what}: needs a training that diverged")
            return None
        return q

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


def _sizes(data: _Data) -> dict[str, int]:
    return {"train": len(data.train), "val": len(data.val) if data.val is not None else 0, "test": len(data.test)}


def _zero_share(state: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> float:
    """The share of exactly-zero entries in ``state``'s masked tensors (its real
    sparsity: what a user loading the weights gets)."""
    zeros = sum(int((state[k] == 0).sum()) for k in mask)
    total = sum(int(state[k].numel()) for k in mask)
    return zeros / total if total else 0.0


def run_recipe(
    recipe: Recipe, out: str | Path, *, log: Log | None = None, progress: ProgressFactory | None = None,
    cache: str | Path | None = None, wait: bool = False, fleet: str = "auto", workers: int | None = None,
    executor: str | Any = "local", address: str | None = None, max_retries: int | None = None,
) -> RunSummary:
    """Run ``recipe`` into directory ``out`` (resumable; see :class:`Runner`). ``cache``:
    a step cache folder shared with other runs (default ``out/steps``); ``wait``: queue
    behind another run holding ``out`` instead of failing. ``fleet``: ``"auto"`` (fleets
    on CUDA), ``"on"`` or ``"off"``; ``workers``: parallel worker processes (``None``: one
    per GPU or core when the trainings are long enough to pay for them; ``1``: none).
    ``executor``: ``"local"`` (this machine: this process and the ``workers``) or ``"ray"``
    (every step a task on the Ray cluster at ``address``: ``"auto"``, the cluster ``ray
    start`` made on this machine; default, a Ray already initialised in this process, else
    ``ray.init()``'s own choice), a failed task retried ``max_retries`` times (default 2), or an
    :class:`~elastigraph.recipes.executors.Executor`. The records are the same whichever
    runs the steps (with the same torch thread count and device)."""
    if not isinstance(recipe, Recipe):
        from ..errors import RecipeError

        raise RecipeError(f"run_recipe needs a Recipe (load_recipe(path_or_dict)), got {type(recipe).__name__}")
    if isinstance(out, bool) or not isinstance(out, (str, os.PathLike)):
        raise ConfigError(f"run_recipe out must be a folder path, got {out!r}")
    if cache is not None and (isinstance(cache, bool) or not isinstance(cache, (str, os.PathLike))):
        raise ConfigError(f"run_recipe cache must be a folder path, got {cache!r}")
    return Runner(copy.deepcopy(recipe), out, log=log, progress=progress, cache=cache, wait=wait,
                  fleet=fleet, workers=workers, executor=executor, address=address, max_retries=max_retries).run()
