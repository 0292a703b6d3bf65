"""Generate docs/results.md and the README's results paragraph from the committed study
results, and check that they are up to date (issue 19, section 4: nothing stale by
construction).

Inputs, all committed:
- ``docs/results/runs/<run>/results.json``: a study run's records as the runner wrote
  them (its recipe's pre-registered ``hypotheses`` included); the step cache is not needed.
- ``docs/results/*_depth_regime.json``: the dense depth searches (section 1).
- ``docs/results/lm_copies.json``: the trained copies' similarity in the stretch run.

Every number of the page and of the README block between ``<!-- results:begin -->`` and
``<!-- results:end -->`` is computed here, with the statistics of ``elastigraph.report``
and ``elastigraph.stats`` (the same code as the runner's reports), and every claim's
wording follows its test's verdict.

    python docs/results/make_results.py            # rewrite docs/results.md and the README block
    python docs/results/make_results.py --check    # exit 1 and show the difference if either is stale

The test suite runs ``--check``.
"""

from __future__ import annotations

import argparse
import difflib
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable, Mapping

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from elastigraph.report import cells_by_seed, check_hypotheses, metric_of, summarize  # noqa: E402
from elastigraph.stats import mean_interval, paired_test  # noqa: E402

HERE = ROOT / "docs" / "results"
PAGE = ROOT / "docs" / "results.md"
README = ROOT / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"

STUDY_RUNS = (
    ("lm_study_stretch", "recipes/lm_study_stretch.yaml"),
    ("lm_study_squeeze", "recipes/lm_study_squeeze.yaml"),
    ("lm_study_drop", "recipes/lm_study_drop.yaml"),
)
"""The committed study runs, in page order, with the recipe each came from."""


# ----------------------------------------------------------------------------- formatting


def _f(x: float | None, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(p: float | None) -> str:
    if p is None:
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.001 else f"{p:.3f}"


def _peq(p: float | None) -> str:
    """``p`` after a name: '= 0.012' or '< 0.0001'."""
    s = _p(p)
    return s if s.startswith("<") else f"= {s}"


def _pct(x: float | None, digits: int = 1) -> str:
    return "–" if x is None else f"{100 * x:.{digits}f}%"


def _table(head: list[str], rows: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def _env_line(env: Mapping[str, Any], workers: str) -> str:
    return (f"torch {env.get('torch')}, Python {env.get('python')}, {env.get('machine')} CPU, "
            f"{env.get('threads')} torch thread per training, {workers}")


# ----------------------------------------------------------------------------- regimes


def _regime_section(name: str, data: Mapping[str, Any], *, family: str, unit: str, scale: float,
                    higher_is_better: bool, key: str, group: str | None) -> tuple[str, list[dict[str, Any]]]:
    """A depth search's table (every cell, n) and its paired differences; returns the
    markdown and the pairs where the deeper network is better on both splits."""
    rows = data["rows"]
    groups = sorted({r[group] for r in rows}) if group else [None]
    depths = sorted({r["depth"] for r in rows})
    cells = []
    for g in groups:
        for d in depths:
            rs = [r for r in rows if r["depth"] == d and (g is None or r[group] == g)]
            val = [scale * r[f"val_{key}"] for r in rs]
            test = [scale * r[f"test_{key}"] for r in rs]
            cells.append(([str(g)] if group else []) + [
                str(d), f"{rs[0]['params']:,}", f"{_f(_mean(val))} ± {_f(_sd(val))}",
                f"{_f(_mean(test))} ± {_f(_sd(test))}", str(len(rs))])
    head = ([group] if group else []) + ["depth", "parameters", f"validation {unit} (mean ± sd)",
                                         f"test {unit} (mean ± sd)", "n"]
    pairs_out = []
    prow = []
    for p in data["paired"]:
        verdict = {"a better": "deeper better", "b better": "shallower better"}.get(p["verdict"], p["verdict"])
        prow.append(([str(p[group])] if group else []) + [
            f"{p['deeper']} − {p['shallower']}", p["split"], _f(scale * p["diff_mean"], sign=True),
            f"[{_f(scale * p['diff_low'])}, {_f(scale * p['diff_high'])}]", str(p["n"]), _p(p["p"]), verdict])
        pairs_out.append({**p, "shown": verdict})
    ptable = _table(([group] if group else []) + ["deeper − shallower", "split", f"difference ({unit})",
                                                   "95% interval", "n", "p", "verdict"], prow)
    direction = "higher is better" if higher_is_better else "lower is better"
    text = (f"**{family}** (`{name}`; {direction}; paired by seed):\n\n" + _table(head, cells) + "\n\n" + ptable)
    return text, pairs_out


def _mean(xs: list[float]) -> float:
    return mean_interval(xs).mean


def _sd(xs: list[float]) -> float:
    sd = mean_interval(xs).std
    return math.nan if sd is None else sd


REGIMES = (
    ("lm_depth_regime.json", dict(family="Byte-level Llama (transformer), dense, 1,000 steps", unit="bits per byte",
                                  scale=1.0, higher_is_better=False, key="bpb", group=None)),
    ("mlp_depth_regime.json", dict(family="MLP on Fashion-MNIST, dense, 11 epochs", unit="accuracy, points",
                                   scale=100.0, higher_is_better=True, key="acc", group="width")),
)


# ----------------------------------------------------------------------------- study runs


def _load_run(name: str) -> dict[str, Any] | None:
    path = HERE / "runs" / name / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _summary_table(res: Mapping[str, Any]) -> str:
    m = metric_of(res)
    k = m.key
    rows = []
    for s in summarize(res["records"], m):
        if s["method"] == "heal":
            continue
        ci = (f"[{_f(s[f'test_{k}_ci_low'])}, {_f(s[f'test_{k}_ci_high'])}]"
              if s[f"test_{k}_ci_low"] is not None else "–")
        rows.append([s["target"], s["role"], s["method"], str(s["level"]), _pct(s["sparsity"], 2),
                     f"{_f(s[f'test_{k}_mean'])} ± {_f(s[f'test_{k}_std'])}", ci, _f(s[f"val_{k}_mean"]),
                     str(s["n"]) + (f" ({s['diverged']} diverged)" if s["diverged"] else "")])
    return _table(["model", "role", "method", "level", "sparsity", f"test {m.label} (mean ± sd)", "95% interval",
                   f"validation {m.label}", "n"], rows)


def _hypotheses_table(rows: list[dict[str, Any]]) -> str:
    out = []
    for r in rows:
        if r.get("diff_mean") is None:
            out.append([r["comparison"], r["claim"], "–", "–", "–", "–", str(r["n"]), "–", "–", r["verdict"]])
            continue
        out.append([r["comparison"], r["claim"], f"{_pct(r['a_sparsity'], 2)} / {_pct(r['b_sparsity'], 2)}",
                    _f(r["diff_mean"], sign=True), f"[{_f(r['diff_low'])}, {_f(r['diff_high'])}] ({r['interval']})",
                    "–" if r["margin"] is None else _f(r["margin"], 4),
                    str(r["n"]) + (f" (missing: {r['seeds_missing']})" if r["seeds_missing"] else ""),
                    _p(r["p"]), _p(r.get("p_holm")), f"**{r['verdict']}**"])
    return _table(["comparison (a vs b)", "claim", "sparsity a / b", "a − b", "interval", "margin", "n", "p",
                   "Holm p", "verdict"], out)


def _descriptive(res: Mapping[str, Any], pairs: list[tuple[str, str, int]]) -> str:
    """Uncorrected paired tests ``a - b`` for the listed (a, b, level) cells ("label/method")."""
    m = metric_of(res)
    f = f"test_{m.key}"
    cells = cells_by_seed(res["records"], f)  # the report's own pairing: records with a number, by seed
    rows = []
    for a, b, level in pairs:
        ka = (*a.split("/"), 0 if a.endswith("/dense") else level)
        kb = (*b.split("/"), 0 if b.endswith("/dense") else level)
        A, B = cells.get(ka), cells.get(kb)
        if not A or not B:
            continue
        seeds = sorted(set(A) & set(B))
        if len(seeds) < 2:
            continue
        t = paired_test([float(A[s][f]) for s in seeds], [float(B[s][f]) for s in seeds],
                        higher_is_better=m.higher_is_better)
        verdict = {"a better": f"{a} better", "b better": f"{b} better"}.get(t.verdict, t.verdict)
        sa = _mean([float(A[s]["sparsity"]) for s in seeds])
        sb = _mean([float(B[s]["sparsity"]) for s in seeds])
        rows.append([f"{a} vs {b}", f"{_pct(sa, 2)} / {_pct(sb, 2)}", _f(t.diff.mean, sign=True),
                     f"[{_f(t.diff.low)}, {_f(t.diff.high)}]", str(t.diff.n), _p(t.p), verdict])
    return _table(["comparison (a vs b)", "sparsity a / b", "a − b", "95% interval", "n", "p (uncorrected)",
                   "verdict"], rows)


def _claim_sentence(r: Mapping[str, Any], unit: str, higher_is_better: bool) -> str:
    a, b = r["comparison"].split(" vs ")
    if r.get("diff_mean") is None:
        return f"- {a} vs {b} ({r['claim']}): {r['verdict']}."
    diff = f"{_f(r['diff_mean'], sign=True)} {unit} [{_f(r['diff_low'])}, {_f(r['diff_high'])}]"
    if r["claim"] == "non-inferior":
        bound = "lower" if higher_is_better else "upper"  # the end on the worse side
        if r["verdict"] == "non-inferior":
            return (f"- **{a} is non-inferior to {b}** at the pre-registered margin of {_f(r['margin'], 4)} {unit}: "
                    f"difference {diff} ({r['interval']}), Holm p {_peq(r['p_holm'])}, n = {r['n']}.")
        return (f"- **Non-inferiority of {a} to {b} is not shown** at the margin of {_f(r['margin'], 4)} {unit}: "
                f"difference {diff} ({r['interval']}; the {bound} end must lie inside the margin), "
                f"Holm p {_peq(r['p_holm'])}, n = {r['n']}. This is not evidence of a difference either.")
    if r["claim"] == "equivalent":
        word = "equivalent" if r["verdict"] == "equivalent" else "not shown equivalent"
        return f"- {a} and {b} are **{word}** within ±{_f(r['margin'], 4)} {unit}: {diff}, Holm p {_peq(r['p_holm'])}."
    return (f"- {a} vs {b}: {diff} ({r['interval']}), Holm p {_peq(r['p_holm'])}, n = {r['n']}: "
            f"**{r['verdict']}**.")


STUDY_TEXT = {
    "lm_study_stretch": dict(
        title="Stretch: the 2-layer Llama's ticket on 4 layers",
        descriptive=[("Llama4/transfer", "Llama4/imp", 2), ("Llama4/transfer", "Llama4/random", 2),
                     ("Llama4/transfer", "Llama4/magnitude", 2), ("Llama4/transfer", "Llama4/reinit", 2),
                     ("Llama4/transfer", "Llama4/permuted", 2), ("Llama4/imp-matched", "Llama2/imp", 2),
                     ("Llama4/dense", "Llama2/dense", 0), ("Llama4/transfer", "Llama4/dense", 2)]),
    "lm_study_squeeze": dict(
        title="Squeeze: the 4-layer Llama's ticket on 2 layers",
        descriptive=[("Llama2/transfer", "Llama2/imp", 2), ("Llama2/transfer", "Llama2/random", 2),
                     ("Llama2/transfer", "Llama2/magnitude", 2), ("Llama2/transfer", "Llama2/reinit", 2),
                     ("Llama4/imp", "Llama2/transfer", 2), ("Llama4/dense", "Llama2/dense", 0)]),
    "lm_study_drop": dict(
        title="Which blocks to drop: keep-first, even, block influence",
        descriptive=[("Llama2/transfer", "Llama2/imp-matched", 2),
                     ("Llama2-even/transfer", "Llama2-even/imp-matched", 2),
                     ("Llama2-influence/transfer", "Llama2-influence/imp-matched", 2),
                     ("Llama2-influence/transfer", "Llama2-even/transfer", 2)],
        # the strategies keep blocks of different density, so their tickets' sparsities differ:
        # each ticket against the target's own IMP ticket at its exact sparsity, then those gaps compared
        gaps=[(("Llama2-even/transfer", "Llama2-even/imp-matched"), ("Llama2/transfer", "Llama2/imp-matched"), 2),
              (("Llama2-influence/transfer", "Llama2-influence/imp-matched"),
               ("Llama2/transfer", "Llama2/imp-matched"), 2)]),
}


def _plans(res: Mapping[str, Any]) -> str:
    """Which source blocks each target's transfer used, over seeds (``layer_density[].mapping``)."""
    by: dict[str, dict[str, list[int]]] = {}
    for e in res.get("layer_density", []):
        if e.get("mapping"):
            by.setdefault(e["target"], {}).setdefault(e["mapping"], []).append(e["seed"])
    if not by:
        return ""
    rows = [[t, f"`{m}`", ", ".join(map(str, sorted(seeds))), str(len(seeds))]
            for t, ms in by.items() for m, seeds in sorted(ms.items(), key=lambda kv: -len(kv[1]))]
    return ("Plans used (source block: target blocks, the paper code's format), by seed:\n\n"
            + _table(["model", "plan", "seeds", "n"], rows) + "\n\n")


def _gaps(res: Mapping[str, Any], gaps: list[tuple[tuple[str, str], tuple[str, str], int]]) -> str:
    """Paired tests of (a - a_ref) - (b - b_ref): two tickets at different sparsities, each
    measured against the target's own IMP ticket at its exact sparsity."""
    m = metric_of(res)
    f = f"test_{m.key}"
    cells = cells_by_seed(res["records"], f)
    rows = []
    for (a, ar), (b, br), level in gaps:
        ks = [(*x.split("/"), level) for x in (a, ar, b, br)]
        if not all(cells.get(k) for k in ks):
            continue
        seeds = sorted(set.intersection(*(set(cells[k]) for k in ks)))
        if len(seeds) < 2:
            continue
        v = [[float(cells[k][s][f]) for s in seeds] for k in ks]
        t = paired_test([x - y for x, y in zip(v[0], v[1])], [x - y for x, y in zip(v[2], v[3])],
                        higher_is_better=m.higher_is_better)
        verdict = {"a better": f"{a.split('/')[0]} closer to its IMP", "b better": f"{b.split('/')[0]} closer to its IMP"}
        rows.append([f"({a} − {ar}) vs ({b} − {br})", _f(t.diff.mean, sign=True),
                     f"[{_f(t.diff.low)}, {_f(t.diff.high)}]", str(t.diff.n), _p(t.p),
                     verdict.get(t.verdict, t.verdict)])
    if not rows:
        return ""
    return ("The strategies keep blocks of different density, so the three tickets are not at one sparsity "
            "(table above). Sparsity-matched reading, descriptive: each ticket minus the 2-layer model's own IMP "
            "ticket at that ticket's exact sparsity, compared between strategies (paired by seed, uncorrected):\n\n"
            + _table(["comparison of gaps", "difference", "95% interval", "n", "p (uncorrected)", "verdict"], rows)
            + "\n")


def _study_section(name: str, recipe: str, res: Mapping[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    spec = STUDY_TEXT[name]
    head = f"### {spec['title']}\n\nRecipe `{recipe}` (its header states the design, the seeds' power calculation "
    head += "and the command); results: `docs/results/runs/" + name + "/results.json`.\n\n"
    if res is None:
        return head + "Not run yet: no committed results.\n", []
    m = metric_of(res)
    hyp = check_hypotheses(res)
    h = res.get("hypotheses") or {}
    env = res.get("environment", {})
    text = head + (f"{len(res.get('seeds', []))} seeds ({', '.join(map(str, res.get('seeds', [])))}); "
                   f"{_env_line(env, 'two worker processes')}. Test {m.label}, {m.direction}.\n\n")
    if hyp:
        text += (f"**Pre-registered** (in the recipe before the run): {len(hyp)} primary comparison(s), Holm's "
                 f"correction over exactly these, margin {h.get('margin')} ({h.get('margin_kind', 'relative')}"
                 f"{' to b' if h.get('margin_kind', 'relative') == 'relative' else ''}), alpha "
                 f"{h.get('alpha', 0.05)}.\n\n")
        text += _hypotheses_table(hyp) + "\n\n"
        text += "\n".join(_claim_sentence(r, m.label, m.higher_is_better) for r in hyp) + "\n\n"
    text += "Every cell (mean ± sample sd over seeds, 95% t-interval):\n\n" + _summary_table(res) + "\n\n"
    text += _plans(res)
    text += ("Descriptive comparisons (paired by seed, 95% interval, **not** corrected for multiple testing, "
             "so not claims):\n\n" + _descriptive(res, spec["descriptive"]) + "\n")
    if spec.get("gaps"):
        gap = _gaps(res, spec["gaps"])
        text += ("\n" + gap) if gap else ""
    return text, hyp


def _copies_section() -> str:
    """The permuted-copies surprise of the stretch run, measured on its trained weights
    (docs/results/lm_copies.py); empty when that measurement is not committed."""
    path = HERE / "lm_copies.json"
    if not path.is_file():
        return ""
    d = json.loads(path.read_text())
    s = d["summary"]
    rows = []
    for m, what in (("transfer", "stretched ticket (identical weights and masks in the copies)"),
                    ("permuted", "permuted copies (identical weights, shuffled masks)"),
                    ("reinit", "reinit (identical masks, fresh weights)")):
        f, u = s.get(f"{m}_final_cos"), s.get(f"{m}_update_cos")
        bpb = [r[f"{m}_test_bpb"] for r in d["rows"]]
        rows.append([what, f"{_f(f['mean'])} [{_f(f['low'])}, {_f(f['high'])}]",
                     f"{_f(u['mean'])} [{_f(u['low'])}, {_f(u['high'])}]" if u else "– (start not cached)",
                     _f(_mean(bpb)), str(f["n"])])
    dt = s["transfer_minus_permuted_final_cos"]
    du = s["transfer_minus_permuted_update_cos"]
    mapping = sorted({r["mapping"] for r in d["rows"] if "mapping" in r})
    return (
        "#### Why the permuted copies train better: the copies stay alike\n\n"
        f"The stretch maps source blocks to target blocks as `{', '.join(mapping)}`, so target blocks "
        f"{', '.join(map(str, d['copies_of_block_1']))} start as copies of block 1. Measured on the trained "
        "weights of the same runs (no training; `" + d["command"] + f"`, torch {d['torch']}): the cosine "
        "similarity of block 1's projection weights with its copies' (mean over the copies), after training "
        "and of the updates (final − start), mean over seeds with 95% intervals:\n\n"
        + _table(["ticket", "cos(block 1, copy) after training", "cos of the updates", "test bits per byte", "n"],
                 rows)
        + "\n\n"
        f"In the stretched ticket the copies learn alike: their updates point the same way (ticket − permuted "
        f"{_f(du['diff_mean'], sign=True)} [{_f(du['diff_low'])}, {_f(du['diff_high'])}], paired p {_p(du['p'])}; "
        f"after training {_f(dt['diff_mean'], sign=True)} [{_f(dt['diff_low'])}, {_f(dt['diff_high'])}]), so part "
        "of the added depth repeats block 1. Shuffling the copies' masks (permuted) or drawing fresh weights "
        "(reinit) lets them diverge. Read together: the permuted baseline is the intervention that keeps the "
        "rewound weights and breaks only the copies' mask symmetry, it trains better than the ticket (table "
        "above), and with it the copies stop learning alike; that their alikeness is *why* the ticket trains "
        "worse is the likeliest reading, not a separate test. Reinit breaks the symmetry too and still trains "
        "worse than the ticket (it also loses the rewound weights of every block). A stretch strategy that "
        "decorrelates the copies on purpose is the obvious next experiment; it is not run.\n"
    )


# ----------------------------------------------------------------------------- page


def build() -> tuple[str, str]:
    """(docs/results.md, README block)."""
    parts = [
        "# E-LTH where depth pays: the generated results page",
        "",
        "<!-- Generated by docs/results/make_results.py from committed results; do not edit by hand: "
        "`python docs/results/make_results.py` rewrites it, `--check` (run by the test suite) fails when "
        "it is stale. -->",
        "",
        "Every number on this page is computed by `docs/results/make_results.py` from results committed "
        "beside it (`docs/results/runs/*/results.json`, `docs/results/*_depth_regime.json`), with the "
        "statistics of `elastigraph.report` and `elastigraph.stats`; every claim's wording follows its "
        "test. Conventions: means over seeds with the sample standard deviation; 95% Student-t "
        "intervals; paired tests by seed (same seed = same initialisation and data order); claims rest "
        "on the comparisons each recipe pre-registers (its `hypotheses` section: the primary "
        "comparisons, Holm's correction over exactly those, a non-inferiority margin tested one-sided); "
        "\"matches\" is said only where non-inferiority at that margin is shown, never from a "
        "non-significant difference. Machine: a 2-core x86_64 CPU machine shared with other jobs, no "
        "GPU; each run's software is named with it.",
        "",
        "The earlier, hand-written MLP study (full Fashion-MNIST, 5 seeds, MLPs of width 300 where depth "
        "did not pay) is in [results_mlp_2026-11.md](results_mlp_2026-11.md), with the stale numbers a "
        "review found listed at its top; its runs predate committed results, so it is not regenerated "
        "here until it is rerun.",
        "",
        "## 1. Where does depth pay? (dense networks, every regime tried)",
        "",
        "A regime counts when the deeper dense network beats the shallower one on the test split with a "
        "95% interval that excludes 0, the settings having been fixed before (nothing chosen on test; "
        "validation is shown beside test so a reader can see whether the two agree).",
        "",
    ]
    readme_regimes = []
    for fname, kw in REGIMES:
        path = HERE / fname
        if not path.is_file():
            parts += [f"`{fname}`: not run yet.", ""]
            continue
        data = json.loads(path.read_text())
        text, pairs = _regime_section(fname, data, **kw)
        parts += [text, "",
                  f"Command: `{data.get('command', 'OMP_NUM_THREADS=1 python docs/results/' + fname.replace('.json', '.py'))}`"
                  f" (torch {data.get('torch')}, {data.get('threads_per_worker', 1)} thread per training, "
                  f"{data.get('workers', 1)} worker processes).", ""]
        pays = [p for p in pairs if p["split"] == "test" and p["shown"] == "deeper better"]
        val_ok = {(p.get(kw["group"]) if kw["group"] else None, p["deeper"], p["shallower"])
                  for p in pairs if p["split"] == "val" and p["shown"] == "deeper better"}
        pays = [p for p in pays if (p.get(kw["group"]) if kw["group"] else None, p["deeper"], p["shallower"]) in val_ok]
        label = kw["family"].split(",")[0]
        if pays:
            desc = "; ".join(
                (f"width {p[kw['group']]}: " if kw["group"] else "") + f"{p['deeper']} vs {p['shallower']} layers "
                f"{_f(kw['scale'] * p['diff_mean'], sign=True)} [{_f(kw['scale'] * p['diff_low'])}, "
                f"{_f(kw['scale'] * p['diff_high'])}]" for p in pays)
            parts += [f"Depth pays for the {label} (test split, validation agrees): {desc} ({kw['unit']}).", ""]
            readme_regimes.append(f"{label}: {desc} ({kw['unit']}, test)")
        else:
            parts += [f"Depth does not pay for the {label} in any cell tried (no test-split interval excludes 0 "
                      "in the deeper network's favour with validation agreeing).", ""]
            readme_regimes.append(f"{label}: depth did not pay in any cell tried")
    parts += ["## 2. The transformer study: does a transferred ticket keep what depth is worth?", ""]
    claims = []
    for name, recipe in STUDY_RUNS:
        res = _load_run(name)
        text, hyp = _study_section(name, recipe, res)
        parts += [text]
        if name == "lm_study_stretch" and res is not None and _copies_section():
            parts += [_copies_section()]
        if res is not None:
            m = metric_of(res)
            claims += [_claim_sentence(r, m.label, m.higher_is_better) for r in hyp]
    parts += [
        "## 3. What these runs do not show",
        "",
        "- One transformer family at one small size (2 and 4 layers of width 64, a byte-level corpus); "
        "the CIFAR-ResNet study of the paper needs a GPU, which this work was not lent.",
        "- One sparsity level (two IMP rounds of 40%, about 64%); the paper's grid goes much sparser.",
        "- The MLP family's comparison in its depth-paying regime (section 1) is not run yet.",
        "",
    ]
    page = "\n".join(parts).rstrip() + "\n"
    readme = [
        BEGIN,
        "Generated from committed results by `docs/results/make_results.py` (checked by the tests); "
        "details, every cell and the commands: [docs/results.md](docs/results.md).",
        "",
        "- Where depth pays (dense, 5 seeds): " + "; ".join(readme_regimes) + ".",
    ]
    if claims:
        readme += ["- The byte-level Llama study's pre-registered claims (Holm-corrected):"]
        readme += ["  " + c for c in claims]
    readme.append(END)
    return page, "\n".join(readme) + "\n"


def _readme_with(block: str) -> str:
    text = README.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"README.md has no {BEGIN} ... {END} block to fill")
    pre, rest = text.split(BEGIN, 1)
    _, post = rest.split(END, 1)
    return pre + block.rstrip("\n") + post


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="fail (exit 1) when docs/results.md or README differ")
    args = ap.parse_args(argv)
    page, block = build()
    readme = _readme_with(block)
    if args.check:
        stale = []
        for path, want in ((PAGE, page), (README, readme)):
            have = path.read_text() if path.is_file() else ""
            if have != want:
                stale.append(path)
                sys.stdout.writelines(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                           str(path), "generated", n=1))
        if stale:
            print(f"\nstale: {', '.join(map(str, stale))}; run "
                  "`python docs/results/make_results.py` and commit the result", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(page)
    README.write_text(readme)
    print(f"wrote {PAGE} and the results block of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
