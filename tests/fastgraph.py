"""Helpers of the C packet path's differential tests: two identical graphs of a producer
and its consumers, each consumer on its own real libsrtp session and loopback socket, and
snapshots of their state to compare after each step."""

from __future__ import annotations

import random
import socket
from collections import deque
from types import MemberDescriptorType
from typing import Any

from mediaserver.sfu import fastsend
from mediaserver.sfu.aiortc_adapter import attach_srtp
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import RtpPacket, build_rtp, parse_rtp
from tests.conftest import srtp_sessions

OPUS = CodecInfo("audio/opus", 48000, 111)
VP8 = CodecInfo("video/VP8", 90000, 96, rtx_payload_type=97)
H264 = CodecInfo("video/H264", 90000, 102)
REWRITER_SLOTS = ("_base_in", "_highest_in", "_last_out_seq", "_last_out_ts",
                  "_pending_switch", "_seq_offset", "_skipped", "_switch_ts_gap",
                  "_ts_offset")


class Subscriber:
    """One consumer's connection: a C output on a real socket, or Python's send."""

    def __init__(self, with_output: bool) -> None:
        self.tx, self.rx = srtp_sessions()
        self.a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.a.bind(("127.0.0.1", 0))
        self.b.bind(("127.0.0.1", 0))
        self.b.setblocking(False)
        self.built: list[bytes] = []  # packets the Python path built and sent whole
        self.output = fastsend.Output() if with_output else None
        if self.output is not None:
            attach_srtp(self.output, self.tx)
            self.connect()

    def connect(self) -> None:
        assert self.output is not None
        self.output.set_destination(self.a.fileno(), "127.0.0.1", self.b.getsockname()[1])

    def send_rtp(self, data: bytes) -> bool:
        self.built.append(data)
        return True

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.rx.unprotect(self.b.recv(4096)))
            except BlockingIOError:
                return out

    def close(self) -> None:
        if self.output is not None:
            self.output.clear()
        self.a.close()
        self.b.close()


class Graph:
    """A producer and four consumers, their numbering the same in every graph made; what
    the producer sent upstream (RTCP: NACKs, PLIs) kept in ``rtcp``."""

    def __init__(self, kind: str, codec: CodecInfo | None = None) -> None:
        self.rtcp: list[bytes] = []
        self.producer, self.consumers, self.subscribers = _graph(kind, codec, self.rtcp)

    def close(self) -> None:
        for sub in self.subscribers:
            sub.close()

    def same_delivery(self, other: Graph) -> int:
        """Assert that every subscriber of both graphs got the same packets (plain, after
        SRTP; and those built in Python); how many that was."""
        forwarded = 0
        for a, b in zip(self.subscribers, other.subscribers, strict=True):
            got = a.received()
            assert got == b.received()
            assert a.built == b.built
            forwarded += len(got) + len(a.built)
        return forwarded


def _graph(kind: str, codec: CodecInfo | None, rtcp: list[bytes]
           ) -> tuple[Producer, list[Consumer], list[Subscriber]]:
    codec = codec or (OPUS if kind == "audio" else VP8)
    producer = Producer(track_id="t", participant_id="p", kind=kind, codec=codec, ssrc=77,
                        rtx_ssrc=None, mid="0",
                        source="microphone" if kind == "audio" else "camera",
                        send_rtcp=lambda data: rtcp.append(data) or True, rtcp_ssrc=1,
                        audio_level_id=1 if kind == "audio" else None)
    consumers, subscribers = [], []
    for i in range(4):
        sub = Subscriber(with_output=i != 3)  # the last one: no C output (Python builds)
        random.seed(1000 + i)
        ctx = DownstreamContext(sub.send_rtp, joined_at=5.0 if i == 1 else None,
                                output=sub.output)
        c = Consumer(producer=producer, subscriber_id=f"s{i}", context=ctx, ssrc=4242 + i,
                     rtx_ssrc=None, payload_type=codec.payload_type, rtx_payload_type=None,
                     audio_level_id=(5 if i != 2 else None) if kind == "audio" else None,
                     abs_send_time_id=3 if i != 0 else None, transport_cc_id=None,
                     mid="0")
        producer.add_consumer(c, 0.0)
        consumers.append(c)
        subscribers.append(sub)
    return producer, consumers, subscribers


def consumer_state(c: Consumer) -> dict[str, Any]:
    rw = c.rewriter
    return {
        "rewriter": {name: (list(getattr(rw, name)) if name == "_skipped"
                            else getattr(rw, name)) for name in REWRITER_SLOTS},
        "history": c._history.entries(),
        "resent_at": c._history.resents(),
        "resends": bytes(c._resends),
        "stats": (c.stats.packets_sent, c.stats.octets_sent, c.stats.frames_sent),
        "last_sent_at": c.last_sent_at,
        "flags": (c.paused, c.waiting_keyframe, c.context.joined_at),
    }




SKIP = {"producer", "consumers", "streams", "send_rtcp", "keyframe_check", "codec", "tally"}


def snapshot(obj: Any) -> Any:
    """Plain data of an object graph: slots and attributes of mediaserver's objects, down
    through containers; references back up the graph (``SKIP``) left out."""
    if obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, memoryview):
        return bytes(obj)
    if isinstance(obj, (list, tuple, deque)):
        return [snapshot(x) for x in obj]
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, bytearray):
        return bytes(obj)
    # Slots, and the C integer fields of a native base (sfu/native.py): member descriptors.
    names = [n for cls in type(obj).__mro__ for n, v in vars(cls).items()
             if isinstance(v, MemberDescriptorType)]
    names += list(getattr(obj, "__dict__", {}))
    return (type(obj).__name__,
            {n: snapshot(getattr(obj, n, "<unset>")) for n in sorted(set(names))
             if n not in SKIP})


def media_packet(producer: Producer, seq: int, ts: int, marker: bool, payload: bytes,
                 level: bytes | None) -> RtpPacket:
    """A packet of the producer's (ssrc 77), its audio level under id 1; padding-only when
    the payload is empty."""
    exts = [(1, level)] if level is not None else []
    data = build_rtp(marker=marker, payload_type=producer.codec.payload_type,
                     sequence_number=seq, timestamp=ts, ssrc=77, extensions=exts,
                     payload=payload, padding=32 if not payload else 0)
    pkt = parse_rtp(data)
    assert pkt is not None
    return pkt
