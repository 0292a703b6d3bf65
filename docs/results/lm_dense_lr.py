"""Why does the dense 2-layer byte Llama of recipes/lm_depth.yaml end worse than its own
IMP tickets? Train it dense at the recipe's settings with three learning rates, 2 seeds
each, and report validation bits per byte (the corpus's validation split) and the last
training loss.

    OMP_NUM_THREADS=1 python docs/results/lm_dense_lr.py > docs/results/lm_dense_lr.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from elastigraph.models import create  # noqa: E402
from elastigraph.train import TrainConfig, load_dataset, train  # noqa: E402

LLAMA = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4,
             vocab_size=256, max_position_embeddings=64, tie_word_embeddings=False)


def train_dense(seed: int, *, lr: float = 0.003, initializer_range: float | None = None) -> dict:
    """The recipe's dense 2-layer model trained at its settings (``lr``, init std
    ``initializer_range``: None = the config's 0.02): validation bits per byte and the
    training loss every 100 steps."""
    tr = load_dataset("pystdlib?seq_len=64", split="train", limit=16000)
    va = load_dataset("pystdlib?seq_len=64", split="val", limit=1000)
    torch.manual_seed(seed)
    init = {} if initializer_range is None else {"initializer_range": initializer_range}
    m = create("hf:llama", **LLAMA, **init)
    cfg = TrainConfig(steps=400, batch_size=32, lr=lr, optimizer="adamw", weight_decay=0.0, schedule="cosine",
                      warmup_steps=20, augment=False, seed=seed, task="causal_lm", eval_every=100)
    r = train(m, tr, va, cfg)
    return {"val_bpb": r.metrics["bits_per_byte"],
            "history": [{k: h[k] for k in ("step", "train_loss", "test_bpb")} for h in r.history]}


if __name__ == "__main__":
    rows = []
    for lr in (0.001, 0.003, 0.01):
        for seed in (0, 1):
            rows.append({"lr": lr, "seed": seed, **train_dense(seed, lr=lr)})
            print(f"lr {lr} seed {seed}: val bpb {rows[-1]['val_bpb']:.3f}", file=sys.stderr)
    print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
