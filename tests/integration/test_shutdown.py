"""The real server process: HTTPS/WSS from a configured certificate, DTLS-SRTP media, and a
graceful SIGTERM (clients told, recordings sealed and decryptable, exit within the timeout).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import signal
import ssl
import sys
import time
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.servers import free_port
from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from mediaserver.cli import main as cli_main
from mediaserver.config import DEV_API_KEY, DEV_API_SECRET
from mediaserver.recording.keys import new_kek_line
from mediaserver.tokens import create_token
from tests.conftest import wait_until

SHUTDOWN_TIMEOUT = 5


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


def _token(identity: str, **kw: object) -> str:
    return create_token(DEV_API_KEY, DEV_API_SECRET, room="tls-room", identity=identity,
                        kind="one_to_one", now=time.time(), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("workers", ["1", "2"])  # one process; a front and two workers
async def test_wss_dtls_srtp_and_a_graceful_sigterm(tmp_path, workers):
    cert, key = _self_signed(tmp_path)
    rec_dir = tmp_path / "recordings"
    keyfile = tmp_path / "keys.txt"
    keyfile.write_text(new_kek_line("k1") + "\n")
    keyfile.chmod(0o600)
    port = free_port()
    server_bin = Path(sys.executable).parent / "mediaserver"
    proc = await asyncio.create_subprocess_exec(
        str(server_bin), "serve", "--dev", "--host", "127.0.0.1", "--port", str(port),
        "--bind-host", "127.0.0.1", "--tls-cert", str(cert), "--tls-key", str(key),
        "--recording-dir", str(rec_dir), "--shutdown-timeout", str(SHUTDOWN_TIMEOUT),
        "--workers", workers, env={**os.environ, "MEDIASERVER_RECORDING_KEYS": str(keyfile)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    ctx = ssl.create_default_context(cafile=str(cert))
    clients: list[SignalClient] = []
    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"https://127.0.0.1:{port}/healthz", ssl=ctx) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await wait_until(up, timeout=30, interval=0.2, message="server up over HTTPS")
            with pytest.raises(aiohttp.ClientError):  # no plain HTTP on the TLS port
                async with http.get(f"http://127.0.0.1:{port}/healthz") as r:
                    await r.read()
            with pytest.raises(aiohttp.ClientConnectorCertificateError):  # an untrusted CA
                async with http.get(f"https://127.0.0.1:{port}/healthz") as r:
                    await r.read()

        url = f"wss://127.0.0.1:{port}/v1/signal"
        host = SignalClient(url, _token("therapist", role="host"), ssl=ctx)
        client = SignalClient(url, _token("client"), ssl=ctx)
        clients = [host, client]
        for c in clients:
            assert (await c.connect())["type"] == "joined"
        answer = await host.publish(SyntheticVideoTrack((0, 80, 160), width=320, height=240,
                                                        fps=15), SineAudioTrack(500))
        await client.publish(SineAudioTrack(700))
        # Media is DTLS-SRTP, whatever the signalling transport: the answer says so.
        assert "a=fingerprint:sha-256" in answer["sdp"]
        assert all(line.split()[2] == "UDP/TLS/RTP/SAVPF"
                   for line in answer["sdp"].splitlines() if line.startswith("m="))
        await host.request({"type": "record_start"})
        await client.wait_event(lambda e: e["type"] == "consent_request")
        await client.request({"type": "consent", "granted": True})
        await wait_until(lambda: any(e.get("state") == "recording" for e in host.events),
                         message="recording")
        frames = sum(t.frames for t in client.received.values() if t.kind == "video")
        await wait_until(lambda: sum(t.frames for t in client.received.values()
                                     if t.kind == "video") >= frames + 30,
                         timeout=30, message="two seconds of recorded media")

        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for c in clients:  # told before the socket closes
            removed = await c.wait_event(lambda e: e["type"] == "removed", timeout=10)
            assert removed["reason"] == "server_shutdown"
        code = await asyncio.wait_for(proc.wait(), SHUTDOWN_TIMEOUT + 5)
        took = time.monotonic() - started
        assert code == 0
        assert took < SHUTDOWN_TIMEOUT + 1, f"exit took {took:.1f}s"
        for c in clients:
            await wait_until(lambda c=c: c.ws is not None and c.ws.closed, message="closed")
    finally:
        for c in clients:
            await c.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    output = (await proc.stdout.read()).decode() if proc.stdout else ""
    assert "shutting down" in output and "https://127.0.0.1" in output, output

    # Sealed: the manifest is written and every file authenticates and decrypts fully.
    recordings = [d for d in rec_dir.iterdir() if d.is_dir()]
    assert len(recordings) == 1 and (recordings[0] / "manifest.json.enc").exists()
    assert cli_main(["recordings", "verify", str(rec_dir), "--keys", str(keyfile)]) == 0
    out = tmp_path / "plain"
    assert cli_main(["recordings", "decrypt", str(recordings[0]), str(out),
                     "--keys", str(keyfile)]) == 0
    assert len(list(out.glob("*.webm"))) == 3
