"""Statistics of the reports against known values: Student-t quantiles and CDF (tables),
intervals, paired t-tests (a worked example), and the report's comparisons."""

from __future__ import annotations

import json
import math

import pytest

from elastigraph import report
from elastigraph.stats import betainc, mean_interval, paired_test, t_cdf, t_quantile


@pytest.mark.parametrize("df,q", [(1, 12.7062047), (2, 4.3026527), (3, 3.1824463), (4, 2.7764451),
                                  (9, 2.2621572), (10, 2.2281389), (30, 2.0422725), (1000, 1.9623391)])
def test_t_quantile_matches_tables(df, q):
    assert t_quantile(0.975, df) == pytest.approx(q, abs=1e-6)
    assert t_cdf(q, df) == pytest.approx(0.975, abs=1e-7)  # q is rounded to 7 decimals
    assert t_quantile(0.025, df) == pytest.approx(-q, abs=1e-6)


def test_t_cdf_and_betainc_known_values():
    assert t_cdf(0.0, 5) == 0.5
    assert t_cdf(2.0, 5) == pytest.approx(0.9490302605850708, abs=1e-12)
    assert t_cdf(1.0, 1) == pytest.approx(0.75, abs=1e-12)  # Cauchy: 1/2 + atan(1)/pi
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-12)  # 1 - sum_{k<2} C(4,k) .4^k .6^(4-k)
    assert t_quantile(0.995, 4) == pytest.approx(4.6040949, abs=1e-6)


def test_mean_interval():
    iv = mean_interval([0.90, 0.92, 0.94])
    assert iv.mean == pytest.approx(0.92) and iv.std == pytest.approx(0.02) and iv.n == 3
    half = 4.3026527 * 0.02 / math.sqrt(3)
    assert iv.low == pytest.approx(0.92 - half, abs=1e-8) and iv.high == pytest.approx(0.92 + half, abs=1e-8)
    one = mean_interval([0.5])
    assert one.n == 1 and one.std is None and one.low is None


def test_paired_test_worked_example():
    # differences 0.5, 0.3, 0.9, 1.0: mean 0.675, s = 0.330404, t = 4.0859 with 3 df, p = 0.02649
    r = paired_test([1, 2, 3, 4], [0.5, 1.7, 2.1, 3.0])
    assert r.diff.mean == pytest.approx(0.675) and r.diff.std == pytest.approx(0.3304038, abs=1e-6)
    assert r.t == pytest.approx(4.0859095, abs=1e-6)
    assert r.p == pytest.approx(0.0264894, abs=1e-6)
    assert r.verdict == "a better" and r.diff.low > 0
    # a noisy pair: the interval contains 0, nobody is better
    assert paired_test([0.9, 0.8, 0.95], [0.85, 0.9, 0.9]).verdict == "no difference shown"
    # one seed or no spread: no test, no winner
    assert paired_test([0.9], [0.1]).p is None and paired_test([0.9], [0.1]).verdict == "no difference shown"
    assert paired_test([0.5, 0.6], [0.4, 0.5]).verdict == "no difference shown"
    assert paired_test([0.1, 0.2, 0.3], [0.5, 0.7, 0.6]).verdict == "b better"


def _rec(seed, method, acc, level=1, sparsity=0.5):
    return {"seed": seed, "role": "target", "model": "m", "target": "T", "level": level, "method": method,
            "sparsity": sparsity, "test_acc": acc, "test_loss": 1.0, "val_acc": None, "steps": 1, "step": "x"}


def test_report_summary_and_comparisons(tmp_path):
    recs = []
    for s, (tr, imp, rnd, snip) in enumerate([(0.80, 0.70, 0.60, 0.78), (0.82, 0.73, 0.61, 0.75),
                                               (0.81, 0.71, 0.65, 0.83)]):
        recs += [_rec(s, "transfer", tr), _rec(s, "imp", imp, sparsity=0.49), _rec(s, "random", rnd), _rec(s, "snip", snip)]
    summ = {r["method"]: r for r in report.summarize(recs)}
    t = summ["transfer"]
    assert t["n"] == 3 and t["test_acc_mean"] == pytest.approx(0.81)
    assert t["test_acc_ci_low"] == pytest.approx(0.81 - 4.3026527 * 0.01 / math.sqrt(3), abs=1e-8)
    rows = {r["b"]: r for r in report.compare(recs)}
    assert set(rows) == {"imp", "snip"}  # no imp-matched in this run; snip is the best baseline
    assert rows["imp"]["kind"] == "level-matched" and rows["imp"]["verdict"] == "transfer better"
    assert rows["imp"]["b_sparsity"] == pytest.approx(0.49)
    assert rows["snip"]["kind"] == "best baseline" and rows["snip"]["verdict"] == "no difference shown"
    assert 0.05 < rows["snip"]["p"] < 1
    (tmp_path / "results.json").write_text(json.dumps({"recipe": "r", "seeds": [0, 1, 2], "records": recs}))
    paths = report.write_report(tmp_path)
    text = paths["comparisons_csv"].read_text()
    assert text.splitlines()[0].startswith("target,level,a,b,kind") and "transfer better" in text
    assert "test_acc_ci_low" in paths["summary_csv"].read_text().splitlines()[0]


def test_accuracy_plot_keeps_its_scale_when_one_baseline_collapses(tmp_path):
    """A baseline at chance (10%) next to curves near 88% would flatten them: the panel
    clips its y-axis above it and names it in the title instead."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    rows = []
    for seed in range(3):
        for method, acc in (("transfer", 0.88), ("random", 0.86), ("grasp", 0.10)):
            rows.append({"seed": seed, "role": "target", "model": "m", "target": "T", "level": 1, "method": method,
                         "sparsity": 0.6, "test_acc": acc + 0.001 * seed, "val_acc": None})
    captured = {}
    real = plt.close

    def keep(fig=None):  # look at the figure before the report closes it
        if fig is not None and hasattr(fig, "axes"):
            captured["axes"] = fig.axes
        return real(fig)

    plt.close = keep
    try:
        report.plot_accuracy({"records": rows, "recipe": "r", "seeds": [0, 1, 2]}, tmp_path / "a.png")
    finally:
        plt.close = real
    ax = captured["axes"][0]
    assert ax.get_ylim()[0] > 80  # the collapsed baseline is off scale
    assert "off scale" in ax.get_title() and "grasp 10.1%" in ax.get_title()
    assert (tmp_path / "a.png").stat().st_size > 0
