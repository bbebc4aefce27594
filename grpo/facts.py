"""Per-token facts on demand: what a credit method reads beyond the fields every :class:`TokenFacts` has.

Some methods need facts plain GRPO never computes: hidden states with a LoRA adapter on and off (ARCA),
attention entropies (attention-entropy reweighting), a teacher's log-probs (on-policy distillation), the policy's
own log-probs with privileged context (DASD). A method lists the fact keys it needs
(``Intervention.needs`` / ``facts_needed``); at every step the trainer asks :func:`facts_for` which keys the
step needs and a :class:`FactSource` computes each once for the batch; they land in ``TokenFacts.extra``.
A step that needs none runs no extra pass at all: a plain GRPO step costs what it did before.

A key is a provider name, optionally followed by ``:`` and an argument the provider reads (the privileged
prompt template). The facts are computed in no-grad forward passes, each run at most once per batch and
shared by every fact that reads it:

- the *policy pass*: the current policy (LoRA: adapter on);
- the *reference pass*: the reference policy (LoRA: the adapter disabled). It is also the pass that gives the
  KL term's reference log-probs: when a fact and the KL term both need it, it runs once;
- the *teacher pass* (distillation) and one *privileged pass* per template.

Fact passes run in eval mode (no dropout: a fact describes the network, not a dropout draw) and, when an
attention fact is asked for, with eager attention (the only implementation that returns attention
probabilities; sdpa and flash attention do not), restored afterwards, so sampling keeps its fast kernel.

Position convention (quadrl's choice where a paper does not say): every fact of response token y_t is about the
state s_t that y_t was sampled from -- the position whose output predicts y_t, where the log-prob and the
entropy H_t are read too.

Providers (key -> value, shape; padding is 0):

- ``adapter_residual``: ``||h_l(adapter on) - h_l(adapter off)||_2`` for every hidden-state index l of the
  backbone's ``hidden_states`` tuple (0 = the embeddings, -1 = the last, after the final norm in Llama-style
  models), ``[B, T, L + 1]``, float32. Needs a LoRA adapter (``model.lora.enabled``).
- ``attention_entropy``: ``-sum_j a_j log a_j`` of the attention distribution of the query at s_t, for every
  layer and head, ``[B, T, L, H]``, float32 nats. Needs a model that can run eager attention (any transformers
  model built on its AttentionInterface: Llama, Qwen2/3, Mistral, Gemma, ...). The eager pass holds every
  layer's ``[B, H, S, S]`` probabilities at once: budget that memory on long sequences.
- ``teacher_logprobs``: ``log pi_T(y_t | s_t)`` under the distillation teacher, at the sampling temperature,
  ``[B, T]``. Needs ``algo.advantage=teacher`` (a teacher model).
- ``privileged_logprobs:<template>``: ``log pi(y_t | privileged prompt, y_<t)`` of the current policy, where the
  prompt is ``template.format(prompt=..., answer=..., solution=...)`` of the response's example (``solution``:
  the task's worked target, else its answer), encoded as the policy encodes prompts, ``[B, T]``.

A requirement a provider cannot meet is refused before any compute, naming the method and what is missing:
:func:`check_config` before the model is loaded, :func:`check_model` when the trainer is built.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from grpo.checks import ConfigError
from grpo.model import Policy
from grpo.rollout import Rollout, left_pad, response_logprobs
from grpo.task import Example

if TYPE_CHECKING:
    from grpo.config import QuadrlConfig
    from grpo.credit import Intervention

TEACHER = "teacher_logprobs"
"""The fact the core itself needs in distillation mode (``algo.advantage=teacher``)."""


@dataclass
class Pass:
    """One no-grad forward over the batch's prompts + responses."""

    logprobs: Tensor
    """[B, T] log-probs of the sampled tokens (0 on padding)."""
    outputs: dict[str, Any] = field(default_factory=dict)
    """Backbone outputs captured from the same forward (``hidden_states``, ``attentions``), over all positions."""


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _hf_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def eager_support(model: torch.nn.Module) -> str | None:
    """None when the model can switch to eager attention, else why not."""
    inner = _hf_model(model)
    can = getattr(inner, "_can_set_attn_implementation", None)
    if not hasattr(inner, "set_attn_implementation") or (can is not None and not can()):
        return (
            f"a model that can run eager attention ({type(inner).__name__} cannot switch its attention "
            "implementation; only eager attention returns attention probabilities)"
        )
    return None


@contextmanager
def eager_attention(model: torch.nn.Module) -> Iterator[None]:
    """Run the model with eager attention inside the block, then restore its implementation (sdpa, ...)."""
    inner = _hf_model(model)
    before = inner.config._attn_implementation
    inner.set_attn_implementation("eager")
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def response_states(states: Tensor, n_prompt: int) -> Tensor:
    """The per-position tensor ``states`` ([B, S, ...], S = prompt + response) at the states s_t that predict each
    response token: positions n_prompt - 1 .. S - 2 (the alignment of :func:`grpo.rollout.response_logprobs`)."""
    return states[:, n_prompt - 1 : -1]


def attention_entropy(attentions: Sequence[Tensor], n_prompt: int) -> Tensor:
    """Per layer and head, the entropy (nats) of the attention distribution of every response state s_t.

    ``attentions``: one ``[B, H, S, S]`` probability tensor per layer -> ``[B, T, L, H]`` float32,
    ``H_t = -sum_j a_tj log a_tj`` (``0 log 0 = 0``: masked keys carry probability 0).
    """
    per_layer = []
    for probs in attentions:
        rows = probs[:, :, n_prompt - 1 : -1].float()  # [B, H, T, S]
        per_layer.append(-torch.special.xlogy(rows, rows).sum(-1).transpose(1, 2))  # [B, T, H]
    return torch.stack(per_layer, dim=2)


def adapter_residual(on: Sequence[Tensor], off: Sequence[Tensor], n_prompt: int) -> Tensor:
    """``||h_l(on) - h_l(off)||_2`` at every response state, per hidden-state index l -> ``[B, T, L + 1]``."""
    norms = [
        (response_states(a, n_prompt).float() - response_states(b, n_prompt).float()).norm(dim=-1)
        for a, b in zip(on, off, strict=True)
    ]
    return torch.stack(norms, dim=-1)


def privileged_prompt(template: str, example: Example) -> str:
    """The self-teacher's prompt: ``template`` filled with the example's prompt, answer and worked solution."""
    return template.format(
        prompt=example.prompt, answer=example.answer, solution=example.target or example.answer
    )


class FactSource:
    """Computes the facts of one batch; every forward pass is run at most once and shared (module docstring)."""

    def __init__(
        self,
        policy: Policy,
        rollout: Rollout,
        examples: Sequence[Example],
        *,
        temperature: float,
        chunk_size: int,
        keys: Sequence[str] = (),
        teacher: torch.nn.Module | None = None,
    ):
        self.policy, self.rollout, self.examples = policy, rollout, examples
        self.temperature, self.chunk_size, self.teacher = temperature, chunk_size, teacher
        self.keys = tuple(dict.fromkeys(keys))
        providers = [provider(key)[0] for key in self.keys]
        self.captures = {
            name: {c for p in providers for c in getattr(p, name)} for name in ("policy", "reference")
        }
        self._passes: dict[str, Pass] = {}

    def _forward(
        self,
        model: torch.nn.Module,
        prompt: tuple[Tensor, Tensor] | None = None,
        captures: frozenset[str] | set[str] = frozenset(),
        context: Any = None,
    ) -> Pass:
        r = self.rollout
        prompt_ids, prompt_mask = prompt or (r.prompt_ids, r.prompt_mask)
        capture: dict[str, Any] = dict.fromkeys(sorted(captures))
        eager = eager_attention(model) if "attentions" in captures else nullcontext()
        with torch.no_grad(), eval_mode(model), context or nullcontext(), eager:
            logprobs, _ = response_logprobs(
                model,
                prompt_ids,
                prompt_mask,
                r.response_ids,
                r.response_mask,
                temperature=self.temperature,
                chunk_size=self.chunk_size,
                capture=capture,
            )
        return Pass(logprobs, capture)

    def _cached(self, name: str, run: Callable[[], Pass]) -> Pass:
        if name not in self._passes:
            self._passes[name] = run()
        return self._passes[name]

    def policy_pass(self) -> Pass:
        """The current policy (adapter on)."""
        return self._cached(
            "policy", lambda: self._forward(self.policy.model, captures=self.captures["policy"])
        )

    def reference_pass(self) -> Pass:
        """The reference policy (LoRA: adapter off); also the KL term's reference log-probs."""

        def run() -> Pass:
            module, context = self.policy.reference_context()
            return self._forward(module, captures=self.captures["reference"], context=context)

        return self._cached("reference", run)

    def teacher_pass(self) -> Pass:
        if self.teacher is None:
            raise RuntimeError("teacher log-probs asked for, but the trainer was built without a teacher")
        teacher = self.teacher
        return self._cached("teacher", lambda: self._forward(teacher))

    def privileged_pass(self, template: str) -> Pass:
        texts = [privileged_prompt(template, ex) for ex in self.examples]
        device = self.rollout.prompt_ids.device

        def run() -> Pass:
            ids = [self.policy.encode_prompt(t) for t in texts]
            return self._forward(self.policy.model, prompt=left_pad(ids, self.policy.pad_id, device))

        return self._cached(f"privileged:{template}", run)

    @property
    def n_prompt(self) -> int:
        return self.rollout.prompt_ids.shape[1]

    def compute(self) -> dict[str, Tensor]:
        """Every requested fact, zero on padding."""
        mask = self.rollout.response_mask
        out: dict[str, Tensor] = {}
        for key in self.keys:
            spec, argument = provider(key)
            value = spec.compute(self, argument)
            shape = (*mask.shape, *[1] * (value.dim() - 2))
            out[key] = value * mask.reshape(shape).to(value.dtype)
        return out


# ----------------------------------------------------------------------------------------------- providers

Requirement = Callable[["QuadrlConfig", str], str | None]
ModelRequirement = Callable[[Policy, "torch.nn.Module | None"], str | None]


def _nothing(*_: Any) -> str | None:
    return None


@dataclass(frozen=True)
class Provider:
    """How one fact is computed and what it needs (each check returns None, or the missing requirement)."""

    what: str
    """What the fact is, for messages."""
    compute: Callable[[FactSource, str], Tensor]
    """(source, argument after ':') -> [B, T, ...] detached."""
    policy: tuple[str, ...] = ()
    """Backbone outputs it reads from the policy pass (``hidden_states``, ``attentions``)."""
    reference: tuple[str, ...] = ()
    """Backbone outputs it reads from the reference pass."""
    check_config: Requirement = _nothing
    """Checked before the model is loaded."""
    check_model: ModelRequirement = _nothing
    """Checked when the trainer is built: (policy, teacher)."""


def _lora_config(cfg: QuadrlConfig, _: str) -> str | None:
    if not cfg.model.lora.enabled:
        return "a LoRA adapter: model.lora.enabled=true (e.g. model=tiny_lora or model=local_lora)"
    return None


def _lora_model(policy: Policy, _: torch.nn.Module | None) -> str | None:
    return None if policy.lora else "a policy with a LoRA adapter (model.lora.enabled=true)"


def _teacher_config(cfg: QuadrlConfig, _: str) -> str | None:
    if cfg.algo.advantage != "teacher":
        return "a teacher model: algo=opd (algo.advantage=teacher, algo.teacher.*)"
    return None


def _teacher_model(_: Policy, teacher: torch.nn.Module | None) -> str | None:
    return None if teacher is not None else "a teacher model passed to the trainer (algo.teacher)"


def _template(_: QuadrlConfig, argument: str) -> str | None:
    return (
        None
        if "{prompt}" in argument
        else "a prompt template containing {prompt} after 'privileged_logprobs:'"
    )


PROVIDERS: dict[str, Provider] = {
    "adapter_residual": Provider(
        what="the hidden states with the LoRA adapter on and off",
        compute=lambda s, _: adapter_residual(
            s.policy_pass().outputs["hidden_states"], s.reference_pass().outputs["hidden_states"], s.n_prompt
        ),
        policy=("hidden_states",),
        reference=("hidden_states",),
        check_config=_lora_config,
        check_model=_lora_model,
    ),
    "attention_entropy": Provider(
        what="the attention probabilities of every layer and head",
        compute=lambda s, _: attention_entropy(s.policy_pass().outputs["attentions"], s.n_prompt),
        policy=("attentions",),
        check_model=lambda policy, _: eager_support(policy.model),
    ),
    TEACHER: Provider(
        what="the teacher's log-probs",
        compute=lambda s, _: s.teacher_pass().logprobs,
        check_config=_teacher_config,
        check_model=_teacher_model,
    ),
    "privileged_logprobs": Provider(
        what="the policy's log-probs with privileged context in its prompt",
        compute=lambda s, template: s.privileged_pass(template).logprobs,
        check_config=_template,
    ),
}
"""Every fact the core can compute, by provider name."""


def provider(key: str) -> tuple[Provider, str]:
    """(provider, argument) of a fact key ``name`` or ``name:argument``."""
    name, _, argument = key.partition(":")
    if name not in PROVIDERS:
        raise ConfigError(f"no provider computes the fact '{name}'; known facts: {sorted(PROVIDERS)}")
    return PROVIDERS[name], argument


# ------------------------------------------------------------------------------------ what a run needs


def core_facts(cfg: QuadrlConfig) -> tuple[str, ...]:
    """Facts the core itself needs: the teacher's log-probs in distillation mode."""
    return (TEACHER,) if cfg.algo.advantage == "teacher" else ()


def facts_for(cfg: QuadrlConfig, intervention: Intervention, step: int) -> tuple[str, ...]:
    """The fact keys to compute at ``step`` (each once)."""
    return tuple(dict.fromkeys((*core_facts(cfg), *intervention.facts_needed(step))))


def _owners(cfg: QuadrlConfig, intervention: Intervention) -> list[tuple[str, tuple[str, ...]]]:
    core = [("algo.advantage=teacher (on-policy distillation)", core_facts(cfg))]
    return core + [(f"intervention '{name}'", keys) for name, keys in intervention.requirements()]


def _refuse(owner: str, key: str, spec: Provider, missing: str | None) -> None:
    if missing is not None:
        raise ConfigError(f"{owner} needs {spec.what} (fact '{key}'), which needs {missing}")


def check_config(cfg: QuadrlConfig, intervention: Intervention) -> None:
    """Refuse, before any model is loaded, a method whose facts this configuration cannot supply."""
    for owner, keys in _owners(cfg, intervention):
        for key in keys:
            try:
                spec, argument = provider(key)
            except ConfigError as error:
                raise ConfigError(f"{owner}: {error}") from None
            _refuse(owner, key, spec, spec.check_config(cfg, argument))


def check_model(
    cfg: QuadrlConfig, intervention: Intervention, policy: Policy, teacher: torch.nn.Module | None
) -> None:
    """Refuse, when the trainer is built, a method whose facts this model cannot supply."""
    check_config(cfg, intervention)
    for owner, keys in _owners(cfg, intervention):
        for key in keys:
            spec, _ = provider(key)
            _refuse(owner, key, spec, spec.check_model(policy, teacher))
    intervention.check_model(policy.model)
