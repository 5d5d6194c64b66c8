"""Forwarded RTP back into whole encoded frames, for the recorder (pure: no I/O, no clock).

The SFU forwards packets as they come; a file needs whole frames in order. Each track gets a
small reorder buffer keyed by extended sequence number (late packets and NACK
retransmissions land in their place), bounded in packets and in time so a lost packet costs
at most ``max_delay`` seconds of waiting. A VP8 frame is kept only if every packet from its
start (S=1, partition 0) to its marker arrived; after any loss the video depacketizer drops
frames until the next keyframe, because an inter frame that references a lost one decodes
into garbage, and raises ``needs_keyframe`` so the caller can send a PLI. Opus packets are
frames on their own: one in, one out.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from mediaserver.sfu.rtp import RtpPacket
from mediaserver.sfu.vp8 import parse_vp8

T = TypeVar("T")

# A jump this far (either way) is a new stream (publisher restart), not reordering.
MAX_SEQ_JUMP = 3000


@dataclass(frozen=True)
class Frame:
    """One encoded frame: ``timestamp`` is the extended RTP timestamp."""

    data: bytes
    timestamp: int
    keyframe: bool


@dataclass
class DepacketizerStats:
    """What was lost or thrown away, by reason (bounded names, for metrics and the manifest)."""

    packets: int = 0
    lost_packets: int = 0  # sequence numbers given up on after waiting
    duplicates: int = 0
    late: int = 0  # older than what was already released: a duplicate, or given up on
    restarts: int = 0  # the sequence jumped: a new stream behind the same track
    frames: int = 0
    dropped: dict[str, int] = field(default_factory=dict)

    def drop(self, reason: str) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    @property
    def dropped_frames(self) -> int:
        return sum(self.dropped.values())


@dataclass
class _Slot(Generic[T]):
    item: T
    ext_ts: int
    arrived: float


class ReorderBuffer(Generic[T]):
    """Releases items in extended-sequence order, giving up on a hole after a while.

    ``push`` returns ``(ext_seq, ext_ts, item, gap_before)`` in order; ``gap_before`` says
    that sequence numbers just before this one were given up as lost (or the stream
    restarted). A hole is given up when more than ``max_packets`` wait behind it or the
    oldest waiting one arrived more than ``max_delay`` seconds ago.
    """

    def __init__(self, stats: DepacketizerStats, *, max_packets: int, max_delay: float) -> None:
        self.stats = stats
        self.max_packets = max_packets
        self.max_delay = max_delay
        self._next: int | None = None
        self._slots: dict[int, _Slot[T]] = {}
        self._gap = False  # the next released item follows a loss
        self._waiting_since: float | None = None

    def __len__(self) -> int:
        return len(self._slots)

    def push(self, item: T, ext_seq: int, ext_ts: int,
             now: float) -> list[tuple[int, int, T, bool]]:
        self.stats.packets += 1
        nxt = self._next
        if nxt is None or abs(ext_seq - nxt) > MAX_SEQ_JUMP:
            if nxt is not None:
                self.stats.restarts += 1
            out = self.flush() if nxt is not None else []
            self._next = ext_seq
            self._gap = nxt is not None
            self._slots[ext_seq] = _Slot(item, ext_ts, now)
            return out + self._release(now)
        if ext_seq < nxt:
            self.stats.late += 1
            return []
        if ext_seq in self._slots:
            self.stats.duplicates += 1
            return []
        self._slots[ext_seq] = _Slot(item, ext_ts, now)
        return self._release(now)

    def reset(self) -> None:
        """Forget the stream: the next packet starts afresh (after a pause)."""
        self._next = None
        self._slots.clear()
        self._gap = False
        self._waiting_since = None

    def flush(self) -> list[tuple[int, int, T, bool]]:
        """Everything still waiting, in order, holes counted as lost (at close)."""
        out: list[tuple[int, int, T, bool]] = []
        for seq in sorted(self._slots):
            assert self._next is not None
            if seq > self._next:
                self.stats.lost_packets += seq - self._next
                self._gap = True
            slot = self._slots[seq]
            out.append((seq, slot.ext_ts, slot.item, self._gap))
            self._gap = False
            self._next = seq + 1
        self._slots.clear()
        self._waiting_since = None
        return out

    def _release(self, now: float) -> list[tuple[int, int, T, bool]]:
        out: list[tuple[int, int, T, bool]] = []
        while True:
            nxt = self._next
            assert nxt is not None
            if nxt in self._slots:
                self._waiting_since = None  # the hole (if any) moved: time it afresh
            while nxt in self._slots:
                slot = self._slots.pop(nxt)
                out.append((nxt, slot.ext_ts, slot.item, self._gap))
                self._gap = False
                nxt += 1
            self._next = nxt
            if not self._slots:
                self._waiting_since = None
                return out
            if self._waiting_since is None:
                self._waiting_since = min(s.arrived for s in self._slots.values())
            if (len(self._slots) <= self.max_packets
                    and now - self._waiting_since <= self.max_delay):
                return out
            # Give up on the hole: skip to the oldest packet that did arrive.
            first = min(self._slots)
            self.stats.lost_packets += first - nxt
            self._next = first
            self._gap = True


class Vp8Depacketizer:
    """VP8 RTP (RFC 7741) into whole frames; waits for a keyframe at the start and after loss.

    ``needs_keyframe`` is True while frames are being dropped for want of a keyframe; the
    caller asks the publisher for one (PLI), rate-limited on its side.
    """

    def __init__(self, *, max_packets: int = 256, max_delay: float = 0.3) -> None:
        self.stats = DepacketizerStats()
        self._buffer: ReorderBuffer[RtpPacket] = ReorderBuffer(
            self.stats, max_packets=max_packets, max_delay=max_delay)
        self._parts: list[bytes] = []
        self._ts: int | None = None  # timestamp of the frame being assembled
        self._key = False
        self._waiting = True
        self._dead_ts: int | None = None  # the last frame counted as dropped

    @property
    def needs_keyframe(self) -> bool:
        return self._waiting

    def reset(self) -> None:
        """Forget buffered packets and wait for a keyframe (after a pause); stats stay."""
        self._buffer.reset()
        self._reset()
        self._waiting = True

    def push(self, pkt: RtpPacket, ext_seq: int, ext_ts: int, now: float) -> list[Frame]:
        return self._frames(self._buffer.push(pkt, ext_seq, ext_ts, now))

    def flush(self) -> list[Frame]:
        """Frames completed by what is still buffered (at close); a partial frame is dropped."""
        frames = self._frames(self._buffer.flush())
        if self._ts is not None:
            self._discard(self._ts, "incomplete")
        self._reset()
        return frames

    def _frames(self, released: list[tuple[int, int, RtpPacket, bool]]) -> list[Frame]:
        out: list[Frame] = []
        for _, ext_ts, pkt, gap in released:
            frame = self._packet(pkt, ext_ts, gap)
            if frame is not None:
                out.append(frame)
        return out

    def _reset(self) -> None:
        self._parts = []
        self._ts = None
        self._key = False

    def _discard(self, ext_ts: int, reason: str) -> None:
        """Count the frame at ``ext_ts`` as dropped, once however many packets it had."""
        if ext_ts != self._dead_ts:
            self.stats.drop(reason)
            self._dead_ts = ext_ts

    def _fail(self, reason: str) -> None:
        """The frame being assembled cannot be completed; wait for a keyframe."""
        if self._ts is not None:
            self._discard(self._ts, reason)
        self._reset()
        self._waiting = True

    def _packet(self, pkt: RtpPacket, ext_ts: int, gap: bool) -> Frame | None:
        if gap:
            # What was lost may have been (part of) a frame: the chain of references is
            # broken until the next keyframe.
            self._fail("incomplete")
        if pkt.payload_end <= pkt.payload_offset:
            return None  # padding-only packet (bandwidth probe): carries no media
        desc = parse_vp8(memoryview(pkt.data)[pkt.payload_offset:pkt.payload_end])
        if desc is None:
            self._fail("malformed")
            self._discard(ext_ts, "malformed")
            return None
        body = pkt.data[pkt.payload_offset + desc.header_size:pkt.payload_end]
        if desc.start_of_partition and desc.partition_id == 0:
            if self._ts is not None:
                self._fail("no_marker")  # a new frame began before the last one ended
            self._parts = [body]
            self._ts = ext_ts
            self._key = desc.is_keyframe
        elif self._ts is not None and ext_ts == self._ts:
            self._parts.append(body)
        else:
            # A frame whose first packet never came (or the last one's marker went missing).
            self._fail("no_marker")
            self._discard(ext_ts, "incomplete" if gap else "no_start")
            return None
        if not pkt.marker:
            return None
        frame = Frame(b"".join(self._parts), self._ts, self._key)
        self._reset()
        if self._waiting and not frame.keyframe:
            self.stats.drop("waiting_keyframe")
            return None
        self._waiting = False
        self.stats.frames += 1
        return frame


class OpusDepacketizer:
    """Opus RTP (RFC 7587): every packet is one frame; in order, without duplicates."""

    needs_keyframe = False

    def __init__(self, *, max_packets: int = 16, max_delay: float = 0.1) -> None:
        self.stats = DepacketizerStats()
        self._buffer: ReorderBuffer[bytes] = ReorderBuffer(
            self.stats, max_packets=max_packets, max_delay=max_delay)

    def reset(self) -> None:
        """Forget buffered packets (after a pause); stats stay."""
        self._buffer.reset()

    def push(self, pkt: RtpPacket, ext_seq: int, ext_ts: int, now: float) -> list[Frame]:
        return self._frames(self._buffer.push(pkt.payload, ext_seq, ext_ts, now))

    def flush(self) -> list[Frame]:
        return self._frames(self._buffer.flush())

    def _frames(self, released: list[tuple[int, int, bytes, bool]]) -> list[Frame]:
        out = [Frame(data, ext_ts, True) for _, ext_ts, data, _ in released if data]
        self.stats.frames += len(out)
        return out


Depacketizer = Vp8Depacketizer | OpusDepacketizer
DEPACKETIZERS: dict[str, Callable[[], Depacketizer]] = {
    "VP8": Vp8Depacketizer,
    "OPUS": OpusDepacketizer,
}
