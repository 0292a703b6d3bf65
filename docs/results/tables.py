"""Markdown tables for docs/results_mlp_2026-11.md from finished `elastigraph run` folders.

Usage: .venv/bin/python docs/results/tables.py runs/fmnist/stretch runs/fmnist/squeeze runs/fmnist/squeeze_even
Reads each folder's results.json and the step markers (steps/<id>/done.json, which hold
each step's wall_s); prints accuracy tables (mean ± sample std over seeds) and the cost
of each target ticket by IMP versus by transfer.
"""

from __future__ import annotations

import json
import math
import sys
from collections import defaultdict
from pathlib import Path

ORDER = ["transfer", "imp", "random", "snip", "grasp", "synflow", "dense"]


def ms(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def marker(run: Path, sid: str) -> dict:
    return json.loads((run / "steps" / sid / "done.json").read_text())


def accuracy_tables(run: Path, res: dict) -> None:
    recs = res["records"]
    print(f"\n### {res['recipe']}: source {res['source']}, seeds {res['seeds']}\n")
    src = defaultdict(list)
    for r in recs:
        if r["role"] == "source":
            src[r["level"]].append(r)
    print("| source IMP level | " + " | ".join(str(lv) for lv in sorted(src)) + " |")
    print("|---|" + "---|" * len(src))
    print("| sparsity | " + " | ".join(f"{100 * ms([r['sparsity'] for r in src[lv]])[0]:.2f}%" for lv in sorted(src)) + " |")
    print(f"| {res['source']} accuracy | " + " | ".join("{:.2f} ± {:.2f}".format(*[100 * v for v in ms([r['test_acc'] for r in src[lv]])]) for lv in sorted(src)) + " |")
    for target in res["targets"]:
        cell = defaultdict(list)
        for r in recs:
            if r["role"] == "target" and r["target"] == target:
                cell[(r["method"], r["level"])].append(r)
        levels = sorted({lv for (m, lv) in cell if m == "transfer"})
        print(f"\n**{res['source']} -> {target}** (test accuracy %, mean ± std over {len(res['seeds'])} seeds; "
              "the sparsity row is the transferred ticket's; imp is the target's own IMP ticket at the same level)\n")
        print("| method | " + " | ".join(f"level {lv}" for lv in levels) + " |")
        print("|---|" + "---|" * len(levels))
        print("| target sparsity | " + " | ".join(f"{100 * ms([r['sparsity'] for r in cell[('transfer', lv)]])[0]:.2f}%" for lv in levels) + " |")
        for m in ORDER:
            if m == "dense":
                if cell[("dense", 0)]:
                    a = ms([100 * r["test_acc"] for r in cell[("dense", 0)]])
                    print(f"| dense (0%) | " + " | ".join(f"{a[0]:.2f} ± {a[1]:.2f}" for _ in levels) + " |")
                continue
            if not any(cell[(m, lv)] for lv in levels):
                continue
            row = []
            for lv in levels:
                rs = cell[(m, lv)]
                if not rs:
                    row.append("-")
                    continue
                a = ms([100 * r["test_acc"] for r in rs])
                sp = ms([100 * r["sparsity"] for r in rs])[0]
                extra = f" ({sp:.1f}%)" if m == "imp" else ""
                row.append(f"{a[0]:.2f} ± {a[1]:.2f}{extra}")
            print(f"| {m} | " + " | ".join(row) + " |")


def cost_tables(run: Path, res: dict) -> None:
    """Wall-clock to *obtain* the level-L mask + rewind weights: dense + IMP rounds
    1..L-1 (the level-L mask is pruned from round L-1's final weights); the transfer adds
    its own step to the source's IMP. The final training of the ticket (same for both)
    is listed separately."""
    recs = res["records"]
    by = defaultdict(dict)  # (role, target, seed) -> level -> record
    for r in recs:
        if r["method"] in ("dense", "imp") and (r["role"] == "source" or r["method"] in ("dense", "imp")):
            by[(r["role"], r["target"], r["seed"])][r["level"]] = r
    src_key = lambda seed: ("source", res["source"], seed)
    wall = lambda rec: marker(run, rec["step"])["result"]["wall_s"]
    print(f"\n### cost: {res['recipe']} (wall-clock seconds, mean over seeds)\n")
    print("| target | level | sparsity | IMP on target: dense + rounds 1..L-1 | transfer: source IMP to L-1 + transfer step | transfer step alone | ticket training (either) |")
    print("|---|---|---|---|---|---|---|")
    for target in res["targets"]:
        rows = defaultdict(lambda: defaultdict(list))
        for r in recs:
            if r["role"] == "target" and r["target"] == target and r["method"] == "transfer":
                seed, lv = r["seed"], r["level"]
                tr_id = marker(run, r["step"])["inputs"]["mask"]
                tr_wall = marker(run, tr_id)["result"]["wall_s"]
                src = by[src_key(seed)]
                src_cost = sum(wall(src[k]) for k in range(0, lv)) + tr_wall
                tgt = by[("target", target, seed)]
                imp_cost = sum(wall(tgt[k]) for k in range(0, lv)) if all(k in tgt for k in range(0, lv)) else float("nan")
                rows[lv]["imp"].append(imp_cost)
                rows[lv]["tr"].append(src_cost)
                rows[lv]["step"].append(tr_wall)
                rows[lv]["train"].append(wall(r))
                rows[lv]["sp"].append(r["sparsity"])
        for lv in sorted(rows):
            d = rows[lv]
            f = lambda k: ms(d[k])[0]
            print(f"| {target} | {lv} | {100 * f('sp'):.2f}% | {f('imp'):.0f} | {f('tr'):.0f} | {f('step'):.2f} | {f('train'):.0f} |")


def main(argv: list[str]) -> None:
    for a in argv:
        run = Path(a)
        res = json.loads((run / "results.json").read_text())
        accuracy_tables(run, res)
        cost_tables(run, res)


if __name__ == "__main__":
    main(sys.argv[1:])
