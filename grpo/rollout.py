"""Sampling and per-token log-probs / entropies.

Sampling is a plain KV-cached loop over the model's own forward (any Hugging Face causal LM): for every
response token it records the behaviour log-prob log pi_old(o_t|s_t) and the entropy
H_t = -sum_v pi_old(v|s_t) log pi_old(v|s_t) of the *sampling* distribution, i.e. softmax(logits / T).
Top-p only truncates what is drawn; log-probs and entropies are those of the temperature-scaled full
distribution, which is the distribution the policy gradient differentiates.

The training-time log-probs are computed from the backbone's hidden states in chunks of at most ``chunk_size``
response tokens taken over the whole batch (padding skipped), so a 150k vocabulary never holds a full
[B, T, V] float32 copy, whatever B is (with grad, each chunk is recomputed in backward).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint


@dataclass
class Rollout:
    prompt_ids: Tensor
    """[B, P] left-padded prompt tokens."""
    prompt_mask: Tensor
    """[B, P] bool."""
    response_ids: Tensor
    """[B, T] right-padded response tokens (EOS included when produced)."""
    response_mask: Tensor
    """[B, T] bool."""
    logprobs: Tensor
    """[B, T] float32 behaviour log-probs (0 on padding)."""
    entropy: Tensor
    """[B, T] float32 sampling-distribution entropy (0 on padding)."""

    @property
    def n_tokens(self) -> int:
        return int(self.response_mask.sum())


def left_pad(
    sequences: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.bool)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq) :] = True
    return ids.to(device), mask.to(device)


def positions(mask: Tensor) -> Tensor:
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def entropy_from_logits(logits: Tensor) -> tuple[Tensor, Tensor]:
    """log-softmax and entropy (nats) over the last dim, in float32."""
    logp = F.log_softmax(logits.float(), dim=-1)
    return logp, -(logp.exp() * logp).sum(-1)


def top_p_filter(logp: Tensor, top_p: float) -> Tensor:
    """Set log-probs outside the smallest set with mass >= top_p to -inf (the top token is always kept)."""
    if top_p >= 1.0:
        return logp
    sorted_logp, order = logp.sort(dim=-1, descending=True)
    mass_before = sorted_logp.exp().cumsum(-1) - sorted_logp.exp()
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logp.masked_fill(drop, -torch.inf)


@lru_cache(maxsize=64)
def _forward_parameters(forward_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_class.forward).parameters)


def _forward_names(model: torch.nn.Module) -> tuple[str, str | None]:
    """(name of the KV-cache argument, name of the keep-only-the-last-logits argument or None).

    transformers renamed ``past_key_values`` to ``cache`` (5.x; the old name is removed in 5.40) and
    ``num_logits_to_keep`` to ``logits_to_keep``; pyproject keeps an open range, so ask the model's forward.
    A peft wrapper forwards ``**kwargs``: ask the model it wraps.
    """
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = _forward_parameters(type(inner))
    cache = "cache" if "cache" in names else "past_key_values"
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in names), None)
    return cache, keep


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int | Sequence[int],
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Generate one response per prompt (repeat a prompt G times in ``prompts`` for a group).

    ``eos_id`` may be several ids (a chat model's end-of-turn and end-of-text): a response stops at any.
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    batch = prompt_ids.shape[0]
    stop_ids = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)
    cache_name, keep_name = _forward_names(model)
    attention = prompt_mask.long()
    # only the last position's logits are needed: a [B, P, V] prompt logit tensor is GBs for a 150k vocabulary
    keep = {keep_name: 1} if keep_name else {}
    out = model(
        input_ids=prompt_ids,
        attention_mask=attention,
        position_ids=positions(prompt_mask),
        use_cache=True,
        **keep,
    )
    cache, next_logits = getattr(out, cache_name), out.logits[:, -1, :]
    next_pos = prompt_mask.long().sum(-1, keepdim=True)
    compactable = hasattr(cache, "batch_select_indices")

    # The model runs on the rows still generating (``rows``: their indices in the batch); a finished row is
    # dropped from the batch and the KV cache once enough rows have finished to pay for the copy, so that long
    # tails of unfinished responses do not drag the finished ones along. Outputs are written back by row.
    rows = torch.arange(batch, device=device)
    tokens, logps, ents, alive = [], [], [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # per row of the running batch
    for _ in range(max_new_tokens):
        # float32 before dividing: T applied to bf16 logits would round them before the softmax
        logp, ent = entropy_from_logits(next_logits.float() / (1.0 if greedy else temperature))
        if greedy:
            token = logp.argmax(-1)
        else:
            probs = top_p_filter(logp, top_p).exp()
            # multinomial draws on the CPU generator so that sampling is reproducible and resumable
            token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(device)
        live = ~finished
        token = torch.where(live, token, torch.full_like(token, pad_id))
        step_token = torch.full((batch,), pad_id, dtype=token.dtype, device=device)
        step_live = torch.zeros(batch, dtype=torch.bool, device=device)
        step_logp = torch.zeros(batch, dtype=torch.float32, device=device)
        step_ent = torch.zeros(batch, dtype=torch.float32, device=device)
        step_token[rows], step_live[rows] = token, live
        step_logp[rows] = torch.where(live, logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
        step_ent[rows] = torch.where(live, ent, 0.0)
        tokens.append(step_token)
        logps.append(step_logp)
        ents.append(step_ent)
        alive.append(step_live)
        finished = finished | torch.isin(token, stop_ids)
        n_done = int(finished.sum())
        if n_done == len(rows):
            break
        if compactable and n_done * 4 >= len(rows):
            keep = torch.nonzero(~finished).squeeze(-1)
            cache.batch_select_indices(keep)
            rows, finished = rows[keep], finished[keep]
            token, live, next_pos, attention = token[keep], live[keep], next_pos[keep], attention[keep]
        attention = torch.cat([attention, live.long()[:, None]], dim=-1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_pos,
            use_cache=True,
            **{cache_name: cache},
        )
        cache, next_logits = getattr(out, cache_name), out.logits[:, -1, :]
        next_pos = next_pos + 1

    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, 1),
        response_mask=torch.stack(alive, 1),
        logprobs=torch.stack(logps, 1),
        entropy=torch.stack(ents, 1),
    )


def _chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = head(hidden).float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets[..., None]).squeeze(-1)


_LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config fields of architectures whose causal-LM forward transforms ``head(hidden)`` before returning logits
(Gemma 2/3 soft-capping, Cohere's scale, Granite's divisor): ``head(hidden)`` alone would not be the policy."""


def _backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output head) when the model's logits are exactly ``head(decoder(...).last_hidden_state)``."""
    config = getattr(model, "config", None)
    for name in _LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            return None
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if decoder is None or head is None or decoder is model:
        return None
    return decoder, head


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 4096,
    with_entropy: bool = False,
    capture: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """[B, T] log pi(o_t|s_t) of the given responses (with grad if enabled; 0 on padding), and optionally the
    entropy of softmax(logits / temperature) at each response position (detached).

    The head runs on at most ``chunk_size`` response tokens at a time, gathered over the whole batch.
    ``capture``: backbone outputs to keep from the same forward, e.g. ``{"hidden_states": None}``; each key
    ``k`` asks the backbone for ``output_k=True`` and receives its value (over prompt + response positions).
    """
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    n_prompt = prompt_ids.shape[1]
    asks = {f"output_{key}": True for key in capture or {}}
    split = _backbone_and_head(model)
    if split is None:  # no exact split into backbone + head: fall back to the model's full logits
        states = model(input_ids=input_ids, attention_mask=mask.long(), position_ids=positions(mask), **asks)
        hidden, head = states.logits[:, n_prompt - 1 : -1], torch.nn.Identity()
    else:
        decoder, head = split
        states = decoder(
            input_ids=input_ids, attention_mask=mask.long(), position_ids=positions(mask), **asks
        )
        hidden = states.last_hidden_state[:, n_prompt - 1 : -1]
    for key in capture or {}:
        capture[key] = getattr(states, key)

    # the state before response token t sits at hidden[:, t]; keep only real tokens, flattened over the batch
    rows, cols = response_mask.nonzero(as_tuple=True)
    flat_hidden, flat_targets = hidden[rows, cols], response_ids[rows, cols]
    logps, ents = [], []
    recompute = torch.is_grad_enabled() and flat_hidden.requires_grad
    for start in range(0, flat_targets.shape[0], chunk_size):
        h = flat_hidden[start : start + chunk_size]
        tgt = flat_targets[start : start + chunk_size]
        if recompute:  # keep only h for backward; the [n, V] logits are rebuilt there, one chunk at a time
            logps.append(checkpoint(_chunk_logprobs, head, h, tgt, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logprobs(head, h, tgt, temperature))
        if with_entropy:
            with torch.no_grad():
                ents.append(entropy_from_logits(head(h.detach()).float() / temperature)[1])

    shape = response_ids.shape
    empty = hidden.new_zeros((0,), dtype=torch.float32)
    flat_logp = torch.cat(logps) if logps else empty
    logp = torch.zeros(shape, dtype=torch.float32, device=hidden.device).index_put((rows, cols), flat_logp)
    ent = None
    if with_entropy:
        flat_ent = torch.cat(ents) if ents else empty
        ent = torch.zeros(shape, dtype=torch.float32, device=hidden.device).index_put((rows, cols), flat_ent)
    return logp, ent
