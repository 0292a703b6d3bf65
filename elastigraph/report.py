"""Results of a recipe run as tables, CSV and PNG plots (matplotlib, Agg backend).

Reads ``<run>/results.json`` (written by :mod:`elastigraph.recipes.runner`) and writes
``results.csv``, ``summary.csv`` (per cell: mean, sample std, n and the 95% t-interval of
the test accuracy, and the validation accuracy's mean), ``comparisons.csv`` (paired
t-tests across seeds of the transferred ticket against the target's IMP ticket, level-
and sparsity-matched, and against the best other baseline), ``accuracy.png`` (test
accuracy vs sparsity, every method, mean with its 95% interval) and ``layer_density.png``
(per-layer density of the source, transferred and target-IMP tickets). A comparison
calls one side better only when the interval of the paired difference excludes 0.

Everything follows the run's task (``results.json["task"]``; classification when absent):
its primary metric (accuracy, or bits per byte for language modelling), the metric's
direction (which side of an interval is "better", which baseline is "best") and how it is
shown (accuracy as a percentage). Field names carry the metric's key: ``test_acc_mean``,
``test_bpb_mean``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from .errors import ReportError
from .io import write_text
from .stats import mean_interval, paired_test

RECORD_FIELDS = ["seed", "role", "model", "target", "level", "method", "sparsity", "test_acc", "test_loss", "val_acc",
                 "steps", "step"]
SUMMARY_FIELDS = ["role", "target", "method", "level", "sparsity", "test_acc_mean", "test_acc_std", "n",
                  "test_acc_ci_low", "test_acc_ci_high", "val_acc_mean"]
COMPARISON_FIELDS = ["target", "level", "a", "b", "kind", "a_sparsity", "b_sparsity", "a_mean", "b_mean", "diff_mean",
                     "diff_std", "n", "diff_low", "diff_high", "t", "p", "verdict"]
METHOD_ORDER = ["dense", "transfer", "imp", "imp-matched", "reinit", "random", "random-global", "magnitude", "permuted",
                "snip", "grasp", "synflow", "heal"]
REFERENCES = ("imp", "imp-matched", "dense", "heal")
"""Methods that are references for the transferred ticket, not baselines it should beat
(``heal`` continues a trained ticket: another question, reported beside it)."""
LEVEL = 0.95


@dataclass(frozen=True)
class ReportMetric:
    """The metric a report shows: its field key (``acc``: ``test_acc``), label, direction
    and display scale (accuracy: fraction shown x100 as %)."""

    key: str = "acc"
    label: str = "accuracy"
    higher_is_better: bool = True
    scale: float = 100.0
    unit: str = "%"

    def show(self, x: Any, digits: int = 2) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "-"
        return f"{self.scale * x:.{digits if self.scale != 1 else 3}f}"

    @property
    def title(self) -> str:
        return f"{self.label}{f' {self.unit}' if self.unit else ''}"

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


ACCURACY = ReportMetric()


def metric_of(results: Mapping[str, Any] | None) -> ReportMetric:
    """The primary metric of a run (its ``task`` block; accuracy for runs without one)."""
    task = (results or {}).get("task") if isinstance(results, Mapping) else None
    try:
        m = task["metrics"][0]
        return ReportMetric(str(m["key"]), str(m["label"]), bool(m["higher_is_better"]), float(m["scale"]),
                            str(m.get("unit", "")))
    except (TypeError, KeyError, IndexError, ValueError):
        if task is not None:
            raise ReportError("results.json: 'task' must hold a 'metrics' list of {key, label, higher_is_better, "
                              "scale}; rerun `elastigraph run` to rewrite it") from None
        return ACCURACY


def record_fields(m: ReportMetric = ACCURACY, records: Iterable[Mapping[str, Any]] = ()) -> list[str]:
    """results.csv's columns: the metric's, and the healing columns where a run healed."""
    out = ["seed", "role", "model", "target", "level", "method", "sparsity", f"test_{m.key}", "test_loss",
           f"val_{m.key}", "steps", "step"] if m.key != "loss" else list(RECORD_FIELDS)
    if any(r.get("method") == "heal" for r in records):
        out[out.index("steps"):out.index("steps")] = [f"before_{m.key}", "sparsity_before", "sparsity_after"]
    return out


def summary_fields(m: ReportMetric = ACCURACY) -> list[str]:
    k = m.key
    return ["role", "target", "method", "level", "sparsity", f"test_{k}_mean", f"test_{k}_std", "n",
            f"test_{k}_ci_low", f"test_{k}_ci_high", f"val_{k}_mean", "diverged"]


DIVERGED = "diverged"
"""What every report shows instead of a number for a run whose training diverged."""


def _shown_summary(rows: Iterable[Mapping[str, Any]], m: ReportMetric) -> list[dict[str, Any]]:
    """Summary rows for summary.csv: a cell whose every run diverged says ``diverged``."""
    out = []
    for s in rows:
        s = dict(s)
        if s["diverged"] and s["n"] == 0:
            for f in (f"test_{m.key}_mean", f"test_{m.key}_std", f"test_{m.key}_ci_low", f"test_{m.key}_ci_high",
                      f"val_{m.key}_mean"):
                s[f] = DIVERGED
        out.append(s)
    return out


def _shown_records(records: Iterable[Mapping[str, Any]], m: ReportMetric) -> list[dict[str, Any]]:
    """Records for results.csv: a diverged run's metric cells say ``diverged``."""
    out = []
    for r in records:
        r = dict(r)
        if r.get("diverged"):
            for f in (f"test_{m.key}", "test_loss", f"val_{m.key}", f"before_{m.key}"):
                if f in r or not f.startswith("before_"):
                    r[f] = DIVERGED
        out.append(r)
    return out


def load_results(run_dir: str | Path) -> dict[str, Any]:
    """Read ``run_dir/results.json``; a clear error if the run has not finished."""
    path = Path(run_dir) / "results.json"
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {str(run_dir)!r} does not exist")
    if not path.is_file():
        raise ReportError(
            f"{path} does not exist: the run in {str(run_dir)!r} has not finished; "
            "run `elastigraph run RECIPE --out DIR` again to resume it"
        )
    from .io import read_json

    data = read_json(path, str(path), error=ReportError)
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise ReportError(f"{path} has no 'records' list; is it an elastigraph results file?")
    if "environment" in data and "task" in data:  # written by the runner: its typed schema, every field checked
        from .recipes.results import validate

        validate(data, str(path))
    _check_records(data["records"], path, metric_of(data))  # what the report reads (also hand-made files)
    ld = data.get("layer_density", [])
    if not isinstance(ld, list) or not all(
        isinstance(e, dict) and isinstance(e.get("target"), str) and isinstance(e.get("level"), int)
        and "seed" in e and all(isinstance(e.get(k, {}), dict) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in e.get(k, {}).values())
            for k in ("source", "transfer", "imp"))
        for e in ld
    ):
        raise ReportError(f"{path}: 'layer_density' is not a list of {{seed, target, level, source/transfer/imp: "
                          "{tensor: density}}} entries; rerun `elastigraph run` to rewrite results.json")
    return data


_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "role": (str,), "target": (str,), "method": (str,), "level": (int,), "sparsity": (int, float),
}


def _check_records(records: list[Any], path: Path, metric: ReportMetric = ACCURACY) -> None:
    """Every record holds the fields the report reads, with the right types (a damaged or
    hand-edited results.json is a ReportError naming the record, never a KeyError)."""
    types = {**_RECORD_TYPES, f"test_{metric.key}": (int, float, type(None))}
    for i, r in enumerate(records):
        if not isinstance(r, dict):
            raise ReportError(f"{path}: records[{i}] is a {type(r).__name__}, expected an object; "
                              "rerun `elastigraph run` to rewrite results.json")
        for key, types_ in types.items():
            v = r.get(key)
            if key not in r or isinstance(v, bool) or not isinstance(v, types_):
                raise ReportError(f"{path}: records[{i}].{key} is {'missing' if key not in r else repr(v)}, "
                                  f"expected {' or '.join(t.__name__ for t in types_)}; rerun `elastigraph run` "
                                  "to rewrite results.json")


def _csv_text(rows: Iterable[Mapping[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def _mean_std(xs: list[float]) -> tuple[float, float]:
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


def summarize(records: Iterable[Mapping[str, Any]], metric: ReportMetric = ACCURACY) -> list[dict[str, Any]]:
    """Mean, sample standard deviation and 95% t-interval of the test ``metric`` over
    seeds, per (role, target, method, level), and its mean on the validation split where
    there is one; sparsity is averaged too (it can drift by seed). Runs whose metric is
    missing (no test set) count in ``n`` but not in the mean. Diverged runs are left out of
    every statistic and of ``n`` and counted in ``diverged``."""
    k = metric.key
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    first_seen: dict[str, int] = {}
    for r in records:
        groups[(r["role"], r["target"], r["method"], int(r["level"]))].append(r)
        first_seen.setdefault(r["target"], len(first_seen))

    def order(key: tuple) -> tuple:  # source first, then targets in recipe order, by level
        role, target, method, level = key
        mi = METHOD_ORDER.index(method) if method in METHOD_ORDER else len(METHOD_ORDER)
        return (role != "source", first_seen[target], level, mi)

    out = []
    for key in sorted(groups, key=order):
        rows = groups[key]
        n_div = sum(1 for r in rows if r.get("diverged"))
        rows = [r for r in rows if not r.get("diverged")]  # diverged runs: counted apart, never in a statistic
        accs = [float(r[f"test_{k}"]) for r in rows if r.get(f"test_{k}") is not None]
        acc_m, acc_s = _mean_std(accs) if accs else (math.nan, math.nan)
        iv = mean_interval(accs, LEVEL)
        vals = [float(r[f"val_{k}"]) for r in rows if r.get(f"val_{k}") is not None]
        sp_m, _ = _mean_std([float(r["sparsity"]) for r in groups[key]])
        out.append({
            "role": key[0], "target": key[1], "method": key[2], "level": key[3],
            "sparsity": sp_m, f"test_{k}_mean": acc_m, f"test_{k}_std": acc_s, "n": len(rows),
            f"test_{k}_ci_low": iv.low, f"test_{k}_ci_high": iv.high,
            f"val_{k}_mean": _mean_std(vals)[0] if vals else None, "diverged": n_div,
        })
    return out


def compare(records: Iterable[Mapping[str, Any]], metric: ReportMetric = ACCURACY) -> list[dict[str, Any]]:
    """Paired t-tests across seeds, per target and level, of the transferred ticket
    (``a``) against: the target's IMP ticket at the same level (``kind="level-matched"``,
    sparsities may differ), its IMP ticket at the transferred sparsity (``imp-matched``,
    ``"sparsity-matched"``) and the best other baseline by mean test accuracy (``"best
    baseline"``). Only seeds present on both sides are paired. ``verdict`` names a
    winner only when the 95% interval of the paired difference excludes 0, by the
    metric's direction (``diff`` is always ``a - b``)."""
    f = f"test_{metric.key}"
    cells: dict[tuple[str, int], dict[str, dict[int, Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    order: dict[tuple[str, int], int] = {}
    for r in records:
        if r["role"] != "target" or r.get(f) is None or r.get("diverged"):  # a diverged run pairs with nothing
            continue
        key = (r["target"], int(r["level"]))
        order.setdefault(key, len(order))
        cells[key][r["method"]][int(r["seed"])] = r
    out = []
    for key in sorted(cells, key=lambda k: order[k]):
        methods = cells[key]
        if "transfer" not in methods:
            continue
        others = [m for m in methods if m != "transfer" and m not in REFERENCES]
        pick = max if metric.higher_is_better else min
        best = pick(others, key=lambda m: _mean_std([float(r[f]) for r in methods[m].values()])[0], default=None)
        plan = [("imp", "level-matched"), ("imp-matched", "sparsity-matched")]
        if best is not None:
            plan.append((best, "best baseline"))
        for b, kind in plan:
            if b not in methods:
                continue
            seeds = sorted(set(methods["transfer"]) & set(methods[b]))
            if not seeds:
                continue
            ra = [methods["transfer"][s] for s in seeds]
            rb = [methods[b][s] for s in seeds]
            test = paired_test([float(r[f]) for r in ra], [float(r[f]) for r in rb], LEVEL,
                               higher_is_better=metric.higher_is_better)
            verdict = {"a better": "transfer better", "b better": f"{b} better"}.get(test.verdict, test.verdict)
            out.append({
                "target": key[0], "level": key[1], "a": "transfer", "b": b, "kind": kind,
                "a_sparsity": _mean_std([float(r["sparsity"]) for r in ra])[0],
                "b_sparsity": _mean_std([float(r["sparsity"]) for r in rb])[0],
                "a_mean": _mean_std([float(r[f]) for r in ra])[0],
                "b_mean": _mean_std([float(r[f]) for r in rb])[0],
                **test.as_dict(), "verdict": verdict,
            })
    return out


HYPOTHESIS_FIELDS = ["comparison", "claim", "level", "a_sparsity", "b_sparsity", "a_mean", "b_mean", "diff_mean",
                     "diff_std", "n", "seeds_missing", "diff_low", "diff_high", "interval", "margin", "p", "p_holm",
                     "verdict"]


def cells_by_seed(records: Iterable[Mapping[str, Any]], key: str) -> dict[tuple[str, str, int], dict[int, Mapping[str, Any]]]:
    """``(label, method, level)`` -> {seed: record} over the records with a number (a
    diverged run pairs with nothing); ``dense`` cells are level 0."""
    out: dict[tuple[str, str, int], dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        if r.get(key) is None or r.get("diverged"):
            continue
        out[(str(r["target"]), str(r["method"]), int(r["level"]))][int(r["seed"])] = r
    return out


def check_hypotheses(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run's pre-registered primary comparisons (``results.json["hypotheses"]``, from
    the recipe's ``hypotheses`` section), each tested as declared and corrected together
    with Holm's method; [] for a run without one.

    ``better``: two-sided paired t-test, ``1 - alpha`` interval; ``non-inferior``: one-
    sided test against the margin (``interval`` is the ``1 - 2 alpha`` two-sided one,
    whose end on the worse side is the one-sided bound); ``equivalent``: TOST. A claim's
    ``verdict`` holds only when its Holm-adjusted p is below ``alpha`` (and, for
    ``better``, names the side the difference favours). The intervals are per comparison,
    not adjusted. Seeds are paired; a seed missing on either side is counted in
    ``seeds_missing``, never silently dropped."""
    from .stats import equivalence_test, holm, noninferiority_test

    h = results.get("hypotheses") if isinstance(results, Mapping) else None
    if not h:
        return []
    metric = metric_of(results)
    f = f"test_{metric.key}"
    cells = cells_by_seed(results["records"], f)
    alpha = float(h.get("alpha", 0.05))
    seeds_all = [int(s) for s in results.get("seeds", [])]
    rows: list[dict[str, Any]] = []
    for c in h["primary"]:
        (la, ma), (lb, mb) = c["a"].split("/"), c["b"].split("/")
        level = int(c.get("level", 0))
        ka = (la, ma, 0 if ma == "dense" else level)
        kb = (lb, mb, 0 if mb == "dense" else level)
        A, B = cells.get(ka, {}), cells.get(kb, {})
        seeds = sorted(set(A) & set(B))
        missing = sorted(set(seeds_all) - set(seeds)) if seeds_all else []
        row: dict[str, Any] = {"comparison": f"{c['a']} vs {c['b']}", "claim": c["claim"], "level": level,
                               "n": len(seeds), "seeds_missing": " ".join(map(str, missing))}
        if len(seeds) < 2:
            rows.append({**row, "verdict": "not enough paired seeds", "p": None})
            continue
        a = [float(A[s][f]) for s in seeds]
        b = [float(B[s][f]) for s in seeds]
        b_mean = sum(b) / len(b)
        margin = float(h["margin"]) * (abs(b_mean) if h.get("margin_kind", "relative") == "relative" else 1.0)
        row.update(a_sparsity=sum(float(A[s]["sparsity"]) for s in seeds) / len(seeds),
                   b_sparsity=sum(float(B[s]["sparsity"]) for s in seeds) / len(seeds),
                   a_mean=sum(a) / len(a), b_mean=b_mean)
        if c["claim"] == "better":
            t = paired_test(a, b, 1.0 - alpha, higher_is_better=metric.higher_is_better)
            d = t.as_dict()
            row.update(diff_mean=d["diff_mean"], diff_std=d["diff_std"], diff_low=d["diff_low"],
                       diff_high=d["diff_high"], interval=f"{1 - alpha:.0%} two-sided", margin=None, p=t.p,
                       _side=t.verdict)
        else:
            test = (noninferiority_test(a, b, margin, higher_is_better=metric.higher_is_better, alpha=alpha)
                    if c["claim"] == "non-inferior" else equivalence_test(a, b, margin, alpha=alpha))
            d = test.as_dict()
            row.update(diff_mean=d["diff_mean"], diff_std=d["diff_std"], diff_low=d["diff_low"],
                       diff_high=d["diff_high"], interval=f"{1 - 2 * alpha:.0%} two-sided = one-sided {1 - alpha:.0%} bound",
                       margin=margin, p=test.p)
        rows.append(row)
    adjusted = holm([r.get("p") for r in rows])
    for r, ph in zip(rows, adjusted):
        side = r.pop("_side", None)
        if r.get("verdict"):
            continue
        r["p_holm"] = ph
        ok = ph is not None and ph < alpha
        if r["claim"] == "better":
            a_name, b_name = r["comparison"].split(" vs ")
            r["verdict"] = ({"a better": f"{a_name} better", "b better": f"{b_name} better"}.get(side, "no difference shown")
                            if ok else "no difference shown")
        elif r["claim"] == "non-inferior":
            r["verdict"] = "non-inferior" if ok else "non-inferiority not shown"
        else:
            r["verdict"] = "equivalent" if ok else "equivalence not shown"
    return rows


def heal_summary(records: Iterable[Mapping[str, Any]], metric: ReportMetric = ACCURACY) -> list[dict[str, Any]]:
    """Per (target, level) of the ``heal`` rows: the test metric before and after healing
    (means over seeds), the paired gain (before - after for a lower-is-better metric,
    after - before otherwise; 95% t-interval) and the smallest share of exact zeros
    before and after over seeds. Diverged healings are left out and counted in
    ``diverged`` (a cell of diverged runs only has no numbers: ``after`` is None)."""
    k = metric.key
    cells: dict[tuple[str, int], list[Mapping[str, Any]]] = defaultdict(list)
    div: dict[tuple[str, int], int] = defaultdict(int)
    for r in records:
        if r.get("method") == "heal" and r.get("diverged"):
            div[(r["target"], int(r["level"]))] += 1
            cells.setdefault((r["target"], int(r["level"])), [])
        elif r.get("method") == "heal" and isinstance(r.get("before"), Mapping) and r.get(f"test_{k}") is not None:
            cells[(r["target"], int(r["level"]))].append(r)
    out = []
    sign = 1.0 if metric.higher_is_better else -1.0
    for (target, level), rows in cells.items():
        if not rows:
            out.append({"target": target, "level": level, "before": None, "after": None, "gain": None,
                        "gain_low": None, "gain_high": None, "zeros_before": None, "zeros_after": None, "n": 0,
                        "diverged": div[(target, level)]})
            continue
        before = [float(r["before"][k]) for r in rows]
        after = [float(r[f"test_{k}"]) for r in rows]
        gain = mean_interval([sign * (a - b) for a, b in zip(after, before)], LEVEL)
        out.append({"target": target, "level": level, "before": sum(before) / len(before),
                    "after": sum(after) / len(after), "gain": gain.mean, "gain_low": gain.low, "gain_high": gain.high,
                    "zeros_before": min(float(r.get("sparsity_before", math.nan)) for r in rows),
                    "zeros_after": min(float(r.get("sparsity_after", math.nan)) for r in rows), "n": len(rows),
                    "diverged": div[(target, level)]})
    return out


OFF_SCALE_POINTS = 15.0
"""Accuracy plots keep their y-axis on the cells within this many points of the panel's
best mean; cells further below (a collapsed baseline) are marked at the bottom edge and
named, so that one failure does not flatten every other curve."""


def _clip_outliers(ax: Any, rows: list[dict[str, Any]], metric: ReportMetric = ACCURACY) -> str:
    """Clip the y-axis above far-off cells (see :data:`OFF_SCALE_POINTS`); returns a note
    naming them ("" when none). Accuracy only (a metric shown as a percentage)."""
    if metric != ACCURACY:
        return ""
    means = [100 * s["test_acc_mean"] for s in rows if not math.isnan(s["test_acc_mean"])]
    if not means:
        return ""
    floor = max(means) - OFF_SCALE_POINTS
    kept = [m for m in means if m >= floor]
    if len(kept) == len(means):
        return ""
    lows = [100 * s["test_acc_ci_low"] if s["test_acc_ci_low"] is not None else 100 * s["test_acc_mean"]
            for s in rows if not math.isnan(s["test_acc_mean"]) and 100 * s["test_acc_mean"] >= floor]
    bottom = min(lows) - 1.0
    top = ax.get_ylim()[1]
    ax.set_ylim(bottom, top)
    off = [s for s in rows if not math.isnan(s["test_acc_mean"]) and 100 * s["test_acc_mean"] < floor]
    for s in off:
        ax.annotate("", xy=(100 * s["sparsity"], bottom), xytext=(100 * s["sparsity"], bottom + 0.06 * (top - bottom)),
                    arrowprops={"arrowstyle": "->", "color": "0.3"})
    return "off scale (arrows): " + ", ".join(f"{s['method']} {100 * s['test_acc_mean']:.1f}% at {100 * s['sparsity']:.1f}%"
                                              for s in off)


def plot_accuracy(results: Mapping[str, Any], path: str | Path) -> Path:
    """Test accuracy vs sparsity, one panel per model (source first), one line per method
    (mean over seeds, error bars and shading: its 95% t-interval; none for one seed);
    dense runs as a dashed horizontal line."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    metric = metric_of(results)
    k, sc = metric.key, metric.scale
    summary = summarize(results["records"], metric)
    panels: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in summary:
        panels[("source: " if s["role"] == "source" else "target: ") + s["target"]].append(s)
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 3.8), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels.items()):
        by_method: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for s in rows:
            by_method[s["method"]].append(s)
        for method in sorted(by_method, key=lambda m: METHOD_ORDER.index(m) if m in METHOD_ORDER else 99):
            pts = sorted(by_method[method], key=lambda s: s["sparsity"])
            xs = [100 * s["sparsity"] for s in pts]
            ys = [sc * s[f"test_{k}_mean"] for s in pts]
            lo = [sc * s[f"test_{k}_ci_low"] if s[f"test_{k}_ci_low"] is not None else y for s, y in zip(pts, ys)]
            hi = [sc * s[f"test_{k}_ci_high"] if s[f"test_{k}_ci_high"] is not None else y for s, y in zip(pts, ys)]
            if method == "dense":
                ax.axhline(ys[0], ls="--", color="k", lw=1, label="dense")
                if hi[0] > lo[0]:
                    ax.axhspan(lo[0], hi[0], color="k", alpha=0.08, lw=0)
                continue
            line = ax.errorbar(xs, ys, yerr=[[y - a for y, a in zip(ys, lo)], [b - y for y, b in zip(ys, hi)]],
                               marker="o", ms=3, capsize=2, lw=1, label=method)[0]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        note = _clip_outliers(ax, rows, metric)
        div = [s for s in rows if s["diverged"]]
        if div:  # no point for a diverged run: named under the panel's title instead
            note = (note + "\n" if note else "") + f"{DIVERGED}: " + ", ".join(
                f"{s['method']} at {100 * s['sparsity']:.1f}% ({s['diverged']} of {s['diverged'] + s['n']})"
                for s in div)
        ax.set_title(title + (f"\n{note}" if note else ""), fontsize=9)
        ax.set_xlabel("sparsity (%)")
        ax.set_ylabel(f"test {metric.label}{f' ({metric.unit})' if metric.unit else ''} ({metric.direction})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"{results.get('recipe', '')}: {metric.label} vs sparsity (mean and 95% t-interval over seeds "
                 f"{results.get('seeds', '')})", fontsize=10)
    fig.tight_layout()
    return _save_fig(fig, path)


def plot_layer_density(results: Mapping[str, Any], path: str | Path) -> Path:
    """Per-layer density (prunable tensors in model order) of the source ticket, the
    transferred ticket and the target's own IMP ticket, at the highest transferred
    level of the first seed; one panel per target."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    entries = results.get("layer_density") or []
    if entries:
        seed0 = entries[0]["seed"]
        best: dict[str, Mapping[str, Any]] = {}
        for e in entries:
            if e["seed"] == seed0 and (e["target"] not in best or e["level"] > best[e["target"]]["level"]):
                best[e["target"]] = e
        chosen = list(best.values())
    else:
        chosen = []
    n = max(1, len(chosen))
    fig, axes = plt.subplots(n, 1, figsize=(9, 2.8 * n), squeeze=False)
    for ax, e in zip(axes[:, 0], chosen):
        for key, style in (("source", "o-"), ("transfer", "s-"), ("imp", "^-")):
            if key in e:
                ys = [100 * v for v in e[key].values()]
                xs = [i / max(1, len(ys) - 1) for i in range(len(ys))]
                ax.plot(xs, ys, style, ms=3, lw=1, label=f"{key} ({len(ys)} tensors)")
        ax.set_title(f"{e['target']}: per-layer density at source IMP level {e['level']}, seed {e['seed']}", fontsize=9)
        ax.set_xlabel("relative depth of the prunable tensor (0 = stem, 1 = head; model order)")
        ax.set_ylabel("density (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if not chosen:
        axes[0, 0].text(0.5, 0.5, "no transferred tickets in this run", ha="center", va="center")
        axes[0, 0].set_axis_off()
    fig.tight_layout()
    return _save_fig(fig, path)


def _save_fig(fig: Any, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    from .io import atomic_write

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"), suffix=".png")
    finally:
        plt.close(fig)


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """(Re)write ``results.csv``, ``summary.csv``, ``comparisons.csv``, ``accuracy.png`` and
    ``layer_density.png`` in ``run_dir`` from its results.json; returns their paths."""
    run_dir = Path(run_dir)
    results = load_results(run_dir)
    paths = {
        "results_csv": run_dir / "results.csv",
        "summary_csv": run_dir / "summary.csv",
        "comparisons_csv": run_dir / "comparisons.csv",
        "accuracy_png": run_dir / "accuracy.png",
        "layer_density_png": run_dir / "layer_density.png",
    }
    metric = metric_of(results)
    rows = [{**r, f"before_{metric.key}": r["before"].get(metric.key)} if isinstance(r.get("before"), Mapping) else r
            for r in results["records"]]
    write_text(paths["results_csv"], _csv_text(_shown_records(rows, metric), record_fields(metric, results["records"])))
    write_text(paths["summary_csv"], _csv_text(_shown_summary(summarize(results["records"], metric), metric),
                                               summary_fields(metric)))
    write_text(paths["comparisons_csv"], _csv_text(compare(results["records"], metric), COMPARISON_FIELDS))
    if results.get("hypotheses"):
        paths["hypotheses_csv"] = run_dir / "hypotheses.csv"
        write_text(paths["hypotheses_csv"], _csv_text(check_hypotheses(results), HYPOTHESIS_FIELDS))
    import matplotlib

    # labels are user text: '$' must not start matplotlib mathtext ('$\\x$' would crash)
    with matplotlib.rc_context({"text.parse_math": False}):
        plot_accuracy(results, paths["accuracy_png"])
        plot_layer_density(results, paths["layer_density_png"])
    return paths


def _pct(x: Any, digits: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.{digits}f}"


def summary_table(results: Mapping[str, Any]):
    """Rich tables: :func:`summarize` (mean, std, n, 95% interval per cell) and
    :func:`compare` (paired tests of the transferred ticket, with p-values)."""
    from rich.console import Group
    from rich.markup import escape
    from rich.table import Table

    recs = results["records"]
    m = metric_of(results)
    k, show = m.key, m.show
    t = Table(title=f"{escape(str(results.get('recipe', 'run')))}: test {m.title} ({m.direction}) over "
                    f"{len(results.get('seeds', []) or [0])} seed(s): mean ± sample std, n, 95% t-interval")
    for col, just in (("model", "left"), ("role", "left"), ("method", "left"), ("level", "right"),
                      ("sparsity", "right"), (m.title, "right"), ("n", "right"), ("95% interval", "right"),
                      (f"val{f' {m.unit}' if m.unit else ''}", "right")):
        t.add_column(col, justify=just, overflow="fold")  # type: ignore[arg-type]
    for s in summarize(recs, m):
        acc = show(s[f"test_{k}_mean"]) + (f" ± {show(s[f'test_{k}_std'])}" if s["n"] > 1 else "")
        if s["diverged"]:  # never a number for a diverged run
            acc = DIVERGED if s["n"] == 0 else f"{acc} ({s['diverged']} {DIVERGED})"
        ci = f"[{show(s[f'test_{k}_ci_low'])}, {show(s[f'test_{k}_ci_high'])}]" if s[f"test_{k}_ci_low"] is not None else "-"
        t.add_row(escape(str(s["target"])), escape(str(s["role"])), escape(str(s["method"])), str(s["level"]), f"{100 * s['sparsity']:.2f}%", acc,
                  str(s["n"]), ci, show(s[f"val_{k}_mean"]))
    heal = heal_summary(recs, m)
    if heal:
        h = Table(title=f"healing: the source's trained ticket moved onto the target, then trained under its mask "
                        f"(test {m.title}; zeros: share of exact zeros in the masked tensors)")
        for col in ("target", "level", "before", "after", "gain (95% interval)", "zeros before", "zeros after", "n"):
            h.add_column(col, overflow="fold")
        for r in heal:
            n = str(r["n"]) + (f" ({r['diverged']} {DIVERGED})" if r["diverged"] else "")
            if r["n"] == 0:  # every healing of this cell diverged: no number
                h.add_row(escape(str(r["target"])), str(r["level"]), "-", DIVERGED, DIVERGED, "-", "-", n)
                continue
            ci = f" [{show(r['gain_low'])}, {show(r['gain_high'])}]" if r["gain_low"] is not None else ""
            h.add_row(escape(str(r["target"])), str(r["level"]), show(r["before"]), show(r["after"]),
                      show(r["gain"]) + ci, f"{100 * r['zeros_before']:.3f}%", f"{100 * r['zeros_after']:.3f}%",
                      n)
        t = Group(t, h)
    hyp = check_hypotheses(results)
    if hyp:
        hy = Table(title=f"pre-registered primary comparisons (Holm over these {len(hyp)}; margin "
                         f"{results['hypotheses']['margin']:g} {results['hypotheses'].get('margin_kind', 'relative')}; "
                         f"difference a - b in test {m.label}, {m.direction})")
        for col in ("comparison", "claim", "level", "sparsity a / b", "diff", "interval", "margin", "n", "p", "Holm p",
                    "verdict"):
            hy.add_column(col, overflow="fold")
        for r in hyp:
            if r.get("diff_mean") is None:
                hy.add_row(escape(r["comparison"]), r["claim"], str(r["level"]), "-", "-", "-", "-", str(r["n"]), "-",
                           "-", escape(r["verdict"]))
                continue
            ci = f"[{show(r['diff_low'])}, {show(r['diff_high'])}]" if r["diff_low"] is not None else "-"
            hy.add_row(escape(r["comparison"]), r["claim"], str(r["level"]),
                       f"{100 * r['a_sparsity']:.2f}% / {100 * r['b_sparsity']:.2f}%",
                       ("+" if r["diff_mean"] >= 0 else "") + show(r["diff_mean"]),
                       f"{ci} ({r['interval'].split(' ')[0]})", "-" if r["margin"] is None else show(r["margin"]),
                       str(r["n"]) + (f" (missing {r['seeds_missing']})" if r["seeds_missing"] else ""),
                       "-" if r["p"] is None else f"{r['p']:.3g}",
                       "-" if r.get("p_holm") is None else f"{r['p_holm']:.3g}", f"[bold]{escape(r['verdict'])}[/bold]")
        t = Group(t, hy)
    rows = compare(recs, m)
    if not rows:
        return t
    c = Table(title="transfer vs references and the best baseline: paired t-test over seeds "
                    f"(difference in test {m.label}{' points' if m.unit == '%' else ''}, {m.direction}; a side is "
                    "better only if the 95% interval excludes 0)")
    for col in ("target", "level", "vs", "kind", "sparsity a / b", "diff", "95% interval", "n", "p", "verdict"):
        c.add_column(col, overflow="fold")
    for r in rows:
        ci = f"[{show(r['diff_low'])}, {show(r['diff_high'])}]" if r["diff_low"] is not None else "-"
        p = "-" if r["p"] is None else f"{r['p']:.3g}"
        verdict = escape(r["verdict"]) if r["verdict"] == "no difference shown" else f"[bold]{escape(r['verdict'])}[/bold]"
        c.add_row(escape(str(r["target"])), str(r["level"]), escape(str(r["b"])), escape(str(r["kind"])),
                  f"{100 * r['a_sparsity']:.2f}% / {100 * r['b_sparsity']:.2f}%",
                  ("+" if r["diff_mean"] >= 0 else "") + show(r["diff_mean"]),
                  ci, str(r["n"]), p, verdict)
    return Group(t, c)
