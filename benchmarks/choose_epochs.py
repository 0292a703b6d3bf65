"""Choose a recipe's epoch budget on the validation split, never on the test set.

Trains each dense model for ``--epochs`` epochs with the recipe's optimizer settings,
evaluating on a held-out validation split (``--val-fraction`` of the training set, the
runner's own split) after every epoch, for several seeds; prints mean validation accuracy
per epoch and writes the curves as JSON. The chosen budget is the first epoch whose mean
validation accuracy is within ``--tol`` points of the best epoch of every model.

    python benchmarks/choose_epochs.py --models 'mlp?depth=2&width=300' 'mlp?depth=4&width=300' \
        --epochs 30 --seeds 0 1 --tol 1.0 --json docs/results/choose_epochs_mlp.json

(The committed docs/results/choose_epochs_mlp.json merges two such runs, one model each,
by hand: its ``commands`` list and ``purpose`` are not written by this script; its
``rule`` is the one this script applies with ``--tol 1.0``, which picks 11 epochs from
those curves; the default ``--tol 0.3`` picks 23.)
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from elastigraph.models import create
from elastigraph.recipes.schema import parse_model_spec
from elastigraph.recipes.runner import _load_dataset, split_validation
from elastigraph.train.loop import TrainConfig, steps_per_epoch, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--dataset", default="fashion_mnist")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--momentum", type=float, default=0.0)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--tol", type=float, default=0.3, help="points below the best epoch that still count")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    train_full = _load_dataset(args.dataset, None, "train", None, 0)
    tr, val = split_validation(train_full, args.val_fraction, 0)
    per_epoch = steps_per_epoch(len(tr), args.batch_size)
    curves: dict[str, list[list[float]]] = {}
    t0 = time.perf_counter()
    for spec in args.models:
        curves[spec] = []
        for seed in args.seeds:
            torch.manual_seed(seed)
            name, kw = parse_model_spec(spec)
            model = create(name, num_classes=10, in_chans=1, **kw)
            cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                              weight_decay=args.weight_decay, schedule="constant", augment=False,
                              eval_every=per_epoch, seed=seed, device="cpu")
            res = train(model, tr, val, cfg)
            curves[spec].append([100.0 * h["test_acc"] for h in res.history])
            print(f"{spec} seed {seed}: done ({time.perf_counter() - t0:.0f} s)", flush=True)

    chosen = 0
    print(f"\nmean validation accuracy (%), {len(args.seeds)} seeds, {len(val)} validation images")
    print("epoch  " + "  ".join(f"{s:>24}" for s in args.models))
    means = {s: [sum(c[e] for c in cs) / len(cs) for e in range(len(cs[0]))] for s, cs in curves.items()}
    for e in range(args.epochs):
        print(f"{e + 1:5d}  " + "  ".join(f"{means[s][e]:24.2f}" for s in args.models))
    for s, m in means.items():
        first = next(e for e, v in enumerate(m) if v >= max(m) - args.tol) + 1
        chosen = max(chosen, first)
        print(f"{s}: best {max(m):.2f} at epoch {m.index(max(m)) + 1}; within {args.tol} points from epoch {first}")
    print(f"chosen epoch budget: {chosen}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "command": "python benchmarks/choose_epochs.py " + " ".join(
                f"'{a}'" if "?" in a else a for a in __import__("sys").argv[1:]),
            "rule": f"the first epoch at which every model's mean validation accuracy is within tol={args.tol} "
                    f"points of its best over {args.epochs} epochs",
            "curves_val_acc": curves, "mean_val_acc": means, "chosen_epochs": chosen, "tol": args.tol,
            "val_images": len(val), "train_images": len(tr),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
            "python": platform.python_version(),
        }, indent=1))


if __name__ == "__main__":
    main()
