"""Step-time ratios on the study's settings, measured in one process: a diagnostic step against a plain step, and
a step with an intervention against a plain one (diagnostics off).

    .venv/bin/python benchmarks/bench_steps.py                                  # every contender, 7 rounds
    .venv/bin/python benchmarks/bench_steps.py --contenders plain,diagnostics --rounds 11
    .venv/bin/python benchmarks/bench_steps.py --preset quadrant_study --threads 1 train.steps=40

Every timed step starts from one saved trainer state (weights, optimizer, scheduler, every RNG, data position),
so every contender samples the same responses and differs only in what it computes from them. Contenders
alternate within a round (in a rotating order), and each ratio is the median over rounds of
(contender's step time / plain step time in the same round): robust to load that drifts between rounds. Wall
time and this process's CPU time are both reported; with one thread, CPU time is the better measure on a
machine that other processes load.

Contenders (``--contenders``):
- ``plain``: plain GRPO (``intervention=none``), diagnostics off;
- ``diagnostics``: the same step with the per-quadrant gradient diagnostics on (grpo/diagnostics.py);
- ``quadrant``: ``intervention=quadrant`` freezing ``neg_low``; ``hapo``: ``intervention=hapo``;
  ``compose``: hapo then quadrant (``neg_low`` frozen); all three with diagnostics off;
- ``eval``: not a step: one evaluation (``Trainer.evaluate``: the preset's test prompts, greedy + samples).
  From it and the step times the script projects evaluation's share of a run's wall time for the preset's
  schedule (``train.steps``, ``eval.every``, ``diagnostics.every``; start-up, checkpoints and logging aside).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

INTERVENTIONS: dict[str, dict[str, Any]] = {
    "plain": {"name": "none"},
    "diagnostics": {"name": "none"},
    "quadrant": {"name": "quadrant", "scale": {"neg_low": 0.0}},
    "hapo": {"name": "hapo"},
    "compose": {
        "name": "compose",
        "steps": [{"name": "hapo"}, {"name": "quadrant", "scale": {"neg_low": 0.0}}],
    },
    "eval": {"name": "none"},
}


def build_trainer(preset: str, overrides: list[str]):
    """A Trainer exactly as ``python -m experiments.train experiment=<preset> <overrides>`` builds it (no
    tracking, no run directory of consequence)."""
    import tempfile

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import interventions
    from experiments.tasks import make_task
    from experiments.train import base_model
    from grpo.config import register_configs, validate
    from grpo.credit import build_intervention
    from grpo.instruments import standard_instruments
    from grpo.metrics import NullSink
    from grpo.model import load_policy
    from grpo.trainer import Trainer

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        raw = compose(
            "config", overrides=[f"experiment={preset}", "tracking=off", "train.progress=false", *overrides]
        )
    cfg = OmegaConf.to_object(raw)
    validate(cfg)
    task_params = OmegaConf.to_container(raw.task, resolve=True)
    task = make_task(**task_params)
    if cfg.sampling.max_new_tokens is None:
        cfg.sampling.max_new_tokens = int(task.max_new_tokens)
    interventions.load_all()
    path = base_model(cfg, task_params).path
    policy = load_policy(cfg.model, path, need_reference=cfg.algo.beta > 0, seed=cfg.seed)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_steps_"))
    none = build_intervention({"name": "none"})
    measure = standard_instruments(cfg, none, policy, task)
    trainer = Trainer(cfg, policy, task, none, NullSink(), run_dir, instruments=measure)
    return trainer, cfg, path, build_intervention


def credit_cost(trainer, start, step: int, names: list[str], built: dict, plain_cpu: float) -> None:
    """What an intervention adds to a step, timed alone: its ``credit()`` (and its own quadrant split, when it
    has one) on one batch's facts, repeated; as a share of a plain step's CPU time."""
    import torch

    from grpo.credit import TokenCredit
    from grpo.quadrants import split_quadrants

    methods = [n for n in names if n in ("quadrant", "hapo", "compose")]
    if not methods:
        return
    trainer.load_checkpoint(copy.deepcopy(start))
    batch, _ = trainer.rollout()
    facts = trainer.facts(batch, step)
    print("\nintervention cost alone (credit() + its quadrant split, 50 repeats, CPU time):")
    for name in methods:
        method, repeats = built[name], 50
        c0 = time.process_time()
        for _ in range(repeats):
            credit = method.credit(facts, TokenCredit.grpo_default(facts), torch.Generator().manual_seed(0))
            split = method.quadrant_split()
            if split is not None:
                split_quadrants(facts, split)
        ms = (time.process_time() - c0) / repeats * 1e3
        assert credit.weights.shape == facts.response_mask.shape
        print(f"  {name:<10} {ms:7.2f} ms = {ms / 1e3 / plain_cpu:.2%} of a plain step")


def main(argv: list[str] | None = None) -> None:
    from grpo.instruments import standard_instruments

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="quadrant_study", help="conf/experiment/<preset>.yaml (its settings)")
    p.add_argument("--contenders", default="plain,diagnostics,quadrant,hapo,compose,eval")
    p.add_argument("--rounds", type=int, default=7, help="rounds; every contender runs one step per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the study's jobs use 1)")
    p.add_argument(
        "--step", type=int, default=10, help="the step index timed (10: a diagnostic step in the study)"
    )
    p.add_argument("overrides", nargs="*", help="Hydra overrides on top of the preset")
    args = p.parse_args(argv)
    names = args.contenders.split(",")
    unknown = [n for n in names if n not in INTERVENTIONS]
    if unknown or "plain" not in names:
        raise SystemExit(
            f"--contenders must include 'plain' and name only {list(INTERVENTIONS)}; got {names}"
        )

    import torch

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    trainer, cfg, path, build_intervention = build_trainer(args.preset, args.overrides)
    preset_diagnostics = cfg.diagnostics.every > 0
    every = cfg.diagnostics.every if preset_diagnostics else 10
    step = args.step - args.step % every  # a step the diagnostics fire at
    built = {n: build_intervention(INTERVENTIONS[n]) for n in names}
    trainer.next_prompts(step * cfg.algo.prompts_per_step)  # the data position of that step
    start = copy.deepcopy(trainer.state())
    print(
        f"model {path}; {cfg.algo.prompts_per_step} prompts x G={cfg.algo.group_size}, "
        f"max_new_tokens={cfg.sampling.max_new_tokens}, {args.threads} thread(s); step {step}; "
        f"{args.warmup} warm-up + {args.rounds} rounds of {names}",
        flush=True,
    )

    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, int] = {}
    for r in range(args.warmup + args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            trainer.load_checkpoint(copy.deepcopy(start))
            trainer.intervention = built[name]
            cfg.diagnostics.every = every if name == "diagnostics" else 0
            trainer.instruments = standard_instruments(cfg, built[name], trainer.policy, trainer.task)
            c0, w0 = time.process_time(), time.perf_counter()
            metrics = trainer.evaluate(step) if name == "eval" else trainer.step(step)
            dw, dc = time.perf_counter() - w0, time.process_time() - c0
            if r >= args.warmup:
                wall[name].append(dw)
                cpu[name].append(dc)
            if name == "eval":
                continue
            n_tokens = round(metrics["train/response_len"] * cfg.algo.prompts_per_step * cfg.algo.group_size)
            if tokens.setdefault(name, n_tokens) != n_tokens:
                raise SystemExit(
                    f"{name} sampled {n_tokens} tokens, not {tokens[name]}: the state restore failed"
                )
        print(
            f"round {r + 1}/{args.warmup + args.rounds}" + (" (warm-up)" if r < args.warmup else ""),
            flush=True,
        )

    print(
        f"\n{'contender':<14}{'wall s (median)':>16}{'CPU s (median)':>16}{'wall ratio':>12}{'CPU ratio':>12}"
    )
    for name in names:
        wall_ratio = statistics.median(a / b for a, b in zip(wall[name], wall["plain"], strict=True))
        cpu_ratio = statistics.median(a / b for a, b in zip(cpu[name], cpu["plain"], strict=True))
        print(
            f"{name:<14}{statistics.median(wall[name]):>16.3f}{statistics.median(cpu[name]):>16.3f}"
            f"{wall_ratio:>12.3f}{cpu_ratio:>12.3f}"
        )
    credit_cost(trainer, start, step, names, built, statistics.median(cpu["plain"]))
    print(
        f"\nresponse tokens per step: {tokens['plain']} (the same for every contender: same state, same samples)"
    )
    print("goals: diagnostics <= 2x plain; each intervention <= 1.05x plain")
    if "eval" in names:
        steps, every_eval = cfg.train.steps, cfg.eval.every
        n_evals = 1 + (steps // every_eval if every_eval > 0 else 1)
        n_diag = len(range(0, steps, every)) if "diagnostics" in names and preset_diagnostics else 0
        for label, times in (("wall", wall), ("CPU", cpu)):
            e, plain = statistics.median(times["eval"]), statistics.median(times["plain"])
            d = statistics.median(times["diagnostics"]) if n_diag else plain
            share = n_evals * e / (n_evals * e + (steps - n_diag) * plain + n_diag * d)
            print(
                f"evaluation ({label}): {e:.2f} s = {e / plain:.1f} plain steps; {n_evals} evaluations in a "
                f"{steps}-step run with {n_diag} diagnostic steps -> evaluation is {share:.1%} of the loop "
                "(goal <= 25%)"
            )
    load_end = os.getloadavg()[0]
    print(f"1-min load average: {load_start:.1f} at start, {load_end:.1f} at end ({os.cpu_count()} cores)")
    if max(load_start, load_end) > args.threads + 0.5:
        print("note: other processes competed for the CPU; read the CPU-time ratios")


if __name__ == "__main__":
    main()
