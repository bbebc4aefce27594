"""The built-in base model: a tiny Llama pre-trained (supervised) on a task until its greedy test accuracy lies
inside a target band, so that GRPO starts from a policy that is right sometimes (DESIGN §4).

- :func:`build_tiny_model` makes the untrained network (LlamaForCausalLM from a config, tied embeddings).
- :func:`pretrain` runs SFT on the task's train split and stops inside the band (rule below), saves the model,
  the tokenizer and ``quadrl_base.json``, and logs the build to MLflow.
- :func:`ensure_base_model` returns a cached directory keyed on everything that changes the model, building it
  once (in a temporary directory renamed into place, under a file lock) when missing.

Stopping rule. With band ``(low, high)`` and ``aim = (low + high) / 2 - aim_tolerance`` (0.35 for the default
band), the test split is evaluated greedily every ``eval_every`` optimizer steps, and every
``dense_eval_every`` steps once the last evaluation reached ``low / 2`` (addition crosses the band in a few
dozen steps). Both default to the task's ``pretrain_hints`` (arith 20 / 5, countdown 50 / 25), else 20 / 5:

1. ``aim <= acc <= high``: stop and keep this model;
2. ``low <= acc < aim``: remember this model (a copy of its weights) if it is the best such so far; continue;
3. ``acc > high``: the band was jumped over between two evaluations: keep the remembered in-band model
   if there is one, else fail with :class:`PretrainError` (lower ``dense_eval_every``);
4. budget (``max_seconds`` or ``max_steps``) spent: keep the remembered in-band model if any, else fail
   with :class:`PretrainError` (or, with ``allow_out_of_band=True``, save the last model anyway, for smoke
   tests).

Everything that decides the model is seeded (``torch.manual_seed(seed)`` for init and the data order from
``random.Random(seed)``), and stopping is decided by step counts and accuracies, not by wall-clock time, so
the same seed gives the same model on the same CPU software stack (wall-clock only decides failure).
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from experiments.tasks import make_task
from experiments.tasks import task_params as task_params_spec
from experiments.tasks.base import Example, Task, score_completions
from experiments.tasks.tokenizer import BUILTIN_ALPHABET, build_char_tokenizer, char_vocab

BASE_MODEL_VERSION = "1"
"""Bump when anything that changes a built base model changes (tokenizer alphabet, task formats, SFT recipe):
the cache key includes it, so old caches are not reused."""

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MLFLOW_EXPERIMENT = "quadrl-base-models"
METADATA_FILE = "quadrl_base.json"

DEFAULT_MODEL_PARAMS: dict[str, int] = {
    "hidden_size": 128,
    "num_layers": 3,
    "num_heads": 4,
    "intermediate_size": 256,
    "max_positions": 256,
}
DEFAULT_SFT_PARAMS: dict[str, Any] = {
    "lr": 2e-3,
    "betas": (0.9, 0.98),
    "weight_decay": 0.01,
    "warmup_steps": 100,
    "batch_size": 64,
    "grad_clip": 1.0,
}


class PretrainError(RuntimeError):
    """Pre-training could not produce a model inside the target accuracy band."""


def build_tiny_model(
    tokenizer: PreTrainedTokenizerBase,
    hidden_size: int = 128,
    num_layers: int = 3,
    num_heads: int = 4,
    intermediate_size: int = 256,
    max_positions: int = 256,
    seed: int = 0,
) -> LlamaForCausalLM:
    """An untrained LlamaForCausalLM sized for the char tokenizer (tied embeddings; pad/bos/eos from the
    tokenizer). The initialisation is seeded without touching the caller's global RNG state."""
    if hidden_size % num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not a multiple of num_heads {num_heads}")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    return model


# ----------------------------------------------------------------------------------------------- data


class _Encoder:
    """Fast char encoding (identical to ``tokenizer.encode`` for the char tokenizer)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase):
        self.vocab = char_vocab(tokenizer)
        self.unk = tokenizer.unk_token_id
        self.bos, self.eos, self.pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id

    def encode(self, text: str) -> list[int]:
        return [self.vocab.get(ch, self.unk) for ch in text]

    def prompt(self, prompt: str) -> list[int]:
        return [self.bos] + self.encode(prompt)

    def sft_batch(self, examples: Sequence[Example]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``input_ids`` and ``labels`` (-100 on bos, prompt and padding; loss on target + EOS)."""
        rows, labels = [], []
        for ex in examples:
            prompt, target = self.prompt(ex.prompt), self.encode(ex.target) + [self.eos]
            rows.append(prompt + target)
            labels.append([-100] * len(prompt) + target)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        lab = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, (r, lb) in enumerate(zip(rows, labels, strict=True)):
            ids[i, : len(r)] = torch.tensor(r)
            lab[i, : len(lb)] = torch.tensor(lb)
        return ids, lab


def evaluate_accuracy(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    examples: Sequence[Example] | None = None,
    *,
    max_new_tokens: int | None = None,
    batch_size: int = 256,
) -> float:
    """Greedy accuracy (mean reward) on ``examples`` (default: the task's test split), prompts ``[bos] + prompt``."""
    from grpo.rollout import sample

    examples = list(task.test() if examples is None else examples)
    budget = int(max_new_tokens or getattr(task, "max_new_tokens", 64))
    encoder = _Encoder(tokenizer)
    was_training = model.training
    model.eval()
    total = 0.0
    try:
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            rollout = sample(
                model,
                [encoder.prompt(ex.prompt) for ex in chunk],
                max_new_tokens=budget,
                eos_id=encoder.eos,
                pad_id=encoder.pad,
                greedy=True,
            )
            texts = []
            for i in range(len(chunk)):
                ids = rollout.response_ids[i][rollout.response_mask[i]].tolist()
                if encoder.eos in ids:
                    ids = ids[: ids.index(encoder.eos)]
                texts.append(tokenizer.decode(ids, skip_special_tokens=True))
            total += sum(score_completions(task, chunk, texts).rewards)
    finally:
        model.train(was_training)
    return total / max(1, len(examples))


# ------------------------------------------------------------------------------------------- tracking


class _Tracker:
    """Minimal MLflow logging through MlflowClient (no global active run); a no-op when uri is None."""

    def __init__(self, uri: str | None, run_name: str, params: dict[str, Any], tags: dict[str, str]):
        self.client = None
        self.run_id: str | None = None
        if uri is None:
            return
        from mlflow.entities import Param

        from experiments.tracking import ensure_experiment, tracking_client

        experiment_id = ensure_experiment(uri, MLFLOW_EXPERIMENT)
        self.client = tracking_client(uri)
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags)
        self.run_id = run.info.run_id
        flat = [Param(k, str(v)[:6000]) for k, v in sorted(params.items())]
        for i in range(0, len(flat), 100):
            self.client.log_batch(self.run_id, params=flat[i : i + 100])

    def metrics(self, values: dict[str, float], step: int) -> None:
        if self.client is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items()]
        self.client.log_batch(self.run_id, metrics=batch)

    def tags(self, values: dict[str, str]) -> None:
        if self.client is None:
            return
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in values.items()])

    def finish(self, ok: bool) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


# ------------------------------------------------------------------------------------------- pretrain


def _full_task_params(task_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The task's parameters with defaults filled in (so {} and explicit defaults key the same cache)."""
    full = {k: v for k, v in task_params_spec(task_name).items() if v is not inspect.Parameter.empty}
    full.update(params)
    full.pop("seed", None)  # replaced by the pretrain seed (see pretrain)
    return full


def pretrain(
    task_name: str,
    task_params: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    target_accuracy: tuple[float, float] = (0.2, 0.6),
    max_seconds: float = 1800.0,
    eval_every: int | None = None,
    dense_eval_every: int | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    model_params: Mapping[str, int] | None = None,
    lr: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.98),
    weight_decay: float = 0.01,
    warmup_steps: int = 100,
    batch_size: int = 64,
    grad_clip: float = 1.0,
    aim_tolerance: float = 0.05,
    max_steps: int | None = None,
    allow_out_of_band: bool = False,
    num_threads: int | None = None,
    verbose: bool = False,
) -> dict[str, Any]:
    """SFT a tiny model on ``task_name`` until its greedy test accuracy is inside ``target_accuracy`` (see the
    module docstring for the stopping rule), then save it to ``out_dir`` (model, tokenizer, ``quadrl_base.json``).

    The task is built from ``task_params`` with its ``seed`` (the train stream) replaced by ``seed``, so the
    base model depends on one seed only. Returns the metadata written to ``quadrl_base.json``.
    ``tracking_uri=None`` disables MLflow logging.
    ``num_threads`` calls ``torch.set_num_threads`` (left alone when None). Raises :class:`PretrainError` when
    the band is not reached within ``max_seconds`` / ``max_steps`` (unless ``allow_out_of_band``).
    """
    low, high = float(target_accuracy[0]), float(target_accuracy[1])
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"target_accuracy must satisfy 0 <= low < high <= 1, got {target_accuracy}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    aim = max(low, (low + high) / 2 - aim_tolerance)
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    arch = {**DEFAULT_MODEL_PARAMS, **dict(model_params or {})}
    unknown = sorted(set(arch) - set(DEFAULT_MODEL_PARAMS))
    if unknown:
        raise ValueError(f"unknown model parameter(s) {unknown}; accepted: {sorted(DEFAULT_MODEL_PARAMS)}")
    out_dir = Path(out_dir)
    task_params = dict(task_params)

    # the task's own data seed follows the pretrain seed (so a run-level task seed never forks the base model)
    build_params = {**task_params, "seed": seed} if "seed" in task_params_spec(task_name) else task_params
    task = make_task(task_name, **build_params)
    hints = dict(getattr(task, "pretrain_hints", {}) or {})
    eval_every = int(eval_every if eval_every is not None else hints.get("eval_every", 20))
    dense_eval_every = int(
        dense_eval_every if dense_eval_every is not None else hints.get("dense_eval_every", 5)
    )
    if eval_every < 1 or dense_eval_every < 1:
        raise ValueError("eval_every and dense_eval_every must be >= 1")
    train, test = task.train(), list(task.test())
    tokenizer = build_char_tokenizer(BUILTIN_ALPHABET, model_max_length=arch["max_positions"])
    encoder = _Encoder(tokenizer)
    torch.manual_seed(seed)
    model = build_tiny_model(tokenizer, **arch, seed=seed)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=tuple(betas),
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / max(1, warmup_steps))
    )
    order = random.Random(f"quadrl-pretrain:{seed}")

    run_name = f"base-{task_name}-seed{seed}"
    sft = {
        "lr": lr,
        "betas": list(betas),
        "weight_decay": weight_decay,
        "warmup_steps": warmup_steps,
        "batch_size": batch_size,
        "grad_clip": grad_clip,
    }
    params = {
        "task": task_name,
        **{f"task.{k}": v for k, v in task_params.items()},
        "seed": seed,
        "target_low": low,
        "target_high": high,
        "aim": aim,
        "eval_every": eval_every,
        "dense_eval_every": dense_eval_every,
        "max_seconds": max_seconds,
        "base_model_version": BASE_MODEL_VERSION,
        **{f"model.{k}": v for k, v in arch.items()},
        **{f"sft.{k}": v for k, v in sft.items()},
        "n_test": len(test),
        "n_params": sum(p.numel() for p in model.parameters()),
    }
    tracker = _Tracker(
        tracking_uri,
        run_name,
        params,
        {
            "quadrl.base_model_version": BASE_MODEL_VERSION,
            "quadrl.task": task_name,
            "quadrl.kind": "base_model",
        },
    )

    start = time.perf_counter()
    history: list[dict[str, float]] = []
    snapshot: tuple[dict[str, torch.Tensor], float, int] | None = None
    chosen: tuple[float, int] | None = None
    losses: list[float] = []
    first_loss: float | None = None
    step = 0
    ok = False
    try:
        while True:
            batch = [train[order.randrange(len(train))] for _ in range(batch_size)]
            input_ids, labels = encoder.sft_batch(batch)
            loss = model(input_ids=input_ids, labels=labels).loss
            if not math.isfinite(loss.item()):
                raise PretrainError(f"loss became {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            optimizer.step()
            schedule.step()
            step += 1
            losses.append(loss.item())
            if first_loss is None:
                first_loss = losses[0]

            out_of_budget = time.perf_counter() - start >= max_seconds or (
                max_steps is not None and step >= max_steps
            )
            every = dense_eval_every if history and history[-1]["test_accuracy"] >= low / 2 else eval_every
            if step % every and not out_of_budget:
                continue
            acc = evaluate_accuracy(model, tokenizer, task, test)
            seconds = time.perf_counter() - start
            mean_loss = sum(losses) / len(losses)
            losses = []
            history.append({"step": step, "seconds": seconds, "test_accuracy": acc, "loss": mean_loss})
            tracker.metrics(
                {"pretrain/test_accuracy": acc, "pretrain/loss": mean_loss, "pretrain/seconds": seconds}, step
            )
            if verbose:
                print(f"[pretrain {task_name}] step {step} {seconds:.1f}s loss {mean_loss:.4f} acc {acc:.3f}")
            if aim <= acc <= high:
                chosen = (acc, step)
                break
            if low <= acc < aim and (snapshot is None or acc >= snapshot[1]):
                snapshot = ({k: v.detach().clone() for k, v in model.state_dict().items()}, acc, step)
            if acc > high:
                if snapshot is None:
                    raise PretrainError(
                        f"{task_name}: test accuracy jumped from below {low} to {acc:.3f} > {high} between evals "
                        f"(step {step}); lower dense_eval_every (now {dense_eval_every})"
                    )
                break
            if out_of_budget:
                if snapshot is not None or allow_out_of_band:
                    break
                raise PretrainError(
                    f"{task_name}: test accuracy {acc:.3f} not in [{low}, {high}] after {seconds:.0f}s / {step} "
                    f"steps (max_seconds={max_seconds}, max_steps={max_steps}); raise max_seconds"
                )
        if chosen is None and snapshot is not None:
            model.load_state_dict(snapshot[0])
            chosen = (snapshot[1], snapshot[2])
        in_band = chosen is not None
        if chosen is None:  # allow_out_of_band: keep the last model
            chosen = (history[-1]["test_accuracy"], step)
        seconds = time.perf_counter() - start

        metadata = {
            "task": task_name,
            "task_params": task_params,
            "seed": seed,
            "version": BASE_MODEL_VERSION,
            "test_accuracy": chosen[0],
            "steps": chosen[1],
            "steps_trained": step,
            "seconds": seconds,
            "in_band": in_band,
            "target_accuracy": [low, high],
            "aim": aim,
            "eval_every": eval_every,
            "dense_eval_every": dense_eval_every,
            "n_test": len(test),
            "model": arch,
            "sft": sft,
            "first_loss": first_loss,
            "final_loss": history[-1]["loss"],
            "history": history,
            "max_new_tokens": int(getattr(task, "max_new_tokens", 64)),
            "mlflow_run_id": tracker.run_id,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(out_dir)
        tokenizer.save_pretrained(out_dir)
        (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        tracker.metrics(
            {"pretrain/final_test_accuracy": chosen[0], "pretrain/total_seconds": seconds}, chosen[1]
        )
        tracker.tags({"quadrl.base_model_dir": str(out_dir), "quadrl.in_band": str(in_band)})
        ok = True
        return metadata
    finally:
        tracker.finish(ok)


# ------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("QUADRL_CACHE") or Path.home() / ".cache" / "quadrl")


def _file_digest(path: str) -> str | None:
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    h = hashlib.sha256()
    with p.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def base_model_key(
    task_name: str,
    task_params: Mapping[str, Any],
    *,
    seed: int = 0,
    model_params: Mapping[str, int] | None = None,
    target_accuracy: tuple[float, float] = (0.2, 0.6),
    pretrain_params: Mapping[str, Any] | None = None,
) -> str:
    """Cache key: task name, its full parameters (defaults filled in, the task's ``seed`` dropped since
    pretrain replaces it by ``seed``; files named by ``path``/``test_path`` by content hash), the architecture, the SFT recipe, the target band, BASE_MODEL_VERSION and the seed."""
    full = _full_task_params(task_name, task_params)
    for name in ("path", "test_path"):
        if isinstance(full.get(name), str):
            full[f"{name}.sha256"] = _file_digest(full[name])
    recipe = {**DEFAULT_SFT_PARAMS, **dict(pretrain_params or {})}
    payload = {
        "task": task_name,
        "task_params": full,
        "seed": seed,
        "model": {**DEFAULT_MODEL_PARAMS, **dict(model_params or {})},
        "target_accuracy": [float(target_accuracy[0]), float(target_accuracy[1])],
        "recipe": recipe,
        "alphabet": BUILTIN_ALPHABET,
        "version": BASE_MODEL_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True, default=str)
    return f"{task_name}-seed{seed}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def ensure_base_model(
    task_name: str,
    task_params: Mapping[str, Any],
    *,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    model_params: Mapping[str, int] | None = None,
    target_accuracy: tuple[float, float] = (0.2, 0.6),
    max_seconds: float = 1800.0,
    **pretrain_params: Any,
) -> Path:
    """The directory of the base model for (task, params, seed, architecture, recipe, version), building it
    with :func:`pretrain` on first use. Concurrent callers serialise on a lock file: one builds, the others
    wait and reuse it. The build goes to a temporary directory renamed into place, so a crash never leaves a
    half-written cache entry. ``pretrain_params`` go to :func:`pretrain` (e.g. ``eval_every``, ``lr``); those
    that change the model are part of the key."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = root / "base_models"
    base.mkdir(parents=True, exist_ok=True)
    recipe_keys = set(DEFAULT_SFT_PARAMS) | {"eval_every", "dense_eval_every", "aim_tolerance", "max_steps"}
    key = base_model_key(
        task_name,
        task_params,
        seed=seed,
        model_params=model_params,
        target_accuracy=target_accuracy,
        pretrain_params={k: v for k, v in pretrain_params.items() if k in recipe_keys and v is not None},
    )
    final = base / key
    if (final / METADATA_FILE).is_file():
        return final
    with open(base / f".{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (final / METADATA_FILE).is_file():
                return final
            tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=base))
            try:
                pretrain(
                    task_name,
                    task_params,
                    tmp,
                    seed=seed,
                    target_accuracy=target_accuracy,
                    max_seconds=max_seconds,
                    tracking_uri=tracking_uri,
                    model_params=model_params,
                    **pretrain_params,
                )
                if final.exists():  # a stale entry without metadata (should not happen): replace it
                    shutil.rmtree(final)
                os.rename(tmp, final)
            finally:
                if tmp.exists():
                    shutil.rmtree(tmp, ignore_errors=True)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return final


def load_metadata(model_dir: str | os.PathLike[str]) -> dict[str, Any]:
    return json.loads((Path(model_dir) / METADATA_FILE).read_text())


__all__ = [
    "BASE_MODEL_VERSION",
    "DEFAULT_TRACKING_URI",
    "PretrainError",
    "base_model_key",
    "build_tiny_model",
    "default_cache_dir",
    "ensure_base_model",
    "evaluate_accuracy",
    "load_metadata",
    "pretrain",
]
