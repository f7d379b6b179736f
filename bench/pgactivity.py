"""What the PostgreSQL server did during a phase: WAL written, checkpoints counted.

On the PostgreSQL store an acknowledgement waits for its row's commit, and a commit waits
for the server to flush all the WAL written before it. A phase's writes produce WAL at up
to a few hundred MB/s; past `max_wal_size` the server checkpoints. A commit that meets a
large flush or a checkpoint's end waits 50-200 ms, with or without pushbase (a plain
one-row INSERT next to a bulk COPY shows the same). Printed with each PostgreSQL phase,
these server-wide counters say how much of that a run met.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

# PostgreSQL 17 moved the checkpoint counters to pg_stat_checkpointer.
CHECKPOINTS = (
    "SELECT num_timed + num_requested FROM pg_stat_checkpointer",
    "SELECT checkpoints_timed + checkpoints_req FROM pg_stat_bgwriter",
)


@dataclass(frozen=True)
class Activity:
    wal_position: int  # bytes of WAL ever written (the current LSN)
    checkpoints: int

    def since(self, before: Activity) -> str:
        wal = (self.wal_position - before.wal_position) / 1e6
        checkpoints = self.checkpoints - before.checkpoints
        return f"{wal:,.0f} MB of WAL, {checkpoints} checkpoint{'s' if checkpoints != 1 else ''}"


def activity(url: str) -> Activity | None:
    """The server's counters now, or None where they cannot be read."""
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=5) as conn:
            position = conn.execute("SELECT pg_current_wal_lsn() - '0/0'").fetchone()[0]
            for query in CHECKPOINTS:
                try:
                    checkpoints = conn.execute(query).fetchone()[0]
                    break
                except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn):
                    continue
            else:
                return None
    except psycopg.Error:
        return None
    return Activity(int(position), int(checkpoints))
