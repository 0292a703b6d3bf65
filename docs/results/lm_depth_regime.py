"""Does depth pay for the dense byte-level Llama (issue 19, section 1, the transformer
family)? Dense 2-, 4- and 8-layer models (width 64, 4 heads, MLP 128, untied head) trained
at one pre-set schedule (AdamW lr 0.003, cosine, 50 warm-up steps, 1000 steps of 32
windows of 64 bytes: one pass over 32,000 training windows of the `pystdlib` corpus),
5 seeds each (same seed = same data order); bits per byte on the corpus's validation and
test splits (1,000 windows each); paired differences deeper - shallower over seeds with
their 95% t-interval (lower is better). Nothing is chosen here: the one schedule is the
recipe's (recipes/lm_depth.yaml) with 2.5x the steps, and validation is reported beside
test, so a reader can see whether the two agree.

    OMP_NUM_THREADS=1 python docs/results/lm_depth_regime.py > docs/results/lm_depth_regime.json

Two worker processes, one torch thread each.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

DEPTHS = (2, 4, 8)
SEEDS = (0, 1, 2, 3, 4)
STEPS = 1000


def run(job: tuple[int, int]) -> dict:
    import torch

    torch.set_num_threads(1)
    from elastigraph.models import create
    from elastigraph.train import TrainConfig, load_dataset, train
    from elastigraph.train.loop import evaluate_metrics

    depth, seed = job
    tr = load_dataset("pystdlib?seq_len=64", split="train", limit=32000)
    va = load_dataset("pystdlib?seq_len=64", split="val", limit=1000)
    te = load_dataset("pystdlib?seq_len=64", split="test", limit=1000)
    torch.manual_seed(seed)
    m = create("hf:llama", num_hidden_layers=depth, hidden_size=64, intermediate_size=128, num_attention_heads=4,
               num_key_value_heads=4, vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False)
    cfg = TrainConfig(steps=STEPS, batch_size=32, lr=0.003, optimizer="adamw", weight_decay=0.0, schedule="cosine",
                      warmup_steps=50, augment=False, seed=seed, task="causal_lm")
    t0 = time.perf_counter()
    r = train(m, tr, va, cfg)
    test = evaluate_metrics(m, te, device="cpu")
    return {"depth": depth, "seed": seed, "val_bpb": r.metrics["bits_per_byte"], "test_bpb": test["bits_per_byte"],
            "params": sum(p.numel() for p in m.parameters()), "wall_s": time.perf_counter() - t0}


def main() -> None:
    import torch

    from elastigraph.stats import paired_test

    jobs = [(d, s) for s in SEEDS for d in DEPTHS]
    with mp.get_context("spawn").Pool(2) as pool:
        rows = pool.map(run, jobs)
    by = {(r["depth"], r["seed"]): r for r in rows}
    pairs = []
    for a, b in ((4, 2), (8, 4), (8, 2)):
        for split in ("val", "test"):
            t = paired_test([by[(a, s)][f"{split}_bpb"] for s in SEEDS], [by[(b, s)][f"{split}_bpb"] for s in SEEDS],
                            higher_is_better=False)
            pairs.append({"deeper": a, "shallower": b, "split": split, **t.as_dict(), "verdict": t.verdict})
    for p in pairs:
        print(f"{p['deeper']} vs {p['shallower']} layers, {p['split']}: {p['diff_mean']:+.3f} bpb "
              f"[{p['diff_low']:.3f}, {p['diff_high']:.3f}] p={p['p']:.3g} {p['verdict']}", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads_per_worker": 1, "workers": 2, "steps": STEPS,
                      "rows": rows, "paired": pairs}, indent=1))


if __name__ == "__main__":
    main()
