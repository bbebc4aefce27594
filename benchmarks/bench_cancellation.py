"""What the per-step cancellation diagnostics (``cancel/*``, grpo/cancellation.py) cost against a training step.

    python benchmarks/bench_cancellation.py                      # shipped arith base, the study's batch, 1 thread
    python benchmarks/bench_cancellation.py --model DIR --steps 10

Part 1 trains ``--steps`` GRPO steps (16 prompts x G = 8 on arith, the study's settings, no evaluation) and reads
``perf/cancel_time_s`` and ``perf/step_time_s``, which the trainer measures with ``time.perf_counter`` in the
same step; it prints their ratio (the target is <= 5%). Part 2 times ``cancellation_metrics`` alone on random
batches of growing size (B responses in groups of G, T tokens, a 3-token vocabulary so that prefixes are long),
to show how the [B, G, T] comparison scales beyond the tiny model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # this checkout's code, not an installed copy's
    sys.path.insert(0, str(ROOT))


def train_steps(model_dir: Path | None, steps: int) -> list[dict[str, float]]:
    from omegaconf import OmegaConf

    import interventions  # noqa: F401  (registers every method)
    from experiments.tasks import make_task
    from experiments.train import base_model
    from grpo.config import QuadrlConfig, validate
    from grpo.credit import build_intervention
    from grpo.instruments import standard_instruments
    from grpo.metrics import NullSink
    from grpo.model import load_policy
    from grpo.trainer import Trainer

    cfg = OmegaConf.to_object(
        OmegaConf.merge(OmegaConf.structured(QuadrlConfig), {"tracking": {"enabled": False}})
    )
    if model_dir is not None:
        cfg.model.source, cfg.model.path = "local", str(model_dir)
    validate(cfg)
    task_params = {"name": "arith"}
    task = make_task(**task_params)
    cfg.sampling.max_new_tokens = int(task.max_new_tokens)
    path = model_dir if model_dir is not None else base_model(cfg, task_params).path
    policy = load_policy(cfg.model, path, need_reference=False, seed=0)
    with tempfile.TemporaryDirectory() as run_dir:
        none = build_intervention({"name": "none"})
        measure = standard_instruments(cfg, none, policy, task)
        trainer = Trainer(cfg, policy, task, none, NullSink(), Path(run_dir), instruments=measure)
        return [trainer.step(s) for s in range(steps)]


def time_metrics(batch: int, group: int, width: int, repeats: int = 5) -> float:
    from grpo.cancellation import cancellation_metrics
    from grpo.credit import TokenCredit, TokenFacts
    from grpo.entropy_split import EntropySplit
    from grpo.quadrants import split_quadrants

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(width // 2, width + 1, (batch,), generator=gen)
    mask = torch.arange(width)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 2, (batch,), generator=gen).float()
    facts = TokenFacts(
        advantages=(rewards - 0.5)[:, None] * mask,
        entropy=torch.rand(batch, width, generator=gen) * mask,
        behaviour_logprobs=torch.zeros(batch, width),
        old_logprobs=torch.zeros(batch, width),
        response_mask=mask,
        group_ids=torch.arange(batch // group).repeat_interleave(group),
        rewards=rewards,
        step=0,
        response_ids=torch.randint(0, 3, (batch, width), generator=gen),
    )
    credit = TokenCredit.grpo_default(facts)
    masks = split_quadrants(facts, EntropySplit())
    cancellation_metrics(facts, credit, masks)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        cancellation_metrics(facts, credit, masks)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="local model dir (default: the shipped arith base)"
    )
    parser.add_argument("--steps", type=int, default=10, help="training steps timed (the first is dropped)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the study's jobs use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    records = train_steps(args.model, args.steps)[1:]
    cancel = [r["perf/cancel_time_s"] for r in records]
    step = [r["perf/step_time_s"] for r in records]
    ratios = [c / s for c, s in zip(cancel, step, strict=True)]
    print(f"training steps timed: {len(records)} (threads {args.threads})")
    print(f"  step time      median {statistics.median(step) * 1e3:8.1f} ms")
    print(f"  cancel/* time  median {statistics.median(cancel) * 1e3:8.2f} ms")
    print(f"  cancel / step  median {statistics.median(ratios):.2%}  max {max(ratios):.2%}  (target <= 5%)")
    print(
        f"  shared token share (mean over steps): {statistics.mean(r['cancel/shared_token_share'] for r in records):.3f}"
    )
    print("cancellation_metrics alone on random batches (median of 5):")
    for batch, group, width in ((128, 8, 64), (512, 16, 256), (512, 16, 1024), (1024, 16, 2048)):
        seconds = time_metrics(batch, group, width)
        print(f"  B={batch:5d} G={group:3d} T={width:5d}: {seconds * 1e3:9.1f} ms")


if __name__ == "__main__":
    main()
