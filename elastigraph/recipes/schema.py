"""The recipe schema (pydantic only): one YAML document describes a whole E-LTH
experiment (dataset, source model and its IMP schedule, training settings, targets,
baselines, seeds). Structure, types and ranges are checked here; what needs the rest of
the library (datasets on disk, models built on the meta device, transfer plans, training
settings as :class:`~elastigraph.train.TrainConfig` checks them) is checked by
:mod:`elastigraph.recipes.validate`, which also reads recipe files (:func:`load_recipe`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..models.spec import (  # noqa: F401 -- the model-spec language, re-exported for recipes
    MAX_DEPTH_OVERRIDE,
    MAX_OVERRIDE_INT,
    RESERVED_OVERRIDES,
    ModelSpec,
    format_model_spec,
    max_parameters,
    parse_model_spec,
)
from . import baselines as _baselines

BASELINES = _baselines.names()
"""The built-in baseline names a recipe may list (docs/elth.md, "Baselines of the E-LTH
protocol"), each one registered function in :mod:`elastigraph.recipes.baselines`, where
each is described; a recipe may list any registered name (:func:`baselines.names`)."""


def _known_baseline(v: Any) -> Any:
    """A recipe's baseline name must be registered (checked when the recipe is read, so a
    baseline registered by a plugin or a test is accepted)."""
    known = _baselines.names()
    if not isinstance(v, str) or v not in known:
        expected = " or ".join([", ".join(repr(n) for n in known[:-1]), repr(known[-1])]) if len(known) > 1 \
            else repr(known[0])
        raise PydanticCustomError("literal_error", "Input should be {expected}", {"expected": expected})
    return v


# --------------------------------------------------------------------------- sections


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DatasetSpec(_Section):
    """Which data, where it lies, and how much of it (``*_limit``: a fixed random subset)."""

    name: str = "fashion_mnist"
    root: str | None = None
    train_limit: int | None = Field(default=None, ge=1)
    test_limit: int | None = Field(default=None, ge=1)
    seed: int = 0
    val_fraction: float = Field(default=0.0, ge=0.0, lt=1.0)
    """Share of the training set (after ``train_limit``) held out as a validation split:
    never trained on, every trained network's accuracy on it is recorded (``val_acc``);
    choose hyper-parameters on it, never on the test split. 0 = no validation split."""


class PruneSpec(_Section):
    """The source ticket: IMP with rewinding (``rounds`` levels of ``fraction`` global
    magnitude pruning, survivors reset to the weights at ``rewind_step``)."""

    method: Literal["imp"] = "imp"
    rounds: int = Field(default=5, ge=1, le=60)
    fraction: float = Field(default=0.2, gt=0.0, lt=1.0)
    rewind_step: int = Field(default=0, ge=0)
    levels: list[int] | None = None
    """Source IMP levels whose tickets are transferred (default: every level 1..rounds)."""
    include_first: bool = True
    """Prune the first conv/linear layer (the stem). Global magnitude pruning can empty a
    tiny stem (e.g. a 1x1 stem on 1-channel images), leaving a network that cannot learn."""
    include_last: bool = True
    """Prune the last conv/linear layer (the classifier)."""

    def prunable(self) -> dict[str, bool]:
        """The prunable-set switches that differ from the default (IMP and every mask
        baseline use the same set; only non-defaults enter step hashes)."""
        return {k: v for k, v in (("include_first", self.include_first), ("include_last", self.include_last)) if not v}

    @model_validator(mode="after")
    def _levels_in_range(self) -> "PruneSpec":
        if self.levels is not None:
            bad = [lv for lv in self.levels if not 1 <= lv <= self.rounds]
            if bad:
                raise ValueError(f"levels {bad} are outside 1..rounds={self.rounds}")
        return self

    def transfer_levels(self) -> list[int]:
        return sorted(set(self.levels)) if self.levels is not None else list(range(1, self.rounds + 1))


class TrainSpec(_Section):
    """Training settings; every field left out keeps :class:`elastigraph.train.TrainConfig`'s
    default. ``seed`` and ``device`` are set by the runner."""

    epochs: float | None = Field(default=None, gt=0)
    steps: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=1)
    lr: float | None = Field(default=None, gt=0)
    optimizer: Literal["sgd", "adamw"] | None = None
    momentum: float | None = Field(default=None, ge=0)
    nesterov: bool | None = None
    weight_decay: float | None = Field(default=None, ge=0)
    schedule: str | None = None
    milestones: list[float] | None = None
    gamma: float | None = Field(default=None, gt=0)
    warmup_steps: int | None = Field(default=None, ge=0)
    label_smoothing: float | None = Field(default=None, ge=0, lt=1)
    augment: bool | None = None
    eval_every: int | None = Field(default=None, ge=1)
    amp: bool | None = None
    channels_last: bool | None = None
    compile: bool | None = None

    def settings(self) -> dict[str, Any]:
        """The fields that were set (these, not the defaults, enter step hashes)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}


class HealSpec(_Section):
    """"Up-scale, then heal" (SOLAR-style depth up-scaling): the source ticket's *trained*
    weights at each transferred level are moved onto the target with its mask and
    training continues under the mask for ``steps`` steps (the recipe's ``train``
    settings, with ``lr`` and ``schedule`` overridden where given, the learning rate
    schedule restarting at 0). Recorded as method ``heal``: the metrics before and after
    healing, and the sparsity before and after (it never drops: pruned weights stay exactly
    zero)."""

    steps: int = Field(ge=1)
    lr: float | None = Field(default=None, gt=0)
    schedule: str | None = None
    warmup_steps: int | None = Field(default=None, ge=0)

    def overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.model_dump().items() if v is not None}
        out.pop("steps")
        return {**out, "steps": self.steps}


class TargetSpec(_Section):
    """A target model and how the source ticket is mapped onto it: a named ``strategy``
    or an explicit ``mapping`` string (not both; neither = the library default)."""

    model: ModelSpec
    strategy: str | None = None
    mapping: str | None = None
    label: str | None = None
    start_at_step_zero: bool = False
    """Transfer the source ticket with the source's step-0 (initial) weights and retrain
    from step 0, instead of its rewind-step weights (ElasticLTH ``start_at_step_zero``;
    the source IMP itself still rewinds to ``prune.rewind_step``)."""
    dataset: DatasetSpec | None = None
    """Another task for this target (ElasticLTH ``change_depth_dataset``, paper Table 6):
    the target, its own IMP ticket and every baseline train and are evaluated on this
    dataset (e.g. ``{name: 'fashion_mnist?classes=5-9', val_fraction: 0.1}``) while the
    source ticket comes from the recipe's. Default: the recipe's dataset."""
    head: Literal["keep", "reinit"] = "keep"
    """``reinit``: the target's head keeps its own fresh weights with a random mask at the
    source head's density (``transfer(head="reinit")``; needed when the class counts
    differ). ``keep`` (default) transfers the head and refuses heads of other shapes."""

    @model_validator(mode="after")
    def _one_of(self) -> "TargetSpec":
        if self.strategy is not None and self.mapping is not None:
            raise ValueError("give either 'strategy' or 'mapping', not both")
        return self

    @property
    def name(self) -> str:
        return self.label or self.model.label


class BaselineSettings(_Section):
    """How the mask baselines are made: from the target's rewind-point weights (as the
    ticket is) or from its initialisation; data batches for SNIP/GraSP; SynFlow rounds."""

    weights: Literal["rewind", "init"] = "rewind"
    batches: int = Field(default=1, ge=1)
    synflow_iterations: int = Field(default=100, ge=1)
    bn_train_mode: bool = False
    """SNIP/GraSP score with BatchNorm in train mode (batch statistics); the default, eval
    mode, is what the original code does."""


ANALYSES = ("lmc",)
"""Analyses a recipe may list (``analyses: [lmc]``): ``lmc`` = linear mode connectivity
of the transferred ticket and of the target's own IMP ticket (paper Fig. 8)."""


class LMCSettings(_Section):
    """Linear mode connectivity (``analyses: [lmc]``): the two data-order seeds, the
    number of interpolation points, the transfer levels measured (default: all), and
    which tickets (the transferred one; the target's own IMP ticket when ``imp`` is a
    baseline)."""

    points: int = Field(default=11, ge=3, le=101)
    data_seeds: list[int] = Field(default_factory=lambda: [10_001, 10_002], min_length=2, max_length=2)
    levels: list[int] | None = None
    tickets: list[Literal["transfer", "imp"]] = Field(default_factory=lambda: ["transfer", "imp"], min_length=1)

    @field_validator("data_seeds")
    @classmethod
    def _distinct(cls, v: list[int]) -> list[int]:
        if v[0] == v[1]:
            raise ValueError(f"the two data seeds must differ, got {v}")
        return v


class Comparison(_Section):
    """One pre-registered comparison: ``a`` against ``b``, each ``"<label>/<method>"`` (a
    target's label or the source's label, and a method of its records: ``transfer``,
    ``imp``, ``imp-matched``, ``dense``, a baseline), at IMP ``level`` (ignored for
    ``dense``), and the claim it may support: ``better`` (two-sided paired t-test; a side is
    better only when the interval excludes 0), ``non-inferior`` (one-sided test that ``a``
    is not worse than ``b`` by the margin or more) or ``equivalent`` (TOST: both one-sided
    tests at the margin)."""

    a: str = Field(pattern=r"^[^/]+/[^/]+$")
    b: str = Field(pattern=r"^[^/]+/[^/]+$")
    level: int = Field(default=0, ge=0)
    claim: Literal["better", "non-inferior", "equivalent"] = "better"

    def cell(self, side: str) -> tuple[str, str]:
        label, method = getattr(self, side).split("/")
        return label, method


class Hypotheses(_Section):
    """The analysis stated before a run: the primary comparisons (the claims of the run
    rest on these), the family over which Holm's correction runs (the primary comparisons),
    and the non-inferiority / equivalence margin. ``margin_kind: relative`` takes the
    margin as a share of ``b``'s mean (0.01: 1% of its bits per byte); ``absolute`` in the
    metric's own unit as stored (accuracy as a fraction: 0.005 = half a point). Every other
    comparison of the report is descriptive (its own interval, no correction)."""

    margin: float = Field(gt=0)
    margin_kind: Literal["relative", "absolute"] = "relative"
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    """Family-wise error rate of the primary comparisons (Holm); one-sided tests use it
    one-sided (a 1 - 2*alpha two-sided interval)."""
    primary: list[Comparison] = Field(min_length=1)
    rationale: str = ""
    """Why these comparisons, this margin and this many seeds (the power calculation)."""


class Recipe(_Section):
    """A whole experiment (see ``recipes/*.yaml``)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    dataset: DatasetSpec = Field(default_factory=DatasetSpec)
    source: ModelSpec
    source_label: str | None = None
    """Short display name of the source (tables, plots, logs); default: its spec string."""
    prune: PruneSpec = Field(default_factory=PruneSpec)
    train: TrainSpec = Field(default_factory=TrainSpec)
    targets: list[TargetSpec] = Field(min_length=1)
    baselines: list[Annotated[Any, AfterValidator(_known_baseline)]] = Field(default_factory=list)
    baseline_settings: BaselineSettings = Field(default_factory=BaselineSettings)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str | None = None
    analyses: list[Literal["lmc"]] = Field(default_factory=list)
    lmc: LMCSettings = Field(default_factory=LMCSettings)
    hypotheses: Hypotheses | None = None
    """The pre-registered primary comparisons, Holm family and margin (see :class:`Hypotheses`)."""
    heal: HealSpec | None = None
    """Continue training each transferred *trained* ticket under its mask (see :class:`HealSpec`)."""
    expect_divergence: bool = False
    """A training whose loss becomes NaN/inf stops there and is recorded as diverged (steps
    that need its weights are skipped); the run then exits non-zero, unless this is true:
    divergence is an expected outcome of the experiment (an LR sweep, a stress test)."""
    smoke: dict[str, Any] = Field(default_factory=dict)
    """Overrides merged into the recipe by ``--smoke`` (same layout as the recipe)."""

    @property
    def source_name(self) -> str:
        return self.source_label or self.source.label

    @field_validator("name")
    @classmethod
    def _not_a_path(cls, v: str) -> str:
        if v.startswith("."):
            raise ValueError(f"{v!r} starts with '.'; the name becomes a folder under runs/, so use letters, "
                             "digits, '_', '-' or '.' not in front (e.g. 'my-recipe')")
        return v

    @field_validator("seeds")
    @classmethod
    def _unique_seeds(cls, v: list[int]) -> list[int]:
        if len(set(v)) != len(v):
            raise ValueError(f"seeds must be distinct, got {v}")
        return v

    @field_validator("baselines")
    @classmethod
    def _unique_baselines(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _lmc_levels(self) -> "Recipe":
        if "lmc" in self.analyses and self.lmc.levels is not None:
            bad = sorted(set(self.lmc.levels) - set(self.prune.transfer_levels()))
            if bad:
                raise ValueError(f"lmc.levels {bad} are not transferred levels {self.prune.transfer_levels()}")
        return self


DEFAULT_SMOKE: dict[str, Any] = {
    "dataset": {"train_limit": 32, "test_limit": 16},
    "train": {"steps": 2, "epochs": None, "batch_size": 8, "eval_every": None},
    "prune": {"rounds": 1, "rewind_step": 1, "levels": None},
    "baseline_settings": {"synflow_iterations": 2},
    "lmc": {"levels": None, "points": 3},
}
"""Used by ``--smoke`` below the recipe's own ``smoke`` section: a few dozen images, two
steps, one IMP level, the first seed only."""


def __getattr__(name: str) -> Any:
    """The loader and the checks that need the rest of the library live in
    :mod:`elastigraph.recipes.validate`; their old names here still resolve."""
    if name in _MOVED:
        from . import validate

        return getattr(validate, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MOVED = ("load_recipe", "validate_recipe", "apply_set", "deep_merge", "dataset_input", "dataset_shape", "image_size",
          "MAX_RECIPE_BYTES", "load_yaml", "MAX_YAML_DEPTH", "MAX_YAML_NODES")
