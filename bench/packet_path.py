"""The packet path without sockets: parse, Producer, N Consumers, SRTP protect.

What forwarding costs in Python itself, in a tight loop (warm caches), to set beside the
whole-server figures of bench/forwarding.py. One 1100-byte VP8 packet with three header
extensions, repeated. From the repository root:

    .venv/bin/python -m bench.packet_path --subscribers 1,8
"""

from __future__ import annotations

import argparse
import os
import time

import pylibsrtp

from mediaserver.sfu.aiortc_adapter import FastSrtp
from mediaserver.sfu.consumer import Consumer, DownstreamContext
from mediaserver.sfu.producer import CodecInfo, Producer
from mediaserver.sfu.rtp import build_rtp, parse_rtp

PACKETS = 20000


def run(subscribers: int) -> float:
    """Microseconds per incoming packet, fanned out to ``subscribers``."""
    key = os.urandom(30)
    policy = pylibsrtp.Policy(key=key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND)
    tx = FastSrtp(pylibsrtp.Session(policy))

    def send(data: bytes) -> bool:
        tx.protect(data)
        return True

    producer = Producer(track_id="t", participant_id="p", kind="video",
                        codec=CodecInfo("video/VP8", 90000, 96, 97), ssrc=1234, rtx_ssrc=None,
                        mid="0", source="camera", send_rtcp=lambda b: True, rtcp_ssrc=1)
    for i in range(subscribers):
        c = Consumer(producer=producer, subscriber_id=f"s{i}", context=DownstreamContext(send),
                     ssrc=1000 + i, rtx_ssrc=2000 + i, payload_type=96, rtx_payload_type=97,
                     audio_level_id=None, abs_send_time_id=3, transport_cc_id=None, mid=str(i))
        c.waiting_keyframe = False
        producer.consumers.append(c)
    payload = bytes([0x90, 0x80, 0x12, 0x34]) + bytes(1100)
    packets = [build_rtp(marker=i % 3 == 2, payload_type=96, sequence_number=i & 0xFFFF,
                         timestamp=i * 3000, ssrc=1234,
                         extensions=[(1, b"0"), (3, b"abc"), (4, b"\x00\x01")], payload=payload)
               for i in range(PACKETS)]
    now = 0.0
    start = time.perf_counter()
    for data in packets:
        now += 0.002
        pkt = parse_rtp(data)
        assert pkt is not None
        producer.on_rtp(pkt, now)
    return (time.perf_counter() - start) / PACKETS * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--subscribers", default="1,8")
    args = ap.parse_args()
    for n in (int(x) for x in args.subscribers.split(",")):
        print(f"{n} subscriber(s): {run(n):.1f} us per incoming packet")


if __name__ == "__main__":
    main()
