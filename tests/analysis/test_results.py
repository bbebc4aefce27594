"""Results files, the check of a fresh study against a published one, and the README tables generated from them.

Synthetic runs in a real MLflow store (analysis.synthetic), as the statistics tests do: a planted disagreement must
be flagged, an identical re-run must not.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import report
from analysis.results import (
    check_against,
    diff_interval,
    main,
    marked_files,
    read_results,
    results_table,
    update_readme,
)
from analysis.stats import t_interval
from analysis.synthetic import SyntheticCondition, log_synthetic_sweep
from tests.conftest import REPO

CTRL = "intervention=none"


def study(tmp_path, name: str, finals: dict[str, float], seed: int = 0) -> dict:
    """A synthetic 5-seed sweep logged to a fresh SQLite store, reported; returns its results file."""
    uri = f"sqlite:///{tmp_path / f'{name}.db'}"
    conditions = [SyntheticCondition(i, f) for i, f in finals.items()]
    parent = log_synthetic_sweep(
        uri, name, conditions, seed=seed, artifact_location=str(tmp_path / f"art-{name}")
    )
    out = tmp_path / name
    report.build_report(
        report.ReportOptions(out_dir=out, tracking_uri=uri, parent_run_id=parent, control=CTRL)
    )
    return read_results(out / "results.json")


REFERENCE = {"none": 0.70, "only_pos_high": 0.85, "hapo": 0.75}


def test_results_file_holds_every_seed_and_the_table(tmp_path):
    results = study(tmp_path, "ref", REFERENCE)
    assert results["metric"] == "eval/accuracy" and results["compare_on"] == "final"
    assert results["control"] == CTRL and set(results["conditions"]) == {
        f"intervention={k}" for k in REFERENCE
    }
    pos = results["conditions"]["intervention=only_pos_high"]
    assert pos["seeds"] == [0, 1, 2, 3, 4] and len(pos["values"]) == 5
    assert pos["mean"] == pytest.approx(np.mean(pos["values"]))
    assert pos["lo"] <= pos["mean"] <= pos["hi"]
    assert pos["mean_diff"] == pytest.approx(pos["mean"] - results["conditions"][CTRL]["mean"])
    assert results["conditions"][CTRL]["p_welch_holm"] is None  # the control is not tested against itself


@pytest.mark.slow
@pytest.mark.ci
def test_an_identical_rerun_agrees_and_a_planted_disagreement_is_flagged(tmp_path):
    reference = study(tmp_path, "ref", REFERENCE)
    rerun = study(tmp_path, "rerun", REFERENCE)  # same code, same seeds: the same numbers
    same = check_against(rerun, reference)
    assert same.disagreements == [] and same.flipped == [] and all(c.diff == 0.0 for c in same.conditions)
    assert all(c.seeds_identical == c.seeds_compared == 5 for c in same.conditions)

    planted = study(tmp_path, "planted", {**REFERENCE, "only_pos_high": 0.55})  # -0.30 on one condition
    check = check_against(planted, reference)
    assert check.disagreements == ["intervention=only_pos_high"]
    bad = next(c for c in check.conditions if c.condition == "intervention=only_pos_high")
    assert bad.hi < 0 and bad.diff == pytest.approx(-0.30, abs=0.05)
    assert (bad.seeds_compared, bad.seeds_identical) == (5, 0)  # every seed moved; the others did not
    assert sorted(check.identical) == ["intervention=hapo", "intervention=none"]
    # only_pos_high was above both others and is now below both: two pairs changed order, and the reference had
    # separated both (0.85 vs 0.75 and 0.70 with seed sd 0.03)
    assert sorted(check.flipped) == [
        ("intervention=only_pos_high", "intervention=hapo"),
        ("intervention=only_pos_high", "intervention=none"),
    ]
    assert len(check.resolved_flips) == 2


def test_report_with_reference_says_which_condition_differs(tmp_path, capsys):
    reference = study(tmp_path, "ref", REFERENCE)
    ref_file = tmp_path / "reference.json"
    ref_file.write_text(json.dumps(reference))
    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    parent = log_synthetic_sweep(
        uri,
        "fresh",
        [SyntheticCondition(i, f) for i, f in {**REFERENCE, "hapo": 0.95}.items()],
        artifact_location=str(tmp_path / "art-fresh"),
    )
    code = report.main(
        ["--tracking-uri", uri, "--parent-run", parent, "--out", str(tmp_path / "rep"), "--control", CTRL]
        + ["--reference", str(ref_file)]
    )
    assert code == 0
    text = (tmp_path / "rep" / "report.md").read_text()
    section = text.split("## Against the reference", 1)[1].split("## Warnings", 1)[0]
    assert "1 of 3 conditions differ from the reference: intervention=hapo" in section
    assert "| intervention=hapo |" in section and "DIFFERS" in section
    # 0.85 > 0.75 became 0.85 < 0.95, a difference the reference resolved (seed sd 0.03)
    assert (
        "- `intervention=only_pos_high` vs `intervention=hapo`: 0.1" in section and "**resolved**" in section
    )
    # the two conditions left alone are the same numbers seed for seed; hapo none of its seeds
    assert "| 5/5 | agrees |" in section and "| 0/5 | DIFFERS |" in section
    assert "1 pair(s) changed order, 1 of them resolved by the reference" in capsys.readouterr().out


def results(conditions: dict[str, dict[int, float]]) -> dict:
    """A hand-made results file: {condition: {seed: value}}."""
    return {
        "metric": "eval/accuracy",
        "compare_on": "final",
        "conditions": {
            c: {"seeds": list(by_seed), "values": list(by_seed.values())} for c, by_seed in conditions.items()
        },
    }


SEPARATED = {"strong": {s: 0.80 + 0.01 * s for s in range(5)}, "weak": {s: 0.50 + 0.01 * s for s in range(5)}}
"""Two conditions 0.30 apart (seed sd 0.016 each): the Welch interval of strong - weak is 0.30 -+ 0.023."""


def test_seeds_are_compared_one_by_one_matched_by_seed_not_position():
    reference = results({"a": {0: 0.70, 1: 0.60, 2: 0.65}, "b": {0: 0.30, 1: 0.35, 2: 0.40}})
    # a: the same three numbers listed in another seed order, plus a seed the reference did not run;
    # b: seed 1 differs in the last digit that matters
    fresh = results({"a": {2: 0.65, 0: 0.70, 1: 0.60, 3: 0.9}, "b": {0: 0.30, 1: 0.351, 2: 0.40}})
    check = check_against(fresh, reference)
    by = {c.condition: c for c in check.conditions}
    assert (by["a"].seeds_compared, by["a"].seeds_identical) == (3, 3)
    assert (by["b"].seeds_compared, by["b"].seeds_identical) == (3, 2)
    assert check.identical == ["a"]


def test_an_order_flip_is_resolved_only_when_the_reference_separated_the_pair():
    close = {
        "tied_hi": {0: 0.30, 1: 0.50, 2: 0.10, 3: 0.45, 4: 0.20},
        "tied_lo": {0: 0.25, 1: 0.45, 2: 0.15, 3: 0.40, 4: 0.20},
    }
    reference = results({**close, **SEPARATED})
    # fresh: the tied pair swaps (means 0.31 vs 0.29 -> 0.29 vs 0.31), so does the separated one (0.82 vs 0.52 -> 0.4 vs 0.6)
    fresh = results(
        {
            "tied_hi": {s: v - 0.02 for s, v in close["tied_hi"].items()},
            "tied_lo": close["tied_hi"],
            "strong": {s: 0.40 for s in range(5)},
            "weak": {s: 0.60 for s in range(5)},
        }
    )
    check = check_against(fresh, reference)
    flips = {(f.above, f.below): f for f in check.flips}
    assert ("tied_hi", "tied_lo") in flips and ("strong", "weak") in flips
    tied, strong = flips[("tied_hi", "tied_lo")], flips[("strong", "weak")]
    assert tied.reference_diff == pytest.approx(0.02) and tied.lo < 0 < tied.hi and not tied.resolved
    # Welch: se sqrt(2 x 0.00025 / 5) = 0.01, df 8, t_{0.975, 8} = 2.306004 -> lo = 0.30 - 0.02306
    assert strong.reference_diff == pytest.approx(0.30) and strong.lo == pytest.approx(0.30 - 0.02306004)
    assert strong.resolved
    assert [(f.above, f.below) for f in check.resolved_flips] == [("strong", "weak")]


def test_compare_two_results_files_from_the_command_line(tmp_path, capsys):
    reference = results(SEPARATED)
    ref, same, swapped = tmp_path / "ref.json", tmp_path / "same.json", tmp_path / "swapped.json"
    ref.write_text(json.dumps(reference))
    same.write_text(json.dumps(reference))
    swapped.write_text(
        json.dumps(results({"strong": {s: 0.4 for s in range(5)}, "weak": {s: 0.6 for s in range(5)}}))
    )
    assert main(["compare", str(same), str(ref)]) == 0
    out = capsys.readouterr().out
    assert (
        "reproduced the reference: 2/2 conditions agree (2 identical in every seed), no order flipped" in out
    )
    assert main(["compare", str(swapped), str(ref)]) == 1
    out = capsys.readouterr().out
    assert "0/2 conditions agree with the reference" in out and "1 of them resolved by the reference" in out
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["compare", str(tmp_path / "junk.json"), str(ref)]) == 2
    assert "junk.json: not a readable results file" in capsys.readouterr().err


def test_false_alarm_rate_of_the_agreement_check_at_5_seeds():
    """The interval is the 95% Welch interval: between two honest re-runs (5 normal seeds a side, the same mean) it
    says "DIFFERS" in 4.5% of 2,000 simulated pairs (10,000 pairs: 4.2%; Welch's df is a little conservative at
    equal spreads), the rate docs/guides/analysis.md states; the percentile bootstrap it replaced raised 12.3%. The
    band [3%, 7%] is about 4 binomial sd (0.49 points) around 5%. A planted shift of 3 seed-SDs is caught in 98%."""
    rng = np.random.default_rng(0)
    null = [diff_interval(rng.normal(0.6, 0.03, 5), rng.normal(0.6, 0.03, 5)) for _ in range(2000)]
    false_alarms = np.mean([not (lo <= 0 <= hi) for _, lo, hi in null])
    shifted = [diff_interval(rng.normal(0.69, 0.03, 5), rng.normal(0.6, 0.03, 5)) for _ in range(300)]
    power = np.mean([not (lo <= 0 <= hi) for _, lo, hi in shifted])
    assert 0.03 <= false_alarms <= 0.07, false_alarms
    assert power > 0.95, power


def test_readme_tables_are_generated_from_the_results_files(tmp_path):
    results = study(tmp_path, "ref", REFERENCE)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "r.json").write_text(json.dumps(results))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results: docs/r.json -->\nold table\n<!-- /results -->\nend\n")
    assert update_readme(readme, check=True) == ["docs/r.json"] and "old table" in readme.read_text()
    assert update_readme(readme) == ["docs/r.json"]
    text = readme.read_text()
    assert (
        results_table(results) in text
        and "old table" not in text
        and text.endswith("<!-- /results -->\nend\n")
    )
    assert update_readme(readme, check=True) == []


def test_the_command_regenerates_every_page_that_holds_a_table(tmp_path):
    """``python -m analysis.results readme`` covers README.md and the docs pages, paths relative to the root."""
    results = study(tmp_path, "ref", REFERENCE)
    (tmp_path / "docs" / "studies").mkdir(parents=True)
    (tmp_path / "docs" / "results.json").write_text(json.dumps(results))
    block = "<!-- results: docs/results.json -->\nold\n<!-- /results -->\n"
    readme, page, plain = (
        tmp_path / "README.md",
        tmp_path / "docs" / "studies" / "a.md",
        tmp_path / "docs" / "b.md",
    )
    readme.write_text(block)
    page.write_text("# A\n" + block)
    plain.write_text("# B, no table\n")
    assert marked_files(tmp_path) == [readme, page]
    assert main(["readme", "--root", str(tmp_path), "--check"]) == 1 and "old" in page.read_text()
    assert main(["readme", "--root", str(tmp_path)]) == 0
    assert results_table(results) in readme.read_text() and results_table(results) in page.read_text()
    assert main(["readme", "--root", str(tmp_path), "--check"]) == 0


def test_the_repository_tables_match_their_results_files():
    pages = marked_files(REPO)
    # the front page holds the main study's table; the study pages hold all three
    assert REPO / "README.md" in pages and len(pages) >= 4, pages
    assert [(p, update_readme(p, REPO, check=True)) for p in pages] == [(p, []) for p in pages]


def test_readme_recomputes_stale_intervals_from_the_stored_values(tmp_path, capsys):
    """A results file whose lo/hi came from another rule (here the old bootstrap's) is flagged by --check and
    rewritten by readme from its per-seed values; the p-values and everything else stay as they were."""
    values = [0.735, 0.67, 0.7, 0.73, 0.715]
    stale = results({"a": dict(enumerate(values))})
    stale["conditions"]["a"].update(mean=0.71, lo=0.688, hi=0.729, p_welch_holm=0.5)
    path = tmp_path / "docs" / "results" / "r.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(stale))
    assert main(["readme", "--root", str(tmp_path), "--check"]) == 1
    assert "stale: the intervals of" in capsys.readouterr().out and json.loads(path.read_text()) == stale
    assert main(["readme", "--root", str(tmp_path)]) == 0
    fresh = read_results(path)["conditions"]["a"]
    lo, hi = t_interval(values)
    assert (fresh["lo"], fresh["hi"]) == pytest.approx((lo, hi)) and fresh["mean"] == pytest.approx(0.71)
    assert (fresh["lo"], fresh["hi"]) == pytest.approx((0.677, 0.743), abs=5e-4) and fresh[
        "p_welch_holm"
    ] == 0.5
    assert main(["readme", "--root", str(tmp_path), "--check"]) == 0


def test_contrasts_hand_values_and_holm_across_files(tmp_path):
    from analysis.results import contrasts, contrasts_markdown, main

    def write(name: str, conditions: dict[str, list[float]]) -> str:
        path = tmp_path / f"{name}.json"
        body = {c: {"seeds": list(range(len(v))), "values": v} for c, v in conditions.items()}
        path.write_text(json.dumps({"metric": "eval/accuracy", "conditions": body}))
        return str(path)

    # a = (1, 2, 3) vs b = (0, 0, 0): diff 2, se^2 = 1/3, df = 2 (all variance on one side), t_.975,2 = 4.302653
    one = write("one", {"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, 0.0]})
    # c = (0, 2) vs d = (0, 2): diff 0, p 1
    two = write("two", {"c": [0.0, 2.0], "d": [0.0, 2.0]})
    table = contrasts([f"{one}:a:b", f"{two}:c:d"])
    first, second = table.iloc[0], table.iloc[1]
    half = 4.302653 * (1 / 3) ** 0.5
    assert first.mean_diff == pytest.approx(2.0)
    assert (first.lo, first.hi) == (pytest.approx(2 - half, abs=1e-5), pytest.approx(2 + half, abs=1e-5))
    p = first.p_welch  # two-sided t(2) at t = 2 / sqrt(1/3) = 3.4641: 0.07418
    assert p == pytest.approx(0.07418, abs=1e-4)
    assert second.mean_diff == 0.0 and second.p_welch == pytest.approx(1.0)
    # Holm over the two: 2 * 0.07418 for the smaller, max(that, 1) for the larger
    assert table.p_welch_holm.tolist() == [pytest.approx(2 * p), pytest.approx(1.0)]
    assert "+2.000 [" in contrasts_markdown(table)
    assert main(["contrasts", f"{one}:a:missing"]) == 2
