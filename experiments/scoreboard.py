"""The scoreboard: every credit method's per-token credit, scored against the credit the probe measured.

On one probed batch (:class:`grpo.probe.CreditProbe`: the very TokenFacts the trainer would build), each method
M returns the TokenCredit it would train with; its per-token credit is

    c_t = A'_t * w_t                    (TokenCredit.advantages x weights, 0 on padding)

and the measured credit is delta^_t with standard error se_t. The *outcome sign* of response i is
s_i = sign(R_i - V^(s_0)): did the response end better or worse than the policy expected at the prompt
(= sign of its total measured credit, since sum_t delta_t = R_i - V(s_0)). "delta x sign" is m_t = delta^_t * s_i:
positive when the token moved the chance of success the way the response's outcome went. Columns:

- ``rho_within``: mean over responses of Spearman(c_t, delta^_t) within the response (responses where both vary;
  ``n_within`` of them). For a method that keeps the sign of A_i, c_t = A_i w_t, so this is
  Spearman(w_t, delta^_t * sign(A_i)): are the tokens it weights more those that carried the outcome?
  Undefined (``-``) for a method that weights every token of a response alike (GRPO).
- ``rho_batch``: Spearman(c_t s_i, m_t) over all tokens of responses with s_i != 0: the method's credit along the
  outcome against the measured credit along the outcome, across responses too.
- ``favoured``: the share of tokens the method favours: those whose credit relative to GRPO's, r_t = c_t / A_t
  (tokens with A_t != 0), is above its batch mean. ``-`` when r is constant (nothing is favoured).
- ``credit_on_favoured``: the share of the measured credit mass sum |delta^_t| held by those tokens (compare
  with ``favoured``: a method that finds credit puts it on fewer tokens than it holds).
- ``mass_on_no_credit``: the share of the method's credit mass sum |c_t| on tokens with no measured credit:
  |delta^_t| <= z se_t (``probe.no_credit_z``), or skipped as certain (|delta_t| < probe.skip_tol).

Methods come from every preset in ``conf/intervention/`` (each registered method ships one), every condition of
``conf/condition/`` that only sets the intervention (the quadrant masks, ...), plus any registered method without a
preset (default config), so methods added later are scored with no edit here. A method whose
objective also uses the current log-probs (an ``extra_loss``, e.g. KL-Cov's penalty) is scored on c_t and
marked; one that cannot build its credit from the batch's facts (it needs parameters, an adapter, ...) is listed
with the reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor

import interventions
from grpo.credit import Intervention, TokenCredit, TokenFacts, build_intervention, registered
from grpo.probe import CreditProbe, spearman

CONF = Path(__file__).resolve().parents[1] / "conf"


@dataclass(frozen=True)
class Entry:
    """One method on the scoreboard: a built intervention, or the reason it could not be built."""

    label: str
    method: Intervention | None
    note: str = ""


@dataclass(frozen=True)
class Score:
    label: str
    rho_within: float
    n_within: int
    rho_batch: float
    favoured: float
    credit_on_favoured: float
    mass_on_no_credit: float
    note: str = ""

    @classmethod
    def unscored(cls, label: str, note: str) -> Score:
        return cls(label, math.nan, 0, math.nan, math.nan, math.nan, math.nan, note)

    def metrics(self) -> dict[str, float]:
        keys = ("rho_within", "rho_batch", "favoured", "credit_on_favoured", "mass_on_no_credit")
        return {f"scoreboard/{self.label}/{k}": float(getattr(self, k)) for k in keys}


def _preset_configs() -> dict[str, dict[str, Any]]:
    """Every method preset of conf/intervention/, and every condition of conf/condition/ that changes only the
    intervention into one no method preset has (the quadrant masks, the attention-entropy sides, a mask then
    min_replace), labelled by its file name."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from grpo.config import register_configs

    names = sorted(p.stem for p in (CONF / "intervention").glob("*.yaml"))
    root = CONF / "condition"
    conditions = sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.yaml"))

    def load() -> dict[str, dict[str, Any]]:
        configs = {
            n: OmegaConf.to_container(compose(config_name=f"intervention/{n}").intervention, resolve=True)
            for n in names
        }
        register_configs()
        plain = OmegaConf.to_container(compose(config_name="config"), resolve=True)
        for name in conditions:
            cfg = OmegaConf.to_container(
                compose(config_name="config", overrides=[f"condition={name}"]), resolve=True
            )
            rest = {k: v for k, v in cfg.items() if k != "intervention"}
            if rest == {k: v for k, v in plain.items() if k != "intervention"} and cfg[
                "intervention"
            ] not in (configs.values()):
                configs[Path(name).name] = cfg["intervention"]
        return configs

    if GlobalHydra.instance().is_initialized():  # inside quadrl-probe's own Hydra app
        return load()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        return load()


def entries() -> list[Entry]:
    """Every intervention preset, then every registered method without one (default config)."""
    interventions.load_all()
    configs = _preset_configs()
    named = {str(c.get("name", "none")) for c in configs.values()}
    configs.update({name: {"name": name} for name in sorted(registered()) if name not in named})
    out = []
    for label, values in sorted(configs.items(), key=lambda item: (item[0] != "none", item[0])):
        try:
            out.append(Entry(label, build_intervention(values)))
        except Exception as exc:  # e.g. compose without steps: listed, not scored
            out.append(Entry(label, None, f"not built: {exc}"))
    return out


def _notes(method: Intervention, facts: TokenFacts, credit: TokenCredit) -> str:
    notes = []
    rows = torch.arange(facts.response_mask.shape[0])
    # asked, not read off the class: compose delegates extra_loss to its steps, which may have none
    if method.extra_loss(facts, credit, facts.old_logprobs, rows) is not None:
        notes.append("also a loss term on the current log-probs (not in c_t)")
    if not credit.clip:
        notes.append("unclipped surrogate")
    return "; ".join(notes)


def outcome_sign(probe: CreditProbe) -> Tensor:
    """[B] s_i = sign(R_i - V^(s_0)) (module docstring)."""
    return torch.sign(probe.facts.rewards.cpu().double() - probe.value[:, 0])


def no_credit(probe: CreditProbe, z: float) -> Tensor:
    """[B, T] bool: response tokens with no measured credit (|delta^| <= z se, or skipped as certain)."""
    mask = probe.facts.response_mask.cpu().bool()
    return mask & (probe.certain | (probe.delta.abs() <= z * probe.delta_se))


def score_credit(probe: CreditProbe, credit: TokenCredit, z: float, label: str = "", note: str = "") -> Score:
    """The scoreboard's columns for one method's credit (module docstring)."""
    mask = probe.facts.response_mask.cpu().bool()
    c = (credit.advantages.cpu().double() * credit.weights.cpu().double()).masked_fill(~mask, 0.0)
    delta = probe.delta
    sign = outcome_sign(probe)

    within = []
    for i in range(mask.shape[0]):
        rho, _ = spearman(c[i][mask[i]], delta[i][mask[i]])
        if not math.isnan(rho):
            within.append(rho)
    rho_within = sum(within) / len(within) if within else math.nan

    aligned = mask & (sign != 0)[:, None]
    rho_batch, _ = spearman((c * sign[:, None])[aligned], (delta * sign[:, None])[aligned])

    grpo_adv = probe.facts.advantages.cpu().double()
    has_adv = mask & (grpo_adv != 0)
    ratio = c[has_adv] / grpo_adv[has_adv]
    favoured_share = credit_on_favoured = math.nan
    if ratio.numel() and bool((ratio != ratio[0]).any()):
        favoured = torch.zeros_like(mask)
        favoured[has_adv] = ratio > ratio.mean()
        favoured_share = float(favoured.sum()) / int(mask.sum())
        credit_on_favoured = _share(delta.abs()[favoured], delta.abs()[mask])

    mass = c.abs()
    mass_on_no_credit = _share(mass[no_credit(probe, z)], mass[mask])
    return Score(
        label, rho_within, len(within), rho_batch, favoured_share, credit_on_favoured, mass_on_no_credit, note
    )


def _share(part: Tensor, whole: Tensor) -> float:
    total = float(whole.sum())
    return float(part.sum()) / total if total > 0 else math.nan


def scoreboard(probe: CreditProbe, methods: list[Entry], z: float, seed: int = 0) -> list[Score]:
    """Score every entry on the probe's batch; an entry that cannot be built or fails is listed with why."""
    out = []
    for entry in methods:
        if entry.method is None:
            out.append(Score.unscored(entry.label, entry.note))
            continue
        facts = replace(probe.facts, step=entry.method.first_active_step())  # scored where it acts
        try:
            generator = torch.Generator().manual_seed(seed)
            credit = entry.method.credit(facts, TokenCredit.grpo_default(facts), generator)
        except Exception as exc:  # e.g. a method that needs an adapter or hidden states the facts lack
            out.append(Score.unscored(entry.label, f"cannot score: {exc}"))
            continue
        out.append(score_credit(probe, credit, z, entry.label, _notes(entry.method, facts, credit)))
    return out
