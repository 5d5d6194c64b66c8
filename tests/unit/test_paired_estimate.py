"""bench.paired.estimate: the change and the start-order effect told apart, with an interval."""

import math

import pytest

from bench.paired import estimate

ALTERNATING = [True, False] * 3  # run 1 old first (new second), then swapped, as main() runs


def runs(change: float, order: float, noise: list[float]) -> list[float]:
    """Ratios new/old as the model makes them: the second-started server pays ``order``."""
    return [change * (order if second else 1 / order) * math.exp(e)
            for second, e in zip(ALTERNATING, noise, strict=True)]


@pytest.mark.parametrize("change, order", [
    (1.0, 1.0),
    (0.9, 1.15),  # a 10 % saving hidden under a 15 % start-order effect
    (1.2, 0.85),
    (0.75, 1.0),
])
def test_noise_free_runs_give_back_the_change_and_the_order(change: float, order: float) -> None:
    est = estimate(runs(change, order, [0.0] * 6), ALTERNATING)
    assert est["change"] == pytest.approx(change)
    assert est["order"] == pytest.approx(order)
    assert est["low"] == pytest.approx(change) and est["high"] == pytest.approx(change)


def test_the_order_effect_does_not_widen_the_interval() -> None:
    noise = [0.02, -0.01, -0.02, 0.01, 0.0, 0.0]
    small = estimate(runs(0.9, 1.0, noise), ALTERNATING)
    ordered = estimate(runs(0.9, 1.2, noise), ALTERNATING)
    assert ordered["high"] - ordered["low"] == pytest.approx(small["high"] - small["low"])
    assert small["high"] < 1.0  # a 10 % saving, resolved with this little noise


@pytest.mark.parametrize("ratios, resolved", [
    # Figures of docs/benchmarks.md ("Three levers tried..."): sends batched per read, 1:1.
    ([1.049, 0.916, 1.092, 1.056, 1.004, 0.956], False),
    ([0.80, 0.84, 0.79, 0.83, 0.81, 0.82], True),  # steadily ~18 % cheaper
])
def test_interval_holds_one_only_when_runs_do_not_resolve(ratios: list[float],
                                                          resolved: bool) -> None:
    est = estimate(ratios, ALTERNATING)
    assert est["low"] is not None and est["high"] is not None
    assert est["low"] <= est["change"] <= est["high"]
    assert (not est["low"] <= 1.0 <= est["high"]) is resolved


def test_one_order_only_gives_the_geometric_mean_without_interval() -> None:
    est = estimate([0.9, 1.1, 1.0], [True, True, True])
    assert est["change"] == pytest.approx((0.9 * 1.1 * 1.0) ** (1 / 3))
    assert est["order"] is None and est["low"] is None


def test_two_runs_fit_but_give_no_interval() -> None:
    est = estimate([0.99, 0.81], [True, False])
    assert est["change"] == pytest.approx(math.sqrt(0.99 * 0.81))
    assert est["order"] == pytest.approx(math.sqrt(0.99 / 0.81))
    assert est["low"] is None


@pytest.mark.parametrize("ratios, orders", [([], []), ([1.0, 0.0], [True, False]),
                                            ([1.0], [True, False])])
def test_bad_input_is_refused(ratios: list[float], orders: list[bool]) -> None:
    with pytest.raises(ValueError):
        estimate(ratios, orders)
