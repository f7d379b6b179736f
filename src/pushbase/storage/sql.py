"""SQL text helpers shared by the backends: identifiers are always quoted here."""

from __future__ import annotations


def quote(identifier: str) -> str:
    """A quoted SQL identifier; the only way a user-given name reaches SQL text."""
    return '"' + identifier.replace('"', '""') + '"'


def table_name(dataset_id: str) -> str:
    return quote(f"ds_{dataset_id}")
