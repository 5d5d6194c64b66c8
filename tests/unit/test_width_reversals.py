"""Flapping in the adaptation scenarios is counted as turns of the received width, not as
switches: a dip of two layers and the climb back is one excursion, not flapping."""

from __future__ import annotations

import pytest

from loadtest.adaptation import width_reversals


@pytest.mark.parametrize("widths, turns", [
    ([], 0),
    ([640, 640, 640], 0),
    ([160, 320, 640], 0),  # the climb at the start
    ([160, 320, 640, 640, 160, 320, 640], 2),  # one excursion, two layers deep
    ([160, 320, 640, 320, 640], 2),  # one excursion, one layer deep
    ([160, 320, 640, 320, 640, 320, 640], 4),  # flapping
    ([640, 320, 160], 0),  # a steady fall
    ([640, 640, 320, 320, 640], 1),  # repeats of a width are no turn
])
def test_turns_of_the_received_width(widths, turns) -> None:
    assert width_reversals(widths) == turns
