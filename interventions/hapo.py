"""``intervention=hapo``: sign-preserving, entropy-guided advantage reallocation (arXiv 2604.11056).

HAPO (v2 of "Rethinking Token-Level Credit Assignment in RLVR: A Polarity-Entropy Analysis", arXiv 2604.11056;
v1 called it EAPO), as transcribed in docs/background.md §1::

    z_t   = (H_t - mu_H) / sigma_H                  standardised entropy (detached); z_t = 0 where sigma_H < 1e-8
    zc_t  = clip(z_t, -|A_t| / phi, +|A_t| / phi)
    A'_t  = A_t + alpha * sign(A_t) * zc_t          alpha = 0.2, phi = 2

hence |A'_t| in [|A_t| (1 - alpha/phi), |A_t| (1 + alpha/phi)] = [0.9 |A_t|, 1.1 |A_t|] with A_t's sign (alpha < phi
is required), and A_t = 0 stays 0: high-entropy tokens get more credit in both polarities, low-entropy less.

The paper does not say over which tokens mu_H, sigma_H are taken: ``scope`` picks the pool of *response tokens*
(``batch``: all of the batch's; ``group``: those of the responses to the same prompt; ``sequence``: one
response's). sigma_H is the population standard deviation (ddof 0) over that pool, in float64.
A_t is the incoming ``credit.advantages`` (the GRPO advantage unless an earlier step reshaped it).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import (
    ConfigError,
    Intervention,
    InterventionConfig,
    TokenCredit,
    TokenFacts,
    register,
)
from grpo.groups import segment_stats

SCOPES = ("batch", "group", "sequence")
SIGMA_FLOOR = 1e-8


@dataclass
class HapoConfig(InterventionConfig):
    name: str = "hapo"
    """Registered name of the method."""
    alpha: float = 0.2
    """Reallocation strength; |A'| stays within |A| (1 +- alpha/phi). Must satisfy 0 <= alpha < phi."""
    phi: float = 2.0
    """Clip scale: the standardised entropy is clipped to +-|A|/phi. Must be > 0."""
    scope: str = "batch"
    """Pool of response tokens for the entropy mean and std: ``batch``, ``group`` or ``sequence``."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.number(where, "alpha", self.alpha, low=0.0)
        check.number(where, "phi", self.phi, low=0.0, low_open=True)
        if self.alpha >= self.phi:
            raise ConfigError(
                f"{where}: alpha must be < phi so that every advantage keeps its sign "
                f"(|A'| >= |A| (1 - alpha/phi)), got alpha={self.alpha}, phi={self.phi}"
            )
        check.choice(where, "scope", self.scope, SCOPES)


def standardised_entropy(facts: TokenFacts, scope: str) -> Tensor:
    """[B, T] float64 z_t = (H_t - mu) / sigma over the scope's response tokens; 0 on padding and where sigma ~ 0."""
    mask = facts.response_mask.bool()
    batch = mask.shape[0]
    if scope == "batch":
        pool = torch.zeros(batch, dtype=torch.long, device=mask.device)
    elif scope == "group":
        pool = facts.group_ids.long().to(mask.device)
    elif scope == "sequence":
        pool = torch.arange(batch, device=mask.device)
    else:
        raise ValueError(f"unknown HAPO scope '{scope}'")
    values = facts.entropy.double()[mask]
    stats = segment_stats(values, pool[:, None].expand_as(mask)[mask])
    mean, std = stats.per_row(stats.mean), stats.per_row(stats.std)
    z_flat = torch.where(std >= SIGMA_FLOOR, (values - mean) / std, 0.0)
    z = torch.zeros(mask.shape, dtype=torch.float64, device=mask.device)
    z[mask] = z_flat
    return z


@register("hapo")
class Hapo(Intervention):
    config_class = HapoConfig
    config: HapoConfig

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        z = standardised_entropy(facts, cfg.scope)
        adv = credit.advantages.double()
        bound = adv.abs() / cfg.phi
        zc = torch.minimum(torch.maximum(z, -bound), bound)
        new = adv + cfg.alpha * torch.sign(adv) * zc
        new = torch.where(facts.response_mask.bool(), new, adv).to(credit.advantages.dtype)
        mask = facts.response_mask.bool() & (adv != 0)
        ratio = (new.double()[mask] / adv[mask]) if bool(mask.any()) else torch.ones(1, dtype=torch.float64)
        return replace(credit, advantages=new).with_info(
            **{
                "hapo/alpha": cfg.alpha,
                "hapo/phi": cfg.phi,
                **{f"hapo/scope_{scope}": float(cfg.scope == scope) for scope in SCOPES},
                "hapo/ratio_min": float(ratio.min()),
                "hapo/ratio_max": float(ratio.max()),
                "hapo/clipped_share": float((z.abs() > bound)[mask].double().mean())
                if bool(mask.any())
                else 0.0,
            }
        )
