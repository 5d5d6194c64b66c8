"""Real headless Chromium (Debian's package) driven by Playwright against a real server.

Chromium runs with its fake camera (a moving test pattern) and fake microphone (a beep);
each page gets its own browser context, so its own sessionStorage and its own devices.
Playwright launches Chromium with ``--no-sandbox`` by default (``chromium_sandbox=False``),
and it has to: CI runs as root, and Chromium as root without it stops at once with "Running as
root without --no-sandbox is not supported" (crbug.com/638180); with ``chromium_sandbox=True``
Playwright reports "Chromium sandboxing failed!". The pages only ever load this server's own
page. (Debian's /usr/bin/chromium wrapper also prints "[: ...: unexpected operator" on start:
a harmless bug in its shell script.)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, WebSocketRoute, async_playwright

from tests.conftest import RunningServer, wait_until

CHROMIUM = os.environ.get("MEDIASERVER_CHROMIUM", "/usr/bin/chromium")
ARGS = [
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
    # Remote audio plays without a click on the page, as after a real user's "Join".
    "--autoplay-policy=no-user-gesture-required",
    # ICE only on the default-route interface: other work on a shared machine creates and
    # deletes network interfaces (veths of network-namespace tests), and a call whose
    # candidate pair sits on one of them dies with it.
    "--webrtc-ip-handling-policy=default_public_interface_only",
]
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"  # screenshots; ignored by git
SMALL_VIDEO = "320x240@15"  # keeps several encoders and decoders cheap on a shared machine

# Per remote track: what the browser's getStats says it received.
REMOTE_STATS_JS = """async () => {
  const out = {};
  for (const r of window.sessionPage.session.remoteTracks.values()) {
    const report = await r.receiver.getStats();
    for (const s of report.values()) {
      if (s.type !== "inbound-rtp") continue;
      out[r.track_id] = {kind: s.kind, participant_id: r.participant_id,
        framesDecoded: s.framesDecoded ?? 0, packetsReceived: s.packetsReceived ?? 0,
        totalAudioEnergy: s.totalAudioEnergy ?? 0, frameWidth: s.frameWidth ?? 0,
        frameHeight: s.frameHeight ?? 0};
    }
  }
  return out;
}"""


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not shutil.which(CHROMIUM):
        pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package (.ci/run does)")
    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield b
        finally:
            await b.close()


class SignalRecorder:
    """Routes a page's signalling WebSocket through Playwright and keeps every message."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []  # by the page
        self.received: list[dict[str, Any]] = []  # by the page
        self.page_sides: list[WebSocketRoute] = []
        self.server_sides: list[WebSocketRoute] = []

    async def install(self, page: Page) -> None:
        await page.route_web_socket("**/v1/signal", self._route)

    def inject(self, msg: dict[str, Any]) -> None:
        """Send the page a message as if the server had (on its latest socket)."""
        self.page_sides[-1].send(json.dumps(msg))

    def _route(self, ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()
        self.page_sides.append(ws)
        self.server_sides.append(server)

        def to_server(message: str | bytes) -> None:
            self.sent.append(json.loads(message))
            server.send(message)

        def to_page(message: str | bytes) -> None:
            self.received.append(json.loads(message))
            ws.send(message)

        ws.on_message(to_server)
        server.on_message(to_page)


@dataclass
class SessionPage:
    """One person's browser tab on the session page."""

    page: Page
    name: str
    requests: list[str]  # every URL the page asked for (the token must be in none)

    async def js(self, expression: str, arg: Any = None) -> Any:
        return await self.page.evaluate(expression, arg)

    async def participant_id(self) -> str:
        return await self.js("window.sessionPage.session.participantId")

    async def remote_stats(self) -> dict[str, dict[str, Any]]:
        return await self.js(REMOTE_STATS_JS)

    async def decoded_from(self, participant_id: str) -> int:
        stats = await self.remote_stats()
        return sum(s["framesDecoded"] for s in stats.values()
                   if s["participant_id"] == participant_id and s["kind"] == "video")

    async def audio_from(self, participant_id: str) -> tuple[int, float]:
        stats = await self.remote_stats()
        audio = [s for s in stats.values()
                 if s["participant_id"] == participant_id and s["kind"] == "audio"]
        return (sum(s["packetsReceived"] for s in audio),
                sum(s["totalAudioEnergy"] for s in audio))


async def open_session(browser: Browser, server: RunningServer, token: str, name: str, *,
                       join: bool = True, video: str = SMALL_VIDEO, extra: str = "",
                       viewport: dict[str, int] | None = None,
                       before: Callable[[Page], Awaitable[Any]] | None = None) -> SessionPage:
    """Open the session page with ``token`` in the fragment, pass the pre-call check, join."""
    context = await browser.new_context(viewport=viewport or {"width": 800, "height": 600})
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda m: print(f"[{name}] {m.type}: {m.text}"))
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    if before is not None:
        await before(page)
    await page.goto(f"{server.url}/web/#token={token}&video={video}{extra}")
    sp = SessionPage(page, name, requests)
    if join:
        await click_join(sp)
    assert not errors, errors
    return sp


async def click_join(sp: SessionPage) -> None:
    join = sp.page.get_by_role("button", name="Join the session")
    await sp.page.locator("#join:enabled").wait_for(timeout=30000)
    await join.click()
    # Joined, and (unless waiting or not allowed to) publishing camera and microphone.
    await wait_until(lambda: sp.js("(() => { const s = window.sessionPage.session; "
                                   "return s.state === 'waiting' || s.state === 'active' && "
                                   "(!s.can('publish') || s.localTracks.size >= 2); })()"),
                     timeout=20, message=f"{sp.name} joined")


DIAGNOSE_JS = """async () => {
  const s = window.sessionPage.session;
  const out = {state: s.state, pub: s.publisher?.connectionState ?? null,
               sub: s.subscriber?.connectionState ?? null, remote: [], local: []};
  for (const r of s.remoteTracks.values()) {
    for (const x of (await r.receiver.getStats()).values())
      if (x.type === "inbound-rtp") out.remote.push({kind: x.kind, from: r.participant_id,
        packets: x.packetsReceived, lost: x.packetsLost, frames: x.framesDecoded,
        keyframes: x.keyFramesDecoded, plis: x.pliCount, nacks: x.nackCount});
  }
  for (const t of s.localTracks.values()) {
    for (const x of (await t.transceiver.sender.getStats()).values())
      if (x.type === "outbound-rtp") out.local.push({kind: x.kind, rid: x.rid ?? null,
        packets: x.packetsSent, frames: x.framesEncoded, keyframes: x.keyFramesEncoded,
        plis: x.pliCount, limit: x.qualityLimitationReason});
  }
  return out;
}"""


async def frames_grow(viewer: SessionPage, subject_id: str, at_least: int = 10,
                      timeout: float = 40) -> None:
    """``viewer`` decodes ``subject_id``'s video: at least N frames, then more."""
    try:
        first = await wait_until(lambda: _ge(viewer.decoded_from(subject_id), at_least),
                                 timeout=timeout, interval=0.25,
                                 message=f"{viewer.name} decodes {at_least} frames of "
                                 f"{subject_id}")
        await wait_until(lambda: _ge(viewer.decoded_from(subject_id), first + 5),
                         timeout=timeout, interval=0.25,
                         message=f"{viewer.name} keeps decoding {subject_id}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; {viewer.name}: {await viewer.js(DIAGNOSE_JS)}") from None


async def _ge(value_coro: Any, n: int) -> int:
    value = await value_coro
    return value if value >= n else 0


async def hears(viewer: SessionPage, subject_id: str, timeout: float = 30) -> None:
    """``viewer`` receives ``subject_id``'s audio with sound in it (the fake mic beeps)."""
    async def energy() -> bool:
        packets, energy = await viewer.audio_from(subject_id)
        return packets > 50 and energy > 0
    await wait_until(energy, timeout=timeout, interval=0.25,
                     message=f"{viewer.name} hears {subject_id}")
