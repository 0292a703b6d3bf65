"""Transfer to another task (E-LTH paper Table 6), Fashion-MNIST classes 0-4 -> 5-9.

An IMP ticket of a 2-hidden-layer MLP found on classes 0-4 is stretched to 3 hidden layers
and retrained on classes 5-9, with the source's head kept (``transfer(head="keep")``: both
tasks have 5 outputs) or re-initialised (``head="reinit"``: the target's own head weights,
a random head mask at the ticket's head density). References on the target task: the
3-layer MLP's own IMP ticket, the same-task E-LTH ticket (2-layer IMP on 5-9, stretched),
a random mask at the transferred ticket's sparsity (from the target's rewind weights) and
the dense 3-layer MLP. One seed (a demonstration, not a study: no intervals).

    python benchmarks/task_transfer.py --epochs 5 --rounds 8 --out runs/task_transfer.json

Prints a table; the last line is the JSON written to --out.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import elastigraph as eg  # noqa: E402
from elastigraph import masks, models, prune  # noqa: E402
from elastigraph.train import TrainConfig, load_dataset, train  # noqa: E402

X = (2, 1, 28, 28)


def build(depth: int, width: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return models.create("mlp", depth=depth, width=width, in_chans=1, num_classes=5)


def imp_run(depth, width, data, cfg, k, rounds, seed):
    """Dense training (weights kept at step k), then ``rounds`` IMP levels of 20% global
    magnitude pruning (head included), each rewound to step k. Returns the rewind state and
    {level: (mask, test_acc)} with level 0 = dense."""
    tr, te = data
    net = build(depth, width, seed)
    res = train(net, tr, te, cfg, rewind_step=k)
    rewind, final, out = res.rewind_state, res.final_state, {0: (None, res.test_acc)}
    mask = None
    for lv in range(1, rounds + 1):
        net = build(depth, width, seed)
        net.load_state_dict(final)
        mask = prune.magnitude(net, mask, fraction=0.2)
        net.load_state_dict(rewind)
        r = train(net, tr, te, cfg, mask=mask, start_step=k)
        final = r.final_state
        out[lv] = (mask, r.test_acc)
    return rewind, out


def retrain(model, mask, data, cfg, k):
    return train(model, data[0], data[1], cfg, mask=mask, start_step=k).test_acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--levels", type=int, nargs="+", default=None, help="levels reported (default: every 4th + last)")
    ap.add_argument("--width", type=int, default=300)
    ap.add_argument("--rewind-step", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-limit", type=int, default=None, help="images per task (default: all 30k)")
    ap.add_argument("--out", default="runs/task_transfer.json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    lim = a.train_limit
    src_task = (load_dataset("fashion_mnist?classes=0-4", split="train", limit=lim),
                load_dataset("fashion_mnist?classes=0-4", split="test"))
    dst_task = (load_dataset("fashion_mnist?classes=5-9", split="train", limit=lim),
                load_dataset("fashion_mnist?classes=5-9", split="test"))
    cfg = TrainConfig(epochs=a.epochs, batch_size=128, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant",
                      augment=False, seed=a.seed, device="cpu")
    k = a.rewind_step
    levels = a.levels or sorted({lv for lv in range(4, a.rounds + 1, 4)} | {a.rounds})
    src_rewind, src_imp = imp_run(2, a.width, src_task, cfg, k, a.rounds, a.seed)   # MLP2 on 0-4
    same_rewind, same_imp = imp_run(2, a.width, dst_task, cfg, k, a.rounds, a.seed)  # MLP2 on 5-9
    tgt_rewind, tgt_imp = imp_run(3, a.width, dst_task, cfg, k, a.rounds, a.seed)   # MLP3 on 5-9 (own IMP)
    rows = []
    for lv in levels:
        src_mask = src_imp[lv][0]
        row = {"level": lv, "source_sparsity": masks.sparsity(src_mask),
               "source_acc_0_4": src_imp[lv][1], "dense_mlp3_5_9": tgt_imp[0][1]}
        for head in ("keep", "reinit"):
            src = build(2, a.width, a.seed)
            src.load_state_dict(src_rewind)
            dst = build(3, a.width, a.seed + 1000)  # the re-initialised head comes from here
            t = eg.transfer(src, src_mask, dst, example_input=X, head=head, seed=a.seed)
            if head == "reinit":
                row["head_density_source"] = masks.density({"fc.weight": src_mask["fc.weight"]})
                row["head_density_reinit"] = masks.density({"fc.weight": t.mask["fc.weight"]})
            row[f"transfer_{head}"] = retrain(ticket_model(t, a.width, a.seed), t.mask, dst_task, cfg, k)
            row["sparsity"] = masks.sparsity(t.mask)
        same = build(2, a.width, a.seed)
        same.load_state_dict(same_rewind)
        t = eg.transfer(same, same_imp[lv][0], build(3, a.width, a.seed), example_input=X)
        row["same_task_transfer"] = retrain(ticket_model(t, a.width, a.seed), t.mask, dst_task, cfg, k)
        row["imp_mlp3_5_9"] = tgt_imp[lv][1]
        row["imp_mlp3_sparsity"] = masks.sparsity(tgt_imp[lv][0])
        net = build(3, a.width, a.seed)
        net.load_state_dict(tgt_rewind)
        rmask = prune.random(net, row["sparsity"], seed=a.seed)
        row["random"] = retrain(net, rmask, dst_task, cfg, k)
        rows.append(row)
    cols = ["level", "sparsity", "source_acc_0_4", "transfer_keep", "transfer_reinit", "same_task_transfer",
            "imp_mlp3_5_9", "random", "dense_mlp3_5_9"]
    print(" | ".join(f"{c:>18}" for c in cols))
    for r in rows:
        print(" | ".join(f"{r[c]:>18.4f}" if isinstance(r[c], float) else f"{r[c]:>18}" for c in cols))
    out = {"benchmark": "task_transfer", "source": "mlp?depth=2 on fashion_mnist?classes=0-4",
           "target": "mlp?depth=3 on fashion_mnist?classes=5-9", "seed": a.seed, "epochs": a.epochs,
           "rounds": a.rounds, "rewind_step": k, "width": a.width, "train_limit": lim, "rows": rows,
           "wall_s": round(time.perf_counter() - t0, 1), "torch": torch.__version__, "threads": 1,
           "machine": platform.processor() or platform.machine(), "command": " ".join(sys.argv)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=2))
    print(json.dumps(out))


def ticket_model(t, width: int, seed: int) -> torch.nn.Module:
    """A 3-layer MLP holding the ticket's weights (masked entries zero, mask not installed:
    train() installs ``t.mask`` itself)."""
    return masks.remove(t.apply(build(3, width, seed)))


if __name__ == "__main__":
    main()
