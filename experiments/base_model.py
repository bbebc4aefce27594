"""The built-in base model: a tiny Llama pre-trained (supervised) on a task until its greedy test accuracy lies
inside a target band, so that GRPO starts from a policy that is right sometimes (docs/background.md, "Base models").

- :class:`SFTRecipe` is everything that decides which model a build produces: the one source for
  :func:`pretrain` and for the cache key :func:`base_model_key` (a test fails if a recipe field or a ``pretrain``
  parameter that changes the model is left out of the key).
- :func:`build_tiny_model` makes the untrained network (LlamaForCausalLM from a config, tied embeddings).
- :func:`pretrain` runs SFT on the task's train split and stops inside the band, saves the model, the tokenizer
  and ``quadrl_base.json``, and logs the build to MLflow: set-up (:func:`_setup`), the loop (:func:`_sft_loop`),
  the stopping decision (:meth:`Band.decide`).
- :func:`ensure_base_model` returns a cached directory keyed on the recipe, building it once (in a temporary
  directory renamed into place, under a file lock) when missing.
- Shipped base models: the repository ships the base model of each built-in task under ``models/<task>/``,
  built once by :func:`ship` (``quadrl-pretrain --task arith --ship``), with the sha256 of every file in its
  metadata. :func:`resolve_base_model` (what ``model=tiny`` uses) loads the shipped model when the run asks for
  exactly what it was built from (same cache key), verifies every checksum, and refuses a missing or changed file
  by name; otherwise it builds (``model.base=build``, or task parameters that differ), saying why in one line.
  Float results differ between CPUs, and the stopping rule turns a last-bit difference into another model:
  shipping the weights fixes the starting point for every machine.

Stopping rule. With band ``(low, high)`` (the task's ``pretrain_hints``, else 0.2-0.6; fork: 0.9-1.0) and
``aim = max(low, (low + high) / 2 - aim_tolerance)`` (0.35 for the default band), the test split is evaluated greedily every ``eval_every`` optimizer steps, and every
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
``random.Random``), and stopping is decided by step counts and accuracies, not by wall-clock time, so the same
recipe gives the same model on the same CPU software stack (wall-clock only decides failure).
"""

from __future__ import annotations

import dataclasses
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from experiments.tasks import TASKS, make_task
from experiments.tasks import task_params as task_params_spec
from experiments.tasks.tokenizer import BUILTIN_ALPHABET, build_char_tokenizer
from experiments.tracking import Tracker, flatten
from grpo.config import EvalConfig
from grpo.evaluate import evaluate
from grpo.model import Policy
from grpo.task import Example, Task
from runrecord import DEFAULT_TRACKING_URI

BASE_MODEL_VERSION = "1"
"""Bump when code that changes a built base model changes (tokenizer alphabet, task formats, the SFT loop):
the cache key includes it, so old caches are not reused. Recipe values are keyed by themselves."""

MLFLOW_EXPERIMENT = "quadrl-base-models"
METADATA_FILE = "quadrl_base.json"
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "models"
"""Where the repository's shipped models live: ``models/<name>/`` (model, tokenizer, ``quadrl_base.json``)."""


class PretrainError(RuntimeError):
    """Pre-training could not produce a model inside the target accuracy band."""


class ShippedModelError(RuntimeError):
    """A shipped model's file is missing or does not match the checksum its metadata records."""


@dataclass(frozen=True)
class TinyArchitecture:
    """The untrained network: a LlamaForCausalLM sized for the char tokenizer, with tied embeddings."""

    hidden_size: int = 128
    """Width of the residual stream."""
    num_layers: int = 3
    """Decoder blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must be a multiple)."""
    intermediate_size: int = 256
    """Width of the MLP."""
    max_positions: int = 256
    """Longest prompt + response."""


@dataclass(frozen=True)
class SFTRecipe:
    """Everything that decides which base model a build produces; :func:`base_model_key` hashes all of it."""

    seed: int = 0
    """Model init, the task's train stream (replaces the task's own ``seed``) and the batch order."""
    architecture: TinyArchitecture = field(default_factory=TinyArchitecture)
    """The network."""
    lr: float = 2e-3
    """AdamW peak learning rate."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    weight_decay: float = 0.01
    """AdamW weight decay (matrices only; norms and biases get none)."""
    warmup_steps: int = 100
    """Linear warm-up steps, then constant."""
    batch_size: int = 64
    """Examples per SFT step (drawn with replacement from the train split)."""
    grad_clip: float = 1.0
    """Max global gradient norm."""
    target_accuracy: tuple[float, float] | None = None
    """The band (low, high) of greedy test accuracy the model must end inside (None: the task's
    ``pretrain_hints``, else (0.2, 0.6))."""
    aim_tolerance: float = 0.05
    """Stop at the first evaluation with accuracy in [mid-band - aim_tolerance, high] (module docstring)."""
    eval_every: int | None = None
    """Steps between test evaluations far below the band (None: the task's ``pretrain_hints``, else 20)."""
    dense_eval_every: int | None = None
    """Steps between evaluations near the band (None: the task's ``pretrain_hints``, else 5)."""
    max_steps: int | None = None
    """Stop after this many steps whatever the accuracy (None: only ``max_seconds`` bounds the build)."""
    allow_out_of_band: bool = False
    """Save the last model when the band is not reached, instead of failing (smoke tests)."""
    num_threads: int | None = 1
    """torch intra-op threads during the build (None: torch's default, which depends on the machine's cores).
    Threads change the order of float sums, hence the model: part of the key. One thread keeps the build the same
    on machines with different core counts and avoids oversubscription when builds share cores with jobs."""

    def __post_init__(self) -> None:
        if self.target_accuracy is not None:
            low, high = self.target_accuracy
            if not 0.0 <= low < high <= 1.0:
                raise ValueError(
                    f"target_accuracy must satisfy 0 <= low < high <= 1, got {self.target_accuracy}"
                )
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        for name in ("eval_every", "dense_eval_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        arch = self.architecture
        if arch.hidden_size % arch.num_heads:
            raise ValueError(
                f"hidden_size {arch.hidden_size} is not a multiple of num_heads {arch.num_heads}"
            )

    def with_task_hints(self, task_name: str) -> SFTRecipe:
        """The recipe with ``eval_every`` / ``dense_eval_every`` / ``target_accuracy`` filled from the task's
        ``pretrain_hints`` where unset."""
        hints = dict(getattr(TASKS.get(task_name), "pretrain_hints", {}) or {})
        return dataclasses.replace(
            self,
            target_accuracy=self.target_accuracy or tuple(hints.get("target_accuracy", (0.2, 0.6))),
            eval_every=self.eval_every or int(hints.get("eval_every", 20)),
            dense_eval_every=self.dense_eval_every or int(hints.get("dense_eval_every", 5)),
        )


def teacher_recipe(seed: int = 0, min_accuracy: float = 0.9) -> SFTRecipe:
    """The built-in distillation teacher: the base model's recipe (architecture, seed, data order, optimiser) with
    the band [min_accuracy, 1], i.e. the base model's own SFT run continued until its greedy test accuracy
    reaches ``min_accuracy``. Keyed and cached like a base model (``quadrl-pretrain --low 0.9 --high 1 --cache``
    builds the same directory)."""
    return SFTRecipe(seed=seed, target_accuracy=(min_accuracy, 1.0))


def recipe_from(values: Mapping[str, Any]) -> SFTRecipe:
    """An :class:`SFTRecipe` from plain values (``architecture`` may be a mapping of its fields)."""
    values = dict(values)
    arch = values.pop("architecture", None)
    known = {f.name for f in dataclasses.fields(SFTRecipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown recipe field(s) {unknown}; accepted: {sorted(known)}")
    if isinstance(arch, Mapping):
        arch_fields = {f.name for f in dataclasses.fields(TinyArchitecture)}
        if set(arch) - arch_fields:
            raise ValueError(f"unknown architecture field(s) {sorted(set(arch) - arch_fields)}")
        arch = TinyArchitecture(**arch)
    if arch is not None:
        values["architecture"] = arch
    for name in ("betas", "target_accuracy"):
        if values.get(name) is not None:
            values[name] = tuple(values[name])
    return SFTRecipe(**values)


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


def char_policy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, path: Path) -> Policy:
    """A built-in model as the core's :class:`Policy` (no chat template: ``[bos] + prompt``)."""
    return Policy(model, tokenizer, path, lora=False, use_chat_template=False)


def greedy_accuracy(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, task: Task, examples: Sequence[Example]
) -> float:
    """Greedy accuracy (mean reward) on ``examples``, through the core's evaluation (:func:`grpo.evaluate`)."""
    cfg = EvalConfig(n_prompts=max(1, len(examples)), n_samples=0)
    budget = int(getattr(task, "max_new_tokens", 64))
    metrics, _ = evaluate(char_policy(model, tokenizer, Path()), task, cfg, budget, None, examples)
    return metrics["eval/accuracy"]


def sft_batch(
    tokenizer: PreTrainedTokenizerBase, examples: Sequence[Example]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ``input_ids`` and ``labels`` (-100 on bos, prompt and padding; loss on target + EOS)."""
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    prompts = tokenizer([ex.prompt for ex in examples], add_special_tokens=False)["input_ids"]
    targets = tokenizer([ex.target for ex in examples], add_special_tokens=False)["input_ids"]
    rows = [[bos, *p, *t, eos] for p, t in zip(prompts, targets, strict=True)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (row, p) in enumerate(zip(rows, prompts, strict=True)):
        ids[i, : len(row)] = torch.tensor(row)
        labels[i, 1 + len(p) : len(row)] = torch.tensor(row[1 + len(p) :])
    return ids, labels


# ----------------------------------------------------------------------------------------------- pretrain

Next = Literal["stop_here", "stop_remembered", "stop_last", "continue", "jumped", "out_of_budget"]


@dataclass(frozen=True)
class Band:
    """The target band and the stopping rule of the module docstring, as a pure function of what was seen."""

    low: float
    high: float
    aim: float

    @classmethod
    def of(cls, recipe: SFTRecipe) -> Band:
        assert recipe.target_accuracy is not None, "resolve the recipe first (SFTRecipe.with_task_hints)"
        low, high = float(recipe.target_accuracy[0]), float(recipe.target_accuracy[1])
        return cls(low, high, max(low, (low + high) / 2 - recipe.aim_tolerance))

    def decide(
        self, acc: float, remembered: float | None, out_of_budget: bool, allow_out_of_band: bool
    ) -> tuple[bool, Next]:
        """(remember this model?, what to do next), given this evaluation's accuracy, the accuracy of the
        remembered in-band model (None if none), whether the budget is spent."""
        if self.aim <= acc <= self.high:
            return False, "stop_here"  # rule 1
        remember = self.low <= acc < self.aim and (remembered is None or acc >= remembered)  # rule 2
        have = remember or remembered is not None
        if acc > self.high:  # rule 3
            return remember, "stop_remembered" if have else "jumped"
        if out_of_budget:  # rule 4
            if have:
                return remember, "stop_remembered"
            return remember, "stop_last" if allow_out_of_band else "out_of_budget"
        return remember, "continue"


@dataclass
class _SFT:
    """What the loop works on (built by :func:`_setup`)."""

    task: Task
    train: Sequence[Example]
    test: list[Example]
    tokenizer: PreTrainedTokenizerBase
    model: LlamaForCausalLM
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    order: random.Random


def _setup(task_name: str, task_params: Mapping[str, Any], recipe: SFTRecipe) -> _SFT:
    """Build the task (its train stream seeded by the recipe), the tokenizer, the model and the optimiser."""
    if recipe.num_threads is not None:
        torch.set_num_threads(int(recipe.num_threads))
    # the task's own data seed follows the recipe seed (so a run-level task seed never forks the base model)
    seed = recipe.seed
    build_params = (
        {**task_params, "seed": seed} if "seed" in task_params_spec(task_name) else dict(task_params)
    )
    task = make_task(task_name, **build_params)
    arch = recipe.architecture
    tokenizer = build_char_tokenizer(BUILTIN_ALPHABET, model_max_length=arch.max_positions)
    torch.manual_seed(seed)
    model = build_tiny_model(tokenizer, **dataclasses.asdict(arch), seed=seed)
    model.train()
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=recipe.lr,
        betas=tuple(recipe.betas),
    )
    warmup = max(1, recipe.warmup_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup))
    order = random.Random(f"quadrl-pretrain:{seed}")
    return _SFT(task, task.train(), list(task.test()), tokenizer, model, optimizer, schedule, order)


@dataclass
class _Outcome:
    chosen: tuple[float, int] | None
    """(accuracy, step) of the model kept, None when it is the out-of-band last model."""
    steps_trained: int
    history: list[dict[str, float]]
    first_loss: float


def _sft_loop(
    sft: _SFT, recipe: SFTRecipe, band: Band, max_seconds: float, tracker: Tracker, label: str, verbose: bool
) -> _Outcome:
    """SFT steps with evaluations on the test split until :meth:`Band.decide` says stop."""
    model, start = sft.model, time.perf_counter()
    history: list[dict[str, float]] = []
    remembered: tuple[dict[str, torch.Tensor], float, int] | None = None
    losses: list[float] = []
    first_loss: float | None = None
    step = 0
    while True:
        batch = [sft.train[sft.order.randrange(len(sft.train))] for _ in range(recipe.batch_size)]
        input_ids, labels = sft_batch(sft.tokenizer, batch)
        loss = model(input_ids=input_ids, labels=labels).loss
        if not math.isfinite(loss.item()):
            raise PretrainError(f"loss became {loss.item()} at step {step}")
        sft.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        sft.optimizer.step()
        sft.schedule.step()
        step += 1
        losses.append(loss.item())
        first_loss = losses[0] if first_loss is None else first_loss

        out_of_budget = time.perf_counter() - start >= max_seconds or (
            recipe.max_steps is not None and step >= recipe.max_steps
        )
        near = history and history[-1]["test_accuracy"] >= band.low / 2
        if step % (recipe.dense_eval_every if near else recipe.eval_every) and not out_of_budget:
            continue
        acc = greedy_accuracy(model, sft.tokenizer, sft.task, sft.test)
        seconds = time.perf_counter() - start
        mean_loss = sum(losses) / len(losses)
        losses = []
        history.append({"step": step, "seconds": seconds, "test_accuracy": acc, "loss": mean_loss})
        tracker.log_metrics(
            {"pretrain/test_accuracy": acc, "pretrain/loss": mean_loss, "pretrain/seconds": seconds}, step
        )
        if verbose:
            print(f"[pretrain {label}] step {step} {seconds:.1f}s loss {mean_loss:.4f} acc {acc:.3f}")

        remember, next_ = band.decide(
            acc, None if remembered is None else remembered[1], out_of_budget, recipe.allow_out_of_band
        )
        if remember:
            remembered = ({k: v.detach().clone() for k, v in model.state_dict().items()}, acc, step)
        if next_ == "continue":
            continue
        if next_ == "jumped":
            raise PretrainError(
                f"{label}: test accuracy jumped from below {band.low} to {acc:.3f} > {band.high} between evals "
                f"(step {step}); lower dense_eval_every (now {recipe.dense_eval_every})"
            )
        if next_ == "out_of_budget":
            raise PretrainError(
                f"{label}: test accuracy {acc:.3f} not in [{band.low}, {band.high}] after {seconds:.0f}s / "
                f"{step} steps (max_seconds={max_seconds}, max_steps={recipe.max_steps}); raise max_seconds"
            )
        chosen: tuple[float, int] | None = (acc, step)
        if next_ == "stop_remembered":
            assert remembered is not None
            model.load_state_dict(remembered[0])
            chosen = (remembered[1], remembered[2])
        elif next_ == "stop_last":
            chosen = None
        return _Outcome(chosen, step, history, float(first_loss))


def pretrain(
    task_name: str,
    task_params: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    recipe: SFTRecipe | None = None,
    *,
    max_seconds: float = 1800.0,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    verbose: bool = False,
) -> dict[str, Any]:
    """SFT a tiny model on ``task_name`` by ``recipe`` until its greedy test accuracy is inside the recipe's band
    (module docstring), then save it to ``out_dir`` (model, tokenizer, ``quadrl_base.json``).

    The task is built from ``task_params`` with its ``seed`` (the train stream) replaced by the recipe's, so the
    base model depends on the recipe only. Returns the metadata written to ``quadrl_base.json``. The keyword
    arguments do not change the model: ``max_seconds`` only decides failure, ``tracking_uri=None`` disables
    MLflow logging, ``verbose`` prints a line per evaluation. Raises :class:`PretrainError` when the band is not
    reached within ``max_seconds`` / ``max_steps`` (unless ``allow_out_of_band``).
    """
    recipe = (recipe or SFTRecipe()).with_task_hints(task_name)
    band = Band.of(recipe)
    out_dir, task_params = Path(out_dir), dict(task_params)
    sft = _setup(task_name, task_params, recipe)
    label = task_name
    params = {
        "task": task_name,
        **{f"task.{k}": v for k, v in task_params.items()},
        "recipe": dataclasses.asdict(recipe),
        "aim": band.aim,
        "max_seconds": max_seconds,
        "base_model_version": BASE_MODEL_VERSION,
        "n_test": len(sft.test),
        "n_params": sum(p.numel() for p in sft.model.parameters()),
    }
    tracker = Tracker(tracking_uri or "", MLFLOW_EXPERIMENT, enabled=tracking_uri is not None)
    tags = {
        "quadrl.base_model_version": BASE_MODEL_VERSION,
        "quadrl.task": task_name,
        "quadrl.kind": "base_model",
    }
    tracker.start(None, f"base-{task_name}-seed{recipe.seed}", flatten(params), tags)
    status = "FAILED"
    try:
        start = time.perf_counter()
        outcome = _sft_loop(sft, recipe, band, max_seconds, tracker, label, verbose)
        seconds = time.perf_counter() - start
        in_band = outcome.chosen is not None
        accuracy, steps = outcome.chosen or (outcome.history[-1]["test_accuracy"], outcome.steps_trained)
        metadata = {
            "task": task_name,
            "task_params": task_params,
            "seed": recipe.seed,
            "version": BASE_MODEL_VERSION,
            "test_accuracy": accuracy,
            "steps": steps,
            "steps_trained": outcome.steps_trained,
            "seconds": seconds,
            "in_band": in_band,
            "aim": band.aim,
            "n_test": len(sft.test),
            "recipe": dataclasses.asdict(recipe),
            "first_loss": outcome.first_loss,
            "final_loss": outcome.history[-1]["loss"],
            "history": outcome.history,
            "max_new_tokens": int(getattr(sft.task, "max_new_tokens", 64)),
            "mlflow_run_id": tracker.run_id,
        }
        out_dir.mkdir(parents=True, exist_ok=True)
        sft.model.save_pretrained(out_dir)
        sft.tokenizer.save_pretrained(out_dir)
        (out_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n")
        tracker.log_metrics(
            {"pretrain/final_test_accuracy": accuracy, "pretrain/total_seconds": seconds}, steps
        )
        tracker.set_tags({"quadrl.base_model_dir": str(out_dir), "quadrl.in_band": str(in_band)})
        status = "FINISHED"
        return metadata
    finally:
        tracker.finish(status)


# ------------------------------------------------------------------------------------------------- cache


def default_cache_dir() -> Path:
    return Path(os.environ.get("QUADRL_CACHE") or Path.home() / ".cache" / "quadrl")


def _file_digest(path: str) -> str | None:
    p = Path(path).expanduser()
    return file_sha256(p) if p.is_file() else None


def _full_task_params(task_name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """The task's parameters with defaults filled in (so {} and explicit defaults key the same cache)."""
    full = {k: v for k, v in task_params_spec(task_name).items() if v is not inspect.Parameter.empty}
    full.update(params)
    full.pop("seed", None)  # replaced by the recipe seed (see pretrain)
    return full


def base_model_key(task_name: str, task_params: Mapping[str, Any], recipe: SFTRecipe | None = None) -> str:
    """Cache key: task name, its full parameters (defaults filled in, the task's ``seed`` dropped since the
    recipe's replaces it; files named by ``path``/``test_path`` by content hash), every field of the recipe
    (task hints resolved), the tokenizer alphabet and BASE_MODEL_VERSION."""
    recipe = (recipe or SFTRecipe()).with_task_hints(task_name)
    full = _full_task_params(task_name, task_params)
    for name in ("path", "test_path"):
        if isinstance(full.get(name), str):
            full[f"{name}.sha256"] = _file_digest(full[name])
    payload = {
        "task": task_name,
        "task_params": full,
        "recipe": dataclasses.asdict(recipe),
        "alphabet": BUILTIN_ALPHABET,
        "version": BASE_MODEL_VERSION,
    }
    blob = json.dumps(payload, sort_keys=True, default=str)
    return f"{task_name}-seed{recipe.seed}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def ensure_base_model(
    task_name: str,
    task_params: Mapping[str, Any],
    recipe: SFTRecipe | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    max_seconds: float = 1800.0,
    verbose: bool = False,
) -> Path:
    """The directory of the base model for (task, params, recipe), building it with :func:`pretrain` on first
    use. Concurrent callers serialise on a lock file: one builds, the others wait and reuse it. The build goes
    to a temporary directory renamed into place, so a crash never leaves a half-written cache entry."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = root / "base_models"
    base.mkdir(parents=True, exist_ok=True)
    key = base_model_key(task_name, task_params, recipe)
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
                    recipe,
                    max_seconds=max_seconds,
                    tracking_uri=tracking_uri,
                    verbose=verbose,
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


# ----------------------------------------------------------------------------------------------- shipped


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def teacher_name(task_name: str) -> str:
    """The shipped directory name of a task's built-in distillation teacher: ``models/<task>_teacher``."""
    return f"{task_name}_teacher"


def ship(
    task_name: str,
    task_params: Mapping[str, Any],
    recipe: SFTRecipe | None = None,
    *,
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    max_seconds: float = 1800.0,
    tracking_uri: str | None = None,
    verbose: bool = False,
) -> Path:
    """Ship the model for (task, params, recipe) as ``models/<name>`` (default: the task's name), recording its
    cache key and the sha256 of every file in ``quadrl_base.json``; replaces what was there. The model is this
    machine's cached build of that key (:func:`ensure_base_model`: built now if there is none), so shipping a
    model a study already built costs no second build."""
    built = ensure_base_model(
        task_name,
        task_params,
        recipe,
        cache_dir=cache_dir,
        max_seconds=max_seconds,
        tracking_uri=tracking_uri,
        verbose=verbose,
    )
    dest = SHIPPED_DIR / (name or task_name)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{dest.name}-", dir=dest.parent))
    try:
        shutil.copytree(built, tmp, dirs_exist_ok=True)
        meta = load_metadata(tmp)
        meta["key"] = base_model_key(task_name, task_params, recipe)
        meta["sha256"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir()) if p.name != METADATA_FILE}
        meta.pop("mlflow_run_id", None)  # a run in the builder's own store means nothing to anyone else
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def verify_shipped(model_dir: str | os.PathLike[str]) -> str:
    """Check every file ``quadrl_base.json`` lists against its sha256; return the weights' sha256.

    Raises :class:`ShippedModelError` naming the first missing or changed file."""
    model_dir = Path(model_dir)
    meta_path = model_dir / METADATA_FILE
    if not meta_path.is_file():
        raise ShippedModelError(
            f"{meta_path}: missing; the shipped model cannot be verified (git checkout models/)"
        )
    recorded = load_metadata(model_dir).get("sha256") or {}
    if "model.safetensors" not in recorded:
        raise ShippedModelError(
            f"{meta_path}: records no sha256 of model.safetensors; rebuild it with --ship"
        )
    for name, want in sorted(recorded.items()):
        path = model_dir / name
        if not path.is_file():
            raise ShippedModelError(
                f"{path}: missing from the shipped model (git checkout models/, or model.base=build)"
            )
        got = file_sha256(path)
        if got != want:
            raise ShippedModelError(
                f"{path}: sha256 {got[:16]}... does not match {want[:16]}... recorded in {METADATA_FILE}; the file "
                "was changed or corrupted (git checkout models/, or model.base=build to build one locally)"
            )
    return recorded["model.safetensors"]


@dataclass(frozen=True)
class ResolvedBase:
    """The base model a run starts from."""

    path: Path
    """Its directory (HF format)."""
    tag: str
    """``shipped:<sha256 prefix of the weights>`` or ``built:<cache key>``: what the run is tagged with."""


def _differences(
    shipped: Mapping[str, Any], task_name: str, task_params: Mapping[str, Any], recipe: SFTRecipe
) -> str:
    """What the request changes against the shipped model, e.g. ``max_digits=6 (shipped: 4)``."""
    want = {
        **_full_task_params(task_name, task_params),
        **_flat(dataclasses.asdict(recipe.with_task_hints(task_name))),
    }
    have = {
        **_full_task_params(task_name, shipped.get("task_params", {})),
        **_flat(shipped.get("recipe", {})),
    }
    diffs = [f"{k}={want[k]!r} (shipped: {have.get(k)!r})" for k in sorted(want) if want[k] != have.get(k)]
    return ", ".join(diffs) or "the build code's version"


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def resolve_base_model(
    task_name: str,
    task_params: Mapping[str, Any],
    recipe: SFTRecipe | None = None,
    *,
    base: str = "shipped",
    name: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    tracking_uri: str | None = DEFAULT_TRACKING_URI,
    max_seconds: float = 1800.0,
    say: Callable[[str], None] = print,
) -> ResolvedBase:
    """The built-in model for a run: the shipped ``models/<name>`` (default: the task's name; a teacher's is
    :func:`teacher_name`), verified, when ``base='shipped'`` and it was built from exactly this task, these
    parameters and this recipe; otherwise a locally built one (cached), after one line through ``say`` saying
    why. A shipped model whose files fail their checksums is an error, never rebuilt."""
    recipe = recipe or SFTRecipe()
    shipped = SHIPPED_DIR / (name or task_name)
    if base == "shipped":
        if not shipped.exists():
            say(
                f"quadrl: no shipped model {shipped.name} for task '{task_name}' ({shipped}): "
                "building one locally (cached)"
            )
        else:
            meta = load_metadata(shipped) if (shipped / METADATA_FILE).is_file() else {}
            if meta.get("key") == base_model_key(task_name, task_params, recipe):
                return ResolvedBase(shipped, f"shipped:{verify_shipped(shipped)[:16]}")
            if not meta:
                verify_shipped(shipped)  # raises: the metadata is missing
            say(
                f"quadrl: the run asks for another base model than the shipped {shipped.name} "
                f"({_differences(meta, task_name, task_params, recipe)}): building one locally (cached)"
            )
    elif base != "build":
        raise ValueError(f"base must be 'shipped' or 'build', got {base!r}")
    path = ensure_base_model(
        task_name,
        task_params,
        recipe,
        cache_dir=cache_dir,
        tracking_uri=tracking_uri,
        max_seconds=max_seconds,
    )
    return ResolvedBase(path, f"built:{path.name}")
