"""Cost of scoring hostile completions with ``task=math_file``, from the main thread and from a worker thread.

    .venv/bin/python benchmarks/bench_verify.py                      # 64 answers, timeout 2 s, both threads
    .venv/bin/python benchmarks/bench_verify.py --n 128 --workers 2 --limit 300

Each measurement runs in a fresh child process (``--child``) that the parent kills after ``--limit`` seconds:
a verifier that hangs the process is reported as such, with the time it was given. The child scores ``--n``
completions of ``experiments/tasks/hostile.py`` against the reference answer 42 through the task's batch path
(``score_completions``) when the code has one, else one ``task.reward`` call per completion (the code before
issue 14). Printed per mode: the time to score, the time until the child process had exited (a verifier that
leaves work behind shows up here), the number of non-zero rewards (must be 0) and, when the task reports them,
timeouts and errors. With ``--python`` the children run another interpreter, e.g. another checkout's venv,
to measure its code: ``--python /path/to/other/.venv/bin/python``.

``--overhead`` measures instead why the built-in tasks verify in-process: the cost of their verifiers per batch
of 128 completions against the cost of one round trip of the same batch through a ``VerifierPool``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HOSTILE = Path(__file__).resolve().parents[1] / "experiments" / "tasks" / "hostile.py"


def hostile_completions(marker: str, n: int) -> list[str]:
    # loaded by path so that the children can run an older checkout that lacks the module
    spec = importlib.util.spec_from_file_location("quadrl_hostile", HOSTILE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.hostile_completions(marker, n)


def child(args: argparse.Namespace) -> None:
    from experiments.tasks import make_task

    tmp = Path(tempfile.mkdtemp(prefix="bench_verify_"))
    data = tmp / "problems.jsonl"
    data.write_text("".join(json.dumps({"problem": f"p{i}", "answer": "42"}) + "\n" for i in range(20)))
    params = {"path": str(data), "test_fraction": 0.5, "timeout_seconds": args.timeout}
    if args.workers:
        params["verify_workers"] = args.workers
    task = make_task("math_file", **params)
    completions = hostile_completions(str(tmp / "pwned"), args.n)
    examples = [task.train()[0]] * len(completions)
    try:
        from grpo.task import score_completions
    except ImportError:  # the code before issue 14: one reward call per completion
        score_completions = None
    out: dict = {}

    def score() -> None:
        start = time.perf_counter()
        if score_completions is None:
            rewards = [task.reward(ex, c) for ex, c in zip(examples, completions, strict=True)]
        else:
            scored = score_completions(task, examples, completions)
            rewards = scored.rewards
            out.update(timeouts=scored.timeouts, errors=scored.errors)
        out.update(seconds=time.perf_counter() - start, nonzero=sum(r != 0 for r in rewards))

    if args.child == "main":
        score()
    else:
        worker = threading.Thread(target=score, name="caller")
        worker.start()
        worker.join()
    out["side_effect"] = (tmp / "pwned").exists()
    print("RESULT " + json.dumps(out), flush=True)


def echo(answer: str, completion: str) -> bool:
    return answer == completion


def overhead(batch: int = 128, rounds: int = 20) -> None:
    from experiments.tasks import make_task
    from experiments.tasks.workers import VerifierPool
    from grpo.task import score_completions

    for name in ("arith", "countdown"):
        task = make_task(name)
        examples = [task.test()[i % len(task.test())] for i in range(batch)]
        completions = [ex.target for ex in examples]  # right answers: the verifier's full path
        start = time.perf_counter()
        for _ in range(rounds):
            score_completions(task, examples, completions)
        print(f"  {name:9s}: {1e3 * (time.perf_counter() - start) / rounds:7.2f} ms per {batch} in-process")
    pool = VerifierPool(echo, timeout_s=5, workers=2, name="bench")
    calls = [(str(i), str(i)) for i in range(batch)]  # distinct: none deduplicated
    pool.map(calls)  # start the workers
    start = time.perf_counter()
    for _ in range(rounds):
        pool.map(calls)
    print(
        f"  pool     : {1e3 * (time.perf_counter() - start) / rounds:7.2f} ms per {batch} (2 workers, trivial call)"
    )
    pool.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=64, help="hostile completions per batch (default 64)")
    p.add_argument("--timeout", type=int, default=2, help="math_file timeout_seconds (default 2)")
    p.add_argument("--workers", type=int, default=0, help="math_file verify_workers (default: the task's)")
    p.add_argument("--limit", type=float, default=180, help="kill a child after this many seconds")
    p.add_argument("--python", default=sys.executable, help="interpreter for the children")
    p.add_argument("--modes", default="main,thread", help="main, thread or both (default)")
    p.add_argument(
        "--overhead", action="store_true", help="built-in verifiers in-process vs a pool round trip"
    )
    p.add_argument("--child", choices=["main", "thread"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.overhead:
        overhead()
        return
    if args.child:
        child(args)
        return
    print(f"{args.n} hostile completions, timeout_seconds={args.timeout}, interpreter {args.python}")
    for mode in args.modes.split(","):
        command = [args.python, __file__, "--child", mode, "--n", str(args.n), "--timeout", str(args.timeout)]
        if args.workers:
            command += ["--workers", str(args.workers)]
        start = time.perf_counter()
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=args.limit)
        except subprocess.TimeoutExpired:
            print(f"  {mode:6s}: no result, process killed after {args.limit:.0f} s (hung)", flush=True)
            continue
        wall = time.perf_counter() - start
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            print(f"  {mode:6s}: exit {done.returncode}: {done.stderr.strip()[-500:]}", flush=True)
            continue
        r = json.loads(lines[-1][len("RESULT ") :])
        extra = f", {r['timeouts']} timeouts, errors {r['errors']}" if "timeouts" in r else ""
        print(
            f"  {mode:6s}: scored in {r['seconds']:.1f} s, process exited after {wall:.1f} s (exit 0), "
            f"{r['nonzero']} non-zero rewards{extra}, side effect: {r['side_effect']}",
            flush=True,
        )


if __name__ == "__main__":
    main()
