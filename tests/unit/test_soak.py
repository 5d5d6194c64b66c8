"""The soak verdict as tables: flat passes, a steady climb or leaked tasks/fds fail."""

from __future__ import annotations

import pytest

from loadtest.soak import Sample, SoakSpec, evaluate, parse_metrics, slope, summarize

SPEC = SoakSpec(url="ws://x", warmup=2)


def _run(rss: list[float], fds: list[int] | None = None, tasks: list[int] | None = None
         ) -> list[Sample]:
    n = len(rss)
    fds = fds or [20] * n
    tasks = tasks or [5] * n
    return [Sample(i, float(i), rss[i], fds[i], tasks[i]) for i in range(n)]


@pytest.mark.parametrize(("samples", "failures"), [
    (_run([80, 85, 88] + [88.0] * 20), []),  # warm-up growth, then flat
    (_run([80, 85, 88] + [88 + 0.05 * i for i in range(20)]), []),  # 51 kB/cycle: allowed
    (_run([80, 85, 88] + [88 + 0.5 * i for i in range(20)]),
     ["resident memory grows 512.0 kB per cycle (limit 100.0)"]),
    (_run([80] * 23, tasks=[5] * 22 + [9]), ["asyncio tasks grew from 5 to 9"]),
    (_run([80] * 23, fds=[20] * 22 + [30]), ["open file descriptors grew from 20 to 30"]),
    (_run([80, 80, 80] + [80, 110] * 10),  # jumps without a trend still grow too much
     ["resident memory grew 30 MB (limit 24.0)"]),
    (_run([80, 81]), ["too few cycles: need more than 2 (the warm-up) to judge"]),
    ([], ["too few cycles: need more than 2 (the warm-up) to judge"]),
])  # fmt: skip
def test_evaluate(samples: list[Sample], failures: list[str]) -> None:
    assert evaluate(samples, SPEC) == failures


def test_slope_and_summary() -> None:
    assert slope([]) == 0.0 and slope([(1, 5)]) == 0.0 and slope([(1, 1), (1, 2)]) == 0.0
    assert slope([(0, 0), (1, 2), (2, 4)]) == pytest.approx(2.0)
    s = summarize(_run([80, 85, 88, 88, 90]), warmup=2)
    assert s["baseline"]["rss_mb"] == 88 and s["end"]["rss_mb"] == 90
    assert s["rss_growth_mb"] == 2 and s["slope_from_cycle"] == 3


def test_parse_metrics_sums_labels_and_ignores_the_rest() -> None:
    text = ("# TYPE mediaserver_participants gauge\n"
            'mediaserver_participants{role="host"} 1.0\n'
            'mediaserver_participants{role="participant"} 2.0\n'
            "# TYPE process_open_fds gauge\nprocess_open_fds 17.0\n"
            "# TYPE other gauge\nother 5.0\n")
    assert parse_metrics(text) == {"mediaserver_participants": 3.0, "process_open_fds": 17.0}
