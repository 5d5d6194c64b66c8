"""RED (RFC 2198) for audio through the real server.

A publisher sends Opus wrapped in RED, as Chrome does with RED negotiated and preferred
(loadtest.red: each packet carries the previous frame again). One subscriber negotiated RED
and gets RED, its blocks intact; the other did not (aiortc clients leave RED out of their
answers by default) and gets the primary block alone as plain Opus. Both decode the tone.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from loadtest.client import SignalClient
from loadtest.media import dominant_frequency
from loadtest.red import FRAME, RedAudioPublisher
from mediaserver import metrics
from mediaserver.sfu.red import parse_red
from tests.conftest import wait_until

TONE = 440.0


def _red_line(sdp: str) -> list[str]:
    return re.findall(r"a=rtpmap:(\d+) red/48000/2", sdp)


def _fmtp(sdp: str, pt: str) -> str | None:
    found = re.search(rf"a=fmtp:{pt} (\S+)", sdp)
    return found.group(1) if found else None


@dataclass
class Call:
    pub: SignalClient
    red_pub: RedAudioPublisher
    answer: dict[str, Any]
    with_red: SignalClient  # unwraps RED itself, so keeps it in its answer
    without: SignalClient  # an aiortc client as it comes: no RED


@contextlib.asynccontextmanager
async def _call(server: Any, room: str, **publisher: Any) -> AsyncIterator[Call]:
    def client(identity: str, **kw: Any) -> SignalClient:
        return SignalClient(server.ws_url, server.token(room, identity, kind="group"), **kw)

    pub, with_red, without = client("pub"), client("with-red", red=True), client("without")
    red_pub = RedAudioPublisher(pub, TONE, **publisher)
    try:
        assert (await pub.connect())["type"] == "joined"
        answer = await red_pub.start()
        assert answer["type"] == "publish_answer", answer
        for c in (with_red, without):
            assert (await c.connect())["type"] == "joined"
        yield Call(pub, red_pub, answer, with_red, without)
    finally:
        await red_pub.stop()
        await asyncio.gather(pub.close(), with_red.close(), without.close())


def _audio_frames(client: SignalClient) -> int:
    return sum(r.frames for r in client.received.values() if r.kind == "audio")


async def test_red_forwarded_to_those_that_negotiated_it_and_stripped_for_the_others(server):
    async with _call(server, "red") as call:
        red_pub, with_red, without = call.red_pub, call.with_red, call.without
        # The answer takes RED as offered: its payload type, and the fmtp naming Opus.
        (red_pt,) = _red_line(call.answer["sdp"])
        assert red_pub.red_pt == int(red_pt)
        assert _fmtp(call.answer["sdp"], red_pt) == f"{red_pub.opus_pt}/{red_pub.opus_pt}"
        offer = await without.wait_event(lambda e: e["type"] == "subscriber_offer"
                                         and e.get("tracks"), timeout=20)
        assert _red_line(offer["sdp"])  # offered to every subscriber of a RED track

        await wait_until(lambda: _audio_frames(with_red) >= 100
                         and _audio_frames(without) >= 100,
                         timeout=30, message="two seconds of audio at both subscribers")
        for client in (with_red, without):
            (audio,) = client.tracks_from(call.pub.participant_id or "", "audio")
            samples = np.concatenate(audio.audio[-25:])
            assert abs(dominant_frequency(samples, audio.audio_rate) - TONE) < 10

        # With RED: RED packets, the previous frame redundant, the current one primary.
        receiver = with_red.red_receiver
        assert receiver is not None and receiver.malformed == 0 and receiver.plain == 0
        assert len(receiver.packets) >= 100
        opus_pt = next(iter(receiver.red_pts.values()))
        for _, payload in receiver.packets[5:]:
            blocks = parse_red(payload)
            assert blocks is not None and len(blocks) == 2
            assert [b.payload_type for b in blocks] == [opus_pt, opus_pt]
            assert [b.timestamp_offset for b in blocks] == [FRAME, 0]
        room = server.rooms.rooms["red"]
        (consumer,) = [c for c in room.by_identity("with-red").subscriber.consumers.values()
                       if c.kind == "audio"]
        assert consumer.red_payload_type is not None

        # Without: no RED in its answer, so plain Opus only (the primary blocks).
        (consumer,) = [c for c in room.by_identity("without").subscriber.consumers.values()
                       if c.kind == "audio"]
        assert consumer.red_payload_type is None and consumer.red is not None
        assert consumer.stats.packets_sent >= 100


async def test_malformed_red_is_counted_and_dropped_and_audio_goes_on(server):
    dropped_before = metrics.DROP["malformed_red"]._value.get()
    async with _call(server, "red-malformed", corrupt_every=10) as call:
        await wait_until(lambda: _audio_frames(call.with_red) >= 150
                         and _audio_frames(call.without) >= 150,
                         timeout=30, message="three seconds of audio at both subscribers")
        dropped = metrics.DROP["malformed_red"]._value.get() - dropped_before
        assert dropped >= 0.08 * call.red_pub.packets_sent  # every tenth, before anyone
        assert call.with_red.red_receiver is not None
        assert call.with_red.red_receiver.malformed == 0
        room = server.rooms.rooms["red-malformed"]
        assert {p.identity for p in room.participants.values()} == \
            {"pub", "with-red", "without"}
