"""What ``train.deterministic=true`` costs on CPU, and whether it changes any number.

    .venv/bin/python benchmarks/bench_deterministic.py --steps 15 --rounds 3

Runs ``python -m experiments.train`` on the shipped arith base (the study's batch: 16 prompts x G = 8, 1 thread,
no evaluation) with ``train.deterministic`` off and on, alternating, ``--rounds`` times each. Each run's CPU time
is the child process's user + system time (``resource.getrusage(RUSAGE_CHILDREN)``: robust to other processes
competing for the cores; start-up included, the same in both). Every run logs to its own MLflow store; the
script prints whether the two settings logged the same values for every metric at every step (``perf/*``
timings aside), the median CPU time of each and their ratio.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(out: Path, steps: int, deterministic: bool) -> tuple[float, dict[str, list[tuple[int, float]]]]:
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{out / 'mlflow.db'}"
    before = child_cpu_seconds()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.train",
            f"train.steps={steps}",
            f"train.deterministic={str(deterministic).lower()}",
            "train.threads=1",
            "train.progress=false",
            f"train.checkpoint_every={steps}",
            "train.log_samples_every=0",
            "eval.every=0",
            f"run_dir={out / 'run'}",
            f"tracking.uri={uri}",
            f"hydra.run.dir={out / 'hydra'}",
        ],
        cwd=ROOT,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    cpu = child_cpu_seconds() - before
    client = MlflowClient(uri)
    (rec,) = client.search_runs([client.get_experiment_by_name("quadrl").experiment_id])
    logged = {
        key: sorted((m.step, m.value) for m in client.get_metric_history(rec.info.run_id, key))
        for key in rec.data.metrics
        if not key.startswith("perf/")
    }
    return cpu, logged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=15, help="training steps per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each setting, alternating")
    args = parser.parse_args(argv)
    cpu: dict[bool, list[float]] = {False: [], True: []}
    logs: dict[bool, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench-deterministic-") as tmp:
        for round_ in range(args.rounds):
            for deterministic in (False, True):
                seconds, logged = run_once(Path(tmp) / f"{round_}-{deterministic}", args.steps, deterministic)
                cpu[deterministic].append(seconds)
                logs.setdefault(deterministic, logged)
                print(f"round {round_}: deterministic={deterministic}: {seconds:.1f} s CPU", flush=True)
    same = logs[False] == logs[True]
    off, on = statistics.median(cpu[False]), statistics.median(cpu[True])
    print(f"metrics identical (every key, every step, perf/* aside): {same} ({len(logs[False])} keys)")
    print(
        f"CPU s per run (median of {args.rounds}, {args.steps} steps + start-up): off {off:.1f}, on {on:.1f}"
    )
    print(f"ratio on / off: {on / off:.3f}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
