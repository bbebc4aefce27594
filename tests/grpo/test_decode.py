"""The sampler's decoders: the fast path against the generic full-forward path, LoRA, the automatic fallback,
the shared prefill and mixed greedy/sampled batches."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import grpo.decode
from grpo.decode import fast_path_blocker
from grpo.rollout import sample

PROMPTS = [[1, 5, 6, 7, 8, 9], [1, 5], [1, 10, 11, 12], [1, 13, 14]]
SMALL = dict(
    vocab_size=40, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    max_position_embeddings=128,
)  # fmt: skip


def build(kind: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=4)).eval()
    if kind == "llama_gqa":
        return LlamaForCausalLM(LlamaConfig(**SMALL, num_key_value_heads=2)).eval()
    if kind == "qwen2":  # biases on q/k/v
        return Qwen2ForCausalLM(Qwen2Config(**SMALL, num_key_value_heads=2)).eval()
    if kind == "qwen3":  # per-head q/k norms
        return Qwen3ForCausalLM(Qwen3Config(**SMALL, num_key_value_heads=2, head_dim=8)).eval()
    if kind == "mistral":
        return MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=None)).eval()
    raise ValueError(kind)


def draw(model, prompts, decoder, seed=0, **kw):
    args = dict(max_new_tokens=12, eos_id=[2, 3], pad_id=0, temperature=1.3, top_p=0.9)
    return sample(
        model, prompts, generator=torch.Generator().manual_seed(seed), decoder=decoder, **{**args, **kw}
    )


def assert_same(a, b):
    assert torch.equal(a.response_ids, b.response_ids)
    assert torch.equal(a.response_mask, b.response_mask)
    assert torch.equal(a.logprobs, b.logprobs)
    assert torch.equal(a.entropy, b.entropy)


@pytest.mark.parametrize("kind", ["llama", "llama_gqa", "qwen2", "qwen3", "mistral"])
def test_fast_decoder_reproduces_the_full_forward_bit_for_bit(kind):
    model = build(kind)
    assert fast_path_blocker(model, 64) is None
    # left padding (prompts of different lengths), groups sharing a prefill, rows finishing at different times
    prompts = [p for p in PROMPTS for _ in range(4)]
    fast, generic = draw(model, prompts, "fast"), draw(model, prompts, "generic")
    assert fast.response_mask.sum(-1).unique().numel() > 1, "every row had the same length: weak test"
    assert_same(fast, generic)


def test_fast_decoder_with_a_lora_adapter_and_with_it_disabled():
    from peft import LoraConfig, get_peft_model

    base = build("llama_gqa", seed=1)
    plain = draw(base, PROMPTS * 3, "generic")
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=targets)).eval()
    with torch.no_grad():  # a trained-looking adapter: peft starts lora_B at 0, which would change nothing
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    assert fast_path_blocker(model, 64) is None
    fast, generic = draw(model, PROMPTS * 3, "fast"), draw(model, PROMPTS * 3, "generic")
    assert_same(fast, generic)
    assert not torch.equal(fast.logprobs, plain.logprobs), "the adapter changed nothing: weak test"
    with model.disable_adapter():
        off = draw(model, PROMPTS * 3, "fast")
        assert_same(off, draw(model, PROMPTS * 3, "generic"))
    # peft's disabled layer is the base model up to float rounding (its own numerics, either decoder)
    assert torch.equal(off.response_ids, plain.response_ids)
    assert torch.allclose(off.logprobs, plain.logprobs, atol=1e-6)


def test_models_the_fast_path_does_not_cover_fall_back_to_the_generic_decoder():
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    gemma = Gemma2ForCausalLM(
        Gemma2Config(**{**SMALL, "num_hidden_layers": 1}, num_key_value_heads=2, head_dim=8)
    ).eval()
    assert "model_type 'gemma2'" in fast_path_blocker(gemma, 64)
    assert_same(draw(gemma, PROMPTS, "auto"), draw(gemma, PROMPTS, "generic"))
    with pytest.raises(ValueError, match="fast decoder does not apply.*gemma2"):
        draw(gemma, PROMPTS, "fast")

    torch.manual_seed(0)
    windowed = MistralForCausalLM(MistralConfig(**SMALL, num_key_value_heads=2, sliding_window=8)).eval()
    assert "sliding-window" in fast_path_blocker(windowed, 6 + 12)  # the window cuts into the sequence
    assert fast_path_blocker(windowed, 8) is None  # a window no sequence reaches is full attention
    assert_same(draw(windowed, PROMPTS, "auto"), draw(windowed, PROMPTS, "generic"))

    torch.manual_seed(0)
    dynamic = LlamaForCausalLM(
        LlamaConfig(**SMALL, rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})
    )
    assert "rotary type 'dynamic'" in fast_path_blocker(dynamic, 64)


def test_the_copies_of_a_prompt_share_one_prefill(monkeypatch):
    model = build("llama")
    prefilled: list[int] = []
    original = grpo.decode._prefill

    def spy(model, ids, mask):
        prefilled.append(ids.shape[0])
        return original(model, ids, mask)

    monkeypatch.setattr(grpo.decode, "_prefill", spy)
    grouped = [p for p in PROMPTS for _ in range(5)]
    for decoder in ("fast", "generic"):
        prefilled.clear()
        together = draw(model, grouped, decoder, greedy=True)
        alone = draw(model, PROMPTS, decoder, greedy=True)
        assert prefilled == [len(PROMPTS), len(PROMPTS)]  # 4 rows each time, not 20 the first time
        for row in range(len(grouped)):
            n = int(alone.response_mask[row // 5].sum())
            assert together.response_ids[row].tolist() == alone.response_ids[row // 5].tolist()
            assert torch.allclose(together.logprobs[row, :n], alone.logprobs[row // 5, :n], atol=1e-6)


def test_a_mixed_batch_draws_its_greedy_rows_by_argmax_and_samples_the_others():
    model = build("llama", seed=2)
    prompts = [p for p in PROMPTS for _ in range(4)]
    greedy = torch.tensor([i % 4 == 0 for i in range(len(prompts))])
    gen = torch.Generator().manual_seed(0)
    mixed = sample(
        model, prompts, max_new_tokens=10, eos_id=2, pad_id=0, temperature=3.0, greedy=greedy, generator=gen
    )
    pure = sample(model, PROMPTS, max_new_tokens=10, eos_id=2, pad_id=0, greedy=True)
    width = mixed.response_ids.shape[1]
    for i in range(len(PROMPTS)):
        n = int(pure.response_mask[i].sum())
        assert mixed.response_ids[4 * i, :n].tolist() == pure.response_ids[i, :n].tolist()
        # greedy rows report the temperature-1 distribution, as an all-greedy batch does
        assert torch.allclose(mixed.entropy[4 * i, :n], pure.entropy[i, :n], atol=1e-6)
        assert int(mixed.response_mask[4 * i].sum()) == n and n <= width
    sampled = mixed.response_ids[~greedy]
    assert len({tuple(r.tolist()) for r in sampled}) > len(PROMPTS), "T=3 sampling gave no variety"
    assert gen.get_state().ne(torch.Generator().manual_seed(0).get_state()).any()
