"""The credit probe's report folder: ``report.md`` (quadrant table, rank correlation, scoreboard), ``tokens.csv``
(one row per response token), ``scoreboard.csv`` and figures (PNG + SVG): credit against entropy, and the
quadrants' shares of tokens, entropy and measured credit."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from experiments.scoreboard import Score  # noqa: E402
from grpo.config import QuadrlConfig  # noqa: E402
from grpo.model import Policy  # noqa: E402
from grpo.probe import QUADRANT_NAMES, CreditProbe  # noqa: E402
from grpo.quadrants import split_quadrants  # noqa: E402

COLORS = {"pos_high": "tab:red", "pos_low": "tab:orange", "neg_high": "tab:blue", "neg_low": "tab:cyan"}
COLORS["zero_adv"] = "tab:gray"
SHARES = {
    "token_share": "tokens",
    "entropy_share": "entropy",
    "delta_share": "|delta|",
    "delta_sq_share": "delta^2 (noise-corrected)",
    "info_share": "I",
}


def fmt(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def quadrant_of(probe: CreditProbe, split) -> list[list[str]]:
    masks = split_quadrants(probe.facts, split)
    mask = probe.facts.response_mask.cpu()
    names = [["" for _ in range(mask.shape[1])] for _ in range(mask.shape[0])]
    for name, q in [*masks.items(), ("zero_adv", masks.zero_adv)]:
        for i, t in q.cpu().nonzero().tolist():
            names[i][t] = name
    return names


def write_tokens(path: Path, probe: CreditProbe, policy: Policy, quadrants: list[list[str]]) -> None:
    f = probe.facts
    mask, ids = f.response_mask.cpu(), f.response_ids.cpu()
    with path.open("w", newline="") as out:
        w = csv.writer(out)
        w.writerow(
            ["row", "group", "t", "token", "reward", "advantage", "quadrant", "entropy", "prob", "value_before",
             "value_after", "delta", "delta_se", "certain", "info", "info_covered"]
        )  # fmt: skip
        for i in range(mask.shape[0]):
            for t in range(int(mask[i].sum())):
                w.writerow(
                    [i, int(f.group_ids[i]), t, policy.tokenizer.convert_ids_to_tokens(int(ids[i, t])),
                     float(f.rewards[i]), float(f.advantages[i, t]), quadrants[i][t], float(f.entropy[i, t]),
                     math.exp(float(f.behaviour_logprobs[i, t])), float(probe.value[i, t]),
                     float(probe.value[i, t + 1]), float(probe.delta[i, t]), float(probe.delta_se[i, t]),
                     bool(probe.certain[i, t]), float(probe.info[i, t]), float(probe.info_covered[i, t])]
                )  # fmt: skip


def figure_credit_vs_entropy(path: Path, probe: CreditProbe, quadrants: list[list[str]]) -> None:
    mask = probe.facts.response_mask.cpu()
    entropy = probe.facts.entropy.cpu()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name in QUADRANT_NAMES:
        cells = [
            (i, t) for i in range(mask.shape[0]) for t in range(int(mask[i].sum())) if quadrants[i][t] == name
        ]
        if not cells:
            continue
        h = [float(entropy[i, t]) for i, t in cells]
        left.scatter(
            h, [abs(float(probe.delta[i, t])) for i, t in cells], s=8, alpha=0.6, c=COLORS[name], label=name
        )
        probed = [(i, t) for i, t in cells if not math.isnan(float(probe.info[i, t]))]
        if probed:
            right.scatter(
                [float(entropy[i, t]) for i, t in probed],
                [float(probe.info[i, t]) for i, t in probed],
                s=14,
                alpha=0.7,
                c=COLORS[name],
                label=name,
            )
    top = float(entropy[mask].max()) if bool(mask.any()) else 1.0
    right.plot([0, top], [0, top], "k--", lw=0.8, label="I = H (bound)")
    right.axhline(math.log(2), color="k", lw=0.5, ls=":", label="ln 2 (binary reward)")
    left.set(xlabel="entropy H_t (nats)", ylabel="|delta_t|", title="credit vs entropy (every token)")
    right.set(
        xlabel="entropy H_t (nats)", ylabel="I_t (nats)", title="information vs entropy (probed positions)"
    )
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    _save(fig, path)


def figure_shares(path: Path, summary: dict[str, float]) -> None:
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(SHARES)
    for j, (key, label) in enumerate(SHARES.items()):
        values = [summary.get(f"probe/{q}/{key}", math.nan) for q in QUADRANT_NAMES]
        ax.bar([i + j * width for i in range(len(QUADRANT_NAMES))], values, width, label=label)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(QUADRANT_NAMES))], QUADRANT_NAMES)
    ax.axhline(0, color="k", lw=0.5)
    ax.set(ylabel="share of the batch's total", title="where credit sits, by quadrant")
    ax.legend(fontsize=8)
    _save(fig, path)


def _save(fig: plt.Figure, stem: Path) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    for fmt_ in ("png", "svg"):
        fig.savefig(stem.with_suffix(f".{fmt_}"), dpi=130, bbox_inches="tight")
    plt.close(fig)


@dataclass(frozen=True)
class Section:
    """One view of the batch's credit: the Monte Carlo estimate, or the exact credit where the task knows it."""

    title: str
    slug: str
    """File-name suffix of the section's figures and token table ("" for the estimate)."""
    probe: CreditProbe
    summary: dict[str, float]
    """``credit_summary`` of ``probe`` (keys ``probe/...``)."""
    scores: Sequence[Score]
    intervals: dict[str, tuple[float, float]]
    """95% bootstrap intervals of the credit shares (``grpo.probe.share_intervals``)."""


def _quadrant_table(section: Section, cfg: QuadrlConfig) -> list[str]:
    s = section.summary
    columns = (
        "token_share",
        "entropy_share",
        "delta_share",
        "delta_sq_share",
        "info_share",
        "info_over_entropy",
    )
    lines = [
        f"### By quadrant (split: {cfg.diagnostics.split.mode}, high fraction {cfg.diagnostics.split.high_fraction})",
        "",
        "| quadrant | token share | entropy share | abs(delta) share | delta^2 share (noise-corr.) | I share | I / H "
        "| I positions |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for q in QUADRANT_NAMES:
        cells = []
        for k in columns:
            key = f"probe/{q}/{k}"
            lo_hi = section.intervals.get(key)
            cells.append(fmt(s[key]) + (f" [{fmt(lo_hi[0], 2)}, {fmt(lo_hi[1], 2)}]" if lo_hi else ""))
        lines.append(f"| {q} | {' | '.join(cells)} | {int(s[f'probe/{q}/probed'])} |")
    lines += [
        "",
        f"Spearman rank correlation of H_t and |delta_t| over the response tokens: "
        f"{fmt(s['probe/entropy_delta_spearman'])} (p = {fmt(s['probe/entropy_delta_spearman_pvalue'], 4)}). "
        f"I / H over all positions with I: {fmt(s['probe/info_over_entropy'])} (the bound: <= 1). Tokens with "
        f"no credit by the skip rule (|delta| < skip_tol): {fmt(s['probe/certain_share'])}.",
        "",
        f"![credit vs entropy](figures/credit_vs_entropy{section.slug}.png)",
        f"![shares](figures/quadrant_credit_shares{section.slug}.png)",
    ]
    return lines


def _scoreboard_table(section: Section, z: float) -> list[str]:
    rule = f"|delta| <= {z} se, or certain" if section.slug == "" else "|delta| < skip_tol"
    lines = [
        f"### Scoreboard (no credit: {rule})",
        "",
        "| method | rho within (n) | rho batch | favoured | credit on favoured | mass on no credit | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in section.scores:
        lines.append(
            f"| {s.label} | {fmt(s.rho_within)} ({s.n_within}) | {fmt(s.rho_batch)} | {fmt(s.favoured)} | "
            f"{fmt(s.credit_on_favoured)} | {fmt(s.mass_on_no_credit)} | {s.note} |"
        )
    return lines


def markdown(sections: Sequence[Section], cfg: QuadrlConfig, task: str, notes: Sequence[str] = ()) -> str:
    p = cfg.probe
    estimate = sections[0]
    probe, summary = estimate.probe, estimate.summary
    model = cfg.model.source if cfg.model.source == "builtin" else str(cfg.model.path)
    lines = [
        f"# Where credit sits: task `{task}`, model `{model}`"
        + (f", checkpoint `{p.checkpoint}`" if p.checkpoint else ""),
        "",
        f"{probe.facts.rewards.numel()} responses ({probe.plan.groups_kept} prompts x {p.group_size}) of the "
        f"`{p.split}` split, seed {cfg.seed}, temperature {cfg.sampling.temperature}, top-p {cfg.sampling.top_p}; "
        f"mean reward {fmt(summary['probe/reward_mean'])}, mean V^(s_0) {fmt(summary['probe/value_start_mean'])}.",
        f"k = {p.k} continuations per state, skip_tol = {p.skip_tol}, I_t at `{p.info_positions}` positions"
        + (f" ({p.info_per_response} per response)" if p.info_positions == "top_entropy" else "")
        + f" over candidates with pi >= {p.candidate_floor}, {p.candidate_k} continuations each.",
        f"Cost: {probe.continuations:,} continuations, {probe.tokens:,} tokens, {probe.seconds:.1f} s.",
        *notes,
    ]
    for section in sections:
        lines += ["", f"## {section.title}", "", *_quadrant_table(section, cfg)]
        if section.scores:
            lines += ["", *_scoreboard_table(section, p.no_credit_z)]
    lines += [
        "",
        "Shares are of the batch's total over all response tokens; `zero_adv` holds the tokens of groups whose "
        "rewards are all equal (A = 0: in no quadrant). delta^2 share: sum(delta^2 - se^2), an unbiased estimate "
        "of the share of sum delta^2 (it can leave [0, 1] where credit is below the noise). I share and I / H: over "
        "the positions where I was estimated. [lo, hi]: 95% bootstrap interval over prompt groups. Scoreboard columns: experiments/scoreboard.py and "
        "docs/studies/credit-probe.md.",
    ]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: Path,
    sections: Sequence[Section],
    policy: Policy,
    cfg: QuadrlConfig,
    task: str,
    notes: Sequence[str] = (),
) -> Path:
    """Write the report folder; returns the path of report.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for section in sections:
        quadrants = quadrant_of(section.probe, cfg.diagnostics.split)
        write_tokens(out_dir / f"tokens{section.slug}.csv", section.probe, policy, quadrants)
        if section.scores:
            with (out_dir / f"scoreboard{section.slug}.csv").open("w", newline="") as out:
                w = csv.DictWriter(out, fieldnames=list(asdict(section.scores[0])))
                w.writeheader()
                w.writerows(asdict(s) for s in section.scores)
        figure_credit_vs_entropy(
            out_dir / "figures" / f"credit_vs_entropy{section.slug}", section.probe, quadrants
        )
        figure_shares(out_dir / "figures" / f"quadrant_credit_shares{section.slug}", section.summary)
    report = out_dir / "report.md"
    report.write_text(markdown(sections, cfg, task, notes))
    return report
