"""Merging the workers' /metrics into one valid exposition with a bounded worker label."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mediaserver.workers.exposition import labelled, merge


@pytest.mark.parametrize(("line", "expected"), [
    ("up 1", 'up{worker="0"} 1'),
    ('x_total{kind="audio"} 3.0', 'x_total{worker="0",kind="audio"} 3.0'),
    ("x{} 2", 'x{worker="0"} 2'),
    ('x{a="}"} 2 1700000000', 'x{worker="0",a="}"} 2 1700000000'),
    ('h_bucket{le="+Inf"} 4.0', 'h_bucket{worker="0",le="+Inf"} 4.0'),
])  # fmt: skip
def test_a_sample_gets_the_label_first(line: str, expected: str) -> None:
    assert labelled(line, "worker", "0") == expected


def test_the_label_value_is_escaped() -> None:
    assert labelled("up 1", "worker", 'a"b\\') == 'up{worker="a\\"b\\\\"} 1'


def _process(packets: int, joins: list[float], extra: bool = False) -> str:
    registry = CollectorRegistry()
    counter = Counter("demo_packets", "Packets", ["kind"], registry=registry)
    counter.labels(kind="audio").inc(packets)
    histogram = Histogram("demo_join_seconds", "Joins", buckets=(0.1, 1), registry=registry)
    for seconds in joins:
        histogram.observe(seconds)
    Gauge("demo_lag_seconds", "Lag", registry=registry).set(0.25)
    if extra:
        Gauge("demo_front_only", "Only in one part", registry=registry).set(1)
    return generate_latest(registry).decode()


def test_merged_exposition_parses_with_one_header_per_family() -> None:
    text = merge([("0", _process(5, [0.05])), ("1", _process(7, [0.5, 2.0])),
                  ("front", _process(0, [], extra=True))])
    headers = [line for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(headers) == len(set(headers))
    helps = [line.split()[2] for line in text.splitlines() if line.startswith("# HELP")]
    assert len(helps) == len(set(helps))
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert {"demo_packets", "demo_join_seconds", "demo_lag_seconds", "demo_front_only"} <= set(
        families)
    packets = {s.labels["worker"]: s.value for s in families["demo_packets"].samples
               if s.name == "demo_packets_total"}
    assert packets == {"0": 5.0, "1": 7.0, "front": 0.0}
    counts = {s.labels["worker"]: s.value for s in families["demo_join_seconds"].samples
              if s.name == "demo_join_seconds_count"}
    assert counts == {"0": 1.0, "1": 2.0, "front": 0.0}
    workers = {s.labels.get("worker") for f in families.values() for s in f.samples}
    assert workers == {"0", "1", "front"}  # every sample says where it came from


def test_a_part_missing_or_empty_leaves_the_others() -> None:
    assert merge([]) == "\n"
    one = merge([("1", _process(3, [])), ("0", "")])
    assert 'demo_packets_total{worker="1",kind="audio"} 3.0' in one


def test_comments_other_than_help_and_type_are_dropped_and_headerless_samples_kept() -> None:
    text = merge([("0", "# a comment\nbare_metric 4\n"), ("1", "bare_metric 5\n")])
    assert text == 'bare_metric{worker="0"} 4\nbare_metric{worker="1"} 5\n'
