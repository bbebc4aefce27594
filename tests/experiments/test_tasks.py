"""Task generators and verifiers: determinism, disjoint splits, rewards on right / wrong / garbage answers."""

from __future__ import annotations

import json
import random
import threading
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from experiments.tasks import TASKS, make_task
from experiments.tasks.arith import worked_sum
from experiments.tasks.countdown import (
    evaluate_expression,
    shuffled_solution,
    solutions,
    solve,
    uses_allowed_numbers,
)
from experiments.tasks.math_file import last_boxed, verify_answer
from grpo.task import Example

HYPOTHESIS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def arith():
    return make_task("arith")


@pytest.fixture(scope="module")
def countdown():
    return make_task("countdown")


@pytest.fixture
def math_rows(tmp_path):
    rows = [{"problem": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(60)]
    rows += [{"problem": "Half of one?", "answer": "0.5"}, {"problem": "x if 2x = 6?", "answer": 3}]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def keys(examples):
    return {ex.prompt for ex in examples}


# --------------------------------------------------------------------------------------------- registry


def test_registry_and_make_task_errors():
    assert {"arith", "countdown", "math_file"} <= set(TASKS)
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        make_task("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        make_task("arith", digits=3)
    with pytest.raises(ValueError, match="missing required parameter"):
        make_task("math_file")
    with pytest.raises(ValueError):
        make_task("arith", min_digits=5, max_digits=4)


# --------------------------------------------------------------------------------------------- generators


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_generators_are_deterministic(name):
    a, b = make_task(name, n_test=50, seed=3), make_task(name, n_test=50, seed=3)
    assert list(a.test()) == list(b.test())
    assert a.train()[:100] == b.train()[:100]
    assert a.train()[12345] == b.train()[12345]
    other = make_task(name, n_test=50, seed=4)
    assert other.train()[:100] != a.train()[:100]  # the seed moves the train stream...
    assert list(other.test()) == list(a.test())  # ...but the test split follows test_seed only
    assert list(make_task(name, n_test=50, test_seed=1).test()) != list(a.test())


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_train_and_test_are_disjoint(name):
    task = make_task(name, n_test=300)
    test = task.test()
    assert len(test) == 300 and len(keys(test)) == 300
    train = task.train()[:3000] + make_task(name, n_test=10, seed=7).train()[:3000]
    if name == "arith":  # a+b and b+a are one problem
        canon = {tuple(sorted((ex.meta["a"], ex.meta["b"]))) for ex in test}
        assert not any(tuple(sorted((ex.meta["a"], ex.meta["b"]))) in canon for ex in train)
    else:  # same numbers in any order + same target are one problem
        canon = {(tuple(sorted(ex.meta["numbers"])), ex.meta["target"]) for ex in test}
        assert not any((tuple(sorted(ex.meta["numbers"])), ex.meta["target"]) in canon for ex in train)
    assert not keys(test) & keys(train)


def test_arith_format(arith):
    assert worked_sum(1234, 567) == "4+7+0=11,3+6+1=10,2+5+1=8,1+0+0=1>1801"
    assert worked_sum(999, 1) == "9+1+0=10,9+0+1=10,9+0+1=10>1000"
    for ex in arith.test():
        a, b = ex.meta["a"], ex.meta["b"]
        assert 100 <= a <= 9999 and 100 <= b <= 9999
        assert ex.prompt == f"{a}+{b}=" and ex.answer == str(a + b)
        assert ex.target.endswith(">" + ex.answer)
        assert len(ex.target) + 1 <= arith.max_new_tokens
    lengths = [len(ex.target) for ex in arith.train()[:500]]
    assert 28 <= sum(lengths) / len(lengths) <= 45


def test_countdown_problems_are_solvable_and_short(countdown):
    for ex in list(countdown.test()) + countdown.train()[:300]:
        numbers, target = ex.meta["numbers"], ex.meta["target"]
        assert 3 <= len(numbers) <= 4 and all(1 <= n <= 10 for n in numbers) and 1 <= target <= 99
        assert target not in numbers  # allow_trivial=False
        assert ex.prompt == ",".join(map(str, numbers)) + f":{target}="
        assert ex.answer == solve(numbers, target)
        assert 3 <= len(ex.target) <= 15
        for expression in (ex.target, ex.answer):
            value, literals = evaluate_expression(expression)
            assert value == target and uses_allowed_numbers(literals, numbers)


def test_countdown_sft_targets_vary_unless_shortest(countdown):
    targets = [ex.target for ex in countdown.train()[:400]]
    answers = [ex.answer for ex in countdown.train()[:400]]
    assert sum(t != a for t, a in zip(targets, answers, strict=True)) > 100  # random solution + operand order
    shortest = make_task("countdown", n_test=20, solution="shortest")
    assert all(ex.target == ex.answer for ex in shortest.train()[:400])
    with pytest.raises(ValueError, match="solution"):
        make_task("countdown", n_test=20, solution="longest")


@HYPOTHESIS
@given(numbers=st.lists(st.integers(1, 10), min_size=2, max_size=4), seed=st.integers(0, 10**6))
def test_shuffled_solutions_keep_value_and_numbers(numbers, seed):
    rng = random.Random(seed)
    for value, expression in list(solutions(tuple(sorted(numbers))).items())[:40]:
        shuffled = shuffled_solution(expression, rng)
        got, literals = evaluate_expression(shuffled)
        assert got == Fraction(*value) and sorted(literals) == sorted(evaluate_expression(expression)[1])


# --------------------------------------------------------------------------------------------- rewards


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_sft_target_gets_full_reward_on_every_test_example(name, arith, countdown):
    task = {"arith": arith, "countdown": countdown}[name]
    assert all(task.reward(ex, ex.target) == 1.0 for ex in task.test())
    assert all(task.extract_answer(ex.target) is not None for ex in task.test())


def test_arith_wrong_answers_get_zero(arith):
    for ex in list(arith.test())[:50]:
        right = int(ex.answer)
        steps = ex.target.rsplit(">", 1)[0]
        assert arith.reward(ex, f"{steps}>{right + 1}") == 0.0
        assert arith.reward(ex, f"{steps}>{right - 10}") == 0.0
        assert arith.reward(ex, steps) == 0.0  # no answer marker
        assert arith.reward(ex, f"{steps}>{right}x") == 0.0
        assert arith.reward(ex, f"{steps}>{right}") == 1.0
        assert arith.reward(ex, f">{right}") == 1.0  # steps are not graded
    assert arith.extract_answer("1+2+0=3>42 ") == "42"
    assert arith.extract_answer("1+2+0=3>４２") is None  # non-ASCII digits are not digits here


def test_countdown_verifier(countdown):
    ex = Example(
        prompt="3,5,7,9:24=", answer="3*5+9", target="3*5+9", meta={"numbers": [3, 5, 7, 9], "target": 24}
    )
    assert countdown.reward(ex, "3*5+9") == 1.0
    assert countdown.reward(ex, " (9+3*5) ") == 1.0
    assert countdown.reward(ex, "(9-5)*(3+7)-16") == 0.0  # 16 not given
    assert countdown.reward(ex, "3*(5+3)") == 0.0  # 3 used twice
    assert countdown.reward(ex, "9+9+3+3") == 0.0  # reused numbers
    assert countdown.reward(ex, "3*5+7") == 0.0  # wrong value
    assert countdown.reward(ex, "24") == 0.0  # 24 is not a given number
    assert countdown.reward(ex, "9*3-5+7/7") == 0.0  # 7 reused
    assert countdown.reward(ex, "9/(5-5)") == 0.0  # division by zero
    assert countdown.reward(ex, "(3*5+9") == 0.0 and countdown.reward(ex, "3*5+9)") == 0.0
    assert countdown.reward(ex, "-3*5+9") == 0.0  # no unary minus
    assert countdown.reward(ex, "3 * 5 + 9 = 24") == 0.0
    assert countdown.reward(ex, "") == 0.0 and countdown.extract_answer("  ") is None
    # exact rational arithmetic: 7/3*9 + ... must not be fooled by floating point
    ex2 = Example(prompt="", answer="", meta={"numbers": [1, 3, 7, 9], "target": 21})
    assert countdown.reward(ex2, "7/3*9") == 1.0 and evaluate_expression("7/3*9")[0] == Fraction(21)
    assert countdown.reward(ex2, "7/9*3*9") == 0.0  # reuse


@pytest.mark.parametrize(
    "injection",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "eval('24')",
        "().__class__.__bases__[0]",
        "exec('x=24')",
        "lambda: 24",
        "3*5+9 or __import__('os')",
        "3*5+9; import os",
        "3**5",
        "0x18",
        "24.0",
        "1e1",
    ],
)
def test_countdown_rejects_code_and_non_arithmetic(countdown, injection):
    ex = Example(prompt="", answer="", meta={"numbers": [3, 5, 7, 9, 24, 0, 1], "target": 24})
    assert countdown.reward(ex, injection) == 0.0
    assert evaluate_expression(injection) is None


def test_countdown_bounded_parser():
    deep = "(" * 5000 + "1" + ")" * 5000
    assert evaluate_expression(deep) is None
    assert evaluate_expression("(" * 20 + "1" + ")" * 20) == (Fraction(1), [1])
    assert evaluate_expression("(" * 40 + "1" + ")" * 40) is None  # nesting deeper than MAX_DEPTH
    assert evaluate_expression("1+" * 300 + "1") is None  # longer than the limit


ANY_TEXT = st.one_of(
    st.text(max_size=300),
    st.text(alphabet="0123456789+-*/()=>,. \n", max_size=120),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
)


@HYPOTHESIS
@given(text=ANY_TEXT)
def test_arith_garbage_never_raises(arith, text):
    ex = arith.test()[0]
    r = arith.reward(ex, text)
    assert r in (0.0, 1.0)
    if r == 1.0:  # only when the last marker is followed by the right sum
        assert arith.extract_answer(text).lstrip("0") == ex.answer
    arith.extract_answer(text)


@HYPOTHESIS
@given(text=ANY_TEXT)
def test_countdown_garbage_never_raises(countdown, text):
    ex = countdown.test()[0]
    r = countdown.reward(ex, text)
    assert r in (0.0, 1.0)
    if r == 1.0:
        value, literals = evaluate_expression(text.strip())
        assert value == ex.meta["target"] and uses_allowed_numbers(literals, ex.meta["numbers"])


@pytest.mark.parametrize("name", ["arith", "countdown"])
def test_extreme_inputs_score_zero(name, arith, countdown):
    task = {"arith": arith, "countdown": countdown}[name]
    ex = task.test()[0]
    for text in ["", "\x00\xff", "(" * 100_000, "9" * 1_000_000, ">" + "9" * 5000, None, 12, b"3*5+9"]:
        assert task.reward(ex, text) == 0.0  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------- math_file


def test_math_file_loads_and_splits(math_rows):
    task = make_task("math_file", path=str(math_rows), test_fraction=0.3, n_test=None)
    train, test = task.train(), task.test()
    assert len(train) + len(test) == 62 and train and test
    assert not {ex.meta["problem"] for ex in train} & {ex.meta["problem"] for ex in test}
    ex = next(ex for ex in list(train) + list(test) if ex.meta["problem"] == "x if 2x = 6?")
    assert ex.answer == "3" and ex.target == "\\boxed{3}" and ex.prompt.startswith("x if 2x = 6?\n")
    assert "\\boxed{}" in ex.prompt
    capped = make_task("math_file", path=str(math_rows), test_fraction=0.3, n_test=5)
    assert len(capped.test()) == 5 and set(keys(capped.test())) <= set(keys(test))
    assert keys(capped.train()) == keys(train)
    plain = make_task("math_file", path=str(math_rows), prompt_template="Q: {prompt} A:")
    assert all(e.prompt.startswith("Q: ") and e.prompt.endswith(" A:") for e in plain.train())


def test_math_file_test_path(tmp_path, math_rows):
    test_file = tmp_path / "test.jsonl"
    test_file.write_text(json.dumps({"problem": "What is 1 + 1?", "answer": "2"}) + "\n")
    task = make_task("math_file", path=str(math_rows), test_path=str(test_file))
    assert [e.meta["problem"] for e in task.test()] == ["What is 1 + 1?"]
    assert "What is 1 + 1?" not in {e.meta["problem"] for e in task.train()}
    assert len(task.train()) == 61


@pytest.mark.parametrize(
    "bad_row, why",
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"problem": "x"}), "missing field 'answer'"),
        (json.dumps({"answer": "1"}), "missing field 'problem'"),
        (json.dumps({"problem": 3, "answer": "1"}), "'problem' must be a non-empty string"),
        (json.dumps({"problem": "x", "answer": [1]}), "'answer' must be a string or a number"),
        (json.dumps({"problem": "x", "answer": None}), "'answer' must be a string or a number"),
        (json.dumps([1, 2]), "expected a JSON object"),
    ],
)
def test_math_file_malformed_row_names_file_and_row(tmp_path, bad_row, why):
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"problem": "1+1?", "answer": "2"})
    path.write_text("\n".join([good, good, bad_row, good]) + "\n")
    with pytest.raises(ValueError, match="row 3") as info:
        make_task("math_file", path=str(path))
    assert str(path) in str(info.value) and why in str(info.value)


def test_math_file_missing_file(tmp_path):
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        make_task("math_file", path=str(missing))


def test_math_file_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rows = [{"question": f"{i}+{i}?", "sol": str(2 * i)} for i in range(30)]
    path = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    task = make_task("math_file", path=str(path), prompt_field="question", answer_field="sol", n_test=3)
    assert len(task.test()) == 3 and len(task.train()) + len(task.test()) <= 30
    with pytest.raises(ValueError, match=r"rows\.parquet: row 1: missing field 'problem'"):
        make_task("math_file", path=str(path))


def test_math_verify_reward(math_rows):
    task = make_task("math_file", path=str(math_rows), test_fraction=0.5, n_test=None)
    half = Example(prompt="Half of one?", answer="0.5")
    assert task.reward(half, "so the answer is \\boxed{\\frac{1}{2}}") == 1.0
    assert task.reward(half, "\\boxed{\\frac{1}{3}}") == 0.0
    assert task.reward(half, "I think it is 0.5") == 1.0  # fallback: last number
    assert task.reward(half, "first \\boxed{0.5} then \\boxed{7}") == 0.0  # the last box counts
    assert (
        task.reward(half, "\\boxed{\\frac{1}{2}") == 0.0
    )  # unbalanced box: falls back to the last number, 2
    assert task.extract_answer("\\boxed{x^{2}+1} done") == "x^{2}+1"
    assert last_boxed("a \\boxed{1} b \\fbox{ {2} }") == "{2}"
    three = Example(prompt="", answer="3")
    assert task.reward(three, "\\boxed{3}") == 1.0 and task.reward(three, "\\boxed{4}") == 0.0


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(st.text(max_size=200), st.text(alphabet="\\boxed{}0123456789/^()+-x ", max_size=80)))
def test_math_file_garbage_never_raises(math_rows, text):
    task = make_task("math_file", path=str(math_rows))
    r = task.reward(Example(prompt="", answer="0.5"), text)
    assert r in (0.0, 1.0)


def test_math_verify_works_off_the_main_thread(math_rows):
    task = make_task("math_file", path=str(math_rows), verify_workers=1)
    half = Example(prompt="", answer="0.5")
    results: list[float] = []

    def work():
        results.append(task.reward(half, "\\boxed{\\frac{1}{2}}"))
        results.append(task.reward(half, "\\boxed{\\frac{2}{3}}"))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join(60)
    assert results == [1.0, 0.0]


def test_math_verify_never_reaches_sympy_parse_expr(math_rows, monkeypatch):
    # math-verify's default expression extractor hands text to sympy's parse_expr, which runs Python eval;
    # these completions reached it before only LaTeX extraction was enabled
    import math_verify.parser as mv_parser

    called: list[str] = []
    real = mv_parser.parse_expr

    def spy(text, *args, **kwargs):  # records, then behaves as before (math-verify swallows exceptions)
        called.append(text)
        return real(text, *args, **kwargs)

    monkeypatch.setattr(mv_parser, "parse_expr", spy)
    mv_parser.parse_expr_cached.cache_clear()
    task = make_task("math_file", path=str(math_rows))
    # in-process: the spy must see what the worker processes run (verify_answer, on the extracted answer)
    verdicts = []
    for text in ["\\boxed{a\\b 2*3 }", "\\boxed{=1+5 .}", "\\boxed{\\foo 2*3 }", "\\boxed{6}", "so 6"]:
        verdicts.append(verify_answer("6", task.extract_answer(text)))
    assert called == []
    assert verdicts[-2:] == [True, True]
    assert verify_answer("6", task.extract_answer("\\boxed{2*3}")) is True
