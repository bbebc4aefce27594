"""``intervention=dasd``: direction-adaptive self-distillation from a privileged self-teacher (arXiv 2605.22263).

"Direction-Adaptive Self-Distillation" (arXiv 2605.22263; only the abstract is public). The abstract's parts:
the teacher is the model itself given privileged information (e.g. the reference solution), and the direction of
distillation is set per token by entropy -- high-entropy tokens are pushed *away* from the teacher, low-entropy
tokens pulled *toward* it. Everything else below is quadrl's choice (the abstract gives no loss, threshold or
divergence)::

    log pi_T(y_t)  = log pi_theta_old(y_t | privileged prompt, y_<t)     the self-teacher (current policy, detached),
                     privileged prompt = template.format(prompt, answer, solution)
    delta_t        = log pi_T(y_t) - log pi_old(y_t | prompt, y_<t)              divergence=reverse_kl (default)
    delta_t        = pi_T(y_t) / pi_old(y_t | prompt, y_<t) - 1                  divergence=forward_kl
    delta_t        <- clamp(delta_t, -clip, clip)
    d_t            = -1 if H_t is high (push away), +1 if low (pull toward)   split: grpo.quadrants' rule on H_t
    A'_t           = A_t + coef * d_t * delta_t

Why these delta_t: in the policy-gradient surrogate an advantage delta_t on the sampled token is the
score-function gradient of a divergence to the teacher. With delta_t = log pi_T - log pi_old it is the gradient of
-KL(pi || pi_T) (reverse KL, as in on-policy distillation); with delta_t = pi_T / pi_old - 1 that of
-KL(pi_T || pi) (forward KL: grad KL(pi_T||pi) = -E_{y~pi}[(pi_T/pi) grad log pi], minus the zero-mean baseline 1).
d_t = +1 descends the divergence (toward the teacher), d_t = -1 ascends it (away); the PPO clip bounds each
update's push, ``clip`` bounds delta. A_t is the incoming ``credit.advantages`` (GRPO's reward advantage): DASD
adds to the reward signal, it does not replace it. H_t is the sampling entropy of the student (``facts.entropy``),
split like the quadrants (``split``: top 20% of the batch's tokens are high by default).

Defaults (quadrl's): the worked solution before the prompt (``"{solution};{prompt}"``; ``solution`` is the task's
worked target, else its answer; for a chat model write a template the model reads naturally), coef 1, clip 5.
Cost: one extra no-grad forward of the policy over the privileged prompts + responses per step.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from grpo import checks as check
from grpo.credit import ConfigError, Intervention, InterventionConfig, TokenCredit, TokenFacts, register
from grpo.entropy_split import EntropySplit, entropy_high_mask

DIVERGENCES = ("reverse_kl", "forward_kl")
TEMPLATE_FIELDS = ("prompt", "answer", "solution")


@dataclass
class DasdConfig(InterventionConfig):
    name: str = "dasd"
    """Registered name of the method."""
    template: str = "{solution};{prompt}"
    """The self-teacher's prompt: a str.format template over {prompt} (required), {answer} and {solution}."""
    divergence: str = "reverse_kl"
    """``reverse_kl`` (delta = log pi_T - log pi_old) or ``forward_kl`` (delta = pi_T / pi_old - 1)."""
    coef: float = 1.0
    """Weight of the distillation term added to the advantage; >= 0 (0 = plain GRPO)."""
    clip: float = 5.0
    """|delta_t| is clamped to this; > 0."""
    split: EntropySplit = field(default_factory=EntropySplit)
    """Which tokens are high-entropy (pushed away) vs low (pulled toward): ``grpo.quadrants.EntropySplit``."""

    def validate(self) -> None:
        super().validate()
        where = check.where(self)
        if not isinstance(self.template, str):
            raise ConfigError(f"{where}: template must be a string, got {self.template!r}")
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(self.template) if name is not None}
        except ValueError as error:
            raise ConfigError(
                f"{where}: template {self.template!r} is not a format string: {error}"
            ) from None
        unknown = sorted(names - set(TEMPLATE_FIELDS))
        if unknown or "prompt" not in names:
            raise ConfigError(
                f"{where}: template {self.template!r} must contain {{prompt}} and use only "
                f"{['{' + f + '}' for f in TEMPLATE_FIELDS]}; unknown: {unknown}"
            )
        check.choice(where, "divergence", self.divergence, DIVERGENCES)
        check.number(where, "coef", self.coef, low=0.0)
        check.number(where, "clip", self.clip, low=0.0, low_open=True)
        if not isinstance(self.split, EntropySplit):
            raise ConfigError(f"{where}: split must be a mapping with keys mode, high_fraction, threshold")
        self.split.validate(where)


def distillation_signal(
    teacher_logprobs: Tensor, old_logprobs: Tensor, divergence: str, clip: float
) -> Tensor:
    """[B, T] float64 delta_t of the module docstring (clamped)."""
    log_ratio = teacher_logprobs.double() - old_logprobs.double()
    delta = log_ratio if divergence == "reverse_kl" else torch.expm1(log_ratio)
    return delta.clamp(-clip, clip)


@register("dasd")
class Dasd(Intervention):
    config_class = DasdConfig
    config: DasdConfig

    @property
    def fact_key(self) -> str:
        return f"privileged_logprobs:{self.config.template}"

    def facts_needed(self, step: int | None = None) -> tuple[str, ...]:
        return () if step is not None and not self.active(step) else (self.fact_key,)

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        cfg = self.config
        mask = facts.response_mask.bool()
        delta = distillation_signal(facts.fact(self.fact_key), facts.old_logprobs, cfg.divergence, cfg.clip)
        high, threshold = entropy_high_mask(facts.entropy, mask, cfg.split)
        direction = torch.where(high, -1.0, 1.0).double() * mask
        new = credit.advantages.double() + cfg.coef * direction * delta
        pull, push = mask & ~high, high
        n = max(int(mask.sum()), 1)
        return replace(credit, advantages=new.to(credit.advantages.dtype)).with_info(
            **{
                "dasd/entropy_threshold": threshold,
                "dasd/pull_share": float(pull.sum()) / n,
                "dasd/push_share": float(push.sum()) / n,
                "dasd/delta_mean_pull": float(delta[pull].mean()) if bool(pull.any()) else float("nan"),
                "dasd/delta_mean_push": float(delta[push].mean()) if bool(push.any()) else float("nan"),
            }
        )
