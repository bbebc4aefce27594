"""Loading the policy: device and dtype resolution, the LoRA / full fine-tuning reference, chat templates, stop ids."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from grpo.config import ModelConfig
from grpo.model import load_policy, resolve_device, resolve_dtype
from grpo.rollout import response_logprobs


def test_device_and_dtype_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16


def test_lora_reference_is_the_base_with_the_adapter_disabled(tiny_model_dir):
    cfg = ModelConfig(source="local", path=str(tiny_model_dir), device="cpu")
    cfg.lora.enabled, cfg.lora.r = True, 4
    policy = load_policy(cfg, tiny_model_dir, need_reference=True, seed=0)
    assert policy.reference is None  # no second copy of the weights
    with torch.no_grad():  # move the adapter away from its zero start
        for name, param in policy.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    prompt_ids = torch.tensor([[1, 5, 6, 7], [0, 1, 8, 9]])
    prompt_mask = prompt_ids != 0
    resp = torch.tensor([[10, 11, 12], [13, 14, 2]])
    resp_mask = torch.ones_like(resp, dtype=torch.bool)
    args = (prompt_ids, prompt_mask, resp, resp_mask)
    with torch.no_grad():
        want, _ = response_logprobs(base, *args)
        module, context = policy.reference_context()
        with context:
            ref, _ = response_logprobs(module, *args)
        current, _ = response_logprobs(policy.model, *args)
    assert torch.allclose(ref, want, atol=1e-6)
    assert not torch.allclose(current, want, atol=1e-3)  # outside the context the adapter is back on


def test_full_finetuning_reference_is_a_frozen_copy(tiny_model_dir):
    cfg = ModelConfig(source="local", path=str(tiny_model_dir), device="cpu")
    policy = load_policy(cfg, tiny_model_dir, need_reference=True, seed=0)
    module, _ = policy.reference_context()
    assert module is policy.reference and module is not policy.model
    assert not any(p.requires_grad for p in module.parameters())
    assert load_policy(cfg, tiny_model_dir, need_reference=False, seed=0).reference is None


def test_chat_template_is_used_when_present_unless_never(tmp_path, tiny_model_dir):
    from transformers import AutoTokenizer

    chat_dir = tmp_path / "chat_model"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = (
        "{{ bos_token }}{% for m in messages %}u:{{ m['content'] }};{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    model.save_pretrained(chat_dir)
    tokenizer.save_pretrained(chat_dir)
    auto = load_policy(
        ModelConfig(source="local", path=str(chat_dir)), chat_dir, need_reference=False, seed=0
    )
    assert auto.use_chat_template
    assert auto.tokenizer.decode(auto.encode_prompt("1+2=")) == "<bos>u:1+2=;a:"
    never = load_policy(
        ModelConfig(source="local", path=str(chat_dir), chat_template="never"),
        chat_dir,
        need_reference=False,
        seed=0,
    )
    assert not never.use_chat_template
    assert never.encode_prompt("1+2=") == [tokenizer.bos_token_id] + tokenizer.encode("1+2=")
    plain = load_policy(ModelConfig(source="local"), tiny_model_dir, need_reference=False, seed=0)
    assert not plain.use_chat_template  # the built-in char tokenizer has no template


def test_stop_ids_include_the_generation_config_eos(tiny_model_dir):
    policy = load_policy(ModelConfig(source="local"), tiny_model_dir, need_reference=False, seed=0)
    eos = policy.tokenizer.eos_token_id
    policy.model.generation_config.eos_token_id = [eos, 7]
    assert policy.stop_ids == [eos, 7]
    policy.model.generation_config.eos_token_id = None
    assert policy.stop_ids == [eos]
