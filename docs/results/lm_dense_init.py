"""Hypothesis for docs/language_models.md's surprise (every sparse mask of the byte Llama,
even a layerwise random one, trains better than the dense network): masking 64% of each
linear layer shrinks its output's initial scale (fewer inputs per output, the same 0.02
init std), and the dense network suffers from its larger initial scale. Test: train the
dense 2-layer model at the recipe's settings with the init std scaled by sqrt(0.36) (the
kept fraction's square root: the scale a 64%-sparse layer starts with), 2 seeds, and
compare validation bits per byte with docs/results/lm_dense_lr.json (lr 0.003).

    OMP_NUM_THREADS=1 python docs/results/lm_dense_init.py > docs/results/lm_dense_init.json
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
tr = load_dataset("pystdlib?seq_len=64", split="train", limit=16000)
va = load_dataset("pystdlib?seq_len=64", split="val", limit=1000)
rows = []
for init in (0.02 * 0.6,):
    for seed in (0, 1):
        torch.manual_seed(seed)
        m = create("hf:llama", initializer_range=init, **LLAMA)
        cfg = TrainConfig(steps=400, batch_size=32, lr=0.003, optimizer="adamw", weight_decay=0.0, schedule="cosine",
                          warmup_steps=20, augment=False, seed=seed, task="causal_lm", eval_every=100)
        r = train(m, tr, va, cfg)
        rows.append({"initializer_range": init, "seed": seed, "val_bpb": r.metrics["bits_per_byte"],
                     "history": [{k: h[k] for k in ("step", "train_loss", "test_bpb")} for h in r.history]})
        print(f"init {init} seed {seed}: val bpb {r.metrics['bits_per_byte']:.3f}", file=sys.stderr)
print(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(), "rows": rows}, indent=1))
