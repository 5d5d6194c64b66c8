"""Malformed SDP and malformed signalling messages: refused with a reason, never raised.

``check_offer`` runs before aiortc sees a publisher's offer; ``protocol.decode`` before any
handler sees a message. Both take bytes from the network, so both get tables of known lies
and Hypothesis for everything else.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from hypothesis import given, settings
from hypothesis import strategies as st

from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.sfu.sdpcheck import check_offer
from mediaserver.signaling import protocol as proto


def _real_offer() -> str:
    async def make() -> str:
        pc = RTCPeerConnection()
        pc.addTransceiver(SineAudioTrack(440), direction="sendonly")
        pc.addTransceiver(SyntheticVideoTrack((1, 2, 3)), direction="sendonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
        return sdp

    return asyncio.run(make())


OFFER = _real_offer()


def _without(line_start: str) -> str:
    return "".join(line for line in OFFER.splitlines(keepends=True)
                   if not line.startswith(line_start))


def _first_media_only() -> str:
    head, *sections = OFFER.split("m=")
    return head + "m=" + sections[0]


@pytest.mark.parametrize(("sdp", "previous", "reason"), [
    (OFFER, (), None),
    (OFFER, ("0", "1"), None),
    (OFFER, ("0",), None),  # a section added at the end
    ("", (), "the offer has no audio or video section"),
    ("v=0", (), "the offer has no audio or video section"),
    ("\x00garbage\r\nm=", (), "the offer is not valid SDP"),
    (_first_media_only(), ("0", "1"),
     "media sections may be added at the end but not removed or reordered"),
    (OFFER, ("1", "0"), "media sections may be added at the end but not removed or reordered"),
    (OFFER.replace("a=mid:1", "a=mid:0"), (), "two media sections share a mid"),
    (_without("a=mid:"), (), "media section 0 has no mid"),
    (_without("a=fingerprint:"), (), "the offer has no DTLS fingerprint"),
    (_without("a=ice-pwd:"), (), "the offer has no ICE credentials"),
    (OFFER.replace("UDP/TLS/RTP/SAVPF", "RTP/AVP"), (),
     "media section 0 is not DTLS-SRTP ('RTP/AVP')"),
    (OFFER.replace("m=audio", "m=text"), (),
     "media section 0 is 'text'; only audio and video are published"),
])  # fmt: skip
def test_check_offer(sdp: str, previous: tuple[str, ...], reason: str | None) -> None:
    assert check_offer(sdp, previous) == reason


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_check_offer_never_raises_on_mutated_offers(data: st.DataObject) -> None:
    lines = OFFER.splitlines(keepends=True)
    for _ in range(data.draw(st.integers(1, 6))):
        i = data.draw(st.integers(0, len(lines) - 1))
        action = data.draw(st.sampled_from(["drop", "dup", "cut", "garble", "swap"]))
        if action == "drop":
            del lines[i]
        elif action == "dup":
            lines.insert(i, lines[i])
        elif action == "cut":
            lines[i] = lines[i][: data.draw(st.integers(0, len(lines[i])))]
        elif action == "garble":
            lines[i] = data.draw(st.text(max_size=60)) + "\r\n"
        else:
            j = data.draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            break
    result = check_offer("".join(lines), data.draw(st.sampled_from([(), ("0",), ("0", "1")])))
    assert result is None or isinstance(result, str)


@given(st.text(max_size=400))
def test_check_offer_never_raises_on_any_text(text: str) -> None:
    result = check_offer(text)
    assert result is None or isinstance(result, str)


# -- signalling messages ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12)


@settings(max_examples=500)
@given(st.sampled_from([*sorted(proto.MESSAGE_TYPES), "", "x" * 40]),
       st.dictionaries(st.sampled_from(["id", "token", "sdp", "track_id", "participant_id",
                                        "muted", "granted", "locked", "target", "candidate",
                                        "tracks", "reason", "max_fps", "protocol", "room",
                                        "resume_token", "timestamp", "disabled"]),
                       json_values, max_size=6))
def test_decode_accepts_or_refuses_with_a_stable_code(mtype: str, fields: dict[str, Any]) -> None:
    raw = json.dumps({"type": mtype, **fields})
    try:
        msg = proto.decode(raw, 65536)
    except proto.ProtocolError as exc:
        assert exc.code in (proto.INVALID_MESSAGE, proto.UNKNOWN_TYPE)
        assert exc.message
        return
    assert msg["type"] in proto.MESSAGE_TYPES


@given(st.binary(max_size=200) | st.text(max_size=200).map(str))
def test_decode_of_any_bytes_raises_only_protocol_errors(raw: bytes | str) -> None:
    try:
        proto.decode(raw, 100)
    except proto.ProtocolError as exc:
        assert exc.code in (proto.BAD_JSON, proto.INVALID_MESSAGE, proto.UNKNOWN_TYPE,
                            proto.MESSAGE_TOO_LARGE)


def test_decode_refuses_deeply_nested_json_without_a_recursion_error() -> None:
    raw = '{"type": "ping", "x": ' + "[" * 100000 + "]" * 100000 + "}"
    with pytest.raises(proto.ProtocolError) as info:
        proto.decode(raw, 1 << 20)
    assert info.value.code == proto.BAD_JSON
