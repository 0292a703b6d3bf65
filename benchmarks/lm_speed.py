"""Language-model training throughput: elastigraph's loop on the byte-level corpus,
dense vs masked (a random mask at ``--sparsity``, the mask held in the forward as for
every ticket), in training tokens per second, for the Llama and GPT-2 sizes of
recipes/lm_depth.yaml (or ``--width``/``--layers``).

    python benchmarks/lm_speed.py --quick                 # about 1 min on a CPU
    python benchmarks/lm_speed.py --steps 100 --out lm_speed.json

Prints a table; the last output line is one JSON object with every run. Each variant is
warmed up first, then timed ``--repeats`` times, interleaved; the best run counts (the
least disturbed by other load on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from elastigraph import masks, models  # noqa: E402
from elastigraph.train import TrainConfig, load_dataset, train  # noqa: E402


def build(family: str, layers: int, width: int, seq_len: int) -> torch.nn.Module:
    if family == "llama":
        return models.create("hf:llama", num_hidden_layers=layers, hidden_size=width, intermediate_size=2 * width,
                             num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
                             max_position_embeddings=seq_len, tie_word_embeddings=False)
    return models.create("hf:gpt2", n_layer=layers, n_embd=width, n_head=4, vocab_size=256, n_positions=seq_len)


def tokens_per_s(family, layers, width, ds, mask, steps, batch, init_state) -> float:
    model = build(family, layers, width, ds.spec.seq_len)
    model.load_state_dict(init_state)
    r = train(model, ds, None, TrainConfig(steps=steps, batch_size=batch, lr=1e-3, optimizer="adamw",
                                           weight_decay=0.0, augment=False, task="causal_lm"), mask=mask)
    return r.images_per_s * ds.spec.seq_len  # windows/s x tokens per window


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--families", default="llama,gpt2")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--quick", action="store_true", help="20 steps, 2 repeats")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args()
    if a.quick:
        a.steps, a.repeats = 20, 2
    ds = load_dataset(f"pystdlib?seq_len={a.seq_len}", split="train", limit=max(4096, a.batch * a.steps))
    rows = []
    for family in a.families.split(","):
        torch.manual_seed(0)
        init = build(family, a.layers, a.width, a.seq_len).state_dict()
        model = build(family, a.layers, a.width, a.seq_len)
        g = torch.Generator().manual_seed(0)
        mask = {k: torch.rand(v.shape, generator=g) >= a.sparsity for k, v in masks.full_mask(model).items()}
        runs: dict[str, list[float]] = {"dense": [], "masked": []}
        for variant in runs:  # warm-up
            tokens_per_s(family, a.layers, a.width, ds, mask if variant == "masked" else None, 5, a.batch, init)
        for _ in range(a.repeats):
            for variant in runs:
                runs[variant].append(tokens_per_s(family, a.layers, a.width, ds, mask if variant == "masked" else None,
                                                  a.steps, a.batch, init))
        best = {k: max(v) for k, v in runs.items()}
        rows.append({"family": family, "layers": a.layers, "width": a.width, "params": sum(p.numel() for p in model.parameters()),
                     "masked_tensors": len(mask), "mask_sparsity": masks.sparsity(mask),
                     "dense_tokens_per_s": best["dense"], "masked_tokens_per_s": best["masked"],
                     "masked_over_dense": best["masked"] / best["dense"], "runs": runs})
    env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
           "cpu": platform.processor() or platform.machine(), "device": "cuda" if torch.cuda.is_available() else "cpu",
           "cmd": " ".join(sys.argv), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS")}
    print(f"{'model':<18}{'params':>10}{'mask':>14}{'dense tok/s':>14}{'masked tok/s':>14}{'masked/dense':>14}")
    for r in rows:
        name = f"{r['family']} {r['layers']}L w{r['width']}"
        mask = f"{r['mask_sparsity']:.0%} of {r['masked_tensors']}"
        print(f"{name:<18}{r['params']:>10,}{mask:>14}{r['dense_tokens_per_s']:>14,.0f}"
              f"{r['masked_tokens_per_s']:>14,.0f}{r['masked_over_dense']:>14.2f}")
    out = {"env": env, "batch": a.batch, "seq_len": a.seq_len, "steps": a.steps, "repeats": a.repeats, "rows": rows}
    if a.out is not None:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=a.out.parent, prefix=f".{a.out.name}.")
        with os.fdopen(fd, "w") as f:
            json.dump(out, f, indent=1)
        os.replace(tmp, a.out)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
