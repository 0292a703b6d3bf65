"""Pre-registered analysis (issue 19): margin tests against hand-computed values, Holm's
adjustment on a worked example, the seed-count formula against a simulation, the
recipe's ``hypotheses`` section checked against the cells the run will have, and the
report testing exactly the declared comparisons (direction, Holm, missing seeds)."""

from __future__ import annotations

import json
import math
import random

import pytest

from elastigraph import report
from elastigraph.errors import RecipeError
from elastigraph.recipes.results import validate
from elastigraph.recipes.validate import validate_recipe
from elastigraph.stats import equivalence_test, holm, noninferiority_test, seeds_for_margin, t_cdf, t_quantile

from tiny import tiny


def _t2_sf(t: float) -> float:
    """P(T >= t) for 2 degrees of freedom, closed form: 1/2 - t / (2 sqrt(2 + t^2))."""
    return 0.5 - t / (2.0 * math.sqrt(2.0 + t * t))


def test_noninferiority_lower_is_better_by_hand():
    # a - b = 0.01, 0.00, 0.02: mean 0.01, sd 0.01; H0: a worse by >= 0.05 (a - b >= 0.05)
    r = noninferiority_test([2.01, 2.00, 2.02], [2.0, 2.0, 2.0], 0.05, higher_is_better=False)
    t = (0.05 - 0.01) / (0.01 / math.sqrt(3))
    assert r.p == pytest.approx(_t2_sf(t), abs=1e-9) and r.shown
    # the one-sided 95% upper bound lies inside the margin exactly when the test rejects
    assert r.diff.high == pytest.approx(0.01 + t_quantile(0.95, 2) * 0.01 / math.sqrt(3), abs=1e-9) and r.diff.high < 0.05
    # a margin the bound does not clear: not shown, although the difference is "not significant"
    r2 = noninferiority_test([2.01, 2.00, 2.02], [2.0, 2.0, 2.0], 0.02, higher_is_better=False)
    assert not r2.shown and r2.diff.high > 0.02 and r2.p == pytest.approx(_t2_sf((0.02 - 0.01) / (0.01 / math.sqrt(3))))


def test_noninferiority_direction_follows_the_metric():
    # accuracy: a is *lower* by 0.01 on average; within a margin of 0.05 it is non-inferior
    hi = noninferiority_test([0.89, 0.90, 0.88], [0.90, 0.90, 0.90], 0.05, higher_is_better=True)
    assert hi.shown and hi.p == pytest.approx(_t2_sf((0.05 - 0.01) / (0.01 / math.sqrt(3))), abs=1e-9)
    # the same numbers as a loss (lower is better): a is *better*, so even more clearly non-inferior
    lo = noninferiority_test([0.89, 0.90, 0.88], [0.90, 0.90, 0.90], 0.05, higher_is_better=False)
    assert lo.p < hi.p
    with pytest.raises(ValueError, match="positive"):
        noninferiority_test([1, 2], [1, 2], 0.0)


def test_equivalence_is_two_one_sided_tests():
    d = [0.1, -0.1, 0.0]  # mean 0, sd 0.1
    r = equivalence_test([1 + x for x in d], [1, 1, 1], 0.5)
    se = 0.1 / math.sqrt(3)
    assert r.p == pytest.approx(_t2_sf(0.5 / se), abs=1e-9) and r.shown
    shifted = equivalence_test([1.4 + x for x in d], [1, 1, 1], 0.5)  # mean +0.4: the upper test binds
    assert shifted.p == pytest.approx(_t2_sf((0.5 - 0.4) / se), abs=1e-9) and not shifted.shown
    assert shifted.diff.high > 0.5  # the 90% interval leaves the margin
    assert equivalence_test([1.0], [1.0], 0.5).p is None


def test_holm_worked_example():
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, max(0.03, 0.06), max(0.06, 0.04)
    out = holm([0.04, 0.01, None, 0.03])
    assert out[2] is None and out[0] == pytest.approx(0.06) and out[1] == pytest.approx(0.03) \
        and out[3] == pytest.approx(0.06)
    assert holm([0.9, 0.8]) == [1.0, 1.0]


def test_seeds_for_margin_against_a_simulation():
    sd, margin, true_diff = 1.0, 1.5, 0.3
    n = seeds_for_margin(sd, margin, true_diff=true_diff)
    assert n >= 2 and seeds_for_margin(sd, margin, true_diff=true_diff, power=0.95) > n
    rng = random.Random(0)

    def power(k: int) -> float:
        crit = t_quantile(0.95, k - 1)
        hits = 0
        for _ in range(4000):
            d = [rng.gauss(true_diff, sd) for _ in range(k)]  # positive = worse, as for a loss
            m = sum(d) / k
            s = math.sqrt(sum((x - m) ** 2 for x in d) / (k - 1))
            hits += (margin - m) / (s / math.sqrt(k)) > crit
        return hits / 4000

    assert power(n) >= 0.75 and power(n - 1) < 0.85  # the approximation is within a few points
    assert t_cdf(0.0, 3) == 0.5
    with pytest.raises(ValueError):
        seeds_for_margin(1.0, 0.5, true_diff=0.6)


HYP = {"margin": 0.01, "primary": [{"a": "R20/transfer", "b": "R20/random", "level": 1, "claim": "non-inferior"},
                                   {"a": "R20/transfer", "b": "R14/imp", "level": 1, "claim": "better"}]}


def test_recipe_hypotheses_must_name_cells_the_run_has():
    ok = tiny(targets=[{"model": "cifar_resnet_20?width=4", "label": "R20"}], source_label="R14", hypotheses=HYP)
    assert validate_recipe(ok).hypotheses.primary[1].cell("b") == ("R14", "imp")
    bad = tiny(targets=[{"model": "cifar_resnet_20?width=4", "label": "R20"}], source_label="R14", hypotheses={
        "margin": 0.01, "primary": [{"a": "R20/transfer", "b": "R20/imp-matched", "level": 1},
                                    {"a": "R32/transfer", "b": "R14/imp", "level": 1},
                                    {"a": "R20/transfer", "b": "R14/imp", "level": 3},
                                    {"a": "R20/transfer", "b": "R20/transfer", "level": 1}]})
    with pytest.raises(RecipeError) as e:
        validate_recipe(bad)
    msg = str(e.value)
    assert "hypotheses.primary.0.b" in msg and "'imp-matched'" in msg and "add the baseline" in msg
    assert "hypotheses.primary.1.a" in msg and "'R32'" in msg
    assert "hypotheses.primary.2.level" in msg
    assert "hypotheses.primary.3" in msg and "itself" in msg
    with pytest.raises(RecipeError, match="margin"):
        validate_recipe(tiny(hypotheses={"margin": -1, "primary": HYP["primary"]}))


def _rec(seed, target, method, acc, level=1, sparsity=0.5, role="target"):
    return {"seed": seed, "role": role, "model": "m", "target": target, "level": level, "method": method,
            "sparsity": sparsity, "test_acc": acc, "test_loss": 1.0, "val_acc": None, "steps": 1, "step": "x",
            "device": "cpu"}


def test_report_tests_the_declared_comparisons_with_holm(tmp_path):
    recs = []
    for s, (tr, rnd, src) in enumerate([(0.80, 0.798, 0.70), (0.82, 0.815, 0.73), (0.81, 0.812, 0.71),
                                         (0.805, 0.80, 0.72)]):
        recs += [_rec(s, "R20", "transfer", tr), _rec(s, "R20", "random", rnd),
                 _rec(s, "R14", "imp", src, role="source", sparsity=0.49)]
    recs.append(_rec(4, "R20", "transfer", 0.5))  # seed 4 has no partner: counted as missing, not used
    data = {"recipe": "r", "seeds": [0, 1, 2, 3, 4], "records": recs, "hypotheses": HYP}
    rows = report.check_hypotheses(data)
    ni, better = rows
    assert ni["comparison"] == "R20/transfer vs R20/random" and ni["n"] == 4 and ni["seeds_missing"] == "4"
    a = [0.80, 0.82, 0.81, 0.805]
    b = [0.798, 0.815, 0.812, 0.80]
    direct = noninferiority_test(a, b, 0.01 * sum(b) / 4, alpha=0.05)
    db = [x - y for x, y in zip(a, [0.70, 0.73, 0.71, 0.72])]
    assert ni["p"] == pytest.approx(direct.p) and ni["margin"] == pytest.approx(0.01 * sum(b) / 4)
    assert better["p"] is not None and better["b_sparsity"] == pytest.approx(0.49)
    adj = holm([ni["p"], better["p"]])
    assert ni["p_holm"] == pytest.approx(adj[0]) and better["p_holm"] == pytest.approx(adj[1])
    assert better["verdict"] == "R20/transfer better" and sum(db) / 4 > 0
    assert ni["verdict"] == ("non-inferior" if adj[0] < 0.05 else "non-inferiority not shown")
    # the same run reads back through the typed results and the report writes hypotheses.csv
    assert validate(data).hypotheses["primary"][0]["claim"] == "non-inferior"
    (tmp_path / "results.json").write_text(json.dumps(data))
    paths = report.write_report(tmp_path)
    text = paths["hypotheses_csv"].read_text()
    assert text.splitlines()[0].startswith("comparison,claim,level") and "R20/transfer better" in text
    # a damaged section is named, not a traceback
    with pytest.raises(ValueError, match="hypotheses"):
        validate({**data, "hypotheses": {"margin": "x", "primary": []}})
    # a run without the section has no rows
    assert report.check_hypotheses({"records": recs}) == []
