"""The web console at `/console`: server-rendered pages, data fetched from /v1 in the browser."""

from pushbase.console.router import router

__all__ = ["router"]
