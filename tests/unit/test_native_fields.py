"""Integer fields held in C (sfu/native.py): they read and write as ints, refuse anything
else, leave the classes' Python code unchanged, and the C packet path accepts them only
where it reads them as integers."""

from __future__ import annotations

import gc
import weakref

import pytest

from mediaserver import metrics
from mediaserver.quality.rtpstats import ReceiveStats, SendStats
from mediaserver.sfu import _fastpath, fastsend, native
from mediaserver.sfu.consumer import NEVER, Consumer, DownstreamContext, OutputRewriter
from mediaserver.sfu.producer import FAST_CLASSES, FAST_RULES, CodecInfo, Producer, RecvStream
from mediaserver.sfu.seqnum import Unwrapper

if not fastsend.AVAILABLE:  # pragma: no cover - .ci/run installs a compiler
    pytest.fail("the _fastpath extension was not built (no C compiler at install?)",
                pytrace=False)


def test_native_fields_read_and_write_as_ints() -> None:
    base, left = native.int_fields("Pair", "a", "b")
    assert left == ()

    class Pair(base):  # type: ignore[misc,valid-type]
        __slots__ = ("note",)

    p = Pair()
    assert (p.a, p.b) == (0, 0)  # 0 until set
    p.a, p.b, p.note = (1 << 62), -5, "x"
    p.a += 1
    assert (p.a, p.b, p.note) == ((1 << 62) + 1, -5, "x")
    p.b = True  # an int, as Python's own bool is
    assert p.b == 1
    with pytest.raises(TypeError):
        p.a = 1.5
    with pytest.raises(TypeError):
        p.a = None
    with pytest.raises(OverflowError):
        p.a = 1 << 64
    # (A refused value leaves the field -1: CPython's member setter stores before it checks.
    # The packet path's fields only ever take ints well inside 64 bits.)
    assert not hasattr(p, "__dict__")


def test_without_the_extension_the_fields_are_plain_slots(monkeypatch) -> None:
    monkeypatch.setattr(native, "_native_base", None)
    assert native.int_fields("Pair", "a", "b") == (object, ("a", "b"))


@pytest.mark.parametrize("bad", [("a", 1), ()])
def test_native_base_refuses_bad_field_lists(bad) -> None:
    with pytest.raises((TypeError, ValueError)):
        _fastpath.native_base("Bad", bad)


def test_the_packet_path_classes_hold_their_counters_in_c() -> None:
    for cls, fields in [
        (OutputRewriter, ("_highest_in", "_last_out_seq", "_seq_offset", "_ts_offset")),
        (Unwrapper, ("_last", "_mask")),
        (SendStats, ("packets_sent", "octets_sent", "frames_sent")),
        (ReceiveStats, ("packets_received", "highest_seq", "clock_rate")),
        (metrics.RtpTally, ("packets", "bytes")),
        (RecvStream, ("frames", "_window_bytes")),
    ]:
        assert cls.__mro__[1].__module__ == "mediaserver.sfu._fastpath", cls
        for name in fields:
            assert name not in getattr(cls, "__slots__", ()), (cls, name)


def test_objects_with_native_fields_are_collected() -> None:
    """A subclass's object slots make it a garbage-collected type: a cycle through two such
    objects is freed."""
    base, _ = native.int_fields("Counted", "n")

    class Holder(base):  # type: ignore[misc,valid-type]
        __slots__ = ("__weakref__", "other")

    a, b = Holder(), Holder()
    a.other, b.other, a.n = b, a, 7
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_a_consumer_starts_with_zeroed_counters_and_an_empty_history() -> None:
    producer = Producer(track_id="t", participant_id="p", kind="video",
                        codec=CodecInfo("video/VP8", 90000, 96, 97), ssrc=1234, rtx_ssrc=None,
                        mid="0", source="camera", send_rtcp=lambda b: True, rtcp_ssrc=1)
    consumer = Consumer(producer=producer, subscriber_id="s", context=DownstreamContext(
        lambda data: True), ssrc=99, rtx_ssrc=98, payload_type=96, rtx_payload_type=97,
        audio_level_id=None, abs_send_time_id=3, transport_cc_id=None, mid="0")
    assert consumer.stats.packets_sent == consumer.stats.octets_sent == 0
    assert consumer.rewriter._highest_in == -1  # set by its __init__, not the zero default
    assert consumer._history.get(0) is None and consumer._history.resent_at(0) == NEVER


def test_configure_refuses_a_native_field_read_as_an_object() -> None:
    """A field the C code reads as an object (here a consumer's stream) must stay a slot."""
    base, _ = native.int_fields("StreamAsInt", "stream")

    class BadConsumer(base):  # type: ignore[misc,valid-type]
        __slots__ = tuple(n for n in Consumer.__slots__ if n != "stream")

    with pytest.raises(TypeError, match="stream"):
        _fastpath.configure(FAST_CLASSES | {"Consumer": BadConsumer}, *FAST_RULES)
