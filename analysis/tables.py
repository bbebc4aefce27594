"""Formatting of statistics as rows of strings, rendered as markdown or as aligned terminal text."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from analysis.stats import MetricSummary

MISSING = "-"


def fmt_num(x: object, digits: int = 3) -> str:
    """A number with ``digits`` decimals; NaN/None/NA as '-'."""
    if x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x)):
        return MISSING
    if isinstance(x, int | bool | np.integer):
        return str(x)
    return f"{float(x):.{digits}f}"


def fmt_p(p: object) -> str:
    """A p-value with 2 significant digits ('<1e-4' below that)."""
    if p is None or p is pd.NA or (isinstance(p, float) and math.isnan(p)):
        return MISSING
    p = float(p)
    return "<1e-4" if p < 1e-4 else f"{p:.2g}" if p < 0.01 else f"{p:.3f}"


def fmt_ci(mean: float, lo: float, hi: float, digits: int = 3) -> str:
    """'mean [lo, hi]', or just the mean when there is no interval."""
    if isinstance(lo, float) and math.isnan(lo):
        return fmt_num(mean, digits)
    return f"{fmt_num(mean, digits)} [{fmt_num(lo, digits)}, {fmt_num(hi, digits)}]"


def summary_rows(summary: MetricSummary, *, full: bool = True) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the per-condition table of one metric.

    ``full`` adds best, AUC and steps-to-target columns (used for the main metric).
    """
    header = ["condition", "seeds finished/failed", "final [95% CI]"]
    if full:
        header += ["best [95% CI]", "AUC (mean level)"]
        if summary.target is not None:
            header.append(f"steps to >= {summary.target:g} (reached)")
    header += [
        "diff vs ctrl",
        "p Welch",
        "p Welch Holm",
        "p MWU",
        "p MWU Holm",
        "Cohen d",
        "Hedges g",
        "flag",
    ]
    rows = []
    for r in summary.table.itertuples(index=False):
        seeds = f"{r.n_finished}/{r.n_failed}" + (f" ({r.n} used)" if r.n != r.n_finished else "")
        row = [
            r.condition + (" [control]" if r.is_control else ""),
            seeds,
            fmt_ci(r.final_mean, r.final_lo, r.final_hi),
        ]
        if full:
            row += [fmt_ci(r.best_mean, r.best_lo, r.best_hi), fmt_ci(r.auc_mean, r.auc_lo, r.auc_hi)]
            if summary.target is not None:
                row.append(f"{fmt_num(r.steps_mean, 1)} ({r.n_reached}/{r.n})")
        if r.is_control:
            row += ["control"] + [MISSING] * 6
        else:
            row += [
                fmt_num(r.mean_diff),
                fmt_p(r.p_welch),
                fmt_p(r.p_welch_holm),
                fmt_p(r.p_mwu),
                fmt_p(r.p_mwu_holm),
                fmt_num(r.cohens_d, 2),
                fmt_num(r.hedges_g, 2),
            ]
        row.append(r.flag)
        rows.append(row)
    return header, rows


def change_rows(changes: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the change-from-start table (:func:`analysis.stats.change_from_start`)."""
    header = ["condition", "seeds", "start", "final - start [95% CI]", "p (t-test)", "p Holm"]
    rows = [
        [
            r.condition,
            str(r.n),
            fmt_num(r.start_mean),
            fmt_ci(r.change_mean, r.change_lo, r.change_hi),
            fmt_p(r.p_change),
            fmt_p(r.p_change_holm),
        ]
        for r in changes.itertuples(index=False)
    ]
    return header, rows


def pair_rows(pairs: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the paired-comparison table (:func:`analysis.stats.compare_pairs`)."""
    header = ["condition", "reference", "condition [95% CI]", "reference [95% CI]", "difference [95% CI]"]
    header += ["p Welch", "p Welch Holm", "p MWU Holm", "Hedges g", "verdict"]
    rows = [
        [
            r.condition,
            r.reference,
            fmt_ci(r.mean, r.lo, r.hi) + f" (n={r.n})",
            fmt_ci(r.ref_mean, r.ref_lo, r.ref_hi) + f" (n={r.n_ref})",
            fmt_ci(r.diff, r.diff_lo, r.diff_hi),
            fmt_p(r.p_welch),
            fmt_p(r.p_welch_holm),
            fmt_p(r.p_mwu_holm),
            fmt_num(r.hedges_g, 2),
            r.verdict,
        ]
        for r in pairs.itertuples(index=False)
    ]
    return header, rows


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured markdown table (pipes in cells escaped)."""

    def cell(s: str) -> str:
        return str(s).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def to_text(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i == 0 else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
