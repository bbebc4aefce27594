"""Sampling and per-token log-probs / entropies.

Sampling is a plain KV-cached loop over the model's own forward (any Hugging Face causal LM): for every
response token it records the behaviour log-prob log pi_old(o_t|s_t) and the entropy
H_t = -sum_v pi_old(v|s_t) log pi_old(v|s_t) of the *sampling* distribution, i.e. softmax(logits / T).
Top-p only truncates what is drawn; log-probs and entropies are those of the temperature-scaled full
distribution, which is the distribution the policy gradient differentiates.

The training-time log-probs are computed from the backbone's hidden states in chunks along the sequence, so a
150k vocabulary never holds a full [B, T, V] float32 copy (with grad, each chunk is recomputed in backward).
"""

from __future__ import annotations

from dataclasses import dataclass

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


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    greedy: bool = False,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Generate one response per prompt (repeat a prompt G times in ``prompts`` for a group)."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    batch = prompt_ids.shape[0]
    attention = prompt_mask.long()
    out = model(
        input_ids=prompt_ids, attention_mask=attention, position_ids=positions(prompt_mask), use_cache=True
    )
    cache, next_logits = out.past_key_values, out.logits[:, -1, :]
    next_pos = prompt_mask.long().sum(-1, keepdim=True)

    tokens, logps, ents = [], [], []
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    alive = []
    for _ in range(max_new_tokens):
        logp, ent = entropy_from_logits(next_logits / (1.0 if greedy else temperature))
        if greedy:
            token = logp.argmax(-1)
        else:
            probs = top_p_filter(logp, top_p).exp()
            # multinomial draws on the CPU generator so that sampling is reproducible and resumable
            token = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(device)
        live = ~finished
        token = torch.where(live, token, torch.full_like(token, pad_id))
        tokens.append(token)
        logps.append(torch.where(live, logp.gather(-1, token[:, None]).squeeze(-1), 0.0))
        ents.append(torch.where(live, ent, 0.0))
        alive.append(live)
        finished = finished | (token == eos_id)
        if bool(finished.all()):
            break
        attention = torch.cat([attention, live.long()[:, None]], dim=-1)
        out = model(
            input_ids=token[:, None],
            attention_mask=attention,
            position_ids=next_pos,
            past_key_values=cache,
            use_cache=True,
        )
        cache, next_logits = out.past_key_values, out.logits[:, -1, :]
        next_pos = next_pos + 1

    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=torch.stack(tokens, 1),
        response_mask=torch.stack(alive, 1),
        logprobs=torch.stack(logps, 1).float(),
        entropy=torch.stack(ents, 1).float(),
    )


def _chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = head(hidden).float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets[..., None]).squeeze(-1)


def response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
    with_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """[B, T] log pi(o_t|s_t) of the given responses (with grad if enabled), and optionally the entropy."""
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask], dim=1)
    n_prompt, n_resp = prompt_ids.shape[1], response_ids.shape[1]
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    head = model.get_output_embeddings()
    if decoder is None or head is None:  # no split into backbone + head: fall back to full logits
        logits = model(input_ids=input_ids, attention_mask=mask.long(), position_ids=positions(mask)).logits
        hidden, head = logits[:, n_prompt - 1 : -1], torch.nn.Identity()
    else:
        states = decoder(input_ids=input_ids, attention_mask=mask.long(), position_ids=positions(mask))
        hidden = states.last_hidden_state[:, n_prompt - 1 : -1]

    logps, ents = [], []
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    for start in range(0, n_resp, chunk_size):
        h = hidden[:, start : start + chunk_size]
        tgt = response_ids[:, start : start + chunk_size]
        if recompute:
            logps.append(checkpoint(_chunk_logprobs, head, h, tgt, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logprobs(head, h, tgt, temperature))
        if with_entropy:
            with torch.no_grad():
                ents.append(entropy_from_logits(head(h.detach()).float() / temperature)[1])
    logp = torch.cat(logps, 1) * response_mask
    ent = torch.cat(ents, 1) * response_mask if with_entropy else None
    return logp, ent
