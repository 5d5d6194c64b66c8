"""Simulcast in SDP (RFC 8853 with RFC 8851 rids, and the older SSRC-group form).

aiortc ignores ``a=rid`` and ``a=simulcast``; a browser that sees no simulcast in the
answer sends only its first encoding. So the SFU reads the publisher's offer itself and
adds the matching receive lines to aiortc's answer. Both functions are pure text in,
text out.

Encodings are taken lowest first, in the order the offer lists them: that is the order
of ``sendEncodings`` that the SDK (and mediasoup-client, and LiveKit's client) use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_LAYERS = 3


@dataclass
class SimulcastOffer:
    """What one m-section of an offer says about simulcast."""

    rids: list[str] = field(default_factory=list)  # RID-based, lowest first
    ssrcs: list[int] = field(default_factory=list)  # a=ssrc-group:SIM, lowest first


def _sections(sdp: str) -> list[list[str]]:
    """The session part, then one list of lines per m-section."""
    sections: list[list[str]] = [[]]
    for line in sdp.splitlines():
        if line.startswith("m="):
            sections.append([])
        sections[-1].append(line)
    return sections


def _mid(lines: list[str]) -> str | None:
    return next((x[6:].strip() for x in lines if x.startswith("a=mid:")), None)


def _valid_rid(rid: str) -> bool:
    # RFC 8851: rid-id is alphanumeric plus "-" and "_"; bound the length as well.
    return 0 < len(rid) <= 16 and all(c.isalnum() or c in "-_" for c in rid)


def simulcast_offer(sdp: str) -> dict[str, SimulcastOffer]:
    """Per mid: the simulcast encodings a publisher's offer announces (absent: none)."""
    out: dict[str, SimulcastOffer] = {}
    for lines in _sections(sdp)[1:]:
        mid = _mid(lines)
        if mid is None or not lines[0].startswith("m=video"):
            continue
        send_rids = []
        order: list[str] = []
        sim_ssrcs: list[int] = []
        for line in lines:
            if line.startswith("a=rid:"):
                parts = line[6:].split()
                if len(parts) >= 2 and parts[1] == "send" and _valid_rid(parts[0]):
                    send_rids.append(parts[0])
            elif line.startswith("a=simulcast:"):
                words = line[12:].split()
                if len(words) >= 2 and words[0] == "send":
                    # Alternatives are comma-separated; "~" marks an initially paused one.
                    order = [alt.split(",")[0].lstrip("~") for alt in words[1].split(";")]
            elif line.startswith("a=ssrc-group:SIM "):
                try:
                    sim_ssrcs = [int(x) for x in line[17:].split()]
                except ValueError:
                    sim_ssrcs = []
        rids = [r for r in order if r in send_rids] if order else []
        offer = SimulcastOffer(rids=rids[:MAX_LAYERS], ssrcs=sim_ssrcs[:MAX_LAYERS])
        if len(offer.rids) > 1 or len(offer.ssrcs) > 1:
            out[mid] = offer
    return out


def accept_simulcast(answer: str, offers: dict[str, SimulcastOffer]) -> str:
    """Add ``a=rid:<id> recv`` and ``a=simulcast:recv`` for each RID-based offer."""
    if not any(o.rids for o in offers.values()):
        return answer
    sections = _sections(answer)
    for lines in sections[1:]:
        offer = offers.get(_mid(lines) or "")
        if offer is None or not offer.rids or lines[0].split()[1:2] == ["0"]:
            continue
        lines.extend(f"a=rid:{rid} recv" for rid in offer.rids)
        lines.append("a=simulcast:recv " + ";".join(offer.rids))
    return "\r\n".join(line for lines in sections for line in lines) + "\r\n"
