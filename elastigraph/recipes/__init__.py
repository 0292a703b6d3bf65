"""Declarative experiments: YAML recipes validated up front (:mod:`.schema`), run as
cached, resumable steps (:mod:`.runner`, :mod:`.cache`)."""

from .cache import StepCache, StepRecord, step_id
from .runner import Runner, RunSummary, run_recipe
from .schema import (
    BASELINES,
    DEFAULT_SMOKE,
    ModelSpec,
    Recipe,
    TargetSpec,
    apply_set,
    format_model_spec,
    load_recipe,
    parse_model_spec,
    validate_recipe,
)

__all__ = [
    "BASELINES", "DEFAULT_SMOKE", "ModelSpec", "Recipe", "TargetSpec", "apply_set", "format_model_spec",
    "load_recipe", "parse_model_spec", "validate_recipe", "Runner", "RunSummary", "run_recipe",
    "StepCache", "StepRecord", "step_id",
]
