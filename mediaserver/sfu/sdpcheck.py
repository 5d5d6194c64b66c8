"""Checks on a publisher's SDP offer before aiortc sees it (pure: text in, a complaint out).

aiortc trusts the offer's shape. An offer with fewer m-lines than the last one (RFC 3264
forbids removing or reordering them) is accepted and then crashes the connection's
background task with an IndexError; an offer without a DTLS fingerprint would mean media
without DTLS-SRTP. Such offers are refused here with a reason, as ``negotiation_failed``,
before anything changes on the connection.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiortc.sdp import SessionDescription

MAX_MEDIA_SECTIONS = 32  # also the cap on tracks per publish_offer (protocol.py)
SECURE_PROFILES = ("UDP/TLS/RTP/SAVPF", "UDP/TLS/RTP/SAVP")


def check_offer(sdp: str, previous_mids: Sequence[str | None] = ()) -> str | None:
    """None if the offer may be applied, else why not (for the error message)."""
    try:
        desc = SessionDescription.parse(sdp)
    except Exception:  # aiortc's parser raises ValueError, IndexError, KeyError...
        return "the offer is not valid SDP"
    media = desc.media
    if not media:
        return "the offer has no audio or video section"
    if len(media) > MAX_MEDIA_SECTIONS:
        return f"the offer has more than {MAX_MEDIA_SECTIONS} media sections"
    mids = []
    for i, m in enumerate(media):
        if m.kind not in ("audio", "video"):
            return f"media section {i} is {m.kind!r}; only audio and video are published"
        if m.profile not in SECURE_PROFILES:
            return f"media section {i} is not DTLS-SRTP ({m.profile!r})"
        if m.rtp.muxId is None or not m.rtp.muxId:
            return f"media section {i} has no mid"
        mids.append(m.rtp.muxId)
    if len(set(mids)) != len(mids):
        return "two media sections share a mid"
    if len(media) < len(previous_mids) or any(
            old is not None and old != new for old, new in zip(previous_mids, mids, strict=False)):
        return "media sections may be added at the end but not removed or reordered"
    # aiortc's parser copies session-level fingerprints and ICE credentials into each section.
    if not all(m.dtls is not None and m.dtls.fingerprints for m in media):
        return "the offer has no DTLS fingerprint"
    if not all(m.ice is not None and m.ice.usernameFragment and m.ice.password for m in media):
        return "the offer has no ICE credentials"
    return None
