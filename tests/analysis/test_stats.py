"""Tests of analysis.stats (hand-computed primitives, synthetic runs in a real MLflow store) and analysis.load."""

from __future__ import annotations

import json
import math

import mlflow
import numpy as np
import pandas as pd
import pytest
import scipy.stats as sps

from analysis.load import condition_from_tags, load_runs, seed_from
from analysis.stats import (
    cohens_d,
    compare_to_control,
    curve_auc,
    hedges_g,
    holm,
    mean_ci,
    mean_difference_ci,
    pass_at_k_metrics,
    steps_to_target,
    summarise,
    t_interval,
)
from analysis.synthetic import SyntheticCondition, log_synthetic_sweep

# ------------------------------------------------------------------------------------- hand-computed values


def test_auc_normalised_is_mean_level():
    assert curve_auc([0, 1, 2], [0, 1, 1]) == pytest.approx(0.75)
    assert curve_auc([0, 1, 2], [0, 1, 1], normalise=False) == pytest.approx(1.5)
    # uneven steps: 0.5 * (0 + 1) * 1 + 0.5 * (1 + 1) * 2 = 2.5 over a span of 3
    assert curve_auc([0, 1, 3], [0, 1, 1]) == pytest.approx(2.5 / 3)
    # unsorted input is sorted by step; a single point is its own mean level
    assert curve_auc([2, 0, 1], [1, 0, 1]) == pytest.approx(0.75)
    assert curve_auc([5], [0.4]) == pytest.approx(0.4)
    assert math.isnan(curve_auc([], []))


def test_steps_to_target():
    steps, vals = [0, 10, 20, 30], [0.1, 0.5, 0.8, 0.9]
    assert steps_to_target(steps, vals, 0.8) == 20  # >= counts
    assert steps_to_target(steps, vals, 0.5) == 10
    assert steps_to_target(steps, vals, 0.0) == 0
    assert math.isnan(steps_to_target(steps, vals, 0.95))
    assert steps_to_target([30, 0, 20, 10], [0.9, 0.1, 0.8, 0.5], 0.7) == 20  # order by step


def test_t_interval_hand_values():
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, s 1, t_{0.975, 2} = 4.302653
    assert (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), rel=1e-6)
    # mean 0.5, s 0.1 (ddof 1), t_{0.95, 4} = 2.131847 at the 90% level
    lo, hi = t_interval([0.4, 0.5, 0.6, 0.5, 0.5], confidence=0.90)
    s = math.sqrt(0.02 / 4)
    assert (lo, hi) == pytest.approx(
        (0.5 - 2.131847 * s / math.sqrt(5), 0.5 + 2.131847 * s / math.sqrt(5)), rel=1e-6
    )
    assert t_interval([2.0, 2.0, 2.0]) == (2.0, 2.0)
    assert all(math.isnan(v) for v in t_interval([1.0]))
    assert all(math.isnan(v) for v in t_interval([3.0, float("nan")]))
    m, lo, hi = mean_ci([1.0, float("nan"), 2.0, 3.0])
    assert m == pytest.approx(2.0) and (lo, hi) == t_interval([1.0, 2.0, 3.0])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_welch_interval_hand_values_and_agreement_with_the_welch_test():
    a, b = [1.0, 2.0, 3.0], [0.0, 0.5, 1.0, 1.5, 2.0]
    va, vb = 1.0 / 3, 0.625 / 5  # s^2 / n
    df = (va + vb) ** 2 / (va**2 / 2 + vb**2 / 4)  # Welch-Satterthwaite: 3.61...
    half = sps.t.ppf(0.975, df) * math.sqrt(va + vb)
    assert mean_difference_ci(a, b) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-9)
    assert mean_difference_ci([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5)
    rng = np.random.default_rng(0)
    for _ in range(200):  # the interval excludes 0 exactly when Welch's two-sided p < 0.05
        x, y = rng.normal(0.1, 0.1, 5), rng.normal(0.0, 0.05, 4)
        lo, hi = mean_difference_ci(x, y)
        assert (lo > 0 or hi < 0) == (sps.ttest_ind(x, y, equal_var=False).pvalue < 0.05)


def test_effect_sizes_and_holm():
    a, b = [1.0, 2.0, 3.0], [0.0, 1.0, 2.0]
    assert cohens_d(a, b) == pytest.approx(1.0)  # diff 1, pooled SD 1
    assert hedges_g(a, b) == pytest.approx(1.0 * (1 - 3 / (4 * 6 - 9)))
    assert math.isnan(cohens_d([1.0, 1.0], [1.0, 1.0]))
    # Holm: sorted 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    adj = holm([0.02, float("nan"), 0.5])
    assert adj[0] == pytest.approx(0.04) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.5)
    assert holm([0.6, 0.7])[0] == pytest.approx(1.0)  # capped at 1


def test_compare_to_control_planted_difference():
    out = compare_to_control([0.85, 0.86, 0.84, 0.87, 0.83], [0.70, 0.71, 0.69, 0.72, 0.68])
    assert out["mean_diff"] == pytest.approx(0.15)
    assert out["p_welch"] < 1e-6
    assert out["p_mwu"] == pytest.approx(2 / 252)  # exact MWU, complete separation of 5 vs 5
    one = compare_to_control([0.9], [0.7, 0.71, 0.69])
    assert math.isnan(one["p_welch"]) and one["mean_diff"] == pytest.approx(0.2)


def test_welch_p_value_matches_the_formula():
    """t = (mean_x - mean_y) / sqrt(vx/nx + vy/ny) and the Welch-Satterthwaite df, by hand; p = 2 P(T_df > |t|)."""
    x, y = [0.61, 0.70, 0.55, 0.72, 0.66], [0.10, 0.58, 0.21, 0.72, 0.49, 0.05, 0.62]
    mx, my = sum(x) / len(x), sum(y) / len(y)
    vx = sum((v - mx) ** 2 for v in x) / (len(x) - 1) / len(x)  # squared standard errors
    vy = sum((v - my) ** 2 for v in y) / (len(y) - 1) / len(y)
    t = (mx - my) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    assert 7.0 < df < 7.1  # unequal variances: Welch's df, far from the pooled 10
    want = 2 * sps.t.sf(abs(t), df)
    assert compare_to_control(x, y)["p_welch"] == pytest.approx(want, rel=1e-9)
    assert compare_to_control(y, x)["p_welch"] == pytest.approx(want, rel=1e-9)


def test_false_positive_rate_of_null_draws():
    rng = np.random.default_rng(12345)
    draws = [compare_to_control(rng.normal(0.7, 0.03, 5), rng.normal(0.7, 0.03, 5)) for _ in range(200)]
    fpr_welch = np.mean([d["p_welch"] < 0.05 for d in draws])
    fpr_mwu = np.mean([d["p_mwu"] < 0.05 for d in draws])
    # binomial(200, 0.05): sd ~0.015; Welch with n=5 is slightly conservative, exact MWU 5v5 has size 0.032
    assert 0.01 <= fpr_welch <= 0.10
    assert 0.005 <= fpr_mwu <= 0.10


def test_pass_at_k_names():
    names = ["eval/pass@16", "eval/accuracy", "eval/pass_at_8", "eval/avg@8", "train/pass@1"]
    assert pass_at_k_metrics(names) == ["eval/pass_at_8", "eval/pass@16"]


def test_condition_and_seed_from_tags():
    ov = json.dumps(["seed=3", "task=countdown", "intervention=only_pos_high"])
    assert condition_from_tags({"quadrl.condition": "x=1", "quadrl.overrides": ov}) == "x=1"
    assert condition_from_tags({"quadrl.overrides": ov}) == "intervention=only_pos_high task=countdown"
    assert condition_from_tags({"quadrl.overrides": json.dumps(["+seed=1"])}) == "default"
    assert condition_from_tags({}, {"intervention.name": "none"}) == "intervention=none"
    assert seed_from({"seed": "7"}, {}) == 7
    assert seed_from({}, {"quadrl.overrides": ov}) == 3
    assert seed_from({}, {}) is None


# ------------------------------------------------------------------------------- in-memory summary tables


def _tables(rows: list[tuple[str, str, int, str, list[float]]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = pd.DataFrame(
        [(rid, st, cond, seed, pd.Timestamp(i, unit="s")) for i, (rid, st, cond, seed, _) in enumerate(rows)],
        columns=["run_id", "status", "condition", "seed", "start_time"],
    )
    hist = pd.DataFrame(
        [
            (rid, cond, seed, "eval/accuracy", 10 * j, v)
            for rid, _, cond, seed, vals in rows
            for j, v in enumerate(vals)
        ],
        columns=["run_id", "condition", "seed", "metric", "step", "value"],
    )
    return runs, hist


def test_failed_runs_never_averaged_and_few_seeds_flagged():
    rows = [(f"c{s}", "FINISHED", "ctrl", s, [0.5, 0.6 + 0.01 * s]) for s in range(3)]
    rows += [(f"a{s}", "FINISHED", "A", s, [0.5, 0.7]) for s in range(3)]
    rows += [("a_failed", "FAILED", "A", 3, [0.5, 100.0])]  # would dominate any average it entered
    rows += [("b0", "FINISHED", "B", 0, [0.5, 0.9])]
    rows += [(f"c2_{s}", "FINISHED", "C", s, [0.5, 0.9 + 0.01 * s]) for s in range(2)]  # 2 < min_seeds
    runs, hist = _tables(rows)
    s = summarise(runs, hist, control="ctrl", target=0.65).table.set_index("condition")
    assert s.loc["A", "final_mean"] == pytest.approx(0.7)
    assert (s.loc["A", "n"], s.loc["A", "n_finished"], s.loc["A", "n_failed"]) == (3, 3, 1)
    assert s.loc["A", "n_reached"] == 3 and s.loc["A", "steps_mean"] == pytest.approx(10)
    assert s.loc["ctrl", "n_reached"] == 0 and math.isnan(s.loc["ctrl", "steps_mean"])  # 0.60-0.62 < 0.65
    assert "too few seeds" in s.loc["B", "flag"] and math.isnan(s.loc["B", "p_welch"])
    assert s.loc["B", "final_mean"] == pytest.approx(0.9) and math.isnan(s.loc["B", "final_lo"])
    assert s.loc["A", "flag"] == "" and not math.isnan(s.loc["A", "p_welch"])
    assert "too few seeds" in s.loc["C", "flag"] and math.isnan(s.loc["C", "p_welch"])  # testable, not tested
    assert math.isnan(s.loc["C", "p_mwu_holm"]) and s.loc["C", "mean_diff"] == pytest.approx(0.295)
    # Holm over the one tested condition (A) leaves its p-value as is
    assert s.loc["A", "p_welch_holm"] == pytest.approx(s.loc["A", "p_welch"])


def test_duplicate_seed_keeps_latest_run():
    rows = [("old", "FINISHED", "A", 0, [0.1]), ("new", "FINISHED", "A", 0, [0.9])]
    runs, hist = _tables(rows)
    summary = summarise(runs, hist, min_seeds=1)
    assert summary.per_run["run_id"].tolist() == ["new"]
    assert [n.kind for n in summary.notes] == ["duplicate_seed"]


# ------------------------------------------------------------------------------------- real MLflow store

CTRL, EFFECT, NULL = "intervention=none", "intervention=only_pos_high", "intervention=only_neg_low"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A parent run with 3 conditions x 5 seeds (control 0.70, effect 0.85, null 0.70; noise sd 0.03)."""
    tmp = tmp_path_factory.mktemp("mlflow_stats")
    uri = f"sqlite:///{tmp}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    conditions = [
        SyntheticCondition("none", 0.70),
        SyntheticCondition("only_pos_high", 0.85),
        SyntheticCondition("only_neg_low", 0.70, tag_condition=False),  # condition from quadrl.overrides
    ]
    parent = log_synthetic_sweep(
        uri,
        "stats",
        conditions,
        steps=40,
        quadrant_stats=(),
        seed=7,
        artifact_location=(tmp / "artifacts").as_uri(),
    )
    return uri, parent


def test_load_runs_from_parent_and_experiment(sweep):
    uri, parent = sweep
    rs = load_runs(uri, parent_run_id=parent)
    assert len(rs.runs) == 15 and rs.parent_run_id == parent
    assert rs.conditions == sorted([CTRL, EFFECT, NULL])
    assert set(rs.runs["status"]) == {"FINISHED"}
    assert sorted(rs.runs.loc[rs.runs["condition"] == NULL, "seed"].tolist()) == [0, 1, 2, 3, 4]
    assert {"params.seed", "params.intervention.name", "params.task.name"} <= set(rs.runs.columns)
    acc = rs.history[rs.history["metric"] == "eval/accuracy"]
    assert len(acc) == 15 * 5 and sorted(acc["step"].unique()) == [0, 10, 20, 30, 40]  # eval every 10 of 40
    assert list(rs.history.columns) == ["run_id", "condition", "seed", "metric", "step", "value"]
    by_exp = load_runs(uri, experiment="stats", metrics=["eval/*"])
    assert set(by_exp.runs["run_id"]) == set(rs.runs["run_id"])  # the sweep parent is left out
    assert by_exp.parent_run_id == parent  # shared by all runs
    assert set(by_exp.metric_names) == {"eval/accuracy", "eval/pass_at_8"}


def test_planted_effect_found_and_null_not_flagged(sweep):
    uri, parent = sweep
    rs = load_runs(uri, parent_run_id=parent)
    summary = summarise(rs.runs, rs.history, control=CTRL)
    t = summary.table.set_index("condition")
    assert t.loc[EFFECT, "mean_diff"] == pytest.approx(0.15, abs=0.05)
    assert t.loc[EFFECT, "p_welch_holm"] < 0.05 and t.loc[EFFECT, "p_mwu_holm"] < 0.05
    assert t.loc[EFFECT, "hedges_g"] > 2
    assert t.loc[EFFECT, "final_lo"] > t.loc[CTRL, "final_hi"]  # CIs separate
    assert t.loc[NULL, "p_welch_holm"] > 0.05 and t.loc[NULL, "p_mwu_holm"] > 0.05
    assert t.loc[CTRL, "is_control"] and math.isnan(t.loc[CTRL, "p_welch"])
    assert summary.notes == []


def test_overrides_common_to_every_condition_are_left_out_of_the_names():
    import pandas as pd

    from analysis.load import shared_overrides
    from analysis.report import resolve_control

    study = [
        "experiment=q intervention=none",
        "experiment=q intervention=hapo",
        "experiment=q intervention=hapo",
    ]
    assert shared_overrides(study) == ("experiment=q",)
    assert shared_overrides(["experiment=q intervention=none"]) == ()  # one condition: nothing to tell apart
    assert shared_overrides(["a=1 b=2", "a=1 b=3", "b=2"]) == ()
    runs = pd.DataFrame({"condition": ["intervention=none", "intervention=hapo"]})
    # a control spelled with the shared override still finds its (shortened) condition
    assert (
        resolve_control(runs, "experiment=q intervention=none", ("experiment=q",))[0] == "intervention=none"
    )
    assert resolve_control(runs, "experiment=q intervention=none")[0] == "experiment=q intervention=none"
