"""TLS for the HTTP side: one context from ``tls.cert``/``tls.key``, for a node or a front."""

from __future__ import annotations

import ssl

from mediaserver.config import Config


def ssl_context(config: Config) -> ssl.SSLContext | None:
    """The server's TLS context from ``tls.cert``/``tls.key``, or None for plain HTTP."""
    if not config.tls.enabled:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    assert config.tls.cert is not None
    ctx.load_cert_chain(config.tls.cert, config.tls.key)
    return ctx
