"""VP8 temporal layer filtering (RFC 7741) for one subscriber's video stream.

A VP8 encoder with temporal scalability tags each frame with a TID; frames of layer n
reference only layers <= n, so the SFU can thin a stream by dropping the higher layers.
The subscriber's decoder must not notice: PictureID has to stay continuous (a gap means
"frame lost" and triggers a PLI or a freeze), so each dropped frame shifts the PictureIDs
after it down by one, while gaps from real upstream loss pass through. TL0PICIDX needs no
shifting within one source (TL0 frames are never dropped) but continues across a
simulcast switch (``reset_source``).

Switching up is only safe where the new layer does not reference frames the subscriber
never got: at a frame with the layer-sync (Y) bit, or at a keyframe. Switching down is
safe at any frame boundary. Decisions are made per frame, so the packets of one frame
are forwarded or dropped together; a late packet gets its frame's decision again.

Pure logic: the caller passes parsed descriptors in, sends what comes back and calls
``OutputRewriter.skip`` for each ``None``.
"""

from __future__ import annotations

from mediaserver.sfu.seqnum import Unwrapper
from mediaserver.sfu.vp8 import Vp8Descriptor, rewrite_vp8

MAX_TID = 3


class Vp8TemporalFilter:
    """Forwards VP8 frames of temporal layers <= a target, with continuous PictureIDs."""

    # Recent frames remembered for late packets; well below half the 7-bit PictureID range.
    FRAME_CACHE = 32

    __slots__ = (
        "_after_switch",
        "_current",
        "_frames",
        "_last_in",
        "_last_out_bits",
        "_last_out_pid",
        "_last_out_tl0",
        "_pid_bits",
        "_pid_offset",
        "_plain_forward",
        "_plain_start_seq",
        "_prev_marker",
        "_rebase",
        "_target",
        "_tl0_offset",
        "_unwrapper",
        "_waiting_key",
        "frames_dropped",
        "frames_forwarded",
    )

    def __init__(self, target: int = MAX_TID) -> None:
        self._target = _clamp(target)
        self._after_switch: int | None = None  # the target once the source has switched
        self._current: int | None = None  # layer in effect; None until the first frame
        self._unwrapper: Unwrapper | None = None
        self._pid_bits = 0
        self._pid_offset = 0
        self._last_in = -1  # extended PictureID of the newest frame decided
        self._last_out_pid: int | None = None
        self._last_out_bits = 7
        self._frames: dict[int, int | None] = {}  # extended in-pid -> out-pid, None = dropped
        self._tl0_offset = 0
        self._last_out_tl0: int | None = None
        self._waiting_key = False
        self._rebase = False
        # Streams without PictureID: frame boundaries from S/PID and the marker bit.
        self._plain_forward = False
        self._plain_start_seq = -1
        self._prev_marker = True
        self.frames_forwarded = 0
        self.frames_dropped = 0

    @property
    def target(self) -> int:
        return self._target

    @property
    def current(self) -> int | None:
        """The temporal layer being forwarded now (lags the target until a switch point)."""
        return self._current

    def set_target(self, tid: int) -> None:
        self._target = _clamp(tid)
        self._after_switch = None

    def aim(self, tid: int, current: int | None, target: int) -> None:
        """Target temporal layer ``tid`` of simulcast layer ``target``; ``current`` is forwarded.

        Until the switch to another simulcast layer happens (at its keyframe), the layer
        still forwarded keeps its target when going up, and drops to TL0 when going down:
        a link that needs less gets relief now, not at the next keyframe.
        """
        if current is None or current == target:
            self.set_target(tid)
            return
        self._after_switch = _clamp(tid)
        if target < current:
            self._target = 0

    def reset_source(self) -> None:
        """The input switches to another stream (a simulcast layer); wait for its keyframe.

        The keyframe continues PictureID and TL0PICIDX right after the last ones sent.
        """
        if self._after_switch is not None:
            self._target, self._after_switch = self._after_switch, None
        self._waiting_key = True
        self._unwrapper = None
        self._frames.clear()
        self._last_in = -1
        self._prev_marker = True

    def process(
        self, payload: bytes | memoryview, desc: Vp8Descriptor, ext_seq: int, marker: bool
    ) -> bytes | memoryview | None:
        """The payload to send (PictureID/TL0PICIDX rewritten), or None to drop the packet."""
        if desc.picture_id is None:
            forward = self._plain_frame(desc, ext_seq, marker)
            out_pid = None
        else:
            out_pid = self._pid_frame(desc, desc.picture_id)
            forward = out_pid is not None
        if not forward:
            return None
        out_tl0 = None
        if desc.tl0picidx is not None:
            out_tl0 = (desc.tl0picidx + self._tl0_offset) & 0xFF
            self._last_out_tl0 = out_tl0
        return rewrite_vp8(payload, desc, picture_id=out_pid, tl0picidx=out_tl0)

    def _pid_frame(self, desc: Vp8Descriptor, picture_id: int) -> int | None:
        bits = desc.picture_id_bits
        if self._unwrapper is None or bits != self._pid_bits:
            self._unwrapper = Unwrapper(bits)
            self._pid_bits = bits
            self._frames.clear()
            self._last_in = -1
            self._rebase = True  # a new PictureID space: continue after the last one sent
        in_ext = self._unwrapper.peek(picture_id)
        if in_ext in self._frames:
            return self._frames[in_ext]
        if in_ext <= self._last_in:
            return None  # a frame older than everything remembered: too late to place
        self._unwrapper.unwrap(picture_id)
        self._last_in = in_ext
        out: int | None = None
        if self._decide(desc):
            last = self._last_out_pid
            if last is None:
                self._pid_offset = picture_id - in_ext  # the first frame keeps its PictureID
            elif self._rebase:  # continue the wire value, whatever the widths
                self._pid_offset = (last & ((1 << self._last_out_bits) - 1)) + 1 - in_ext
            elif in_ext + self._pid_offset <= last:
                self._pid_offset = last + 1 - in_ext
            out = in_ext + self._pid_offset
            self._last_out_pid = out
            self._last_out_bits = bits
            self._rebase = False
        else:
            self._pid_offset -= 1
        frames = self._frames
        frames[in_ext] = out
        if len(frames) > self.FRAME_CACHE:
            del frames[next(iter(frames))]
        return out

    def _plain_frame(self, desc: Vp8Descriptor, ext_seq: int, marker: bool) -> bool:
        new_frame = (desc.start_of_partition and desc.partition_id == 0) or self._prev_marker
        if new_frame and ext_seq > self._plain_start_seq:
            self._plain_start_seq = ext_seq
            self._plain_forward = self._decide(desc)
        elif ext_seq < self._plain_start_seq:
            return False  # a late packet of an earlier frame; its decision is gone
        self._prev_marker = marker
        return self._plain_forward

    def _decide(self, desc: Vp8Descriptor) -> bool:
        """Per new frame: apply a pending layer switch, then forward or drop the frame."""
        key = desc.is_keyframe
        if self._waiting_key and not key:
            self.frames_dropped += 1
            return False
        if self._waiting_key:
            self._waiting_key = False
            self._rebase = True
            if desc.tl0picidx is not None and self._last_out_tl0 is not None:
                self._tl0_offset = self._last_out_tl0 + 1 - desc.tl0picidx
        tid = desc.tid
        target = self._target
        current = self._current
        if tid is None or current is None or key or target < current:
            current = target
        elif current < tid <= target and desc.layer_sync:
            current = tid
        self._current = current
        if tid is None or tid <= current:
            self.frames_forwarded += 1
            return True
        self.frames_dropped += 1
        return False


def _clamp(tid: int) -> int:
    return min(max(tid, 0), MAX_TID)


class TemporalRates:
    """Bit and frame rates per temporal layer of one stream, as the allocator needs them.

    The producer feeds every packet whose descriptor carries a TID (``add``, a few list
    operations) and closes a window about once a second (``close``). ``rates[t]`` is what
    forwarding the layers 0..t costs on the wire, the peak of the last few windows as for
    the whole stream (a keyframe in one window must not make the layer look cheaper in the
    next); ``fps[t]`` their frame rate. Both are empty for a stream without temporal layers.
    """

    PEAK_WINDOWS = 3

    __slots__ = ("_bytes", "_frames", "_recent", "fps", "rates")

    def __init__(self) -> None:
        self._bytes = [0] * (MAX_TID + 1)
        self._frames = [0] * (MAX_TID + 1)
        self._recent: list[tuple[list[int], list[float]]] = []
        self.rates: tuple[int, ...] = ()
        self.fps: tuple[float, ...] = ()

    def add(self, tid: int, wire_bytes: int, marker: bool) -> None:
        self._bytes[tid] += wire_bytes
        if marker:
            self._frames[tid] += 1

    def close(self, elapsed: float) -> None:
        """End a measuring window of ``elapsed`` seconds."""
        top = max((t for t in range(MAX_TID + 1) if self._bytes[t]), default=-1)
        if elapsed > 0 and top >= 0:
            rates: list[int] = []
            fps: list[float] = []
            bits = frames = 0
            for t in range(top + 1):
                bits += self._bytes[t] * 8
                frames += self._frames[t]
                rates.append(int(bits / elapsed))
                fps.append(frames / elapsed)
            self._recent.append((rates, fps))
            del self._recent[:-self.PEAK_WINDOWS]
            # Layers seen in any recent window; for a window without the higher ones (they
            # were just turned on) forwarding "up to t" cost its whole rate.
            depth = max(len(r) for r, _ in self._recent)
            self.rates = tuple(max(r[t] if t < len(r) else r[-1] for r, _ in self._recent)
                               for t in range(depth))
            self.fps = tuple(max(f[t] if t < len(f) else f[-1] for _, f in self._recent)
                             for t in range(depth))
        self._bytes = [0] * (MAX_TID + 1)
        self._frames = [0] * (MAX_TID + 1)

    def clear(self) -> None:
        """The stream stopped: forget what was measured."""
        self._recent.clear()
        self.rates = ()
        self.fps = ()
        self._bytes = [0] * (MAX_TID + 1)
        self._frames = [0] * (MAX_TID + 1)
