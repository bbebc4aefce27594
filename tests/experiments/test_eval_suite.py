"""Evaluation suites end to end on the shipped arith base model (its answers are checkable by hand): two
benchmark files with different k through ``quadrl-eval`` (experiments/eval.py) and through a training run log
exactly the expected ``eval/<benchmark>/<metric>`` keys into a real MLflow store, with the values computed here
by hand from the logged completions; refusals are one line."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from experiments.eval import run as eval_run
from experiments.sweep import charts_filter, comparison_view
from experiments.tasks import make_task
from experiments.train import run as train_run
from grpo.checks import ConfigError
from tests.conftest import compose_config
from tests.experiments.test_entry_points import entry_point, one_line_refusal

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def arith_files(tmp_path: Path) -> tuple[Path, Path]:
    """Two arith-format benchmark files (``problem`` "a+b=", ``answer``) from arith's held-out problems."""
    examples = list(make_task("arith").test())[:12]
    a, b = tmp_path / "bench_a.jsonl", tmp_path / "bench_b.json"
    a.write_text(
        "\n".join(json.dumps({"problem": e.prompt, "answer": e.answer}) for e in examples[:5]) + "\n"
    )
    b.write_text(json.dumps([{"problem": e.prompt, "answer": int(e.answer)} for e in examples[5:12]]))
    return a, b


def suite_override(a: Path, b: Path) -> str:
    return (
        f"+eval.suite=[{{name: bench_a, path: '{a}', k: 4, pass_k: [1, 2, 4], greedy: true}},"
        f" {{name: bench_b, path: '{b}', k: 2, pass_k: [2], top_p: 0.95}}]"
    )


def hand_reward(prompt: str, completion: str) -> float:
    """arith by hand: the digits after the last '>' are the sum of the prompt's two addends."""
    left, right = prompt.rstrip("=").split("+")
    answer = completion.rsplit(">", 1)[1].strip() if ">" in completion else ""
    return float(answer.isdigit() and int(answer) == int(left) + int(right))


def hand_metrics(rows: list[dict], n: int, k: int, pass_k: list[int], greedy: bool) -> dict[str, float]:
    rewards = [hand_reward(r["prompt"], r["completion"]) for r in rows]
    assert rewards == [r["reward"] for r in rows]  # the verifier the suite used agrees with the hand check
    out = {}
    if greedy:
        out["accuracy"] = sum(rewards[:n]) / n
        rewards = rewards[n:]
    groups = [rewards[i * k : (i + 1) * k] for i in range(n)]
    assert len(rewards) == n * k
    out[f"avg_at_{k}"] = sum(rewards) / (n * k)
    for j in pass_k:
        out[f"pass_at_{j}"] = sum(1 - math.comb(k - int(sum(g)), j) / math.comb(k, j) for g in groups) / n
    return out


def logged_rows(client: MlflowClient, run_id: str, path: str, tmp_path: Path) -> list[dict]:
    local = client.download_artifacts(run_id, path, str(tmp_path))
    table = json.loads(Path(local).read_text())
    return [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]


def only_run(uri: str, experiment: str = "quadrl"):
    client = MlflowClient(uri)
    (rec,) = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    return client, rec


def test_quadrl_eval_two_benchmarks_match_hand_computation(tmp_path):
    a, b = arith_files(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    metrics = eval_run(
        compose_config(
            "task=arith", f"tracking.uri={uri}", "sampling.max_new_tokens=null", suite_override(a, b)
        )
    )
    client, rec = only_run(uri)
    assert rec.info.status == "FINISHED" and rec.data.tags["quadrl.kind"] == "eval"
    assert rec.data.tags["quadrl.base_model"].startswith("shipped:")
    want_a = hand_metrics(
        logged_rows(client, rec.info.run_id, "eval_samples/bench_a/step_000000.json", tmp_path),
        5,
        4,
        [1, 2, 4],
        True,
    )
    want_b = hand_metrics(
        logged_rows(client, rec.info.run_id, "eval_samples/bench_b/step_000000.json", tmp_path),
        7,
        2,
        [2],
        False,
    )
    want = {f"eval/bench_a/{m}": v for m, v in want_a.items()} | {
        f"eval/bench_b/{m}": v for m, v in want_b.items()
    }
    want["eval/suite/mean"] = (want["eval/bench_a/avg_at_4"] + want["eval/bench_b/avg_at_2"]) / 2
    want["eval/suite/n_benchmarks"] = 2.0
    assert set(rec.data.metrics) == set(want) == set(metrics)  # exactly these keys, nothing else
    for key, value in want.items():
        assert rec.data.metrics[key] == pytest.approx(value, abs=1e-12), key
    # the shipped base model is partly right: the values are not trivially 0 or 1
    assert 0 < want["eval/suite/mean"] < 1


def test_training_run_logs_the_suite_at_eval_steps(tmp_path):
    a, b = arith_files(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    final = train_run(
        compose_config(
            "task=arith",
            f"tracking.uri={uri}",
            f"run_dir={tmp_path / 'run'}",
            "train.steps=2",
            "eval.every=1",
            "eval.n_prompts=4",
            "eval.n_samples=0",
            "algo.prompts_per_step=2",
            "algo.group_size=2",
            "train.progress=false",
            "train.log_samples_every=0",
            "train.threads=1",
            suite_override(a, b),
        )
    )
    client, rec = only_run(uri)
    steps = {
        key: sorted(m.step for m in client.get_metric_history(rec.info.run_id, key))
        for key in (
            "eval/bench_a/avg_at_4",
            "eval/bench_a/accuracy",
            "eval/bench_b/pass_at_2",
            "eval/suite/mean",
        )
    }
    assert all(s == [0, 1, 2] for s in steps.values()), steps
    assert final["eval/suite/n_benchmarks"] == 2.0 and "eval/accuracy" in final


def test_refusals_are_one_line(tmp_path):
    a, _ = arith_files(tmp_path)
    with pytest.raises(ConfigError, match="eval.suite is empty"):
        eval_run(compose_config("task=arith", "tracking=off"))
    with pytest.raises(ConfigError, match=r"eval.paths.aime24 is not set"):
        eval_run(compose_config("task=arith", "tracking=off", "+eval=paper_math"))
    with pytest.raises(ConfigError, match=r"eval.suite\[0\] \(x\): .*no such file"):
        eval_run(
            compose_config("task=arith", "tracking=off", f"+eval.suite=[{{name: x, path: '{a}.missing'}}]")
        )
    with pytest.raises(ConfigError, match=r"eval.suite\[0\] \(x\): .*row 1: missing field 'question'"):
        eval_run(
            compose_config(
                "task=arith",
                "tracking=off",
                f"+eval.suite=[{{name: x, path: '{a}', read: {{prompt_field: question}}}}]",
            )
        )
    with pytest.raises(ConfigError, match="no checkpoint/"):
        eval_run(
            compose_config(
                "task=arith",
                "tracking=off",
                f"eval.checkpoint={tmp_path}",
                f"+eval.suite=[{{name: x, path: '{a}'}}]",
            )
        )
    refused = entry_point("quadrl-eval", "task=arith", "tracking=off", "+eval=paper_math", cwd=tmp_path)
    assert one_line_refusal(refused, "quadrl-eval") == (
        "quadrl-eval: error: eval.paths.aime24 is not set (it is ??? in the config: give it a value)"
    )
    assert refused.returncode == 2


def test_paper_preset_lists_the_papers_six_benchmarks():
    cfg = compose_config(
        "task=arith",
        "+eval=paper_math",
        *[
            f"eval.paths.{n}=/data/{n}.jsonl"
            for n in ("aime24", "aime25", "amc", "math500", "minerva", "olympiadbench")
        ],
    )
    suite = cfg.eval.suite
    assert [(b.name, b.k, b.temperature, b.top_p) for b in suite] == [
        ("aime24", 32, 1.0, 0.95),
        ("aime25", 32, 1.0, 0.95),
        ("amc", 32, 1.0, 0.95),
        ("math500", 4, 1.0, 0.95),
        ("minerva", 4, 1.0, 0.95),
        ("olympiadbench", 4, 1.0, 0.95),
    ]
    assert suite[3].path == "/data/math500.jsonl"


def test_comparison_view_charts_every_eval_metric_with_a_suite():
    plain = compose_config("task=arith")
    suite = compose_config("task=arith", "+eval.suite=[{name: a, path: a.jsonl, k: 4}]")
    assert comparison_view("p", charts_filter(plain))["chartsSearchFilter"] == "eval/accuracy"
    assert comparison_view("p", charts_filter(suite))["chartsSearchFilter"] == "eval/"
