"""The native HTTP API (DESIGN §4)."""

from pushbase.api.app import create_app

__all__ = ["create_app"]
