"""Markdown report of a sweep: statistics per condition, warnings, figures; CLI ``quadrl-report``.

    python -m analysis.report --tracking-uri sqlite:///mlflow.db --parent-run RUN_ID --out reports/x \\
        [--control intervention=none] [--metric eval/accuracy] [--target 0.8] [--min-seeds 3]

Writes OUT/report.md, OUT/results.json (the machine-readable summary, :mod:`analysis.results`) and
OUT/figures/*.png|svg, prints the summary table, and logs OUT as artifact ``report/`` of the sweep's parent run
(given, or shared by all the experiment's runs). ``--reference FILE`` adds a section saying, condition by
condition, whether this study agrees with the results file FILE.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from analysis import figures, tables
from analysis.load import RunSet, load_runs
from analysis.results import (
    ReferenceCheck,
    check_against,
    read_results,
    reference_markdown,
    reference_summary_line,
    results_from,
    write_results,
)
from analysis.stats import (
    ALPHA,
    DEFAULT_METRIC,
    MetricSummary,
    Note,
    change_from_start,
    compare_pairs,
    pass_at_k_metrics,
    suite_metrics,
    summarise,
    usable_runs,
)
from runrecord import DEFAULT_TRACKING_URI

log = logging.getLogger(__name__)
RESULTS_FILE = "results.json"

CONTROL_INTERVENTIONS = ("none", "baseline", "grpo")
NOTE_SECTIONS = [
    ("too_few_seeds", "Too few seeds"),
    ("failed_run", "Failed runs (not averaged)"),
    ("unfinished_run", "Unfinished runs (not averaged)"),
    ("missing_metric", "Missing metrics"),
    ("skipped_figure", "Skipped figures"),
    ("duplicate_seed", "Duplicate seeds"),
    ("missing_seed", "Runs without a seed"),
    ("unequal_steps", "Runs of unequal length"),
    ("no_control", "Control"),
    ("pairs", "Paired comparisons"),
    ("no_runs", "No runs"),
    ("artifact", "Artifact logging"),
]


@dataclass
class Report:
    """Everything a report is made of (returned by :func:`analyse`)."""

    runset: RunSet
    control: str | None
    control_note: str
    main: MetricSummary
    extra: list[MetricSummary]
    figures: list[tuple[str, list[Path]]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    changes: pd.DataFrame | None = None
    """Per condition, the main metric's change from its first logged value (stats.change_from_start)."""
    pairs: pd.DataFrame | None = None
    """The ``pairs`` compared directly (stats.compare_pairs); None when none were asked for."""
    reference: ReferenceCheck | None = None
    """The check against ``ReportOptions.reference``, when one was given."""

    def results(self) -> dict[str, object]:
        """The machine-readable summary written as ``results.json`` (:mod:`analysis.results`)."""
        return results_from(self.main, self.runset.runs, self.runset.shared_overrides)


@dataclass(frozen=True)
class ReportOptions:
    """What to report on and how: the one set of options :func:`analyse`, :func:`render_markdown` and
    :func:`build_report` share (and ``quadrl-report``'s flags map onto)."""

    out_dir: Path
    """Folder for report.md and figures/."""
    tracking_uri: str = DEFAULT_TRACKING_URI
    """Where the runs are."""
    experiment: str | None = None
    """Report on every run of this experiment (sweep parents excluded); give this or ``parent_run_id``."""
    parent_run_id: str | None = None
    """Report on the child runs of this sweep parent run."""
    control: str | None = None
    """Condition the others are compared with (default: the one with intervention.name=none)."""
    metric: str = DEFAULT_METRIC
    """Main metric."""
    target: float | None = None
    """Target value for steps-to-target (None: not computed)."""
    min_seeds: int = 3
    """Conditions with fewer finished seeds are flagged and not tested."""
    compare_on: str = "final"
    """Per-seed quantity the tests compare: final | best | auc."""
    include_running: bool = False
    """Also average RUNNING runs."""
    reference: Path | None = None
    """A results file (``docs/results/<study>.json``) to check this study against, condition by condition."""
    log_artifact: bool = True
    """Log the report folder as artifact ``report/`` of the parent run."""
    echo: bool = True
    """Print the summary table and the report's location."""
    pairs: tuple[tuple[str, str], ...] = ()
    """(condition, reference) pairs compared directly, e.g. a fix against its condition "as is" (names
    matched as ``control`` is); Holm-adjusted across the pairs, with a verdict on collapses."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "out_dir", Path(self.out_dir))
        if self.reference is not None:
            object.__setattr__(self, "reference", Path(self.reference))


def resolve_control(
    runs: pd.DataFrame, control: str | None, shared: Sequence[str] = ()
) -> tuple[str | None, str]:
    """The control condition and how it was chosen.

    A given name matches exactly, or else the one condition whose overrides include all of its
    space-separated overrides (those in ``shared``, common to every run, are ignored). With none given, the
    one condition whose runs have param intervention.name in {none, baseline, grpo} is taken.
    """
    conditions = sorted(runs["condition"].unique().tolist()) if not runs.empty else []
    if control is not None:
        if control in conditions:
            return control, "given"
        wanted = set(control.split()) - set(shared)
        matches = [c for c in conditions if wanted <= set(c.split())]
        if len(matches) == 1:
            return matches[0], f"given as {control!r}"
        return control, f"given as {control!r}, matches {len(matches)} conditions"
    col = "params.intervention.name"
    if col in runs:
        cands = sorted(runs.loc[runs[col].isin(CONTROL_INTERVENTIONS), "condition"].unique().tolist())
        if len(cands) == 1:
            name = runs.loc[runs["condition"] == cands[0], col].iloc[0]
            return cands[0], f"guessed from intervention.name={name}"
    return None, "none given and none could be guessed (pass --control)"


def _dedupe(notes: Sequence[Note]) -> list[Note]:
    seen, out = set(), []
    for n in notes:
        if (n.kind, n.message) not in seen:
            seen.add((n.kind, n.message))
            out.append(n)
    return out


def analyse(opts: ReportOptions) -> Report:
    """Load the runs, compute the statistics and draw the figures into ``out_dir/figures``."""
    metric = opts.metric
    runset = load_runs(opts.tracking_uri, experiment=opts.experiment, parent_run_id=opts.parent_run_id)
    control, control_note = resolve_control(runset.runs, opts.control, runset.shared_overrides)
    kw = dict(
        control=control,
        min_seeds=opts.min_seeds,
        compare_on=opts.compare_on,
        include_running=opts.include_running,
    )
    main = summarise(runset.runs, runset.history, metric, target=opts.target, **kw)
    extra = [
        summarise(runset.runs, runset.history, m, **kw)
        for m in pass_at_k_metrics(runset.metric_names) + suite_metrics(runset.metric_names)
        if m != metric
    ]
    extra_kinds = ("missing_metric", "too_few_seeds")  # shown in the pass@k tables' flags; not repeated
    notes = list(main.notes) + [n for s in extra for n in s.notes if n.kind not in extra_kinds]
    if control is None:
        notes.append(Note("no_control", f"no control condition: {control_note}; no comparisons"))
    changes = change_from_start(main.per_run)
    pairs = None
    if opts.pairs:
        resolved = []
        for cond, ref in opts.pairs:
            names = [str(resolve_control(runset.runs, n, runset.shared_overrides)[0]) for n in (cond, ref)]
            missing = [n for n in names if n not in runset.conditions]
            notes += [
                Note("pairs", f"pair condition {n!r} is not among the runs; pair left out") for n in missing
            ]
            if not missing:
                resolved.append((names[0], names[1]))
        pairs = compare_pairs(
            main.per_run,
            resolved,
            changes,
            compare_on=opts.compare_on,
            min_seeds=opts.min_seeds,
        )
    used = (
        usable_runs(runset.runs, include_running=opts.include_running)
        if not runset.runs.empty
        else runset.runs
    )
    hist = runset.history[runset.history["run_id"].isin(used["run_id"])] if not used.empty else runset.history
    colors = figures.condition_colors(runset.conditions, control)
    fig_dir = opts.out_dir / "figures"
    report = Report(runset, control, control_note, main, extra, changes=changes, pairs=pairs)
    drawn = [
        (
            f"Learning curves: {metric}",
            figures.plot_learning_curves(hist, metric, fig_dir, colors, control=control),
        )
    ]
    for stat, name in figures.QUADRANT_STATS.items():
        drawn.append(
            (
                f"Per quadrant: {name}",
                figures.plot_quadrant_stat(hist, stat, fig_dir, colors, control=control),
            )
        )
    logged = set(hist["metric"].unique())
    for stem, (title, metric_panels) in figures.PANEL_FIGURES.items():
        if not logged & {metric for metric, _ in metric_panels}:  # runs from before these metrics existed
            continue
        drawn.append(
            (
                title,
                figures.plot_panels(
                    hist,
                    metric_panels,
                    fig_dir,
                    colors,
                    stem=stem,
                    what=stem,
                    title=title,
                    control=control,
                ),
            )
        )
    if (
        hist["metric"].str.startswith("probe/").any()
    ):  # runs with probe.every: where credit sits over training
        for stat, name in figures.CREDIT_STATS.items():
            drawn.append(
                (
                    f"Credit probe per quadrant: {name}",
                    figures.plot_quadrant_stat(hist, stat, fig_dir, colors, control=control, prefix="probe"),
                )
            )
    panels = [(main, "final"), (main, "auc")] + [(s, "final") for s in extra]
    drawn.append(("Final metrics per condition", figures.plot_final_metrics(panels, fig_dir, colors)))
    for title, (paths, fig_notes) in drawn:
        notes += fig_notes
        if paths:
            report.figures.append((title, paths))
    report.notes = _dedupe(notes)
    if opts.reference is not None:
        report.reference = check_against(report.results(), read_results(opts.reference))
    return report


def _source_lines(report: Report, opts: ReportOptions) -> list[str]:
    rs = report.runset
    src = f"parent run `{rs.parent_run_id}`" if opts.parent_run_id else f"experiment `{opts.experiment}`"
    return [
        f"- Source: {src} at `{rs.tracking_uri}` (experiment id(s) {', '.join(rs.experiment_ids)}; "
        f"{len(rs.runs)} runs, {len(rs.conditions)} conditions)",
        f"- Generated: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- Metric: `{report.main.metric}`; tests compare each seed's **{report.main.compare_on}** value",
        f"- Control: `{report.control}` ({report.control_note})",
        *(
            [f"- Common to every run (left out of the condition names): `{' '.join(rs.shared_overrides)}`"]
            if rs.shared_overrides
            else []
        ),
        f"- Minimum seeds: {opts.min_seeds}; intervals: Student t over seeds (Welch for differences), 95%",
    ]


def _per_run_table(report: Report) -> str:
    runs = report.runset.runs
    if runs.empty:
        return "(no runs)"
    pr = report.main.per_run.set_index("run_id")
    header = ["run_id", "condition", "seed", "status", "final", "best", "AUC", "steps to target", "last step"]
    rows = []
    for r in runs.itertuples(index=False):
        v = pr.loc[r.run_id] if r.run_id in pr.index else None
        vals = [_field(v, k) for k in ("final", "best", "auc")]
        rows.append(
            [
                r.run_id,
                r.condition,
                tables.fmt_num(r.seed),
                r.status,
                *vals,
                tables.fmt_num(v["steps_to_target"], 0) if v is not None else tables.MISSING,
                tables.fmt_num(v["last_step"]) if v is not None else tables.MISSING,
            ]
        )
    return tables.to_markdown(header, rows)


def _field(v: pd.Series | None, key: str) -> str:
    """Formatted value ``v[key]`` or '-' when the run has no row."""
    return tables.fmt_num(v[key]) if v is not None else tables.MISSING


def render_markdown(report: Report, opts: ReportOptions) -> str:
    """The report.md text (figure paths relative to the report folder)."""
    out = ["# quadrl report", "", *_source_lines(report, opts), ""]
    out += [
        f"## Summary: `{report.main.metric}`",
        "",
        tables.to_markdown(*tables.summary_rows(report.main)),
        "",
    ]
    out += [
        "How to read: *final* = value at the run's last logged step, *best* = its maximum, *AUC* = area under",
        "the curve over the step span (the curve's mean level); brackets: 95% Student-t CI over seeds (exact for",
        "normal seeds; on a condition where only some seeds collapse it covers less at 3-5 seeds: docs/guides/analysis.md).",
        "Steps to target: mean first step reaching the target over the seeds that reached it (reached/used).",
        "p-values: two-sided Welch t-test and Mann-Whitney U vs the control, Holm-adjusted across conditions;",
        f"conditions with fewer than {opts.min_seeds} seeds are shown but not tested. d/g: Cohen's d and",
        "Hedges' g (pooled SD). *seeds finished/failed*: runs per status; *used*: finished runs with the metric.",
        "",
    ]
    for s in report.extra:
        out += [f"### `{s.metric}`", "", tables.to_markdown(*tables.summary_rows(s, full=False)), ""]
    if report.changes is not None and not report.changes.empty:
        out += [
            f"## Change from the start: `{report.main.metric}`",
            "",
            tables.to_markdown(*tables.change_rows(report.changes)),
            "",
            "final - start per seed (start = the first logged value, e.g. the base model at step 0); two-sided",
            "one-sample t-test of a zero change, Holm-adjusted across conditions. Significantly negative: the",
            "condition collapsed below where it started.",
            "",
        ]
    if report.pairs is not None:
        out += [
            f"## Paired comparisons: `{report.main.metric}` ({report.main.compare_on})",
            "",
            tables.to_markdown(*tables.pair_rows(report.pairs)),
            "",
            "Each condition against its reference (e.g. a fix against the same condition as is): Student-t CIs",
            "(the difference's: Welch), Welch and Mann-Whitney p-values Holm-adjusted across the",
            f"pairs. Verdict at alpha = {ALPHA} on the Holm-adjusted Welch p: a *collapse* is a change from the",
            "start significantly below 0 (table above); *collapse removed* = the fix is significantly better",
            "than its reference and not itself significantly below its start; *collapse reduced* = better but",
            "still below its start; *collapse not removed* = no significant difference; *too few seeds* = fewer",
            f"than {max(opts.min_seeds, 2)} seeds on a side (not tested). Pairs whose conditions did not run are left out.",
            "",
        ]
    if report.reference is not None:
        out += [reference_markdown(report.reference, opts.reference)]
    out += ["## Warnings", ""]
    if not report.notes:
        out += ["None.", ""]
    for kind, title in NOTE_SECTIONS + [
        (k, k) for k in sorted({n.kind for n in report.notes} - {k for k, _ in NOTE_SECTIONS})
    ]:
        items = [n for n in report.notes if n.kind == kind]
        if items:
            out += [f"### {title}", "", *(f"- {n.message}" for n in items), ""]
    out += ["## Figures", ""]
    for title, paths in report.figures:
        png = next(p for p in paths if p.suffix == ".png")
        rel = png.relative_to(opts.out_dir).as_posix()
        svg = [p.relative_to(opts.out_dir).as_posix() for p in paths if p.suffix == ".svg"]
        out += [f"### {title}", "", f"![{title}]({rel})", ""] + ([f"[SVG]({svg[0]})", ""] if svg else [])
    out += ["## Runs", "", _per_run_table(report), ""]
    return "\n".join(out)


def build_report(opts: ReportOptions) -> Path:
    """Write ``out_dir/report.md`` (+ figures) for an experiment or a sweep parent run; return its path.

    Give exactly one of ``experiment`` (name) and ``parent_run_id``. With ``log_artifact`` the folder is
    logged as artifact ``report/`` of the parent run (the given one, or the parent all runs share).
    With ``echo`` the summary table and the report's location are printed.
    """
    out_dir = opts.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    report = analyse(opts)
    parent = report.runset.parent_run_id
    if opts.log_artifact and parent is None:
        report.notes.append(Note("artifact", "runs share no parent run; report not logged to MLflow"))
    path = out_dir / "report.md"
    path.write_text(render_markdown(report, opts), encoding="utf-8")
    write_results(report.results(), out_dir / RESULTS_FILE)
    logged = False
    if opts.log_artifact and parent is not None:
        try:
            MlflowClient(tracking_uri=opts.tracking_uri).log_artifacts(
                parent, str(out_dir), artifact_path="report"
            )
            logged = True
        except Exception as exc:  # noqa: BLE001 -- the report on disk is still useful
            log.warning("could not log the report to parent run %s: %s", parent, exc)
    if opts.echo:
        print(f"\n{report.main.metric} per condition (control: {report.control}):")
        print(tables.to_text(*tables.summary_rows(report.main)))
        n_warn = len(report.notes)
        print(f"\n{n_warn} warning(s); see the report." if n_warn else "\nNo warnings.")
        if report.reference is not None:
            print(f"Against {opts.reference}: {reference_summary_line(report.reference)}")
        print(f"Report: {path.resolve()}")
        if logged:
            print(f"Logged as artifact 'report/' of parent run {parent}")
    return path


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments of ``quadrl-report``."""
    p = argparse.ArgumentParser(prog="quadrl-report", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--tracking-uri",
        default=os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI),
        help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--experiment", help="experiment name: all its runs (sweep parents excluded)")
    src.add_argument("--parent-run", dest="parent_run_id", help="sweep parent run id: its child runs")
    p.add_argument("--out", required=True, type=Path, help="output folder for report.md and figures/")
    p.add_argument("--control", help="control condition (default: the one with intervention.name=none)")
    p.add_argument("--metric", default=DEFAULT_METRIC, help="main metric (default: %(default)s)")
    p.add_argument("--target", type=float, help="target value for steps-to-target (default: not computed)")
    p.add_argument("--min-seeds", type=int, default=3, help="flag conditions with fewer seeds (default: 3)")
    p.add_argument(
        "--compare-on",
        choices=["final", "best", "auc"],
        default="final",
        help="per-seed quantity the tests compare (default: final)",
    )
    p.add_argument("--include-running", action="store_true", help="also average RUNNING runs")
    p.add_argument(
        "--pair",
        nargs=2,
        action="append",
        default=[],
        metavar=("CONDITION", "REFERENCE"),
        help="compare CONDITION with REFERENCE directly (repeatable), e.g. a fix against its condition as is",
    )
    p.add_argument(
        "--reference", type=Path, help="a results file to check this study against (e.g. docs/results/x.json)"
    )
    p.add_argument("--no-log-artifact", action="store_true", help="do not log the report to the parent run")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``quadrl-report`` / ``python -m analysis.report``."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = parse_args(argv)
    try:
        _run_cli(a)
    except (ValueError, MlflowException) as exc:  # unknown experiment or run, bad option value
        print(f"quadrl-report: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_cli(a: argparse.Namespace) -> None:
    build_report(
        ReportOptions(
            out_dir=a.out,
            tracking_uri=a.tracking_uri,
            experiment=a.experiment,
            parent_run_id=a.parent_run_id,
            control=a.control,
            metric=a.metric,
            target=a.target,
            min_seeds=a.min_seeds,
            compare_on=a.compare_on,
            include_running=a.include_running,
            reference=a.reference,
            log_artifact=not a.no_log_artifact,
            pairs=tuple((cond, ref) for cond, ref in a.pair),
        )
    )


if __name__ == "__main__":
    sys.exit(main())
