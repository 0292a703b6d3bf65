"""Recipe files: one YAML document describes a whole E-LTH experiment (dataset, source
model and its IMP schedule, training settings, targets, baselines, seeds).

Validation happens before any work: the pydantic schema checks structure and types,
then every model is built once on the ``meta`` device and every strategy/method name is
looked up, and *all* problems are reported in one :class:`~elastigraph.errors.RecipeError`
naming each field by path (``targets[1].strategy: 'foo' is not one of ...``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..errors import ElastigraphError, ModelNameError, RecipeError

BASELINES = ("imp", "random", "snip", "grasp", "synflow", "dense")
"""Baseline names a recipe may list; all but ``dense`` produce a mask at the transferred
ticket's sparsity (``imp``: the target's own IMP ticket at the same level)."""

MASK_BASELINES = ("random", "snip", "grasp", "synflow")


# --------------------------------------------------------------------------- model specs


def parse_model_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Split ``'timm:vit_tiny_patch16_224?depth=6&img_size=32'`` into the zoo name and its
    constructor overrides; values are YAML scalars or lists (``depths=[3,3,27,3]``)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ModelNameError(f"model spec must be a non-empty string such as 'cifar_resnet_20', got {spec!r}")
    name, _, query = spec.strip().partition("?")
    if not name:
        raise ModelNameError(f"model spec {spec!r} has no model name before '?'")
    overrides: dict[str, Any] = {}
    if query:
        for part in query.split("&"):
            key, eq, raw = part.partition("=")
            key = key.strip()
            if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
                raise ModelNameError(
                    f"model spec {spec!r}: override {part!r} is not of the form key=value "
                    "(e.g. 'timm:vit_tiny_patch16_224?depth=6&img_size=32')"
                )
            try:
                overrides[key] = yaml.safe_load(raw) if raw.strip() else None
            except yaml.YAMLError as e:
                raise ModelNameError(f"model spec {spec!r}: value of {key!r} is not a YAML scalar or list: {raw!r}") from e
    return name, overrides


def format_model_spec(name: str, overrides: Mapping[str, Any]) -> str:
    """Inverse of :func:`parse_model_spec` (canonical key order, flow-style YAML values)."""
    if not overrides:
        return name

    def fmt(v: Any) -> str:
        return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()

    return name + "?" + "&".join(f"{k}={fmt(overrides[k])}" for k in sorted(overrides))


class ModelSpec(BaseModel):
    """A zoo model name plus constructor overrides; YAML may give it as one string
    (``cifar_resnet_32`` or ``timm:vit_tiny_patch16_224?depth=6``) or as a mapping."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    overrides: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, v: Any) -> Any:
        if isinstance(v, str):
            try:
                name, overrides = parse_model_spec(v)
            except ModelNameError as e:
                raise ValueError(str(e)) from None
            return {"name": name, "overrides": overrides}
        return v

    @property
    def label(self) -> str:
        """Canonical one-string form, used in tables, file names and step hashes."""
        return format_model_spec(self.name, self.overrides)

    def build(self, *, in_chans: int, num_classes: int, img_size: Any = None, device: Any = None):
        """Create the model with random weights (on ``device``, e.g. ``'meta'``). Like
        channels and classes, ``img_size`` follows the dataset (models that take an input
        size, such as ViTs, get it; the others ignore it) unless the overrides set it."""
        import contextlib

        import torch

        from ..models import create

        overrides = copy.deepcopy(self.overrides)
        if img_size is not None:
            overrides.setdefault("img_size", img_size)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            return create(self.name, in_chans=in_chans, num_classes=num_classes, **overrides)


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
    baselines: list[Literal["imp", "random", "snip", "grasp", "synflow", "dense"]] = Field(default_factory=list)
    baseline_settings: BaselineSettings = Field(default_factory=BaselineSettings)
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    device: str | None = None
    analyses: list[Literal["lmc"]] = Field(default_factory=list)
    lmc: LMCSettings = Field(default_factory=LMCSettings)
    smoke: dict[str, Any] = Field(default_factory=dict)
    """Overrides merged into the recipe by ``--smoke`` (same layout as the recipe)."""

    @property
    def source_name(self) -> str:
        return self.source_label or self.source.label

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


# --------------------------------------------------------------------------- loading


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``over`` merged in recursively (mappings merge, anything else replaces)."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_set(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """Apply one ``--set dotted.path=value`` override (value parsed as YAML; list items by
    index: ``targets.0.strategy=interpolate``). Returns a new dict."""
    path, eq, raw = assignment.partition("=")
    if not eq or not path.strip():
        raise RecipeError(f"--set {assignment!r}: expected dotted.path=value, e.g. dataset.name=cifar10")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        raise RecipeError(f"--set {assignment!r}: value {raw!r} is not a YAML scalar, list or mapping") from None
    out = copy.deepcopy(data)
    node: Any = out
    keys = path.strip().split(".")
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise RecipeError(f"--set {assignment!r}: {'.'.join(keys[:i]) or 'recipe'} has no item {key}")
            if last:
                node[int(key)] = value
            else:
                node = node[int(key)]
        elif isinstance(node, dict):
            if last:
                node[key] = value
            else:
                if not isinstance(node.get(key), (dict, list)):
                    node[key] = {} if node.get(key) is None else node[key]
                    if not isinstance(node[key], dict):
                        raise RecipeError(f"--set {assignment!r}: {'.'.join(keys[: i + 1])} is not a section")
                node = node[key]
        else:
            raise RecipeError(f"--set {assignment!r}: {'.'.join(keys[:i])} is not a section")
    return out


def _path(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


def _pydantic_problems(err: ValidationError) -> list[tuple[str, str]]:
    problems = []
    for e in err.errors(include_url=False):
        loc = [p for p in e["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "literal_error":
            expected = e.get("ctx", {}).get("expected", "")
            msg = f"{e['input']!r} is not one of {expected}"
        elif e["type"] == "extra_forbidden":
            msg = "unknown field (check the spelling against the recipe schema)"
        elif e["type"] == "missing":
            msg = "field required"
        elif "input" in e and not isinstance(e["input"], (dict, list)):
            msg = f"{msg} (got {e['input']!r})"
        problems.append((_path(loc), msg))
    return problems


def _check_strategy(name: str) -> str | None:
    """None if :func:`elastigraph.transfer.transfer` accepts ``strategy=name``, else why not."""
    from ..transfer import parse_strategy

    try:
        parse_strategy(name)
    except ElastigraphError as e:
        return str(e)
    return None


def _check_prune_method(name: str) -> str | None:
    """None if ``elastigraph.prune.by_name`` knows ``name``, else the error text."""
    try:
        from .. import prune
    except ImportError:
        return None
    try:
        prune.by_name(name)
    except ElastigraphError as e:
        return str(e)
    return None


def dataset_input(name: str, root: str | None = None) -> tuple[int, int, tuple[int, ...]]:
    """``(in_chans, num_classes, image shape C,H,W)`` of a dataset; reads its test split,
    so a missing dataset is reported while a recipe is validated, before any training."""
    from ..train.data import load_dataset

    ds = load_dataset(name, root=root, split="test", limit=1)
    shape = tuple(ds.x.shape[1:]) if hasattr(ds, "x") else (ds.spec.in_chans, ds.spec.image_size, ds.spec.image_size)
    return ds.spec.in_chans, ds.spec.num_classes, shape


def image_size(chw: tuple[int, ...]) -> int | tuple[int, int]:
    """The ``img_size`` a model takes for images of shape (C, H, W): H if square."""
    h, w = chw[-2], chw[-1]
    return h if h == w else (h, w)


def dataset_shape(name: str, root: str | None = None) -> tuple[int, int]:
    """``(in_chans, num_classes)`` of a dataset (see :func:`dataset_input`)."""
    c, k, _ = dataset_input(name, root)
    return c, k


def _plan_problem(src: Any, dst: Any, target: Mapping[str, Any], image_shape: tuple[int, ...]) -> str | None:
    """Plan the transfer between the meta-device models (tracing only, no compute), so
    that a target of another family or a bad mapping fails now, not after the source's IMP."""
    from .. import masks
    from ..transfer import transfer

    try:
        transfer(src, masks.full_mask(src), dst, strategy=target.get("strategy"), mapping=target.get("mapping"),
                 example_input=(2, *image_shape))
    except ElastigraphError as e:
        return str(e)
    except NotImplementedError:  # an op without a meta kernel: the real transfer will tell
        return None
    return None


def _semantic_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Checks that need the rest of the library: the dataset exists, every model builds
    (on the meta device), strategy and method names exist, and every target's transfer
    plan can be made."""
    problems: list[tuple[str, str]] = []
    ds = data.get("dataset") or {}
    shape: tuple[int, int, tuple[int, ...]] | None = None
    if isinstance(ds, Mapping):
        try:
            shape = dataset_input(ds.get("name", "fashion_mnist"), ds.get("root"))
        except ElastigraphError as e:
            problems.append(("dataset.name", str(e)))

    def build(path: str, raw: Any) -> Any:
        if shape is None:
            return None
        try:
            spec = ModelSpec.model_validate(raw)
        except ValidationError:
            return None  # reported by the schema pass
        try:
            return spec.build(in_chans=shape[0], num_classes=shape[1], img_size=image_size(shape[2]), device="meta")
        except ElastigraphError as e:
            problems.append((path, str(e)))
        except Exception as e:  # a constructor rejecting an override: TypeError, AssertionError ...
            problems.append((path, f"{spec.label!r} cannot be built: {type(e).__name__}: {e}"))
        return None

    src = build("source", data["source"]) if "source" in data else None
    targets = data.get("targets")
    if isinstance(targets, list):
        for i, t in enumerate(targets):
            if not isinstance(t, Mapping):
                continue
            dst = build(f"targets[{i}].model", t["model"]) if "model" in t else None
            strategy, mapping = t.get("strategy"), t.get("mapping")
            err = _check_strategy(strategy) if isinstance(strategy, str) else None
            if err:
                problems.append((f"targets[{i}].strategy", err))
            elif src is not None and dst is not None and shape is not None and not (strategy and mapping):
                err = _plan_problem(src, dst, t, shape[2])
                if err:
                    problems.append((f"targets[{i}].mapping" if mapping else f"targets[{i}]", err))
    baselines = data.get("baselines")
    if isinstance(baselines, list):
        for i, b in enumerate(baselines):
            if b in MASK_BASELINES:
                err = _check_prune_method(b)
                if err:
                    problems.append((f"baselines[{i}]", err))
    return problems


def validate_recipe(data: Mapping[str, Any], *, source: str = "recipe") -> Recipe:
    """Check ``data`` fully and return the :class:`Recipe`; raise one :class:`RecipeError`
    listing every invalid field by path otherwise."""
    if not isinstance(data, Mapping):
        raise RecipeError(f"{source}: a recipe must be a YAML mapping, got {type(data).__name__}")
    problems: list[tuple[str, str]] = []
    recipe: Recipe | None = None
    try:
        recipe = Recipe.model_validate(dict(data))
    except ValidationError as e:
        problems += _pydantic_problems(e)
    problems += _semantic_problems(data)
    if problems:
        seen: dict[tuple[str, str], None] = dict.fromkeys(problems)
        lines = "\n".join(f"  {p}: {m}" for p, m in seen)
        raise RecipeError(f"{source}: {len(seen)} invalid field(s):\n{lines}")
    assert recipe is not None
    return recipe


def load_recipe(
    path: str | Path | Mapping[str, Any],
    *,
    smoke: bool = False,
    overrides: Iterable[str] = (),
) -> Recipe:
    """Read a recipe (YAML file or dict), apply ``--smoke`` and ``--set`` overrides, validate.

    Smoke mode merges :data:`DEFAULT_SMOKE`, then the recipe's own ``smoke`` section, and
    keeps the first seed only."""
    if isinstance(path, Mapping):
        data, label = copy.deepcopy(dict(path)), "recipe"
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"recipe file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text())
        except yaml.YAMLError as e:
            raise RecipeError(f"{p}: not valid YAML: {e}") from None
        label = str(p)
        if not isinstance(data, dict):
            raise RecipeError(f"{p}: a recipe must be a YAML mapping, got {type(data).__name__}")
    if smoke:
        own = data.get("smoke") or {}
        if not isinstance(own, Mapping):
            raise RecipeError(f"{label}: 1 invalid field(s):\n  smoke: must be a mapping of overrides")
        data = deep_merge(deep_merge(data, DEFAULT_SMOKE), own)
        seeds = data.get("seeds")
        if "seeds" not in own and isinstance(seeds, list) and seeds:
            data["seeds"] = seeds[:1]
    for s in overrides:
        data = apply_set(data, s)
    return validate_recipe(data, source=label)
