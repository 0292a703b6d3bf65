"""Which capture works for Hugging Face transformers models, and how long it takes.

For tiny GPT-2, Llama and BERT configs (built from their config classes, no weights):
torch.fx ``symbolic_trace`` (what elastigraph tries first), transformers' own fx tracer
(``transformers.utils.fx``; removed in transformers 5) and non-strict ``torch.export``
(elastigraph's fallback), each timed (best of ``--repeat``) with its error if it fails,
plus the whole ``eg.analyze`` (capture + graph + stages).

    python benchmarks/capture.py [--repeat 3] [--out benchmarks/results/capture.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import elastigraph as eg  # noqa: E402
from elastigraph.graph.capture import _Outputs  # noqa: E402


def models(n: int):
    import transformers as T

    T.logging.set_verbosity_error()
    return {
        "gpt2": lambda: T.GPT2LMHeadModel(T.GPT2Config(n_layer=n, n_embd=32, n_head=2, vocab_size=100, n_positions=64)),
        "llama": lambda: T.LlamaForCausalLM(T.LlamaConfig(
            num_hidden_layers=n, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=100, max_position_embeddings=64)),
        "bert": lambda: T.BertForSequenceClassification(T.BertConfig(
            num_hidden_layers=n, hidden_size=32, intermediate_size=64, num_attention_heads=2, vocab_size=100,
            max_position_embeddings=64)),
    }


def timed(fn, repeat: int) -> dict:
    best, err = None, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as e:  # the point is to record which captures fail, and how
            err = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
            return {"ok": False, "seconds": round(time.perf_counter() - t0, 3), "error": err}
        dt = time.perf_counter() - t0
        best = dt if best is None else min(best, dt)
    return {"ok": True, "seconds": round(best, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--out", default="benchmarks/results/capture.json")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import transformers

    try:
        from transformers.utils import fx as hf_fx
    except ImportError:
        hf_fx = None
    rows = []
    for name, build in models(args.layers).items():
        m = build()
        ids = torch.zeros(2, 8, dtype=torch.long)
        row = {"model": name, "layers": args.layers}
        row["torch.fx"] = timed(lambda: torch.fx.symbolic_trace(m), args.repeat)
        row["transformers.fx"] = (timed(lambda: hf_fx.symbolic_trace(m), args.repeat) if hf_fx else
                                  {"ok": False, "seconds": 0.0,
                                   "error": f"not in transformers {transformers.__version__}"})
        row["torch.export"] = timed(lambda: torch.export.export(_Outputs(m), (ids,), strict=False), args.repeat)
        row["eg.analyze"] = timed(lambda: eg.analyze(m), args.repeat)
        rows.append(row)
    cols = ["torch.fx", "transformers.fx", "torch.export", "eg.analyze"]
    print(f"{'model':<8}" + "".join(f"{c:>20}" for c in cols))
    for r in rows:
        print(f"{r['model']:<8}" + "".join(
            f"{(str(r[c]['seconds']) + ' s') if r[c]['ok'] else 'fails (' + str(r[c]['seconds']) + ' s)':>20}"
            for c in cols))
    for r in rows:
        for c in cols:
            if not r[c]["ok"]:
                print(f"  {r['model']} {c}: {r[c]['error']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                               "rows": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
