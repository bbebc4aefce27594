"""Reward functions by import path with TRL's signature (experiments/rewards.py): they score like the built-in
verifier, run in the worker pool (a hang or a crash scores 0 and is counted), None is "no reward" and counted,
weights combine them, each is logged as train/reward/<name>, and a path that does not import is refused in one
line before any model loads."""

from __future__ import annotations

import json

import pytest

from experiments.tasks import make_task
from grpo.task import Example

USER_MODULE = '''
import time

from math_verify import LatexExtractionConfig, parse, verify


def accuracy(prompts, completions, answer, **kwargs):
    """The usual TRL accuracy reward: math-verify on the completion against the reference answer."""
    out = []
    for completion, reference in zip(completions, answer):
        gold = parse("\\\\boxed{" + str(reference) + "}", extraction_config=[LatexExtractionConfig()])
        pred = parse(completion, extraction_config=[LatexExtractionConfig()])
        out.append(float(bool(gold and pred and verify(gold, pred))))
    return out


def hang(prompts, completions, **kwargs):
    while True:
        time.sleep(0.01)


def boom(prompts, completions, **kwargs):
    raise RuntimeError("user bug")


def wrong_type(prompts, completions, **kwargs):
    return ["high"]


def none_for_odd(prompts, completions, answer, **kwargs):
    return [None if int(a) % 2 else 1.0 for a in answer]


def const(prompts, completions, **kwargs):
    return [0.25 for _ in completions]


def none_all(prompts, completions, **kwargs):
    return [None for _ in completions]


def conversational(prompts, completions, data_source, **kwargs):
    """TRL's conversational form: prompts and completions are message lists; columns ride along."""
    ok = completions[0][0]["role"] == "assistant" and prompts[0][-1]["role"] == "user"
    return [float(ok and data_source[0] == "sums")]


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_rewards(tmp_path, monkeypatch):
    """An importable user module of reward functions (workers are forked: they inherit sys.path)."""
    (tmp_path / "user_rewards.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "user_rewards"


@pytest.fixture
def problems(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(8)]
    rows += [{"problem": "Half of one?", "answer": "0.5"}, {"problem": "Odd one?", "answer": "7"}]
    path = tmp_path / "problems.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def task(path, timeout_seconds=10, **params):
    # a generous deadline where nothing should hang: a loaded machine once took over 1 s to start a worker and
    # import the verifier, which scored correct answers 0; the hang test sets its own short deadline
    return make_task(
        "math_file",
        path=str(path),
        test_fraction=0.5,
        timeout_seconds=timeout_seconds,
        verify_workers=2,
        **params,
    )


def _examples(t):
    by_problem = {e.meta["problem"]: e for e in list(t.train()) + list(t.test())}
    return [
        by_problem[p]
        for p in ("What is 2 + 2?", "Half of one?", "What is 3 + 3?", "Odd one?", "What is 0 + 0?")
    ]


COMPLETIONS = [
    "2 + 2 = \\boxed{4}",
    "one half: \\boxed{\\frac{1}{2}}",
    "\\boxed{5}",
    "I give up",
    "\\boxed{0}",
]


def test_trl_function_scores_like_the_builtin_verifier(problems, user_rewards):
    builtin = task(problems)
    user = task(problems, reward_fn=f"{user_rewards}:accuracy")
    examples = _examples(builtin)
    want = builtin.rewards(examples, COMPLETIONS)
    got = user.rewards(_examples(user), COMPLETIONS)
    assert want.rewards == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert got.rewards == want.rewards and got.timeouts == 0 and not got.errors
    assert got.parts == {"accuracy": (3.0, 5, 0)}


def test_hang_and_crash_score_zero_and_are_counted(problems, user_rewards):
    fns = [f"{user_rewards}:{name}" for name in ("accuracy", "hang", "boom", "wrong_type")]
    t = task(problems, timeout_seconds=2, reward_fn=fns, reward_weights=[1.0, 5.0, 5.0, 5.0])
    got = t.rewards(_examples(t), COMPLETIONS)
    assert got.rewards == [1.0, 1.0, 0.0, 0.0, 1.0]  # only accuracy's values: the others scored 0
    assert got.timeouts == 5  # every hang stopped at its deadline
    assert got.errors == {"RuntimeError": 5, "TypeError": 5}
    assert got.parts["hang"] == (0.0, 5, 0) and got.parts["boom"] == (0.0, 5, 0)


def test_none_is_no_reward_and_weights_combine(problems, user_rewards):
    t = task(
        problems,
        reward_fn=[f"{user_rewards}:none_for_odd", f"{user_rewards}:const"],
        reward_weights=[2.0, 1.0],
    )
    examples = _examples(t)  # answers 4, 0.5, 6, 7, 0: int("0.5") raises -> that call errors
    got = t.rewards(examples, COMPLETIONS)
    assert got.rewards == [2.25, 0.25, 2.25, 0.25, 2.25]
    assert got.parts["none_for_odd"] == (3.0, 4, 1) and got.errors == {"ValueError": 1}
    assert got.parts["const"] == (1.25, 5, 0)


def test_conversational_rows_get_trl_conversational_arguments(tmp_path, user_rewards):
    rows = [
        {
            "data_source": "sums",
            "prompt": [{"role": "user", "content": f"{i}+{i}"}],
            "reward_model": {"ground_truth": str(2 * i)},
        }
        for i in range(6)
    ]
    path = tmp_path / "verl.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    t = task(
        path,
        prompt_field="prompt",
        answer_field="reward_model.ground_truth",
        reward_fn=f"{user_rewards}:conversational",
    )
    examples = list(t.train())[:2]
    assert t.rewards(examples, ["x", "y"]).rewards == [1.0, 1.0]


@pytest.mark.parametrize(
    "spec, why",
    [
        ("user_rewards:absent", "cannot be used: AttributeError"),
        ("no_such_module_here:f", "cannot be used: ModuleNotFoundError"),
        ("user_rewards:NOT_CALLABLE", "cannot be used: TypeError"),
        ("user_rewards", "not of the form 'module.path:function'"),
        (["user_rewards:const", "user_rewards:const"], "share the name 'const'"),
    ],
)
def test_bad_reward_fn_refused_at_load_time(problems, user_rewards, spec, why):
    with pytest.raises(ValueError, match=why):
        task(problems, reward_fn=spec)


def test_reward_weights_must_match(problems, user_rewards):
    with pytest.raises(ValueError, match="2 weights for 1 reward functions"):
        task(problems, reward_fn=f"{user_rewards}:const", reward_weights=[1.0, 2.0])


def test_train_refuses_a_bad_path_in_one_line_before_any_model(problems, user_rewards):
    from experiments.train import check
    from grpo.checks import ConfigError
    from tests.conftest import compose_config

    raw = compose_config(
        "task=math_file",
        f"task.path={problems}",
        "task.test_fraction=0.5",
        "task.reward_fn=user_rewards:absent",
        "tracking=off",
    )
    with pytest.raises(
        ConfigError, match=r"reward_fn 'user_rewards:absent' cannot be used: AttributeError"
    ) as info:
        check(raw)
    assert "\n" not in str(info.value)


@pytest.mark.usefixtures("one_torch_thread")
def test_trainer_logs_each_function(tmp_path, tiny_model_dir, math_jsonl, user_rewards):
    from tests.conftest import make_trainer

    trainer = make_trainer(
        tmp_path,
        tiny_model_dir,
        math_jsonl,
        "task.reward_fn=[user_rewards:const,user_rewards:none_all]",
        "task.timeout_seconds=2",
        "train.steps=1",
    )
    metrics = trainer.step(0)
    assert metrics["train/reward/const"] == pytest.approx(0.25)
    assert metrics["train/reward/const/none"] == 0 and metrics["train/reward/none_all/none"] == 16
    assert metrics["train/reward_mean"] == pytest.approx(0.25)
    assert "train/reward/const/n" not in metrics


def test_example_without_columns_passes_its_answer(problems, user_rewards):
    t = task(problems, reward_fn=f"{user_rewards}:accuracy")
    bare = Example(prompt="2+2?", answer="4")
    assert t.rewards([bare], ["\\boxed{4}"]).rewards == [1.0]
