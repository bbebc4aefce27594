"""Figures (matplotlib, Agg backend), each saved as PNG and SVG.

* learning curves: mean and 95% Student-t CI band over seeds per condition, metric vs training step;
* per-quadrant diagnostics over training (token share, mean entropy, log-prob change, gradient-norm share):
  one figure per statistic, one panel per quadrant, one line (mean over seeds, CI band) per condition;
* final metrics: dot (mean over seeds) + error bar (95% CI) per condition, seeds as small points, control
  highlighted.

Colours come from :func:`condition_colors`, so a condition has the same colour in every figure.
Figures whose metrics are absent are skipped with a :class:`analysis.stats.Note` (and a log warning).
All plotting functions expect a history already restricted to the runs to show (e.g. finished runs).
"""

from __future__ import annotations

import logging
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from analysis.stats import MetricSummary, Note, t_half_width  # noqa: E402
from runrecord import QUADRANTS  # noqa: E402

log = logging.getLogger(__name__)

QUADRANT_TITLES = {
    "pos_high": "pos_high: A>0, high entropy (PHR)",
    "pos_low": "pos_low: A>0, low entropy (PLR)",
    "neg_high": "neg_high: A<0, high entropy (NHR)",
    "neg_low": "neg_low: A<0, low entropy (NLR)",
}
QUADRANT_STATS = {
    "share": "token share",
    "entropy_mean": "mean entropy (nats)",
    "logprob_change": "log-prob change",
    "grad_norm_share": "gradient-norm share",
}
CREDIT_STATS = {
    "delta_share": "share of measured credit sum |delta|",
    "delta_sq_share": "share of sum delta^2 (noise-corrected)",
    "info_share": "share of sum I",
}
"""What a training run's credit probe (``probe.every``) logs per quadrant, as ``probe/<q>/<stat>``."""
PANEL_FIGURES = {
    "cancellation": (
        "Gradient cancellation on shared prefixes over training (cancel/*)",
        [
            ("cancel/uncancelled_ratio", "uncancelled ratio sum|net| / sum gross (credit used)"),
            ("cancel/uncancelled_ratio_plain", "uncancelled ratio under plain GRPO credit, same batch"),
            ("cancel/shared_token_share", "share of response tokens at shared nodes"),
            ("cancel/shared_mass_share", "share of gradient mass at shared nodes (credit used)"),
        ],
    ),
    "cancellation_kinds": (
        "Uncancelled ratio per node kind (cancel/<kind>/uncancelled_ratio)",
        [(f"cancel/{k}/uncancelled_ratio", f"{k} nodes") for k in (*QUADRANTS, "mixed")],
    ),
    "optimiser": (
        "The optimiser's share: gradient and parameter-update norms (train/*)",
        [
            ("train/grad_norm", "gradient norm (before clipping)"),
            ("train/update_norm", "parameter update norm ||delta theta||"),
            ("train/update_to_grad_ratio", "update norm / clipped gradient norm"),
        ],
    ),
}
"""Multi-panel figures over training drawn by the report: stem -> (title, [(metric, panel title)])."""
CONTROL_COLOR = "black"
FORMATS = ("png", "svg")


def condition_colors(conditions: Sequence[str], control: str | None = None) -> dict[str, str]:
    """A fixed colour per condition: black for the control, tab10 (tab20 beyond 10) for the rest, sorted."""
    others = sorted(c for c in set(conditions) if c != control)
    cmap = plt.get_cmap("tab10" if len(others) <= 10 else "tab20")
    colors = {c: matplotlib.colors.to_hex(cmap(i % cmap.N)) for i, c in enumerate(others)}
    if control is not None:
        colors[control] = CONTROL_COLOR
    return colors


def _label(condition: str, n: int | None = None, control: str | None = None, width: int = 38) -> str:
    text = condition + (" [control]" if condition == control else "") + (f" (n={n})" if n is not None else "")
    return "\n".join(textwrap.wrap(text, width)) or text


def _save(fig: plt.Figure, out_dir: Path, stem: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=130, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _stem(metric: str) -> str:
    return metric.replace("/", "_").replace("@", "_at_")


def auto_smooth(history: pd.DataFrame, metric: str, points: int = 60) -> int:
    """A rolling-mean window giving about ``points`` independent points over the longest curve (>= 1)."""
    counts = history[history["metric"] == metric].groupby("run_id").size()
    return max(1, int(counts.max()) // points) if len(counts) else 1


def curve_band(
    history: pd.DataFrame,
    metric: str,
    condition: str,
    *,
    confidence: float = 0.95,
    smooth: int = 1,
) -> pd.DataFrame:
    """Mean over seeds and Student-t CI (``analysis.stats.t_half_width``, the tables' rule) per step of one
    condition's curves.

    Returns columns step, mean, lo, hi, n (runs with a value at that step); lo/hi are NaN with one run.
    ``smooth`` > 1 applies a rolling mean of that many logged points to each run before aggregating.
    """
    h = history[(history["metric"] == metric) & (history["condition"] == condition)]
    if h.empty:
        return pd.DataFrame(columns=["step", "mean", "lo", "hi", "n"])
    wide = h.pivot_table(index="step", columns="run_id", values="value", aggfunc="last").sort_index()
    if smooth > 1:
        wide = wide.rolling(smooth, min_periods=1).mean().where(wide.notna())
    vals = wide.to_numpy(dtype=float)
    n = np.sum(~np.isnan(vals), axis=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        mean = np.nanmean(vals, axis=1)
        ok = n >= 2
        half = np.full(mean.shape, np.nan)
        if ok.any():
            sd = np.nanstd(vals[ok], axis=1, ddof=1)
            half[ok] = t_half_width(sd / np.sqrt(n[ok]), n[ok] - 1, confidence=confidence)
        lo, hi = mean - half, mean + half
    return pd.DataFrame({"step": wide.index.to_numpy(), "mean": mean, "lo": lo, "hi": hi, "n": n})


def _draw_condition(
    ax: plt.Axes, band: pd.DataFrame, color: str, label: str, is_control: bool, band_alpha: float = 0.15
) -> None:
    ax.plot(
        band["step"],
        band["mean"],
        color=color,
        lw=2.2 if is_control else 1.6,
        label=label,
        zorder=3 if is_control else 2,
    )
    if band["lo"].notna().any():
        ax.fill_between(band["step"], band["lo"], band["hi"], color=color, alpha=band_alpha, lw=0, zorder=1)


def _n_runs(history: pd.DataFrame, metric: str, condition: str) -> int:
    h = history[(history["metric"] == metric) & (history["condition"] == condition)]
    return int(h["run_id"].nunique())


def _missing(metrics: Sequence[str], what: str) -> Note:
    note = Note("skipped_figure", f"figure '{what}' skipped: no values for {', '.join(metrics)}")
    log.warning(note.message)
    return note


def plot_learning_curves(
    history: pd.DataFrame,
    metric: str,
    out_dir: Path,
    colors: dict[str, str],
    *,
    control: str | None = None,
    smooth: int = 1,
) -> tuple[list[Path], list[Note]]:
    """Learning curves of ``metric`` per condition (mean + 95% CI band). Returns (paths, notes)."""
    h = history[history["metric"] == metric]
    if h.empty:
        return [], [_missing([metric], f"learning curves of {metric}")]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for cond in sorted(h["condition"].unique(), key=lambda c: (c != control, c)):
        band = curve_band(h, metric, cond, smooth=smooth)
        _draw_condition(
            ax,
            band,
            colors.get(cond, "grey"),
            _label(cond, _n_runs(h, metric, cond), control),
            cond == control,
        )
    smooth_note = f", rolling mean over {smooth} points" if smooth > 1 else ""
    ax.set(
        xlabel="training step",
        ylabel=metric,
        title=f"{metric}: mean over seeds with 95% Student-t CI{smooth_note}",
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="condition")
    return _save(fig, out_dir, f"curve_{_stem(metric)}"), []


def plot_quadrant_stat(
    history: pd.DataFrame,
    stat: str,
    out_dir: Path,
    colors: dict[str, str],
    *,
    control: str | None = None,
    smooth: int | None = None,
    prefix: str = "quadrant",
) -> tuple[list[Path], list[Note]]:
    """One figure for ``<prefix>/<q>/<stat>``: a panel per quadrant, a line per condition (``prefix``:
    ``quadrant`` for the per-step statistics, ``probe`` for the credit probe's shares)."""
    name = {**QUADRANT_STATS, **CREDIT_STATS}.get(stat, stat)
    return plot_panels(
        history,
        [(f"{prefix}/{q}/{stat}", QUADRANT_TITLES[q]) for q in QUADRANTS],
        out_dir,
        colors,
        stem=f"{prefix}_{stat}",
        what=f"quadrant {stat}",
        title=f"Per-quadrant {name} over training ({prefix}/<q>/{stat})",
        ylabel=name,
        control=control,
        smooth=smooth,
    )


def plot_panels(
    history: pd.DataFrame,
    panels: Sequence[tuple[str, str]],
    out_dir: Path,
    colors: dict[str, str],
    *,
    stem: str,
    what: str,
    title: str,
    ylabel: str | None = None,
    control: str | None = None,
    smooth: int | None = None,
) -> tuple[list[Path], list[Note]]:
    """One figure, a panel per (metric, panel title) in two columns, a line per condition (mean over seeds
    with its 95% CI band) over training. ``title`` gets "(mean over seeds, 95% CI)" appended; ``what`` names
    the figure in skip notes. Panels whose metric was not logged say so; no metric at all skips the figure."""
    metrics = [m for m, _ in panels]
    present = [m for m in metrics if (history["metric"] == m).any()]
    if not present:
        return [], [_missing(metrics, what)]
    notes = (
        []
        if len(present) == len(metrics)
        else [_missing([m for m in metrics if m not in present], f"{what} (panels left empty)")]
    )
    if smooth is None:
        smooth = max(auto_smooth(history, m) for m in present)
    conditions = sorted(
        history.loc[history["metric"].isin(present), "condition"].unique(), key=lambda c: (c != control, c)
    )
    n_rows = (len(panels) + 1) // 2
    fig, axes = plt.subplots(n_rows, 2, figsize=(11, 3.5 * n_rows), sharex=True, squeeze=False)
    for ax in axes.flat[len(panels) :]:
        ax.set_visible(False)
    if len(panels) % 2 and n_rows > 1:  # the panel above the empty slot is a bottom panel: give it its ticks
        axes[-2, 1].tick_params(labelbottom=True)
        axes[-2, 1].set_xlabel("training step")
    for ax, (m, panel_title) in zip(axes.flat, panels, strict=False):
        ax.set_title(panel_title, fontsize=10)
        ax.grid(alpha=0.3)
        if m not in present:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="grey")
            continue
        for cond in conditions:
            band = curve_band(history, m, cond, smooth=smooth)
            if not band.empty:
                _draw_condition(
                    ax, band, colors.get(cond, "grey"), _label(cond, control=control), cond == control, 0.08
                )
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel or "")
    handles, labels = [], []
    for ax in axes.flat:
        for hnd, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(hnd)
                labels.append(lab)
    fig.legend(
        handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False, title="condition"
    )
    smooth_note = f"; rolling mean over {smooth} points" if smooth > 1 else ""
    fig.suptitle(f"{title} (mean over seeds, 95% CI{smooth_note})")
    fig.tight_layout()
    return _save(fig, out_dir, stem), notes


def plot_final_metrics(
    panels: Sequence[tuple[MetricSummary, str]],
    out_dir: Path,
    colors: dict[str, str],
    *,
    stem: str = "final_metrics",
) -> tuple[list[Path], list[Note]]:
    """Dot (mean) + error bar (95% CI) per condition, one panel per (summary, quantity) pair.

    quantity is "final", "best" or "auc". Seeds are drawn as small points; the control is black, bold, and
    marked by a dashed vertical line at its mean; conditions flagged for too few seeds have hollow dots.
    """
    panels = [(s, q) for s, q in panels if not s.per_run.empty]
    if not panels:
        return [], [_missing(["(final metrics)"], "final metrics")]
    conditions = sorted(
        {c for s, _ in panels for c in s.table["condition"]}, key=lambda c: (c != panels[0][0].control, c)
    )
    control = panels[0][0].control
    ypos = {c: i for i, c in enumerate(reversed(conditions))}
    fig, axes = plt.subplots(
        1,
        len(panels),
        figsize=(3.6 * len(panels) + 3.2, 0.45 * len(conditions) + 1.8),
        sharey=True,
        squeeze=False,
    )
    names = {"final": "final", "best": "best", "auc": "mean over training (AUC)"}
    for ax, (summary, q) in zip(axes[0], panels, strict=True):
        for row in summary.table.itertuples(index=False):
            c, y = row.condition, ypos[row.condition]
            color = colors.get(c, "grey")
            seeds = summary.per_run.loc[summary.per_run["condition"] == c, q].to_numpy()
            jitter = np.linspace(-0.15, 0.15, len(seeds)) if len(seeds) > 1 else np.zeros(len(seeds))
            ax.scatter(seeds, y + jitter, s=10, color=color, alpha=0.45, lw=0, zorder=2)
            mean, lo, hi = getattr(row, f"{q}_mean"), getattr(row, f"{q}_lo"), getattr(row, f"{q}_hi")
            if np.isnan(mean):
                continue
            if not np.isnan(lo):
                ax.errorbar(
                    mean, y, xerr=[[mean - lo], [hi - mean]], color=color, capsize=4, lw=1.6, zorder=3
                )
            ax.scatter(
                [mean],
                [y],
                s=50,
                zorder=4,
                color=color if not row.flag else "white",
                edgecolors=color,
                linewidths=1.6,
            )
            if c == control:
                ax.axvline(mean, color=CONTROL_COLOR, ls="--", lw=0.8, alpha=0.6, zorder=1)
        ax.set_title(f"{summary.metric}\n{names.get(q, q)}", fontsize=10)
        ax.set_xlabel(summary.metric)
        ax.grid(axis="x", alpha=0.3)
    ax0 = axes[0][0]
    ax0.set_yticks(list(ypos.values()))
    n_of = dict(zip(panels[0][0].table["condition"], panels[0][0].table["n"], strict=True))
    ax0.set_yticklabels([_label(c, n_of.get(c), control=control, width=45) for c in ypos])
    for tick in ax0.get_yticklabels():
        if control is not None and tick.get_text().startswith(control):
            tick.set_fontweight("bold")
    ax0.set_ylim(-0.6, len(conditions) - 0.4)
    fig.suptitle(
        "Per condition: mean over seeds (dot), 95% Student-t CI (bar), seeds (small dots); "
        "hollow = too few seeds",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, out_dir, stem), []
