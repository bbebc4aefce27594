"""A study's results as a machine-readable file, the check of a fresh study against such a file, and the tables
generated from them in the README and the documentation pages (``python -m analysis.results readme``).

Results file (JSON, written by every report as ``results.json``)::

    {"metric": "eval/accuracy", "compare_on": "final", "control": "intervention=none", "generated": "...",
     "machine": {"quadrl.cpu": "...", "quadrl.torch": "...", ...}, "shared_overrides": [...],
     "conditions": {"intervention=hapo": {"seeds": [0, 1, ...], "values": [0.61, ...], "mean": ...,
                    "lo": ..., "hi": ..., "mean_diff": ..., "p_welch_holm": ...}, ...}}

``values`` are each seed's value of the compared quantity (the metric's value at the run's last step for
``final``), in seed order: enough to recompute every statistic, and to compare two studies seed by seed.

Reference check. For each condition in both files: the difference of the means (fresh - reference) and its 95%
Welch interval (``analysis.stats.mean_difference_ci``: Student t with the Welch-Satterthwaite df, the seeds of each
side independent); the condition *agrees* when the interval contains 0. Between two honest re-runs of 5 seeds a
side it raises a false alarm ("DIFFERS") in about 5% of conditions (measured: tests/analysis/test_results.py), so
over a 10-condition study one false alarm is not rare; and the check says "no detectable difference", not
"equal". Seeds present on both sides are also compared one by one: ``seeds_identical`` counts
those whose values are the same number, the strongest form of agreement (same code, same seed, same numbers).
Conditions whose order flipped (a above b in the reference, below in the fresh study) are listed pair by pair; a
flip is *resolved* when the reference itself separated the two (its 95% Welch interval of mean(a) - mean(b), the
same interval as above, excludes 0). An unresolved flip swaps two conditions the reference could not tell
apart: expected noise, not a contradicted finding.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import tables
from analysis.stats import MetricSummary, compare_to_control, holm, mean_ci, mean_difference_ci
from runrecord import CPU_TAG, PROVENANCE_TAGS

FORMAT_VERSION = 1


def results_from(
    summary: MetricSummary, runs: pd.DataFrame, shared_overrides: Sequence[str] = ()
) -> dict[str, object]:
    """The results file's content for one metric's summary (``runs``: the RunSet's runs, for provenance)."""
    per_run = summary.per_run.sort_values(["condition", "seed"])
    conditions: dict[str, dict[str, object]] = {}
    for row in summary.table.itertuples(index=False):
        mine = per_run[per_run["condition"] == row.condition]
        conditions[row.condition] = {
            "seeds": [None if pd.isna(s) else int(s) for s in mine["seed"]],
            "values": [float(v) for v in mine[summary.compare_on]],
            "mean": _number(getattr(row, f"{summary.compare_on}_mean")),
            "lo": _number(getattr(row, f"{summary.compare_on}_lo")),
            "hi": _number(getattr(row, f"{summary.compare_on}_hi")),
            "mean_diff": _number(row.mean_diff),
            "p_welch_holm": _number(row.p_welch_holm),
            "p_mwu_holm": _number(row.p_mwu_holm),
            "n_finished": int(row.n_finished),
            "n_failed": int(row.n_failed),
        }
    machine: dict[str, object] = {}
    for tag in PROVENANCE_TAGS:
        column = f"tags.{tag}"
        values = sorted({str(v) for v in runs[column].dropna()}) if column in runs.columns else []
        if values:
            machine[tag] = values[0] if len(values) == 1 else values
    return {
        "format": FORMAT_VERSION,
        "metric": summary.metric,
        "compare_on": summary.compare_on,
        "control": summary.control,
        "generated": dt.date.today().isoformat(),
        "machine": machine,
        "shared_overrides": list(shared_overrides),
        "conditions": conditions,
    }


def _number(x: object) -> float | None:
    return None if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)) else float(x)


def with_intervals(results: Mapping[str, object]) -> dict[str, object]:
    """The results with each condition's mean, lo and hi recomputed from its ``values`` by today's rule
    (``analysis.stats.mean_ci``); everything else (the p-values, which do not depend on the interval) as it was."""
    out = json.loads(json.dumps(results))
    for condition in out["conditions"].values():
        mean, lo, hi = mean_ci(condition["values"])
        condition.update(mean=_number(mean), lo=_number(lo), hi=_number(hi))
    return out


def refresh_intervals(path: str | Path, *, check: bool = False) -> bool:
    """Rewrite a results file's intervals from its stored per-seed values (:func:`with_intervals`); True when they
    were stale. With ``check`` nothing is written."""
    results = read_results(path)
    fresh = with_intervals(results)
    if fresh == results:
        return False
    if not check:
        write_results(fresh, path)
    return True


def write_results(results: Mapping[str, object], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    return path


def read_results(path: str | Path) -> dict[str, object]:
    path = Path(path)
    try:
        results = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable results file ({exc})") from exc
    if not isinstance(results, dict) or "conditions" not in results:
        raise ValueError(f"{path}: not a quadrl results file (no 'conditions')")
    return results


# ----------------------------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class ConditionCheck:
    condition: str
    fresh_mean: float
    reference_mean: float
    diff: float
    """fresh - reference."""
    lo: float
    hi: float
    agrees: bool
    """The interval contains 0 (no detectable difference)."""
    seeds_compared: int = 0
    """Seeds that both sides ran (matched by seed, not by position)."""
    seeds_identical: int = 0
    """Of those, the seeds whose values are the same number on both sides."""


@dataclass(frozen=True)
class Flip:
    """Two conditions whose order changed: ``above`` was above ``below`` in the reference, is below it now."""

    above: str
    below: str
    reference_diff: float
    """mean(above) - mean(below) in the reference (> 0)."""
    lo: float
    hi: float
    """The reference's 95% Welch interval of that difference."""

    @property
    def resolved(self) -> bool:
        """The reference separated the two (its interval excludes 0): a published ordering was reversed."""
        return not math.isnan(self.lo) and self.lo > 0.0


@dataclass(frozen=True)
class ReferenceCheck:
    metric: str
    conditions: list[ConditionCheck]
    flips: list[Flip]
    only_fresh: list[str]
    only_reference: list[str]

    @property
    def flipped(self) -> list[tuple[str, str]]:
        """(a, b): a above b in the reference, below in the fresh study."""
        return [(f.above, f.below) for f in self.flips]

    @property
    def resolved_flips(self) -> list[Flip]:
        return [f for f in self.flips if f.resolved]

    @property
    def disagreements(self) -> list[str]:
        return [c.condition for c in self.conditions if not c.agrees]

    @property
    def identical(self) -> list[str]:
        """Conditions whose every seed, on both sides, has the same value (and at least one seed in common)."""
        return [
            c.condition for c in self.conditions if c.seeds_compared and c.seeds_identical == c.seeds_compared
        ]


def diff_interval(fresh: Sequence[float], reference: Sequence[float]) -> tuple[float, float, float]:
    """(mean(fresh) - mean(reference), lo, hi): the 95% Welch interval (``analysis.stats.mean_difference_ci``).
    One value on a side gives no interval (NaN bounds)."""
    a, b = np.asarray(fresh, dtype=float), np.asarray(reference, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    diff = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    return (diff, *mean_difference_ci(a, b))


def check_against(fresh: Mapping[str, object], reference: Mapping[str, object]) -> ReferenceCheck:
    """Condition by condition, does the fresh study agree with the reference (module docstring)?"""
    if fresh.get("metric") != reference.get("metric") or fresh.get("compare_on") != reference.get(
        "compare_on"
    ):
        raise ValueError(
            f"the reference reports {reference.get('compare_on')} {reference.get('metric')}, this study "
            f"{fresh.get('compare_on')} {fresh.get('metric')}: not comparable"
        )
    f_conds: Mapping[str, dict] = fresh["conditions"]  # type: ignore[assignment]
    r_conds: Mapping[str, dict] = reference["conditions"]  # type: ignore[assignment]
    common = [c for c in r_conds if c in f_conds]
    checks = []
    for cond in common:
        fv, rv = f_conds[cond]["values"], r_conds[cond]["values"]
        diff, lo, hi = diff_interval(fv, rv)
        agrees = bool(lo <= 0.0 <= hi) if not math.isnan(lo) else bool(diff == 0.0)
        fresh_by_seed = _by_seed(f_conds[cond])
        shared = [(v, fresh_by_seed[s]) for s, v in _by_seed(r_conds[cond]).items() if s in fresh_by_seed]
        checks.append(
            ConditionCheck(
                cond,
                float(np.mean(fv)),
                float(np.mean(rv)),
                diff,
                lo,
                hi,
                agrees,
                seeds_compared=len(shared),
                seeds_identical=sum(r == f for r, f in shared),
            )
        )
    means = {c.condition: (c.reference_mean, c.fresh_mean) for c in checks}
    flips = []
    for i, a in enumerate(common):
        for b in common[i + 1 :]:
            if (means[a][0] - means[b][0]) * (means[a][1] - means[b][1]) >= 0:
                continue
            above, below = (a, b) if means[a][0] > means[b][0] else (b, a)
            diff, lo, hi = diff_interval(r_conds[above]["values"], r_conds[below]["values"])
            flips.append(Flip(above, below, diff, lo, hi))
    return ReferenceCheck(
        metric=str(fresh.get("metric")),
        conditions=checks,
        flips=flips,
        only_fresh=[c for c in f_conds if c not in r_conds],
        only_reference=[c for c in r_conds if c not in f_conds],
    )


def _by_seed(condition: Mapping[str, object]) -> dict[object, float]:
    """{seed: value} of one condition of a results file (a run without a seed is matched by nothing)."""
    seeds, values = condition.get("seeds") or [], condition["values"]
    return {s: float(v) for s, v in zip(seeds, values, strict=False) if s is not None}  # type: ignore[arg-type]


def reference_markdown(check: ReferenceCheck, reference_path: str | Path) -> str:
    """The report's "Against the reference" section."""
    header = [
        "condition",
        "fresh",
        "reference",
        "fresh - reference [95% CI]",
        "seeds identical",
        "verdict",
    ]
    rows = [
        [
            c.condition,
            tables.fmt_num(c.fresh_mean),
            tables.fmt_num(c.reference_mean),
            tables.fmt_ci(c.diff, c.lo, c.hi),
            f"{c.seeds_identical}/{c.seeds_compared}",
            "agrees" if c.agrees else "DIFFERS",
        ]
        for c in check.conditions
    ]
    n_bad = len(check.disagreements)
    verdict = (
        f"All {len(check.conditions)} conditions agree with the reference"
        if not n_bad
        else f"{n_bad} of {len(check.conditions)} conditions differ from the reference: {', '.join(check.disagreements)}"
    )
    lines = [
        f"## Against the reference (`{reference_path}`)",
        "",
        f"{verdict}. Agrees: the 95% Welch interval of the difference of the means contains 0 -- no detectable "
        f"difference, which is not proof of equality (between honest re-runs of 5 seeds a side, ~5% of conditions "
        f"differ by chance). Seeds "
        f"identical: of the seeds both sides ran, those with the same value on both ({len(check.identical)} of "
        f"{len(check.conditions)} conditions in every seed).",
        "",
        tables.to_markdown(header, rows),
        "",
    ]
    if check.flips:
        lines += [
            "Order flipped (reference a > b, fresh a < b), with the reference's own a - b [95% CI]: resolved "
            "when that interval excludes 0 (a published ordering reversed), else within the reference's noise:",
            "",
        ]
        lines += [
            f"- `{f.above}` vs `{f.below}`: {tables.fmt_ci(f.reference_diff, f.lo, f.hi)}, "
            + ("**resolved**" if f.resolved else "within noise")
            for f in check.flips
        ] + [""]
    else:
        lines += ["No pair of conditions changed order.", ""]
    if check.only_fresh or check.only_reference:
        lines += [
            f"Only in this study: {check.only_fresh}; only in the reference: {check.only_reference}.",
            "",
        ]
    return "\n".join(lines)


def reference_summary_line(check: ReferenceCheck) -> str:
    """One line for the end of a study."""
    n, bad = len(check.conditions), check.disagreements
    identical = f" ({len(check.identical)} identical in every seed)"
    if not bad and not check.flips:
        return f"reproduced the reference: {n}/{n} conditions agree{identical}, no order flipped"
    return (
        f"{n - len(bad)}/{n} conditions agree with the reference{identical}"
        + (f"; differ: {', '.join(bad)}" if bad else "")
        + (
            f"; {len(check.flips)} pair(s) changed order, {len(check.resolved_flips)} of them resolved by the "
            "reference"
            if check.flips
            else ""
        )
    )


# ----------------------------------------------------------------------------------------------- README tables

_BLOCK = re.compile(r"(<!-- results: (?P<path>\S+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)


def results_table(results: Mapping[str, object]) -> str:
    """The README table of a results file: each condition's mean [95% CI] and its difference from the control
    with the Holm-corrected Welch p-value, then the date and the machine it was measured on."""
    conds: Mapping[str, dict] = results["conditions"]  # type: ignore[assignment]
    control = results.get("control")
    header = [
        "condition",
        "seeds",
        f"{results['compare_on']} {results['metric']} [95% CI]",
        "vs. control (Welch p, Holm)",
    ]
    rows = []
    for name, c in conds.items():
        vs = (
            "control"
            if name == control
            else f"{tables.fmt_num(c['mean_diff'])} ({tables.fmt_p(c['p_welch_holm'])})"
        )
        rows.append([name, str(len(c["values"])), tables.fmt_ci(c["mean"], c["lo"], c["hi"]), vs])
    machine: Mapping[str, object] = results.get("machine", {})  # type: ignore[assignment]
    cpu = machine.get(CPU_TAG, "unknown CPU")
    torch_version = machine.get("quadrl.torch", "?")
    return (
        tables.to_markdown(header, rows)
        + f"\n\nMeasured {results.get('generated')} on {cpu} (torch {torch_version}); generated from the results file.\n"
    )


def update_readme(readme: str | Path, root: str | Path | None = None, *, check: bool = False) -> list[str]:
    """Regenerate every ``<!-- results: FILE -->`` ... ``<!-- /results -->`` block of ``readme`` from FILE
    (relative to ``root``, default the README's folder). Returns the files whose block was stale; with
    ``check`` nothing is written."""
    readme = Path(readme)
    root = Path(root) if root is not None else readme.parent
    text = readme.read_text()
    stale: list[str] = []

    def fill(match: re.Match[str]) -> str:
        body = results_table(read_results(root / match["path"]))
        if body != match["body"]:
            stale.append(match["path"])
        return match.group(1) + body + match.group(4)

    new = _BLOCK.sub(fill, text)
    if not check and new != text:
        readme.write_text(new)
    return stale


def results_files(root: str | Path) -> list[Path]:
    """The results files whose intervals ``readme`` keeps current: docs/results/**/*.json and every file a table
    names."""
    root = Path(root)
    named = {root / m["path"] for page in marked_files(root) for m in _BLOCK.finditer(page.read_text())}
    return sorted(named | set((root / "docs" / "results").rglob("*.json")))


def marked_files(root: str | Path) -> list[Path]:
    """The files under ``root`` that hold results tables: README.md and the documentation pages (docs/**/*.md)."""
    root = Path(root)
    candidates = [root / "README.md", *sorted((root / "docs").rglob("*.md"))]
    return [p for p in candidates if p.is_file() and _BLOCK.search(p.read_text())]


def contrasts(specs: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """Pre-registered comparisons across results files, one family: each spec ``FILE:CONDITION:REFERENCE`` gives
    mean(CONDITION) - mean(REFERENCE) over the seeds' ``values`` of FILE, its Student-t interval (Welch's degrees
    of freedom), the two-sided Welch p and Holm's adjustment across *all* the specs given."""
    rows = []
    for spec in specs:
        path, condition, reference = spec.rsplit(":", 2)
        data = read_results(path)
        conditions = data["conditions"]
        for name in (condition, reference):
            if name not in conditions:
                raise ValueError(f"{path}: no condition '{name}' (has {sorted(conditions)})")
        a, b = conditions[condition], conditions[reference]
        test = compare_to_control(a["values"], b["values"])
        lo, hi = mean_difference_ci(a["values"], b["values"], confidence=confidence)
        stat = {"mean_diff": test["mean_diff"], "lo": lo, "hi": hi, "p_welch": test["p_welch"]}
        rows.append(
            {
                "file": path,
                "metric": data.get("metric", ""),
                "condition": condition,
                "reference": reference,
                "n": f"{len(a['values'])} vs {len(b['values'])}",
                "mean": float(np.mean(a["values"])),
                "reference_mean": float(np.mean(b["values"])),
                **stat,
            }
        )
    table = pd.DataFrame(rows)
    table["p_welch_holm"] = holm(table["p_welch"].to_numpy()) if len(table) else []
    return table


def contrasts_markdown(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """The :func:`contrasts` table as Markdown."""
    pct = f"{100 * confidence:g}%"
    lines = [
        f"| results file (metric) | comparison | n | means | difference [{pct} t interval] | Welch p | Holm p |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in table.itertuples(index=False):
        lines.append(
            f"| {Path(r.file).name} ({r.metric}) | {r.condition} vs {r.reference} | {r.n} | "
            f"{r.mean:.3f} vs {r.reference_mean:.3f} | {r.mean_diff:+.3f} [{r.lo:+.3f}, {r.hi:+.3f}] | "
            f"{r.p_welch:.3f} | {r.p_welch_holm:.3f} |"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m analysis.results readme [--check]``: recompute the intervals of every results file from its
    per-seed values (docs/results/**/*.json and each file a table names), then regenerate (or check) the results
    tables of README.md and of every documentation page that holds one (from the repository root; a table's FILE
    is relative to it).
    ``python -m analysis.results compare FRESH REFERENCE``: the reference check of two results files (exit 1 when a
    condition differs or a flip reverses an ordering the reference resolved). ``python -m analysis.results
    contrasts FILE:CONDITION:REFERENCE ...``: a pre-registered family of comparisons (:func:`contrasts`)."""
    parser = argparse.ArgumentParser(
        prog="python -m analysis.results",
        description=main.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    readme = commands.add_parser(
        "readme",
        help="recompute the results files' intervals from their values, regenerate the tables of README.md and "
        "docs/**/*.md from them",
    )
    readme.add_argument("--root", default=".", help="the repository root (default: the working directory)")
    readme.add_argument("--check", action="store_true", help="exit 1 if a table is stale, write nothing")
    compare = commands.add_parser("compare", help="check one results file against another")
    compare.add_argument("fresh", help="results file of the study to check (a report's results.json)")
    compare.add_argument(
        "reference", help="results file it is checked against (e.g. docs/results/<preset>.json)"
    )
    contrast = commands.add_parser(
        "contrasts",
        help="pre-registered comparisons across results files: Welch t, t interval, Holm over all",
    )
    contrast.add_argument("specs", nargs="+", help="FILE:CONDITION:REFERENCE, one per comparison")
    contrast.add_argument("--confidence", type=float, default=0.95, help="interval level (default 0.95)")
    args = parser.parse_args(argv)
    if args.command == "contrasts":
        try:
            print(contrasts_markdown(contrasts(args.specs, args.confidence), args.confidence))
        except (ValueError, OSError) as exc:
            print(f"python -m analysis.results: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if args.command == "compare":
        try:
            check = check_against(read_results(args.fresh), read_results(args.reference))
        except ValueError as exc:
            print(f"python -m analysis.results: error: {exc}", file=sys.stderr)
            return 2
        print(reference_markdown(check, args.reference))
        print(reference_summary_line(check))
        return 1 if (check.disagreements or check.resolved_flips) else 0
    stale = []
    for path in results_files(args.root):
        if refresh_intervals(path, check=args.check):
            stale.append(str(path))
            print(f"{'stale' if args.check else 'recomputed'}: the intervals of {path}")
    for page in marked_files(args.root):
        for path in update_readme(page, args.root, check=args.check):
            stale.append(path)
            print(f"{'stale' if args.check else 'regenerated'}: the table of {path} in {page}")
    return 1 if (stale and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
