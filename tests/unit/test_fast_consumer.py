"""A Consumer sending through the C output writes what the Python path writes.

Two consumers with the same numbering (same seeds) on one producer: one whose connection
has a C ``Output`` (real libsrtp session, real loopback socket), one that builds packets in
Python. The C side's datagrams, unprotected, must equal the Python side's packets, for
audio with a level, video with abs-send-time, an odd level value (which the C sender leaves
to Python) and a RED publisher forwarded as plain Opus.
"""

from __future__ import annotations

import random

import pytest

from mediaserver.sfu import fastsend
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp
from tests.fastgraph import OPUS, VP8, Subscriber

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)

OPUS_RED = CodecInfo("audio/opus", 48000, 111, red_payload_type=63)


def _consumer(producer: Producer, context: DownstreamContext, seed: int) -> Consumer:
    random.seed(seed)
    c = Consumer(producer=producer, subscriber_id="s", context=context, ssrc=4242,
                 rtx_ssrc=None, payload_type=producer.codec.payload_type,
                 rtx_payload_type=None,
                 audio_level_id=5 if producer.kind == "audio" else None,
                 abs_send_time_id=3, transport_cc_id=None, mid="0")
    c.waiting_keyframe = False
    return c


@pytest.mark.parametrize(("kind", "codec", "level", "red"), [
    ("audio", OPUS, b"\x9a", False),
    ("audio", OPUS, None, False),
    ("audio", OPUS, b"\x9a\x00", False),  # a two-byte level: built in Python, sent whole
    ("video", VP8, None, False),
    ("audio", OPUS_RED, b"\x90", True),   # RED in, plain Opus out (the subscriber's choice)
])
def test_same_bytes_as_the_python_path(kind, codec, level, red) -> None:
    sub = Subscriber(with_output=True)
    output = sub.output
    assert output is not None
    python_sent: list[bytes] = []
    fallback_sent: list[bytes] = []

    def via_output(data: bytes) -> bool:  # what PacketSender does with a whole packet
        fallback_sent.append(data)
        return output.send_packet(data) > 0

    producer = Producer(track_id="t", participant_id="p", kind=kind, codec=codec, ssrc=77,
                        rtx_ssrc=None, mid="0", source="microphone" if kind == "audio" else
                        "camera", send_rtcp=lambda data: True, rtcp_ssrc=1,
                        audio_level_id=1 if kind == "audio" else None)
    c_side = _consumer(producer, DownstreamContext(via_output, output=output), seed=7)
    py_side = _consumer(producer, DownstreamContext(lambda d: python_sent.append(d) or True),
                        seed=7)
    if red:  # the subscribers did not negotiate RED: they get the primary Opus block
        assert c_side.red is not None and py_side.red is not None
    producer.consumers.extend([c_side, py_side])
    try:
        for seq in range(1, 30):
            exts = [(1, level)] if level is not None else []
            payload = bytes((seq + i) & 0xFF for i in range(60 if kind == "audio" else 900))
            pt = codec.payload_type
            if red:  # one RED block header (F=0: the primary) then the Opus frame
                payload, pt = bytes([codec.payload_type]) + payload, 63
            if kind == "video" and seq == 1:
                payload = b"\x10\x00\x9d\x01\x2a" + payload[5:]  # a keyframe first
            pkt = parse_rtp(build_rtp(marker=seq % 3 == 0, payload_type=pt,
                                      sequence_number=seq, timestamp=seq * 960, ssrc=77,
                                      extensions=exts, payload=payload))
            assert pkt is not None
            producer.on_rtp(pkt, 100.0 + seq * 0.02)
        assert len(python_sent) == 29
        received = sub.received()
        assert received == python_sent
        odd = level is not None and len(level) != 1
        assert len(fallback_sent) == (29 if odd else 0)  # the C header covers the rest
        assert c_side.stats.packets_sent == py_side.stats.packets_sent == 29
        assert c_side.stats.octets_sent == py_side.stats.octets_sent
    finally:
        sub.close()
