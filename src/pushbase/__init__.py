"""pushbase: push data into managed, typed datasets over HTTP."""

__version__ = "0.1.0"
