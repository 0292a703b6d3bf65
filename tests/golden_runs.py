"""The runs behind the before/after test of the redesign (tests/test_golden.py): every
shipped recipe in --smoke mode, and one small real run (a real IMP chain, transfer and
baselines on real Fashion-MNIST images, a few hundred steps)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "records.json"
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))

# A small real run: the MLP stretch recipe cut to 1 seed, 2 IMP rounds (rewind to step 5),
# 1,200 training images and 4 epochs (not the smoke section: its own, larger, settings).
REAL = "real:fmnist_mlp_stretch"
REAL_SET = [
    "seeds=[0]", "prune.rounds=2", "prune.levels=[1,2]", "prune.rewind_step=5", "lmc.levels=[2]",
    "dataset.train_limit=1200", "dataset.test_limit=400", "train.epochs=4", "train.batch_size=64",
]

RUNS = [f"smoke:{p.stem}" for p in RECIPES] + [REAL]

# fields that name how or where a step ran, not what it computed
_NOT_NUMBERS = {"step", "device"}


def run_one(name: str, out: Path) -> list[dict[str, Any]]:
    from elastigraph.recipes import load_recipe, run_recipe

    kind, stem = name.split(":", 1)
    path = ROOT / "recipes" / f"{stem}.yaml"
    if kind == "smoke":
        recipe = load_recipe(path, smoke=True)
    else:
        recipe = load_recipe(path, overrides=REAL_SET)
    run_recipe(recipe, out, workers=1, fleet="off")
    return json.loads((out / "results.json").read_text())["records"]


def comparable(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k not in _NOT_NUMBERS} for r in records]
