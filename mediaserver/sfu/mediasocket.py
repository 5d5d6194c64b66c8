"""A media socket the server owns, read by the C extension instead of uvloop's UDP transport.

uvloop reads a UDP socket until the kernel answers "nothing left", so a wake that finds one
datagram costs two system calls, and it makes a ``(host, port)`` tuple (a string formatted
from the address) for every datagram before its handler runs. In a call nearly every
datagram arrives alone, and SRTP never needs the address. ``MediaTransport`` registers the
socket with the event loop as a plain reader whose callback is ``fastsend.Reader``: one
``recvmmsg`` per wake (up to 16 datagrams), the address made only for a handler that wants
it (STUN, DTLS), and each datagram's kernel receive stamp (``SO_TIMESTAMP``) handed to the
C ``Receiver`` for the forwarding-latency samples.

To aioice and aiortc it is an ordinary ``asyncio.DatagramTransport``: ``sendto``,
``close``, ``is_closing``, ``get_extra_info("socket" | "sockname")``; the protocol's
``datagram_received`` is looked up for every datagram, so replacing it (as
``aiortc_adapter._fast_path`` does once DTLS is up) takes effect at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from typing import Any

from mediaserver import metrics
from mediaserver.sfu import fastsend


class MediaTransport(asyncio.DatagramTransport):
    def __init__(self, loop: asyncio.AbstractEventLoop, sock: socket.socket,
                 protocol: asyncio.DatagramProtocol,
                 failed: Callable[[BaseException], None]) -> None:
        super().__init__(extra={"socket": sock, "sockname": sock.getsockname()})
        self._loop = loop
        self._sock = sock
        self._protocol = protocol
        self._fd = sock.fileno()
        self._closing = False
        sock.setblocking(False)
        self._reader = fastsend.Reader(self._fd, protocol, failed)
        loop.add_reader(self._fd, self._reader.readable)

    @property
    def datagrams(self) -> int:
        """Datagrams read so far."""
        return int(self._reader.datagrams)

    @property
    def reads(self) -> int:
        """recvmmsg calls that returned datagrams."""
        return int(self._reader.reads)

    def sendto(self, data: Any, addr: Any = None) -> None:
        if self._closing:
            return
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            # A full send buffer loses the datagram, as the network would: STUN and DTLS
            # retransmit, RTCP is sent again within a second.
            metrics.DROP["socket_full"].inc()
        except OSError as exc:
            self._protocol.error_received(exc)

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._reader.forget()
        self._loop.remove_reader(self._fd)
        # Closed now, not in the callback: a loop that stops first must not leave it open
        # (the C Output sends on its own duplicate of the descriptor).
        self._sock.close()
        self._loop.call_soon(self._protocol.connection_lost, None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return 0


def usable() -> bool:
    """Whether media sockets can be read this way (the C extension was built)."""
    return fastsend.Reader is not None


def open_endpoint(loop: asyncio.AbstractEventLoop,
                  protocol_factory: Callable[[], asyncio.DatagramProtocol],
                  sock: socket.socket, failed: Callable[[BaseException], None]
                  ) -> tuple[MediaTransport, asyncio.DatagramProtocol]:
    """``loop.create_datagram_endpoint(protocol_factory, sock=sock)``, with a
    MediaTransport: the protocol is connected before this returns."""
    protocol = protocol_factory()
    try:
        transport = MediaTransport(loop, sock, protocol, failed)
    except BaseException:
        sock.close()
        raise
    protocol.connection_made(transport)
    return transport, protocol
