"""Why the GraSP baseline of the MLP study trains to chance (10%) at 60.8% sparsity.

Reads masks and rewind weights from a study's step cache, by the settings that made them
(target model, seed, sparsity), and for each baseline mask prints per layer: density, mean
|kept weight| against all weights, the share of units left with no incoming weight, and
the sign coherence of each unit's kept weights, mean over units of |sum_j w_ij m_ij| /
||w_i * m_i|| (about 1 for random signs, up to sqrt(fan-in) when the signs agree). Then
it trains each masked network 300 steps at lr 0.1 and 0.02 (the recipe's optimizer
otherwise) and prints the training loss and validation accuracy every 50 steps.

    OMP_NUM_THREADS=1 python docs/results/diag_grasp.py --cache runs/mlp/steps --seed 0 --sparsity 0.6086
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from elastigraph.masks import load_mask
from elastigraph.models import create
from elastigraph.recipes.cache import load_tensors
from elastigraph.recipes.runner import _load_dataset, split_validation
from elastigraph.recipes.schema import parse_model_spec
from elastigraph.train.loop import TrainConfig, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--model", default="mlp?depth=4&width=300")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sparsity", type=float, required=True, help="the baselines' global sparsity (±0.001)")
    ap.add_argument("--methods", nargs="+", default=["grasp", "snip", "magnitude"])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    torch.set_num_threads(1)
    masks: dict[str, tuple[Path, str]] = {}
    for d in args.cache.iterdir():
        f = d / "done.json"
        if not d.name.startswith("mask-") or not f.is_file():
            continue
        m = json.loads(f.read_text())
        s = m["settings"]
        if (s.get("target") == args.model and s.get("seed") == args.seed and s.get("method") in args.methods
                and abs(float(s.get("sparsity", -1)) - args.sparsity) < 1e-3):
            masks[s["method"]] = (d, m["inputs"]["weights"])
    if not masks:
        raise SystemExit(f"no {args.methods} mask of {args.model} seed {args.seed} at {args.sparsity} in {args.cache}")
    name, kw = parse_model_spec(args.model)
    train_set, val = split_validation(_load_dataset("fashion_mnist", None, "train", None, 0), 0.1, 0)
    for method in args.methods:
        if method not in masks:
            continue
        d, weights_id = masks[method]
        mask = load_mask(d / "mask.safetensors")
        w = load_tensors(args.cache / weights_id / "rewind.safetensors")
        model = create(name, in_chans=1, num_classes=10, **kw)
        model.load_state_dict(w)
        params = dict(model.named_parameters())
        for k, t in mask.items():
            W, tb = params[k].detach(), t.bool()
            coherence = ((W * tb).sum(1).abs() / (W * tb).norm(dim=1).clamp_min(1e-12)).mean().item()
            print(f"{method:9s} {k:18s} density {tb.float().mean():.3f}  |kept w| {W[tb].abs().mean():.4f} "
                  f"(all {W.abs().mean():.4f})  units without input {(tb.sum(1) == 0).float().mean():.3f}  "
                  f"sign coherence {coherence:.2f}")
        for lr in (0.1, 0.02):
            model = create(name, in_chans=1, num_classes=10, **kw)
            model.load_state_dict(w)
            cfg = TrainConfig(steps=args.steps, batch_size=128, lr=lr, momentum=0.0, weight_decay=0.0,
                              schedule="constant", augment=False, eval_every=50, seed=args.seed, device="cpu")
            res = train(model, train_set, val, cfg, mask=mask)
            print(f"{method:9s} lr {lr}: " + ", ".join(
                f"step {h['step']} loss {h['train_loss']:.3f} val {100 * h['test_acc']:.1f}%" for h in res.history))


if __name__ == "__main__":
    main()
