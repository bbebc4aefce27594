"""Verification in killable worker processes (experiments/tasks/workers.py, used by ``math_file``).

A batch of hostile answers costs at most about ceil(n / workers) x timeout, from the main thread and from any
other thread, and scores 0; a worker stuck past its deadline is killed and replaced; equivalent answers still
score 1; no answer is executed; results keep their order; a verification that raises scores 0 and is counted
and logged by exception type; the trainer logs what scoring cost per step.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from experiments.tasks import make_task
from experiments.tasks.hostile import hostile_completions
from experiments.tasks.workers import VerifierPool
from grpo.task import Example, RewardBatch, score_completions
from tests.conftest import REPO, make_trainer


@pytest.fixture
def problems(tmp_path) -> Path:
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"problem": f"p{i}", "answer": str(i)}) + "\n" for i in range(40)))
    return path


def worker_job(word: str) -> tuple[str, int]:
    """What the test pools run: echo the word with the worker's pid; 'spin' holds the GIL in one big-integer
    power (the way sympy does on a tower of exponents), 'raise' raises, 'die' kills the worker."""
    if word == "spin":
        return str(pow(9, 9**9)), os.getpid()  # a 370-million-digit power: minutes, with the GIL held
    if word == "raise":
        raise ZeroDivisionError("planted")
    if word == "die":
        os._exit(3)
    if word.startswith("sleep"):
        time.sleep(float(word[5:]))
    return word, os.getpid()


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether process ``pid`` has ended (and been reaped) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


HOSTILE_SCRIPT = """
import json, sys, threading, time
from experiments.tasks import make_task
from grpo.task import score_completions
from experiments.tasks.hostile import hostile_completions

path, marker, mode, workers = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
task = make_task("math_file", path=path, test_fraction=0.5, timeout_seconds=1, verify_workers=workers)
completions = hostile_completions(marker, 64)
examples = [task.train()[0]] * len(completions)
out = {}

def score():
    start = time.perf_counter()
    scored = score_completions(task, examples, completions)
    out.update(seconds=time.perf_counter() - start, rewards=scored.rewards, timeouts=scored.timeouts)

if mode == "main":
    score()
else:
    caller = threading.Thread(target=score)
    caller.start()
    caller.join()
print("RESULT " + json.dumps(out), flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["main", "thread"])
def test_64_hostile_answers_score_0_within_the_bound_from_any_thread(tmp_path, mode):
    workers, timeout_s, n = 2, 1, 64
    problems = tmp_path / "problems.jsonl"  # 42: no hostile answer equals it (10^{-10^{10}} equals 0)
    problems.write_text("".join(json.dumps({"problem": f"p{i}", "answer": "42"}) + "\n" for i in range(20)))
    bound = math.ceil(n / workers) * timeout_s  # every answer at its deadline: 32 s
    marker = tmp_path / "pwned"
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", HOSTILE_SCRIPT, str(problems), str(marker), mode, str(workers)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=bound + 120,  # before issue 14, the thread mode hung here until killed
    )
    wall = time.perf_counter() - started
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert len(result["rewards"]) == n and set(result["rewards"]) == {0.0}
    assert result["timeouts"] > 0, "no answer reached the deadline: the hostile set lost its teeth"
    # scoring within the bound (plus process start-up of the replacements), the process exited right after
    assert result["seconds"] < bound + 10, result["seconds"]
    assert wall - result["seconds"] < 20, f"the process took {wall - result['seconds']:.0f} s to exit"
    assert not marker.exists(), "a completion was executed"


def test_code_payloads_are_never_executed(tmp_path, problems):
    task = make_task("math_file", path=str(problems), test_fraction=0.5, timeout_seconds=2, verify_workers=2)
    marker = tmp_path / "pwned"
    code = [c for c in hostile_completions(str(marker)) if str(marker) in c]
    assert len(code) >= 8
    scored = task.rewards([Example("", "0")] * len(code), code)
    assert scored.rewards == [0.0] * len(code)
    assert not marker.exists()


def test_a_worker_stuck_holding_the_gil_is_killed_and_replaced(caplog):
    pool = VerifierPool(worker_job, timeout_s=1, workers=1, name="test-pool")
    try:
        ((word, first_pid),) = pool.map([("a",)]).values
        assert word == "a"
        caplog.set_level(logging.WARNING, logger="experiments.tasks.workers")
        started = time.perf_counter()
        stuck = pool.map([("spin",)])
        assert time.perf_counter() - started < 5
        assert stuck.values == [None] and stuck.timeouts == 1 and stuck.errors == {}
        assert "1 of 1 verifications stopped at the 1 s deadline" in caplog.text
        assert gone(first_pid), "the stuck worker is still alive"
        after = pool.map([("b",), ("c",)])
        assert [w for w, _ in after.values] == ["b", "c"] and after.timeouts == 0
        assert {pid for _, pid in after.values} != {first_pid}
    finally:
        pool.close()


def test_math_file_scores_correctly_after_a_timeout(problems):
    task = make_task("math_file", path=str(problems), test_fraction=0.5, timeout_seconds=1, verify_workers=1)
    one = Example("", "1")
    stuck = task.rewards([one, one], ["\\boxed{9^{9^{9^{9^{9}}}}}", "\\boxed{1}"])
    assert stuck.rewards == [0.0, 1.0] and stuck.timeouts == 1
    after = task.rewards([Example("", "3/4")], ["so \\boxed{0.75}"])
    assert after.rewards == [1.0] and after.timeouts == 0


@pytest.mark.parametrize("from_thread", [False, True], ids=["main", "thread"])
def test_equivalent_answers_still_score_1(problems, from_thread):
    task = make_task("math_file", path=str(problems), test_fraction=0.5, verify_workers=2)
    cases = [
        ("\\frac{3}{4}", "\\boxed{0.75}", 1.0),
        ("0.75", "\\boxed{\\frac{3}{4}}", 1.0),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{8}}", 1.0),
        ("\\sqrt{8}", "the answer is \\boxed{2\\sqrt{2}}", 1.0),
        ("\\frac{3}{4}", "\\boxed{0.7}", 0.0),
        ("2\\sqrt{2}", "\\boxed{\\sqrt{6}}", 0.0),
    ]
    got: list[RewardBatch] = []

    def score() -> None:
        got.append(task.rewards([Example("", a) for a, _, _ in cases], [c for _, c, _ in cases]))

    if from_thread:
        caller = threading.Thread(target=score)
        caller.start()
        caller.join(60)
    else:
        score()
    assert got and got[0].rewards == [want for _, _, want in cases]


def test_results_keep_their_order_under_parallelism(problems):
    # later calls finish first: results must follow the calls, not the completions
    pool = VerifierPool(worker_job, timeout_s=5, workers=3, name="test-pool")
    try:
        calls = [(f"sleep{0.02 * (12 - i):.2f}",) for i in range(12)]
        assert [w for w, _ in pool.map(calls).values] == [c[0] for c in calls]
    finally:
        pool.close()
    task = make_task("math_file", path=str(problems), test_fraction=0.5, verify_workers=2)
    examples = [Example("", str(i)) for i in range(48)]
    completions = [f"\\boxed{{{i if i % 3 else i + 1}}}" for i in range(48)]
    completions[7] = "no answer here"  # extraction fails in-process: scored 0 without a worker
    want = [0.0 if i % 3 == 0 or i == 7 else 1.0 for i in range(48)]
    assert task.rewards(examples, completions).rewards == want


def test_a_crash_in_one_verification_scores_0_and_is_logged_by_type(caplog):
    caplog.set_level(logging.WARNING, logger="experiments.tasks.workers")
    pool = VerifierPool(worker_job, timeout_s=5, workers=2, default="zero", name="test-pool")
    try:
        done = pool.map([("a",), ("raise",), ("b",), ("die",), ("c",)])
        assert [v if v == "zero" else v[0] for v in done.values] == ["a", "zero", "b", "zero", "c"]
        assert done.errors == {"ZeroDivisionError": 1, "ProcessExpired": 1} and done.timeouts == 0
        assert "ZeroDivisionError x1" in caplog.text and "ProcessExpired (exit code 3) x1" in caplog.text
        assert [v[0] for v in pool.map([("d",)]).values] == ["d"]  # the dead worker was replaced
    finally:
        pool.close()


def test_in_process_reward_that_raises_scores_0_and_is_logged(caplog):
    class Broken:
        name = "broken"

        def reward(self, example: Example, completion: str) -> float:
            if completion == "bad":
                raise KeyError(completion)
            return 1.0

    caplog.set_level(logging.WARNING, logger="grpo.task")
    scored = score_completions(Broken(), [Example("", "")] * 3, ["ok", "bad", "ok"])  # type: ignore[arg-type]
    assert scored.rewards == [1.0, 0.0, 1.0] and scored.errors == {"KeyError": 1}
    assert "broken: 1 of 3 reward calls raised (KeyError x1)" in caplog.text
    with pytest.raises(ValueError, match="2 examples for 1 completions"):
        score_completions(Broken(), [Example("", "")] * 2, ["ok"])  # type: ignore[arg-type]


def test_trainer_logs_reward_time_timeouts_and_errors_per_step(tmp_path, tiny_model_dir, math_jsonl):
    trainer = make_trainer(
        tmp_path, tiny_model_dir, math_jsonl, "algo=dapo", "algo.dynamic_sampling_max_rounds=2"
    )
    calls: list[int] = []

    def rewards(examples, completions):
        calls.append(len(completions))
        time.sleep(0.05)
        return RewardBatch([0.0] * len(completions), timeouts=2, errors={"ValueError": 1})

    trainer.task.rewards = rewards
    first = trainer.step(0)
    # all rewards 0: no informative group, so dynamic sampling draws its 2 extra rounds, all scored
    assert len(calls) == 3
    assert first["train/reward_timeouts"] == 6 and first["train/reward_errors"] == 3
    assert first["perf/reward_time_s"] >= 0.15
    assert trainer.step(1)["train/reward_timeouts"] == 6, "the counts are per step, not cumulative"


HOSTILE = "\\boxed{10^{10^{10}}!}"
DEADLINE_SLACK_S = 2.5
"""What a verification may cost beyond ``timeout_seconds``: pebble noticing the deadline, the kill, the result's
return, on a loaded shared CPU (measured 0.1-0.75 s). Below the 3.5 s extra that ``\\boxed{10^{10^{10}}!}``
against ``2\\sqrt{2}`` cost (5.5 s at a 2 s limit) when the worker ignored pebble's SIGTERM until its SIGKILL 3 s
later (experiments/tasks/workers.py's ``_die_on_sigterm``)."""


@pytest.mark.parametrize("from_thread", [False, True], ids=["main", "thread"])
def test_a_verification_ends_within_the_deadline_whatever_the_answer(problems, from_thread):
    task = make_task("math_file", path=str(problems), test_fraction=0.5, timeout_seconds=2, verify_workers=1)
    assert task.reward(Example("", "1"), "\\boxed{1}") == 1.0  # the pool is up: what follows times calls only
    took: dict[str, float] = {}

    def score(reference: str) -> None:
        started = time.perf_counter()
        assert task.reward(Example("", reference), HOSTILE) == 0.0
        took[reference] = time.perf_counter() - started

    for reference in ("2\\sqrt{2}", "3/4", "2"):  # 2\sqrt{2} keeps the worker inside one C-level operation
        if from_thread:
            caller = threading.Thread(target=score, args=(reference,))
            caller.start()
            caller.join(60)
        else:
            score(reference)
    assert len(took) == 3, f"a call raised or hung: {took}"
    assert max(took.values()) < 2 + DEADLINE_SLACK_S, f"seconds per answer at a 2 s limit: {took}"
