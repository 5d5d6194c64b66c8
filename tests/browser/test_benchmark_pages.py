"""Time from loading the session page to the first decoded remote video frame (median of 5).

Run: .venv/bin/python -m pytest -q -s tests/browser/test_benchmark_pages.py
"""

from __future__ import annotations

import statistics

from loadtest.client import SignalClient
from loadtest.media import SineAudioTrack, SyntheticVideoTrack
from tests.browser.conftest import open_session
from tests.conftest import wait_until

RUNS = 5
TIMES_JS = """(() => { const p = window.sessionPage;
  return {join: p.joinClickedAt, frame: p.firstRemoteFrameAt}; })()"""


async def test_page_load_to_first_remote_frame(server, browser):
    # Someone is already in the session and publishing (an aiortc peer: cheap on the CPU).
    peer = SignalClient(server.ws_url, server.token("b-bench", "peer", kind="group"))
    runs = []
    try:
        assert (await peer.connect())["type"] == "joined"
        await peer.publish(SyntheticVideoTrack((200, 60, 60), width=320, height=240, fps=15),
                           SineAudioTrack(440))
        for i in range(RUNS):
            sp = await open_session(browser, server,
                                    server.token("b-bench", f"viewer{i}", kind="group"),
                                    f"viewer{i}")
            times = await wait_until(lambda sp=sp: sp.js(
                f"window.sessionPage.firstRemoteFrameAt !== null && {TIMES_JS}"),
                timeout=30, message="the first remote frame")
            runs.append(times)
            await sp.page.get_by_role("button", name="Leave").click()
            await wait_until(lambda sp=sp: sp.js("window.sessionPage.session.state === 'closed'"),
                             message="left")
            await sp.page.context.close()
    finally:
        await peer.close()

    def median(key: str, since: str | None = None) -> float:
        return statistics.median(r[key] - (r[since] if since else 0) for r in runs)

    load_to_frame = median("frame")
    each = ", ".join(f"{r['frame']:.0f}" for r in runs)
    print(f"\nsession page, {RUNS} loads (ms, median): load -> Join clicked "
          f"{median('join'):.0f}; "
          f"Join -> first remote frame {median('frame', 'join'):.0f}; "
          f"load -> first remote frame {load_to_frame:.0f} "
          f"(each: {each})")
    assert all(0 < r["join"] <= r["frame"] for r in runs), runs
    assert load_to_frame < 15000
