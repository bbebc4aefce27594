"""The sampler/trainer mismatch: measured every step, and optionally corrected by truncated importance sampling.

When another implementation (vLLM) draws the tokens, its log-prob of a sampled token, log pi_sampler(o_t|s_t),
and the training model's, log pi_trainer(o_t|s_t), differ by kernel numerics, a stale weight push, or (top_p < 1)
vLLM's renormalisation over the nucleus. With d_t = log pi_trainer - log pi_sampler on response tokens:

- ``rollout_corr/logp_abs_diff_mean``, ``.._max``: mean and max |d_t|;
- ``rollout_corr/kl_k3``: mean of k3 = exp(d_t) - d_t - 1, the low-variance estimate of KL(pi_sampler || pi_trainer)
  from samples of pi_sampler (Schulman, "Approximating KL divergence", 2020);
- ``rollout_corr/logp_corr``: Pearson correlation of the two log-prob vectors;
- ``rollout_corr/is_ratio_mean``, ``.._max``, ``rollout_corr/is_clipped_frac``, ``rollout_corr/ess``: the
  (truncated) importance weights below and their normalised effective sample size (sum w)^2 / (n sum w^2).

These mirror verl's ``rollout_corr/*`` (verl docs, "Rollout correction") and TRL's ``sampling/*``
(``sampling/sampling_logp_difference/*``, ``sampling/importance_sampling_ratio/*``, trl/trainer/grpo_trainer.py).

Truncated importance sampling (Yao et al., "Your efficient RL framework secretly brings you off-policy RL
training", 2025; TRL's ``vllm_importance_sampling_correction`` with ``vllm_importance_sampling_mode``
token_truncate / sequence_truncate and ``vllm_importance_sampling_cap``; verl's ``rollout_is`` token/sequence)
multiplies each token's policy-gradient term by a weight w:

- token:    w_t = min(exp(d_t), C)
- sequence: w_t = min(exp(sum_{t in response} d_t), C) for every token of the response

The weights are detached: they reweight which samples the gradient trusts, they are not differentiated.
"""

from __future__ import annotations

import torch
from torch import Tensor


def tis_weights(trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, level: str, cap: float) -> Tensor:
    """[B, T] detached truncated importance weights (1 where ``level`` is 'off'; 0 on padding)."""
    mask_f = mask.float()
    if level == "off":
        return mask_f
    d = (trainer_logp - sampler_logp).detach() * mask_f
    if level == "token":
        w = torch.exp(d).clamp(max=cap)
    elif level == "sequence":
        w = torch.exp(d.sum(-1, keepdim=True)).clamp(max=cap).expand_as(d)
    else:
        raise ValueError(f"unknown importance-sampling level {level!r} (off, token, sequence)")
    return w * mask_f


def mismatch_metrics(
    trainer_logp: Tensor, sampler_logp: Tensor, mask: Tensor, level: str = "token", cap: float = 2.0
) -> dict[str, float]:
    """``rollout_corr/*`` for one batch (see the module docstring); ``level`` 'off' reports token-level
    weights (what correcting would do)."""
    m = mask.bool()
    if not bool(m.any()):
        return {}
    a, b = trainer_logp[m].double(), sampler_logp[m].double()
    d = a - b
    w = tis_weights(trainer_logp, sampler_logp, mask, "token" if level == "off" else level, cap)[m].double()
    raw = torch.exp(d) if level != "sequence" else torch.exp((trainer_logp - sampler_logp).mul(mask).sum(-1))
    corr = torch.corrcoef(torch.stack([a, b]))[0, 1] if len(a) > 1 else torch.tensor(1.0)
    return {
        "rollout_corr/logp_abs_diff_mean": float(d.abs().mean()),
        "rollout_corr/logp_abs_diff_max": float(d.abs().max()),
        "rollout_corr/kl_k3": float((torch.exp(d) - d - 1).mean()),
        "rollout_corr/logp_corr": float(torch.nan_to_num(corr, nan=1.0)),
        "rollout_corr/is_ratio_mean": float(w.mean()),
        "rollout_corr/is_ratio_max": float(w.max()),
        "rollout_corr/is_clipped_frac": float((raw > cap).double().mean()),
        "rollout_corr/ess": float(w.sum() ** 2 / (len(w) * (w**2).sum()).clamp_min(1e-30)),
    }
