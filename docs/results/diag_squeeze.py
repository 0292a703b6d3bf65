"""Why does the squeezed ResNet-56 -> ResNet-20 ticket train worse than random at 48%
sparsity? Separate the mask from the carried weights (docs/results_mlp_2026-11.md, "diagnosis").

Usage: OMP_NUM_THREADS=1 .venv/bin/python docs/results/diag_squeeze.py runs/fmnist/squeeze
For each seed and IMP level 1-2 of the finished squeeze run, retrains ResNet-20 with the
recipe's settings (from step 6, like every ticket there) under
  A. the squeezed mask, but ResNet-20's own step-6 weights (from its dense run);
  B. the squeezed weights, under a random mask with the squeezed mask's per-tensor density;
and prints them next to the run's own numbers (squeezed mask + squeezed weights; random
global mask + own weights).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from elastigraph import masks
from elastigraph.recipes.cache import load_tensors
from elastigraph.recipes.schema import load_recipe
from elastigraph.train import TrainConfig, train
from elastigraph.train.data import load_dataset


def main(run: Path, levels=(1, 2)) -> None:
    res = json.loads((run / "results.json").read_text())
    recipe = load_recipe(json.loads((run / "recipe.json").read_text()))
    ds = recipe.dataset
    tr = load_dataset(ds.name, root=ds.root, split="train", limit=ds.train_limit, seed=ds.seed)
    te = load_dataset(ds.name, root=ds.root, split="test", limit=ds.test_limit, seed=ds.seed)
    k = recipe.prune.rewind_step
    target = recipe.targets[0]
    marker = lambda sid: json.loads((run / "steps" / sid / "done.json").read_text())
    print("| seed | level | sparsity | squeezed mask + squeezed weights | random + own weights | A: squeezed mask + own weights | B: layer-matched random mask + squeezed weights |")
    print("|---|---|---|---|---|---|---|")
    for seed in recipe.seeds:
        rec = {(r["method"], r["level"]): r for r in res["records"] if r["seed"] == seed and r["role"] == "target"}
        dense_dir = run / "steps" / rec[("dense", 0)]["step"]
        for lv in levels:
            tr_id = marker(rec[("transfer", lv)]["step"])["inputs"]["mask"]
            tdir = run / "steps" / tr_id
            tmask = masks.load_mask(tdir / "mask.safetensors")
            out = []
            for variant in ("A", "B"):
                torch.manual_seed(seed)
                model = target.model.build(in_chans=tr.spec.in_chans, num_classes=tr.spec.num_classes)
                if variant == "A":
                    model.load_state_dict(load_tensors(dense_dir / "rewind.safetensors"))
                    mask = tmask
                else:
                    model.load_state_dict(load_tensors(tdir / "weights.safetensors"))
                    g = torch.Generator().manual_seed(1000 + seed)
                    mask = {}
                    for n, m in tmask.items():  # same kept count per tensor, random positions
                        flat = torch.zeros(m.numel(), dtype=torch.bool)
                        flat[torch.randperm(m.numel(), generator=g)[: int(m.sum())]] = True
                        mask[n] = flat.view_as(m)
                cfg = TrainConfig(**recipe.train.settings(), seed=seed)
                r = train(model, tr, te, cfg, mask=dict(mask), start_step=k)
                out.append(100 * r.test_acc)
            print(f"| {seed} | {lv} | {100 * masks.sparsity(tmask):.1f}% | {100 * rec[('transfer', lv)]['test_acc']:.2f} | "
                  f"{100 * rec[('random', lv)]['test_acc']:.2f} | {out[0]:.2f} | {out[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
