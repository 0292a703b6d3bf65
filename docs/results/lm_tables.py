"""Markdown for docs/language_models.md from a finished `elastigraph run` of
recipes/lm_depth.yaml: the per-cell table (mean ± std, n, 95% t-interval of test bits per
byte), the paired comparisons of the transferred ticket, and the healing rows (bits per
byte and sparsity before and after). Every number comes from the run's results.json.

    python docs/results/lm_tables.py runs/lm_depth > /tmp/lm_tables.md
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from elastigraph.report import compare, load_results, metric_of, summarize  # noqa: E402
from elastigraph.stats import mean_interval  # noqa: E402


def _f(x, d=3):
    return "-" if x is None else f"{x:.{d}f}"


def tables(run_dir: str) -> str:
    res = load_results(run_dir)
    m = metric_of(res)
    k = m.key
    env = res["environment"]
    out = [f"Run `{res['recipe']}`, seeds {res['seeds']}; torch {env['torch']}, {env['threads']} thread(s) per "
           f"training, {env['machine']}, devices {env['devices']}; corpus sizes (windows) "
           f"{res['accuracy_splits']['sizes']}.", ""]
    out += [f"| model | method | level | sparsity | test {m.label} (mean ± std) | n | 95% interval | val {m.label} |",
            "|---|---|---|---|---|---|---|---|"]
    for s in summarize(res["records"], m):
        ci = f"[{_f(s[f'test_{k}_ci_low'])}, {_f(s[f'test_{k}_ci_high'])}]" if s[f"test_{k}_ci_low"] is not None else "-"
        out.append(f"| {s['target']} ({s['role']}) | {s['method']} | {s['level']} | {100 * s['sparsity']:.1f}% | "
                   f"{_f(s[f'test_{k}_mean'])} ± {_f(s[f'test_{k}_std'])} | {s['n']} | {ci} | {_f(s[f'val_{k}_mean'])} |")
    out += ["", f"Paired t-tests over seeds of the transferred ticket (a) against b; diff = a - b in bits per byte "
                f"({m.direction}); a side is better only when the 95% interval excludes 0.", "",
            "| target | level | b | kind | sparsity a / b | diff | 95% interval | p | verdict |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in compare(res["records"], m):
        ci = f"[{_f(r['diff_low'])}, {_f(r['diff_high'])}]" if r["diff_low"] is not None else "-"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        out.append(f"| {r['target']} | {r['level']} | {r['b']} | {r['kind']} | {100 * r['a_sparsity']:.1f}% / "
                   f"{100 * r['b_sparsity']:.1f}% | {r['diff_mean']:+.3f} | {ci} | {p} | {r['verdict']} |")
    heal = defaultdict(list)
    for r in res["records"]:
        if r["method"] == "heal":
            heal[(r["target"], r["level"])].append(r)
    if heal:
        out += ["", "Healing (the source's trained ticket moved onto the target, then trained under its mask): "
                    "test bits per byte and the share of exact zeros in the masked tensors, before and after.", "",
                "| target | level | bpb before | bpb after | paired gain (95% interval) | zeros before | zeros after | n |",
                "|---|---|---|---|---|---|---|---|"]
        for (t, lv), rows in heal.items():
            before = [r["before"][k] for r in rows]
            after = [r[f"test_{k}"] for r in rows]
            gain = mean_interval([b - a for b, a in zip(before, after)])
            ci = f"[{_f(gain.low)}, {_f(gain.high)}]" if gain.low is not None else "-"
            out.append(f"| {t} | {lv} | {_f(sum(before) / len(before))} | {_f(sum(after) / len(after))} | "
                       f"{_f(gain.mean)} {ci} | {min(r['sparsity_before'] for r in rows):.4%} | "
                       f"{min(r['sparsity_after'] for r in rows):.4%} | {len(rows)} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(tables(sys.argv[1] if len(sys.argv) > 1 else "runs/lm_depth"), end="")
