"""Selective-forwarding media server for online therapy sessions."""
