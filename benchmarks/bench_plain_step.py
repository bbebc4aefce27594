"""A plain GRPO step (``intervention=none``) of this checkout against another checkout of quadrl, in one run.

    git archive <commit> | tar -x -C /tmp/quadrl-before        # e.g. the commit before a change to the core
    .venv/bin/python benchmarks/bench_plain_step.py /tmp/quadrl-before --model DIR

Shows what a change to the core costs a run that does not use it (e.g. facts on demand: no method asks, so no
pass may run). Child processes alternate between the two checkouts, ``--rounds`` times each; every child builds
one Trainer (through the checkout's own ``tests/conftest.make_trainer``: the JSONL single-digit sums written to a
temp file, the given model, 16 prompts x G = 8, 1 thread, tracking off), runs ``--warmup`` steps, then times
``--steps`` steps by CPU time (``time.process_time``: robust to other processes competing for the cores). Both
checkouts run the same seed, so they sample the same responses when their numerics agree; the script prints
whether the per-step metrics matched bit for bit, the median CPU time per step of each, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.conftest import write_sums_jsonl  # noqa: E402  (the dataset the test suite trains on)

CHILD = r"""
import json, sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
sys.path.insert(0, ".")
from tests.conftest import make_trainer
model, jsonl, run_dir, warmup, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
trainer = make_trainer(Path(run_dir), Path(model), Path(jsonl), "algo.prompts_per_step=16", "algo.group_size=8",
                       "sampling.max_new_tokens=8")
for step in range(warmup):
    trainer.step(step)
times, metrics = [], []
for step in range(warmup, warmup + steps):
    t0 = time.process_time()
    m = trainer.step(step)
    times.append(time.process_time() - t0)
    metrics.append({k: v for k, v in m.items() if not k.startswith("perf/")})
print("RESULT " + json.dumps({"times": times, "metrics": metrics}))
"""


def child(checkout: Path, model: Path, jsonl: Path, run_dir: Path, warmup: int, steps: int) -> dict:
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(jsonl), str(run_dir), str(warmup), str(steps)],
        cwd=checkout,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("before", type=Path, help="the other checkout (its root directory)")
    parser.add_argument("--model", type=Path, required=True, help="a local model directory (char tokenizer)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {"before": [], "after": []}
    metrics: dict[str, list] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        jsonl = write_sums_jsonl(Path(tmp) / "sums.jsonl")
        for round_ in range(args.rounds):
            for name, checkout in (("before", args.before.resolve()), ("after", ROOT)):
                run_dir = Path(tmp) / f"{name}-{round_}"
                result = child(checkout, args.model.resolve(), jsonl, run_dir, args.warmup, args.steps)
                times[name] += result["times"]
                metrics[name].append(result["metrics"])
            print(f"round {round_ + 1}/{args.rounds}, load average {os.getloadavg()[0]:.1f}", flush=True)
    same = all(b == a for b, a in zip(metrics["before"], metrics["after"], strict=True))
    before, after = statistics.median(times["before"]), statistics.median(times["after"])
    print(f"metrics bit-identical before/after: {same}")
    print(f"median CPU s/step: before {before:.4f}, after {after:.4f}, after/before {after / before:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
