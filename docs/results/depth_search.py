"""The dense depth search of issue 19, section 1, shared by the per-family scripts
(``mlp_depth_regime.py``, ``vgg_depth_regime.py``): every (group, depth, seed) cell trained
at one schedule fixed before the run, on the full Fashion-MNIST training set less a 10%
validation split (the runner's own split, seed 0), evaluated on the validation split and
on the 10,000 test images; paired differences deeper - shallower over seeds with 95%
t-intervals (higher is better). Same seed = same initialisation seed and data order.

The rule, fixed before the run: a regime is a (group, deeper, shallower) whose
*validation* interval excludes 0 in the deeper network's favour; among the ``chosen_pair``
regimes, the group with the largest validation gain is the one a study uses, and its
test-split difference is the reported result. Every cell is reported, where depth pays or
not. Two worker processes, one torch thread each.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


@dataclass(frozen=True)
class Search:
    command: str
    build: Callable[[Any, int], Any]  # (group, depth) -> nn.Module; module-level, so it pickles
    groups: tuple
    depths: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    chosen_pair: tuple[int, int]
    train: dict[str, Any]  # TrainConfig fields (epochs included)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    group_name: str = "width"


def _run(job: tuple[Search, Any, int, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    from elastigraph.recipes.execution import _load_dataset, split_validation
    from elastigraph.train.loop import TrainConfig, evaluate_metrics, train

    search, group, depth, seed = job
    full = _load_dataset("fashion_mnist", None, "train", None, 0)
    tr, val = split_validation(full, 0.1, 0)
    te = _load_dataset("fashion_mnist", None, "test", None, 0)
    torch.manual_seed(seed)
    m = search.build(group, depth)
    cfg = TrainConfig(**search.train, seed=seed, device="cpu")
    t0 = time.perf_counter()
    r = train(m, tr, val, cfg)
    test = evaluate_metrics(m, te, device="cpu")
    return {search.group_name: group, "depth": depth, "seed": seed, "val_acc": r.metrics["accuracy"],
            "test_acc": test["accuracy"], "params": sum(p.numel() for p in m.parameters()),
            "wall_s": time.perf_counter() - t0}


def main(search: Search, extra: dict[str, Any] | None = None) -> None:
    import torch

    from elastigraph.stats import paired_test

    g = search.group_name
    jobs = [(search, w, d, s) for s in search.seeds for w in search.groups for d in search.depths]
    with mp.get_context("spawn").Pool(2) as pool:
        rows = pool.map(_run, jobs)
    by = {(r[g], r["depth"], r["seed"]): r for r in rows}
    pairs = []
    for w in search.groups:
        for a, b in search.pairs:
            for split in ("val", "test"):
                t = paired_test([by[(w, a, s)][f"{split}_acc"] for s in search.seeds],
                                [by[(w, b, s)][f"{split}_acc"] for s in search.seeds])
                pairs.append({g: w, "deeper": a, "shallower": b, "split": split, **t.as_dict(), "verdict": t.verdict})
    regimes = [p for p in pairs if p["split"] == "val" and p["verdict"] == "a better"]
    chosen = max((p for p in regimes if (p["deeper"], p["shallower"]) == search.chosen_pair),
                 key=lambda p: p["diff_mean"], default=None)
    for p in pairs:
        print(f"{g} {p[g]}: {p['deeper']} vs {p['shallower']}, {p['split']}: "
              f"{100 * p['diff_mean']:+.2f} points [{100 * p['diff_low']:.2f}, {100 * p['diff_high']:.2f}] "
              f"p={p['p'] if p['p'] is None else format(p['p'], '.3g')} {p['verdict']}", file=sys.stderr)
    print(json.dumps({"command": search.command, "torch": torch.__version__, "python": platform.python_version(),
                      "machine": platform.machine(), "threads_per_worker": 1, "workers": 2,
                      "epochs": search.train["epochs"], "train": search.train, **(extra or {}), "rows": rows,
                      "paired": pairs, f"chosen_{g}": chosen[g] if chosen else None}, indent=1))
