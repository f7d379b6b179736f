"""SQL text helpers shared by the backends: identifiers are always quoted here."""

from __future__ import annotations

from pushbase.schema import Dataset


def quote(identifier: str) -> str:
    """A quoted SQL identifier; the only way a user-given name reaches SQL text."""
    return '"' + identifier.replace('"', '""') + '"'


def table_name(dataset_id: str) -> str:
    return quote(f"ds_{dataset_id}")


def key_join(dataset: Dataset, positions: dict[str, int], left: str, right: str) -> str:
    """`left."key" = right.cN AND ...` for the staged (positional) key columns."""
    return " AND ".join(
        f"{left}.{quote(name)} = {right}.c{positions[name]}" for name in dataset.unique_key
    )
