"""Prometheus metrics of the node.

Labels have bounded cardinality: kinds, reasons, directions, never a room, participant
or name. The packet path increments plain counters through pre-bound label children
(``DROP["unknown_ssrc"].inc()``), which costs one method call, not a label lookup.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

ROOMS = Gauge("mediaserver_rooms", "Rooms open on this node", ["kind"], registry=REGISTRY)
PARTICIPANTS = Gauge(
    "mediaserver_participants", "Participants joined on this node", ["role"], registry=REGISTRY
)
TRACKS = Gauge("mediaserver_tracks", "Published tracks", ["kind"], registry=REGISTRY)
PACKETS = Counter(
    "mediaserver_rtp_packets_total", "RTP packets", ["direction", "kind"], registry=REGISTRY
)
BYTES = Counter(
    "mediaserver_rtp_bytes_total", "RTP bytes", ["direction", "kind"], registry=REGISTRY
)
RTCP = Counter(
    "mediaserver_rtcp_feedback_total",
    "RTCP feedback messages (nack, pli, fir, remb, twcc) by direction",
    ["direction", "type"],
    registry=REGISTRY,
)
RETRANSMISSIONS = Counter(
    "mediaserver_retransmissions_total",
    "Packets retransmitted to subscribers on NACK, or NACKed but no longer cached",
    ["result"],
    registry=REGISTRY,
)
DROPS = Counter(
    "mediaserver_dropped_packets_total",
    "Packets dropped on the forwarding path, by reason",
    ["reason"],
    registry=REGISTRY,
)
SIGNAL_ERRORS = Counter(
    "mediaserver_signal_errors_total", "Signalling error replies by code", ["code"],
    registry=REGISTRY,
)
JOIN_LATENCY = Histogram(
    "mediaserver_join_seconds",
    "Time from join request to joined reply",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)

DROP_REASONS = (
    "unknown_ssrc",
    "malformed_rtp",
    "malformed_rtcp",
    "waiting_keyframe",
    "too_old",
    "not_connected",
    "padding",
    "paused",
    "handler_error",
)
DROP = {reason: DROPS.labels(reason=reason) for reason in DROP_REASONS}
RETRANSMITTED = RETRANSMISSIONS.labels(result="sent")
RETRANSMIT_MISSING = RETRANSMISSIONS.labels(result="missing")
