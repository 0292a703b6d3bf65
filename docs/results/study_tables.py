"""Markdown tables of an E-LTH study for docs/results_mlp_2026-11.md, from run directories that share
one step cache: the dense depth check, per target and level every method with its 95%
t-interval and the paired test of the transferred ticket against it (with Holm's
correction over the run's comparisons), the rewind-point comparison, linear mode
connectivity, and the cost of a target ticket by IMP versus by transfer.

    python docs/results/study_tables.py runs/mlp/stretch runs/mlp/squeeze --cache runs/mlp/steps

Accuracies are test accuracies (%); every training also records its validation accuracy
(``val acc``), on which the recipe's hyper-parameters were chosen.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from elastigraph.report import METHOD_ORDER, load_results, summarize
from elastigraph.stats import mean_interval, paired_test


def pct(x: float | None, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.2f}" if sign else f"{100 * x:.2f}"


def fp(p: float | None, missing: str = "–") -> str:
    return missing if p is None else f"{p:.3f}"


def ci(low: float | None, high: float | None, sign: bool = False) -> str:
    return "–" if low is None else f"[{pct(low, sign)}, {pct(high, sign)}]"


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm-Bonferroni adjusted p-values (family = the given tests; None stays None)."""
    idx = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m = len(idx)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, (p, i) in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


def paired(a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]]) -> dict[str, Any] | None:
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    t = paired_test([float(a[s]["test_acc"]) for s in seeds], [float(b[s]["test_acc"]) for s in seeds])
    return {**t.as_dict(), "seeds": seeds}


def by_cell(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, int], dict[str, dict[int, Mapping[str, Any]]]]:
    """``{(role, target, level): {method: {seed: record}}}``."""
    cells: dict = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if r.get("test_acc") is not None:
            cells[(r["role"], r["target"], int(r["level"]))][r["method"]][int(r["seed"])] = r
    return cells


def verdict(t: Mapping[str, Any], a: str, b: str) -> str:
    """``paired_test``'s verdict with the two sides named."""
    return {"a better": f"{a} better", "b better": f"{b} better"}.get(t["verdict"], t["verdict"])


def header(res: Mapping[str, Any], run: str) -> str:
    env = res.get("environment", {})
    sizes = res.get("accuracy_splits", {}).get("sizes")
    return (f"`{run}` (recipe `{res['recipe']}`, seeds {res['seeds']}): torch {env.get('torch')}, "
            f"{env.get('threads')} thread(s) per training, {env.get('devices')}, {env.get('machine', '')} "
            f"{env.get('processor', '')}; images {sizes}")


def dense_section(runs: list[tuple[str, dict]], cache: Path) -> None:
    """Dense runs per (model, dataset); deeper vs shallower only on the same dataset."""
    print("### Dense networks: does depth pay?\n")
    dense: dict[str, dict[int, Mapping[str, Any]]] = {}
    data_of: dict[str, str] = {}
    for _, res in runs:
        for r in res["records"]:
            if r["method"] == "dense" and r.get("test_acc") is not None:
                ds = json.loads((cache / r["step"] / "done.json").read_text())["settings"]["dataset"]["name"]
                key = f"{r['model']} on {ds}"
                data_of[key] = ds
                dense.setdefault(key, {})[int(r["seed"])] = r
    print("| model | n | test acc % (mean ± std) | 95% interval | val acc % |")
    print("|---|---|---|---|---|")
    for m, rows in dense.items():
        iv = mean_interval([float(r["test_acc"]) for r in rows.values()])
        vals = [float(r["val_acc"]) for r in rows.values() if r.get("val_acc") is not None]
        print(f"| {m} | {iv.n} | {pct(iv.mean)} ± {pct(iv.std)} | {ci(iv.low, iv.high)} | "
              f"{pct(sum(vals) / len(vals)) if vals else '–'} |")
    models = list(dense)
    if len(models) >= 2:
        print("\n| a − b (same dataset) | diff (points) | 95% interval | n | p | verdict |")
        print("|---|---|---|---|---|---|")
        for i in range(len(models)):
            for j in range(i + 1, len(models)):
                a, b = models[j], models[i]
                if data_of[a] != data_of[b]:
                    continue
                t = paired(dense[a], dense[b])
                if t:
                    print(f"| {a} − {b} | {pct(t['diff_mean'], True)} | {ci(t['diff_low'], t['diff_high'], True)} | "
                          f"{t['n']} | {t['p']:.3f} | {verdict(t, a, b)} |" if t["p"] is not None else
                          f"| {a} − {b} | {pct(t['diff_mean'], True)} | – | {t['n']} | – | no test |")
    print()


def cells_section(run: str, res: Mapping[str, Any]) -> None:
    cells = by_cell(res["records"])
    rows_out = []
    for (role, target, level), methods in cells.items():
        if role != "target" or "transfer" not in methods:
            continue
        ordered = sorted(methods, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99)
        for m in ordered:
            accs = [float(r["test_acc"]) for r in methods[m].values()]
            iv = mean_interval(accs)
            sp = sum(float(r["sparsity"]) for r in methods[m].values()) / len(methods[m])
            vals = [float(r["val_acc"]) for r in methods[m].values() if r.get("val_acc") is not None]
            t = paired(methods["transfer"], methods[m]) if m != "transfer" else None
            rows_out.append((target, level, m, sp, iv, vals, t))
    adj = holm([r[6]["p"] if r[6] else None for r in rows_out])
    print(f"### {res['recipe']}: source {res['source']}\n")
    print(header(res, run) + "\n")
    print("Paired differences are transfer − method over the same seeds; Holm p corrects for all "
          f"{sum(1 for a in adj if a is not None)} comparisons of this table.\n")
    print("| target | level | method | sparsity | test acc % (mean ± std) | 95% interval | val acc % | "
          "transfer − method | 95% interval | p | Holm p | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (target, level, m, sp, iv, vals, t), hp in zip(rows_out, adj):
        v = "–" if t is None else ("no test" if t["p"] is None else verdict(t, "transfer", m))
        print(f"| {target} | {level} | {m} | {100 * sp:.2f}% | {pct(iv.mean)} ± {pct(iv.std)} | {ci(iv.low, iv.high)} | "
              f"{pct(sum(vals) / len(vals)) if vals else '–'} | "
              f"{'' if t is None else pct(t['diff_mean'], True)} | {'' if t is None else ci(t['diff_low'], t['diff_high'], True)} | "
              f"{fp(None if t is None else t['p'], '')} | {fp(hp, '')} | {v if t else ''} |")
    print()


def headline_section(runs: list[tuple[str, dict]]) -> None:
    """One row per transfer (target, level): the transferred ticket, its paired difference
    to the target's own IMP ticket (level- and sparsity-matched), to the strongest other
    baseline (highest mean) and to the permuted copies, and the dense target."""
    print("### Headline\n")
    print("Transfer − X in points over the same seeds: mean [95% interval] (p); Holm p corrects "
          "within each run's table below.\n")
    print("| source -> target | level | sparsity | transfer % | − own IMP, same level (its sparsity) | "
          "− own IMP, same sparsity | − strongest other baseline | − permuted copies | dense target % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for _, res in runs:
        cells = by_cell(res["records"])
        dense = {t: m.get("dense") for (role, t, lv), m in cells.items() if role == "target" and lv == 0}
        for (role, target, level), methods in cells.items():
            if role != "target" or "transfer" not in methods or target.endswith("-zero"):
                continue
            tr = methods["transfer"]
            iv = mean_interval([float(r["test_acc"]) for r in tr.values()])
            sp = sum(float(r["sparsity"]) for r in tr.values()) / len(tr)

            def cell(m: str, show_sparsity: bool = False) -> str:
                if m not in methods:
                    return "–"
                t = paired(tr, methods[m])
                extra = ""
                if show_sparsity:
                    extra = f" ({100 * sum(float(r['sparsity']) for r in methods[m].values()) / len(methods[m]):.1f}%)"
                return (f"{pct(t['diff_mean'], True)} {ci(t['diff_low'], t['diff_high'], True)} "
                        f"(p {fp(t['p'])}){extra}")

            others = [m for m in methods if m not in ("transfer", "imp", "imp-matched", "dense", "permuted")]
            best = max(others, key=lambda m: sum(float(r["test_acc"]) for r in methods[m].values()) / len(methods[m]),
                       default=None)
            d = dense.get(target)
            div = mean_interval([float(r["test_acc"]) for r in d.values()]) if d else None
            print(f"| {res['source']} -> {target} | {level} | {100 * sp:.1f}% | {pct(iv.mean)} {ci(iv.low, iv.high)} | "
                  f"{cell('imp', True)} | {cell('imp-matched')} | "
                  f"{'–' if best is None else best + ': ' + cell(best)} | {cell('permuted')} | "
                  f"{'–' if div is None else pct(div.mean)} |")
    print()


def across_runs_section(runs: list[tuple[str, dict]]) -> None:
    """The transferred tickets of one target and level from different runs (e.g. another
    source task vs the same task), paired over seeds."""
    found: dict[tuple[str, int], list[tuple[str, dict]]] = defaultdict(list)
    for run, res in runs:
        for (role, target, level), methods in by_cell(res["records"]).items():
            if role == "target" and "transfer" in methods:
                found[(target, level)].append((f"{res['source']} ({res['recipe']})", methods["transfer"]))
    rows = [(k, v) for k, v in found.items() if len(v) > 1]
    if not rows:
        return
    print("### One target, tickets from different sources\n")
    print("| target | level | ticket a | ticket b | a % | b % | a − b | 95% interval | n | p | verdict |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for (target, level), tickets in rows:
        for i in range(len(tickets)):
            for j in range(i + 1, len(tickets)):
                (na, a), (nb, b) = tickets[i], tickets[j]
                t = paired(a, b)
                ia = mean_interval([float(r["test_acc"]) for r in a.values()])
                ib = mean_interval([float(r["test_acc"]) for r in b.values()])
                v = "no test" if t["p"] is None else verdict(t, "a", "b")
                print(f"| {target} | {level} | {na} | {nb} | {pct(ia.mean)} | {pct(ib.mean)} | {pct(t['diff_mean'], True)} | "
                      f"{ci(t['diff_low'], t['diff_high'], True)} | {t['n']} | {fp(t['p'])} | {v} |")
    print()


def rewind_section(run: str, res: Mapping[str, Any]) -> None:
    """Targets of one model that differ by start_at_step_zero (label suffix ``-zero``)."""
    cells = by_cell(res["records"])
    pairs = [(t, t + "-zero") for t in res["targets"] if t + "-zero" in res["targets"]]
    if not pairs:
        return
    print(f"### Rewind point ({res['recipe']}): ticket moved with the rewind-step weights vs step 0\n")
    print("| target | level | rewind step k: test acc % | step 0: test acc % | (k) − (0) | 95% interval | n | p | verdict |")
    print("|---|---|---|---|---|---|---|---|---|")
    for a, b in pairs:
        for (role, target, level), methods in cells.items():
            if role != "target" or target != a or "transfer" not in methods:
                continue
            other = cells.get(("target", b, level), {}).get("transfer")
            if not other:
                continue
            t = paired(methods["transfer"], other)
            ia = mean_interval([float(r["test_acc"]) for r in methods["transfer"].values()])
            ib = mean_interval([float(r["test_acc"]) for r in other.values()])
            print(f"| {a} | {level} | {pct(ia.mean)} {ci(ia.low, ia.high)} | {pct(ib.mean)} {ci(ib.low, ib.high)} | "
                  f"{pct(t['diff_mean'], True)} | {ci(t['diff_low'], t['diff_high'], True)} | {t['n']} | "
                  f"{fp(t['p'])} | {verdict(t, 'step k', 'step 0') if t['p'] is not None else 'no test'} |")
    print()


def lmc_section(run: str, res: Mapping[str, Any]) -> None:
    rows = res.get("lmc") or []
    if not rows:
        return
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[(r["target"], r["level"], r["method"])].append(r)
    print(f"### Linear mode connectivity ({res['recipe']})\n")
    print("Error barrier (points of test accuracy lost at the worst interpolation point "
          "below the line between the two ends), two trainings per seed with data orders "
          f"{rows[0].get('data_seeds')}, {len(rows[0]['alphas'])} points.\n")
    print("| target | level | ticket | sparsity | n | barrier (mean) | 95% interval | max over seeds | end-point acc % |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (target, level, method), rs in groups.items():
        iv = mean_interval([float(r["barrier"]) for r in rs])
        ends = [sum(r["endpoint_acc"]) / 2 for r in rs]
        print(f"| {target} | {level} | {method} | {100 * rs[0]['sparsity']:.2f}% | {iv.n} | {pct(iv.mean)} | "
              f"{ci(iv.low, iv.high)} | {pct(max(float(r['barrier']) for r in rs))} | {pct(sum(ends) / len(ends))} |")
    print()


def cost_section(runs: list[tuple[str, dict]], cache: Path) -> None:
    """Per target model and level L: IMP on the target (its dense run + L IMP rounds)
    versus transfer (the source's dense run + L rounds, paid once for every target, plus
    the transfer and one retraining of the target)."""

    def marker(sid: str) -> Mapping[str, Any]:
        return json.loads((cache / sid / "done.json").read_text())

    def chain(sid: str) -> list[Mapping[str, Any]]:
        """The markers of an IMP level and every level before it, down to the dense run."""
        out = [marker(sid)]
        while out[-1]["kind"] == "imp":
            out.append(marker(out[-1]["inputs"]["prev"]))
        return out

    print("### Cost of a target ticket: IMP on the target vs one source IMP + transfer\n")
    print("Optimizer steps are exact; wall-clock is the sum of the steps' `wall_s` (one thread "
          "each, two trainings at a time on the 2 cores), mean over seeds.\n")
    print("| source -> target | level | target IMP: steps | target IMP: wall s | source IMP (shared): steps | "
          "source IMP: wall s | transfer + retrain: steps | transfer + retrain: wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for _, res in runs:
        recs = res["records"]
        src = res["source"]
        tgts = [t for t in res["targets"] if not t.endswith("-zero")]
        levels = sorted({int(r["level"]) for r in recs if r["method"] == "transfer"})
        for tgt in tgts:
            for lv in levels:
                agg = defaultdict(list)
                for seed in res["seeds"]:
                    def one(role, name, method):
                        return [r for r in recs if r["role"] == role and r["target"] == name and int(r["seed"]) == seed
                                and r["method"] == method and int(r["level"]) == lv]
                    t_imp, s_imp, tr = one("target", tgt, "imp"), one("source", src, "imp"), one("target", tgt, "transfer")
                    if not (t_imp and s_imp and tr):
                        continue
                    t_chain, s_chain = chain(t_imp[0]["step"]), chain(s_imp[0]["step"])
                    retrain = marker(tr[0]["step"])
                    agg["t_steps"].append(sum(int(m["result"]["steps"]) for m in t_chain))
                    agg["t_wall"].append(sum(m["result"]["wall_s"] for m in t_chain))
                    agg["s_steps"].append(sum(int(m["result"]["steps"]) for m in s_chain))
                    agg["s_wall"].append(sum(m["result"]["wall_s"] for m in s_chain))
                    agg["x_steps"].append(int(tr[0]["steps"]))
                    agg["x_wall"].append(retrain["result"]["wall_s"] + marker(retrain["inputs"]["mask"])["result"]["wall_s"])
                if not agg:
                    continue
                m = {k: sum(v) / len(v) for k, v in agg.items()}
                print(f"| {src} -> {tgt} | {lv} | {m['t_steps']:,.0f} | {m['t_wall']:,.0f} | {m['s_steps']:,.0f} | "
                      f"{m['s_wall']:,.0f} | {m['x_steps']:,.0f} | {m['x_wall']:,.1f} |")
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--cache", type=Path, help="the runs' shared step cache (default RUN/steps of the first run)")
    args = ap.parse_args()
    runs = [(r, load_results(r)) for r in args.runs]
    cache = args.cache or Path(args.runs[0]) / "steps"
    dense_section(runs, cache)
    headline_section(runs)
    for run, res in runs:
        cells_section(run, res)
        rewind_section(run, res)
        lmc_section(run, res)
    across_runs_section(runs)
    cost_section(runs, cache)


if __name__ == "__main__":
    main()
