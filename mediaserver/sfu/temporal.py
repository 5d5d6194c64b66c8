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

    def reset_source(self) -> None:
        """The input switches to another stream (a simulcast layer); wait for its keyframe.

        The keyframe continues PictureID and TL0PICIDX right after the last ones sent.
        """
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
