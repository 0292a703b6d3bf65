"""Markdown tables for docs/results_mlp_2026-11.md from a run directory: per-cell mean ± std, n and
95% t-interval of the target's rows, and the paired comparisons (elastigraph.report).

    python docs/results/fair_tables.py RUN_DIR
"""

from __future__ import annotations

import sys

from elastigraph.report import compare, load_results, summarize


def pct(x):
    return "–" if x is None else f"{100 * x:.2f}"


def main(run_dir: str) -> None:
    res = load_results(run_dir)
    recs = res["records"]
    env = res.get("environment", {})
    print(f"run `{res['recipe']}`, seeds {res['seeds']}; torch {env.get('torch')}, {env.get('threads')} thread(s), "
          f"devices {env.get('devices')}; accuracy sizes {res.get('accuracy_splits', {}).get('sizes')}\n")
    print("| target | method | level | sparsity | test acc % (mean ± std) | n | 95% interval | val acc % |")
    print("|---|---|---|---|---|---|---|---|")
    for s in summarize(recs):
        ci = f"[{pct(s['test_acc_ci_low'])}, {pct(s['test_acc_ci_high'])}]" if s["test_acc_ci_low"] is not None else "–"
        print(f"| {s['target']} | {s['method']} | {s['level']} | {100 * s['sparsity']:.2f}% | "
              f"{pct(s['test_acc_mean'])} ± {pct(s['test_acc_std'])} | {s['n']} | {ci} | {pct(s['val_acc_mean'])} |")
    print("\n| target | level | transfer vs | kind | sparsity (transfer / other) | diff (points) | 95% interval | n | p | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in compare(recs):
        ci = f"[{100 * r['diff_low']:+.2f}, {100 * r['diff_high']:+.2f}]" if r["diff_low"] is not None else "–"
        p = "–" if r["p"] is None else f"{r['p']:.3f}"
        print(f"| {r['target']} | {r['level']} | {r['b']} | {r['kind']} | {100 * r['a_sparsity']:.2f}% / "
              f"{100 * r['b_sparsity']:.2f}% | {100 * r['diff_mean']:+.2f} | {ci} | {r['n']} | {p} | {r['verdict']} |")


if __name__ == "__main__":
    main(sys.argv[1])
