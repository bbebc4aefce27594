"""``intervention=branch_credit``: token credit from the group's prefix trie (quadrl's own; cf. arXiv 2410.01679).

**Not from a paper** (issue 24; V from rollouts as in VinePPO, arXiv 2410.01679, but the group's own, not extra ones). Designed in quadrl from what its counterfactual probe measured (docs/studies/credit-probe.md,
docs/studies/branch-credit.md): credit is delta_t = V(s_{t+1}) - V(s_t), V(s) = P(success | prefix s); on
``task=fork`` (exact credit) it sits where the sampled branch was unlikely, not where entropy is high, and under
plain GRPO most of a group's shared prefix carries no credit at all. The probe cannot run every step (its
continuations cost ~180 batches of tokens), but a group of G responses to one prompt *is* a set of rollouts
from every prefix they share: the group's prefix trie (:mod:`grpo.prefixes`, built every step for the
``cancel/*`` diagnostics) gives, for free, a Monte Carlo estimate of V at every state two or more responses
visit.

Notation: a response i of a group, its token t; the trie node N = S_{i,t} (the responses that begin with the same
t + 1 tokens y_<=t) and its parent state P = S_{i,t-1} (those sharing y_<t; the whole group at t = 0). The values
are in advantage units: A_j is response j's incoming sequence advantage (the row mean of the incoming
``credit.advantages`` over its response tokens; plain GRPO: (r_j - mean r) / (std r + eps)), and
Abar(S) = mean_{j in S} A_j. Within a group A is an affine function of the reward, so Abar(N) - Abar(P) is the
difference of the two states' mean rewards in the advantage's own scale (any normalisation works unchanged).
With ``min_support`` = m (default 2)::

    |N| >= m  (a shared node)   A'_it = Abar(N) - Abar(P)                      the node's own credit
    |N| <  m  (the suffix)      A'_it = (A_i - Abar(B_i)) * g_it               B_i = the parent of i's first
                                                                                node with |N| < m (the deepest
                                                                                state of i with >= m members)

* Shared prefixes get nothing: a node through which all of P continue (N = P) gets exactly 0, whatever the loss
  aggregation, so the group's common steps are cancelled exactly, not only on average over its members.
* A branch point gets the difference of its branches' success rates: Abar(N) - Abar(P) = (1 - |N|/|P|) *
  (Abar(N) - Abar(P \\ N)), the empirical form of the exact identity delta = (1 - pi(a|s)) (V(s,a) - V(s, not a))
  with the branch's share of the group |N|/|P| standing in for pi(a|s).
* Where the trie has no more support (the response's own suffix), the rest of its credit, A_i - Abar(B_i), is
  spread over its suffix tokens, as GRPO spreads A_i - Abar(group) over the whole response; the first suffix
  token is the branch token itself, where that value is the node credit above.
* ``suffix`` picks the suffix's spread g_it: ``uniform`` (g = 1), or ``surprisal`` (default): g_it = (1 -
  pi_old(o_t|s_t)) / mean over the response's suffix tokens of (1 - pi_old), so the suffix's total credit is
  kept and it goes where the bound |delta_t| <= 1 - pi(o_t|s_t) (exact: V(s_t) is a pi-weighted mean over the
  next token) leaves room. A suffix whose tokens are all certain (mean 1 - pi < 1e-6) falls back to uniform. The
  bound is about the *sampled* token, unlike the entropy H_t (about the distribution): on fork the free
  positions have H = ln 2 and 1 - pi ~ 0.5, a rarely sampled wrong branch H ~ 0.3 but 1 - pi ~ 0.9.

Sum over a response's tokens: the shared part telescopes to Abar(B_i) - Abar(group), the suffix adds
|suffix| * (A_i - Abar(B_i)) (``uniform``; the same total with ``surprisal``). Summed over a node's members, the
policy-gradient coefficient of a shared node is |N| c (Abar(N) - Abar(P)): the tree estimate of
N(s, a) (Q(s, a) - V(s)), with no contribution from siblings' opposite-sign copies. Groups whose advantages are all
equal (all right or all wrong) get 0 everywhere, as in GRPO.

What is quadrl's choice, all options: the estimate of V is the mean over the members (leave-one-in, as GRPO's
baseline); ``min_support`` (a state needs m members to be trusted as a baseline; m = 2: any shared state);
``suffix`` (how the untracked remainder is spread). Only the advantages change (weights, KL weights, the loss mask
and the clip pass through); the incoming advantage is read per response, so compose it *first* (after it,
per-token reshapers like HAPO act on its A'). Stop-gradient: computed from detached facts. Cost: one trie
(G passes over [B, T]) and a few segment sums: a whole step costs 0.98x GRPO's (``benchmarks/bench_credit_methods.py
baseline "intervention=branch_credit"``, docs/studies/branch-credit.md). Logged:
``branch_credit/shared_token_share`` (tokens at nodes with >= m members), ``branch_credit/zero_token_share``
(tokens it gives exactly 0: shared nodes without a branch, and groups without signal),
``branch_credit/suffix_token_share`` and ``branch_credit/mean_abs_ratio`` (mean |A'| / mean |A| over the
response tokens of groups with signal).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.prefixes import SharedPrefixes, batch_prefixes, group_members

SUFFIX_SPREADS = ("surprisal", "uniform")
SURPRISAL_FLOOR = 1e-6


@dataclass
class BranchCreditConfig(InterventionConfig):
    name: str = "branch_credit"
    """Registered name of the method (quadrl's own; module docstring)."""
    min_support: int = 2
    """Members a trie state needs for its mean advantage to be used as a value estimate (>= 2). Nodes with fewer
    members belong to the response's suffix, which shares the credit of its deepest supported state."""
    suffix: str = "surprisal"
    """How a response's suffix (after its last supported node) spreads its credit A_i - Abar(B_i): ``surprisal``
    (in proportion to 1 - pi_old(o_t|s_t), mean 1 over the suffix) or ``uniform`` (every suffix token alike)."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.integer(where, "min_support", self.min_support, low=2)
        check.choice(where, "suffix", self.suffix, SUFFIX_SPREADS)


def row_advantages(credit: TokenCredit, mask: Tensor) -> Tensor:
    """[B] float64: each response's incoming advantage, the mean of ``credit.advantages`` over its tokens."""
    m = mask.double()
    return (credit.advantages.double() * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def branch_advantages(
    prefixes: SharedPrefixes,
    seq_adv: Tensor,
    group_ids: Tensor,
    mask: Tensor,
    behaviour_logprobs: Tensor,
    min_support: int = 2,
    suffix: str = "surprisal",
) -> tuple[Tensor, Tensor, Tensor]:
    """The [B, T] float64 advantages A'_it of the module docstring, with [B, T] bool masks of the supported
    (shared) tokens and of the suffix tokens. ``seq_adv`` [B]: each response's advantage A_i."""
    mask = mask.bool()
    batch, width = mask.shape
    size = prefixes.size.double()
    a_tok = seq_adv.double()[:, None].expand(batch, width) * mask
    node_mean = prefixes.node_sum(a_tok) / size.clamp_min(1.0)  # Abar(N) at every token
    members = group_members(group_ids.to(mask.device))  # [B, G], -1 padded
    valid = members >= 0
    group_sum = torch.where(valid, seq_adv.double()[members.clamp_min(0)], 0.0).sum(-1)
    group_size = valid.sum(-1).double()
    parent_mean = torch.cat([(group_sum / group_size)[:, None], node_mean[:, :-1]], dim=1)
    parent_size = torch.cat([group_size[:, None], size[:, :-1]], dim=1)
    supported = mask & (size >= min_support)
    node_credit = node_mean - parent_mean
    # the deepest supported state of each response up to s_t: the last t' <= t whose parent has >= m members
    # (t = 0's parent, the group, always counts), forward-filled along the response
    positions = torch.arange(width, device=mask.device).expand(batch, width)
    trusted = (parent_size >= min_support) | (positions == 0)
    last = torch.where(trusted, positions, torch.zeros_like(positions)).cummax(-1).values
    base = parent_mean.gather(1, last)
    in_suffix = mask & ~supported
    spread = torch.ones_like(size)
    if suffix == "surprisal":
        surprisal = torch.where(in_suffix, 1.0 - behaviour_logprobs.double().exp(), 0.0).clamp_min(0.0)
        count = in_suffix.double().sum(-1, keepdim=True)
        mean = surprisal.sum(-1, keepdim=True) / count.clamp_min(1.0)
        spread = torch.where(mean >= SURPRISAL_FLOOR, surprisal / mean.clamp_min(SURPRISAL_FLOOR), 1.0)
    suffix_credit = (seq_adv.double()[:, None] - base) * spread
    out = torch.where(supported, node_credit, torch.where(in_suffix, suffix_credit, 0.0))
    return out, supported, in_suffix


@register("branch_credit")
class BranchCredit(Intervention):
    config_class = BranchCreditConfig
    config: BranchCreditConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        seq_adv = row_advantages(credit, mask)
        new, supported, in_suffix = branch_advantages(
            batch_prefixes(facts),
            seq_adv,
            facts.group_ids,
            mask,
            facts.behaviour_logprobs,
            cfg.min_support,
            cfg.suffix,
        )
        n_tokens = max(int(mask.sum()), 1)
        signal = mask & (credit.advantages != 0)
        old_mass = float(credit.advantages.double().abs()[signal].sum())
        ratio = float(new.abs()[signal].sum()) / old_mass if old_mass > 0 else 1.0
        return replace(credit, advantages=new.to(credit.advantages.dtype)).with_info(
            **{
                "branch_credit/min_support": cfg.min_support,
                **{f"branch_credit/suffix_{s}": float(cfg.suffix == s) for s in SUFFIX_SPREADS},
                "branch_credit/shared_token_share": float(supported.sum()) / n_tokens,
                "branch_credit/suffix_token_share": float(in_suffix.sum()) / n_tokens,
                "branch_credit/zero_token_share": float((mask & (new == 0)).sum()) / n_tokens,
                "branch_credit/mean_abs_ratio": ratio,
            }
        )
