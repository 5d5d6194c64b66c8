"""The C ends of the packet path (``_fastpath``), if it was built, and how results read.

``mediaserver/sfu/_fastpath.c`` unprotects what arrives (``Input``) and writes a forwarded
packet's header, SRTP-protects it and sends it in one call (``Output``; see its opening
comment). It is optional at install time: without a C compiler both are None and packets
go through pylibsrtp (``aiortc_adapter.FastSrtp``) and uvloop.

``fanout`` hands one incoming packet to every consumer of its stream: the consumers in the
plain state (the common one) are forwarded in C on the same Python objects, the others by
``Consumer.forward`` (see the fan-out section of the C file). ``receive`` takes a media
packet of a publisher's stream as ``RecvStream.on_rtp`` does, the common case in C and the
rest by that method (the receive section). ``Receiver`` takes an ICE socket's datagrams
in place of the Python closure of ``aiortc_adapter._fast_path`` (the Receiver section);
``Reader`` reads a media socket the server owns (``mediasocket.MediaTransport``).
``History`` keeps a consumer's sent packets for NACK answers in C records the fan-out
writes in place (``consumer.PyHistory`` is the same in Python).
"""

from __future__ import annotations

from typing import Any

from mediaserver import metrics

Output: Any
Input: Any
fanout: Any
receive: Any
configure: Any
Receiver: Any
Reader: Any
History: Any
route: Any
sender_reports: Any
try:
    from mediaserver.sfu._fastpath import (
        ERR_SOCKET,
        History,
        Input,
        Output,
        Reader,
        Receiver,
        configure,
        fanout,
        receive,
        route,
        sender_reports,
    )
except ImportError:  # built without a C compiler
    Output = Input = fanout = receive = configure = Receiver = Reader = History = None
    route = sender_reports = None
    ERR_SOCKET = -2

AVAILABLE = Output is not None


def count_failure(result: int) -> None:
    """Count a negative send result as the drop it is.

    A full socket buffer is a datagram lost on the way, as the kernel's own queue would
    lose it: the subscriber asks for it again (NACK) as for any loss. An SRTP failure (a
    packet too long to protect) is counted and lost likewise.
    """
    metrics.DROP["socket_full" if result == ERR_SOCKET else "srtp_error"].inc()


def sent(result: int) -> bool:
    """A whole-packet send's result as "did it leave" (a failure counted, and lost)."""
    if result > 0:
        return True
    if result == 0:
        return False
    count_failure(result)
    return True
