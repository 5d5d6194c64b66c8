"""Simulcast in SDP: what an offer announces, and the receive lines added to the answer."""

from __future__ import annotations

import pytest

from mediaserver.sfu.simulcast import SimulcastOffer, accept_simulcast, simulcast_offer

AUDIO = "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n"


def _video(mid: str, *lines: str) -> str:
    return f"m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:{mid}\r\n" + "".join(
        f"{x}\r\n" for x in lines)


@pytest.mark.parametrize(("lines", "expected"), [
    (("a=rid:q send", "a=rid:h send", "a=rid:f send", "a=simulcast:send q;h;f"),
     SimulcastOffer(rids=["q", "h", "f"])),
    # Order comes from a=simulcast, paused (~) and alternatives (,) are understood.
    (("a=rid:f send", "a=rid:q send", "a=simulcast:send ~q;f,x"),
     SimulcastOffer(rids=["q", "f"])),
    # A rid without a=rid send, or receive-direction rids, is not a layer.
    (("a=rid:q send", "a=rid:h recv", "a=simulcast:send q;h"), None),
    # More than three layers: the lowest three.
    (("a=rid:a send", "a=rid:b send", "a=rid:c send", "a=rid:d send",
      "a=simulcast:send a;b;c;d"), SimulcastOffer(rids=["a", "b", "c"])),
    # The SSRC-group form (older Chrome, some native SDKs).
    (("a=ssrc-group:SIM 11 22 33",), SimulcastOffer(ssrcs=[11, 22, 33])),
    (("a=ssrc-group:SIM 11 x 33",), None),
    # Hostile rid ids are refused rather than echoed into the answer.
    (("a=rid:q;evil send", "a=rid:h send", "a=simulcast:send q;evil;h"), None),
    ((), None),
])
def test_simulcast_offer_table(lines: tuple[str, ...], expected: SimulcastOffer | None) -> None:
    sdp = "v=0\r\n" + AUDIO + _video("1", *lines)
    assert simulcast_offer(sdp).get("1") == expected


def test_answer_gets_receive_lines_only_for_rid_offers() -> None:
    answer = "v=0\r\n" + AUDIO + _video("1", "a=sendonly") + _video("2")
    offers = {"1": SimulcastOffer(rids=["q", "h"]), "2": SimulcastOffer(ssrcs=[1, 2])}
    out = accept_simulcast(answer, offers)
    video1 = out.split("m=video")[1]
    assert "a=rid:q recv\r\na=rid:h recv\r\na=simulcast:recv q;h\r\n" in video1
    assert "a=rid" not in out.split("m=video")[2]
    assert out.split("m=video")[0] == answer.split("m=video")[0]


def test_answer_unchanged_without_simulcast() -> None:
    answer = "v=0\r\n" + AUDIO + _video("1")
    assert accept_simulcast(answer, {}) == answer
