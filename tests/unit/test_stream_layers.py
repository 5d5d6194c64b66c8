"""What the allocator is told about one simulcast layer (adaptation.stream_layers)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from mediaserver.sfu.adaptation import stream_layers
from mediaserver.sfu.allocator import Layer


def stream(rates: tuple[int, ...], fps: tuple[float, ...], wire_bitrate: int,
           stream_fps: float = 15.0) -> Any:
    return SimpleNamespace(spatial=1, width=320, height=240, fps=stream_fps,
                           wire_bitrate=wire_bitrate,
                           temporal=SimpleNamespace(rates=rates, fps=fps))


@pytest.mark.parametrize(
    ("s", "bitrate", "want"),
    [
        # No temporal layers: one rung, the whole stream.
        (stream((), (), 250_000), 250_000, [Layer(1, 0, 250_000, 320, 240, 15.0)]),
        # Only TL0 seen: still one rung, named after its layer.
        (stream((250_000,), (15.0,), 250_000), 250_000, [Layer(1, 0, 250_000, 320, 240, 15.0)]),
        # L1T3: a rung per temporal layer; the top one is the stream as measured.
        (stream((120_000, 180_000, 251_000), (3.75, 7.5, 15.0), 250_000), 250_000,
         [Layer(1, 0, 120_000, 320, 240, 3.75), Layer(1, 1, 180_000, 320, 240, 7.5),
          Layer(1, 2, 250_000, 320, 240, 15.0)]),
        # Stopped upstream (its last bitrate stands in): the temporal rates are stale.
        (stream((120_000, 180_000, 250_000), (3.75, 7.5, 15.0), 0, 0.0), 260_000,
         [Layer(1, 2, 260_000, 320, 240, None)]),
    ],
)
def test_stream_layers(s: Any, bitrate: int, want: list[Layer]) -> None:
    assert stream_layers(s, bitrate) == want
