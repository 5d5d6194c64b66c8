"""Every touch of aiortc's (and aioice's) private parts, in one place.

aiortc is a WebRTC endpoint: it decodes what it receives and encodes what it sends. An
SFU needs only its ICE, DTLS, SRTP and SDP machinery, and must see packets before any
jitter buffer or decoder. aiortc has no public API for that, so this module:

- replaces, per DTLS transport instance, ``_handle_rtp_data`` and ``_handle_rtcp_data``
  (called by ``RTCDtlsTransport._recv_next`` right after SRTP unprotect) with the SFU's
  handlers, so aiortc's own RTP router, receivers and decoders never see a packet;
- turns the transceivers' RTCRtpReceiver/RTCRtpSender into inert subclasses (no decoder
  thread, no RTP/RTCP loops of their own), while keeping everything negotiation needs;
- sends by SRTP-protecting with ``_tx_srtp`` and writing to the nominated ICE pair's
  datagram transport directly, a synchronous call (no coroutine per packet);
- gathers host candidates itself, to honour the bind address, UDP port range, announced
  IP and the loopback switch (aioice binds port 0 on every non-loopback interface);
- adds the header extensions aiortc does not negotiate (transport-cc, rid, repaired-rid,
  audio level and abs-send-time for both kinds) to its global tables.

Checked against aiortc ``AIORTC_VERSION`` (pinned in pyproject.toml). ``verify()`` checks
at start-up that every private name used here exists, because a renamed attribute fails
silently: the server refuses to start instead.
"""

from __future__ import annotations

import asyncio
import copy
import fcntl
import logging
import random
import socket
import struct
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aiortc
import ifaddr
import pylibsrtp
from aioice.candidate import Candidate, candidate_foundation, candidate_priority
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.codecs import CODECS, HEADER_EXTENSIONS
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcrtpparameters import (
    RTCRtcpFeedback,
    RTCRtpCodecParameters,
    RTCRtpHeaderExtensionParameters,
)
from pylibsrtp._binding import ffi as srtp_ffi
from pylibsrtp._binding import lib as srtp_lib

from mediaserver import metrics
from mediaserver.sfu import fastsend, mediasocket
from mediaserver.sfu.red import red_for
from mediaserver.sfu.rtp import (
    EXT_ABS_SEND_TIME,
    EXT_AUDIO_LEVEL,
    EXT_MID,
    EXT_REPAIRED_RID,
    EXT_RID,
)
from mediaserver.sfu.vp8 import parse_vp8

log = logging.getLogger(__name__)

AIORTC_VERSION = "1.16.0"

OPUS_PARAMETERS = {"minptime": 10, "useinbandfec": 1, "usedtx": 1}
# RED (RFC 2198) wrapping Opus, under the payload type Chrome gives it.
RED_PAYLOAD_TYPE = 63


# With BUNDLE the extension id space is shared by audio and video: ids must not clash.
# transport-cc is left out on purpose: the SFU has no send-side estimator for its feedback,
# so peers that negotiated it would send none of the REMB the per-subscriber estimator
# reads, and publishers using send-side estimation without feedback would starve.
_EXTENSION_IDS = {
    "audio": [(1, EXT_MID), (2, EXT_AUDIO_LEVEL), (3, EXT_ABS_SEND_TIME)],
    "video": [
        (1, EXT_MID),
        (3, EXT_ABS_SEND_TIME),
        (10, EXT_RID),
        (11, EXT_REPAIRED_RID),
    ],
}

RtpHandler = Callable[[bytes, int], Awaitable[None]]
RtcpHandler = Callable[[bytes], Awaitable[None]]


class AdapterError(RuntimeError):
    """aiortc is not the version this adapter was written for."""


# (object to inspect, attribute) pairs; instance attributes are checked on live objects.
_CLASS_ATTRS: list[tuple[Any, str]] = [
    (RTCDtlsTransport, "_handle_rtp_data"),
    (RTCDtlsTransport, "_handle_rtcp_data"),
    (RTCDtlsTransport, "_recv_next"),
    (RTCDtlsTransport, "_setup_srtp"),  # creates _tx_srtp, which PacketSender uses
    (RTCRtpReceiver, "receive"),
    (RTCRtpReceiver, "_handle_rtp_packet"),
    (RTCRtpReceiver, "_handle_rtcp_packet"),
    (RTCRtpReceiver, "_handle_disconnect"),
    (RTCRtpSender, "send"),
    (RTCRtpSender, "_handle_rtcp_packet"),
    (aioice.ice.Connection, "gather_candidates"),
    (aioice.ice.Connection, "get_component_candidates"),
    (aioice.ice, "StunProtocol"),
    (aioice.ice.StunProtocol, "datagram_received"),
    (aioice.ice.Connection, "query_consent"),
    (aioice.ice.Connection, "check_incoming"),
    (srtp_lib, "srtp_protect"),
    (srtp_lib, "srtp_protect_rtcp"),
    (srtp_lib, "srtp_unprotect"),
    (srtp_lib, "srtp_unprotect_rtcp"),
]
_INSTANCE_ATTRS = {
    "connection": ["_local_candidates", "_local_candidates_start", "_local_candidates_end",
                   "_protocols", "_nominated", "_components", "_closing"],
    "dtls": ["transport", "_rtp_router", "_rx_srtp"],
    "ice": ["_connection", "_recv"],
    "sender": ["_ssrc", "_rtx_ssrc"],
    "transceiver": ["_codecs", "_headerExtensions"],
}


def verify() -> None:
    """Refuse to run on an aiortc whose private parts differ from what we hook."""
    problems: list[str] = []
    if aiortc.__version__ != AIORTC_VERSION:
        problems.append(
            f"aiortc {aiortc.__version__} installed, adapter checked on {AIORTC_VERSION}")
    for owner, name in _CLASS_ATTRS:
        if not hasattr(owner, name):
            problems.append(f"{getattr(owner, '__name__', owner)}.{name} is missing")
    problems += _verify_instances()
    if problems:
        raise AdapterError("aiortc adapter check failed: " + "; ".join(problems))


def _verify_instances() -> list[str]:
    """Inspect a throwaway connection (no sockets are opened until ICE gathering)."""
    problems = []
    pc = RTCPeerConnection()
    t = pc.addTransceiver("video", direction="sendonly")
    dtls = t.sender.transport
    objects: dict[str, Any] = {"transceiver": t, "sender": t.sender, "dtls": dtls,
                               "ice": dtls.transport, "connection": dtls.transport._connection}
    for kind, names in _INSTANCE_ATTRS.items():
        for name in names:
            if not hasattr(objects[kind], name):
                problems.append(f"{type(objects[kind]).__name__}.{name} is missing")
    return problems


_installed = False


def install() -> None:
    """Extend aiortc's global codec/extension tables (idempotent).

    These tables are read by every RTCPeerConnection in the process, including aiortc
    test clients, which simply ignore the extensions they do not write.
    """
    global _installed
    if _installed:
        return
    for kind, pairs in _EXTENSION_IDS.items():
        HEADER_EXTENSIONS[kind][:] = [
            RTCRtpHeaderExtensionParameters(id=i, uri=u) for i, u in pairs]
    fir = RTCRtcpFeedback(type="ccm", parameter="fir")
    for codec in CODECS["video"]:
        if codec.mimeType.lower() != "video/rtx" and fir not in codec.rtcpFeedback:
            codec.rtcpFeedback.append(fir)
    for codec in CODECS["audio"]:
        if codec.mimeType.lower() == "audio/opus":
            # In-band FEC (a lost 20 ms frame rebuilt from the next packet) and DTX (no
            # packets in silence): what keeps speech clear on a lossy, thin link. aiortc
            # offers Opus without them, and browsers use neither unless the other side asks.
            codec.parameters.update(OPUS_PARAMETERS)
    # aiortc has no RED. Registered, it is negotiated like any codec: the SFU accepts it
    # from publishers (restrict_codecs takes the offer's payload types) and offers it to
    # subscribers of a track that has it. aiortc clients cannot decode it: loadtest's
    # client leaves it out of its answers unless it unwraps RED itself.
    opus = next(c for c in CODECS["audio"] if c.mimeType.lower() == "audio/opus")
    CODECS["audio"].append(RTCRtpCodecParameters(
        mimeType="audio/red", clockRate=48000, channels=2, payloadType=RED_PAYLOAD_TYPE,
        parameters={f"{opus.payloadType}/{opus.payloadType}": None}))
    _installed = True


class _InertReceiver(RTCRtpReceiver):
    """A receiver that negotiates but never decodes: the SFU takes its packets earlier."""

    async def receive(self, parameters: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    def _handle_disconnect(self) -> None:
        return None

    async def _handle_rtp_packet(self, packet: Any, arrival_time_ms: int) -> None:
        return None

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        return None


class _InertSender(RTCRtpSender):
    """A sender that negotiates but runs no encoder, RTP loop or RTCP loop of its own."""

    async def send(self, parameters: Any) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def _handle_rtcp_packet(self, packet: Any) -> None:
        return None


def make_inert(pc: RTCPeerConnection) -> None:
    """Swap every transceiver's receiver and sender for the inert subclasses.

    Swapping ``__class__`` keeps every attribute aiortc set in ``__init__`` (SSRCs, stream
    ids) that SDP generation reads. Call after transceivers exist and before the
    connection reaches ``__connect`` (i.e. before setLocalDescription).
    """
    for t in pc.getTransceivers():
        if type(t.receiver) is RTCRtpReceiver:
            t.receiver.__class__ = _InertReceiver
        if type(t.sender) is RTCRtpSender:
            t.sender.__class__ = _InertSender


# RFC 7675: consent to send lapses 30 s after its last proof.
CONSENT_TIMEOUT = 30.0


class PeerConsent:
    """Consent freshness (RFC 7675) as an ICE-lite server keeps it: from the peer's checks.

    aioice proves consent itself once connected: a Binding request to the peer every 4-6 s
    in a task of its own, and the answer awaited on a timer; in Python, cold, on each
    connection (about 3 % of a 1:1 call's server CPU, and two wake-ups of the loop per
    check). The peer (a browser, or aiortc) runs the same checks towards us, signed with
    our ICE password, for its own consent. An SFU does not need both: as an ICE-lite agent
    (mediasoup's) does, it takes the peer's authenticated checks as the proof that the peer
    is there and wants the media, and stops sending once none has arrived for
    ``CONSENT_TIMEOUT``. aioice's check list at connection set-up is untouched; only the
    checks after it are not sent.

    The peer's checks on the nominated pair are answered by the C receiver of its socket
    (``fastsend.Receiver.answer_checks``) once ICE has connected: aioice answered each with
    ~0.5 ms of Python, run cold. Any other request (another address, a role conflict, an
    attribute the C code does not know) still goes to aioice.

    ``lapsed(now)`` is polled by the owner's timer (no clock reads here); ``expire()``
    closes the ICE connection as aioice does when its own checks fail.
    """

    __slots__ = ("_closing", "_conn", "_heard", "_heard_at", "_receivers", "checks",
                 "watching")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self.checks = 0  # authenticated Binding requests from the peer, answered
        self.watching = False  # ICE connected: from now on consent rests on the peer's checks
        self._heard = -1
        self._heard_at = 0.0
        self._closing: asyncio.Task[None] | None = None
        self._receivers: list[Any] = []  # fastsend.Receivers answering checks in C
        original = conn.check_incoming

        def check_incoming(message: Any, addr: Any, protocol: Any) -> None:
            # aioice calls it only for a request it authenticated (USERNAME, MESSAGE-
            # INTEGRITY with our password) and answered.
            self.checks += 1
            original(message, addr, protocol)

        async def query_consent() -> None:
            # aioice starts this once its check list completed: nothing to send, from now on.
            self.watching = True
            self._answer_in_c()

        conn.check_incoming = check_incoming
        conn.query_consent = query_consent

    def _answer_in_c(self) -> None:
        conn = self._conn
        if fastsend.Receiver is None or conn.remote_username is None:
            return
        user = f"{conn.local_username}:{conn.remote_username}".encode()
        key = conn.local_password.encode()
        for pair in conn._nominated.values():
            rx = getattr(pair.protocol.datagram_received, "__self__", None)
            if isinstance(rx, fastsend.Receiver):
                host, port = pair.remote_addr
                rx.answer_checks(user, key, host, port, conn.ice_controlling)
                self._receivers.append(rx)

    def heard(self) -> int:
        """The peer's checks answered so far, by aioice and by the C receivers."""
        return self.checks + sum(rx.checks for rx in self._receivers)

    def lapsed(self, now: float) -> bool:
        """True once no check of the peer's has arrived for CONSENT_TIMEOUT (and only
        once: the connection is being closed then)."""
        if not self.watching or self._closing is not None or self._conn._closing:
            return False
        heard = self.heard()
        if heard != self._heard:
            self._heard, self._heard_at = heard, now
            return False
        return now - self._heard_at >= CONSENT_TIMEOUT

    def expire(self) -> None:
        """Close the ICE connection: no more media to a peer that stopped consenting."""
        if self._closing is None:
            for rx in self._receivers:
                rx.answer_checks(None)
            log.info("ICE consent expired: no check from the peer for %.0f s", CONSENT_TIMEOUT)
            metrics.CONSENT_EXPIRED.inc()
            self._closing = asyncio.ensure_future(self._conn.close())


def peer_consent(pc: RTCPeerConnection) -> list[PeerConsent]:
    """Put every ICE connection of ``pc`` on the peer's consent checks (``PeerConsent``).
    Call before ICE connects (before or right after setLocalDescription); idempotent."""
    out = []
    for dtls in dtls_transports(pc):
        conn: Any = dtls.transport._connection
        consent = getattr(conn, "_sfu_consent", None)
        if consent is None:
            consent = conn._sfu_consent = PeerConsent(conn)
        out.append(consent)
    return out


def dtls_transports(pc: RTCPeerConnection) -> list[RTCDtlsTransport]:
    seen: list[RTCDtlsTransport] = []
    for t in pc.getTransceivers():
        dtls = t.receiver.transport
        if dtls not in seen:
            seen.append(dtls)
    return seen


def hook_packets(pc: RTCPeerConnection, on_rtp: Callable[[bytes, int], None],
                 on_rtcp: Callable[[bytes], None], streams: dict[int, Any] | None = None
                 ) -> None:
    """Route decrypted RTP/RTCP of every (bundled) transport of ``pc`` to the SFU.

    The handlers are synchronous and must not raise; an exception escaping here would end
    aiortc's receive loop and with it the connection, so it is caught and logged (rate
    limited by the caller's counters). ``streams`` (ssrc -> RecvStream, kept up to date by
    the caller) lets the C receiver take media packets of known streams itself.
    """
    for dtls in dtls_transports(pc):
        if getattr(dtls, "_sfu_hooked", False):
            continue

        async def handle_rtp(data: bytes, arrival_time_ms: int) -> None:
            try:
                on_rtp(data, arrival_time_ms)
            except Exception:  # pragma: no cover - defensive, see docstring
                metrics.DROP["handler_error"].inc()
                log.exception("RTP handler failed")

        async def handle_rtcp(data: bytes) -> None:
            try:
                on_rtcp(data)
            except Exception:  # pragma: no cover - defensive
                metrics.DROP["handler_error"].inc()
                log.exception("RTCP handler failed")

        dtls._handle_rtp_data = handle_rtp  # type: ignore[method-assign]
        dtls._handle_rtcp_data = handle_rtcp  # type: ignore[method-assign]
        dtls._sfu_hooked = True  # type: ignore[attr-defined]
        _fast_path(dtls, on_rtp, on_rtcp, streams)


async def renack_missing(pc: RTCPeerConnection, now: float, give_up_after: float = 1.0
                         ) -> int:
    """Client side: what a browser's receiver does about lost packets and aiortc's does not.

    aiortc's NackGenerator asks once, when a gap appears; if the retransmission is lost too
    (a congested link loses both), or never comes (the SFU does not resend packets of a
    layer it has switched away from), its video jitter buffer (512 packets) waits for the
    hole until it overflows: half a minute of frozen video at a low layer's packet rate.
    Browsers re-ask on a timer and, after a while, give the packet up and ask for a
    keyframe. Called every few hundred milliseconds, this does both. Returns the number of
    RTCP packets sent.
    """
    sent = 0
    for t in pc.getTransceivers():
        receiver = t.receiver
        generator = getattr(receiver, "_RTCRtpReceiver__nack_generator", None)
        if generator is None:  # audio: no NACKs, and a 16-packet buffer that skips holes
            continue
        rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})
        media = [x for x in getattr(receiver, "_RTCRtpReceiver__active_ssrc", {})
                 if x not in rtx]
        if not media:
            continue
        buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
        vp8 = any(c.mimeType.lower() == "video/vp8" for c in negotiated(t)[0])
        # Before the missing list: the hole that matters most is one it no longer holds.
        if buffer is not None and skip_stuck_hole(buffer, receiver.__dict__, now, give_up_after,
                                                  generator.max_seq,
                                                  vp8_keyframe_start if vp8 else None):
            await receiver._send_rtcp_pli(media[-1])
            sent += 1
        if not generator.missing:
            continue
        first_seen: dict[int, float] = receiver.__dict__.setdefault("_sfu_missing_since", {})
        for seq in list(first_seen):
            if seq not in generator.missing:
                del first_seen[seq]
        for seq in generator.missing:
            first_seen.setdefault(seq, now)
        # Packets asked for too long are given up (a hole they leave in the buffer is
        # skip_stuck_hole's, with the keyframe request).
        for seq in [seq for seq, at in first_seen.items() if now - at > give_up_after]:
            generator.missing.discard(seq)
            del first_seen[seq]
        if generator.missing:
            await receiver._send_rtcp_nack(media[-1], sorted(generator.missing))
            sent += 1
    return sent


def vp8_keyframe_start(packet: Any) -> bool:
    """Whether an aiortc RtpPacket carries the first packet of a VP8 keyframe."""
    desc = parse_vp8(packet.payload)
    return desc is not None and desc.is_keyframe


def skip_stuck_hole(buffer: Any, state: dict[str, Any], now: float, give_up_after: float,
                    newest: int | None = None,
                    keyframe_start: Callable[[Any], bool] | None = None) -> bool:
    """Drop a hole that has held a video jitter buffer for ``give_up_after`` seconds.

    aiortc's NackGenerator forgets a missing packet once 128 newer ones have arrived, so a
    hole nobody re-asks for any more (or one the generator never saw: a packet the buffer
    threw away as misordered) holds the buffer until 512 packets pile up behind it, some
    20 s at a low layer's rate. The buffer is stuck when its head has not moved for that
    long and a hole has packets behind it. Drops everything up to the first packet past the
    hole, and that packet's frame too if the hole was inside it (aiortc's own smart_remove);
    the caller asks for a keyframe. ``state`` keeps the head and since when it has been
    there. ``newest``, the highest sequence number received, bounds the search (the
    buffer's slots past it are empty). With ``keyframe_start``, a keyframe's first packet
    behind the hole ends the wait at once: everything before it goes, as a browser's frame
    buffer drops what a keyframe makes useless (the first frames of a new simulcast layer
    follow the old layer's lost packets so). Returns whether anything was dropped.
    """
    origin = getattr(buffer, "_origin", None)
    packets = getattr(buffer, "_packets", None)
    if origin is None or packets is None:
        return False
    capacity = buffer.capacity
    span = capacity if newest is None else min(capacity, ((newest - origin) & 0xFFFF) + 1)
    hole = next((i for i in range(span) if packets[(origin + i) % capacity] is None), None)
    behind = None if hole is None else next(
        (i for i in range(hole + 1, span) if packets[(origin + i) % capacity] is not None),
        None)
    if behind is None:  # no hole, or nothing behind it: a pause, not a loss
        state.pop("_sfu_stuck_head", None)
        return False
    if keyframe_start is not None:
        key = next((i for i in range(behind, span)
                    if (p := packets[(origin + i) % capacity]) is not None
                    and keyframe_start(p)), None)
        if key is not None:
            buffer.smart_remove(key)
            state.pop("_sfu_stuck_head", None)
            return True
    head, since = state.setdefault("_sfu_stuck_head", (origin, now))
    if head != origin:
        state["_sfu_stuck_head"] = (origin, now)
        return False
    if now - since < give_up_after:
        return False
    buffer.smart_remove(behind)
    state.pop("_sfu_stuck_head", None)
    return True


def tap_rtcp(pc: RTCPeerConnection, on_rtcp: Callable[[bytes], None]) -> None:
    """Let a client see decrypted RTCP before aiortc routes it (for SSRCs aiortc never
    registered, such as the simulcast layers a test publisher sends itself)."""
    _tap(pc, "_handle_rtcp_data", on_rtcp)


def tap_rtp(pc: RTCPeerConnection, on_rtp: Callable[[bytes], bytes | None]) -> None:
    """Let a client see decrypted RTP before aiortc routes it, and hand aiortc other bytes
    instead by returning them (tests: the VP8 descriptors a subscriber receives; RED
    unwrapped for aiortc, which has none)."""
    _tap(pc, "_handle_rtp_data", on_rtp)


def _tap(pc: RTCPeerConnection, handler: str,
         callback: Callable[[bytes], bytes | None]) -> None:
    for dtls in dtls_transports(pc):
        original = getattr(dtls, handler)

        async def tapped(data: bytes, *args: Any, _original: Any = original, **kw: Any
                         ) -> None:
            try:
                data = callback(data) or data
            except Exception:  # pragma: no cover - defensive
                log.exception("%s tap failed", handler)
            await _original(data, *args, **kw)

        setattr(dtls, handler, tapped)


def _address(cdata: Any) -> int:
    """A cffi pointer as an integer, for the C extension."""
    return int(srtp_ffi.cast("uintptr_t", cdata))


# libsrtp's functions as loaded by pylibsrtp: the extension calls the same library.
_SRTP_PROTECT = _address(srtp_ffi.addressof(srtp_lib, "srtp_protect"))
_SRTP_PROTECT_RTCP = _address(srtp_ffi.addressof(srtp_lib, "srtp_protect_rtcp"))
_SRTP_UNPROTECT = _address(srtp_ffi.addressof(srtp_lib, "srtp_unprotect"))
_SRTP_UNPROTECT_RTCP = _address(srtp_ffi.addressof(srtp_lib, "srtp_unprotect_rtcp"))


class FastSrtp:
    """SRTP/SRTCP on one of aiortc's pylibsrtp sessions, without pylibsrtp's per-call work.

    ``pylibsrtp.Session`` allocates a C ``int`` and type-checks on every call; once per
    packet in and once per packet forwarded that was a measurable share of the packet path.
    This keeps one length cell and calls libsrtp on the session's own C context and buffer
    (the session object is kept alive here). Errors raise ``pylibsrtp.Error`` as pylibsrtp
    does, so callers count them the same way.
    """

    __slots__ = ("_buffer", "_cdata", "_ctx", "_length", "_session", "_size")

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._session = session
        self._ctx = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._size = len(session._buffer)
        self._length = srtp_ffi.new("int *")

    def _run(self, data: bytes, func: Any, trailer: int) -> bytes:
        n = len(data)
        if n > self._size - trailer:
            raise pylibsrtp.Error("packet is too long")
        length = self._length
        length[0] = n
        self._buffer[0:n] = data
        rc = func(self._ctx, self._cdata, length)
        if rc:
            raise pylibsrtp.Error(f"libsrtp error {rc}")
        return self._buffer[0:length[0]]  # type: ignore[no-any-return]

    def protect(self, data: bytes) -> bytes:
        return self._run(data, srtp_lib.srtp_protect, pylibsrtp.SRTP_MAX_TRAILER_LEN)

    def protect_rtcp(self, data: bytes) -> bytes:
        return self._run(data, srtp_lib.srtp_protect_rtcp, pylibsrtp.SRTP_MAX_SRTCP_TRAILER_LEN)

    def unprotect(self, data: bytes) -> bytes:
        return self._run(data, srtp_lib.srtp_unprotect, 0)

    def unprotect_rtcp(self, data: bytes) -> bytes:
        return self._run(data, srtp_lib.srtp_unprotect_rtcp, 0)


class _CheckedSrtp:
    """FastSrtp's unprotect with the C Input's contract: None for a refused datagram."""

    __slots__ = ("_srtp",)

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._srtp = FastSrtp(session)

    def unprotect(self, data: bytes) -> bytes | None:
        try:
            return self._srtp.unprotect(data)
        except pylibsrtp.Error:
            return None

    def unprotect_rtcp(self, data: bytes) -> bytes | None:
        try:
            return self._srtp.unprotect_rtcp(data)
        except pylibsrtp.Error:
            return None


def unprotector(session: pylibsrtp.Session, fast: bool = True) -> Any:
    """Something with ``unprotect``/``unprotect_rtcp`` on ``session`` answering None for a
    datagram libsrtp refuses: the C extension's Input, or FastSrtp without it."""
    if fast and fastsend.Input is not None:
        return fastsend.Input(session, _address(session._srtp[0]), _SRTP_UNPROTECT,
                              _SRTP_UNPROTECT_RTCP)
    return _CheckedSrtp(session)


LATENCY_SAMPLE_EVERY = 16  # RTP packets per socket between two forwarding-latency samples
_SIOCGSTAMP = 0x8906  # Linux ioctl: kernel receive time of the socket's last datagram
_TIMEVAL = struct.Struct("@ll")


def _socket_fd(protocol: Any) -> int:
    transport = getattr(protocol, "transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    try:
        return int(sock.fileno()) if sock is not None else -1
    except (OSError, ValueError):
        return -1


class LatencySampler:
    """Forwarding latency of every ``LATENCY_SAMPLE_EVERY``-th RTP packet of one socket.

    From the kernel's receive timestamp of the datagram (``SIOCGSTAMP``, so the time it
    waited in the socket buffer for a busy event loop counts) to after the synchronous
    fan-out sent its last copy; packets that were not forwarded are not samples. The
    first ioctl on a socket only switches kernel timestamps on, so it is no sample either.
    """

    __slots__ = ("_enabled", "_fd", "countdown")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._enabled = False
        self.countdown = LATENCY_SAMPLE_EVERY

    def forward(self, data: bytes, on_rtp: Callable[[bytes, int], None]) -> None:
        self.countdown = LATENCY_SAMPLE_EVERY
        arrived = self._arrival()
        before = metrics.packets_sent()
        on_rtp(data, 0)
        if arrived is not None and metrics.packets_sent() != before:
            delay = time.time() - arrived
            if 0.0 <= delay < 10.0:
                metrics.FORWARDING_LATENCY.observe(delay)

    def _arrival(self) -> float | None:
        if self._fd < 0:
            return None
        try:
            sec, usec = _TIMEVAL.unpack(fcntl.ioctl(self._fd, _SIOCGSTAMP, bytes(16)))
        except OSError:
            return None
        if not self._enabled:
            self._enabled = True
            return None
        return sec + usec / 1e6


def _srtp_refused() -> None:
    metrics.DROP["srtp_error"].inc()


def _handler_failed(exc: BaseException) -> None:
    if isinstance(exc, pylibsrtp.Error):  # protecting a copy, on the pure-Python path
        metrics.DROP["srtp_error"].inc()
        return
    metrics.DROP["handler_error"].inc()
    log.error("fast-path packet handler failed", exc_info=exc)


def _fast_path(dtls: RTCDtlsTransport, on_rtp: Callable[[bytes, int], None],
               on_rtcp: Callable[[bytes], None], streams: dict[int, Any] | None = None
               ) -> None:
    """Take SRTP/SRTCP straight from the socket callback once DTLS is up.

    aioice puts every datagram in an asyncio.Queue that RTCDtlsTransport's receive task
    awaits: a queue operation and a task switch per packet, after aioice has tried to
    parse each datagram as STUN. Profiling showed that machinery costing more than the
    SFU's own work. RTP and RTCP (first byte 128-191, RFC 7983) never are STUN or DTLS,
    so once the SRTP session exists they are unprotected and handled right in
    ``datagram_received``; everything else (STUN, DTLS) takes aioice's usual path.
    """
    protocol: Any
    # The receiving session, wrapped once: (aiortc's session, our unprotecting object on it:
    # the C extension's Input, or FastSrtp without it). Both answer None for a datagram
    # libsrtp refuses.
    rx_state: list[Any] = [None, None]

    def receiver() -> Any:
        session = getattr(dtls, "_rx_srtp", None)
        if session is None:
            return None
        if session is not rx_state[0]:
            rx_state[0], rx_state[1] = session, unprotector(session)
        return rx_state[1]

    for protocol in dtls.transport._connection._protocols:
        if getattr(protocol, "_sfu_fast", False):
            continue
        original = protocol.datagram_received
        if fastsend.AVAILABLE:
            # The same, in C (fastsend.Receiver): no Python frame per datagram.
            # The sampler's work too: the kernel's receive stamp, the send, the delay.
            protocol.datagram_received = fastsend.Receiver(
                original, on_rtp, on_rtcp, receiver, _socket_fd(protocol),
                metrics.FORWARDING_LATENCY.observe, LATENCY_SAMPLE_EVERY, _srtp_refused,
                _handler_failed, streams).datagram_received
            protocol._sfu_fast = True
            continue

        sampler = LatencySampler(_socket_fd(protocol))

        def datagram_received(data: bytes, addr: Any, original: Any = original,
                              sampler: LatencySampler = sampler) -> None:
            if data and 127 < data[0] < 192:
                rx = rx_state[1] if rx_state[0] is not None else receiver()
                if rx is not None:
                    try:
                        if len(data) > 1 and 191 < data[1] < 224:
                            plain = rx.unprotect_rtcp(data)
                            if plain is None:
                                _srtp_refused()
                            else:
                                on_rtcp(plain)
                            return
                        plain = rx.unprotect(data)
                        if plain is None:
                            _srtp_refused()
                            return
                        sampler.countdown -= 1
                        if sampler.countdown:
                            on_rtp(plain, 0)
                        else:
                            sampler.forward(plain, on_rtp)
                    except Exception as exc:  # see hook_packets; and _handler_failed
                        _handler_failed(exc)
                    return
            original(data, addr)

        protocol.datagram_received = datagram_received
        protocol._sfu_fast = True


class PacketSender:
    """Synchronous SRTP-protect-and-send on one DTLS transport.

    Returns False (and sends nothing) until DTLS is connected and ICE has a nominated pair,
    or after the connection has gone. The nominated pair's datagram transport and address
    are looked up on every call made here (RTCP at least once a second) and followed when
    ICE nominates another pair or the transport closes.

    With the C extension (``output``, a ``_fastpath.Output``), packets are protected and
    sent by it on a copy of the pair's socket; consumers call ``output.send_rtp`` directly
    for their common header, and come here when it answers 0 (not set up yet). Without
    it, or when it cannot take the pair (no socket to copy, an address it cannot parse),
    pylibsrtp (``FastSrtp``) and the pair's uvloop transport do the same work.
    """

    __slots__ = ("_addr", "_connection", "_dtls", "_pair", "_protect", "_protect_rtcp",
                 "_transport", "output")

    def __init__(self, dtls: RTCDtlsTransport, fast: bool = True) -> None:
        self._dtls = dtls
        self._connection = dtls.transport._connection
        self._protect: Callable[[bytes], bytes] | None = None
        self._protect_rtcp: Callable[[bytes], bytes] | None = None
        self._pair: Any = None
        self._transport: Any = None
        self._addr: Any = None
        self.output: Any = fastsend.Output() if fast and fastsend.AVAILABLE else None

    def _ready(self) -> bool:
        if self._protect is None:
            if self._dtls.state != "connected":
                return False
            session = self._dtls._tx_srtp
            srtp = FastSrtp(session)
            self._protect = srtp.protect
            self._protect_rtcp = srtp.protect_rtcp
            if self.output is not None:
                attach_srtp(self.output, session)
        return True

    def send_rtp(self, data: bytes) -> bool:
        return self._send(data, rtcp=False)

    def send_rtcp(self, data: bytes) -> bool:
        return self._send(data, rtcp=True)

    def _send(self, data: bytes, rtcp: bool) -> bool:
        if (self._protect is None and not self._ready()) or not self._follow_pair():
            return False
        output = self.output
        if output is not None and output.ready:
            return fastsend.sent(output.send_rtcp(data) if rtcp else output.send_packet(data))
        # No extension, or it could not take this pair's socket or address (then consumers'
        # own attempts answer 0 and land here too).
        protect = self._protect_rtcp if rtcp else self._protect
        self._transport.sendto(protect(data), self._addr)  # type: ignore[misc]
        return True

    def _follow_pair(self) -> bool:
        """Is there a pair to send on? Points ``output`` at it when it changed."""
        pair = self._connection._nominated.get(1)
        if pair is not self._pair:
            self._pair = pair
            self._transport = self._addr = None
            if pair is not None:
                self._transport = pair.protocol.transport
                self._addr = pair.remote_addr
            if self.output is not None:
                self.output.clear()
                fd = _socket_fd(pair.protocol) if pair is not None else -1
                if pair is not None and fd >= 0:
                    try:
                        self.output.set_destination(fd, pair.remote_addr[0],
                                                    pair.remote_addr[1])
                    except (OSError, ValueError):
                        log.warning("fast send path unavailable for a connection",
                                    exc_info=True)
        transport = self._transport
        if transport is None or transport.is_closing():
            if self.output is not None and self.output.ready:
                self.output.clear()
            return False
        return True

    def close(self) -> None:
        """The connection is gone: let go of the socket copy."""
        if self.output is not None:
            self.output.clear()
        self._transport = self._addr = None


def attach_srtp(output: Any, session: pylibsrtp.Session) -> None:
    """Let a ``_fastpath.Output`` protect with ``session`` (kept alive by the output)."""
    output.set_srtp(session, _address(session._srtp[0]), _SRTP_PROTECT, _SRTP_PROTECT_RTCP)


def packet_sender(pc: RTCPeerConnection) -> PacketSender:
    return PacketSender(dtls_transports(pc)[0])


def sender_ssrcs(transceiver: Any) -> tuple[int, int]:
    """(media SSRC, RTX SSRC) aiortc chose for a transceiver's sender (and put in SDP)."""
    return transceiver.sender._ssrc, transceiver.sender._rtx_ssrc


def negotiated(transceiver: Any) -> tuple[list[Any], list[Any]]:
    """(codecs, header extensions) negotiated for a transceiver."""
    return list(transceiver._codecs), list(transceiver._headerExtensions)


@dataclass(frozen=True)
class CandidatePolicy:
    """Where media sockets bind and what address candidates announce."""

    addresses: tuple[str, ...]
    port_min: int = 0
    port_max: int = 0
    announced_ip: str | None = None


def host_addresses(bind_host: str, allow_loopback: bool) -> tuple[str, ...]:
    """The IPv4 addresses to gather host candidates on."""
    if bind_host not in ("0.0.0.0", ""):
        addrs = [bind_host]
    else:
        addrs = [ip.ip for a in ifaddr.get_adapters() for ip in a.ips
                 if isinstance(ip.ip, str) and not ip.ip.startswith("127.")]
    if allow_loopback and "127.0.0.1" not in addrs:
        addrs.append("127.0.0.1")
    if not allow_loopback:
        addrs = [a for a in addrs if not a.startswith("127.")]
    return tuple(addrs)


def _bind_udp(address: str, port_min: int, port_max: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if port_min and port_max:
            ports = list(range(port_min, port_max + 1))
            start = random.randrange(len(ports))
            for port in ports[start:] + ports[:start]:
                try:
                    sock.bind((address, port))
                    break
                except OSError:
                    continue
            else:
                raise OSError(f"no free UDP port in {port_min}-{port_max} on {address}")
        else:
            sock.bind((address, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def apply_candidate_policy(pc: RTCPeerConnection, policy: CandidatePolicy) -> None:
    """Make every ICE connection of ``pc`` gather host candidates per ``policy``.

    STUN/TURN (server-reflexive and relayed candidates) still go through aioice, called
    with no host addresses. Call before setLocalDescription.
    """
    for dtls in dtls_transports(pc):
        conn: Any = dtls.transport._connection
        if getattr(conn, "_sfu_policy", None) is not None:
            continue
        conn._sfu_policy = policy
        conn.gather_candidates = _make_gatherer(conn, policy)


def _make_gatherer(conn: Any, policy: CandidatePolicy) -> Callable[[], Awaitable[None]]:
    original_component = conn.get_component_candidates

    async def gather_candidates() -> None:
        if conn._local_candidates_start:
            return
        conn._local_candidates_start = True
        loop = asyncio.get_running_loop()
        for component in sorted(conn._components):
            for address in policy.addresses:
                try:
                    sock = _bind_udp(address, policy.port_min, policy.port_max)
                    transport: Any
                    protocol: Any
                    if mediasocket.usable():  # read by the C extension (mediasocket.py)
                        transport, protocol = mediasocket.open_endpoint(
                            loop, lambda: aioice.ice.StunProtocol(conn), sock, _handler_failed)
                    else:
                        transport, protocol = await loop.create_datagram_endpoint(
                            lambda: aioice.ice.StunProtocol(conn), sock=sock)
                except OSError as exc:
                    log.warning("cannot bind media socket on %s: %s", address, exc)
                    continue
                conn._protocols.append(protocol)
                port = transport.get_extra_info("sockname")[1]
                host = policy.announced_ip or address
                protocol.local_candidate = Candidate(
                    foundation=candidate_foundation("host", "udp", host),
                    component=component, transport="udp",
                    priority=candidate_priority(component, "host"),
                    host=host, port=port, type="host")
                conn._local_candidates.append(protocol.local_candidate)
            # STUN/TURN through aioice, with no host addresses of its own.
            conn._local_candidates += await original_component(component=component, addresses=[])
        conn._local_candidates_end = True

    return gather_candidates


def restrict_codecs(transceiver: Any, keep: Callable[[Any], bool],
                    offered: Sequence[Any] = ()) -> None:
    """Keep only the negotiated codecs ``keep`` accepts (and their RTX), before an answer.

    An SFU forwards exactly one codec per track, so the answer names exactly one: the
    publisher then cannot switch codecs under the subscribers mid-call. RED wrapping that
    codec is kept too when ``offered`` (the offer's codecs for this m-line) has it, under
    the offer's payload type and fmtp: aiortc's own matching would answer with its table's.
    """
    codecs = transceiver._codecs
    chosen = next((c for c in codecs if c.mimeType.lower() not in ("video/rtx", "audio/red")
                   and keep(c)), None)
    if chosen is None:
        return
    kept = [c for c in codecs if c is chosen or (
        c.mimeType.lower() == "video/rtx" and c.parameters.get("apt") == chosen.payloadType)]
    red = red_for(offered, chosen.payloadType)
    if red is not None:
        kept.append(copy.deepcopy(red))
    transceiver._codecs = kept


def drop_incoming(pc: RTCPeerConnection, should_drop: Callable[[bytes], bool]) -> None:
    """Drop received datagrams (before SRTP) for which ``should_drop`` is true.

    For tests and load-test network profiles: a lossy incoming path made real at the
    receiving peer. Wraps the ICE transport's receive coroutine, which
    ``RTCDtlsTransport._recv_next`` awaits for every datagram.
    """
    for dtls in dtls_transports(pc):
        ice: Any = dtls.transport
        if getattr(ice, "_sfu_lossy", False):
            continue
        original = ice._recv

        async def recv(original: Callable[[], Awaitable[bytes]] = original) -> bytes:
            while True:
                data = await original()
                if not should_drop(data):
                    return data

        ice._recv = recv
        ice._sfu_lossy = True


def delay_incoming(pc: RTCPeerConnection, delay: Callable[[bytes], float]) -> None:
    """Hold every received datagram for ``delay(datagram)`` seconds before the peer sees it.

    A delay line, not a sleep per packet: a relay task reads datagrams as they come and
    releases each at its own due time, so throughput is kept and only latency grows
    (what a long-haul or bufferbloated link does). For tests and load-test profiles.
    The relay starts with the first receive (aioice refuses to receive before ICE has
    connected) and hands a receive error on to the reader.
    """
    for dtls in dtls_transports(pc):
        ice: Any = dtls.transport
        if getattr(ice, "_sfu_delayed", False):
            continue
        ice._recv = _DelayLine(ice._recv, delay).recv
        ice._sfu_delayed = True


class _DelayLine:
    def __init__(self, source: Callable[[], Awaitable[bytes]],
                 delay: Callable[[bytes], float]) -> None:
        self._source = source
        self._delay = delay
        self._line: asyncio.Queue[tuple[float, bytes | BaseException]] = asyncio.Queue()
        self._relay: asyncio.Future[None] | None = None

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                data = await self._source()
            except BaseException as exc:  # ConnectionError at the end, or cancellation
                self._line.put_nowait((loop.time(), exc))
                return
            self._line.put_nowait((loop.time() + self._delay(data), data))

    async def recv(self) -> bytes:
        if self._relay is None:
            self._relay = asyncio.ensure_future(self._run())
        due, item = await self._line.get()
        if isinstance(item, BaseException):
            raise item
        wait = due - asyncio.get_running_loop().time()
        if wait > 0:
            await asyncio.sleep(wait)
        return item


def route_rtx_to_receivers(pc: RTCPeerConnection) -> None:
    """Let an aiortc *client* receive retransmissions on every video m-line.

    aiortc registers only the media SSRC of each receiver with its RTP router; RTX
    packets (another SSRC) are then routed by payload type, which works only while a
    single receiver has that payload type. A subscriber with two or more incoming videos
    therefore drops every retransmission. This maps each m-line's RTX SSRC (its FID
    ssrc-group) to the m-line's receiver. Used by the project's aiortc clients (tests,
    load test); the server does not need it.
    """
    remote = pc.remoteDescription
    if remote is None:
        return
    from aiortc.sdp import SessionDescription

    by_mid = {m.rtp.muxId: m for m in SessionDescription.parse(remote.sdp).media}
    for t in pc.getTransceivers():
        media = by_mid.get(t.mid) if t.mid else None
        if media is None:
            continue
        for group in media.ssrc_group:
            if group.semantic == "FID" and len(group.items) == 2:
                router: Any = t.receiver.transport._rtp_router
                router.ssrc_table[int(group.items[1])] = t.receiver
