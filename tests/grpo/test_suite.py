"""Suite metrics (grpo/suite.py): unbiased pass@k against its exact formula, avg@k and the aggregate by hand,
and the benchmark config's refusals."""

from __future__ import annotations

import math

import pytest

from grpo.benchmark import BenchmarkConfig, validate_suite
from grpo.checks import ConfigError
from grpo.evaluate import Completion, pass_at_k
from grpo.suite import benchmark_metrics, headline
from grpo.task import Example


@pytest.mark.parametrize(
    "n, c, k, want",
    [
        (4, 1, 2, 1 - 3 / 6),  # 1 - C(3,2)/C(4,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (6, 2, 2, 1 - 6 / 15),  # 1 - C(4,2)/C(6,2)
        (10, 3, 1, 0.3),  # pass@1 is the fraction correct
        (32, 0, 32, 0.0),
        (4, 4, 4, 1.0),
        (4, 1, 4, 1.0),  # n - c < k: some draw of 4 holds the correct one
    ],
)
def test_pass_at_k_hand_values(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want, abs=1e-12)


def test_pass_at_k_is_the_exact_formula_everywhere_small():
    for n in range(1, 21):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - math.comb(n - c, k) / math.comb(n, k)
                assert pass_at_k(n, c, k) == pytest.approx(exact, abs=1e-12), (n, c, k)
    assert pass_at_k(1000, 7, 100) == pytest.approx(1 - math.comb(993, 100) / math.comb(1000, 100), rel=1e-9)


def _c(reward: float) -> Completion:
    return Completion(Example("p", "1"), "t", reward, None)


def test_benchmark_metrics_by_hand():
    cfg = BenchmarkConfig(name="b", path="x", k=4, pass_k=[1, 2], greedy=True)
    greedy = [_c(1.0), _c(0.0), _c(1.0)]
    groups = [[_c(r) for r in rs] for rs in ([1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0])]
    got = benchmark_metrics(cfg, greedy, groups)
    assert got == pytest.approx(
        {
            "accuracy": 2 / 3,
            "avg_at_4": 3 / 12,
            "pass_at_1": (1 / 4 + 2 / 4 + 0) / 3,
            "pass_at_2": ((1 - 3 / 6) + (1 - 1 / 6) + 0) / 3,
        }
    )
    assert headline(cfg) == "avg_at_4"
    assert headline(BenchmarkConfig(name="g", k=0, greedy=True)) == "accuracy"
    # a partial reward counts toward avg@k but is not "correct" for pass@k
    half = benchmark_metrics(BenchmarkConfig(name="h", k=2, pass_k=[2]), [], [[_c(0.5), _c(0.5)]])
    assert half == {"avg_at_2": 0.5, "pass_at_2": 0.0}


@pytest.mark.parametrize(
    "bench, why",
    [
        (BenchmarkConfig(name="", path="x"), "name must match"),
        (BenchmarkConfig(name="suite", path="x"), "reserved"),
        (BenchmarkConfig(name="a", path="x", task="arith"), "not both"),
        (BenchmarkConfig(name="a", k=0), "measure nothing"),
        (BenchmarkConfig(name="a", k=4, pass_k=[8]), r"pass_k values must be in \[1, k=4\]"),
        (BenchmarkConfig(name="a", top_p=0.0), "top_p"),
        (BenchmarkConfig(name="a", temperature=0.0), "temperature"),
        (BenchmarkConfig(name="a", path="x", read={"prompt": "q"}), "read accepts"),
        (BenchmarkConfig(name="a", read={"prompt_field": "q"}), "read applies to a path"),
    ],
)
def test_benchmark_config_refusals(bench, why):
    with pytest.raises(ConfigError, match=why):
        validate_suite([bench])


def test_benchmark_names_must_differ():
    with pytest.raises(ConfigError, match="two benchmarks are named 'a'"):
        validate_suite([BenchmarkConfig(name="a", path="x"), BenchmarkConfig(name="a", path="y")])
    validate_suite([BenchmarkConfig(name="a", path="x"), BenchmarkConfig(name="b", task="arith", k=2)])
