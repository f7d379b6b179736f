"""Storage backends behind one interface (DESIGN §6)."""

from pushbase.settings import Settings
from pushbase.storage.base import GroupRule, Store
from pushbase.storage.writer import Work


def open_store(settings: Settings) -> Store:
    """The store named by the settings: PostgreSQL for a database URL, else DuckDB."""
    if settings.database_url:
        from pushbase.storage.postgres import PostgresStore

        return PostgresStore(settings)
    from pushbase.storage.duckdb import DuckDBStore

    return DuckDBStore(settings)


__all__ = ["GroupRule", "Store", "Work", "open_store"]
