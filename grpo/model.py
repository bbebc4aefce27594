"""Load the policy (built-in base model or any local Hugging Face directory), optionally with a LoRA adapter.

With LoRA the reference policy for KL is the same network with the adapter disabled (no second copy); with
full fine-tuning it is a frozen copy, made only when beta > 0.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerBase

from grpo.checks import ConfigError
from grpo.config import ModelConfig

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return _DTYPES[name]


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    path: Path
    lora: bool
    use_chat_template: bool
    reference: torch.nn.Module | None = None
    """Frozen copy for KL with full fine-tuning (None with LoRA or beta = 0)."""
    engine: Any = None
    """The rollout engine it samples with (grpo/engine.py; None: the native sampler)."""

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def stop_ids(self) -> list[int]:
        """Tokens that end a response: the tokenizer's EOS plus the model's generation_config EOS ids (a chat
        model ends its turn with e.g. <|im_end|> or <|eot_id|>, which need not be the tokenizer's EOS)."""
        ids = [self.eos_id]
        extra = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for token in [extra] if isinstance(extra, int) else list(extra or []):
            if int(token) not in ids:
                ids.append(int(token))
        return ids

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad if pad is not None else self.tokenizer.eos_token_id)

    def encode_prompt(self, prompt: str, messages: Sequence[tuple[str, str]] | None = None) -> list[int]:
        """Token ids of a prompt. ``messages`` (an Example's chat turns): rendered by the chat template in its
        place when there is one; without a template the plain text ``prompt`` is encoded."""
        if self.use_chat_template:
            turns = messages or [("user", prompt)]
            chat = [{"role": role, "content": content} for role, content in turns]
            ids = self.tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        bos = self.tokenizer.bos_token_id
        return ([bos] if bos is not None else []) + list(ids)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def reference_context(self) -> tuple[torch.nn.Module, AbstractContextManager]:
        """The module and context under which a forward pass gives the reference policy's log-probs."""
        if self.lora:
            return self.model, self.model.disable_adapter()
        assert self.reference is not None, "reference policy requested but none was built (beta = 0)"
        return self.reference, nullcontext()

    def trainable_state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.named_parameters() if v.requires_grad}

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.model.named_parameters())
        missing = [k for k in state if k not in params]
        if missing:
            raise RuntimeError(f"checkpoint has parameters this model lacks: {missing[:5]}")
        with torch.no_grad():
            for name, value in state.items():
                params[name].copy_(value)


def load_policy(cfg: ModelConfig, path: Path, *, need_reference: bool, seed: int) -> Policy:
    """Load model + tokenizer from a local directory, move to device/dtype, wrap in LoRA if asked."""
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, local_files_only=True).to(device)
    if cfg.gradient_checkpointing:
        # non-reentrant: with the reentrant variant (older transformers' default) a frozen base in front of a
        # LoRA adapter gives the checkpointed blocks no input that requires grad, and the adapter no gradient.
        # transformers 5 renamed the method (the old name warns, and goes in v6).
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    # LoRA's A matrices are initialised from the global RNG: seed it so a run is reproducible
    torch.manual_seed(seed)
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        targets = list(cfg.lora.target_modules)
        lora_cfg = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules="all-linear" if targets == ["all-linear"] else targets,
            task_type="CAUSAL_LM",
        )
        model = get_peft_model(model, lora_cfg)
    reference = None
    if need_reference and not cfg.lora.enabled:
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    use_chat = cfg.chat_template == "auto" and getattr(tokenizer, "chat_template", None) is not None
    return Policy(model, tokenizer, Path(path), cfg.lora.enabled, use_chat, reference)


def load_teacher(cfg: ModelConfig, path: Path, tokenizer: PreTrainedTokenizerBase) -> torch.nn.Module:
    """A frozen teacher for on-policy distillation, on the policy's device and dtype. It scores the student's token
    ids, so its tokenizer must be the policy's (same vocabulary, same ids): refused by name otherwise."""
    teacher_tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if teacher_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"teacher {path}: its tokenizer's vocabulary differs from the policy's; on-policy distillation "
            "scores the student's token ids under the teacher, so both must share one tokenizer"
        )
    device = resolve_device(cfg.device)
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=resolve_dtype(cfg.dtype, device), local_files_only=True
    )
    return model.to(device).eval().requires_grad_(False)
