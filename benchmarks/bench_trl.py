"""quadrl's GRPO step against TRL's GRPOTrainer on the same tiny model, prompts, reward and hyper-parameters.

    .venv/bin/python benchmarks/bench_trl.py                  # untrained tiny model (build_tiny_model)
    .venv/bin/python benchmarks/bench_trl.py --model base     # the shipped pre-trained arith base model
    .venv/bin/python benchmarks/bench_trl.py --model DIR      # any local Hugging Face model directory

Both frameworks run in this one process and alternate: TRL warm-up, quadrl warm-up, then R rounds of
(quadrl N steps, TRL N steps). TRL drives the loop (``trainer.train(max_steps=W + R*N)``); quadrl's blocks run
inside a TRL callback at the step boundaries, so neither framework is rebuilt between rounds and both see the
same machine state. Warm-up steps are discarded.

One *step* = sample 16 prompts x G=8 responses (temperature 1, max 48 new tokens), score them with the arith
verifier, group-normalised advantages, one on-policy update (GRPO per-sequence token mean, clip 0.2, no KL),
AdamW lr 1e-4, grad-clip 1. Step k of each framework uses the same 16 prompts (quadrl's own data order; TRL reads
them unshuffled from a Dataset, with ``<bos>`` prepended since quadrl prepends it too).

Tokens: response tokens up to and including the first EOS (all ``max_new_tokens`` when no EOS), i.e. the sum
of quadrl's ``response_mask`` and of TRL's ``completion_mask`` (TRL hands exactly those ids to the reward
function, where they are counted). tokens/s = tokens of the timed steps / wall time of the timed steps.

Step wall time: quadrl = the ``Trainer.step`` call; TRL = the interval between consecutive ``on_step_end``
callbacks (data loading, generation, scoring, loss, backward, optimizer, TRL's own bookkeeping), with the
quadrl blocks excluded. Generation time: the sampling call alone (quadrl ``grpo.rollout.sample``, TRL
``_generate_single_turn``), wrapped here; reward time: the verifier calls.

Memory: ``--memory`` (on by default) runs each framework alone in a child process for a few steps and reports
peak RSS (``VmHWM`` of /proc/self/status, else ``resource.getrusage``) after imports, after set-up and after the steps.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def peak_rss_mb() -> float:
    """Peak RSS of this process (MB). Linux's VmHWM belongs to the current address space; ``ru_maxrss`` is not
    usable in a child: it starts at the parent's RSS at fork time and survives exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # KiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


@dataclass
class Settings:
    group_size: int = 8
    prompts_per_step: int = 16
    max_new_tokens: int = 48
    temperature: float = 1.0
    lr: float = 1e-4
    threads: int = 2
    seed: int = 0
    task_params: dict[str, Any] = field(default_factory=dict)

    @property
    def batch(self) -> int:
        return self.group_size * self.prompts_per_step


@dataclass
class StepRecord:
    framework: str
    index: int
    warm: bool
    seconds: float
    tokens: int
    gen_seconds: float
    reward_seconds: float
    reward_mean: float
    cpu_seconds: float = 0.0
    """This process's CPU time over the step (all threads): with one thread, robust to other processes' load."""
    gen_cpu_seconds: float = 0.0


class Timer:
    """Accumulates the wall time of the calls it wraps."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.cpu_seconds = 0.0

    def wrap(self, fn):
        def timed(*args, **kwargs):
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - t0
                self.cpu_seconds += time.process_time() - c0

        return timed


# ------------------------------------------------------------------------------------------------ model


def prepare_model(spec: str, tmp: Path) -> Path:
    """'tiny': a fresh build_tiny_model (seed 0) saved to ``tmp``; 'base': the arith base model; else a dir."""
    if spec == "tiny":
        from experiments.base_model import build_tiny_model
        from experiments.tasks.tokenizer import build_char_tokenizer

        tokenizer = build_char_tokenizer()
        model = build_tiny_model(tokenizer, seed=0)
        out = tmp / "tiny_model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return out
    if spec == "base":
        from experiments.base_model import resolve_base_model

        # the shipped models/arith (verified), or a local build when the shipped one does not match the recipe
        return resolve_base_model("arith", {}, tracking_uri=None).path
    path = Path(spec).expanduser()
    if not (path / "config.json").is_file():
        raise SystemExit(f"--model {spec!r}: not a Hugging Face model directory (no config.json)")
    return path


# ----------------------------------------------------------------------------------------------- quadrl


class QuadrlRunner:
    def __init__(self, model_dir: Path, s: Settings, run_dir: Path):
        import grpo.trainer as trainer_module
        import interventions  # noqa: F401  (registers every method)
        from experiments.tasks import make_task
        from experiments.tracking import Tracker
        from grpo.config import QuadrlConfig, validate
        from grpo.credit import build_intervention
        from grpo.instruments import standard_instruments
        from grpo.model import load_policy
        from grpo.trainer import Trainer

        cfg = QuadrlConfig()
        cfg.seed = s.seed
        cfg.model.device, cfg.model.dtype = "cpu", "float32"
        cfg.task = {"name": "arith", **s.task_params}
        cfg.algo.group_size, cfg.algo.prompts_per_step = s.group_size, s.prompts_per_step
        cfg.algo.beta, cfg.algo.epochs, cfg.algo.minibatches = 0.0, 1, 1
        cfg.algo.loss_aggregation, cfg.algo.eps_low, cfg.algo.eps_high = "seq_mean_token_mean", 0.2, 0.2
        cfg.sampling.temperature, cfg.sampling.top_p = s.temperature, 1.0
        cfg.sampling.max_new_tokens = s.max_new_tokens
        cfg.optim.lr, cfg.optim.grad_clip, cfg.optim.schedule, cfg.optim.warmup_steps = (
            s.lr,
            1.0,
            "constant",
            0,
        )
        cfg.train.log_samples_every, cfg.train.progress, cfg.diagnostics.every = 0, False, 0
        cfg.tracking.enabled = False
        validate(cfg)
        self.task = make_task("arith", **s.task_params)
        self.reward_timer, self.gen_timer = Timer(), Timer()
        self.task.reward = self.reward_timer.wrap(
            self.task.reward
        )  # instance attribute: this task object only
        # time the sampling call alone (the trainer module's reference to grpo.rollout.sample)
        if not getattr(trainer_module.sample, "_bench_wrapped", False):
            wrapped = self.gen_timer.wrap(trainer_module.sample)
            wrapped._bench_wrapped = True  # type: ignore[attr-defined]
            trainer_module.sample = wrapped
        policy = load_policy(cfg.model, model_dir, need_reference=False, seed=s.seed)
        tracker = Tracker(cfg.tracking.uri, cfg.tracking.experiment, enabled=False)
        t0 = time.perf_counter()
        none = build_intervention({"name": "none"})
        measure = standard_instruments(cfg, none, policy, self.task)  # what a quadrl-train run measures
        self.trainer = Trainer(cfg, policy, self.task, none, tracker, run_dir, instruments=measure)
        self.init_seconds = time.perf_counter() - t0
        self.s = s
        self.next_index = 0

    def prompts(self, n_steps: int) -> list[Any]:
        """The examples quadrl's first ``n_steps`` steps will use (its seeded order; the trainer is not advanced)."""
        t = self.trainer
        saved = (t.data_epoch, t.data_index)
        out = t.next_prompts(n_steps * self.s.prompts_per_step)
        t.data_epoch, t.data_index = saved
        return out

    def run(self, n: int, warm: bool, records: list[StepRecord]) -> None:
        for _ in range(n):
            gen0, rew0 = self.gen_timer.seconds, self.reward_timer.seconds
            gen_cpu0 = self.gen_timer.cpu_seconds
            t0, c0 = time.perf_counter(), time.process_time()
            metrics = self.trainer.step(self.next_index)
            dt, dc = time.perf_counter() - t0, time.process_time() - c0
            tokens = round(metrics["train/response_len"] * self.s.batch)  # = response_mask.sum()
            records.append(
                StepRecord(
                    "quadrl",
                    self.next_index,
                    warm,
                    dt,
                    tokens,
                    self.gen_timer.seconds - gen0,
                    self.reward_timer.seconds - rew0,
                    metrics["train/reward_mean"],
                    dc,
                    self.gen_timer.cpu_seconds - gen_cpu0,
                )
            )
            self.next_index += 1


# -------------------------------------------------------------------------------------------------- TRL


class TrlRunner:
    def __init__(
        self,
        model_dir: Path,
        s: Settings,
        examples: list[Any],
        max_steps: int,
        out_dir: Path,
        callbacks: list[Any] | None = None,
    ):
        import torch
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from trl import GRPOConfig, GRPOTrainer

        from experiments.tasks import make_task
        from grpo.task import Example

        task = make_task("arith", **s.task_params)
        self.reward_timer, self.gen_timer = Timer(), Timer()
        self.tokens = 0
        self.reward_sum, self.reward_n = 0.0, 0
        runner = self

        def arith_reward(prompts, completions, completion_ids, answer, **_: Any) -> list[float]:
            t0 = time.perf_counter()
            rewards = [
                task.reward(Example(prompt="", answer=a), c) for c, a in zip(completions, answer, strict=True)
            ]
            # TRL's completion_ids are cut after the first EOS (EOS kept): the same count as quadrl's response_mask
            runner.tokens += sum(len(ids) for ids in completion_ids)
            runner.reward_sum += sum(rewards)
            runner.reward_n += len(rewards)
            runner.reward_timer.seconds += time.perf_counter() - t0
            return rewards

        tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
        bos = tokenizer.bos_token or ""
        dataset = Dataset.from_list([{"prompt": bos + ex.prompt, "answer": ex.answer} for ex in examples])
        model = AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32, local_files_only=True
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            args = GRPOConfig(
                output_dir=str(out_dir),
                per_device_train_batch_size=s.batch,
                num_generations=s.group_size,
                generation_batch_size=s.batch,  # one generation batch of 16 prompts x G per optimizer step
                gradient_accumulation_steps=1,
                max_completion_length=s.max_new_tokens,
                temperature=s.temperature,
                top_p=1.0,
                top_k=0,
                learning_rate=s.lr,
                lr_scheduler_type="constant",
                warmup_steps=0,
                weight_decay=0.0,
                max_grad_norm=1.0,
                beta=0.0,
                num_iterations=1,
                epsilon=0.2,
                loss_type="grpo",  # per-sequence token mean, then mean: quadrl's seq_mean_token_mean
                scale_rewards="group",
                max_steps=max_steps,
                use_cpu=True,
                bf16=False,
                fp16=False,
                report_to="none",
                logging_strategy="no",
                save_strategy="no",
                disable_tqdm=True,
                shuffle_dataset=False,
                log_completions=False,
                seed=s.seed,
                dataloader_num_workers=0,
            )
            self.trainer = GRPOTrainer(
                model=model,
                reward_funcs=arith_reward,
                args=args,
                train_dataset=dataset,
                processing_class=tokenizer,
                callbacks=callbacks,
            )
        # time the sampling call alone
        self.trainer._generate_single_turn = self.gen_timer.wrap(self.trainer._generate_single_turn)

    def train(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.trainer.train()


def make_alternator(
    s: Settings,
    quadrl: QuadrlRunner,
    warmup: int,
    steps: int,
    rounds: int,
    records: list[StepRecord],
    profiler: cProfile.Profile | None,
):
    """A TrainerCallback that times TRL's steps and runs quadrl's blocks at the round boundaries."""
    import torch
    from transformers import TrainerCallback

    class Alternate(TrainerCallback):
        def __init__(self) -> None:
            self.trl: TrlRunner | None = None
            self.mark = self.mark_cpu = 0.0
            self.last = (0, 0.0, 0.0, 0.0, 0, 0.0)

        def snapshot(self) -> tuple[int, float, float, float, int, float]:
            t = self.trl
            assert t is not None
            return (
                t.tokens,
                t.gen_timer.seconds,
                t.reward_timer.seconds,
                t.reward_sum,
                t.reward_n,
                t.gen_timer.cpu_seconds,
            )

        def quadrl_block(self, first: bool) -> None:
            torch.set_num_threads(s.threads)  # in case anything in TRL's set-up changed it
            if first and warmup:
                quadrl.run(warmup, True, records)
            if profiler is not None:
                profiler.enable()
            quadrl.run(steps, False, records)
            if profiler is not None:
                profiler.disable()

        def on_train_begin(self, args, state, control, **kwargs):
            torch.set_num_threads(s.threads)
            if warmup == 0:
                self.quadrl_block(first=True)
            self.last = self.snapshot()
            self.mark, self.mark_cpu = time.perf_counter(), time.process_time()

        def on_step_end(self, args, state, control, **kwargs):
            now, now_cpu = time.perf_counter(), time.process_time()
            step = state.global_step  # 1-based, after this step's update
            snap = self.snapshot()
            tokens, gen, rew, rsum, rn, gen_cpu = (a - b for a, b in zip(snap, self.last, strict=True))
            records.append(
                StepRecord(
                    "trl",
                    step - 1,
                    step <= warmup,
                    now - self.mark,
                    int(tokens),
                    gen,
                    rew,
                    rsum / max(1, rn),
                    now_cpu - self.mark_cpu,
                    gen_cpu,
                )
            )
            done_timed = step - warmup
            if step == warmup and warmup > 0:
                self.quadrl_block(first=True)
            elif done_timed > 0 and done_timed % steps == 0 and done_timed < rounds * steps:
                self.quadrl_block(first=False)
            self.last = self.snapshot()
            self.mark, self.mark_cpu = time.perf_counter(), time.process_time()

    return Alternate()


# ------------------------------------------------------------------------------------------- reporting


def summarise(records: list[StepRecord], framework: str) -> dict[str, float]:
    timed = [r for r in records if r.framework == framework and not r.warm]
    if not timed:
        return {}
    seconds = sum(r.seconds for r in timed)
    tokens = sum(r.tokens for r in timed)
    gen = sum(r.gen_seconds for r in timed)
    return {
        "steps": len(timed),
        "step_s_mean": seconds / len(timed),
        "step_s_median": statistics.median(r.seconds for r in timed),
        "step_s_min": min(r.seconds for r in timed),
        "tokens_per_step": tokens / len(timed),
        "tokens_per_s": tokens / seconds,
        "gen_s_mean": gen / len(timed),
        "gen_tokens_per_s": tokens / gen if gen > 0 else float("nan"),
        "reward_s_mean": sum(r.reward_seconds for r in timed) / len(timed),
        "rest_s_mean": (seconds - gen - sum(r.reward_seconds for r in timed)) / len(timed),
        "reward_mean": sum(r.reward_mean for r in timed) / len(timed),
        "cpu_step_s_mean": sum(r.cpu_seconds for r in timed) / len(timed),
        "cpu_tokens_per_s": tokens / sum(r.cpu_seconds for r in timed),
        "cpu_gen_s_mean": sum(r.gen_cpu_seconds for r in timed) / len(timed),
        "cpu_rest_s_mean": sum(r.cpu_seconds - r.gen_cpu_seconds for r in timed) / len(timed),
    }


def round_ratios(records: list[StepRecord], steps: int) -> list[float]:
    """quadrl/TRL tokens/s within each alternation round (robust to load that drifts between rounds)."""
    out = []
    q = [r for r in records if r.framework == "quadrl" and not r.warm]
    t = [r for r in records if r.framework == "trl" and not r.warm]
    for start in range(0, min(len(q), len(t)), steps):
        qa, ta = q[start : start + steps], t[start : start + steps]
        q_rate = sum(r.tokens for r in qa) / sum(r.seconds for r in qa)
        t_rate = sum(r.tokens for r in ta) / sum(r.seconds for r in ta)
        out.append(q_rate / t_rate)
    return out


def print_table(q: dict[str, float], t: dict[str, float], mem: dict[str, dict[str, float]] | None) -> None:
    rows = [
        ("timed steps", "steps", "{:.0f}"),
        ("step wall time, mean (s)", "step_s_mean", "{:.3f}"),
        ("step wall time, median (s)", "step_s_median", "{:.3f}"),
        ("response tokens / step", "tokens_per_step", "{:.0f}"),
        ("response tokens / s (whole step)", "tokens_per_s", "{:.0f}"),
        ("generation time / step (s)", "gen_s_mean", "{:.3f}"),
        ("generation tokens / s", "gen_tokens_per_s", "{:.0f}"),
        ("reward time / step (s)", "reward_s_mean", "{:.4f}"),
        ("rest of step (update, overhead) (s)", "rest_s_mean", "{:.3f}"),
        ("mean reward", "reward_mean", "{:.3f}"),
        ("CPU time / step (s)", "cpu_step_s_mean", "{:.3f}"),
        ("response tokens / CPU s", "cpu_tokens_per_s", "{:.0f}"),
        ("generation CPU time / step (s)", "cpu_gen_s_mean", "{:.3f}"),
        ("rest of step, CPU time (s)", "cpu_rest_s_mean", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows) + 2
    print(f"\n{'':<{width}}{'quadrl':>12}{'TRL':>12}{'quadrl/TRL':>12}")
    for label, key, fmt in rows:
        a, b = q.get(key, float("nan")), t.get(key, float("nan"))
        ratio = a / b if b else float("nan")
        print(f"{label:<{width}}{fmt.format(a):>12}{fmt.format(b):>12}{ratio:>12.2f}")
    if mem:
        for label, key in (
            ("peak RSS after imports (MB)", "after_imports"),
            ("peak RSS after set-up (MB)", "after_setup"),
            ("peak RSS after steps (MB)", "after_steps"),
        ):
            a, b = mem.get("quadrl", {}).get(key, float("nan")), mem.get("trl", {}).get(key, float("nan"))
            print(f"{label:<{width}}{a:>12.0f}{b:>12.0f}{a / b:>12.2f}")
    print()
    print(f"tokens/s ratio quadrl/TRL:   {q['tokens_per_s'] / t['tokens_per_s']:.2f}x   (goal >= 2x)")
    cpu_ratio = q["cpu_tokens_per_s"] / t["cpu_tokens_per_s"]
    print(f"tokens per CPU-second ratio: {cpu_ratio:.2f}x   (with 1 thread: robust to other processes' load)")
    print(f"step-time ratio TRL/quadrl:  {t['step_s_mean'] / q['step_s_mean']:.2f}x   (mean step wall time)")


# ------------------------------------------------------------------------------------------------- main


def quadrl_order(s: Settings, n_steps: int) -> list[Any]:
    """The prompts of quadrl's first ``n_steps`` steps without building its Trainer (mirrors
    ``Trainer._epoch_order``; the main run checks the two agree)."""
    import torch

    from experiments.tasks import make_task

    train = make_task("arith", **s.task_params).train()
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(s.seed * 1_000_003))
    return [train[i] for i in order[: n_steps * s.prompts_per_step].tolist()]


def memory_child(framework: str, model_dir: Path, s: Settings, n_steps: int) -> dict[str, float]:
    """Run one framework alone for ``n_steps`` (in a fresh process) and report its peak RSS."""
    import torch

    torch.set_num_threads(s.threads)
    import transformers  # noqa: F401

    import grpo.trainer  # noqa: F401

    if framework == "trl":
        import trl  # noqa: F401
    out = {"after_imports": peak_rss_mb()}
    with tempfile.TemporaryDirectory(prefix="bench_trl_mem_") as tmp:
        records: list[StepRecord] = []
        if framework == "quadrl":
            quadrl = QuadrlRunner(model_dir, s, Path(tmp) / "quadrl")
            out["after_setup"] = peak_rss_mb()
            quadrl.run(n_steps, False, records)
        else:
            runner = TrlRunner(model_dir, s, quadrl_order(s, n_steps), n_steps, Path(tmp) / "trl")
            out["after_setup"] = peak_rss_mb()
            runner.train()
        out["after_steps"] = peak_rss_mb()
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="tiny",
        help="'tiny' (fresh build_tiny_model), 'base' (the shipped arith base "
        "model) or a local Hugging Face model directory",
    )
    p.add_argument("--steps", type=int, default=5, help="timed steps per framework per round (N)")
    p.add_argument("--rounds", type=int, default=3, help="alternation rounds (R)")
    p.add_argument("--warmup", type=int, default=2, help="discarded warm-up steps per framework (W)")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--n-train", type=int, default=None, help="arith n_train (default: the task's own, 1,000,000)"
    )
    p.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure peak RSS of each framework alone in a child process",
    )
    p.add_argument("--memory-steps", type=int, default=3)
    p.add_argument(
        "--profile",
        type=str,
        default=None,
        metavar="FILE",
        help="cProfile quadrl's timed steps; write the stats to FILE and print the top entries",
    )
    p.add_argument("--json", type=str, default=None, metavar="FILE", help="write all results as JSON")
    p.add_argument("--child", choices=["quadrl", "trl"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=str, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    s = Settings(
        group_size=args.group_size,
        prompts_per_step=args.prompts,
        max_new_tokens=args.max_new_tokens,
        lr=args.lr,
        threads=args.threads,
        seed=args.seed,
        task_params={} if args.n_train is None else {"n_train": args.n_train},
    )

    import torch

    torch.set_num_threads(s.threads)
    if args.child:
        print(
            "BENCH_MEMORY " + json.dumps(memory_child(args.child, Path(args.model_dir), s, args.memory_steps))
        )
        return

    t_start = time.perf_counter()
    load_start = os.getloadavg()[0]
    import transformers
    import trl

    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), transformers {transformers.__version__}, "
        f"trl {trl.__version__}; cpu cores: {os.cpu_count()}"
    )
    print(
        f"settings: {s.prompts_per_step} prompts x G={s.group_size}, max_new_tokens={s.max_new_tokens}, "
        f"T={s.temperature}, lr={s.lr}, beta=0, 1 update/rollout; warm-up {args.warmup}, "
        f"{args.rounds} rounds x {args.steps} steps each"
    )

    with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = prepare_model(args.model, tmp)
        print(f"model: {args.model} ({model_dir})", flush=True)
        total_steps = args.warmup + args.rounds * args.steps
        records: list[StepRecord] = []
        t0 = time.perf_counter()
        quadrl = QuadrlRunner(model_dir, s, tmp / "quadrl_run")
        print(
            f"quadrl set-up {time.perf_counter() - t0:.1f} s (Trainer.__init__ {quadrl.init_seconds:.1f} s)",
            flush=True,
        )
        profiler = cProfile.Profile() if args.profile else None
        examples = quadrl.prompts(total_steps)
        if [e.prompt for e in examples] != [e.prompt for e in quadrl_order(s, total_steps)]:
            print(
                "note: quadrl_order() no longer mirrors Trainer's data order (memory children use other prompts)"
            )
        alternator = make_alternator(s, quadrl, args.warmup, args.steps, args.rounds, records, profiler)
        t0 = time.perf_counter()
        trl_runner = TrlRunner(model_dir, s, examples, total_steps, tmp / "trl_out", [alternator])
        alternator.trl = trl_runner
        print(f"TRL set-up {time.perf_counter() - t0:.1f} s", flush=True)
        trl_runner.train()

    q, t = summarise(records, "quadrl"), summarise(records, "trl")
    mem: dict[str, dict[str, float]] | None = None
    if args.memory:
        mem = {}
        with tempfile.TemporaryDirectory(prefix="bench_trl_") as tmp_name:
            model_dir = prepare_model(args.model, Path(tmp_name)) if args.model == "tiny" else Path(model_dir)
            for fw in ("quadrl", "trl"):
                cmd = [
                    sys.executable,
                    str(Path(__file__).resolve()),
                    "--child",
                    fw,
                    "--model-dir",
                    str(model_dir),
                    "--memory-steps",
                    str(args.memory_steps),
                    "--threads",
                    str(s.threads),
                    "--max-new-tokens",
                    str(s.max_new_tokens),
                    "--group-size",
                    str(s.group_size),
                    "--prompts",
                    str(s.prompts_per_step),
                    "--lr",
                    str(s.lr),
                    "--seed",
                    str(s.seed),
                ]
                if args.n_train is not None:
                    cmd += ["--n-train", str(args.n_train)]
                res = subprocess.run(cmd, capture_output=True, text=True, check=False)
                line = [x for x in res.stdout.splitlines() if x.startswith("BENCH_MEMORY ")]
                if res.returncode or not line:
                    print(f"memory child {fw} failed (rc {res.returncode}):\n{res.stderr[-2000:]}")
                    continue
                mem[fw] = json.loads(line[-1].split(" ", 1)[1])

    print("\nper-step wall time (s), in run order (w = warm-up, discarded):")
    for fw in ("quadrl", "trl"):
        times = " ".join(f"{r.seconds:.2f}{'w' if r.warm else ''}" for r in records if r.framework == fw)
        print(f"  {fw:<7} {times}")
    print_table(q, t, mem)
    ratios = round_ratios(records, args.steps)
    print(
        "tokens/s ratio per round:    "
        + " ".join(f"{x:.2f}" for x in ratios)
        + f"   (median {statistics.median(ratios):.2f})"
    )
    load_end = os.getloadavg()[0]
    print(f"1-min load average: {load_start:.1f} at start, {load_end:.1f} at end ({os.cpu_count()} cores)")
    if load_start > 1.0 or load_end > s.threads + 1.0:  # this run itself adds ~threads to the load
        print(
            "WARNING: other processes were competing for the CPU; timings are unreliable, re-run on a quiet machine"
        )
    print(f"total benchmark wall time: {time.perf_counter() - t_start:.0f} s")

    if profiler is not None:
        profiler.dump_stats(args.profile)
        buf = io.StringIO()
        stats = pstats.Stats(profiler, stream=buf)
        stats.sort_stats("cumulative").print_stats(40)
        stats.sort_stats("tottime").print_stats(25)
        print(f"\ncProfile of quadrl's {q['steps']:.0f} timed steps (written to {args.profile}):")
        print(buf.getvalue())
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "settings": vars(s),
                    "args": vars(args),
                    "quadrl": q,
                    "trl": t,
                    "memory": mem,
                    "round_ratios": ratios,
                    "load_average": [load_start, load_end],
                    "records": [vars(r) for r in records],
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
