"""The statistics every report gives: mean, sample standard deviation and a Student-t
confidence interval per cell, and paired t-tests across seeds (seeds are paired: the
same seed means the same data order). Pure Python (no scipy): the t distribution's CDF
through the regularised incomplete beta function, its quantile by bisection."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

from .errors import ConfigError


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 400):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom."""
    if df <= 0:
        raise ConfigError(f"t distribution: degrees of freedom must be positive, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p``-quantile of Student's t (``t_quantile(0.975, 2) = 4.3027``)."""
    if not 0.0 < p < 1.0:
        raise ConfigError(f"t quantile: p must lie in (0, 1), got {p}")
    if p == 0.5:
        return 0.0
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    """Mean, sample standard deviation, n and the two-sided ``level`` t-interval of the
    mean (``low``/``high`` are None for n < 2: one run says nothing about its spread)."""

    mean: float
    std: float | None
    n: int
    low: float | None
    high: float | None
    level: float = 0.95

    def as_dict(self) -> dict:
        return asdict(self)


def mean_interval(xs: Sequence[float], level: float = 0.95) -> Interval:
    """:class:`Interval` of ``xs`` (mean +- t_{(1+level)/2, n-1} * s / sqrt(n))."""
    xs = [float(x) for x in xs]
    n = len(xs)
    if n == 0:
        return Interval(math.nan, None, 0, None, None, level)
    m = sum(xs) / n
    if n < 2:
        return Interval(m, None, 1, None, None, level)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Interval(m, sd, n, m - half, m + half, level)


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over matched seeds: the mean difference, its
    t-interval, the t statistic and the two-sided p-value (None where n < 2 or every
    difference is equal, so that no spread can be estimated), and ``verdict``: ``"a
    better"`` / ``"b better"`` only when there is a test and the interval excludes 0,
    else ``"no difference shown"``."""

    diff: Interval
    t: float | None
    p: float | None
    verdict: str

    def as_dict(self) -> dict:
        d = self.diff.as_dict()
        return {"diff_mean": d["mean"], "diff_std": d["std"], "n": d["n"], "diff_low": d["low"],
                "diff_high": d["high"], "t": self.t, "p": self.p, "verdict": self.verdict}


def paired_test(a: Sequence[float], b: Sequence[float], level: float = 0.95, *,
                higher_is_better: bool = True) -> PairedTest:
    """Paired t-test of equal-length ``a`` and ``b`` (``a[i]`` and ``b[i]`` share a seed).
    The interval is of ``a - b``; the verdict names the better side by the metric's
    direction (``higher_is_better=False``: loss, bits per byte)."""
    if len(a) != len(b):
        raise ConfigError(f"paired test: {len(a)} values against {len(b)}; pair them by seed first")
    d = [float(x) - float(y) for x, y in zip(a, b)]
    iv = mean_interval(d, level)
    t = p = None
    if iv.n >= 2 and iv.std is not None and iv.std > 0:
        t = iv.mean / (iv.std / math.sqrt(iv.n))
        p = 2.0 * (1.0 - t_cdf(abs(t), iv.n - 1))
    if p is None:  # n < 2 or no spread among the differences: nothing to test
        verdict = "no difference shown"
    elif iv.low is not None and iv.low > 0:
        verdict = "a better" if higher_is_better else "b better"
    elif iv.high is not None and iv.high < 0:
        verdict = "b better" if higher_is_better else "a better"
    else:
        verdict = "no difference shown"
    return PairedTest(iv, t, p, verdict)


@dataclass(frozen=True)
class MarginTest:
    """A one-sided test of ``a - b`` against a margin (non-inferiority) or two of them
    (TOST equivalence) over matched seeds. ``margin`` is in the metric's unit (> 0);
    ``low``/``high`` the two-sided ``1 - 2*alpha`` interval of the mean difference (its
    ends are the one-sided ``1 - alpha`` bounds); ``p`` the one-sided p-value (TOST: the
    larger of the two); None where n < 2 or the differences have no spread. ``shown``
    is whether the claim holds at ``alpha`` before any correction for multiple tests."""

    diff: Interval
    margin: float
    p: float | None
    shown: bool
    alpha: float

    def as_dict(self) -> dict:
        d = self.diff
        return {"diff_mean": d.mean, "diff_std": d.std, "n": d.n, "diff_low": d.low, "diff_high": d.high,
                "margin": self.margin, "p": self.p, "shown": self.shown}


def _diffs(a: Sequence[float], b: Sequence[float], what: str) -> list[float]:
    if len(a) != len(b):
        raise ConfigError(f"{what}: {len(a)} values against {len(b)}; pair them by seed first")
    return [float(x) - float(y) for x, y in zip(a, b)]


def _one_sided_p(d: Sequence[float], shift: float) -> float | None:
    """P(T >= t) for t = (mean(d) - shift) / se: small when the mean lies clearly above
    ``shift`` (None without a spread)."""
    n = len(d)
    if n < 2:
        return None
    m = sum(d) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (n - 1))
    if sd == 0:
        return None
    return 1.0 - t_cdf((m - shift) / (sd / math.sqrt(n)), n - 1)


def noninferiority_test(a: Sequence[float], b: Sequence[float], margin: float, *, higher_is_better: bool = True,
                        alpha: float = 0.05) -> MarginTest:
    """Is ``a`` not worse than ``b`` by ``margin`` or more? H0: a is worse by at least the
    margin (``a - b <= -margin`` when higher is better, ``>= +margin`` when lower is
    better), rejected by a one-sided paired t-test at ``alpha``; equivalently, the one-
    sided ``1 - alpha`` bound of the difference lies inside the margin. A non-significant
    difference is never evidence of non-inferiority; only this test is."""
    if not margin > 0:
        raise ConfigError(f"non-inferiority margin must be positive, got {margin}")
    d = _diffs(a, b, "non-inferiority test")
    iv = mean_interval(d, 1.0 - 2.0 * alpha)
    flipped = d if higher_is_better else [-x for x in d]  # "a better" is positive either way
    p = _one_sided_p(flipped, -margin)
    return MarginTest(iv, margin, p, p is not None and p < alpha, alpha)


def equivalence_test(a: Sequence[float], b: Sequence[float], margin: float, *, alpha: float = 0.05) -> MarginTest:
    """Two one-sided tests (TOST): ``a`` and ``b`` are equivalent within ``+-margin`` when
    both ``a - b > -margin`` and ``a - b < margin`` are shown at ``alpha`` (the ``1 -
    2*alpha`` interval lies inside the margins). ``p`` is the larger one-sided p-value."""
    if not margin > 0:
        raise ConfigError(f"equivalence margin must be positive, got {margin}")
    d = _diffs(a, b, "equivalence test")
    iv = mean_interval(d, 1.0 - 2.0 * alpha)
    lo, hi = _one_sided_p(d, -margin), _one_sided_p([-x for x in d], -margin)
    p = None if lo is None or hi is None else max(lo, hi)
    return MarginTest(iv, margin, p, p is not None and p < alpha, alpha)


def holm(ps: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (family-wise error control over the given
    family; None entries, tests that could not be made, stay None and do not count)."""
    idx = sorted((i for i, p in enumerate(ps) if p is not None), key=lambda i: ps[i])
    m = len(idx)
    out: list[float | None] = [None] * len(ps)
    running = 0.0
    for rank, i in enumerate(idx):
        running = max(running, min(1.0, (m - rank) * float(ps[i])))
        out[i] = running
    return out


def seeds_for_margin(sd: float, margin: float, *, true_diff: float = 0.0, alpha: float = 0.05,
                     power: float = 0.8, max_n: int = 1000) -> int:
    """The fewest paired seeds (at least 2) for a one-sided test at ``alpha`` to show
    non-inferiority at ``margin`` with probability ``power``, when the paired differences
    have standard deviation ``sd`` and the true difference lies ``true_diff`` on the
    worse side (0: the two are truly equal). Uses the shifted central t approximation of
    the noncentral t: power(n) = 1 - T_{n-1}(t_{1-alpha,n-1} - (margin - true_diff) sqrt(n)/sd)."""
    if sd <= 0 or margin <= 0 or not 0 < power < 1 or not 0 <= true_diff < margin:
        raise ConfigError("seeds_for_margin needs sd > 0, margin > 0, 0 <= true_diff < margin and 0 < power < 1")
    for n in range(2, max_n + 1):
        if 1.0 - t_cdf(t_quantile(1.0 - alpha, n - 1) - (margin - true_diff) * math.sqrt(n) / sd, n - 1) >= power:
            return n
    return max_n


__all__ = ["Interval", "MarginTest", "PairedTest", "betainc", "equivalence_test", "holm", "mean_interval",
           "noninferiority_test", "paired_test", "seeds_for_margin", "t_cdf", "t_quantile"]
