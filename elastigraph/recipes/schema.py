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
from os import PathLike
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal, Mapping

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..errors import ElastigraphError, ModelNameError, RecipeError
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


# --------------------------------------------------------------------------- YAML

MAX_YAML_DEPTH = 50
"""Deepest nesting of mappings/lists a recipe, ``--set`` value or model override may have."""
MAX_YAML_NODES = 100_000
"""Most values a YAML document may hold once its aliases are expanded (a "billion
laughs" document is a few hundred bytes that expand to 10**9 values)."""


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` (no tags that build objects) that also refuses duplicate keys,
    nesting deeper than :data:`MAX_YAML_DEPTH` and documents whose alias expansion holds
    more than :data:`MAX_YAML_NODES` values -- before anything is built from them."""

    _depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"nesting deeper than {MAX_YAML_DEPTH} levels at line {mark.line + 1}")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if key in seen:
                    raise yaml.YAMLError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                                         "(each key may appear once per mapping)")
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: Any) -> int:
    """Number of values in the composed ``node`` with every alias expanded, counted
    without expanding (shared sub-trees are counted once and multiplied); stops early
    past :data:`MAX_YAML_NODES`."""
    memo: dict[int, int] = {}
    order: list[Any] = []
    stack = [(node, False)]
    while stack:  # iterative post-order: depth is bounded anyway, recursion is not needed
        n, done = stack.pop()
        if id(n) in memo:
            continue
        kids = [c for kv in n.value for c in (kv if isinstance(kv, tuple) else (kv,))] if isinstance(
            n, (yaml.SequenceNode, yaml.MappingNode)) else []
        if done:
            memo[id(n)] = min(MAX_YAML_NODES + 1, 1 + sum(memo[id(c)] for c in kids))
            continue
        stack.append((n, True))
        stack.extend((c, False) for c in kids if id(c) not in memo)
    return memo[id(node)]


def _one_line(e: yaml.YAMLError) -> str:
    """A YAML error as one line: the problem and where (PyYAML's own text spans lines)."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        return f"{e.problem}{where}"
    return " ".join(str(e).split())


def load_yaml(text: str, what: str) -> Any:
    """Parse one YAML document with :class:`_BoundedLoader`; any problem -> ``ValueError``
    whose message starts with ``what`` (callers wrap it in their own named error)."""
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected YAML text, got {type(text).__name__}")
    loader = _BoundedLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size > MAX_YAML_NODES:
            raise yaml.YAMLError(f"expands to more than {MAX_YAML_NODES:,} values (aliases nested too deep?)")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise ValueError(f"{what}: not valid YAML: {_one_line(e)}") from None
    except RecursionError:  # pragma: no cover - the depth bound comes first
        raise ValueError(f"{what}: nesting too deep") from None
    finally:
        loader.dispose()


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
            if key in overrides:
                raise ModelNameError(f"model spec {spec!r}: override {key!r} is given twice")
            if key in RESERVED_OVERRIDES:
                raise ModelNameError(f"model spec {spec!r}: {key!r} cannot be overridden in the model string; "
                                     f"{RESERVED_OVERRIDES[key]}")
            try:
                overrides[key] = load_yaml(raw, f"value of {key!r}") if raw.strip() else None
            except ValueError as e:
                raise ModelNameError(f"model spec {spec!r}: {e} (expected a YAML scalar or list such as 6 "
                                     "or [2,2,4,2])") from None
            err = _override_too_large(key, overrides[key])
            if err:
                raise ModelNameError(f"model spec {spec!r}: {err}")
    return name, overrides


MAX_OVERRIDE_INT = 100_000
"""Largest integer a model override may hold (widths, depths, sizes): bigger values only
make models that cannot be built in any memory, or loops that do not end."""


def _largest_int(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return abs(v)
    if isinstance(v, (list, tuple)):
        return max((_largest_int(x) for x in v), default=0)
    if isinstance(v, dict):
        return max((_largest_int(x) for x in v.values()), default=0)
    return 0


MAX_DEPTH_OVERRIDE = 1000
"""Most blocks a depth override (``depth``, ``depths``, ``layers``, ...) may ask for in
total: building a model is linear in its blocks (a 1000-block ViT takes ~30 s on the
meta device) and no model studied here comes near."""


def _sum_ints(v: Any) -> int:
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return abs(v)
    if isinstance(v, (list, tuple)):
        return sum(_sum_ints(x) for x in v)
    return 0


def _override_too_large(key: str, value: Any) -> str | None:
    """Why a model override asks for an unbuildable size, or None."""
    if _largest_int(value) > MAX_OVERRIDE_INT:
        return (f"override {key}={value!r} holds an integer above {MAX_OVERRIDE_INT:,}; no model of the zoo "
                "takes sizes that large")
    if re.search(r"depth|layers|blocks", key) and _sum_ints(value) > MAX_DEPTH_OVERRIDE:
        return f"override {key}={value!r} asks for more than {MAX_DEPTH_OVERRIDE:,} blocks"
    return None


def max_parameters() -> int:
    """Largest model (parameters + buffers) a model string may build: 2**31 entries (8 GiB
    in float32), or the ``ELASTIGRAPH_MAX_PARAMETERS`` environment variable."""
    import os

    raw = os.environ.get("ELASTIGRAPH_MAX_PARAMETERS", "")
    return int(raw) if raw.isdigit() else 2**31


RESERVED_OVERRIDES = {
    "in_chans": "input channels follow the dataset (CLI: --dataset or --in-chans)",
    "num_classes": "the class count follows the dataset (CLI: --dataset or --num-classes)",
}
"""Constructor arguments elastigraph sets itself, so a model string may not."""


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

    @field_validator("overrides")
    @classmethod
    def _not_reserved(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if key in RESERVED_OVERRIDES:
                raise ValueError(f"{key!r} cannot be overridden: {RESERVED_OVERRIDES[key]}")
            err = _override_too_large(key, value)
            if err:
                raise ValueError(err)
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
        if device is None or torch.device(device).type != "meta":
            # size first, on the meta device (no memory): a model string must not be able to
            # take the machine's memory (cifar_resnet_20?width=100000 is 10**12 weights)
            with torch.device("meta"):
                probe = create(self.name, in_chans=in_chans, num_classes=num_classes, **copy.deepcopy(overrides))
            n = sum(p.numel() for p in probe.parameters()) + sum(b.numel() for b in probe.buffers())
            if n > max_parameters():
                raise ModelNameError(
                    f"model {self.label!r} has {n:,} parameters and buffers, more than the limit of "
                    f"{max_parameters():,} (set ELASTIGRAPH_MAX_PARAMETERS to raise it)"
                )
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
    heal: HealSpec | None = None
    """Continue training each transferred *trained* ticket under its mask (see :class:`HealSpec`)."""
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
        value = load_yaml(raw, "value") if raw.strip() else None
    except ValueError as e:
        raise RecipeError(f"--set {assignment!r}: {e} (expected a YAML scalar, list or mapping; quote text "
                          "that starts with [ or {: --set 'targets.0.label=\"[x]\"')") from None
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
    # a text corpus: shape is (seq_len,); models take token ids
    return ds.spec.in_chans, ds.spec.num_classes, shape


def image_size(chw: tuple[int, ...]) -> int | tuple[int, int]:
    """The ``img_size`` a model takes for images of shape (C, H, W): H if square (a text
    window of shape ``(seq_len,)``: its length; text models ignore it)."""
    if len(chw) < 2:
        return chw[-1]
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
    text_spec = None
    if isinstance(ds, Mapping) and isinstance(ds.get("name", ""), str) and isinstance(ds.get("root", ""), (str, type(None))):
        try:
            shape = dataset_input(ds.get("name", "fashion_mnist"), ds.get("root"))
        except ElastigraphError as e:
            problems.append(("dataset.name", str(e)))
        from ..train.text import is_text_dataset

        if shape is not None and is_text_dataset(ds.get("name")):
            from ..train.data import load_dataset

            text_spec = load_dataset(ds["name"], split="test", limit=1).spec
            if ds.get("val_fraction"):
                problems.append(("dataset.val_fraction", "a text corpus has its own validation split (by file); "
                                                         "leave val_fraction out"))
            for i, b in enumerate(data.get("baselines") or []):
                why = _baselines.get(b).not_for_text if isinstance(b, str) and b in _baselines.names() else None
                if why:
                    problems.append((f"baselines[{i}]", why))
            for i, t in enumerate(data.get("targets") or []):
                if isinstance(t, Mapping) and t.get("dataset") is not None:
                    problems.append((f"targets[{i}].dataset", "a language-model recipe trains every target on its corpus"))

    def build(path: str, raw: Any) -> Any:
        if shape is None:
            return None
        try:
            spec = ModelSpec.model_validate(raw)
        except ValidationError:
            return None  # reported by the schema pass
        try:
            net = spec.build(in_chans=shape[0], num_classes=shape[1], img_size=image_size(shape[2]), device="meta")
            if text_spec is not None:
                from ..train.text import lm_model_problem

                err = lm_model_problem(net, text_spec, spec.label)
                if err:
                    problems.append((path, err))
                    return None
            n = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers())
            if n > max_parameters():
                problems.append((path, f"{spec.label!r} has {n:,} parameters and buffers, more than the limit of "
                                       f"{max_parameters():,} (set ELASTIGRAPH_MAX_PARAMETERS to raise it)"))
                return None
            return net
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
            method = _baselines.get(b).prune_method if isinstance(b, str) and b in _baselines.names() else None
            if method:
                err = _check_prune_method(method)
                if err:
                    problems.append((f"baselines[{i}]", err))
    return problems


def _train_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """The training settings as :class:`~elastigraph.train.TrainConfig` checks them (the
    one place hyper-parameters, seeds and the device are validated), by recipe path."""
    from ..train.loop import MAX_SEED, TrainConfig

    problems: list[tuple[str, str]] = []
    base = TrainConfig.__new__(TrainConfig)  # fields only: no __post_init__ until filled
    for f, v in TrainConfig().__dict__.items():
        setattr(base, f, v)
    for k, v in recipe.train.settings().items():
        setattr(base, k, v)
    if recipe.device is not None:
        base.device = recipe.device
    for field, msg in base.problems():
        if field != "seed":
            problems.append(("device" if field == "device" else f"train.{field}", msg))
    for i, seed in enumerate(recipe.seeds):
        if not 0 <= seed <= MAX_SEED:
            problems.append((f"seeds[{i}]", f"{seed} is outside [0, {MAX_SEED}]"))
    if not 0 <= recipe.dataset.seed <= MAX_SEED:
        problems.append(("dataset.seed", f"{recipe.dataset.seed} is outside [0, {MAX_SEED}]"))
    return problems


def _smoke_problems(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Structural problems of the recipe as ``--smoke`` would run it (so that ``--check``
    validates every section, the ``smoke`` overrides included)."""
    own = data.get("smoke")
    if own is None:
        return []
    if not isinstance(own, Mapping):
        return [("smoke", "must be a mapping of overrides (same layout as the recipe)")]
    merged = deep_merge(deep_merge(data, DEFAULT_SMOKE), own)
    try:
        r = Recipe.model_validate(merged)
    except ValidationError as e:
        return [(f"smoke: {p}", m) for p, m in _pydantic_problems(e)]
    return [(f"smoke: {p}", m) for p, m in _train_problems(r)]


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
    if recipe is not None:
        problems += _train_problems(recipe)
    problems += _semantic_problems(data)
    if problems:
        seen: dict[tuple[str, str], None] = dict.fromkeys(problems)
        lines = "\n".join(f"  {p}: {m}" for p, m in seen)
        raise RecipeError(f"{source}: {len(seen)} invalid field(s):\n{lines}")
    assert recipe is not None
    return recipe


MAX_RECIPE_BYTES = 1 << 20
"""Largest recipe file read (recipes are a few KiB)."""


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
    elif isinstance(path, bool) or not isinstance(path, (str, PathLike)):
        raise RecipeError(f"load_recipe needs a recipe file path or a dict, got {type(path).__name__}")
    else:
        p = Path(path)
        if p.is_dir():
            raise RecipeError(f"recipe {str(p)!r} is a folder; give a recipe YAML file (see recipes/)")
        if not p.is_file():
            raise FileNotFoundError(f"recipe file {str(p)!r} does not exist")
        if p.stat().st_size > MAX_RECIPE_BYTES:
            raise RecipeError(f"{p}: {p.stat().st_size:,} bytes is too large for a recipe (limit {MAX_RECIPE_BYTES:,})")
        try:
            text = p.read_text()
        except UnicodeDecodeError as e:
            raise RecipeError(f"{p}: not UTF-8 text ({e})") from None
        try:
            data = load_yaml(text, str(p))
        except ValueError as e:
            raise RecipeError(str(e)) from None
        label = str(p)
        if not isinstance(data, dict):
            raise RecipeError(f"{p}: a recipe must be a YAML mapping, got {type(data).__name__}")
    if smoke:
        own = data.get("smoke") or {}
        if not isinstance(own, Mapping):
            raise RecipeError(f"{label}: 1 invalid field(s):\n  smoke: must be a mapping of overrides")
        data = deep_merge(deep_merge(data, DEFAULT_SMOKE), own)
        # a target trained on its own dataset gets the smoke run's image limits too
        limits = {k: v for k, v in data["dataset"].items() if k in ("train_limit", "test_limit")} \
            if isinstance(data.get("dataset"), Mapping) else {}
        for t in data.get("targets") or ():
            if isinstance(t, dict) and isinstance(t.get("dataset"), Mapping):
                t["dataset"] = deep_merge(t["dataset"], limits)
        seeds = data.get("seeds")
        if "seeds" not in own and isinstance(seeds, list) and seeds:
            data["seeds"] = seeds[:1]
    if isinstance(overrides, (str, bytes)):
        raise RecipeError(f"overrides must be a list of 'dotted.path=value' strings, got the string {overrides!r}")
    for s in overrides:
        if not isinstance(s, str):
            raise RecipeError(f"override {s!r} is not a 'dotted.path=value' string")
        data = apply_set(data, s)
    recipe = validate_recipe(data, source=label)
    if not smoke:
        problems = dict.fromkeys(_smoke_problems(data))
        if problems:
            lines = "\n".join(f"  {p}: {m}" for p, m in problems)
            raise RecipeError(f"{label}: {len(problems)} invalid field(s):\n{lines}")
    return recipe
