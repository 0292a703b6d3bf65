"""Reading and checking recipes: the YAML file (bounded), ``--smoke`` and ``--set``
overrides, the pydantic schema (:mod:`.schema`), then the checks that need the rest of the
library -- the dataset exists, every model builds on the ``meta`` device, strategy and
pruning-method names exist, every target's transfer plan can be made, and the training
settings pass :meth:`TrainConfig.problems <elastigraph.train.TrainConfig.problems>`.
*All* problems are reported in one :class:`~elastigraph.errors.RecipeError` naming each
field by path (``targets[1].strategy: 'foo' is not one of ...``).
"""

from __future__ import annotations

import copy
from os import PathLike
from pathlib import Path
from typing import Any, Iterable, Mapping

from pydantic import ValidationError

from ..errors import ElastigraphError, RecipeError
from ..io import MAX_YAML_DEPTH, MAX_YAML_NODES, load_yaml  # noqa: F401 -- re-exported
from ..models.spec import ModelSpec, max_parameters
from . import baselines as _baselines
from .schema import DEFAULT_SMOKE, Recipe


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

    from ..transfer import parse_strategy

    strategy = target.get("strategy")
    if isinstance(strategy, str) and parse_strategy(strategy)[1] == "influence":
        strategy = None  # scored on data at run time: plan the layout with the default squeeze now
    try:
        transfer(src, masks.full_mask(src), dst, strategy=strategy, mapping=target.get("mapping"),
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


def _hypotheses_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """Every pre-registered comparison names cells the run will have: a target's label
    with ``transfer`` or one of the recipe's baselines, or the source's label with
    ``dense`` or ``imp``, at a level the run trains (transferred levels; the source's IMP
    has every level 1..rounds; ``dense`` is level 0 whatever is given)."""
    h = recipe.hypotheses
    if h is None:
        return []
    levels = recipe.prune.transfer_levels()
    cells: dict[str, tuple[set[str], list[int]]] = {
        t.name: ({"transfer", *recipe.baselines}, levels) for t in recipe.targets}
    src = recipe.source_name
    if src in cells:
        return [("hypotheses", f"the source label {src!r} is also a target's label; give them distinct labels "
                               "so that comparisons can name them")]
    cells[src] = ({"dense", "imp"}, list(range(1, recipe.prune.rounds + 1)))
    problems: list[tuple[str, str]] = []
    for i, c in enumerate(h.primary):
        for side in ("a", "b"):
            label, method = c.cell(side)
            where = f"hypotheses.primary.{i}.{side}"
            if label not in cells:
                problems.append((where, f"{label!r} is neither the source's nor a target's label; labels: "
                                        f"{sorted(cells)}"))
                continue
            methods, lv = cells[label]
            if method not in methods:
                problems.append((where, f"{label!r} has no {method!r} records in this recipe; it has "
                                        f"{sorted(methods)} (add the baseline to 'baselines')"))
            elif method != "dense" and c.level not in lv:
                problems.append((f"hypotheses.primary.{i}.level", f"level {c.level}: {label}/{method} is run at "
                                                                  f"levels {lv}"))
        if c.a == c.b:
            problems.append((f"hypotheses.primary.{i}", f"compares {c.a!r} with itself"))
    return problems


def _train_problems(recipe: Recipe) -> list[tuple[str, str]]:
    """The training settings as :class:`~elastigraph.train.TrainConfig` checks them (the
    one place hyper-parameters, seeds and the device are validated), by recipe path."""
    from ..train.config import MAX_SEED, config_problems

    problems: list[tuple[str, str]] = []
    settings = recipe.train.settings()
    if recipe.device is not None:
        settings["device"] = recipe.device
    for field, msg in config_problems(settings):
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
        problems += _hypotheses_problems(recipe)
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
