"""Sampling and per-token log-probs / entropies.

Sampling is a KV-cached loop (any Hugging Face causal LM; :mod:`grpo.decode` runs the model: a fast decode
step for Llama-family models, the model's full forward for any other, chosen automatically): for every
response token it records the behaviour log-prob log pi_old(o_t|s_t) and the entropy
H_t = -sum_v pi_old(v|s_t) log pi_old(v|s_t) of the *sampling* distribution, i.e. softmax(logits / T).
Top-p only truncates what is drawn; log-probs and entropies are those of the temperature-scaled full
distribution, which is the distribution the policy gradient differentiates.

The training-time log-probs are computed from the backbone's hidden states in chunks of at most ``chunk_size``
response tokens taken over the whole batch (padding skipped), so a 150k vocabulary never holds a full
[B, T, V] float32 copy, whatever B is (with grad, each chunk is recomputed in backward).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from grpo.decode import logits_postprocessing, positions, start_decoding


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
    rollout_logprobs: Tensor | None = None
    """[B, T] the sampling engine's own log-probs of the sampled tokens where it is not the training model
    (vLLM, grpo/engine.py; 0 on padding), else None: compared with ``logprobs`` in grpo/mismatch.py."""

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


def _draw(logp: Tensor, greedy: Tensor | None, top_p: float, generator: torch.Generator | None) -> Tensor:
    """One token per row: argmax where ``greedy`` (None: every row), else a draw from the top-p-filtered ``logp``."""
    if greedy is None:
        return logp.argmax(-1)
    probs = top_p_filter(logp, top_p).exp()
    # multinomial draws on the CPU generator so that sampling is reproducible and resumable
    drawn = torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logp.device)
    return torch.where(greedy, logp.argmax(-1), drawn) if bool(greedy.any()) else drawn


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
    greedy: bool | Tensor = False,
    generator: torch.Generator | None = None,
    decoder: str = "auto",
) -> Rollout:
    """Generate one response per prompt (repeat a prompt G times in ``prompts`` for a group: the copies share
    one prefill).

    ``eos_id`` may be several ids (a chat model's end-of-turn and end-of-text): a response stops at any.
    ``greedy``: True for every row, or a [B] bool tensor choosing greedy rows (they use temperature 1, the others
    ``temperature``; a mixed batch draws for every row, so the generator advances as for an all-sampled batch).
    ``decoder``: 'auto' | 'fast' | 'generic' (:mod:`grpo.decode`; 'auto' picks fast where it applies).
    """
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
    batch = prompt_ids.shape[0]
    stop_ids = torch.tensor([eos_id] if isinstance(eos_id, int) else list(eos_id), device=device)
    if isinstance(greedy, Tensor):
        greedy_rows: Tensor | None = greedy.to(device=device, dtype=torch.bool)
        temps = torch.where(greedy_rows, 1.0, temperature).to(torch.float32)[:, None]
        if bool(greedy_rows.all()):
            greedy_rows = None
    else:
        greedy_rows = None if greedy else torch.zeros(batch, dtype=torch.bool, device=device)
        temps = torch.full((batch, 1), 1.0 if greedy else temperature, device=device)
    dec, next_logits = start_decoding(model, prompts, prompt_ids, prompt_mask, max_new_tokens, path=decoder)

    # The model runs on the rows still generating (``rows``: their indices in the batch); a finished row is
    # dropped from the batch and the KV cache once enough rows have finished to pay for the copy, so that long
    # tails of unfinished responses do not drag the finished ones along. Outputs are written by row.
    out_ids = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long, device=device)
    out_live = torch.zeros((batch, max_new_tokens), dtype=torch.bool, device=device)
    out_logp = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    out_ent = torch.zeros((batch, max_new_tokens), dtype=torch.float32, device=device)
    rows = torch.arange(batch, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # per row of the running batch
    length = 0
    for t in range(max_new_tokens):
        # float32 before dividing: T applied to bf16 logits would round them before the softmax
        logp, ent = entropy_from_logits(next_logits.float() / temps)
        live = ~finished
        token = torch.where(live, _draw(logp, greedy_rows, top_p, generator), pad_id)
        out_ids[rows, t], out_live[rows, t] = token, live
        out_logp[rows, t] = torch.where(live, logp.gather(-1, token[:, None]).squeeze(-1), 0.0)
        out_ent[rows, t] = torch.where(live, ent, 0.0)
        finished = finished | torch.isin(token, stop_ids)
        length = t + 1
        n_done = int(finished.sum())
        if n_done == len(rows) or length == max_new_tokens:
            break
        if n_done * 4 >= len(rows):
            keep = torch.nonzero(~finished).squeeze(-1)
            if dec.select(keep):
                rows, finished, token, live, temps = (
                    rows[keep],
                    finished[keep],
                    token[keep],
                    live[keep],
                    temps[keep],
                )
                greedy_rows = None if greedy_rows is None else greedy_rows[keep]
        next_logits = dec.step(token, live)

    return Rollout(
        prompt_ids=prompt_ids,
        prompt_mask=prompt_mask,
        response_ids=out_ids[:, :length],
        response_mask=out_live[:, :length],
        logprobs=out_logp[:, :length],
        entropy=out_ent[:, :length],
    )


def _chunk_logprobs(head: torch.nn.Module, hidden: Tensor, targets: Tensor, temperature: float) -> Tensor:
    logits = head(hidden).float() / temperature
    return torch.gather(F.log_softmax(logits, dim=-1), -1, targets[..., None]).squeeze(-1)


def _at_least_float32(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _LinearHeadLogprob(torch.autograd.Function):
    """log softmax(z)[target] and the entropy of softmax(z), z = (h W^T + b) / T, for a plain linear head.

    Only h is kept for backward, where z is rebuilt; the [n, V] tensors are updated in place where they can be,
    so at most two live at once instead of the four or so of log_softmax + gather + the entropy's second head
    pass + autograd's saved outputs. d logp/dz = onehot(target) - softmax(z). Batched gradients
    (``torch.autograd.grad(..., is_grads_batched=True)``) work: measured no faster than separate backward
    passes on CPU, where the backward is compute-bound.
    The entropy is a detached side output.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, temperature, want_entropy):
        z = _at_least_float32(F.linear(hidden, weight, bias)).div_(temperature)
        lse = torch.logsumexp(z, dim=-1)
        logp = z.gather(-1, targets[:, None]).squeeze(-1) - lse
        entropy = None
        if want_entropy:
            z.sub_(lse[:, None])  # log-probs, in place
            entropy = -(z.exp().mul_(z)).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.temperature = temperature
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logp, entropy

    @staticmethod
    def backward(ctx, grad_logp, _grad_entropy):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        z = _at_least_float32(F.linear(hidden, weight, bias)).div_(ctx.temperature)
        probs = z.sub_(lse[:, None]).exp_()  # softmax(z), in place
        # out of place: under vmap (batched gradients, grpo/diagnostics.py) grad_logp is batched, probs is not
        grad_z = probs * -grad_logp[:, None]
        del probs, z
        grad_z.scatter_add_(-1, targets[:, None], grad_logp[:, None]).div_(ctx.temperature)
        grad_z = grad_z.to(weight.dtype)
        need = ctx.needs_input_grad
        grad_hidden = grad_z @ weight if need[0] else None
        grad_weight = grad_z.t() @ hidden if need[1] else None
        grad_bias = grad_z.sum(0) if bias is not None and need[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _plain_linear(head: torch.nn.Module) -> bool:
    """A torch Linear with nothing hooked in (a peft LoRA head, say, is not): its weights are the whole head."""
    return type(head) is torch.nn.Linear and not (head._forward_hooks or head._forward_pre_hooks)


def backbone_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(decoder, output head) when the model's logits are exactly ``head(decoder(...).last_hidden_state)``."""
    if logits_postprocessing(getattr(model, "config", None)) is not None:
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
    buckets: int = 1,
    capture: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """[B, T] log pi(o_t|s_t) of the given responses (with grad if enabled; 0 on padding), and optionally the
    entropy of softmax(logits / temperature) at each response position (detached).

    The head runs on at most ``chunk_size`` response tokens at a time, gathered over the rows of a forward.
    ``buckets`` > 1: the rows are sorted by response length and run as that many forwards, each cut to its own
    longest prompt and response, so that short responses do not pay for the longest one's padding (the same
    numbers up to float rounding; the gradient flows through all of them).
    ``capture``: backbone outputs to keep from the same forward, e.g. ``{"hidden_states": None}``; each key
    ``k`` asks the backbone for ``output_k=True`` and receives its value over all prompt + response positions
    (then the batch runs as one uncut forward, so that positions mean the same in every row).
    """
    args = (
        model,
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        temperature,
        chunk_size,
        with_entropy,
    )
    if capture is not None or buckets <= 1 or response_ids.shape[0] < 2 * buckets:
        return _response_logprobs(*args, capture=capture)
    order = torch.argsort(
        response_mask.sum(-1) * (prompt_ids.shape[1] + 1) + prompt_mask.sum(-1), stable=True
    )
    parts = [
        _response_logprobs(model, *(x[rows] for x in args[1:5]), *args[5:])
        for rows in torch.tensor_split(order, buckets)
    ]
    inverse = torch.argsort(order)
    logp = torch.cat([p[0] for p in parts])[inverse]
    return logp, torch.cat([p[1] for p in parts])[inverse] if with_entropy else None


def _response_logprobs(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
    capture: dict[str, Any] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """:func:`response_logprobs` in one forward."""
    shape = response_ids.shape
    # columns no row uses (the prompts' common left padding, the responses' common right padding: a subset of a
    # batch's rows often has some) change nothing but cost compute; captured outputs keep every position
    first, last = 0, shape[1]
    if capture is None:
        used = torch.nonzero(prompt_mask.any(0))
        first = min(int(used[0]), prompt_ids.shape[1] - 1) if len(used) else prompt_ids.shape[1] - 1
        used = torch.nonzero(response_mask.any(0))
        last = int(used[-1]) + 1 if len(used) else 0
    prompt_ids, prompt_mask = prompt_ids[:, first:], prompt_mask[:, first:]
    response_ids = response_ids[:, :last]
    input_ids = torch.cat([prompt_ids, response_ids], dim=1)
    mask = torch.cat([prompt_mask, response_mask[:, :last]], dim=1)
    n_prompt = prompt_ids.shape[1]
    asks = {f"output_{key}": True for key in capture or {}}
    split = backbone_and_head(model)
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
    fused = _plain_linear(head)
    for start in range(0, flat_targets.shape[0], chunk_size):
        h = flat_hidden[start : start + chunk_size]
        tgt = flat_targets[start : start + chunk_size]
        if fused:  # one head pass gives log-probs and entropies; backward rebuilds the logits
            logp_chunk, ent_chunk = _LinearHeadLogprob.apply(
                h, head.weight, head.bias, tgt, temperature, with_entropy
            )
            logps.append(logp_chunk)
            ents.append(ent_chunk)
            continue
        if recompute:  # keep only h for backward; the [n, V] logits are rebuilt there, one chunk at a time
            logps.append(checkpoint(_chunk_logprobs, head, h, tgt, temperature, use_reentrant=False))
        else:
            logps.append(_chunk_logprobs(head, h, tgt, temperature))
        if with_entropy:
            with torch.no_grad():
                ents.append(entropy_from_logits(head(h.detach()).float() / temperature)[1])

    empty = hidden.new_zeros((0,), dtype=torch.float32)
    flat_logp = torch.cat(logps) if logps else empty
    logp = torch.zeros(shape, dtype=torch.float32, device=hidden.device).index_put((rows, cols), flat_logp)
    ent = None
    if with_entropy:
        flat_ent = torch.cat(ents) if ents else empty
        ent = torch.zeros(shape, dtype=torch.float32, device=hidden.device).index_put((rows, cols), flat_ent)
    return logp, ent
