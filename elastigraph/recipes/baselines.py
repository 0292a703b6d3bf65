"""The baselines of the E-LTH protocol: a registry in which each baseline is one small
function (as open_lth's ``lottery/branch/*``), found by the name a recipe lists.

A baseline function gets a :class:`Level` (one transferred level of one target and seed:
the transferred ticket, the target's own dense/IMP runs when the baseline asked for them)
and returns what is trained against the transferred ticket: a
:class:`~elastigraph.recipes.execution.RetrainRequest` (the runner trains it with the
level's other retrains, as one fleet or in parallel), an already trained
:class:`~elastigraph.recipes.cache.StepRecord`, or ``None`` where the baseline does not
apply (``permuted`` without copied blocks). What it needs is declared where it is
registered, so the runner schedules the target's dense/IMP runs from the registry and the
recipe schema accepts exactly the registered names::

    @register("magnitude", needs=("rewind",), prune_method="magnitude")
    def magnitude(lv: Level) -> RetrainRequest:
        \"\"\"One-shot global magnitude pruning of the target's rewind-point weights.\"\"\"
        return lv.scored(lambda s: prune.magnitude(s.model, sparsity=s.sparsity, **s.prunable))

Adding a baseline is one such function (and its test); docs/elth.md describes each one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping

import torch

from .. import masks as _masks
from ..errors import StrategyError
from .cache import StepRecord, load_tensors
from .execution import RetrainRequest, derived_seed, layer_density, normalized_batches

if TYPE_CHECKING:  # the runner imports this module; these are for annotations only
    from torch import nn

    from .runner import Runner
    from .schema import BaselineSettings, TargetSpec

NEEDS = ("imp", "dense", "rewind")
"""What a baseline may ask the protocol to prepare for it: ``imp``, the target's own IMP
levels (and its dense run); ``dense``, the target's dense run; ``rewind``, the target's
rewind-point weights (its dense run) when ``baseline_settings.weights`` is ``rewind``."""


@dataclass(frozen=True)
class Baseline:
    """One registered baseline: its function and what the protocol must know about it."""

    name: str
    fn: Callable[["Level"], "RetrainRequest | StepRecord | None"]
    needs: frozenset[str] = frozenset()
    data_based: bool = False
    """Scores on training batches (SNIP, GraSP): the batches, dataset and batch size key its mask step."""
    threads: bool = False
    """Its mask is computed in floating point (CPU results depend on the thread count, which keys the step)."""
    once: bool = False
    """One record per target and seed at level 0 (``dense``), not one per transferred level."""
    reference: bool = False
    """The target's own ticket (``imp``): recorded right after the transferred ticket, its
    per-layer density beside the transferred ticket's in the layer plot."""
    stretch_only: bool = False
    """Applies to a stretch only (a squeeze copies no block); ``None`` from the function otherwise."""
    not_for_text: str | None = None
    """Why it does not apply to a language model (None: it does); the recipe check reports it."""
    prune_method: str | None = None
    """The :func:`elastigraph.prune.by_name` method it scores with (checked when a recipe is validated)."""
    step_settings: Callable[["BaselineSettings"], dict[str, Any]] | None = None
    """Extra settings of its mask step (what else changes the mask: SynFlow's iterations)."""

    @property
    def doc(self) -> str:
        """The first line of the function's docstring (for listings)."""
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


_REGISTRY: dict[str, Baseline] = {}


def register(
    name: str, *, needs: Iterable[str] = (), data_based: bool = False, threads: bool = False, once: bool = False,
    reference: bool = False, stretch_only: bool = False, not_for_text: str | None = None,
    prune_method: str | None = None, step_settings: Callable[["BaselineSettings"], dict[str, Any]] | None = None,
) -> Callable[[Callable], Callable]:
    """Register the decorated function as the baseline ``name`` (see the module docstring)."""
    bad = sorted(set(needs) - set(NEEDS))
    if bad:
        raise StrategyError(f"baseline {name!r}: needs {bad} are not among {list(NEEDS)}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise StrategyError(f"baseline {name!r} is registered already (by {_REGISTRY[name].fn.__qualname__}); "
                                "choose another name or unregister() it first")
        _REGISTRY[name] = Baseline(name, fn, frozenset(needs), data_based, threads, once, reference, stretch_only,
                                   not_for_text, prune_method, step_settings)
        return fn

    return deco


def unregister(name: str) -> None:
    """Remove the baseline ``name`` (a test's toy baseline)."""
    get(name)
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """Every registered baseline name, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> Baseline:
    """The baseline called ``name``; :class:`StrategyError` naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise StrategyError(f"unknown baseline {name!r}; known: {list(_REGISTRY)}") from None


def prepared(listed: Iterable[str], settings: "BaselineSettings") -> set[str]:
    """Which of the target's own runs the baselines ``listed`` need: ``{"imp"}`` (its IMP
    levels, the dense run included), ``{"dense"}`` or nothing."""
    needs: set[str] = set()
    for name in listed:
        needs |= get(name).needs
    if "rewind" in needs and settings.weights == "rewind":
        needs.add("dense")
    return {"imp"} if "imp" in needs else needs & {"dense"}


# --------------------------------------------------------------------------- what a baseline gets


@dataclass
class Scoring:
    """What a mask-scoring baseline scores: the target built with its rewind-point weights
    (or its initialisation), the global sparsity to reach, the prunable-set switches of
    the IMP tickets, and (lazily) the training batches and input shape."""

    model: "nn.Module"
    sparsity: float
    seed: int
    prunable: dict[str, Any]
    settings: "BaselineSettings"
    _batches: Callable[[], list[tuple[torch.Tensor, torch.Tensor]]]
    _input_shape: Callable[[], tuple[int, ...]]
    _loss: Callable[[], dict[str, Any]]

    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``baseline_settings.batches`` training batches, normalised as training sees them."""
        return self._batches()

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape (no batch dimension)."""
        return self._input_shape()

    @property
    def loss(self) -> dict[str, Any]:
        """``{"loss_fn": the task's loss}`` outside classification (SNIP/GraSP score with it)."""
        return self._loss()


@dataclass
class Level:
    """One transferred level of one target and seed, as a baseline function sees it."""

    runner: "Runner"
    baseline: Baseline
    target: "TargetSpec"
    seed: int
    level: int
    ticket: StepRecord | None
    """The transfer step (``mask.safetensors``, ``weights.safetensors``); None for ``once`` baselines."""
    dense: StepRecord | None
    """The target's dense run (rewind and final weights) when the recipe's baselines need it."""
    imp: list[StepRecord] = field(default_factory=list)
    """The target's own IMP levels 1..top when a baseline needs ``imp`` (index ``i`` = level ``i+1``)."""

    @property
    def label(self) -> str:
        return f"retrain {self.baseline.name} {self.target.name} level={self.level} seed={self.seed}"

    def retrain(self, mask: StepRecord, *, weights: str, init_seed: int | None = None) -> "RetrainRequest":
        """Train the target under ``mask``'s mask from ``weights``: ``"ticket"`` (the
        transferred weights, trained exactly as the ticket is), ``"baseline"`` (the
        target's rewind-point weights or its initialisation, per ``baseline_settings.weights``)
        or ``"init"`` (a fresh initialisation drawn with ``init_seed``, from step 0)."""
    
        r = self.runner.recipe
        k = r.prune.rewind_step
        t = self.target
        if weights == "ticket":
            assert self.ticket is not None
            return RetrainRequest(t.model, self.seed, mask, self.ticket, "weights.safetensors",
                                  0 if t.start_at_step_zero else k, self.label, dataset=t.dataset)
        if weights == "init":
            return RetrainRequest(t.model, self.seed, mask, None, "", 0, self.label, init_seed, t.dataset)
        if weights == "baseline":
            rewind = r.baseline_settings.weights == "rewind"
            return RetrainRequest(t.model, self.seed, mask, self.dense if rewind else None, "rewind.safetensors",
                                  k if rewind else 0, self.label, dataset=t.dataset)
        raise StrategyError(f"baseline {self.baseline.name!r}: weights={weights!r}; use 'ticket', 'baseline' or 'init'")

    def scored(self, score: Callable[[Scoring], Mapping[str, torch.Tensor]]) -> "RetrainRequest":
        """The cached mask step of ``score`` at the transferred ticket's global sparsity,
        retrained from the target's baseline weights."""
        return self.retrain(self.mask_step(score), weights="baseline")

    def mask_step(self, score: Callable[[Scoring], Mapping[str, torch.Tensor]]) -> StepRecord:
        """A ``mask`` step: ``score`` on the target built with its rewind-point weights (or
        its initialisation), at the transferred ticket's global sparsity."""
        assert self.ticket is not None
        run, b, t, seed = self.runner, self.baseline, self.target, self.seed
        r = run.recipe
        bs = r.baseline_settings
        sparsity = self.ticket.result["sparsity"]
        weights = self.dense if bs.weights == "rewind" else None
        settings = {
            "method": b.name, "target": t.model.label, "seed": seed, "sparsity": round(sparsity, 10),
            "batches": bs.batches if b.data_based else None,
            "iterations": None,
            "dataset": run._dataset_settings(t.dataset) if b.data_based else None,
            "batch_size": r.train.batch_size if b.data_based else None,
            "bn_train_mode": bs.bn_train_mode if b.data_based and bs.bn_train_mode else None,
            "threads": torch.get_num_threads() if b.threads else None,
            **(b.step_settings(bs) if b.step_settings is not None else {}),
            **r.prune.prunable(),
        }

        def fn(d: Path) -> dict[str, Any]:
            model = run._build(t.model, seed, t.dataset)
            if weights is not None:
                model.load_state_dict(load_tensors(weights.file("rewind.safetensors")))
            torch.manual_seed(seed)
            data = lambda: run.data(t.dataset).train  # noqa: E731 -- loaded only by scorers that use data
            mask = score(Scoring(
                model, sparsity, seed, r.prune.prunable(), bs,
                lambda: normalized_batches(data(), bs.batches, r.train.batch_size or 128, seed),
                lambda: tuple(data().x[:1].shape[1:]),
                lambda: {"loss_fn": run.task.loss} if run.task.name != "classification" else {},
            ))
            _masks.save_mask(mask, d / "mask.safetensors")
            return {"sparsity": _masks.sparsity(mask), "layers": layer_density(mask)}

        return run.step("mask", settings, {"weights": weights}, fn, label=f"{b.name} {t.name} seed={seed}")

    def shuffled(self, names: list[str] | None) -> StepRecord:
        """A ``mask`` step: the transferred ticket's mask shuffled within each tensor
        (``prune.shuffle``, the authors' ``shuffle_state_dict``) -- the tensors ``names``
        (every tensor when ``None``)."""
        assert self.ticket is not None
        ticket, seed = self.ticket, self.seed
        settings = {"method": self.baseline.name, "target": self.target.model.label, "seed": seed}

        def fn(d: Path) -> dict[str, Any]:
            from .. import prune
            mask = _masks.load_mask(ticket.file("mask.safetensors"))
            chosen = [n for n in names if n in mask] if names is not None else list(mask)
            new = prune.shuffle(mask, seed=seed, names=chosen)
            _masks.save_mask(new, d / "mask.safetensors")
            return {"sparsity": _masks.sparsity(new), "layers": layer_density(new), "shuffled": chosen}

        return self.runner.step("mask", settings, {"ticket": ticket}, fn,
                                label=f"{self.baseline.name} {self.target.name} seed={seed}")


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


# --------------------------------------------------------------------------- the baselines
# (registration order = the order recipes and error messages list them)


@register("imp", needs=("imp",), reference=True)
def imp(lv: Level) -> StepRecord:
    """The target's own IMP ticket at the same level (level-matched)."""
    return lv.imp[lv.level - 1]


@register("imp-matched")
def imp_matched(lv: Level) -> StepRecord:
    """The target's IMP ticket pruned on to the transferred ticket's exact global sparsity
    (sparsity-matched; see ``Runner.imp_matched``)."""
    assert lv.ticket is not None
    return lv.runner.imp_matched(lv.target.model, lv.seed, lv.ticket, "target", lv.target.name, lv.target.dataset)


@register("reinit")
def reinit(lv: Level) -> RetrainRequest:
    """The transferred mask, freshly initialised weights (another seed), trained from step 0
    (ElasticLTH ``randomly_reinitialize``)."""
    assert lv.ticket is not None
    return lv.retrain(lv.ticket, weights="init", init_seed=derived_seed(lv.seed, "reinit"))


@register("random", needs=("rewind",))
def random(lv: Level) -> RetrainRequest:
    """The transferred mask shuffled within each tensor, exact per-tensor counts (ElasticLTH
    ``randomly_prune --strategy layerwise``)."""
    return lv.retrain(lv.shuffled(None), weights="baseline")


@register("random-global", needs=("rewind",), prune_method="random")
def random_global(lv: Level) -> RetrainRequest:
    """Uniform random over all prunable weights at the same global sparsity."""
    from .. import prune

    return lv.scored(lambda s: prune.random(s.model, s.sparsity, seed=s.seed, **s.prunable))


@register("magnitude", needs=("rewind",), prune_method="magnitude")
def magnitude(lv: Level) -> RetrainRequest:
    """One-shot global magnitude pruning of the target's rewind-point weights (ElasticLTH
    ``prune_early --strategy sparse_global``)."""
    from .. import prune

    return lv.scored(lambda s: prune.magnitude(s.model, sparsity=s.sparsity, **s.prunable))


@register("permuted", stretch_only=True)
def permuted(lv: Level) -> RetrainRequest | None:
    """The transferred ticket with the copied blocks' masks shuffled within each tensor
    (ElasticLTH ``permute_copy``; stretches only), trained exactly as the ticket is."""
    assert lv.ticket is not None
    names = lv.ticket.result.get("copied")
    if names is None:
        names = copied_tensors(json.loads(Path(lv.ticket.file("blocks.json")).read_text()))
    if not names:
        lv.runner.log(f"[note] permuted {lv.target.name} level={lv.level}: no copied blocks (not a stretch); skipped")
        return None
    return lv.retrain(lv.shuffled(names), weights="ticket")


@register("snip", needs=("rewind",), data_based=True, threads=True, prune_method="snip")
def snip(lv: Level) -> RetrainRequest:
    """SNIP (pruning at init) at the same global sparsity."""
    from .. import prune

    return lv.scored(lambda s: prune.snip(s.model, s.batches(), s.sparsity, train_mode=s.settings.bn_train_mode,
                                          **s.prunable, **s.loss))


@register("grasp", needs=("rewind",), data_based=True, threads=True, prune_method="grasp")
def grasp(lv: Level) -> RetrainRequest:
    """GraSP (pruning at init) at the same global sparsity."""
    from .. import prune

    return lv.scored(lambda s: prune.grasp(s.model, s.batches(), s.sparsity, train_mode=s.settings.bn_train_mode,
                                           **s.prunable, **s.loss))


@register("synflow", needs=("rewind",), threads=True, prune_method="synflow",
          step_settings=lambda bs: {"iterations": bs.synflow_iterations},
          not_for_text="synflow scores a network on an all-ones input, which token ids do not have (an embedding "
                       "lookup, not a product); it does not apply to language models -- leave it out")
def synflow(lv: Level) -> RetrainRequest:
    """SynFlow (data-free pruning at init) at the same global sparsity."""
    from .. import prune

    return lv.scored(lambda s: prune.synflow(s.model, s.sparsity, iterations=s.settings.synflow_iterations,
                                             input_shape=s.input_shape, **s.prunable))


@register("dense", needs=("dense",), once=True)
def dense(lv: Level) -> StepRecord | None:
    """The unpruned target (level 0)."""
    return lv.dense
