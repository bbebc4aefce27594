"""Gradient cancellation on the prefixes a group's responses share: the one implementation of the prefix trie.

The idea is from arXiv 2604.13088 ("Design Conditions for Intra-Group Learning of Sequence-Level Rewards"),
of which only the abstract is known (docs/background.md, DESIGN §5); the algebra below is quadrl's own.

The G responses of one group answer the same prompt. A node n = (prompt, y_<t, y_t) of the group's prefix trie
is *shared* when two or more responses S_n begin with the same t + 1 tokens. Its members have the same context
and the same token, hence (same parameters, on-policy rho = 1) the same grad log pi(y_t | prompt, y_<t), so the
node's policy-gradient contribution is ``net_n * grad log pi`` with::

    net_n   = sum_{i in S_n} c_it w_it A_it          gross_n = sum_{i in S_n} |c_it w_it A_it|

c_it the loss aggregation's coefficient (``grpo.loss.token_coefficients``: grpo 1/(B |o_i|), dapo 1/N, dr_grpo
1/(B L)), w and A the weights and advantages the loss uses. When S_n is the whole group and c w is equal over
it, net_n = 0 because the group's advantages sum to 0: the shared steps cancel. |net_n| / gross_n in [0, 1] is
how much of the node's gradient survives.

The trie itself (nodes, sizes, node reductions) is a core primitive in grpo/prefixes.py: min_replace and
adv_orthogonal build on it too.

Metrics (:func:`cancellation_metrics`, logged every step by the cancellation instrument unless ``diagnostics.cancellation``
is false), with v_it = c_it w_it A_it over response tokens:

- ``cancel/shared_token_share``: response tokens at shared nodes / response tokens;
- ``cancel/shared_mass_share``: sum of |v| at shared nodes / sum of |v| over all response tokens;
- ``cancel/uncancelled_ratio``: sum over shared nodes of |net_n| / sum of gross_n (NaN when that is 0);
- ``cancel/uncancelled_ratio_plain``: the same with plain GRPO credit (w = 1, the unreshaped A, the response
  mask as loss mask) on the same batch and aggregation: what the intervention did to cancellation;
- ``cancel/<kind>/...`` the four above restricted to the shared nodes of one kind, where a node's kind is its
  member tokens' quadrant (``pos_high`` ... ``neg_low``, ``zero_adv`` for A = 0) when they all agree, else
  ``mixed`` (a node shared by a correct and a wrong response is mixed). The token and mass shares of the kinds
  add up to the overall ones. ``zero_adv`` nodes carry no mass: only their token share is logged.

Only the policy-gradient term at rho = 1 is counted (the first on-policy pass): the KL term and a method's extra
loss terms are not. c is that of the whole batch as one minibatch. With ``algo.minibatches`` > 1 every node still
lies in one minibatch (they hold whole groups), so each node's net and gross are exact up to that minibatch's
constant factor; only the weighting of minibatches in the batch sums can differ (dapo's per-minibatch count).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from grpo.credit import TokenCredit, TokenFacts
from grpo.prefixes import SharedPrefixes, batch_prefixes
from grpo.quadrants import QuadrantMasks
from runrecord import QUADRANTS

NODE_KINDS = (*QUADRANTS, "zero_adv", "mixed")
"""The kind of a shared node: its members' common quadrant (or zero_adv), else mixed."""
_MASS_KINDS = (*QUADRANTS, "mixed")


def node_kinds(prefixes: SharedPrefixes, masks: QuadrantMasks) -> Tensor:
    """[B, T] long: index into NODE_KINDS of each token's node (-1 on padding): the members' common token
    quadrant (zero_adv for A = 0), or mixed when they differ."""
    label = torch.full(masks.high.shape, -1, dtype=torch.long, device=masks.high.device)
    for index, name in enumerate(NODE_KINDS[:-1]):
        label = torch.where(masks.zero_adv if name == "zero_adv" else masks[name], index, label)
    low, high = prefixes.node_min(label.double()), prefixes.node_max(label.double())
    kind = torch.where(low == high, low, torch.full_like(low, NODE_KINDS.index("mixed")))
    return torch.where(prefixes.size > 0, kind, torch.full_like(kind, -1)).long()


def _ratio(numerator: Tensor, denominator: Tensor) -> float:
    return float(numerator / denominator) if float(denominator) > 0 else math.nan


@torch.no_grad()
def cancellation_stats(
    prefixes: SharedPrefixes,
    contributions: Tensor,
    plain_contributions: Tensor,
    response_mask: Tensor,
    kinds: Tensor,
) -> dict[str, float]:
    """The ``cancel/*`` metrics (module docstring) from v = c w A [B, T] of the credit used and of plain GRPO."""
    real = response_mask.bool()
    shared = prefixes.shared & real
    n_tokens = int(real.sum())
    size = prefixes.size.clamp_min(1).double()
    out: dict[str, float] = {}
    uncancelled: dict[str, Tensor] = {}
    gross: dict[str, Tensor] = {}
    for label, v in (("", contributions.double()), ("_plain", plain_contributions.double())):
        magnitude = torch.where(real, v.abs(), torch.zeros_like(v))
        # every member token holds its node's net: weighting by 1 / size counts each node once
        uncancelled[label] = prefixes.node_sum(v).abs() / size
        gross[label] = magnitude
        total = magnitude.sum()
        if label == "":
            out["cancel/shared_token_share"] = int(shared.sum()) / n_tokens if n_tokens else 0.0
            out["cancel/shared_mass_share"] = _ratio(magnitude[shared].sum(), total)
        out[f"cancel/uncancelled_ratio{label}"] = _ratio(
            uncancelled[label][shared].sum(), magnitude[shared].sum()
        )
    total = gross[""].sum()
    for index, kind in enumerate(NODE_KINDS):
        at = shared & (kinds == index)
        out[f"cancel/{kind}/shared_token_share"] = int(at.sum()) / n_tokens if n_tokens else 0.0
        if kind not in _MASS_KINDS:
            continue
        out[f"cancel/{kind}/shared_mass_share"] = _ratio(gross[""][at].sum(), total)
        for label in ("", "_plain"):
            out[f"cancel/{kind}/uncancelled_ratio{label}"] = _ratio(
                uncancelled[label][at].sum(), gross[label][at].sum()
            )
    return out


def cancellation_metrics(facts: TokenFacts, credit: TokenCredit, masks: QuadrantMasks) -> dict[str, float]:
    """The ``cancel/*`` metrics of one batch: the credit the loss uses against plain GRPO credit."""
    prefixes = batch_prefixes(facts)
    used = facts.loss_coefficients(credit.loss_mask) * credit.weights.double() * credit.advantages.double()
    plain = facts.loss_coefficients(facts.response_mask) * facts.advantages.double()
    return cancellation_stats(prefixes, used, plain, facts.response_mask, node_kinds(prefixes, masks))
