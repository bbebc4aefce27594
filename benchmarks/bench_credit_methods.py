"""What each credit method costs per training step, against plain GRPO, measured in one process.

    .venv/bin/python benchmarks/bench_credit_methods.py                      # the credit_methods study's conditions
    .venv/bin/python benchmarks/bench_credit_methods.py baseline arca "intervention=dasd"
    .venv/bin/python benchmarks/bench_credit_methods.py --model DIR --teacher DIR

A condition is a ``condition`` option (``conf/condition/``: the method with its model and learning rate,
exactly as the study runs it) or a quoted list of Hydra overrides (``"intervention=dasd"``). Every condition gets
its own Trainer on the same model (default: the built-in arith base model; the distillation teacher defaults to
the built-in teacher when it is cached, else the base model itself -- same architecture, so the same cost), with
the study's batch (16 prompts x G = 8), 1 thread, no evaluation and no tracking. Then R rounds run each
condition for N steps in turn, so all see the same machine state; the first round is a warm-up.

Printed per condition: the median over timed steps of the CPU time of ``Trainer.step`` (``time.process_time``:
robust to other processes competing for the cores, which wall time is not), its median wall time, the median
response length per step, and the CPU-time ratio to ``baseline`` (and ARCA's to ``grpo_lora``, its
rank-matched control). Steps sample their own responses, so lengths differ a little between conditions: the
ratio of CPU time per response token is printed too.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

DEFAULT = ["baseline", "hapo", "top_entropy", "grpo_lora", "arca", "attention_entropy", "opd", "iw_opd"]


def overrides_of(condition: str) -> list[str]:
    return condition.split() if "=" in condition else [f"condition={condition}"]


def build_trainer(condition: str, model: Path, teacher: Path, run_dir: Path, threads: int):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    import interventions  # noqa: F401  (registers every method)
    from experiments.tasks import make_task
    from grpo.config import register_configs, validate
    from grpo.credit import build_intervention
    from grpo.facts import check_config
    from grpo.instruments import standard_instruments
    from grpo.metrics import NullSink
    from grpo.model import load_policy, load_teacher
    from grpo.trainer import Trainer

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        raw = compose(
            "config",
            overrides=[
                *overrides_of(condition),
                "model.source=local",
                f"model.path={model}",
                "algo.teacher.source=local",
                f"algo.teacher.path={teacher}",
                "tracking=off",
                "train.log_samples_every=0",
                f"train.threads={threads}",
                f"run_dir={run_dir}",
            ],
        )
    cfg = OmegaConf.to_object(raw)
    validate(cfg)
    task_params = OmegaConf.to_container(raw.task, resolve=True)
    task = make_task(**task_params)
    cfg.sampling.max_new_tokens = cfg.sampling.max_new_tokens or int(task.max_new_tokens)
    intervention = build_intervention(OmegaConf.to_container(raw.intervention, resolve=True))
    check_config(cfg, intervention)
    policy = load_policy(cfg.model, model, need_reference=cfg.algo.beta > 0, seed=cfg.seed)
    teacher_model = (
        load_teacher(cfg.model, teacher, policy.tokenizer) if cfg.algo.advantage == "teacher" else None
    )
    measure = standard_instruments(cfg, intervention, policy, task)
    return Trainer(
        cfg, policy, task, intervention, NullSink(), run_dir, teacher=teacher_model, instruments=measure
    )


def builtin_models() -> tuple[Path, Path, str]:
    from experiments.base_model import resolve_base_model, teacher_name, teacher_recipe

    base = resolve_base_model("arith", {}, tracking_uri=None).path  # the shipped models, verified
    recipe = teacher_recipe(0)
    teacher = resolve_base_model("arith", {}, recipe, name=teacher_name("arith"), tracking_uri=None).path
    return base, teacher, "the built-in teacher"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "conditions", nargs="*", default=DEFAULT, help="conf/condition/ names or quoted overrides"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="model directory (default: built-in arith base)"
    )
    parser.add_argument("--teacher", type=Path, default=None, help="distillation teacher directory")
    parser.add_argument("--steps", type=int, default=4, help="steps per condition per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the first is a warm-up")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)

    import tempfile

    import torch

    torch.set_num_threads(args.threads)
    if args.model is None:
        model, teacher, teacher_note = builtin_models()
    else:
        model, teacher, teacher_note = args.model, args.model, "the model itself (--model)"
    if args.teacher is not None:
        teacher, teacher_note = args.teacher, "--teacher"
    print(
        f"model {model}\nteacher {teacher} ({teacher_note})\nload average at start {os.getloadavg()[0]:.1f}"
    )
    cpu: dict[str, list[float]] = {c: [] for c in args.conditions}
    wall: dict[str, list[float]] = {c: [] for c in args.conditions}
    tokens: dict[str, list[float]] = {c: [] for c in args.conditions}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            c: build_trainer(c, model, teacher, Path(tmp) / str(i), args.threads)
            for i, c in enumerate(args.conditions)
        }
        step = {c: 0 for c in args.conditions}
        for round_ in range(args.rounds):
            for c, trainer in trainers.items():
                for _ in range(args.steps):
                    c0, w0 = time.process_time(), time.perf_counter()
                    metrics = trainer.step(step[c])
                    c1, w1 = time.process_time(), time.perf_counter()
                    step[c] += 1
                    if round_ > 0:
                        cpu[c].append(c1 - c0)
                        wall[c].append(w1 - w0)
                        tokens[c].append(metrics["train/response_len"])
            print(f"round {round_ + 1}/{args.rounds} done, load average {os.getloadavg()[0]:.1f}", flush=True)
    med = {c: statistics.median(v) for c, v in cpu.items()}
    per_token = {c: med[c] / statistics.median(tokens[c]) for c in args.conditions}
    base = "baseline" if "baseline" in med else args.conditions[0]
    print(
        f"\n{args.rounds - 1} timed rounds x {args.steps} steps, {args.threads} thread(s); ratios against '{base}'"
    )
    print(
        f"{'condition':<32} {'CPU s/step':>10} {'wall s/step':>11} {'resp. len':>9} {'CPU ratio':>9} {'per token':>9}"
    )
    for c in args.conditions:
        line = (
            f"{c:<32} {med[c]:>10.3f} {statistics.median(wall[c]):>11.3f} {statistics.median(tokens[c]):>9.1f} "
            f"{med[c] / med[base]:>9.2f} {per_token[c] / per_token[base]:>9.2f}"
        )
        if c == "arca" and "grpo_lora" in med:
            line += f"   (vs grpo_lora: {med[c] / med['grpo_lora']:.2f}, per token {per_token[c] / per_token['grpo_lora']:.2f})"
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
