"""``intervention=iw_opd``: position weighting of on-policy distillation by accumulated discrepancy (arXiv 2606.22600).

"On the Position Bias of On-Policy Distillation" (arXiv 2606.22600; the formulas are the authors' public code,
as docs/background.md transcribes them). On-policy distillation (``algo=opd``) gives response token t the
advantage a_t = log pi_T(y_t|y_<t) - log pi_old(y_t|y_<t); the paper finds that the first ~30% of the tokens carry
almost all of its learning, and reweights each token by how much of the response's teacher-student discrepancy
is still ahead of it::

    d_t     = |a_t|                                   on response tokens (0 on padding)
    F_{t-1} = sum_{k<t} d_k / (sum_k d_k + 1e-8)      accumulated share of the discrepancy before t (F_{-1} = 0)
    g_t     = 1 + (w_max - 1) * clamp(1 - F_{t-1}, 0, 1)           w_max = 1.5
    a'_t    = a_t * g_t                                            (g_t is a stop-gradient weight)

so early tokens get up to w_max, tokens after the bulk of the discrepancy ~1. a_t is the incoming
``credit.advantages``: the distillation advantage under ``algo=opd``. Under reward advantages (a constant A per
response) d_t is constant, F grows linearly with the position and g_t is a plain linear position ramp -- allowed,
but that is not the paper's method. The authors' setting: n = 1 sample per prompt, T = 1.0, lr 1e-5, no KL and no
entropy term.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import Intervention, InterventionConfig, TokenCredit, TokenFacts, register

EPS = 1e-8
"""The authors' guard in the normaliser of F."""


@dataclass
class IwOpdConfig(InterventionConfig):
    name: str = "iw_opd"
    """Registered name of the method."""
    w_max: float = 1.5
    """Weight of the first token (and of every token before any discrepancy); >= 1. The paper's 1.5."""

    def validate(self) -> None:
        super().validate()
        check.number(check.where(self), "w_max", self.w_max, low=1.0)


def position_weights(advantages: Tensor, mask: Tensor, w_max: float) -> Tensor:
    """[B, T] float64 g_t of the module docstring (1 on padding)."""
    d = advantages.double().abs() * mask.bool()
    before = d.cumsum(-1) - d  # sum_{k<t} d_k
    share = before / (d.sum(-1, keepdim=True) + EPS)
    g = 1.0 + (w_max - 1.0) * (1.0 - share).clamp(0.0, 1.0)
    return torch.where(mask.bool(), g, 1.0)


@register("iw_opd")
class IwOpd(Intervention):
    config_class = IwOpdConfig
    config: IwOpdConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        mask = facts.response_mask.bool()
        g = position_weights(credit.advantages, mask, self.config.w_max)
        new = (credit.advantages.double() * g).to(credit.advantages.dtype)
        first = mask & (mask.long().cumsum(-1) == 1)
        return replace(credit, advantages=new).with_info(
            **{
                "iw_opd/weight_mean": float(g[mask].mean()) if bool(mask.any()) else 1.0,
                "iw_opd/weight_first_token": float(g[first].mean()) if bool(first.any()) else 1.0,
            }
        )
