"""Adapters for Nova: its notification payloads and its compute API listings."""
