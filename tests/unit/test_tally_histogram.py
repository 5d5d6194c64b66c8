"""The quality histograms are plain tallies read at scrape time: they must export exactly
what prometheus_client's own Histogram would for the same observations."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from mediaserver.metrics import TallyHistogramFamily

BUCKETS = (0, 0.005, 0.01, 0.02, 0.5, 1, 2)


def _samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in registry.collect():
        for s in family.samples:
            if not s.name.endswith("_created"):
                out[s.name, tuple(sorted(s.labels.items()))] = s.value
    return out


values = st.lists(st.tuples(st.sampled_from(["uplink", "downlink"]),
                            st.one_of(st.sampled_from([0.0, *BUCKETS, 2.0000001]),
                                      st.floats(0, 5, allow_nan=False))),
                  max_size=40)


@settings(max_examples=200, deadline=None)
@given(values)
def test_exports_what_prometheus_clients_histogram_would(observed) -> None:
    ours_reg, theirs_reg = CollectorRegistry(), CollectorRegistry()
    ours = TallyHistogramFamily("x_seconds", "doc", ("direction",), BUCKETS, ours_reg)
    theirs = Histogram("x_seconds", "doc", ["direction"], buckets=BUCKETS, registry=theirs_reg)
    for direction, value in observed:
        ours.labels(direction=direction).observe(value)
        theirs.labels(direction=direction).observe(value)
    mine, reference = _samples(ours_reg), _samples(theirs_reg)
    assert mine.keys() == reference.keys()
    for key, value in reference.items():
        assert math.isclose(mine[key], value, rel_tol=1e-12, abs_tol=1e-12), key


def test_a_value_on_a_bound_counts_in_that_bucket_and_the_text_parses() -> None:
    registry = CollectorRegistry()
    family = TallyHistogramFamily("y_ratio", "doc", ("kind",), (0.1, 1), registry)
    child = family.labels(kind="audio")
    assert family.labels(kind="audio") is child  # one child per label set
    for v in (0.1, 1.0, 1.5):
        child.observe(v)
    text = generate_latest(registry).decode()
    assert 'y_ratio_bucket{kind="audio",le="0.1"} 1.0' in text
    assert 'y_ratio_bucket{kind="audio",le="1.0"} 2.0' in text
    assert 'y_ratio_bucket{kind="audio",le="+Inf"} 3.0' in text
    assert 'y_ratio_count{kind="audio"} 3.0' in text
    assert "# TYPE y_ratio histogram" in text
