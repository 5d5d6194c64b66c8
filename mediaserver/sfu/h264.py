"""H.264 RTP payload inspection (RFC 6184): which NAL units a packet carries.

The SFU only needs to know whether a packet starts a keyframe (to switch layers or end a
freeze after a PLI); it never depacketises. Both functions read bytes from the network and
never raise.

NAL header: |F|NRI|Type| with Type 1..23 a single NAL unit, 24/25 STAP-A/B, 26/27
MTAP16/24 (aggregates of length-prefixed NAL units) and 28/29 FU-A/B (fragments whose
second byte |S|E|R|Type| carries the fragmented unit's type).
"""

from __future__ import annotations

NAL_IDR = 5
NAL_SPS = 7
NAL_PPS = 8
STAP_A, STAP_B, MTAP16, MTAP24, FU_A, FU_B = 24, 25, 26, 27, 28, 29

_KEY_TYPES = frozenset((NAL_IDR, NAL_SPS))
# Aggregation packets: (bytes before the first unit, bytes between a unit's size and its NAL)
_AGGREGATES = {STAP_A: (1, 0), STAP_B: (3, 0), MTAP16: (3, 3), MTAP24: (3, 4)}


def _aggregated_types(payload: bytes, first: int, skip: int) -> list[int]:
    types = []
    pos, n = first, len(payload)
    while pos + 2 <= n:
        size = (payload[pos] << 8) | payload[pos + 1]
        end = pos + 2 + size
        if size <= skip or end > n:
            break  # a truncated or empty unit ends the packet; keep what was read
        t = payload[pos + 2 + skip] & 0x1F
        if 0 < t < 24:  # only single NAL unit types may be aggregated
            types.append(t)
        pos = end
    return types


def h264_nal_types(payload: bytes) -> list[int]:
    """NAL unit types in an H.264 RTP payload.

    A single NAL unit gives its type; an aggregation packet the types of its units; a
    fragment (FU-A/B) the type of the unit it is a piece of. Types outside 1..23 (unspecified,
    reserved, or not allowed inside an aggregate or fragment) are left out.
    """
    if not payload:
        return []
    t = payload[0] & 0x1F
    if 0 < t < 24:
        return [t]
    agg = _AGGREGATES.get(t)
    if agg is not None:
        return _aggregated_types(payload, agg[0], agg[1])
    if (t == FU_A or t == FU_B) and len(payload) > 1 and 0 < payload[1] & 0x1F < 24:
        return [payload[1] & 0x1F]
    return []


def is_h264_keyframe(payload: bytes) -> bool:
    """True when the payload starts an IDR picture or carries an SPS.

    Fragments count only when they are the first fragment (S bit) of such a unit.
    """
    if not payload:
        return False
    t = payload[0] & 0x1F
    if 0 < t < 24:
        return t == NAL_IDR or t == NAL_SPS
    if t == FU_A or t == FU_B:
        return len(payload) > 1 and payload[1] & 0x80 != 0 and payload[1] & 0x1F in _KEY_TYPES
    agg = _AGGREGATES.get(t)
    if agg is None:
        return False
    return not _KEY_TYPES.isdisjoint(_aggregated_types(payload, agg[0], agg[1]))
