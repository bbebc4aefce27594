"""Statistics over seeds: per-run curve summaries, per-condition means with bootstrap CIs, tests vs a control.

Per run (one learning curve of one metric): final value (at the last logged step), best value, area under the
curve normalised by the step span (a mean level), first step reaching a target.
Per condition (over finished seeds): mean with a percentile-bootstrap CI of each of those, and, against a
control condition, Welch's t-test and Mann-Whitney U p-values (raw and Holm-adjusted across conditions),
mean difference, Cohen's d and Hedges' g.

Only FINISHED runs are averaged (RUNNING ones too if asked); FAILED/KILLED runs are listed as warnings.
Conditions with fewer than ``min_seeds`` usable seeds are flagged, and get no tests (their means are shown).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

DEFAULT_METRIC = "eval/accuracy"
COMPARE_ON = ("final", "best", "auc")
# MLflow rejects "@" in metric names, so pass@k may be logged as pass_at_k (or pass_k, pass-k, pass:k).
_PASS_AT_K = re.compile(r"^eval/pass(?:@|_at_|_|-|:)(\d+)$")


@dataclass
class Note:
    """A warning entry for the report (never an exception).

    kind is one of: failed_run, unfinished_run, missing_metric, too_few_seeds, duplicate_seed, missing_seed,
    unequal_steps, no_control, no_runs.
    """

    kind: str
    message: str
    condition: str | None = None
    run_id: str | None = None


@dataclass
class MetricSummary:
    """Statistics of one metric.

    Attributes:
        metric: the metric summarised.
        control: the control condition (None: no comparisons).
        target: the target value of steps-to-target (None: not computed).
        compare_on: which per-run quantity the tests compare ("final", "best" or "auc").
        per_run: one row per used run: run_id, condition, seed, final, best, auc, steps_to_target,
            last_step, n_points, start (the first logged value).
        table: one row per condition; see :func:`summarise` for the columns.
        notes: warnings (runs missing the metric, too few seeds, ...).
    """

    metric: str
    control: str | None
    target: float | None
    compare_on: str
    per_run: pd.DataFrame
    table: pd.DataFrame
    notes: list[Note] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------- primitives


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    statistic: Callable[[np.ndarray], np.ndarray] | None = None,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean (or of ``statistic``).

    Resamples the values with replacement ``n_resamples`` times with a generator seeded by ``seed`` and
    returns the (1-confidence)/2 and (1+confidence)/2 percentiles of the resampled statistic.
    ``statistic`` maps an array of shape (n_resamples, n) to shape (n_resamples,); default: mean over axis 1.
    NaNs are dropped first; fewer than 2 values give (nan, nan) -- one seed carries no interval.
    """
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    if x.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    resampled = x[idx]
    stat = statistic(resampled) if statistic is not None else resampled.mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(stat, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


def mean_ci(
    values: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(mean, lo, hi) with the percentile-bootstrap CI; NaNs dropped; empty input gives NaNs."""
    x = np.asarray(values, dtype=float)
    x = x[~np.isnan(x)]
    mean = float(x.mean()) if x.size else math.nan
    return (mean, *bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed))


def _curve(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(steps, dtype=float)
    v = np.asarray(values, dtype=float)
    keep = ~(np.isnan(s) | np.isnan(v))
    order = np.argsort(s[keep], kind="stable")
    return s[keep][order], v[keep][order]


def final_value(steps: Sequence[float], values: Sequence[float]) -> float:
    """Value at the largest step (NaN for an empty curve)."""
    _, v = _curve(steps, values)
    return float(v[-1]) if v.size else math.nan


def start_value(steps: Sequence[float], values: Sequence[float]) -> float:
    """Value at the smallest step (NaN for an empty curve): the starting point a run moved away from."""
    _, v = _curve(steps, values)
    return float(v[0]) if v.size else math.nan


def best_value(steps: Sequence[float], values: Sequence[float], *, maximize: bool = True) -> float:
    """Largest (or smallest, with maximize=False) value of the curve (NaN for an empty curve)."""
    _, v = _curve(steps, values)
    if not v.size:
        return math.nan
    return float(v.max() if maximize else v.min())


def steps_to_target(steps: Sequence[float], values: Sequence[float], target: float) -> float:
    """First step whose value is >= target; NaN if the curve never reaches it."""
    s, v = _curve(steps, values)
    hit = np.flatnonzero(v >= target)
    return float(s[hit[0]]) if hit.size else math.nan


def curve_auc(steps: Sequence[float], values: Sequence[float], *, normalise: bool = True) -> float:
    """Area under the curve by the trapezoid rule over steps.

    With ``normalise`` the area is divided by the step span (last - first step), giving the mean level of the
    curve, e.g. [0, 1, 1] at steps [0, 1, 2] -> 1.5 / 2 = 0.75. A one-point curve gives its value.
    """
    s, v = _curve(steps, values)
    if not v.size:
        return math.nan
    if v.size == 1:
        return float(v[0]) if normalise else 0.0
    area = float(np.sum((s[1:] - s[:-1]) * (v[1:] + v[:-1]) / 2.0))
    return area / float(s[-1] - s[0]) if normalise else area


def cohens_d(a: Sequence[float], b: Sequence[float]) -> float:
    """Cohen's d of a vs b: (mean a - mean b) / pooled SD (ddof=1). NaN if undefined (n<2 or SD 0)."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        return math.nan
    pooled = ((x.size - 1) * x.var(ddof=1) + (y.size - 1) * y.var(ddof=1)) / (x.size + y.size - 2)
    if pooled <= 0:
        return math.nan
    return float((x.mean() - y.mean()) / math.sqrt(pooled))


def hedges_g(a: Sequence[float], b: Sequence[float]) -> float:
    """Hedges' g: Cohen's d times the small-sample correction 1 - 3 / (4 (n_a + n_b) - 9)."""
    n = len(a) + len(b)
    d = cohens_d(a, b)
    return d * (1.0 - 3.0 / (4.0 * n - 9.0)) if n > 3 else math.nan


def compare_to_control(values: Sequence[float], control: Sequence[float]) -> dict[str, float]:
    """Two-sided Welch's t-test and Mann-Whitney U of ``values`` vs ``control``, plus effect sizes.

    Returns a dict with p_welch, p_mwu, mean_diff (values - control), cohens_d, hedges_g. NaN p-values when a
    group has fewer than 2 values or the test is undefined (e.g. both groups constant).
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(control, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    out = {
        "p_welch": math.nan,
        "p_mwu": math.nan,
        "mean_diff": math.nan,
        "cohens_d": math.nan,
        "hedges_g": math.nan,
    }
    if x.size and y.size:
        out["mean_diff"] = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return out
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        out["p_welch"] = float(sps.ttest_ind(x, y, equal_var=False).pvalue)
        out["p_mwu"] = float(sps.mannwhitneyu(x, y, alternative="two-sided").pvalue)
    out["cohens_d"] = cohens_d(x, y)
    out["hedges_g"] = hedges_g(x, y)
    return out


def welch_interval(
    values: Sequence[float], reference: Sequence[float], confidence: float = 0.95
) -> dict[str, float]:
    """mean(values) - mean(reference) with its Student-t interval at Welch-Satterthwaite's degrees of freedom,
    and the two-sided Welch t-test's p (the same test as :func:`compare_to_control`). NaNs dropped; NaN
    interval and p with fewer than 2 values a side or no variance at all.

    se = sqrt(s_a^2 / n_a + s_b^2 / n_b), df = se^4 / ((s_a^2 / n_a)^2 / (n_a - 1) + (s_b^2 / n_b)^2 / (n_b - 1)),
    interval = diff -+ t_{(1 + confidence) / 2, df} * se (sample variances, ddof 1).
    """
    x = np.asarray(values, dtype=float)
    y = np.asarray(reference, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    out = {"mean_diff": math.nan, "lo": math.nan, "hi": math.nan, "df": math.nan, "p_welch": math.nan}
    if x.size and y.size:
        out["mean_diff"] = float(x.mean() - y.mean())
    if x.size < 2 or y.size < 2:
        return out
    va, vb = x.var(ddof=1) / x.size, y.var(ddof=1) / y.size
    if va + vb == 0:
        return out
    df = (va + vb) ** 2 / (va**2 / (x.size - 1) + vb**2 / (y.size - 1))
    half = float(sps.t.ppf((1 + confidence) / 2, df)) * math.sqrt(va + vb)
    out.update(
        lo=out["mean_diff"] - half,
        hi=out["mean_diff"] + half,
        df=float(df),
        p_welch=float(sps.ttest_ind(x, y, equal_var=False).pvalue),
    )
    return out


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (same order as given); NaNs stay NaN and are not counted in m."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, math.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = ok.size
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


_SUITE = re.compile(r"^eval/([^/]+)/(mean|accuracy|avg_at_(\d+)|pass_at_(\d+))$")


def suite_metrics(metric_names: Sequence[str]) -> list[str]:
    """An evaluation suite's metrics among the names (``eval/<benchmark>/<metric>``, grpo/suite.py): the aggregate
    ``eval/suite/mean`` first, then per benchmark (by name) its accuracy, avg@k and pass@k by k."""
    kinds = {"mean": 0, "accuracy": 1}
    found = []
    for name in metric_names:
        m = _SUITE.match(name)
        if m:
            kind = kinds.get(m.group(2), 2 if m.group(3) else 3)
            k = int(m.group(3) or m.group(4) or 0)
            found.append((m.group(1) != "suite", m.group(1), kind, k, name))
    return [entry[-1] for entry in sorted(found)]


def pass_at_k_metrics(metric_names: Sequence[str]) -> list[str]:
    """The pass@k metrics among the names (``eval/pass@k``, ``eval/pass_at_k``, ...), sorted by k."""
    found = [(int(m.group(1)), name) for name in metric_names if (m := _PASS_AT_K.match(name))]
    return [name for _, name in sorted(found)]


# ----------------------------------------------------------------------------------------------- run tables


def _seed(seed: object) -> str:
    return "?" if seed is None or pd.isna(seed) else str(seed)


def run_notes(runs: pd.DataFrame, *, include_running: bool = False) -> list[Note]:
    """Warnings about runs that are not averaged: FAILED/KILLED runs, and RUNNING ones unless included."""
    notes = []
    for row in runs.itertuples(index=False):
        if row.status in ("FAILED", "KILLED"):
            notes.append(
                Note(
                    "failed_run",
                    f"run {row.run_id} ({row.condition}, seed {_seed(row.seed)}) is {row.status}; not averaged",
                    row.condition,
                    row.run_id,
                )
            )
        elif row.status != "FINISHED" and not (include_running and row.status == "RUNNING"):
            notes.append(
                Note(
                    "unfinished_run",
                    f"run {row.run_id} ({row.condition}, seed {_seed(row.seed)}) is {row.status}; not averaged",
                    row.condition,
                    row.run_id,
                )
            )
    return notes


def usable_runs(runs: pd.DataFrame, *, include_running: bool = False) -> pd.DataFrame:
    """Runs that may be averaged: FINISHED (and RUNNING with include_running)."""
    ok = {"FINISHED", "RUNNING"} if include_running else {"FINISHED"}
    return runs[runs["status"].isin(ok)]


def per_run_metrics(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metric: str,
    *,
    target: float | None = None,
    maximize: bool = True,
) -> tuple[pd.DataFrame, list[Note]]:
    """Per-run curve summaries of ``metric`` for the given runs; runs without it give missing_metric notes.

    Within a condition, several runs with the same seed (e.g. a re-launched job) keep only the one started
    last (duplicate_seed note); runs without a seed are kept (missing_seed note).
    """
    notes: list[Note] = []
    cols = ["run_id", "condition", "seed", "final", "best", "auc", "steps_to_target", "last_step", "n_points"]
    cols.append("start")  # the first logged value, for change_from_start
    hist = history[history["metric"] == metric]
    curves = {rid: g for rid, g in hist.groupby("run_id", sort=False)}
    ordered = runs.sort_values("start_time", na_position="first") if "start_time" in runs else runs
    rows, seen = [], {}
    for run in ordered.itertuples(index=False):
        g = curves.get(run.run_id)
        if g is None or g["value"].notna().sum() == 0:
            notes.append(
                Note(
                    "missing_metric",
                    f"run {run.run_id} ({run.condition}, seed {_seed(run.seed)}) has no '{metric}' values; left out",
                    run.condition,
                    run.run_id,
                )
            )
            continue
        if pd.isna(run.seed):
            notes.append(
                Note(
                    "missing_seed",
                    f"run {run.run_id} ({run.condition}) has no seed param",
                    run.condition,
                    run.run_id,
                )
            )
        else:
            key = (run.condition, int(run.seed))
            if key in seen:
                notes.append(
                    Note(
                        "duplicate_seed",
                        f"{run.condition} seed {_seed(run.seed)}: runs {seen[key]} and "
                        f"{run.run_id}; keeping the later {run.run_id}",
                        run.condition,
                        run.run_id,
                    )
                )
                rows = [r for r in rows if r["run_id"] != seen[key]]
            seen[key] = run.run_id
        s, v = g["step"].to_numpy(), g["value"].to_numpy()
        rows.append(
            {
                "run_id": run.run_id,
                "condition": run.condition,
                "seed": run.seed,
                "final": final_value(s, v),
                "best": best_value(s, v, maximize=maximize),
                "auc": curve_auc(s, v),
                "steps_to_target": steps_to_target(s, v, target) if target is not None else math.nan,
                "last_step": int(np.nanmax(s)),
                "n_points": int(np.sum(~np.isnan(v))),
                "start": start_value(s, v),
            }
        )
    table = pd.DataFrame(rows, columns=cols)
    table["seed"] = table["seed"].astype("Int64")
    return table, notes


def summarise(
    runs: pd.DataFrame,
    history: pd.DataFrame,
    metric: str = DEFAULT_METRIC,
    *,
    control: str | None = None,
    target: float | None = None,
    min_seeds: int = 3,
    compare_on: str = "final",
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
    include_running: bool = False,
    maximize: bool = True,
) -> MetricSummary:
    """Per-condition statistics of ``metric`` over seeds, with tests against ``control``.

    Args:
        runs, history: the tables of :func:`analysis.load.load_runs` (``RunSet.runs``, ``RunSet.history``).
        metric: metric to summarise.
        control: control condition; None skips the comparisons.
        target: value for steps-to-target (first step with value >= target); None skips it.
        min_seeds: conditions (and a control) with fewer usable seeds are flagged and not tested.
        compare_on: per-run quantity the tests compare: "final", "best" or "auc".
        confidence, n_resamples, seed: the percentile bootstrap of the CIs.
        include_running: average RUNNING runs too (e.g. to look at a sweep in progress).
        maximize: whether larger is better (for "best").

    Returns:
        A :class:`MetricSummary` whose table has, per condition: condition, is_control, n_finished, n_failed,
        n_other (running/killed-before-finish...), n (seeds used: usable runs with the metric), flag,
        final_mean/lo/hi, best_mean/lo/hi, auc_mean/lo/hi, steps_mean (over seeds that reached the target),
        n_reached, last_step (max over seeds), p_welch, p_mwu, p_welch_holm, p_mwu_holm, mean_diff, cohens_d,
        hedges_g. Failed runs appear only in n_failed and in the notes.
    """
    if compare_on not in COMPARE_ON:
        raise ValueError(f"compare_on must be one of {COMPARE_ON}, got {compare_on!r}")
    notes = run_notes(runs, include_running=include_running) if not runs.empty else []
    if runs.empty:
        notes.append(Note("no_runs", "no runs found"))
    used = usable_runs(runs, include_running=include_running) if not runs.empty else runs
    per_run, metric_notes = per_run_metrics(used, history, metric, target=target, maximize=maximize)
    notes += metric_notes

    conditions = sorted(runs["condition"].unique().tolist()) if not runs.empty else []
    if control is not None and control not in conditions:
        notes.append(Note("no_control", f"control condition {control!r} not among the runs; no comparisons"))
        control = None
    groups = {c: per_run[per_run["condition"] == c] for c in conditions}
    ctrl_vals = groups[control][compare_on].to_numpy() if control is not None else np.array([])
    ctrl_ok = control is not None and ctrl_vals.size >= max(min_seeds, 2)
    if control is not None and not ctrl_ok:
        notes.append(
            Note(
                "too_few_seeds",
                f"control {control!r} has {ctrl_vals.size} usable seed(s) < "
                f"{max(min_seeds, 2)}; no comparisons",
                control,
            )
        )

    rows = []
    for i, cond in enumerate(conditions):
        g = groups[cond]
        status = runs.loc[runs["condition"] == cond, "status"]
        n = len(g)
        row: dict = {
            "condition": cond,
            "is_control": cond == control,
            "n_finished": int((status == "FINISHED").sum()),
            "n_failed": int(status.isin(["FAILED", "KILLED"]).sum()),
            "n_other": int((~status.isin(["FINISHED", "FAILED", "KILLED"])).sum()),
            "n": n,
            "flag": "",
        }
        if n < min_seeds:
            row["flag"] = f"too few seeds ({n} < {min_seeds})"
            notes.append(
                Note(
                    "too_few_seeds",
                    f"{cond}: {n} usable seed(s) with '{metric}' < min_seeds="
                    f"{min_seeds}; shown but not tested",
                    cond,
                )
            )
        for q in COMPARE_ON:
            m, lo, hi = mean_ci(g[q], confidence=confidence, n_resamples=n_resamples, seed=seed + i)
            row.update({f"{q}_mean": m, f"{q}_lo": lo, f"{q}_hi": hi})
        reached = g["steps_to_target"].dropna()
        row["steps_mean"] = float(reached.mean()) if len(reached) else math.nan
        row["n_reached"] = int(len(reached)) if target is not None else pd.NA
        row["last_step"] = int(g["last_step"].max()) if n else pd.NA
        cmp = {
            "p_welch": math.nan,
            "p_mwu": math.nan,
            "mean_diff": math.nan,
            "cohens_d": math.nan,
            "hedges_g": math.nan,
        }
        if control is not None and cond != control:
            cmp = compare_to_control(g[compare_on].to_numpy(), ctrl_vals)
            if not (ctrl_ok and n >= max(min_seeds, 2)):
                cmp.update(p_welch=math.nan, p_mwu=math.nan)
        row.update(cmp)
        rows.append(row)

    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_welch_holm"] = holm(table["p_welch"].to_numpy())
        table["p_mwu_holm"] = holm(table["p_mwu"].to_numpy())
        if per_run["last_step"].nunique() > 1:
            spread = per_run.groupby("condition")["last_step"].agg(["min", "max"])
            detail = ", ".join(
                f"{c}: {r['min']}-{r['max']}" if r["min"] != r["max"] else f"{c}: {r['min']}"
                for c, r in spread.iterrows()
            )
            notes.append(
                Note(
                    "unequal_steps",
                    f"runs end at different steps for '{metric}' ({detail}); "
                    "final values are not at the same step",
                )
            )
    return MetricSummary(
        metric=metric,
        control=control,
        target=target,
        compare_on=compare_on,
        per_run=per_run,
        table=table,
        notes=notes,
    )


# ------------------------------------------------------------------------------- change from start, pairs

ALPHA = 0.05
"""Level of the verdicts of :func:`compare_pairs` (Holm-adjusted p-values below it count as significant)."""


def mean_difference_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap CI of mean(a) - mean(b), each resampled on its own (independent seeds' runs).

    NaNs dropped; (nan, nan) unless both have at least 2 values.
    """
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    x, y = x[~np.isnan(x)], y[~np.isnan(y)]
    if x.size < 2 or y.size < 2:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    diff = x[rng.integers(0, x.size, (n_resamples, x.size))].mean(1) - y[
        rng.integers(0, y.size, (n_resamples, y.size))
    ].mean(1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(diff, [100 * alpha, 100 * (1 - alpha)])
    return (float(lo), float(hi))


def change_from_start(
    per_run: pd.DataFrame, *, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0
) -> pd.DataFrame:
    """Per condition, the change of the metric from each run's first logged value to its last (final - start).

    Columns: condition, n, start_mean, change_mean, change_lo, change_hi (percentile-bootstrap CI over seeds),
    p_change (two-sided one-sample t-test of change = 0; NaN with < 2 seeds or no variance), p_change_holm
    (Holm across the conditions). A significantly negative change is a collapse below the starting point.
    """
    rows = []
    for i, (cond, g) in enumerate(per_run.groupby("condition", sort=True)):
        change = (g["final"] - g["start"]).to_numpy(dtype=float)
        change = change[~np.isnan(change)]
        mean, lo, hi = mean_ci(change, confidence=confidence, n_resamples=n_resamples, seed=seed + i)
        p = math.nan
        if change.size >= 2 and np.ptp(change) > 0:
            p = float(sps.ttest_1samp(change, 0.0).pvalue)
        elif change.size >= 2 and change[0] != 0:  # identical non-zero changes: as certain as it gets
            p = 0.0
        rows.append(
            {
                "condition": cond,
                "n": int(change.size),
                "start_mean": float(g["start"].mean()),
                "change_mean": mean,
                "change_lo": lo,
                "change_hi": hi,
                "p_change": p,
            }
        )
    cols = ["condition", "n", "start_mean", "change_mean", "change_lo", "change_hi", "p_change"]
    table = pd.DataFrame(rows, columns=cols)
    table["p_change_holm"] = holm(table["p_change"].to_numpy()) if len(table) else []
    return table


def _collapsed(change: pd.Series | None, alpha: float) -> bool:
    return change is not None and change["change_mean"] < 0 and change["p_change_holm"] < alpha


def pair_verdict(
    reference_collapsed: bool, fix_collapsed: bool, diff: float, p_holm: float, alpha: float
) -> str:
    """What a (fix, reference) comparison says, at level ``alpha`` on Holm-adjusted p-values:

    - reference collapsed (its final value significantly below its start): ``collapse removed`` when the fix
      is significantly better and not itself significantly below its start, ``collapse reduced`` when it is
      significantly better but still below its start, ``collapse not removed`` when the difference is not
      significant, ``worse`` when significantly lower;
    - otherwise ``better`` / ``worse`` / ``no significant difference``.
    """
    significant = not math.isnan(p_holm) and p_holm < alpha
    if not significant or math.isnan(diff):
        return "collapse not removed" if reference_collapsed else "no significant difference"
    if diff < 0:
        return "worse"
    if not reference_collapsed:
        return "better"
    return "collapse reduced" if fix_collapsed else "collapse removed"


def compare_pairs(
    per_run: pd.DataFrame,
    pairs: Sequence[tuple[str, str]],
    changes: pd.DataFrame,
    *,
    compare_on: str = "final",
    min_seeds: int = 3,
    alpha: float = ALPHA,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Each (condition, reference) pair compared directly, e.g. a fix against its condition "as is".

    Columns: condition, reference, n, n_ref, mean/lo/hi and ref_mean/ref_lo/ref_hi (the ``compare_on`` value,
    bootstrap CIs), diff with diff_lo/diff_hi (bootstrap CI of the difference of means), p_welch, p_mwu and
    their Holm adjustments across the pairs, hedges_g, verdict (:func:`pair_verdict`, from ``changes`` =
    :func:`change_from_start`). Pairs with fewer than ``min_seeds`` seeds on either side get no p-values and the
    verdict ``too few seeds``.
    """
    by_condition = changes.set_index("condition") if not changes.empty else pd.DataFrame()
    rows = []
    for i, (cond, ref) in enumerate(pairs):
        x = per_run.loc[per_run["condition"] == cond, compare_on].to_numpy(dtype=float)
        y = per_run.loc[per_run["condition"] == ref, compare_on].to_numpy(dtype=float)
        cmp = compare_to_control(x, y)
        if min(x.size, y.size) < max(min_seeds, 2):
            cmp.update(p_welch=math.nan, p_mwu=math.nan)
        mean, lo, hi = mean_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed + 2 * i)
        ref_mean, ref_lo, ref_hi = mean_ci(
            y, confidence=confidence, n_resamples=n_resamples, seed=seed + 2 * i + 1
        )
        diff_lo, diff_hi = mean_difference_ci(
            x, y, confidence=confidence, n_resamples=n_resamples, seed=seed + i
        )
        rows.append(
            {
                "condition": cond,
                "reference": ref,
                "n": int(x.size),
                "n_ref": int(y.size),
                "mean": mean,
                "lo": lo,
                "hi": hi,
                "ref_mean": ref_mean,
                "ref_lo": ref_lo,
                "ref_hi": ref_hi,
                "diff": cmp["mean_diff"],
                "diff_lo": diff_lo,
                "diff_hi": diff_hi,
                "p_welch": cmp["p_welch"],
                "p_mwu": cmp["p_mwu"],
                "hedges_g": cmp["hedges_g"],
            }
        )
    cols = ["condition", "reference", "n", "n_ref", "mean", "lo", "hi", "ref_mean", "ref_lo", "ref_hi"]
    cols += ["diff", "diff_lo", "diff_hi", "p_welch", "p_mwu", "hedges_g"]
    table = pd.DataFrame(rows, columns=cols)
    table["p_welch_holm"] = holm(table["p_welch"].to_numpy()) if len(table) else []
    table["p_mwu_holm"] = holm(table["p_mwu"].to_numpy()) if len(table) else []

    def change(name: str) -> pd.Series | None:
        return by_condition.loc[name] if name in by_condition.index else None

    table["verdict"] = [
        pair_verdict(
            _collapsed(change(r.reference), alpha),
            _collapsed(change(r.condition), alpha),
            r.diff,
            r.p_welch_holm,
            alpha,
        )
        if min(r.n, r.n_ref) >= max(min_seeds, 2)
        else "too few seeds"
        for r in table.itertuples(index=False)
    ]
    return table
