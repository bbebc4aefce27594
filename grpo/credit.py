"""The credit contract: the one interface between the GRPO core and a token-level credit method.

The core knows nothing of any particular method. Once per rollout it builds a :class:`TokenFacts` (what is
known about every response token) and a default :class:`TokenCredit` (plain GRPO: every token gets its
sequence advantage, weight 1), then hands both to the configured intervention(s), in order, each of which
returns a new :class:`TokenCredit`. During the update the core may also ask each intervention for extra
per-token loss terms that need the current (grad-carrying) log-probs (KL-Cov does).

The per-token loss the core then optimises is (see ``grpo/loss.py`` for the full derivation)::

    L_t = weight_t * pg_t(advantage_t) + beta * kl_weight_t * KL_t + extra_t

aggregated over the tokens where ``loss_mask`` is true (the KL part over all response tokens). A weight of 0
freezes a token's policy-gradient term but -- unless an intervention also clears ``loss_mask`` -- the token
still counts in the normaliser, so freezing one group of tokens does not rescale the others.

A method that needs per-token facts beyond these (hidden states with a LoRA adapter on and off, attention
entropies, a teacher's log-probs) lists them in ``needs`` (or ``facts_needed``); the core computes them on
demand, once per batch, into ``TokenFacts.extra`` (:mod:`grpo.facts`), and refuses a run that cannot supply them.

A new method is one file in ``interventions/`` that subclasses :class:`Intervention`, declares a config
dataclass, and decorates itself with :func:`register`; plus one YAML in ``conf/intervention/``. The registry lives
here, in the core (as verl's ``register_policy_loss``); methods register into it when ``interventions`` is imported.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from grpo.checks import ConfigError
from grpo.loss import token_coefficients

if TYPE_CHECKING:
    from grpo.entropy_split import EntropySplit
    from grpo.rollout import Rollout


@dataclass(frozen=True)
class TokenFacts:
    """Everything known about a batch of B responses padded to T tokens. All tensors are detached.

    Shapes: per-token tensors are ``[B, T]``; per-sequence tensors are ``[B]``.
    """

    advantages: Tensor
    """[B, T] float: the GRPO sequence advantage A_i broadcast over its response tokens (0 on padding)."""
    entropy: Tensor
    """[B, T] float: entropy (nats) of the sampling distribution pi_old(.|s_t) after temperature."""
    behaviour_logprobs: Tensor
    """[B, T] float: log pi_old(o_t|s_t) of the sampled token under the sampling policy."""
    old_logprobs: Tensor
    """[B, T] float: log-probs of the policy before this update (equal to behaviour_logprobs on-policy)."""
    response_mask: Tensor
    """[B, T] bool: true on real response tokens, false on padding."""
    group_ids: Tensor
    """[B] long: which prompt group each response belongs to (0..n_groups-1)."""
    rewards: Tensor
    """[B] float: the verifiable reward of each response."""
    step: int
    """The training step (0-based) this batch is used at."""
    ref_logprobs: Tensor | None = None
    """[B, T] float: log-probs under the reference policy, when a KL term is configured."""
    response_ids: Tensor | None = None
    """[B, T] long: the sampled tokens (padding where ``response_mask`` is false); the trainer always sets it."""
    loss_aggregation: str = "seq_mean_token_mean"
    """``algo.loss_aggregation`` of the loss this credit will enter (the trainer always sets it): with
    ``max_new_tokens`` it fixes each token's coefficient c_it (:meth:`loss_coefficients`)."""
    max_new_tokens: int | None = None
    """Dr. GRPO's constant normaliser L (``sampling.max_new_tokens``); None means the padded width T."""
    extra: dict[str, Tensor] = field(default_factory=dict)
    """Facts computed on demand (:mod:`grpo.facts`), keyed by fact name: only those a configured, active
    intervention lists in :meth:`Intervention.facts_needed` are present. ``[B, T, ...]``, detached."""

    def loss_coefficients(self, loss_mask: Tensor) -> Tensor:
        """[B, T] float64 c_it of the configured aggregation over ``loss_mask``: the loss is sum c * L_t."""
        width = self.max_new_tokens if self.max_new_tokens is not None else loss_mask.shape[-1]
        return token_coefficients(loss_mask, self.loss_aggregation, width)  # type: ignore[arg-type]

    @classmethod
    def from_rollout(
        cls,
        rollout: Rollout,
        rewards: Tensor,
        group_ids: Tensor,
        advantages: Tensor,
        step: int,
        *,
        old_logprobs: Tensor | None = None,
        ref_logprobs: Tensor | None = None,
        loss_aggregation: str = "seq_mean_token_mean",
        max_new_tokens: int | None = None,
        extra: dict[str, Tensor] | None = None,
    ) -> TokenFacts:
        """The facts of a sampled batch (the trainer's and the credit probe's one recipe): ``advantages`` [B]
        (one per response, broadcast over its tokens) or [B, T] (per token: distillation), the sampler's
        entropies and log-probs; ``old_logprobs`` default to the behaviour log-probs (on-policy); the loss
        aggregation fixes the tokens' loss coefficients; ``extra``: the facts computed on demand."""
        mask = rollout.response_mask
        advantages = advantages.to(mask.device)  # rewards live on the CPU, the rollout on the model's device
        return cls(
            advantages=(advantages[:, None] if advantages.dim() == 1 else advantages) * mask,
            entropy=rollout.entropy,
            behaviour_logprobs=rollout.logprobs,
            old_logprobs=rollout.logprobs if old_logprobs is None else old_logprobs,
            response_mask=mask,
            group_ids=group_ids,
            rewards=rewards,
            step=step,
            ref_logprobs=ref_logprobs,
            response_ids=rollout.response_ids,
            loss_aggregation=loss_aggregation,
            max_new_tokens=max_new_tokens,
            extra=extra or {},
        )

    def fact(self, key: str) -> Tensor:
        """``extra[key]``, or an error saying that the method reading it did not ask for it."""
        if key not in self.extra:
            raise KeyError(
                f"fact '{key}' was not computed for this batch (computed: {sorted(self.extra)}); "
                "an intervention that reads it must list it in its facts_needed()"
            )
        return self.extra[key]

    @property
    def sequence_advantages(self) -> Tensor:
        """[B] the (unreshaped) sequence advantage of each response."""
        mask = self.response_mask.float()
        return (self.advantages * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


@dataclass(frozen=True)
class TokenCredit:
    """What the loss uses for every token. Interventions return modified copies (``dataclasses.replace``)."""

    advantages: Tensor
    """[B, T] float: the advantage in the clipped surrogate."""
    weights: Tensor
    """[B, T] float: multiplies the policy-gradient term; 0 freezes a token, k > 1 amplifies it."""
    kl_weights: Tensor
    """[B, T] float: multiplies the KL term (1 on response tokens unless a method masks KL too)."""
    loss_mask: Tensor
    """[B, T] bool: tokens that count in the loss normaliser."""
    clip: bool = True
    """False makes the surrogate the unclipped -A * rho (KL-Cov's objective)."""
    info: dict[str, float] = field(default_factory=dict)
    """Scalars an intervention wants logged (under ``intervention/``), e.g. the entropy threshold it used."""
    extras: dict[str, Tensor] = field(default_factory=dict)
    """[B, T] tensors a method computed in ``credit()`` and needs again in ``extra_loss`` (KL-Cov's selected
    tokens); keys are prefixed with the method name. The core passes them through untouched."""

    @classmethod
    def grpo_default(cls, facts: TokenFacts) -> TokenCredit:
        mask = facts.response_mask
        return cls(
            advantages=facts.advantages.clone(),
            weights=mask.float(),
            kl_weights=mask.float(),
            loss_mask=mask.clone(),
        )

    def with_info(self, **values: float) -> TokenCredit:
        return replace(self, info={**self.info, **{k: float(v) for k, v in values.items()}})


@dataclass
class InterventionConfig:
    """Fields every intervention has. Subclasses add their own (each with a docstring)."""

    name: str = "none"
    """Registered name of the method (the file name in interventions/ and conf/intervention/)."""
    start_step: int = 0
    """First training step (0-based) at which the method acts; before it the batch passes through untouched."""
    end_step: int | None = None
    """Step at which the method stops acting (exclusive); None = until the end of training."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the field when a value is out of range."""
        # type first: a string or float step (e.g. a quoted Hydra override) would otherwise fail with a bare
        # TypeError in the comparisons below, or silently make a window that never matches an int step
        for key, nullable in (("start_step", False), ("end_step", True)):
            value = getattr(self, key)
            if value is None and nullable:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                kind = "an integer or null" if nullable else "an integer"
                raise ConfigError(f"intervention '{self.name}': {key} must be {kind}, got {value!r}")
        if self.start_step < 0:
            raise ConfigError(f"intervention '{self.name}': start_step must be >= 0, got {self.start_step}")
        if self.end_step is not None and self.end_step <= self.start_step:
            raise ConfigError(
                f"intervention '{self.name}': empty step window [start_step={self.start_step}, "
                f"end_step={self.end_step}); end_step must be > start_step or null"
            )


class Intervention:
    """Base class. Override :meth:`credit` and, if the method needs grad-carrying log-probs, :meth:`extra_loss`."""

    config_class: ClassVar[type[InterventionConfig]] = InterventionConfig
    needs: ClassVar[tuple[str, ...]] = ()
    """Extra per-token facts the method reads from ``facts.extra`` (provider names of :mod:`grpo.facts`): the
    core computes each once per batch, only at steps where the method is active. None by default: no cost."""

    def __init__(self, config: InterventionConfig):
        self.config = config

    def active(self, step: int) -> bool:
        end = self.config.end_step
        return step >= self.config.start_step and (end is None or step < end)

    def credit(self, facts: TokenFacts, credit: TokenCredit, generator: torch.Generator) -> TokenCredit:
        """Return the credit to use for this batch. ``generator`` is the only randomness allowed (resumable)."""
        return credit

    def facts_needed(self, step: int | None = None) -> tuple[str, ...]:
        """The fact keys to compute for ``step`` (none outside the step window); ``step=None``: every fact the
        method may ever ask for (what the requirement checks look at). Override when config decides them."""
        return () if step is not None and not self.active(step) else self.needs

    def requirements(self) -> list[tuple[str, tuple[str, ...]]]:
        """(method name, the facts it needs) for this method -- and, in ``compose``, for each step -- so that a
        missing requirement is refused naming the method that has it."""
        return [(self.config.name, self.facts_needed())]

    def check_model(self, model: torch.nn.Module) -> None:
        """Refuse (:class:`ConfigError`) a model the method cannot work with, before any rollout (e.g. a hidden
        layer index the model does not have). Called once, when the trainer is built."""

    def first_active_step(self) -> int:
        """The first training step at which the method can act (the start of its step window)."""
        return self.config.start_step

    def quadrant_split(self) -> EntropySplit | None:
        """The entropy split this method decides quadrants with, if it has one. The core's per-quadrant
        diagnostics then use it, so that they describe the very tokens the method froze or scaled."""
        return None

    def extra_loss(
        self, facts: TokenFacts, credit: TokenCredit, logprobs: Tensor, rows: Tensor
    ) -> Tensor | None:
        """Optional [b, T] per-token loss terms added to L_t for the minibatch ``rows`` (indices into B).

        ``logprobs`` are the current policy's log-probs of the sampled tokens for those rows, with grad.
        """
        return None


_REGISTRY: dict[str, type[Intervention]] = {}


def register(name: str) -> Callable[[type[Intervention]], type[Intervention]]:
    """Class decorator: make an intervention available as ``intervention=<name>``."""

    def wrap(cls: type[Intervention]) -> type[Intervention]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise RuntimeError(f"intervention name '{name}' registered twice")
        cls.name = name  # type: ignore[attr-defined]
        _REGISTRY[name] = cls
        return cls

    return wrap


def registered() -> dict[str, type[Intervention]]:
    """The methods registered so far (every method once ``interventions`` has been imported)."""
    return dict(_REGISTRY)


def config_from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build a (possibly nested) config dataclass from a plain dict, refusing unknown keys by name."""
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        default = known[key].default
        nested_type = None
        if known[key].default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            nested_default = known[key].default_factory()  # type: ignore[misc]
            if dataclasses.is_dataclass(nested_default):
                nested_type = type(nested_default)
        elif dataclasses.is_dataclass(default):
            nested_type = type(default)
        if nested_type is not None and isinstance(value, dict):
            value = config_from_dict(nested_type, value, f"{where}.{key}")
        kwargs[key] = value
    return cls(**kwargs)


def build_intervention(values: dict[str, Any]) -> Intervention:
    """Turn one intervention config dict (``{name: ..., <fields>}``) into a validated instance."""
    values = dict(values)
    name = values.get("name", "none")
    methods = registered()
    if name not in methods:
        hint = "" if methods else " (none: import the interventions package first)"
        raise ConfigError(f"unknown intervention '{name}'; registered: {sorted(methods)}{hint}")
    cls = methods[name]
    config = config_from_dict(cls.config_class, values, f"intervention '{name}'")
    config.validate()
    return cls(config)
