"""Coverage of the reports' 95% intervals, by simulation: how often the interval of a mean over n seeds holds the
true mean (analysis.stats.t_interval, the Student-t interval every table and the reference check use).

Each case draws 2,000 independent sets of n seeds and counts the intervals that hold the true mean. At a true
coverage of 95% the count's binomial sd is sqrt(0.95 x 0.05 / 2000) = 0.49 points, so the tolerance
[0.93, 0.97] is about 4 sd either side of 95%: a correct interval fails it about once in 10^4 runs (and never
here: the draws are seeded), and the percentile bootstrap the reports used before (74.7%, 84.7%, 90.7% on these
normal seeds at n = 3, 5, 10) or a z-interval (81.1%, 88.6%, 92.0%) fails it (both planted once and seen failing).

Measured with these seeds (t-interval): normal seeds 94.9%, 95.9%, 95.0% at n = 3, 5, 10; seeds of which each
collapses with probability 1/2 (0.05 +- 0.02 against 0.60 +- 0.05: a skewed, two-mode case) 74.1%, 94.3%, 94.2%.
At n = 3 the two-mode case is far below 95% -- all three seeds fall in one mode a quarter of the time, and then
no interval built from them reaches the other -- which a test states. Rarer collapses are worse
(docs/guides/analysis.md): with p = 0.2 per seed the t-interval covers 72.4%, 67.9%, 88.9% at n = 3, 5, 10
(10,000 draws), since in 51% (n = 3) and 33% (n = 5) of the draws no seed collapsed and the seeds carry no sign
of the collapse mode; no interval over n <= 5 seeds reaches 95% there. Strong skew without two modes costs less
but still costs: lognormal(0, 0.5) seeds 92.3%, 91.6%, 92.8% at n = 3, 5, 10 (10,000 draws).
"""

from __future__ import annotations

import numpy as np
import pytest

from analysis.stats import mean_difference_ci, t_interval

DRAWS = 2000
LOW, HIGH = 0.93, 0.97


def normal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    return rng.normal(0.6, 0.05, shape)


def half_collapsed(rng: np.random.Generator, shape: tuple[int, int], p: float = 0.5) -> np.ndarray:
    """Each seed collapses (0.05 +- 0.02) with probability p, else learns (0.60 +- 0.05); true mean 0.6 - 0.55 p."""
    return np.where(rng.random(shape) < p, rng.normal(0.05, 0.02, shape), rng.normal(0.6, 0.05, shape))


def coverage(draws: np.ndarray, true_mean: float) -> float:
    return float(np.mean([lo <= true_mean <= hi for lo, hi in map(t_interval, draws)]))


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_interval_covers_the_mean_of_normal_seeds(n):
    assert LOW <= coverage(normal(np.random.default_rng(n), (DRAWS, n)), 0.6) <= HIGH


@pytest.mark.parametrize("n", [5, 10])
def test_the_interval_covers_the_mean_of_seeds_half_of_which_collapse(n):
    assert LOW <= coverage(half_collapsed(np.random.default_rng(n), (DRAWS, n)), 0.325) <= HIGH


def test_at_three_seeds_a_two_mode_condition_is_covered_about_three_times_in_four():
    """P(all 3 seeds in one mode) = 1/4: coverage ~75% (measured 74.1%), at any confidence level."""
    assert 0.70 <= coverage(half_collapsed(np.random.default_rng(3), (DRAWS, 3)), 0.325) <= 0.78


@pytest.mark.parametrize("n", [3, 5, 10])
def test_the_welch_interval_of_a_difference_covers_it(n):
    """Two conditions, n seeds each, spreads 0.03 and 0.06 (unequal: Welch's df matters at small n)."""
    rng = np.random.default_rng(100 + n)
    a, b = rng.normal(0.7, 0.03, (DRAWS, n)), rng.normal(0.6, 0.06, (DRAWS, n))
    held = np.mean(
        [lo <= 0.1 <= hi for lo, hi in (mean_difference_ci(x, y) for x, y in zip(a, b, strict=True))]
    )
    assert LOW <= held <= HIGH
