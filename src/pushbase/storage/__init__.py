"""Storage backends behind one interface (DESIGN §6)."""

from pushbase.settings import Settings
from pushbase.storage.base import Store, WriteResult


def open_store(settings: Settings) -> Store:
    """The store named by the settings: DuckDB by default."""
    if settings.database_url:
        from pushbase.errors import PushbaseError

        raise PushbaseError(
            "unsupported_store", "the PostgreSQL store is not available in this build", 500
        )
    from pushbase.storage.duckdb import DuckDBStore

    return DuckDBStore(settings)


__all__ = ["Store", "WriteResult", "open_store"]
