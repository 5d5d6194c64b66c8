"""RED (RFC 2198) parsing, stripping and rewriting: tables of payloads, malformed ones too."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mediaserver.sfu.red import (
    RedBlock,
    RedOutput,
    build_red,
    parse_red,
    primary_offset,
    primary_view,
    with_block_payload_type,
    wrapped_formats,
)
from mediaserver.sfu.rtp import build_rtp, parse_rtp

OPUS = 111
# Chrome with RED: the previous frame (960 samples earlier) and the current one.
TWO = bytes((0x80 | OPUS, 0x0F, 0x00, 0x03)) + bytes((OPUS,)) + b"old" + b"newframe"

PARSE_CASES = [
    ("primary only (the first packet of a call)", bytes((OPUS,)) + b"abc",
     [RedBlock(OPUS, 0, b"abc")]),
    ("one redundant block", TWO,
     [RedBlock(OPUS, 960, b"old"), RedBlock(OPUS, 0, b"newframe")]),
    ("two redundant blocks, oldest first",
     bytes((0x80 | OPUS, 0x1E, 0x00, 0x01, 0x80 | OPUS, 0x0F, 0x00, 0x02, OPUS)) + b"abbccc",
     [RedBlock(OPUS, 1920, b"a"), RedBlock(OPUS, 960, b"bb"), RedBlock(OPUS, 0, b"ccc")]),
    ("an empty primary block (DTX)", bytes((0x80 | OPUS, 0x0F, 0x00, 0x01, OPUS)) + b"x",
     [RedBlock(OPUS, 960, b"x"), RedBlock(OPUS, 0, b"")]),
    ("the largest offset and length",
     bytes((0x80 | OPUS, 0xFF, 0xFF, 0xFF, OPUS)) + b"r" * 1023 + b"p",
     [RedBlock(OPUS, 16383, b"r" * 1023), RedBlock(OPUS, 0, b"p")]),
    # Malformed: dropped and counted by the caller, never raised.
    ("empty", b"", None),
    ("a redundant header cut short", bytes((0x80 | OPUS, 0x0F, 0x00)), None),
    ("no primary header", bytes((0x80 | OPUS, 0x0F, 0x00, 0x00)), None),
    ("a block longer than the payload", bytes((0x80 | OPUS, 0x0F, 0x00, 0x09, OPUS)) + b"abc",
     None),
    ("only redundant headers (F set throughout)", bytes([0xFF] * 40), None),
]


@pytest.mark.parametrize(("payload", "want"), [c[1:] for c in PARSE_CASES],
                         ids=[c[0] for c in PARSE_CASES])
def test_parse(payload: bytes, want: list[RedBlock] | None) -> None:
    assert parse_red(payload) == want
    if want is None:
        assert primary_offset(payload) is None
        assert with_block_payload_type(payload, OPUS, 96) is None
    else:
        pt, offset = primary_offset(payload) or (None, None)
        assert (pt, payload[offset:]) == (want[-1].payload_type, want[-1].data)
        assert build_red(want) == payload  # byte for byte


def test_build_refuses_what_red_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_red([])
    with pytest.raises(ValueError):
        build_red([RedBlock(OPUS, 960, b"x" * 1024), RedBlock(OPUS, 0, b"p")])
    with pytest.raises(ValueError):
        build_red([RedBlock(OPUS, 16384, b"x"), RedBlock(OPUS, 0, b"p")])


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        (OPUS, 96, [RedBlock(96, 960, b"old"), RedBlock(96, 0, b"newframe")]),
        (100, 96, [RedBlock(OPUS, 960, b"old"), RedBlock(OPUS, 0, b"newframe")]),  # no match
    ],
)
def test_block_payload_types_rewritten(old: int, new: int, want: list[RedBlock]) -> None:
    out = with_block_payload_type(TWO, old, new)
    assert out is not None and parse_red(out) == want


def _packet(payload: bytes, pt: int = 63) -> bytes:
    return build_rtp(marker=True, payload_type=pt, sequence_number=7, timestamp=48000,
                     ssrc=1234, extensions=[(2, b"\x9f")], payload=payload)


def test_primary_view_is_the_opus_packet_without_a_copy() -> None:
    pkt = parse_rtp(_packet(TWO))
    assert pkt is not None
    view = primary_view(pkt)
    assert view is not None and view.data is pkt.data
    assert view.payload_type == OPUS
    assert bytes(view.data[view.payload_offset:view.payload_end]) == b"newframe"
    assert (view.sequence_number, view.timestamp, view.ssrc, view.marker, view.extensions) \
        == (7, 48000, 1234, True, {2: b"\x9f"})
    bad = parse_rtp(_packet(b"\xff\xff"))
    assert bad is not None and primary_view(bad) is None


@pytest.mark.parametrize(
    ("pt", "red", "want_pt", "want_payload"),
    [
        (OPUS, None, OPUS, b"newframe"),  # no RED negotiated: the primary block, as Opus
        (96, None, 96, b"newframe"),  # ...under the subscriber's Opus payload type
        (OPUS, 63, 63, TWO),  # RED as it came
        (96, 100, 100, build_red([RedBlock(96, 960, b"old"), RedBlock(96, 0, b"newframe")])),
    ],
)
def test_red_output(pt: int, red: int | None, want_pt: int, want_payload: bytes) -> None:
    pkt = parse_rtp(_packet(TWO))
    assert pkt is not None
    got = RedOutput(OPUS, 63, pt, red).convert(pkt)
    assert got is not None
    out_pt, out_pkt, payload = got
    sent = payload if payload is not None else \
        out_pkt.data[out_pkt.payload_offset:out_pkt.payload_end]
    assert (out_pt, bytes(sent)) == (want_pt, want_payload)


def test_red_output_drops_malformed() -> None:
    bad = parse_rtp(_packet(b"\x80"))
    assert bad is not None
    assert RedOutput(OPUS, 63, OPUS, None).convert(bad) is None
    assert RedOutput(OPUS, 63, 96, 100).convert(bad) is None
    assert RedOutput(OPUS, 63, OPUS, 63).convert(bad) is not None  # passed on untouched


@pytest.mark.parametrize(
    ("parameters", "want"),
    [
        ({"111/111": None}, [111, 111]),
        ({"111/111/111": None}, [111, 111, 111]),
        ({"111": None}, [111]),
        ({"minptime": "10"}, None),
        ({"111/x": None}, None),
        ({"111/300": None}, None),
        ({}, None),
        ({"111/111": None, "x": None}, None),
    ],
)
def test_wrapped_formats(parameters: dict[str, str | None], want: list[int] | None) -> None:
    assert wrapped_formats(parameters) == want


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=64))
def test_never_raises_on_network_bytes(payload: bytes) -> None:
    blocks = parse_red(payload)
    found = primary_offset(payload)
    assert (blocks is None) == (found is None)
    if blocks is not None and found is not None:
        assert payload[found[1]:] == blocks[-1].data
        assert sum(len(b.data) for b in blocks) <= len(payload)
    with_block_payload_type(payload, OPUS, 96)
