"""End to end through ``experiments.train.run``: the real-model path (local HF dir + JSONL + LoRA), resume
bit for bit, a crash marked FAILED with its checkpoint kept, and (slow) GRPO learning on the built-in base."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from experiments.train import run
from grpo.trainer import Trainer
from tests.conftest import compose_config, math_task


def small(tmp_path: Path, *extra: str) -> list[str]:
    return [
        f"run_dir={tmp_path / 'run'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "algo.prompts_per_step=4",
        "algo.group_size=4",
        "sampling.max_new_tokens=4",
        "train.progress=false",
        "eval.n_prompts=20",
        "eval.n_samples=2",
        "eval.pass_k=[1,2]",
        "train.log_samples_every=0",
        "optim.lr=3e-3",
        *extra,
    ]


def history(uri: str, run_id: str) -> dict[str, dict[int, float]]:
    """Every metric's history, deduplicated by step (a resumed run re-logs the steps after its checkpoint)."""
    client = MlflowClient(uri)
    out: dict[str, dict[int, float]] = {}
    for key in client.get_run(run_id).data.metrics:
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.timestamp):
            out.setdefault(key, {})[m.step] = m.value
    return out


def only_run(uri: str):
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("quadrl").experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_local_model_jsonl_lora_trains_adapter_only(tmp_path, sft_model_dir, math_jsonl):
    cfg = compose_config(
        *small(tmp_path, "train.steps=4", "eval.every=0", "train.checkpoint_every=2"),
        "model=local_lora",
        f"model.path={sft_model_dir}",
        "model.lora.r=4",
        "model.lora.dropout=0.0",
        "algo.beta=0.05",
        *math_task(math_jsonl),
    )
    final = run(cfg)
    assert 0.0 <= final["eval/accuracy"] <= 1.0
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = only_run(uri)
    assert rec.info.status == "FINISHED"
    hist = history(uri, rec.info.run_id)
    assert sorted(hist["train/reward_mean"]) == [0, 1, 2, 3]
    assert any(v > 0 for v in hist["train/reward_mean"].values()), "the SFT model should be right sometimes"
    assert all(v >= 0 for v in hist["train/kl"].values())  # k3 is non-negative; reference = adapter disabled
    # the checkpoint holds only the adapter: the base weights were never trainable
    state = torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["model"] and all("lora_" in k for k in state["model"])
    assert any(float(v.abs().sum()) > 0 for k, v in state["model"].items() if "lora_B" in k)  # B starts at 0
    assert (tmp_path / "run" / "checkpoint" / "model" / "adapter_config.json").is_file()


def test_resume_is_bit_identical(tmp_path, sft_model_dir, math_jsonl, monkeypatch):
    common = [
        "train.steps=6",
        "train.checkpoint_every=3",
        "eval.every=3",
        "model=local",
        f"model.path={sft_model_dir}",
        *math_task(math_jsonl),
    ]
    straight = tmp_path / "straight"
    run(compose_config(*small(straight, *common)))

    broken = tmp_path / "broken"
    original = Trainer.step

    def crash_at_4(self, step):
        if step == 4:
            raise KeyboardInterrupt("simulated preemption")
        return original(self, step)

    monkeypatch.setattr(Trainer, "step", crash_at_4)
    with pytest.raises(KeyboardInterrupt):
        run(compose_config(*small(broken, *common)))
    uri_b = f"sqlite:///{broken / 'mlflow.db'}"
    assert only_run(uri_b).info.status == "KILLED"
    assert torch.load(broken / "run" / "checkpoint" / "state.pt", weights_only=True)["next_step"] == 3
    monkeypatch.setattr(Trainer, "step", original)
    run(compose_config(*small(broken, *common)))  # same run dir: resumes from step 3 into the same run

    rec_s, rec_b = only_run(f"sqlite:///{straight / 'mlflow.db'}"), only_run(uri_b)
    assert rec_b.info.status == "FINISHED" and "quadrl.resumed_at" in rec_b.data.tags
    h_s, h_b = (
        history(f"sqlite:///{straight / 'mlflow.db'}", rec_s.info.run_id),
        history(uri_b, rec_b.info.run_id),
    )
    skip = ("perf/",)  # wall-clock timings differ by nature
    keys = sorted(k for k in h_s if not k.startswith(skip))
    assert keys == sorted(k for k in h_b if not k.startswith(skip))
    assert any(v != 0 for v in h_s["train/grad_norm"].values())  # a real update happened
    for key in keys:
        assert h_s[key] == pytest.approx(h_b[key], abs=0, rel=0, nan_ok=True), key
    w_s = torch.load(straight / "run" / "checkpoint" / "state.pt", weights_only=True)["model"]
    w_b = torch.load(broken / "run" / "checkpoint" / "state.pt", weights_only=True)["model"]
    assert all(torch.equal(w_s[k], w_b[k]) for k in w_s)


def test_crash_marks_failed_and_keeps_checkpoint(tmp_path, sft_model_dir, math_jsonl, monkeypatch):
    original = Trainer.step

    def fail_at_3(self, step):
        if step == 3:
            raise RuntimeError("boom: simulated crash")
        return original(self, step)

    monkeypatch.setattr(Trainer, "step", fail_at_3)
    cfg = compose_config(
        *small(
            tmp_path,
            "train.steps=5",
            "train.checkpoint_every=2",
            "eval.every=0",
            "model=local",
            f"model.path={sft_model_dir}",
            *math_task(math_jsonl),
        )
    )
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = only_run(uri)
    assert rec.info.status == "FAILED"
    assert sorted(history(uri, rec.info.run_id)["train/reward_mean"]) == [0, 1, 2]  # nothing recorded is lost
    assert torch.load(tmp_path / "run" / "checkpoint" / "state.pt", weights_only=True)["next_step"] == 2


def test_unset_sampling_budget_is_the_tasks(tmp_path, tiny_model_dir, math_jsonl):
    """sampling.max_new_tokens: null (the default) generates up to the task's budget, and logs that number."""
    overrides = [o for o in small(tmp_path) if not o.startswith("sampling.max_new_tokens")]
    cfg = compose_config(
        *overrides,
        "train.steps=2",
        "eval.every=0",
        "model=local",
        f"model.path={tiny_model_dir}",
        *math_task(math_jsonl),
        "task.max_new_tokens=3",
    )
    assert cfg.sampling.max_new_tokens is None
    run(cfg)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    rec = only_run(uri)
    assert rec.data.params["sampling.max_new_tokens"] == "3"
    lengths = history(uri, rec.info.run_id)["train/response_len"].values()
    assert all(0 < v <= 3 for v in lengths), lengths  # an untrained model rarely stops by itself: ~3


def test_two_runs_from_the_shipped_base_model_log_the_same_numbers(tmp_path):
    """model=tiny starts from the shipped arith base model (verified, never built) and, on one machine, two runs
    of the same config log bit-identical values for every metric at every step (perf/* timings aside)."""
    histories = []
    for name in ("a", "b"):
        cfg = compose_config(
            *small(
                tmp_path / name,
                "train.steps=3",
                "eval.every=3",
                "sampling.max_new_tokens=null",
                "optim.lr=1e-4",
            ),
            "diagnostics.every=2",
            "train.threads=1",
        )
        run(cfg)
        uri = f"sqlite:///{tmp_path / name / 'mlflow.db'}"
        rec = only_run(uri)
        sha = rec.data.tags["quadrl.base_model"]
        assert (
            sha.startswith("shipped:")
            and rec.data.tags["quadrl.cpu"]
            and rec.data.tags["quadrl.threads"] == "1"
        )
        logged = history(uri, rec.info.run_id)
        # repr: bit for bit, and an empty quadrant's NaN mean equals itself
        histories.append(
            {k: {t: repr(v) for t, v in h.items()} for k, h in logged.items() if "perf/" not in k}
        )
    assert histories[0].keys() == histories[1].keys() and len(histories[0]) > 50
    assert histories[0] == histories[1]
    assert float(histories[0]["eval/accuracy"][0]) > 0.2  # the shipped base model, not a random one


@pytest.mark.slow
@pytest.mark.ci
def test_grpo_raises_test_accuracy_on_builtin_base(tmp_path):
    """GRPO on the shipped arith base model (pre-trained into 20-60% greedy accuracy)."""
    cfg = compose_config(
        f"run_dir={tmp_path / 'run'}",
        f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
        "train.progress=false",
        "train.steps=30",
        "eval.every=30",
        "eval.n_samples=0",
        "seed=0",
    )
    run(cfg)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    acc = history(uri, only_run(uri).info.run_id)["eval/accuracy"]
    # 200 test prompts: a binomial standard error of <= 0.035 per measurement; demand > 4 of them
    assert 0.2 <= acc[0] <= 0.6, acc
    assert acc[30] - acc[0] >= 0.15, acc
