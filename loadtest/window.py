"""What arrived during the measured window alone, for per-packet cost comparisons.

The rest of the report counts from each stream's first packet; a CPU-per-packet figure
needs the packets of exactly the window the server's CPU was read over. Sans-IO: the
runner snapshots the taps' counters at both ends of the window and passes them in with
the SSRC -> track map of each subscriber; this module turns them into deltas per track,
split into media, RTX and padding:

- **padding**: RTP packets with the padding bit set (bandwidth probes; aiortc never pads
  media), whatever their SSRC;
- **rtx**: the rest of what came on a track's RTX SSRC (retransmissions);
- **media**: the rest of what came on a track's media SSRC: the forwarded packets;
- **unknown**: packets on an SSRC no offer mentioned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from loadtest.profiles import StreamCounter


@dataclass(frozen=True)
class Count:
    """One SSRC's counters at one moment."""

    received: int = 0
    expected: int = 0
    padded: int = 0
    bytes: int = 0


def snapshot(streams: dict[int, StreamCounter]) -> dict[int, Count]:
    return {ssrc: Count(c.received, c.expected, c.padded, c.bytes)
            for ssrc, c in streams.items()}


@dataclass
class TrackWindow:
    media: int = 0
    rtx: int = 0
    padding: int = 0
    lost: int = 0
    expected: int = 0
    bytes: int = 0


def subscriber_window(before: dict[int, Count], after: dict[int, Count],
                      ssrcs: dict[int, tuple[str, bool]]
                      ) -> tuple[dict[str, TrackWindow], int]:
    """Per track id, what one subscriber received between the snapshots; and the packets
    on SSRCs that ``ssrcs`` (SSRC -> (track id, is RTX)) does not know."""
    tracks: dict[str, TrackWindow] = {}
    unknown = 0
    for ssrc, end in after.items():
        start = before.get(ssrc, Count())
        received, padded = end.received - start.received, end.padded - start.padded
        if ssrc not in ssrcs:
            unknown += received
            continue
        track_id, rtx = ssrcs[ssrc]
        w = tracks.setdefault(track_id, TrackWindow())
        w.padding += padded
        w.bytes += end.bytes - start.bytes
        if rtx:
            w.rtx += received - padded
        else:
            w.media += received - padded
            expected = end.expected - start.expected
            w.expected += expected
            w.lost += max(0, expected - received)
    return tracks, unknown


def summarise(rows: list[dict[str, Any]], unknown: int, seconds: float,
              publisher_packets: int) -> dict[str, Any]:
    """The window's totals over ``rows`` (one per subscriber and track: room, subscriber,
    publisher, kind, media, rtx, padding, lost, expected) and which rows got nothing."""
    seconds = max(seconds, 1e-9)
    media = sum(r["media"] for r in rows)
    expected, lost = sum(r["expected"] for r in rows), sum(r["lost"] for r in rows)
    return {
        "seconds": round(seconds, 3),
        "media_packets": media, "media_packets_per_s": round(media / seconds, 1),
        "rtx_packets": sum(r["rtx"] for r in rows),
        "padding_packets": sum(r["padding"] for r in rows), "unknown_packets": unknown,
        "lost": lost, "loss": round(lost / expected, 5) if expected else None,
        "publisher_packets": publisher_packets,
        "publisher_packets_per_s": round(publisher_packets / seconds, 1),
        # A track the server paused for the subscriber (stream_state: its link, its own
        # choice) is not missing: nothing is what it should get.
        "missing": [f"{r['room']}/{r['subscriber']} <- {r['publisher']} {r['kind']}"
                    for r in rows if r["media"] == 0 and not r.get("paused_by_server")],
        "tracks": rows,
    }


def format_line(w: dict[str, Any]) -> str:
    loss = "-" if w["loss"] is None else f"{w['loss']:.2%}"
    return (f"window {w['seconds']:.1f} s: subscribers received {w['media_packets']} media "
            f"packets ({w['media_packets_per_s']:.0f}/s), rtx {w['rtx_packets']}, padding "
            f"{w['padding_packets']}, unknown {w['unknown_packets']}; publishers sent "
            f"{w['publisher_packets']} ({w['publisher_packets_per_s']:.0f}/s); loss {loss}"
            + (f"; NOTHING from {len(w['missing'])} track(s): " + ", ".join(w["missing"][:5])
               if w["missing"] else ""))
