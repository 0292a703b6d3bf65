"""Does depth pay for narrow MLPs on Fashion-MNIST (issue 19, section 1, a second family)?

Dense MLPs of width 32, 64 and 100 with 2, 4 and 8 hidden layers, trained at one pre-set
schedule (the MLP study's: SGD lr 0.1, no momentum, batch 128, constant learning rate,
11 epochs; recipes/fmnist_mlp_stretch.yaml), 5 seeds each (same seed = same
initialisation seed and data order), on the full Fashion-MNIST training set less a 10%
validation split (the runner's own split, seed 0); accuracy on the validation split and
on the 10,000 test images. Paired differences deeper - shallower over seeds, 95%
t-interval (higher is better).

The rule, fixed before the run: a regime is a (width, deeper, shallower) whose
*validation* interval excludes 0 in the deeper network's favour; among those, the width
with the largest validation gain of 4 over 2 layers is the one the study uses, and its
test-split difference is the reported result. Every cell is reported, where depth pays
or not.

    OMP_NUM_THREADS=1 python docs/results/mlp_depth_regime.py > docs/results/mlp_depth_regime.json

Two worker processes, one torch thread each.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

WIDTHS = (32, 64, 100)
DEPTHS = (2, 4, 8)
SEEDS = (0, 1, 2, 3, 4)
EPOCHS = 11
PAIRS = ((4, 2), (8, 4), (8, 2))


def run(job: tuple[int, int, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    from elastigraph.models import create
    from elastigraph.recipes.execution import _load_dataset, split_validation
    from elastigraph.train.loop import TrainConfig, evaluate_metrics, train

    width, depth, seed = job
    full = _load_dataset("fashion_mnist", None, "train", None, 0)
    tr, val = split_validation(full, 0.1, 0)
    te = _load_dataset("fashion_mnist", None, "test", None, 0)
    torch.manual_seed(seed)
    m = create("mlp", depth=depth, width=width, num_classes=10, in_chans=1)
    cfg = TrainConfig(epochs=EPOCHS, batch_size=128, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                      augment=False, seed=seed, device="cpu")
    t0 = time.perf_counter()
    r = train(m, tr, val, cfg)
    test = evaluate_metrics(m, te, device="cpu")
    return {"width": width, "depth": depth, "seed": seed, "val_acc": r.metrics["accuracy"],
            "test_acc": test["accuracy"], "params": sum(p.numel() for p in m.parameters()),
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    import torch

    from elastigraph.stats import paired_test

    jobs = [(w, d, s) for s in SEEDS for w in WIDTHS for d in DEPTHS]
    with mp.get_context("spawn").Pool(2) as pool:
        rows = pool.map(run, jobs)
    by = {(r["width"], r["depth"], r["seed"]): r for r in rows}
    pairs = []
    for w in WIDTHS:
        for a, b in PAIRS:
            for split in ("val", "test"):
                t = paired_test([by[(w, a, s)][f"{split}_acc"] for s in SEEDS],
                                [by[(w, b, s)][f"{split}_acc"] for s in SEEDS])
                pairs.append({"width": w, "deeper": a, "shallower": b, "split": split, **t.as_dict(),
                              "verdict": t.verdict})
    regimes = [p for p in pairs if p["split"] == "val" and p["verdict"] == "a better"]
    chosen = max((p for p in regimes if (p["deeper"], p["shallower"]) == (4, 2)), key=lambda p: p["diff_mean"],
                 default=None)
    for p in pairs:
        print(f"width {p['width']}: {p['deeper']} vs {p['shallower']} layers, {p['split']}: "
              f"{100 * p['diff_mean']:+.2f} points [{100 * p['diff_low']:.2f}, {100 * p['diff_high']:.2f}] "
              f"p={p['p']:.3g} {p['verdict']}", file=sys.stderr)
    print(json.dumps({"command": "OMP_NUM_THREADS=1 python docs/results/mlp_depth_regime.py",
                      "torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
                      "threads_per_worker": 1, "workers": 2, "epochs": EPOCHS, "rows": rows, "paired": pairs,
                      "chosen_width": chosen["width"] if chosen else None}, indent=1))


if __name__ == "__main__":
    main()
