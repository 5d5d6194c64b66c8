"""kill -9 of the server mid-recording: what was written still decrypts and plays."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import aiohttp
import av

from bench.forwarding import NoisyVideoTrack
from bench.servers import free_port
from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack
from mediaserver.cli import main as cli_main
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET
from mediaserver.recording.keys import new_kek_line
from mediaserver.tokens import create_token
from tests.conftest import wait_until


async def test_kill_9_mid_recording_leaves_a_playable_prefix(tmp_path):
    keys = new_kek_line("k1")
    rec_dir = tmp_path / "recordings"
    port = free_port()
    env = dict(os.environ, MEDIASERVER_RECORDING_KEYS=keys)
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mediaserver", "serve", "--dev", "--host", "127.0.0.1",
        "--port", str(port), "--bind-host", "127.0.0.1", "--recording-dir", str(rec_dir),
        "--workers", "1",  # the killed process is the one writing the recording
        env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    url = f"ws://127.0.0.1:{port}/v1/signal"

    def token(identity: str, role: str = "participant") -> str:
        return create_token(DEV_API_KEY, DEV_API_SECRET, room="crash", identity=identity,
                            role=role, kind="one_to_one", now=time.time())

    host = SignalClient(url, token("therapist", "host"))
    client = SignalClient(url, token("client"))
    try:
        async def ready() -> bool:
            try:
                async with aiohttp.ClientSession() as http, \
                        http.get(f"http://127.0.0.1:{port}/readyz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await wait_until(ready, timeout=30, message="server ready")
        await host.connect()
        await client.connect()
        # A noisy picture: enough bitrate to fill 64 KiB encryption segments in seconds.
        await host.publish(NoisyVideoTrack((200, 40, 40), width=320, height=240, fps=15),
                           SineAudioTrack(440))
        await client.publish(SineAudioTrack(660))
        await host.request({"type": "record_start"})
        await client.wait_event(lambda e: e["type"] == "consent_request")
        await client.request({"type": "consent", "granted": True})

        def complete_segments_on_disk() -> bool:
            # Segments are fixed-size (64 KiB video, 8 KiB audio): a file past 20 KB has at
            # least one whole segment, which the room's task flushes to disk every second.
            sizes = [f.stat().st_size for f in rec_dir.glob("*/*.webm.enc")]
            return len(sizes) == 3 and min(sizes) > 20_000

        await wait_until(complete_segments_on_disk, timeout=60,
                         message="whole segments of every track on disk")
        server.send_signal(signal.SIGKILL)
        await asyncio.wait_for(server.wait(), 10)
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        await host.close()
        await client.close()

    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(keys + "\n")
    (recording,) = [p for p in rec_dir.iterdir() if p.is_dir()]
    assert not (recording / "manifest.json.enc").exists()  # no clean close happened
    # verify reports the damage (exit 1: truncated files, no manifest) instead of passing.
    assert cli_main(["recordings", "verify", str(rec_dir), "--keys", str(keyfile)]) == 1
    out = tmp_path / "plain"
    cli_main(["recordings", "decrypt", str(recording), str(out), "--keys", str(keyfile)])
    decoded = {"video": 0, "audio": 0}
    for f in out.glob("*.webm"):
        with av.open(str(f)) as container:
            kind = "video" if container.streams.video else "audio"
            decoded[kind] += sum(1 for _ in container.decode(**{kind: 0}))
    assert decoded["video"] >= 10 and decoded["audio"] >= 50, decoded  # the prefix plays
