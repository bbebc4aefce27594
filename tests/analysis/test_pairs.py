"""Change from the start, paired comparisons and their collapse verdicts (analysis.stats), the report's paired
section on a synthetic sweep in a real MLflow store, and the multi-panel figures over training."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis import figures, report
from analysis.stats import change_from_start, compare_pairs, mean_difference_ci, pair_verdict, t_interval
from analysis.synthetic import SyntheticCondition, log_synthetic_sweep


def per_run(values: dict[str, list[float]], start: float = 0.4) -> pd.DataFrame:
    rows = [
        {"run_id": f"{c}-{i}", "condition": c, "seed": i, "final": v, "start": start}
        for c, finals in values.items()
        for i, v in enumerate(finals)
    ]
    return pd.DataFrame(rows)


def test_mean_difference_ci_planted_effect_and_null():
    rng = np.random.default_rng(0)
    a, b, c = rng.normal(1.0, 0.1, 20), rng.normal(0.0, 0.1, 20), rng.normal(0.0, 0.1, 20)
    lo, hi = mean_difference_ci(a, b)
    assert lo < a.mean() - b.mean() < hi and lo > 0.9 and hi < 1.1
    lo, hi = mean_difference_ci(b, c)
    assert lo < 0 < hi
    assert all(math.isnan(x) for x in mean_difference_ci([1.0], [0.0, 1.0]))


def test_change_from_start_hand_values():
    runs = per_run({"collapsed": [0.10, 0.12, 0.08], "flat": [0.40, 0.40, 0.40], "same": [0.5, 0.5, 0.5]})
    t = change_from_start(runs).set_index("condition")
    # collapsed: changes -0.30, -0.28, -0.32 -> mean -0.30, sd 0.02, t = -0.30 / (0.02 / sqrt 3) = -25.98
    assert t.loc["collapsed", "change_mean"] == pytest.approx(-0.30)
    assert t.loc["collapsed", "p_change"] == pytest.approx(0.001478, rel=1e-3)  # two-sided, df 2
    assert math.isnan(t.loc["flat", "p_change"])  # no change, no variance: undefined
    assert t.loc["same", "p_change"] == 0.0  # identical non-zero changes
    assert t.loc["collapsed", "start_mean"] == pytest.approx(0.4)
    # Holm over the two defined p-values (0 and 0.001478): 2 * 0 = 0 first, then 1 * 0.001478
    assert t.loc["same", "p_change_holm"] == 0.0
    assert t.loc["collapsed", "p_change_holm"] == pytest.approx(0.001478, rel=1e-3)


@pytest.mark.parametrize(
    ("ref_collapsed", "fix_collapsed", "diff", "p", "verdict"),
    [
        (True, False, 0.3, 0.01, "collapse removed"),
        (True, True, 0.1, 0.01, "collapse reduced"),
        (True, True, 0.1, 0.20, "collapse not removed"),
        (True, True, -0.1, 0.01, "worse"),
        (False, False, 0.1, 0.01, "better"),
        (False, False, 0.1, math.nan, "no significant difference"),
    ],
)
def test_pair_verdicts(ref_collapsed, fix_collapsed, diff, p, verdict):
    assert pair_verdict(ref_collapsed, fix_collapsed, diff, p, 0.05) == verdict


def test_compare_pairs_planted_fixes():
    """A collapsed condition (0.4 -> 0.1) and three fixes: one back to 0.45, one half way, one doing nothing."""
    rng = np.random.default_rng(1)
    noise = lambda m: list(m + rng.normal(0, 0.01, 5))  # noqa: E731
    runs = per_run({"mask": noise(0.10), "fixed": noise(0.45), "half": noise(0.25), "nothing": noise(0.10)})
    changes = change_from_start(runs)
    pairs = [("fixed", "mask"), ("half", "mask"), ("nothing", "mask")]
    t = compare_pairs(runs, pairs, changes).set_index("condition")
    assert t["verdict"].to_dict() == {
        "fixed": "collapse removed",
        "half": "collapse reduced",
        "nothing": "collapse not removed",
    }
    assert t.loc["fixed", "diff"] == pytest.approx(0.35, abs=0.02)
    assert t.loc["fixed", "diff_lo"] < 0.35 < t.loc["fixed", "diff_hi"]
    # Holm across the three pairs: the adjusted p is never below the raw one
    assert (t["p_welch_holm"] >= t["p_welch"]).all()
    too_few = compare_pairs(runs, pairs, changes, min_seeds=6)
    assert too_few["p_welch"].isna().all() and set(too_few["verdict"]) == {"too few seeds"}


def test_report_paired_section(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    parent = log_synthetic_sweep(
        uri,
        "pairs",
        [
            SyntheticCondition("none", 0.70),
            SyntheticCondition("mask", 0.05),
            SyntheticCondition("mask_fixed", 0.60),
        ],
        steps=30,
        seed=3,
        noise=0.02,
        quadrant_stats=("share",),
    )
    path = report.build_report(
        report.ReportOptions(
            out_dir=tmp_path / "rep",
            tracking_uri=uri,
            parent_run_id=parent,
            control="intervention=none",
            log_artifact=False,
            echo=False,
            pairs=(
                ("intervention=mask_fixed", "intervention=mask"),
                ("intervention=typo", "intervention=mask"),
            ),
        )
    )
    text = path.read_text()
    assert "## Change from the start" in text and "## Paired comparisons" in text
    row = next(
        line for line in text.splitlines() if line.startswith("| intervention=mask_fixed | intervention=mask")
    )
    assert row.rstrip().endswith("| collapse removed |")
    assert "pair condition 'intervention=typo' is not among the runs; pair left out" in text
    assert "| intervention=typo |" not in text
    # the synthetic runs log no cancel/* or update norms: those figures are left out, without a warning
    assert "figures/cancellation.png" not in text and "figure 'cancellation' skipped" not in text


def test_panel_figure_draws_logged_metrics_and_marks_missing_ones(tmp_path):
    rows = [
        {"run_id": f"r{c}{s}", "condition": c, "metric": m, "step": t, "value": v + 0.01 * t}
        for c, v in (("a", 0.2), ("b", 0.6))
        for s in range(3)
        for m in ("cancel/uncancelled_ratio", "cancel/shared_token_share", "cancel/shared_mass_share")
        for t in range(5)
    ]
    history = pd.DataFrame(rows)
    title, panels = figures.PANEL_FIGURES["cancellation"]
    paths, notes = figures.plot_panels(
        history, panels, tmp_path, {"a": "red", "b": "blue"}, stem="c", what="c", title=title
    )
    assert {p.name for p in paths} == {"c.png", "c.svg"} and all(p.stat().st_size > 1000 for p in paths)
    assert len(notes) == 1 and "cancel/uncancelled_ratio_plain" in notes[0].message
    assert figures.plot_panels(history.iloc[:0], panels, tmp_path, {}, stem="d", what="d", title="t")[0] == []


def test_curve_bands_are_the_tables_student_t_interval_step_by_step():
    """The figures' CI band at each step is t_interval of the seeds' values there; one seed gives no band."""
    values = {0: [0.4, 0.6, 0.5], 10: [0.7, 0.9, None], 20: [0.3, None, None]}
    history = pd.DataFrame(
        [
            {"run_id": f"r{i}", "condition": "a", "metric": "m", "step": step, "value": v}
            for step, vs in values.items()
            for i, v in enumerate(vs)
            if v is not None
        ]
    )
    band = figures.curve_band(history, "m", "a").set_index("step")
    for step in (0, 10):
        lo, hi = t_interval([v for v in values[step] if v is not None])
        assert (band.loc[step, "lo"], band.loc[step, "hi"]) == pytest.approx((lo, hi))
    assert band.loc[10, "hi"] - band.loc[10, "lo"] == pytest.approx(2 * 12.706205 * 0.1 / 1.0, rel=1e-6)
    assert band.loc[20, "mean"] == pytest.approx(0.3) and math.isnan(band.loc[20, "lo"])
