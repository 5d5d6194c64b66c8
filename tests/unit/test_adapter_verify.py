"""The aiortc adapter refuses to run when a private name it relies on is gone."""

from __future__ import annotations

import pytest
from aiortc.rtcdtlstransport import RTCDtlsTransport

from mediaserver.sfu import aiortc_adapter


async def test_verify_passes_on_the_pinned_aiortc():
    aiortc_adapter.verify()


async def test_verify_names_a_missing_class_attribute(monkeypatch):
    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtp_data")
    with pytest.raises(aiortc_adapter.AdapterError, match=r"RTCDtlsTransport\._handle_rtp_data"):
        aiortc_adapter.verify()


async def test_verify_names_a_renamed_instance_attribute(monkeypatch):
    monkeypatch.setitem(aiortc_adapter._INSTANCE_ATTRS, "sender", ["_ssrc", "_renamed_ssrc"])
    with pytest.raises(aiortc_adapter.AdapterError, match=r"_renamed_ssrc is missing"):
        aiortc_adapter.verify()


async def test_verify_rejects_another_aiortc_version(monkeypatch):
    monkeypatch.setattr(aiortc_adapter.aiortc, "__version__", "9.9.9")
    with pytest.raises(aiortc_adapter.AdapterError, match=r"aiortc 9\.9\.9 installed"):
        aiortc_adapter.verify()


async def test_server_refuses_to_start_with_a_clear_message(monkeypatch):
    from mediaserver.signaling.app import create_app
    from tests.conftest import test_config

    monkeypatch.delattr(RTCDtlsTransport, "_handle_rtcp_data")
    with pytest.raises(aiortc_adapter.AdapterError, match="aiortc adapter check failed"):
        create_app(test_config())
