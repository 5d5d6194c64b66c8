"""The signalling outbox with a fake socket: order, close after flush, the cut-off rules."""

from __future__ import annotations

import asyncio
from typing import Any

from mediaserver import metrics
from mediaserver.signaling.outbox import Outbox


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.closed_with: tuple[int, bytes] | None = None
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()  # a write has started

    @property
    def closed(self) -> bool:
        return self.closed_with is not None

    async def send_json(self, msg: Any) -> None:
        self.writing.set()
        await self.gate.wait()  # a cleared gate is a socket whose buffers are full
        self.sent.append(msg)

    async def close(self, code: int = 1000, message: bytes = b"") -> None:
        self.closed_with = (code, message)


def _outbox(ws: FakeSocket, limit: int = 4, write_timeout: float = 10.0
            ) -> tuple[Outbox, list[int]]:
    aborted: list[int] = []
    return Outbox(ws, limit, lambda: aborted.append(1), write_timeout), aborted  # type: ignore[arg-type]


async def test_messages_go_out_in_order_and_close_comes_after_them() -> None:
    ws = FakeSocket()
    box, aborted = _outbox(ws)
    for i in range(3):
        assert box.put({"n": i})
    box.close(1000, b"removed")
    assert not box.put({"n": 99})  # nothing after the close
    await box.aclose(1.0)
    assert ws.sent == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert ws.closed_with == (1000, b"removed") and aborted == []


async def test_a_burst_before_the_writer_runs_is_not_a_slow_client() -> None:
    ws = FakeSocket()
    box, aborted = _outbox(ws, limit=4)
    assert all(box.put({"n": i}) for i in range(20))  # the writer has not run yet
    await box.aclose(1.0)
    assert len(ws.sent) == 20 and aborted == []


async def test_a_stuck_socket_is_cut_off_when_the_queue_is_full() -> None:
    ws = FakeSocket()
    ws.gate.clear()
    box, aborted = _outbox(ws, limit=4)
    before = metrics.LIMIT["slow_consumer"]._value.get()
    box.put({"n": 0})
    await asyncio.wait_for(ws.writing.wait(), 5)  # the writer takes it and gets stuck
    results = [box.put({"n": i}) for i in range(1, 7)]
    assert results == [True] * 4 + [False, False]
    assert box.overflowed and aborted == [1]
    assert metrics.LIMIT["slow_consumer"]._value.get() == before + 1
    await box.aclose(1.0)


async def test_one_write_stuck_longer_than_the_timeout_cuts_the_socket() -> None:
    ws = FakeSocket()
    ws.gate.clear()
    box, aborted = _outbox(ws, write_timeout=0.05)
    box.put({"n": 0})
    await asyncio.wait_for(box._task, 5)
    assert aborted == [1] and box.closing


async def test_aclose_gives_up_after_its_timeout() -> None:
    ws = FakeSocket()
    ws.gate.clear()
    box, aborted = _outbox(ws)
    box.put({"n": 0})
    await box.aclose(0.05)
    assert aborted == [1] and ws.sent == []
