"""Run a small fixed sweep and dump every logged metric, or compare two such dumps bit for bit.

Shows that a refactor changed no behaviour: run it on the code before and after, then compare.

    python scripts/metrics_snapshot.py run --repo /path/to/checkout --out before.json
    python scripts/metrics_snapshot.py run --repo . --out after.json
    python scripts/metrics_snapshot.py compare before.json after.json

``run`` starts ``python -m experiments.train -m`` in ``--repo`` (so that checkout's code runs) with the grid
condition=baseline,quadrant/only_pos_high (intervention=none,only_pos_high in a checkout from before conf/condition/)
x seed 0, 10 steps, per-quadrant gradient diagnostics every 2 steps, one thread per job, into a fresh SQLite store,
then writes ``{condition: {metric: [[step, value], ...]}}``, keyed by the condition's name in both cases. Set QUADRL_CACHE to the
same directory for both runs so that they start from the same base model. ``compare`` ignores ``perf/*`` (wall-clock
timings) and reports every other value that differs, bit for bit (floats are compared by their repr).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

GRID = [
    "condition=baseline,quadrant/only_pos_high",
    "seed=0",
    "train.steps=10",
    "train.threads=1",
    "train.progress=false",
    "train.checkpoint_every=5",
    "train.log_samples_every=5",
    "diagnostics.every=2",
    "eval.every=5",
    "eval.n_samples=4",
    "eval.pass_k=[1,4]",
    "hydra/launcher=local",
]


LEGACY_GRID = "intervention=none,only_pos_high"
"""The same two conditions under their names before conf/condition/ (intervention presets)."""
LEGACY_CONDITIONS = {"none": "baseline", "only_pos_high": "quadrant/only_pos_high"}
"""A legacy run's ``override.intervention`` -> its condition's name, so that both dumps key the same."""


def run(repo: Path, out: Path) -> None:
    work = Path(tempfile.mkdtemp(prefix="snapshot-"))
    uri = f"sqlite:///{work / 'mlflow.db'}"
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        "-m",
        *GRID,
        f"tracking.uri={uri}",
        "tracking.experiment=snapshot",
        f"hydra.sweep.dir={work / 'sweep'}",
    ]
    if not (repo / "conf" / "condition").is_dir():  # a checkout from before the conditions' rename: old names
        command = [LEGACY_GRID if c == GRID[0] else c for c in command]
    subprocess.run(command, cwd=repo, check=True)
    dump_store(uri, out)


def dump_store(uri: str, out: Path) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("snapshot")
    runs = client.search_runs([experiment.experiment_id])
    dump: dict[str, dict[str, list[list[float]]]] = {}
    for r in runs:
        if r.data.tags.get("quadrl.role") == "sweep":
            continue
        # the full condition holds the temporary store's path: the swept value names the run
        condition = (
            r.data.tags.get("override.condition") or LEGACY_CONDITIONS[r.data.tags["override.intervention"]]
        )
        metrics = {}
        for key in sorted(r.data.metrics):
            history = client.get_metric_history(r.info.run_id, key)
            last = {m.step: m.value for m in sorted(history, key=lambda m: m.timestamp)}
            metrics[key] = [[step, repr(value)] for step, value in sorted(last.items())]
        dump[condition] = metrics
    out.write_text(json.dumps(dump, indent=1, sort_keys=True))
    print(f"{out}: {len(dump)} runs, {sum(len(m) for m in dump.values())} metric series")


def compare(a: Path, b: Path) -> int:
    left, right = json.loads(a.read_text()), json.loads(b.read_text())
    problems, compared = [], 0
    for condition in sorted(set(left) | set(right)):
        lm, rm = left.get(condition, {}), right.get(condition, {})
        for key in sorted(set(lm) | set(rm)):
            if key.startswith("perf/"):
                continue
            if key not in lm or key not in rm:
                problems.append(f"{condition} {key}: only in {'before' if key in lm else 'after'}")
                continue
            compared += len(lm[key])
            if lm[key] != rm[key]:
                problems.append(f"{condition} {key}: {lm[key][:3]} != {rm[key][:3]}")
    for p in problems:
        print("DIFFERS", p)
    print(f"{compared} values compared (perf/* excluded), {len(problems)} series differ")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--repo", type=Path, default=Path.cwd())
    r.add_argument("--out", type=Path, required=True)
    c = sub.add_parser("compare")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.repo.resolve(), args.out.resolve())
        return 0
    return compare(args.a, args.b)


if __name__ == "__main__":
    raise SystemExit(main())
