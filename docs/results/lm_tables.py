"""Markdown for docs/language_models.md from a finished `elastigraph run` of
recipes/lm_depth.yaml: the per-cell table (mean ± std, n, 95% t-interval of test bits per
byte), the paired comparisons of the transferred ticket, and the healing rows (bits per
byte and sparsity before and after). Every number comes from the run's results.json.

    python docs/results/lm_tables.py runs/lm_depth > /tmp/lm_tables.md
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from elastigraph.report import compare, heal_summary, load_results, metric_of, summarize  # noqa: E402


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
    heal = heal_summary(res["records"], m)
    if heal:
        out += ["", "Healing (the source's trained ticket moved onto the target, then trained under its mask): "
                    "test bits per byte before and after (means over seeds), the paired gain with its 95% "
                    "t-interval, and the smallest share of exact zeros in the masked tensors over seeds.", "",
                "| target | level | bpb before | bpb after | gain (95% interval) | zeros before | zeros after | n |",
                "|---|---|---|---|---|---|---|---|"]
        for r in heal:
            if r["n"] == 0:  # every healing of the cell diverged: no number
                out.append(f"| {r['target']} | {r['level']} | - | diverged | diverged | - | - | 0 ({r['diverged']} diverged) |")
                continue
            ci = f" [{_f(r['gain_low'])}, {_f(r['gain_high'])}]" if r["gain_low"] is not None else ""
            out.append(f"| {r['target']} | {r['level']} | {_f(r['before'])} | {_f(r['after'])} | {_f(r['gain'])}{ci} | "
                       f"{r['zeros_before']:.4%} | {r['zeros_after']:.4%} | {r['n']} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(tables(sys.argv[1] if len(sys.argv) > 1 else "runs/lm_depth"), end="")
