"""The per-subscriber bandwidth estimator, driven as tables of events with time passed in.

Each case is a list of events, ``(time, what, value)``:

- ``sent``: what the SFU sent over the last interval (bps); ``remb``: a REMB (bps, or
  ``(bps, source)``); ``loss``: a receiver report's loss fraction (or ``(fraction, rtt)``);
  ``calm``: two reports without loss (with a 50 ms round trip); ``nack``: a NACK;
  ``nack_loss``: ``(lost, sent)`` video packets over the last second, counted from NACKs;
  ``tick``: the control step;
- ``probe``: ``want_probe(value)``, whose answer is checked against ``expect["probes"]``;
- ``pad``: ``padding_rate(value)``, checked against ``expect["padding"]``;
- ``start``: ``start_at(value)``, the subscriber's start hint; ``cold``: ``want_probe(value,
  cold=True)``, like ``probe``; ``cancel``: ``cancel_probe()``;

and what must hold after the last one.
"""

from __future__ import annotations

from typing import Any

import pytest

from mediaserver.sfu.estimator import BandwidthEstimator
from mediaserver.sfu.probe import ProbePlanner

Event = tuple[float, str, Any]


def drive(est: BandwidthEstimator, events: list[Event]) -> tuple[list[bool], list[int]]:
    probes: list[bool] = []
    padding: list[int] = []
    for now, what, value in events:
        if what == "sent":
            est.on_sent(value)
        elif what == "remb":
            bps, source = value if isinstance(value, tuple) else (value, 0)
            est.on_remb(bps, now, source)
        elif what == "loss":
            fraction, rtt = value if isinstance(value, tuple) else (value, None)
            est.on_loss(fraction, now, rtt)
        elif what == "calm":
            est.on_loss(0.0, now, 0.05)
            est.on_loss(0.0, now, 0.05)
        elif what == "nack":
            est.on_nack(now)
        elif what == "nack_loss":
            est.on_nack_loss(*value, now)
        elif what == "tick":
            est.tick(now)
        elif what == "probe":
            probes.append(est.want_probe(value, now))
        elif what == "cold":
            probes.append(est.want_probe(value, now, cold=True))
        elif what == "start":
            est.start_at(value, now)
        elif what == "cancel":
            est.cancel_probe(now)
        elif what == "pad":
            padding.append(est.padding_rate(value, now))
        else:  # pragma: no cover - a typo in a table
            raise ValueError(what)
    return probes, padding


def planner(**kw: Any) -> ProbePlanner:
    return ProbePlanner(**{"ramp": 0.6, "hold": 0.2, "settle": 1.0, "backoff_min": 2.0,
                           "backoff_max": 8.0, **kw})


CASES: list[tuple[str, dict[str, Any], list[Event], dict[str, Any]]] = [
    ("REMB is not a ceiling: the receiver's slow-growing estimate is ignored",
     {"initial": 1_000_000},
     [(0.0, "sent", 400_000), (0.0, "remb", 300_000), (1.0, "remb", 320_000)],
     {"value": 1_000_000}),
    ("a REMB far below what is sent is a capacity drop",
     {"initial": 1_000_000},
     [(0.0, "sent", 400_000), (0.0, "remb", 300_000), (2.0, "remb", 200_000)],
     {"value": 200_000, "cause": "remb"}),
    ("after a cut, a REMB still falling lowers the estimate on (loss would cut twice)",
     {"initial": 1_000_000},
     [(0.0, "sent", 700_000), (0.0, "remb", 800_000), (1.0, "remb", 350_000),
      (1.2, "remb", 170_000), (1.4, "loss", 0.5), (1.5, "remb", 200_000)],
     {"value": 170_000, "causes": ["remb", "remb", "loss 0.50"]}),
    ("a small REMB fall keeps what flows but loses the headroom",
     {"initial": 600_000},
     [(0.0, "sent", 400_000), (0.0, "remb", 500_000), (1.0, "remb", 340_000)],
     {"value": 400_000, "cause": "remb (soft)"}),
    ("...and blocks probes for a quiet moment",
     {"initial": 600_000, "quiet": 1.5},
     [(0.0, "sent", 400_000), (0.0, "remb", 500_000), (1.0, "remb", 340_000),
      (1.5, "calm", None), (2.0, "probe", 800_000), (2.6, "probe", 800_000)],
     {"probes": [False, True]}),
    ("each REMB source is compared with itself (aiortc: one estimator per video)",
     {"initial": 1_000_000},
     [(0.0, "sent", 400_000), (0.0, "remb", (300_000, 1)), (0.3, "remb", (100_000, 2)),
      (0.5, "remb", (300_000, 1)), (0.8, "remb", (100_000, 2))],
     {"value": 1_000_000}),
    ("heavy loss drops to what got through",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", 0.05), (2.0, "loss", 0.40)],
     {"value": int(800_000 * 0.8), "cause": "loss 0.40"}),
    ("light loss does not",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", 0.05)],
     {"value": 1_000_000}),
    ("moderate loss without a sign of a queue is a lossy radio",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", 0.15)],
     {"value": 1_000_000, "lossy": False}),
    ("moderate loss soon after a REMB fall is a full link's: heavy at once",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (2.0, "remb", 900_000), (2.5, "remb", 700_000),
      (3.5, "loss", 0.15)],
     {"value": int(800_000 * (1 - 0.075)), "lossy": True}),
    ("...and so is moderate loss with a queue on the link (the round trip grew)",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", (0.0, 0.05)), (2.0, "loss", (0.15, 0.21))],
     {"value": int(800_000 * (1 - 0.075)), "lossy": True, "cause": "loss 0.15"}),
    ("a round trip only a little above the lowest is no queue: a lossy radio",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", (0.0, 0.05)), (2.0, "loss", (0.15, 0.12))],
     {"value": 1_000_000, "lossy": False}),
    ("a link filling its queue is not calm: no probe onto it",
     {"initial": 200_000},
     [(0.0, "sent", 130_000), (1.0, "loss", (0.0, 0.01)), (2.0, "loss", (0.0, 0.15)),
      (3.0, "loss", (0.0, 0.2)), (3.5, "probe", 500_000), (4.0, "loss", (0.0, 0.02)),
      (5.0, "loss", (0.0, 0.02)), (5.5, "probe", 500_000)],
     {"probes": [False, True]}),
    ("a REMB fall that stops a probe still counts as a sign of a queue for the loss after",
     {"initial": 200_000},
     [(0.0, "sent", 130_000), (0.0, "remb", 150_000), (10.0, "calm", None),
      (10.0, "probe", 500_000), (10.3, "remb", 60_000), (11.5, "loss", 0.15)],
     {"lossy": True, "cause": "loss 0.15"}),
    ("a probe that builds a queue has failed",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (9.0, "loss", (0.0, 0.03)), (10.0, "calm", None),
      (10.0, "probe", 500_000), (10.7, "loss", (0.0, 0.2))],
     {"probe": None, "failed": 1, "cause": "probe failed: queue"}),
    ("one noisy report is not heavy loss",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", 0.25)],
     {"value": 1_000_000, "lossy": False}),
    ("two are",
     {"initial": 1_000_000},
     [(0.0, "sent", 800_000), (1.0, "loss", 0.25), (2.0, "loss", 0.3)],
     {"lossy": True, "cause": "loss 0.30"}),
    ("a third of a second's packets NACKed: heavy, cut to what got through",
     {"initial": 1_000_000},
     [(0.0, "sent", 700_000), (0.5, "nack_loss", (35, 60))],
     {"value": int(700_000 * (1 - 35 / 60)), "lossy": True, "cause": "nack loss 0.58"}),
    ("NACKed loss of a lossy radio (under 30 %) is left to the receiver reports",
     {"initial": 1_000_000},
     [(0.0, "sent", 700_000), (0.5, "nack_loss", (15, 60))],
     {"value": 1_000_000, "lossy": False}),
    ("too few packets to judge (the lowest layer's 15 a second)",
     {"initial": 1_000_000},
     [(0.0, "sent", 100_000), (0.5, "nack_loss", (15, 30))],
     {"value": 1_000_000, "lossy": False}),
    ("the limit is the cap, or the ceiling without one",
     {"initial": 500_000, "ceiling": 2_000_000, "cap": 300_000}, [], {"limit": 300_000}),
    ("the limit without a cap", {"initial": 500_000, "ceiling": 2_000_000}, [],
     {"limit": 2_000_000}),
    ("floor, cap and ceiling",
     {"initial": 500_000, "floor": 40_000, "ceiling": 2_000_000, "cap": 300_000},
     [(0.0, "sent", 60_000), (1.0, "loss", 0.99)],
     {"value": 40_000}),
    ("no probe before the current rate is confirmed",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "probe", 500_000)],
     {"probes": [False], "value": 200_000}),
    ("no probe when the estimate already covers the goal, or the subscriber's cap is met",
     {"initial": 1_000_000, "cap": 1_000_000},
     [(0.0, "calm", None), (5.0, "probe", 900_000), (5.0, "probe", 2_000_000)],
     {"probes": [False, False]}),
    ("no probe soon after congestion",
     {"initial": 1_000_000, "quiet": 1.5},
     [(0.0, "sent", 900_000), (10.0, "loss", 0.5), (10.5, "calm", None),
      (11.0, "probe", 2_000_000), (11.6, "probe", 2_000_000)],
     {"probes": [False, True]}),
    ("a probe ramps from what flows to at most 1.5x the estimate, then holds",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.1, "probe", 600_000), (10.3, "pad", 120_000), (10.7, "pad", 120_000),
      (10.8, "pad", 120_000)],
     {"probes": [True, False], "padding": [90_000, 180_000, 0], "value": 200_000}),
    ("a probe that raises no congestion signal lifts the estimate to its goal",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.5, "remb", 150_000), (11.0, "remb", 180_000), (11.0, "tick", None),
      (11.8, "tick", None)],
     {"value": 300_000, "ok": 1, "cause": "probe ok"}),
    ("after a success the next probe may double",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (11.8, "tick", None), (11.8, "probe", 900_000), (12.4, "pad", 300_000)],
     {"probes": [True, True], "padding": [300_000], "value": 300_000}),
    ("a REMB burst during a probe (aiortc overusing) stops it where it stood",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (0.0, "remb", 150_000), (10.0, "calm", None),
      (10.0, "probe", 500_000), (10.3, "remb", 160_000), (10.31, "remb", 165_000)],
     {"probe": None, "value": 200_000, "failed": 1, "failed_level": 213_000,
      "cause": "probe failed: remb"}),
    ("so does a REMB a little lower than the last (libwebrtc sends at once on a fall)",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (9.8, "remb", 150_000), (10.0, "calm", None),
      (10.0, "probe", 500_000), (10.7, "remb", 145_000)],
     {"probe": None, "failed": 1, "failed_level": 300_000}),
    ("...and a NACK: the first sign of loss",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.45, "nack", None)],
     {"probe": None, "failed": 1, "failed_level": 255_000, "cause": "probe failed: nack"}),
    ("...and a lossy receiver report",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (11.2, "loss", 0.05)],
     {"probe": None, "failed": 1, "failed_level": 300_000,
      "cause": "probe failed: loss 0.05"}),
    ("a NACK at the very start of a probe is for a packet sent before it",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.1, "nack", None)],
     {"failed": 0, "cause": "probe"}),
    ("...and so is a lossy report soon after it started",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.3, "loss", 0.05), (11.8, "tick", None)],
     {"failed": 0, "ok": 1, "value": 300_000}),
    ("a probe from audio only that fails early remembers the estimate, not the audio",
     {"initial": 100_000},
     [(0.0, "sent", 40_000), (10.0, "calm", None), (10.0, "probe", 300_000),
      (10.25, "nack", None)],
     {"failed": 1, "failed_level": 100_000}),
    ("after a failure: backoff, then a small step above where it failed",
     {"initial": 200_000},
     [(0.0, "sent", 120_000), (10.0, "calm", None), (10.0, "probe", 500_000),
      (10.3, "nack", None), (11.0, "calm", None), (12.2, "probe", 500_000),
      (12.3, "probe", 500_000), (13.0, "pad", 120_000)],
     {"probes": [True, False, True], "padding": [132_000]}),
    ("the queue a failed probe built drains: the next reports are not news",
     {"initial": 200_000},
     [(0.0, "sent", 400_000), (0.0, "remb", 400_000), (4.0, "calm", None),
      (5.0, "probe", 500_000), (5.3, "remb", 120_000), (5.8, "loss", 0.5)],
     {"value": 200_000, "failed": 1}),
    ("a layer that congests soon after the probe that let it in counts as a failure",
     {"initial": 100_000},
     [(0.0, "calm", None), (0.0, "sent", 90_000), (5.0, "probe", 150_000),
      (6.9, "tick", None), (7.0, "sent", 150_000), (9.0, "loss", 0.5)],
     {"value": int(150_000 * 0.75), "ok": 1, "failed": 1, "failed_level": 150_000,
      "causes": ["probe ok", "loss 0.50", "upgrade failed"]}),
    ("reports without a round trip (no sender report yet) do not confirm the rate",
     {"initial": 200_000},
     [(0.0, "sent", 130_000), (1.0, "loss", 0.0), (2.0, "loss", 0.0),
      (2.1, "probe", 500_000)],
     {"probes": [False]}),
    ("...nor break a streak of reports that do",
     {"initial": 200_000},
     [(0.0, "sent", 130_000), (1.0, "loss", (0.0, 0.05)), (1.5, "loss", 0.0),
      (2.0, "loss", (0.0, 0.05)), (2.1, "probe", 500_000)],
     {"probes": [True]}),
    ("a REMB burst (aiortc's receiver overusing) makes the next loss a full link's",
     {"initial": 1_000_000},
     [(0.0, "sent", 130_000), (1.0, "remb", 50_000), (1.05, "remb", 49_000),
      (1.5, "loss", 0.15)],
     {"lossy": True, "cause": "loss 0.15", "value": int(130_000 * (1 - 0.075))}),
    ("...REMBs at their usual pace do not",
     {"initial": 1_000_000},
     [(0.0, "sent", 130_000), (1.0, "remb", 150_000), (1.5, "remb", 149_000),
      (2.0, "loss", 0.15)],
     {"lossy": False, "value": 1_000_000}),
    ("a start hint is the estimate until measured",
     {"initial": 200_000},
     [(0.0, "start", 100_000)],
     {"value": 100_000, "start_hint": 100_000, "cause": "start hint"}),
    ("a probe that gets through ends the hint; it went a small step above it",
     {"initial": 200_000},
     [(0.0, "start", 100_000), (0.0, "sent", 60_000), (1.0, "calm", None),
      (3.0, "cold", 150_000), (6.0, "tick", None)],
     {"probes": [True], "value": 120_000, "start_hint": None, "ok": 1}),
    ("a failed one keeps it",
     {"initial": 200_000},
     [(0.0, "start", 100_000), (0.0, "sent", 60_000), (1.0, "calm", None),
      (3.0, "cold", 150_000), (3.7, "remb", 50_000), (3.75, "remb", 49_000)],
     {"probes": [True], "value": 100_000, "start_hint": 100_000, "failed": 1}),
    ("a probe that could not be sent has no verdict",
     {"initial": 200_000},
     [(0.0, "sent", 130_000), (1.0, "calm", None), (3.0, "probe", 300_000),
      (3.1, "cancel", None), (6.0, "tick", None)],
     {"probes": [True], "probe": None, "ok": 0, "failed": 0, "value": 200_000,
      "cause": "probe cancelled"}),
]


@pytest.mark.parametrize(("config", "events", "expect"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_estimator(config: dict[str, Any], events: list[Event], expect: dict[str, Any]
                   ) -> None:
    config = dict(config)
    cap = config.pop("cap", None)
    est = BandwidthEstimator(planner=planner(), **config)
    est.cap = cap
    probes, padding = drive(est, events)
    last = events[-1][0] if events else 0.0
    if "limit" in expect:
        assert est.limit == expect["limit"]
    if "probes" in expect:
        assert probes == expect["probes"]
    if "padding" in expect:
        assert padding == expect["padding"]
    if "value" in expect:
        assert est.value == expect["value"]
    if "cause" in expect:
        assert est.history[-1][1] == expect["cause"]
    if "causes" in expect:
        assert [c for _, c, _ in est.history][-len(expect["causes"]):] == expect["causes"]
    if "lossy" in expect:
        assert est.lossy_within(10, last) is expect["lossy"]
    if "probe" in expect:
        assert est.probe is expect["probe"]
    if "ok" in expect:
        assert est.probes_ok == expect["ok"]
    if "failed" in expect:
        assert est.probes_failed == expect["failed"]
    if "start_hint" in expect:
        assert est.start_hint == expect["start_hint"]
    if "failed_level" in expect:
        assert est.planner.failed_level == expect["failed_level"]
