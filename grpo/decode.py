"""KV-cached decoding for the sampler: a fast path for Llama-family models and a generic fallback for any other.

:func:`start_decoding` runs the prompt prefill (the model's own forward, once per *distinct* prompt: the G
copies of a group's prompt share it, and the cache rows are copied out to the G samples) and returns a
:class:`Decoder`, whose ``step(tokens)`` gives the next-token logits of the rows still generating and whose
``select(rows)`` drops finished rows. Which decoder is used is chosen automatically; :func:`fast_path_blocker`
says why a model takes the generic path.

- ``fast`` (Llama, Mistral, Qwen2, Qwen3 architectures, with or without a peft LoRA adapter): a preallocated
  KV cache written in place (no ``torch.cat`` per token) and a decode step that calls the model's own
  sub-modules (embedding, norms, q/k/v/o projections, MLP, head: a LoRA layer is just a module call) but skips
  the per-call machinery of the full forward (mask construction, cache objects, output records). The attention
  call mirrors transformers' SDPA integration (same mask rule, same GQA packing, same scale), and the rotary
  embedding is the model's own module, so the logits equal the full forward's bit for bit on CPU (tested).
- ``generic`` (any other causal LM): the model's full forward with its own cache, one call per token.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

FAST_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
"""Architectures whose decoder layer is the pre-norm Llama block the fast path re-traces: x + attn(norm(x)),
then x + mlp(norm(x)), attention = q/k/v projections (+ Qwen3's per-head q/k norms), rotary, softmax, o_proj."""
STATIC_ROPE = ("default", "linear", "llama3", "yarn")
"""Rotary types whose frequencies do not depend on the sequence length seen so far (dynamic NTK and longrope do)."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a peft wrapper (its layers carry the LoRA modules), else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@lru_cache(maxsize=64)
def _forward_parameters(forward_class: type) -> frozenset[str]:
    return frozenset(inspect.signature(forward_class.forward).parameters)


def forward_names(model: torch.nn.Module) -> tuple[str, str | None]:
    """(name of the KV-cache argument, name of the keep-only-the-last-logits argument or None).

    transformers renamed ``past_key_values`` to ``cache`` (5.x; the old name is removed in 5.40) and
    ``num_logits_to_keep`` to ``logits_to_keep``; pyproject keeps an open range, so ask the model's forward.
    """
    names = _forward_parameters(type(unwrap(model)))
    cache = "cache" if "cache" in names else "past_key_values"
    keep = next((n for n in ("logits_to_keep", "num_logits_to_keep") if n in names), None)
    return cache, keep


LOGIT_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "logits_scaling")
"""Config fields of architectures whose causal-LM forward transforms ``head(hidden)`` before returning logits
(Gemma 2/3 soft-capping, Cohere's scale, Granite's divisor): ``head(hidden)`` alone would not be the policy."""


def logits_postprocessing(config) -> str | None:
    """The config field by which the model transforms ``head(hidden)`` into its logits, or None."""
    for name in LOGIT_POSTPROCESSING:
        value = getattr(config, name, None)
        if value is not None and value != 1:
            return name
    return None


def _rope_type(config) -> str | None:
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if not isinstance(rope, dict):
        return None
    if any(isinstance(v, dict) for v in rope.values()):  # one rotary per layer type: not the plain block
        return None
    return str(rope.get("rope_type", rope.get("type", "default")))


def _sliding_window(config, attention: torch.nn.Module) -> int | None:
    if hasattr(attention, "sliding_window"):  # Qwen2/3: per layer, None on full-attention layers
        return attention.sliding_window
    return getattr(config, "sliding_window", None)  # Mistral: the config's, on every layer


def fast_path_blocker(model: torch.nn.Module, max_length: int | None = None) -> str | None:
    """None when the fast decoder applies to ``model``, else why not.

    A sliding attention window only blocks it when sequences of ``max_length`` tokens (prompt + response) reach
    past the window (None: not checked; the sampler checks every batch with its real length)."""
    inner = unwrap(model)
    config = getattr(inner, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in FAST_MODEL_TYPES:
        return f"model_type {model_type!r} is not one of {list(FAST_MODEL_TYPES)}"
    body, head = getattr(inner, "model", None), getattr(inner, "lm_head", None)
    layers = getattr(body, "layers", None)
    if (
        head is None
        or layers is None
        or not all(hasattr(body, n) for n in ("embed_tokens", "norm", "rotary_emb"))
    ):
        return "not the Llama module layout (model.layers, embed_tokens, norm, rotary_emb, lm_head)"
    parts = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups")
    for layer in layers:
        if not all(hasattr(layer, n) for n in parts) or not all(
            hasattr(layer.self_attn, n) for n in projections
        ):
            return f"decoder layer {type(layer).__name__} is not the Llama block"
        window = _sliding_window(config, layer.self_attn)
        if window is not None and max_length is not None and max_length > window:
            return f"sliding-window attention (window {window}) within the sequence length"
    rope = _rope_type(config)
    if rope not in STATIC_ROPE:
        return f"rotary type {rope!r} is not one of {list(STATIC_ROPE)}"
    post = logits_postprocessing(config)
    return None if post is None else f"the head's logits are post-processed ({post})"


class Decoder(Protocol):
    name: str
    """'fast' or 'generic'."""

    def step(self, tokens: Tensor, live: Tensor) -> Tensor:
        """Feed one token per running row ([b]; ``live`` [b] bool: False for a row that already finished and
        is only carried along); return the next-token logits [b, V]."""

    def select(self, rows: Tensor) -> bool:
        """Keep only ``rows`` (indices into the running batch); False if this decoder cannot drop rows."""


def positions(mask: Tensor) -> Tensor:
    """Position ids of left-padded rows: 0 at each row's first real token (padding clamped to 0)."""
    return (mask.long().cumsum(-1) - 1).clamp_min(0)


def _prefill(model: torch.nn.Module, prompt_ids: Tensor, prompt_mask: Tensor):
    """The model's own forward over the (left-padded) prompts: (its cache, the last position's logits [n, V])."""
    cache_name, keep_name = forward_names(model)
    # only the last position's logits are needed: a [B, P, V] prompt logit tensor is GBs for a 150k vocabulary
    keep = {keep_name: 1} if keep_name else {}
    out = model(
        input_ids=prompt_ids,
        attention_mask=prompt_mask.long(),
        position_ids=positions(prompt_mask),
        use_cache=True,
        **keep,
    )
    return getattr(out, cache_name), out.logits[:, -1, :]


def distinct_rows(prompts: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
    """(the index of each distinct prompt's first occurrence, for every prompt the position of its distinct one)."""
    first: dict[tuple[int, ...], int] = {}
    owners: list[int] = []
    expand: list[int] = []
    for row, prompt in enumerate(prompts):
        key = tuple(prompt)
        if key not in first:
            first[key] = len(owners)
            owners.append(row)
        expand.append(first[key])
    return owners, expand


class GenericDecoder:
    """Any causal LM: its full forward with its own KV cache, one call per token."""

    name = "generic"

    def __init__(self, model: torch.nn.Module, cache, prompt_mask: Tensor):
        self.model, self.cache = model, cache
        self.cache_name, _ = forward_names(model)
        self.attention = prompt_mask.long()
        self.next_pos = self.attention.sum(-1, keepdim=True)

    def step(self, tokens: Tensor, live: Tensor) -> Tensor:
        self.attention = torch.cat([self.attention, live.long()[:, None]], dim=-1)
        out = self.model(
            input_ids=tokens[:, None],
            attention_mask=self.attention,
            position_ids=self.next_pos,
            use_cache=True,
            **{self.cache_name: self.cache},
        )
        self.cache = getattr(out, self.cache_name)
        self.next_pos = self.next_pos + 1
        return out.logits[:, -1, :]

    def select(self, rows: Tensor) -> bool:
        if not hasattr(self.cache, "batch_select_indices"):
            return False
        self.cache.batch_select_indices(rows)
        self.attention, self.next_pos = self.attention[rows], self.next_pos[rows]
        return True


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class FastDecoder:
    """Llama-family decode step over a preallocated KV cache (module docstring)."""

    name = "fast"

    def __init__(
        self,
        model: torch.nn.Module,
        layer_caches: list[tuple[Tensor, Tensor]],
        prompt_mask: Tensor,
        total: int,
    ):
        inner = unwrap(model)
        self.body, self.head = inner.model, inner.lm_head
        rows, width = prompt_mask.shape
        device = prompt_mask.device
        # attention[r, c]: may a query of row r attend to column c (left padding of the prompt is not attended;
        # the columns a finished row adds are not either, as in the generic path's attention mask)
        self.attention = torch.zeros((rows, total), dtype=torch.bool, device=device)
        self.attention[:, :width] = prompt_mask
        self.length = width
        self.next_pos = prompt_mask.long().sum(-1, keepdim=True)
        self.keys, self.values = [], []
        for keys, values in layer_caches:
            k = keys.new_empty((rows, keys.shape[1], total, keys.shape[3]))
            v = values.new_empty((rows, values.shape[1], total, values.shape[3]))
            k[:, :, :width], v[:, :, :width] = keys, values
            self.keys.append(k)
            self.values.append(v)

    def _attention(self, attn: torch.nn.Module, x: Tensor, cos: Tensor, sin: Tensor, index: int) -> Tensor:
        """One layer's self-attention for one new token per row (x: [b, 1, hidden]), writing its k/v in place."""
        b = x.shape[0]
        shape = (b, 1, -1, attn.head_dim)
        q, k = attn.q_proj(x).view(shape), attn.k_proj(x).view(shape)
        if hasattr(attn, "q_norm"):  # Qwen3: RMSNorm over each head's dims, before the rotary
            q, k = attn.q_norm(q), attn.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        v = attn.v_proj(x).view(shape).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        n = self.length + 1
        self.keys[index][:, :, n - 1 : n] = k
        self.values[index][:, :, n - 1 : n] = v
        keys, values = self.keys[index][:, :, :n], self.values[index][:, :, :n]
        mask = self.step_mask
        # transformers' SDPA integration, for one query token: the same kernel inputs, hence the same numbers
        groups, extra = attn.num_key_value_groups, {}
        if groups > 1:
            if mask is None and keys.shape[-1] == values.shape[-1] <= 256:
                extra["enable_gqa"] = True
            else:  # the group's query heads become query positions of their shared key/value head
                q = q.reshape(b, q.shape[1] // groups, groups, q.shape[-1])
        out = F.scaled_dot_product_attention(
            q, keys, values, attn_mask=mask, dropout_p=0.0, scale=attn.scaling, is_causal=False, **extra
        )
        out = out.reshape(b, -1, 1, values.shape[-1]).transpose(1, 2).contiguous()
        return attn.o_proj(out.reshape(b, 1, -1).contiguous())

    def step(self, tokens: Tensor, live: Tensor) -> Tensor:
        n = self.length + 1
        self.attention[:, n - 1] = live
        visible = self.attention[:, :n]
        # no masked column at all: SDPA without a mask, as transformers passes it
        self.step_mask = None if bool(visible.all()) else visible[:, None, None, :]
        x = self.body.embed_tokens(tokens[:, None])
        cos, sin = self.body.rotary_emb(x, self.next_pos)
        for index, layer in enumerate(self.body.layers):
            x = x + self._attention(layer.self_attn, layer.input_layernorm(x), cos, sin, index)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.length, self.next_pos = n, self.next_pos + 1
        return self.head(self.body.norm(x))[:, -1, :]

    def select(self, rows: Tensor) -> bool:
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.attention, self.next_pos = self.attention[rows], self.next_pos[rows]
        return True


def _layer_tensors(cache) -> list[tuple[Tensor, Tensor]] | None:
    """(keys, values) per layer of a transformers cache, [rows, kv heads, length, head dim]; None if unknown."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(layer, "keys") and hasattr(layer, "values") for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def start_decoding(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    max_new_tokens: int,
    *,
    path: str = "auto",
) -> tuple[Decoder, Tensor]:
    """Prefill the prompts (each distinct one once) and return (decoder, first next-token logits [B, V]).

    ``path``: 'auto' (fast when :func:`fast_path_blocker` allows, else generic), 'fast' (error if it does not
    apply) or 'generic'.
    """
    if path not in ("auto", "fast", "generic"):
        raise ValueError(f"decoder path must be 'auto', 'fast' or 'generic', got {path!r}")
    total = prompt_ids.shape[1] + max_new_tokens
    blocker = fast_path_blocker(model, total) if path != "generic" else "generic path requested"
    if path == "fast" and blocker is not None:
        raise ValueError(f"the fast decoder does not apply to this model: {blocker}")
    owners, expand = distinct_rows(prompts)
    shared = len(owners) < len(prompts)
    if shared:
        owner_rows = torch.tensor(owners, device=prompt_ids.device)
        cache, logits = _prefill(model, prompt_ids[owner_rows], prompt_mask[owner_rows])
    else:
        cache, logits = _prefill(model, prompt_ids, prompt_mask)
    expand_rows = torch.tensor(expand, device=prompt_ids.device)
    layers = _layer_tensors(cache) if blocker is None else None
    if layers is not None:
        if shared:
            layers = [(k[expand_rows], v[expand_rows]) for k, v in layers]
        decoder: Decoder = FastDecoder(model, layers, prompt_mask, total)
    else:
        if path == "fast":
            raise ValueError(
                "the fast decoder does not apply to this model: its cache has no per-layer tensors"
            )
        if shared:
            if not hasattr(cache, "batch_select_indices"):  # cannot copy rows: prefill every prompt
                cache, logits = _prefill(model, prompt_ids, prompt_mask)
                shared = False
            else:
                cache.batch_select_indices(expand_rows)
        decoder = GenericDecoder(model, cache, prompt_mask)
    return decoder, logits[expand_rows] if shared else logits
