"""Declarative experiments: YAML recipes (:mod:`.schema`) read and checked up front
(:mod:`.validate`), run by the E-LTH protocol (:mod:`.runner`) as cached, resumable steps
(:mod:`.execution`, :mod:`.cache`) against registered baselines (:mod:`.baselines`),
written as typed records (:mod:`.results`)."""

from .cache import StepCache, StepRecord, step_id
from .runner import Runner, RunSummary, run_recipe
from .schema import BASELINES, DEFAULT_SMOKE, ModelSpec, Recipe, TargetSpec, format_model_spec, parse_model_spec
from .validate import apply_set, load_recipe, validate_recipe

__all__ = [
    "BASELINES", "DEFAULT_SMOKE", "ModelSpec", "Recipe", "TargetSpec", "apply_set", "format_model_spec",
    "load_recipe", "parse_model_spec", "validate_recipe", "Runner", "RunSummary", "run_recipe",
    "StepCache", "StepRecord", "step_id",
]
