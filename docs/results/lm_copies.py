"""Why does the permuted-copies baseline train better than the stretched ticket
(lm_study_stretch)? A measurement on the trained weights, no training.

The stretch 2 -> 4 layers maps source block 1 to target blocks 1, 2 and 3 (plan
"0:0;1:1,2,3"): the three copies start with identical rewound weights *and* identical
masks. The permuted baseline keeps the weights and shuffles each copy's mask within each
tensor; reinit keeps the ticket's masks and draws fresh weights. Hypothesis: copies that
start identical in both stay alike through training (they learn the same update), so the
stretched network wastes part of its new depth; breaking either symmetry lets the copies
diverge. Measured per seed on the cached final weights: the cosine similarity of block 1's
projection weights (all q/k/v/o/gate/up/down, flattened) with each copy's, after training,
and of their updates (final - start; reinit's start is not cached, so only its final
similarity is reported). Paired by seed, 95% t-intervals.

    python docs/results/lm_copies.py --cache runs/lm_study/steps > docs/results/lm_copies.json

Needs the step cache of the stretch run (`--cache` of its command); its output is committed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

METHODS = ("transfer", "permuted", "reinit")
COPIES = (2, 3)


def _block(sd, i: int):
    import torch

    keys = sorted(k for k in sd if k.startswith(f"model.layers.{i}.") and k.endswith("_proj.weight"))
    if not keys:
        raise SystemExit(f"no model.layers.{i}.*_proj.weight tensors in the checkpoint")
    return torch.cat([sd[k].flatten().float() for k in keys])


def main(argv: list[str] | None = None) -> int:
    import torch
    from safetensors.torch import load_file

    from elastigraph.stats import mean_interval, paired_test

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", type=Path, required=True, help="the stretch run's step cache folder")
    ap.add_argument("--run", type=Path, default=ROOT / "docs/results/runs/lm_study_stretch/results.json")
    args = ap.parse_args(argv)
    res = json.loads(args.run.read_text())
    target = res["targets"][0]["label"] if isinstance(res["targets"][0], dict) else res["targets"][0]
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a, b, dim=0).item()  # noqa: E731
    rows = []
    for seed in res["seeds"]:
        rec = {r["method"]: r for r in res["records"] if r["seed"] == seed and r["target"] == target}
        row = {"seed": seed}
        for m in METHODS:
            step = args.cache / rec[m]["step"]
            done = json.loads((step / "done.json").read_text())
            final = load_file(step / "final.safetensors")
            row[f"{m}_test_bpb"] = rec[m]["test_bpb"]
            row[f"{m}_final_cos"] = sum(cos(_block(final, 1), _block(final, j)) for j in COPIES) / len(COPIES)
            if m == "transfer":
                plan = json.loads((args.cache / done["inputs"]["weights"] / "done.json").read_text())
                row["mapping"] = plan["result"]["mapping"]
            if "weights" in done["inputs"]:  # reinit starts from fresh weights, not cached
                start = load_file(args.cache / done["inputs"]["weights"] / "weights.safetensors")
                upd = lambda j: _block(final, j) - _block(start, j)  # noqa: E731
                row[f"{m}_update_cos"] = sum(cos(upd(1), upd(j)) for j in COPIES) / len(COPIES)
        rows.append(row)
    summary = {}
    for key in ("final_cos", "update_cos"):
        for m in METHODS:
            xs = [r[f"{m}_{key}"] for r in rows if f"{m}_{key}" in r]
            if xs:
                summary[f"{m}_{key}"] = mean_interval(xs).as_dict()
    summary["transfer_minus_permuted_final_cos"] = paired_test(
        [r["transfer_final_cos"] for r in rows], [r["permuted_final_cos"] for r in rows]).as_dict()
    summary["transfer_minus_permuted_update_cos"] = paired_test(
        [r["transfer_update_cos"] for r in rows], [r["permuted_update_cos"] for r in rows]).as_dict()
    print(json.dumps({"command": "python docs/results/lm_copies.py --cache runs/lm_study/steps",
                      "torch": torch.__version__, "python": platform.python_version(),
                      "machine": platform.machine(), "run": str(args.run.relative_to(ROOT)), "target": target,
                      "copies_of_block_1": list(COPIES), "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
