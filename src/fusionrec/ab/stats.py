"""Statistics of the A/B evaluation: paired tests, bootstrap lift CI, proportions, Holm, sign test.

Conventions (every function here):

- **Unit of analysis = the user.** Offline metrics are per test case, and a user can own several
  cases (one warm leave-one-out case plus any number of cold-start cases). Cases of one user are
  not independent, so each user is one cluster: the paired tests run on per-user *sums* of the
  per-case differences, and the bootstrap resamples users. Testing ``E[sum_u (T-C)] = 0`` over
  i.i.d. users is exactly testing that the case-weighted mean difference is zero, so the means
  reported (case-weighted, the same figures ``fusionrec evaluate`` prints) and the tests agree.
- **p-values are two-sided**; the decision additionally requires the lift to be positive, so a
  promotion happens at most at rate ``alpha / 2`` under the null.
- **Relative lift** = ``mean_treatment / mean_control - 1`` (ratio of case-weighted means; a
  ratio of per-user sums under the user bootstrap).
- Functions take an ``axis`` where it makes sense so a calibration study can run thousands of
  simulated experiments in one vectorised call.

Example:
    >>> import numpy as np
    >>> d = np.array([0.1, 0.0, 0.2, -0.05, 0.15])
    >>> round(paired_ttest(d).pvalue, 4)
    0.1596
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np
from scipy import stats

__all__ = [
    "TestResult",
    "PairedComparison",
    "paired_ttest",
    "wilcoxon_test",
    "cohens_dz",
    "bootstrap_lift_ci",
    "paired_compare",
    "holm",
    "wilson_ci",
    "two_proportion_ztest",
    "ratio_delta_ztest",
    "sign_test",
]


@dataclass(frozen=True)
class TestResult:
    """A test statistic and its two-sided p-value (``alternative`` says which side when one-sided)."""

    statistic: float
    pvalue: float
    alternative: str = "two-sided"


# --------------------------------------------------------------------------------------------
# Paired tests on per-user differences
# --------------------------------------------------------------------------------------------
def paired_ttest(diff: np.ndarray, axis: int = -1, alternative: str = "two-sided") -> TestResult:
    """One-sample t-test of the per-user differences against 0 (= the paired t-test).

    Degenerate inputs are handled: all differences exactly 0 -> ``t = 0, p = 1``; a constant
    non-zero difference (zero variance) -> ``t = +-inf, p = 0``. ``diff`` may be 2-D (one
    experiment per row) when ``axis=-1``; the result then holds arrays.
    """
    diff = np.asarray(diff, dtype=np.float64)
    n = diff.shape[axis]
    if n < 2:
        return TestResult(float("nan"), float("nan"), alternative)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant rows: handled below
        res = stats.ttest_1samp(diff, 0.0, axis=axis, alternative=alternative)
    t = np.asarray(res.statistic, dtype=np.float64)
    p = np.asarray(res.pvalue, dtype=np.float64)
    mean = diff.mean(axis=axis)
    zero_var = np.ptp(diff, axis=axis) == 0  # exactly constant (std may be ~1e-17, not 0)
    if np.any(zero_var):
        all_zero = zero_var & (mean == 0)
        with np.errstate(invalid="ignore"):
            t = np.where(all_zero, 0.0, np.where(zero_var, np.sign(mean) * np.inf, t))
        if alternative == "two-sided":
            p_deg = np.where(all_zero, 1.0, 0.0)
        elif alternative == "greater":
            p_deg = np.where(all_zero, 1.0, np.where(mean > 0, 0.0, 1.0))
        else:
            p_deg = np.where(all_zero, 1.0, np.where(mean < 0, 0.0, 1.0))
        p = np.where(zero_var, p_deg, p)
    return TestResult(_scalar(t), _scalar(p), alternative)


def wilcoxon_test(diff: np.ndarray, zero_method: str = "wilcox") -> TestResult:
    """Wilcoxon signed-rank test of the per-user differences (``scipy.stats.wilcoxon``, two-sided).

    ``zero_method='wilcox'`` drops zero differences (users where both arms score the same, the
    common case for hit-based metrics). All differences zero -> ``p = 1``.
    """
    diff = np.asarray(diff, dtype=np.float64)
    nonzero = diff[diff != 0] if zero_method == "wilcox" else diff
    if len(nonzero) == 0:
        return TestResult(0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = stats.wilcoxon(diff, zero_method=zero_method, alternative="two-sided")
    return TestResult(float(res.statistic), float(res.pvalue))


def cohens_dz(diff: np.ndarray, axis: int = -1) -> float | np.ndarray:
    """Cohen's d_z: mean of the paired differences over their standard deviation (ddof=1).

    0 when every difference is 0; +-inf for a constant non-zero difference.
    """
    diff = np.asarray(diff, dtype=np.float64)
    mean = diff.mean(axis=axis)
    sd = diff.std(axis=axis, ddof=1)
    const = np.ptp(diff, axis=axis) == 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dz = np.where(~const, mean / np.where(const, 1.0, sd), np.where(mean == 0, 0.0, np.sign(mean) * np.inf))
    return _scalar(dz)


def bootstrap_lift_ci(
    treatment: np.ndarray,
    control: np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 256,
) -> tuple[float, float, np.ndarray]:
    """Percentile bootstrap CI of the relative lift ``sum(treatment) / sum(control) - 1``.

    ``treatment`` and ``control`` are per-user sums of a metric over the user's cases (paired:
    same user at the same position); users are resampled with replacement (cluster bootstrap),
    in chunks of ``chunk`` resamples so memory stays ``chunk x n_users``. Seeded and
    deterministic. Returns ``(low, high, lifts)``; a resample whose control sum is 0 gives
    ``+inf`` (or ``nan`` when both are 0) and is kept, so a CI can be unbounded honestly.

    Example:
        >>> lo, hi, _ = bootstrap_lift_ci(np.array([1., 1, 0, 1]), np.array([1., 0, 0, 1]), 500)
    """
    t = np.asarray(treatment, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if t.shape != c.shape or t.ndim != 1:
        raise ValueError(f"treatment and control must be 1-D arrays of the same length, got {t.shape} and {c.shape}")
    n = len(t)
    if n == 0:
        return float("nan"), float("nan"), np.zeros(0)
    rng = np.random.default_rng(seed)
    lifts = np.empty(n_resamples, dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        idx = rng.integers(0, n, size=(b, n))
        ts = t[idx].sum(axis=1)
        cs = c[idx].sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            lifts[start : start + b] = ts / cs - 1.0
    finite = lifts[~np.isnan(lifts)]
    if len(finite) == 0:
        return float("nan"), float("nan"), lifts
    alpha = 1.0 - confidence
    if np.isinf(finite).any():  # interpolating next to +-inf gives nan: take order statistics instead
        lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    else:
        lo, hi = np.quantile(finite, [alpha / 2, 1 - alpha / 2], method="linear")
    return float(lo), float(hi), lifts


# --------------------------------------------------------------------------------------------
# One metric, one segment: everything the report needs
# --------------------------------------------------------------------------------------------
@dataclass
class PairedComparison:
    """The paired comparison of one metric on one segment (overall / warm / cold)."""

    metric: str
    segment: str
    n_users: int
    n_cases: int
    mean_control: float
    mean_treatment: float
    diff: float
    lift: float
    lift_ci_low: float
    lift_ci_high: float
    diff_ci_low: float
    diff_ci_high: float
    t_stat: float
    p_ttest: float
    w_stat: float
    p_wilcoxon: float
    cohens_dz: float
    p_holm: float | None = None
    user_diffs: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("user_diffs", None)
        return d


def paired_compare(
    treatment_sum: np.ndarray,
    control_sum: np.ndarray,
    n_cases: np.ndarray,
    metric: str = "metric",
    segment: str = "overall",
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedComparison:
    """Compare two arms from per-user sums of a per-case metric (``n_cases`` cases per user).

    Means are case-weighted (``sum / sum(n_cases)``); tests run on per-user summed differences;
    the lift CI is a user-cluster bootstrap; the difference CI is the t interval of the per-user
    mean difference scaled to a per-case difference.
    """
    t = np.asarray(treatment_sum, dtype=np.float64)
    c = np.asarray(control_sum, dtype=np.float64)
    n = np.asarray(n_cases, dtype=np.float64)
    users = len(t)
    total = float(n.sum())
    d = t - c
    mean_t = float(t.sum() / total) if total else float("nan")
    mean_c = float(c.sum() / total) if total else float("nan")
    lift = _lift(mean_t, mean_c)
    tt = paired_ttest(d)
    ww = wilcoxon_test(d) if users else TestResult(float("nan"), float("nan"))
    lo, hi, _ = bootstrap_lift_ci(t, c, n_resamples=n_resamples, confidence=confidence, seed=seed)
    # CI of the per-case mean difference: t interval of mean(d_u), divided by mean cases per user.
    if users >= 2:
        se = float(d.std(ddof=1) / math.sqrt(users))
        q = float(stats.t.ppf(0.5 + confidence / 2, users - 1))
        scale = users / total
        dlo, dhi = (float(d.mean()) - q * se) * scale, (float(d.mean()) + q * se) * scale
    else:
        dlo = dhi = float("nan")
    return PairedComparison(
        metric=metric,
        segment=segment,
        n_users=users,
        n_cases=int(total),
        mean_control=mean_c,
        mean_treatment=mean_t,
        diff=mean_t - mean_c,
        lift=lift,
        lift_ci_low=lo,
        lift_ci_high=hi,
        diff_ci_low=dlo,
        diff_ci_high=dhi,
        t_stat=float(tt.statistic),
        p_ttest=float(tt.pvalue),
        w_stat=float(ww.statistic),
        p_wilcoxon=float(ww.pvalue),
        cohens_dz=float(cohens_dz(d)) if users >= 2 else float("nan"),
        user_diffs=d / np.where(n > 0, n, 1.0),
    )


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1; NaN stays NaN).

    Reject hypothesis i at family-wise level alpha iff ``adjusted[i] < alpha``.

    Example:
        >>> holm([0.01, 0.04, 0.03]).round(3).tolist()
        [0.03, 0.06, 0.06]
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = ~np.isnan(p)
    q = p[ok]
    m = len(q)
    if m == 0:
        return out
    order = np.argsort(q, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * q[order]))
    res = np.empty(m)
    res[order] = adj
    out[ok] = res
    return out


# --------------------------------------------------------------------------------------------
# Proportions (online replay) and the sign test (interleaving)
# --------------------------------------------------------------------------------------------
def wilson_ci(hits: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (``scipy.stats.binomtest(...).proportion_ci``)."""
    if n <= 0:
        return float("nan"), float("nan")
    ci = stats.binomtest(int(hits), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def two_proportion_ztest(hits_t, n_t, hits_c, n_c) -> TestResult:
    """Pooled two-proportion z-test of ``p_t == p_c`` (two-sided); vectorised over arrays.

    Equivalent to the chi-square test of the 2x2 table without continuity correction (z^2 = chi2).
    Both rates 0 or 1 (no variance) -> ``z = 0, p = 1``.
    """
    ht, nt, hc, nc = (np.asarray(x, dtype=np.float64) for x in (hits_t, n_t, hits_c, n_c))
    pt, pc = ht / nt, hc / nc
    pool = (ht + hc) / (nt + nc)
    se = np.sqrt(pool * (1 - pool) * (1 / nt + 1 / nc))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (pt - pc) / np.where(se > 0, se, 1.0), 0.0)
    p = 2 * stats.norm.sf(np.abs(z))
    return TestResult(_scalar(z), _scalar(p))


def ratio_delta_ztest(hits_t: np.ndarray, req_t: np.ndarray, hits_c: np.ndarray, req_c: np.ndarray) -> TestResult:
    """z-test of two hit rates whose requests are clustered by user (delta method).

    ``hits_*``/``req_*`` are per-user counts of one arm. The rate ``sum(h)/sum(r)`` has variance
    ``var(h - p r) / (n_users * mean(r)^2)`` (delta method for a ratio of means); with one
    request per user this is the unpooled two-proportion z-test.
    """

    def rate_var(h, r):
        h = np.asarray(h, dtype=np.float64)
        r = np.asarray(r, dtype=np.float64)
        n = len(h)
        p = h.sum() / r.sum()
        resid = h - p * r
        return p, float(resid.var(ddof=1) / (n * r.mean() ** 2)) if n > 1 else float("nan")

    pt, vt = rate_var(hits_t, req_t)
    pc, vc = rate_var(hits_c, req_c)
    if math.isnan(vt) or math.isnan(vc):
        return TestResult(float("nan"), float("nan"))
    se = math.sqrt(vt + vc)
    if se == 0:  # no variance in either arm: equal rates -> no evidence; different -> certain
        return TestResult(0.0, 1.0) if pt == pc else TestResult(math.copysign(math.inf, pt - pc), 0.0)
    z = (pt - pc) / se
    return TestResult(float(z), float(2 * stats.norm.sf(abs(z))))


def sign_test(wins_treatment: int, wins_control: int) -> TestResult:
    """Two-sided sign (binomial) test that treatment and control win equally often (ties dropped).

    ``statistic`` is the treatment's share of the decided comparisons.
    """
    n = int(wins_treatment) + int(wins_control)
    if n == 0:
        return TestResult(float("nan"), 1.0)
    res = stats.binomtest(int(wins_treatment), n, 0.5, alternative="two-sided")
    return TestResult(float(wins_treatment) / n, float(res.pvalue))


# --------------------------------------------------------------------------------------------
def _lift(treatment_mean: float, control_mean: float) -> float:
    if control_mean == 0:
        return 0.0 if treatment_mean == 0 else float("inf")
    return treatment_mean / control_mean - 1.0


def _scalar(x):
    x = np.asarray(x)
    return float(x) if x.ndim == 0 else x
