"""``intervention=arca``: adapter-residual credit under LoRA (arXiv 2606.00257).

"Adapter-Residual Credit Assignment When Token Signals Degenerate" (arXiv 2606.00257; only the abstract is
public). A token's salience is the size of what the LoRA adapter adds to its hidden state -- no reward model,
value head or tree::

    s_t  = || h_t(adapter on) - h_t(adapter off) ||_2                      (the paper's salience)
    s^_t = s_t / mean_{t' in response} s_t'                                normalisation=mean (default)
    g_t  = 1 + strength * (s^_t - 1)                                       strength in [0, 1], default 1: g = s^
    A'_t = A_t * g_t   (target=advantage, default)      or      w'_t = w_t * g_t   (target=weight)

g_t is a stop-gradient weight (facts are detached). With mean normalisation the weights of one response
average 1, so a response's total credit sum_t A'_t = sum_t A_t is kept (GRPO's A_t is constant over a response)
and only moved between its tokens. ``strength`` mixes toward plain credit (0 = GRPO).

The paper measures how far token weights degenerate, per response, with the Gini coefficient and the
effective-token ratio of the weights; logged as ``arca/gini`` and ``arca/effective_token_ratio`` (means over
the responses, of g_t)::

    Gini = sum_i sum_j |g_i - g_j| / (2 n sum_i g_i)      0: uniform weights; -> 1: all weight on one token
    ETR  = (sum_i g_i)^2 / (n sum_i g_i^2)                1: uniform; 1/n: all weight on one token

quadrl's choices, not the paper's (the abstract publishes none of them):

- ``layer``: an index into the backbone's ``hidden_states`` tuple (0 = embeddings, -1 = the last hidden state,
  after the final norm in Llama-style models); default -1.
- s_t is read at the state that predicts y_t (the position of its log-prob and entropy; :mod:`grpo.facts`).
- the normalisation (``mean`` or ``none``) and the mixing form above.
- a response whose saliences are all ~0 keeps g_t = 1 (plain credit); this is every response at step 0, since
  LoRA's B matrices start at 0 (adapter on == adapter off). Their share is logged as ``arca/degenerate_share``.
- ``target``: scaling A_t or w_t gives the same gradient for g_t >= 0 (the clipped surrogate is positively
  homogeneous in A: min(rho A g, clip(rho) A g) = g min(rho A, clip(rho) A)); they differ in what a later
  ``compose`` step and the per-quadrant statistics see.

Needs a LoRA adapter (``model=tiny_lora`` / ``model=local_lora``): refused before any compute otherwise. The
adapter-off pass is the KL term's reference pass when ``algo.beta > 0`` (run once). Cost: two no-grad forwards
per step (one when the reference pass is shared).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import ConfigError, Intervention, InterventionConfig, TokenCredit, TokenFacts, register

NORMALISATIONS = ("mean", "none")
TARGETS = ("advantage", "weight")
SALIENCE_FLOOR = 1e-12
"""A response whose mean salience is below this is degenerate (adapter on == adapter off): g_t = 1."""


@dataclass
class ArcaConfig(InterventionConfig):
    name: str = "arca"
    """Registered name of the method."""
    layer: int = -1
    """Hidden-state index the salience is measured at (0 = embeddings, -1 = last); quadrl's default."""
    normalisation: str = "mean"
    """Within-trajectory normalisation: ``mean`` (s / mean over the response: weights average 1) or ``none``."""
    strength: float = 1.0
    """g = 1 + strength (s^ - 1); 1 uses the normalised salience itself, 0 gives plain GRPO credit. In [0, 1]."""
    target: str = "advantage"
    """What g scales: ``advantage`` (A' = A g) or ``weight`` (w' = w g); same gradient, different bookkeeping."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        check.integer(where, "layer", self.layer)
        check.choice(where, "normalisation", self.normalisation, NORMALISATIONS)
        check.number(where, "strength", self.strength, low=0.0, high=1.0)
        check.choice(where, "target", self.target, TARGETS)


def arca_weights(
    salience: Tensor, mask: Tensor, normalisation: str, strength: float
) -> tuple[Tensor, Tensor]:
    """([B, T] float64 weights g_t, [B] bool degenerate rows) from the salience at one layer (module docstring).

    g = 1 on padding and on degenerate rows (mean salience < SALIENCE_FLOOR)."""
    m = mask.bool()
    s = salience.double() * m
    mean = s.sum(-1) / m.sum(-1).clamp_min(1)
    degenerate = mean < SALIENCE_FLOOR
    if normalisation == "mean":
        s = s / torch.where(degenerate, 1.0, mean)[:, None]
    g = 1.0 + strength * (s - 1.0)
    return torch.where(m & ~degenerate[:, None], g, 1.0), degenerate


def gini_and_effective_ratio(weights: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Per row, over its masked entries (weights >= 0): the Gini coefficient and the effective-token ratio
    (module docstring). Rows with no entry or zero total give NaN.

    Gini by the sorted form: with x_(1) <= ... <= x_(n), G = 2 sum_i i x_(i) / (n sum x) - (n + 1) / n."""
    m = mask.bool()
    x = weights.double()
    n = m.sum(-1).double()
    total = (x * m).sum(-1)
    ordered = torch.where(m, x, torch.inf).sort(dim=-1).values  # the row's entries first, ascending
    rank = torch.arange(1, x.shape[-1] + 1, dtype=torch.float64, device=x.device)
    valid = rank[None, :] <= n[:, None]
    weighted = torch.where(valid, ordered * rank, 0.0).sum(-1)
    ok = (n > 0) & (total > 0)
    gini = torch.where(ok, 2 * weighted / (n * total).clamp_min(1e-300) - (n + 1) / n.clamp_min(1), torch.nan)
    squares = (x * x * m).sum(-1)
    ratio = torch.where(ok, total**2 / (n * squares).clamp_min(1e-300), torch.nan)
    return gini, ratio


@register("arca")
class Arca(Intervention):
    config_class = ArcaConfig
    config: ArcaConfig
    needs = ("adapter_residual",)

    def check_model(self, model: torch.nn.Module) -> None:
        layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
        if layers is not None and not -(layers + 1) <= self.config.layer <= layers:
            raise ConfigError(
                f"intervention 'arca': layer={self.config.layer} is out of range for a model with {layers} "
                f"layers (hidden-state indices -{layers + 1}..{layers}; -1 = the last)"
            )

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        salience = facts.fact("adapter_residual")[..., cfg.layer]
        g, degenerate = arca_weights(salience, mask, cfg.normalisation, cfg.strength)
        if cfg.target == "advantage":
            credit = replace(credit, advantages=(credit.advantages.double() * g).to(credit.advantages.dtype))
        else:
            credit = replace(credit, weights=(credit.weights.double() * g).to(credit.weights.dtype))
        gini, ratio = gini_and_effective_ratio(g, mask & ~degenerate[:, None])
        live = ~torch.isnan(gini)
        return credit.with_info(
            **{
                "arca/salience_mean": float(salience.double()[mask].mean()) if bool(mask.any()) else 0.0,
                "arca/gini": float(gini[live].mean()) if bool(live.any()) else float("nan"),
                "arca/effective_token_ratio": float(ratio[live].mean()) if bool(live.any()) else float("nan"),
                "arca/weight_max": float(g[mask].max()) if bool(mask.any()) else 1.0,
                "arca/degenerate_share": float(degenerate.double().mean()) if len(degenerate) else 0.0,
            }
        )
