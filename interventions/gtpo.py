"""``intervention=gtpo``: entropy-weighted token rewards, each polarity apart (arXiv 2508.04349).

Source: Tan et al., "GTPO and GRPO-S: Token and Sequence-Level Reward Shaping with Policy Entropy"
(arXiv 2508.04349), Group Token Policy Optimization. quadrl could not read the paper itself; the shaping below
follows its Eqs. 3 and 5 as transcribed by a third-party "paper-exact" re-implementation (textpolicy, tests of
``compute_gtpo_shaped_rewards``), and the normalisation is quadrl's own (see below) -- check against the paper
before quoting numbers as "GTPO".

Shaped token rewards (paper). Within one prompt group, for response position t, let O+_t / O-_t be the group's
responses that are positive / negative and still have a token at t (d_t = |O+_t|, h_t = |O-_t|)::

    r+_{i,t} = alpha1 * 1  + alpha2 * d_t * H_{i,t} / sum_{k in O+_t} H_{k,t}              i in O+_t   (Eq. 3)
    r-_{j,t} = alpha1 * -1 - alpha2 * h_t * (1/H_{j,t}) / sum_{k in O-_t} (1/H_{k,t})      j in O-_t   (Eq. 5)

so in correct responses high-entropy tokens get more reward, and in wrong ones *confident* (low-entropy) tokens
get more penalty. The paper uses alpha1 = 1, alpha2 = 0.1. quadrl adds ``eps`` to every H (H + eps in Eq. 3,
1 / (H + eps) in Eq. 5), so all-zero entropies at a position give equal shares and 1/0 cannot occur.

Write w_{i,t} = d_t * H_{i,t} / sum H (resp. h_t * (1/H) / sum 1/H): at every position the w of one polarity sum to
d_t (resp. h_t), i.e. w has mean exactly 1 over each polarity's tokens in the group.

Advantage (quadrl, sign-preserving). The paper's Eq. 6 standardises the positive and the negative shaped
rewards separately (z-scores), which can flip the sign of below-average tokens. quadrl instead rescales the
incoming advantage by the shaped reward relative to its polarity-and-group mean, |r| / mean|r|::

    A'_{i,t} = A_{i,t} * (alpha1 + alpha2 * w_{i,t}) / (alpha1 + alpha2)

which keeps every token's sign (alpha1 > 0), leaves tokens with A = 0 unchanged, and -- for 0/1 rewards, where A
is constant within a polarity of a group -- conserves the sum of the advantages over each polarity's tokens in
the group (entropy only redistributes credit). Polarity is the sign of the incoming ``credit.advantages`` per
token (the GRPO sequence advantage unless an earlier step changed it); position t is the response column.

Advantage (``normalisation: paper``). Eq. 6 as three independent re-implementations transcribe it (textpolicy;
a verl fork's ``compute_gtpo_advantage``; a replication plan), unverified against the PDF: the shaped rewards of
each polarity are standardised apart, over the polarity's tokens in the group (``scope: group``) or in the whole
batch (``scope: batch``, as the verl fork does), with the population std::

    A'_{i,t} = (r_{i,t} - mean_P r) / std_P r          P = the token's polarity; 0 where std_P = 0

Since w averages 1 within a polarity of a group, this is +-(w - 1) / std(w) in group scope: alpha1 and alpha2
cancel, each polarity's mean advantage is 0, and signs flip (a correct response's low-entropy tokens are pushed
down, a wrong response's most uncertain ones up). The paper trains with a token-mean loss
(``algo=dapo`` is the closest preset).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.groups import segment_stats, segment_sum


@dataclass
class GtpoConfig(InterventionConfig):
    name: str = "gtpo"
    """Registered name of the method."""
    alpha1: float = 1.0
    """Weight of the sequence reward (+1 / -1) in the shaped token reward; > 0."""
    alpha2: float = 0.1
    """Weight of the entropy share in the shaped token reward; >= 0 (0 gives back the incoming advantage)."""
    eps: float = 1e-8
    """Added to every entropy before the shares (H + eps, 1 / (H + eps)); > 0."""
    normalisation: str = "sign_preserving"
    """``sign_preserving``: A' = A (alpha1 + alpha2 w) / (alpha1 + alpha2); ``paper``: Eq. 6 z-scores of the
    shaped rewards per polarity (module docstring)."""
    scope: str = "group"
    """``paper`` normalisation only: standardise over each polarity's tokens in the prompt ``group`` or in the
    whole ``batch``."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.number(where, "alpha1", self.alpha1, low=0.0, low_open=True)
        check.number(where, "alpha2", self.alpha2, low=0.0)
        check.number(where, "eps", self.eps, low=0.0, low_open=True)
        check.choice(where, "normalisation", self.normalisation, NORMALISATIONS)
        check.choice(where, "scope", self.scope, SCOPES)


NORMALISATIONS = ("sign_preserving", "paper")
SCOPES = ("group", "batch")


def _share(values: Tensor, members: Tensor, group_ids: Tensor, n_groups: int) -> Tensor:
    """w = count_{g,t} * v / sum_{g,t} v over the members of each (group, position); 0 for non-members."""
    v = values * members
    total = segment_sum(v, group_ids, n_groups)[
        group_ids
    ]  # [B, T]: sum over the token's group at its position
    count = segment_sum(members, group_ids, n_groups)[group_ids]
    return torch.where(members > 0, count * v / total.clamp_min(torch.finfo(values.dtype).tiny), 0.0)


def entropy_shares(facts: TokenFacts, advantages: Tensor, eps: float) -> Tensor:
    """[B, T] float64 w_{i,t} (module docstring): Eq. 3 share on A > 0 tokens, Eq. 5 share on A < 0, 0 elsewhere."""
    mask = facts.response_mask.bool()
    if mask.shape[0] == 0:
        return torch.zeros(mask.shape, dtype=torch.float64)
    group_ids = facts.group_ids.long().to(mask.device)
    n_groups = int(group_ids.max()) + 1
    h = facts.entropy.double().clamp_min(0.0) + eps
    pos = (mask & (advantages > 0)).double()
    neg = (mask & (advantages < 0)).double()
    return _share(h, pos, group_ids, n_groups) + _share(1.0 / h, neg, group_ids, n_groups)


def standardise(values: Tensor, members: Tensor, group_ids: Tensor) -> Tensor:
    """(v - mean) / std over the member tokens of each group (population std); 0 for non-members and where a
    group's members all have the same value."""
    member = members > 0
    rows = group_ids[:, None].expand_as(values)
    stats = segment_stats(values[member], rows[member])
    mean = torch.zeros_like(values).masked_scatter(member, stats.per_row(stats.mean))
    std = torch.zeros_like(values).masked_scatter(member, stats.per_row(stats.std))
    spread = std > 1e-12 * mean.abs().clamp_min(1.0)  # float noise in an all-equal group is no signal
    return torch.where(member & spread, (values - mean) / torch.where(spread, std, 1.0), 0.0)


@register("gtpo")
class Gtpo(Intervention):
    config_class = GtpoConfig
    config: GtpoConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        adv = credit.advantages.double()
        w = entropy_shares(facts, adv, cfg.eps)
        if cfg.normalisation == "paper":
            return self._paper(facts, credit, adv, w)
        moved = facts.response_mask.bool() & (adv != 0)
        factor = torch.where(moved, (cfg.alpha1 + cfg.alpha2 * w) / (cfg.alpha1 + cfg.alpha2), 1.0)
        new = (adv * factor).to(credit.advantages.dtype)
        info = {
            "gtpo/factor_min": float(factor[moved].min()) if bool(moved.any()) else 1.0,
            "gtpo/factor_max": float(factor[moved].max()) if bool(moved.any()) else 1.0,
        }
        return replace(credit, advantages=new).with_info(**info)

    def _paper(self, facts: TokenFacts, credit: TokenCredit, adv: Tensor, w: Tensor) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        pos, neg = (mask & (adv > 0)).double(), (mask & (adv < 0)).double()
        shaped = pos * (cfg.alpha1 + cfg.alpha2 * w) - neg * (cfg.alpha1 + cfg.alpha2 * w)
        group_ids = facts.group_ids.long().to(adv.device)
        if cfg.scope == "batch":
            group_ids = torch.zeros_like(group_ids)
        new = standardise(shaped, pos, group_ids) + standardise(shaped, neg, group_ids)
        moved = (pos + neg) > 0
        flipped = moved & (torch.sign(new) == -torch.sign(adv)) & (new != 0)
        info = {"gtpo/sign_flip_frac": float(flipped.sum()) / max(int(moved.sum()), 1)}
        return replace(credit, advantages=new.to(credit.advantages.dtype)).with_info(**info)
