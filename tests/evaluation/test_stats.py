"""Wilson intervals against scipy's implementation."""

from __future__ import annotations

import pytest
from scipy.stats import binomtest

from advrobust.evaluation import wilson_interval


@pytest.mark.parametrize(
    ("k", "n"), [(0, 10), (10, 10), (3, 10), (500, 1000), (1, 1000), (997, 1000), (0, 1)]
)
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    ref = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    low, high = wilson_interval(k, n, confidence)
    assert low == pytest.approx(ref.low, abs=1e-12)
    assert high == pytest.approx(ref.high, abs=1e-12)


def test_wilson_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    with pytest.raises(ValueError):
        wilson_interval(1, 3, confidence=1.0)
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize("n", [1, 7, 500, 1000, 10_000])
def test_wilson_is_exactly_closed_at_zero_and_one(n: int) -> None:
    assert wilson_interval(0, n)[0] == 0.0
    assert wilson_interval(n, n)[1] == 1.0
