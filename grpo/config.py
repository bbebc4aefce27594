"""Structured configs. Hydra refuses unknown keys against these dataclasses; :func:`validate` refuses values out
of range. Both run before any model is loaded. The YAML tree under ``conf/`` mirrors these groups."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from hydra.core.config_store import ConfigStore

from grpo import checks as check
from grpo.benchmark import BenchmarkConfig, validate_suite
from grpo.checks import ConfigError
from grpo.entropy_split import EntropySplit
from grpo.loss import KLEstimator, LossAggregation
from grpo.optimizer import OptimizerName
from runrecord import DEFAULT_TRACKING_URI

Schedule = Literal["constant", "linear", "cosine"]
ModelSource = Literal["builtin", "local"]
BaseChoice = Literal["shipped", "build"]
DType = Literal["auto", "float32", "bfloat16", "float16"]
ChatTemplate = Literal["auto", "never"]
AdvantageSource = Literal["reward", "teacher"]
TeacherSource = Literal["builtin", "local"]
RolloutEngineName = Literal["native", "vllm"]
TisLevel = Literal["off", "token", "sequence"]


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a peft LoRA adapter instead of all weights; the KL reference is then the base with adapter off."""
    r: int = 8
    """LoRA rank."""
    alpha: int = 16
    """LoRA scaling numerator (scale = alpha / r)."""
    dropout: float = 0.0
    """Dropout on the LoRA branch (0 keeps the update deterministic given the seed)."""
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    """Module names to adapt (peft target_modules); ["all-linear"] adapts every linear layer."""


@dataclass
class ModelConfig:
    source: str = "builtin"
    """'builtin': the tiny base model quadrl pre-trains on the task (cached); 'local': a Hugging Face directory."""
    path: str | None = None
    """Local model directory (source=local). Loaded with AutoModelForCausalLM / AutoTokenizer, never downloaded."""
    device: str = "auto"
    """'auto' (CUDA if present, else CPU), 'cpu', 'cuda', 'cuda:1', 'mps'."""
    dtype: str = "auto"
    """'auto' (bfloat16 on CUDA, float32 on CPU), 'float32', 'bfloat16', 'float16'."""
    chat_template: str = "auto"
    """'auto': use the tokenizer's chat template when it has one; 'never': feed the raw prompt."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapter settings (full fine-tuning when lora.enabled is false)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (large models)."""
    base: str = "shipped"
    """source=builtin: 'shipped' loads the base model the repository ships for the task (models/<task>, checksums
    verified) when the run asks for exactly what it was built from, else builds one; 'build' always builds
    (cached in ~/.cache/quadrl)."""
    base_seed: int = 0
    """Seed of the built-in base model's pre-training (source=builtin)."""
    base_max_seconds: float = 600.0
    """Time budget for pre-training the built-in base model into its partial-accuracy band."""


@dataclass
class TeacherConfig:
    """The teacher of on-policy distillation (``algo.advantage=teacher``, preset ``algo=opd``)."""

    source: str = "builtin"
    """'builtin': the built-in teacher for the task -- the base model's architecture, seed and SFT recipe trained
    further, until its greedy test accuracy reaches ``min_accuracy`` (built once, cached like the base model);
    'local': a Hugging Face directory (``path``) whose tokenizer must be the policy's."""
    path: str | None = None
    """Local teacher directory (source=local); never downloaded."""
    min_accuracy: float = 0.9
    """source=builtin: greedy test accuracy the built-in teacher's SFT runs until (its band is [min_accuracy, 1]);
    in (0, 1)."""


@dataclass
class AlgoConfig:
    name: str = "grpo"
    """Preset name, for the record: grpo | dapo | dr_grpo."""
    loss_aggregation: str = "seq_mean_token_mean"
    """seq_mean_token_mean (GRPO) | token_mean (DAPO) | seq_mean_token_sum_norm (Dr. GRPO)."""
    scale_adv_by_std: bool = True
    """Divide group-centred rewards by the group std (False in Dr. GRPO)."""
    group_size: int = 8
    """G: responses sampled per prompt."""
    prompts_per_step: int = 16
    """Prompts per rollout batch (the batch holds prompts_per_step * group_size responses)."""
    eps_low: float = 0.2
    """Lower clip range: rho >= 1 - eps_low."""
    eps_high: float = 0.2
    """Upper clip range: rho <= 1 + eps_high (DAPO clip-higher: 0.28)."""
    beta: float = 0.0
    """KL penalty coefficient toward the reference policy (0 = no reference forward at all)."""
    kl_estimator: str = "k3"
    """k1 (log-ratio) or k3 (exp(-x) + x - 1, non-negative)."""
    epochs: int = 1
    """Passes over each rollout batch (>1 makes later passes off-policy; old log-probs are recomputed once)."""
    minibatches: int = 1
    """Optimizer steps per epoch (the batch is split into this many minibatches of whole groups)."""
    dynamic_sampling: bool = False
    """DAPO: drop groups whose rewards are all equal and sample more prompts to refill the batch."""
    dynamic_sampling_max_rounds: int = 3
    """Extra sampling rounds allowed to refill the batch under dynamic sampling."""
    adv_eps: float = 1e-4
    """Added to the group std before dividing."""
    overlong_buffer: int = 0
    """DAPO soft overlong punishment: responses longer than max_new_tokens - overlong_buffer lose reward
    linearly, down to -overlong_penalty at max_new_tokens (grpo/advantages.py); 0 = off. The penalty shapes the
    advantages only: logged rewards, accuracy and the rewards interventions see stay the task's."""
    overlong_penalty: float = 1.0
    """Size of the overlong penalty at max_new_tokens (DAPO: 1)."""
    advantage: str = "reward"
    """'reward': group advantages of the task's verifiable rewards (GRPO, DAPO, Dr. GRPO); 'teacher': on-policy
    distillation, a_t = log pi_T(y_t|y_<t) - log pi_old(y_t|y_<t) per token (grpo/advantages.py), through the
    same surrogate and credit path; the verifier still scores every sample (logged, not trained on)."""
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    """The teacher model (advantage=teacher only)."""


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    """Sampling temperature (log-probs and entropies are those of softmax(logits / temperature))."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = off)."""
    max_new_tokens: int | None = None
    """Longest response; also Dr. GRPO's constant normaliser. null = the task's own budget (arith: 9 tokens a
    digit plus the answer, countdown 40, math_file ``task.max_new_tokens``), logged in the run's params."""


@dataclass
class RolloutConfig:
    engine: str = "native"
    """Who samples rollouts and evaluation completions: 'native' (quadrl's KV-cache sampler over the training
    model, grpo/rollout.py) or 'vllm' (a colocated in-process vLLM engine, experiments/vllm_engine.py; needs
    ``bash scripts/setup.sh --vllm``). Presets: conf/rollout/."""
    tis: str = "off"
    """Truncated importance sampling against the sampler/trainer mismatch (grpo/mismatch.py): 'off', 'token'
    (w_t = min(pi_trainer/pi_sampler, C) per token) or 'sequence' (one capped ratio of products per response).
    Acts only where the engine returns its own log-probs (vllm)."""
    tis_cap: float = 2.0
    """C, the cap on the importance ratio (TRL's default is 3.0, verl's 2.0)."""
    kv_cache_gib: int = 1
    """vLLM on CPU: KV-cache size in GiB (VLLM_CPU_KVCACHE_SPACE)."""
    gpu_memory_utilization: float = 0.3
    """vLLM on CUDA: share of GPU memory the engine may take (the trainer shares the device)."""
    sleep: bool = True
    """vLLM on CUDA: free the KV cache during the update (sleep mode level 1) and wake up before the weight
    push. Ignored on CPU, where the (small, fixed) KV cache stays allocated."""
    max_model_len: int = 0
    """vLLM's context length (prompt + response); 0 = the model's own limit, at most 4096."""


@dataclass
class OptimConfig:
    lr: float = 1e-4
    """Learning rate (peak, after warm-up) of the optimiser ``name``."""
    weight_decay: float = 0.0
    """AdamW: decoupled weight decay; SGD: L2 penalty added to the gradient (torch's SGD)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    """AdamW (beta1, beta2); unused by SGD."""
    warmup_steps: int = 0
    """Linear warm-up steps (optimizer steps)."""
    schedule: str = "constant"
    """constant | linear | cosine (decay to 0 over all optimizer steps after warm-up)."""
    grad_clip: float = 1.0
    """Max global gradient norm (<= 0 disables clipping)."""
    name: str = "adamw"
    """adamw | sgd. SGD steps lr * g, AdamW rescales each coordinate by its gradient's running RMS: the pair
    separates what a gradient says from how large a step the optimiser takes (grpo/optimizer.py)."""
    momentum: float = 0.0
    """SGD heavy-ball momentum in [0, 1) (0 = plain SGD); ignored by AdamW."""


@dataclass
class TrainConfig:
    steps: int = 200
    """Training steps (rollout + update)."""
    checkpoint_every: int = 50
    """Save a resumable checkpoint every N steps (and at the end)."""
    log_samples_every: int = 50
    """Log a table of sample completions every N steps (0 = never)."""
    logits_chunk: int = 4096
    """Response tokens (over the whole batch, padding skipped) per chunk when computing log-probs from hidden
    states: bounds the float32 [tokens, vocab] logits held at once (4096 x 150k vocab ~ 2.5 GB)."""
    threads: int = 0
    """torch intra-op threads (0 = leave torch's default). Threads change the order of float sums, so the same
    seed gives the same numbers only at the same thread count (tagged ``quadrl.threads`` on every run)."""
    deterministic: bool = False
    """torch.use_deterministic_algorithms(True) (and CUBLAS_WORKSPACE_CONFIG on CUDA): an op without a
    deterministic implementation raises instead of varying from run to run. CPU runs are reproducible on one
    machine without it; it matters on GPUs."""
    progress: bool = True
    """Show a progress bar."""
    logprob_buckets: int = 4
    """The training forward runs the batch's rows sorted by response length, in this many forwards each cut to
    its own longest row, so that short responses skip the longest one's padding (1 = one forward). Measured on
    the arith task, 128 rows: the update's forward + backward -30% CPU time (benchmarks/README.md)."""
    collective_timeout_s: float = 600.0
    """Distributed runs only (torchrun, or SLURM with several tasks): seconds a collective operation waits for the
    other ranks before it raises, so a rank that hangs cannot hold the job forever (a rank that dies is noticed at
    once: its connections close). Must exceed the longest gap between two collectives (an evaluation shard)."""


@dataclass
class EvalConfig:
    every: int = 50
    """Evaluate on the test split every N steps (0 = only at the start and the end)."""
    n_prompts: int = 200
    """Test prompts used (the first n of the fixed test split)."""
    n_samples: int = 8
    """Samples per prompt for avg@k / pass@k (0 = greedy accuracy only)."""
    pass_k: list[int] = field(default_factory=lambda: [1, 4, 8])
    """k values for the unbiased pass@k estimator (each <= n_samples)."""
    temperature: float = 1.0
    """Sampling temperature for avg@k / pass@k."""
    batch_size: int = 256
    """Sequences generated at once during evaluation."""
    suite: list[BenchmarkConfig] = field(default_factory=list)
    """Benchmarks evaluated besides the test split, each logged as ``eval/<name>/<metric>``, with their aggregate
    ``eval/suite/mean`` (grpo/suite.py); empty: none. Preset: ``+eval=paper_math`` (conf/eval/paper_math.yaml)."""
    paths: dict[str, str] = field(default_factory=dict)
    """Named local paths a suite refers to (``path: ${eval.paths.aime24}``), so that a preset's ``???`` files are
    given by name: ``eval.paths.aime24=/data/aime24.parquet``."""
    checkpoint: str | None = None
    """``quadrl-eval`` only: a training run's directory whose checkpoint is evaluated (null: the model as loaded)."""


@dataclass
class DiagnosticsConfig:
    every: int = 0
    """Per-quadrant gradient norms/cosines and log-prob change every N steps (0 = off; cheap stats always on)."""
    split: EntropySplit = field(default_factory=EntropySplit)
    """The entropy split of the per-quadrant diagnostics, unless the intervention splits tokens itself
    (``quadrant``, or a ``compose`` holding one): then its split is used, so both describe the same tokens."""
    cancellation: bool = True
    """Log gradient cancellation on the prefixes a group's responses share every step (``cancel/*``,
    grpo/cancellation.py; its cost is logged as perf/cancel_time_s)."""
    update_norm: bool = True
    """Log train/update_norm and train/update_to_grad_ratio every step (grpo/optimizer.py); costs one copy of
    the trainable parameters during the optimiser step."""


@dataclass
class TrackingConfig:
    enabled: bool = True
    """Log to MLflow."""
    uri: str = DEFAULT_TRACKING_URI
    """Tracking URI: a SQLite file (embedded, nothing to start) or http://127.0.0.1:5000 for a server."""
    experiment: str = "quadrl"
    """MLflow experiment name."""
    run_name: str | None = None
    """Run name (default: task-intervention-seed)."""
    parent_run_id: str | None = None
    """Parent (sweep) run id; set by the sweep callback for multirun jobs."""


PROBE_INFO_RULES = ("none", "top_entropy", "all")
PROBE_SPLITS = ("test", "train")


@dataclass
class ProbeConfig:
    """The credit probe (grpo/probe.py): what it measures, and ``probe.every`` in a training run. ``quadrl-probe``
    adds the keys only it reads (report folder, checkpoint, scoreboard...): ``ProbeAppConfig`` in experiments/probe.py."""

    every: int = 0
    """Training runs: probe the policy every N steps (and at step 0) and log ``probe/*`` metrics; 0 = off."""
    n_prompts: int = 16
    """Prompts probed: the first n of the task's ``split``."""
    split: str = "test"
    """Which split the prompts come from: ``test`` or ``train``."""
    group_size: int = 4
    """Responses sampled per prompt (>= 2: the quadrants need GRPO advantages, the scoreboard too)."""
    k: int = 8
    """Continuations per state for V(s_t) (>= 2). se(V^) ~ 0.5 / sqrt(k) at V = 0.5."""
    skip_tol: float = 0.01
    """Tokens sampled with 1 - pi(o_t|s_t) < skip_tol get delta = 0 without continuations (|delta_t| <= 1 - pi
    exactly); 0 = estimate V at every state. In [0, 1)."""
    info_positions: str = "top_entropy"
    """Where I_t is estimated: ``none``; ``top_entropy``: the ``info_per_response`` highest-entropy uncertain
    tokens of each response; ``all``: every uncertain token."""
    info_per_response: int = 2
    """Positions per response under ``info_positions: top_entropy``."""
    info_k: int | None = None
    """Continuations per candidate token for V(s_t, a) (>= 2); null = ``k``."""
    candidate_floor: float = 0.05
    """Candidates a at a probed position: pi(a|s_t) >= candidate_floor, in (0, 1]."""
    max_continuations: int = 100_000
    """Upper bound on the continuations one probe samples (prompt groups beyond it are dropped)."""
    batch_size: int = 256
    """Continuations sampled at once."""

    def validate(self) -> None:
        where = "probe config"
        check.integer(where, "probe.every", self.every, low=0)
        check.integer(where, "probe.n_prompts", self.n_prompts, low=1)
        check.choice(where, "probe.split", self.split, PROBE_SPLITS)
        check.integer(where, "probe.group_size", self.group_size, low=2)
        check.integer(where, "probe.k", self.k, low=2)
        check.number(where, "probe.skip_tol", self.skip_tol, low=0.0, high=1.0, high_open=True)
        check.choice(where, "probe.info_positions", self.info_positions, PROBE_INFO_RULES)
        check.integer(where, "probe.info_per_response", self.info_per_response, low=1)
        if self.info_k is not None:
            check.integer(where, "probe.info_k", self.info_k, low=2)
        check.number(where, "probe.candidate_floor", self.candidate_floor, low=0.0, high=1.0, low_open=True)
        check.integer(where, "probe.max_continuations", self.max_continuations, low=1)
        check.integer(where, "probe.batch_size", self.batch_size, low=1)

    @property
    def candidate_k(self) -> int:
        return self.k if self.info_k is None else self.info_k


@dataclass
class QuadrlConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model, where it runs, LoRA or full fine-tuning."""
    task: Any = field(default_factory=lambda: {"name": "arith"})
    """Task name and its parameters (validated by the task registry)."""
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    """The GRPO objective and its update schedule (presets: conf/algo/)."""
    intervention: Any = field(default_factory=lambda: {"name": "none"})
    """Intervention name and its parameters (validated by the intervention registry)."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How training rollouts are sampled."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Which engine samples (native or vLLM) and the mismatch correction (presets: conf/rollout/)."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimiser (AdamW or SGD), learning-rate schedule, gradient clipping."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Loop length, checkpoints, logging cadence."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation on the task's test split."""
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
    """Per-quadrant statistics and (optionally) gradient diagnostics."""
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """MLflow tracking."""
    report: Any = field(default_factory=dict)
    """How ``quadrl-study`` reports a preset's sweep (control, pairs, metric): the preset's ``report:`` block in
    conf/experiment/, checked by the study app (experiments/study.py: ``StudyReport``); training ignores it."""
    seed: int = 0
    """Seeds sampling, data order, LoRA init and intervention randomness."""
    run_dir: str | None = None
    """Checkpoints and outputs; default: Hydra's job output directory. Re-running in it resumes."""
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    """The counterfactual credit probe: ``probe.every`` in training runs, and ``quadrl-probe`` (grpo/probe.py)."""


def register_configs() -> None:
    ConfigStore.instance().store(name="quadrl_schema", node=QuadrlConfig)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


_CHOICES = {
    "algo.loss_aggregation": LossAggregation,
    "algo.kl_estimator": KLEstimator,
    "optim.schedule": Schedule,
    "optim.name": OptimizerName,
    "model.source": ModelSource,
    "model.base": BaseChoice,
    "model.dtype": DType,
    "model.chat_template": ChatTemplate,
    "algo.advantage": AdvantageSource,
    "algo.teacher.source": TeacherSource,
    "rollout.engine": RolloutEngineName,
    "rollout.tis": TisLevel,
}
"""Keys whose value must be one of a Literal type's values (the types the code that uses them declares)."""


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:[0-9]+)?")


def _check_device(device: str) -> None:
    """The device must be spelled right and exist here: finding out after a base-model build costs minutes."""
    import torch

    _check(
        _DEVICE.fullmatch(device) is not None,
        f"model.device={device!r} is not one of 'auto', 'cpu', 'mps', 'cuda', 'cuda:<index>'",
    )
    if device.startswith("cuda"):
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.partition(":")[2] or 0)
        _check(index < count, f"model.device={device!r} but this machine has {count} CUDA device(s)")
    if device == "mps":
        _check(torch.backends.mps.is_available(), "model.device='mps' but MPS is not available here")


def _check_model_dir(key: str, path: str | None, hint: str) -> None:
    _check(path is not None, f"{key} is required: {hint}")
    where = Path(str(path)).expanduser()
    _check(where.is_dir(), f"{key}={path!r}: no such directory (models are never downloaded)")
    _check((where / "config.json").is_file(), f"{key}={path!r} has no config.json: not a model dir")


def _validate_distillation(a: AlgoConfig) -> None:
    """On-policy distillation trains on the teacher's log-probs: reward shaping has nothing to act on there."""
    _check(
        not a.dynamic_sampling,
        "algo.dynamic_sampling filters groups by reward variance; it has no meaning with algo.advantage=teacher",
    )
    _check(
        a.overlong_buffer == 0,
        "algo.overlong_buffer shapes reward advantages; it has no meaning with algo.advantage=teacher",
    )
    t = a.teacher
    _check(
        0 < t.min_accuracy < 1,
        f"algo.teacher.min_accuracy must be in (0, 1), got {t.min_accuracy}",
    )
    if t.source == "local":
        _check_model_dir(
            "algo.teacher.path", t.path, "algo.teacher.source=local needs a local Hugging Face directory"
        )


def validate(cfg: QuadrlConfig) -> None:
    """Refuse out-of-range values with a message naming the key. Cheap: no model, no data."""
    for key, kind in _CHOICES.items():
        value: Any = cfg
        for part in key.split("."):
            value = getattr(value, part)
        choices = get_args(kind)
        _check(value in choices, f"{key}={value!r} is not one of {list(choices)}")
    a, s, o, t, e = cfg.algo, cfg.sampling, cfg.optim, cfg.train, cfg.eval
    why = " (group advantages need 2 samples)" if a.advantage == "reward" else ""  # distillation needs 1
    _check(
        a.group_size >= (2 if why else 1),
        f"algo.group_size must be >= {2 if why else 1}{why}, got {a.group_size}",
    )
    _check(a.prompts_per_step >= 1, f"algo.prompts_per_step must be >= 1, got {a.prompts_per_step}")
    _check(0 <= a.eps_low < 1, f"algo.eps_low must be in [0, 1), got {a.eps_low}")
    _check(a.eps_high >= 0, f"algo.eps_high must be >= 0, got {a.eps_high}")
    _check(a.beta >= 0, f"algo.beta must be >= 0, got {a.beta}")
    _check(a.epochs >= 1, f"algo.epochs must be >= 1, got {a.epochs}")
    _check(
        a.dynamic_sampling_max_rounds >= 0,
        f"algo.dynamic_sampling_max_rounds must be >= 0, got {a.dynamic_sampling_max_rounds}",
    )
    r = cfg.rollout
    _check(r.tis_cap >= 1.0, f"rollout.tis_cap must be >= 1, got {r.tis_cap}")
    _check(r.kv_cache_gib >= 1, f"rollout.kv_cache_gib must be >= 1, got {r.kv_cache_gib}")
    _check(0 < r.gpu_memory_utilization < 1, "rollout.gpu_memory_utilization must be in (0, 1)")
    _check(r.max_model_len >= 0, f"rollout.max_model_len must be >= 0, got {r.max_model_len}")
    _check(a.adv_eps >= 0, f"algo.adv_eps must be >= 0, got {a.adv_eps}")
    _check(a.overlong_buffer >= 0, f"algo.overlong_buffer must be >= 0, got {a.overlong_buffer}")
    _check(
        s.max_new_tokens is None or a.overlong_buffer <= s.max_new_tokens,
        f"algo.overlong_buffer={a.overlong_buffer} exceeds sampling.max_new_tokens={s.max_new_tokens}",
    )
    _check(a.overlong_penalty >= 0, f"algo.overlong_penalty must be >= 0, got {a.overlong_penalty}")
    _check(
        1 <= a.minibatches <= a.prompts_per_step,
        f"algo.minibatches must be in [1, prompts_per_step={a.prompts_per_step}], got {a.minibatches}",
    )
    _check(s.temperature > 0, f"sampling.temperature must be > 0, got {s.temperature}")
    _check(0 < s.top_p <= 1, f"sampling.top_p must be in (0, 1], got {s.top_p}")
    _check(
        s.max_new_tokens is None or s.max_new_tokens >= 1,
        f"sampling.max_new_tokens must be >= 1 or null, got {s.max_new_tokens}",
    )
    _check(o.lr > 0 and math.isfinite(o.lr), f"optim.lr must be a positive number, got {o.lr}")
    _check(
        len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas),
        f"optim.betas must be two values in [0,1), got {o.betas}",
    )
    _check(o.warmup_steps >= 0, f"optim.warmup_steps must be >= 0, got {o.warmup_steps}")
    _check(o.weight_decay >= 0, f"optim.weight_decay must be >= 0, got {o.weight_decay}")
    _check(0 <= o.momentum < 1, f"optim.momentum must be in [0, 1), got {o.momentum}")
    _check(not math.isnan(o.grad_clip), "optim.grad_clip must be a number (<= 0 disables clipping), got nan")
    _check(t.steps >= 0, f"train.steps must be >= 0, got {t.steps}")
    _check(t.checkpoint_every >= 1, f"train.checkpoint_every must be >= 1, got {t.checkpoint_every}")
    _check(t.logits_chunk >= 1, f"train.logits_chunk must be >= 1, got {t.logits_chunk}")
    _check(t.logprob_buckets >= 1, f"train.logprob_buckets must be >= 1, got {t.logprob_buckets}")
    _check(t.log_samples_every >= 0, f"train.log_samples_every must be >= 0, got {t.log_samples_every}")
    _check(t.threads >= 0, f"train.threads must be >= 0, got {t.threads}")
    _check(
        e.every >= 0 and e.n_prompts >= 1,
        f"eval.every must be >= 0 and eval.n_prompts >= 1, got {e.every}, {e.n_prompts}",
    )
    _check(e.n_samples >= 0, f"eval.n_samples must be >= 0, got {e.n_samples}")
    _check(e.temperature > 0, f"eval.temperature must be > 0, got {e.temperature}")
    _check(e.batch_size >= 1, f"eval.batch_size must be >= 1, got {e.batch_size}")
    _check(
        all(1 <= k <= e.n_samples for k in e.pass_k) or e.n_samples == 0,
        f"eval.pass_k values must be in [1, eval.n_samples={e.n_samples}], got {list(e.pass_k)}",
    )
    validate_suite(e.suite)
    if a.advantage == "teacher":
        _validate_distillation(a)
    _check(cfg.diagnostics.every >= 0, f"diagnostics.every must be >= 0, got {cfg.diagnostics.every}")
    cfg.diagnostics.split.validate("diagnostics")
    lora = cfg.model.lora
    _check(
        lora.r >= 1 and lora.alpha > 0 and 0 <= lora.dropout < 1, f"model.lora values out of range: {lora}"
    )
    _check(len(lora.target_modules) >= 1, "model.lora.target_modules must name at least one module")
    _check(
        cfg.model.base_max_seconds > 0,
        f"model.base_max_seconds must be > 0, got {cfg.model.base_max_seconds}",
    )
    _check_device(cfg.model.device)
    cfg.probe.validate()
    if cfg.model.source == "local":
        _check_model_dir(
            "model.path", cfg.model.path, "model.source=local needs a local Hugging Face directory"
        )
