"""A recorded 3-person session exported to MP4: it plays, lasts as long, and stays in sync."""

from __future__ import annotations

import time

import av
import numpy as np

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.cli import main as cli_main
from mediaserver.config import build_config
from mediaserver.recording.keys import new_kek_line
from tests.conftest import start_server, wait_until

FLASH_AT = 5.0  # seconds after the publisher's shared start


class FlashTrack(SyntheticVideoTrack):
    """Dark grey, then white from FLASH_AT (capture time from a start shared with the audio)."""

    async def recv(self):  # type: ignore[override]
        if self.frame_number / self.fps >= FLASH_AT:
            self._base[:] = 255
        return await super().recv()


class BeepTrack(SineAudioTrack):
    """Silence, then a 1 kHz tone from FLASH_AT on the same clock."""

    async def recv(self):  # type: ignore[override]
        self.amplitude = 0.5 if self._pts / 48000 >= FLASH_AT else 0.0
        return await super().recv()


async def test_export_of_a_recorded_session_keeps_flash_and_beep_together(tmp_path):
    keys = new_kek_line("k1")
    rec_dir = tmp_path / "recordings"
    config = build_config({"dev": True, "host": "127.0.0.1", "bind_host": "127.0.0.1",
                           "allow_loopback": True, "recording_dir": str(rec_dir)},
                          {"MEDIASERVER_RECORDING_KEYS": keys}, None)
    async with start_server(config=config) as server:
        clients = [SignalClient(server.ws_url, server.token(
            "export", name, kind="couples", role="host" if name == "therapist" else "participant"))
            for name in ("therapist", "a", "b")]
        host, a, b = clients
        try:
            for c in clients:
                await c.connect()
            await a.publish(SyntheticVideoTrack((200, 0, 0), width=160, height=120, fps=15))
            await b.publish(SyntheticVideoTrack((0, 0, 200), width=160, height=120, fps=15))
            await host.request({"type": "record_start"})
            for c in (a, b):
                await c.request({"type": "consent", "granted": True})
            started = time.monotonic()
            # The flash-and-beep publisher starts once the recording runs; its video and
            # audio share one start so the flash and the beep are captured together.
            flash = FlashTrack((60, 60, 60), width=160, height=120, fps=15)
            beep = BeepTrack(1000.0)
            t0 = time.monotonic()
            flash._start = beep._start = t0
            await host.publish(flash, beep)
            end = FLASH_AT + 2.5
            await wait_until(lambda: flash.frame_number >= end * flash.fps
                             and beep._pts >= end * 48000, timeout=30, interval=0.1,
                             message="flash, beep and a little after, sent")
            await host.request({"type": "record_stop"})
            session_length = time.monotonic() - started
        finally:
            for c in clients:
                await c.close()

    (recording,) = [p for p in rec_dir.iterdir() if p.is_dir()]
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(keys + "\n")
    mp4 = tmp_path / "session.mp4"
    assert cli_main(["recordings", "export", str(recording), str(mp4), "--keys", str(keyfile),
                     "--size", "320x240", "--fps", "30"]) == 0  # 30: finer flash timing

    with av.open(str(mp4)) as container:
        duration = float(container.duration) / av.time_base
        brightness = []
        for frame in container.decode(video=0):
            brightness.append((float(frame.time), frame.to_ndarray(format="gray").mean()))
    with av.open(str(mp4)) as container:
        chunks = []
        for frame in container.decode(audio=0):
            samples = frame.to_ndarray()
            chunks.append((float(frame.time), samples.reshape(samples.shape[0], -1)[0]))
    assert abs(duration - session_length) / session_length < 0.05, (duration, session_length)

    # The flash: the first frame far brighter than the half second before it. A tile that
    # appears (red, blue or grey on black) lifts the mean by about 20; the host's tile
    # turning white by about 65. (A baseline taken once at the start mistook a tile's
    # arrival for the flash in one CI run.)
    flash_time = next(t for i, (t, b) in enumerate(brightness)
                      if i >= 15 and b > np.median([x for _, x in brightness[i - 15:i]]) + 40)
    # The beep: the first 10 ms of audio with tone energy.
    beep_time = None
    for t, samples in chunks:
        rate = 48000
        for i in range(0, len(samples), rate // 100):
            if np.sqrt(np.mean(samples[i:i + rate // 100] ** 2)) > 0.05:
                beep_time = t + i / rate
                break
        if beep_time is not None:
            break
    assert beep_time is not None
    print(f"\nflash at {flash_time:.3f} s, beep at {beep_time:.3f} s in the export: "
          f"{abs(flash_time - beep_time) * 1000:.0f} ms apart")
    assert abs(flash_time - beep_time) < 0.1
