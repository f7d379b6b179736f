"""SQL text helpers shared by the backends: identifiers are always quoted here."""

from __future__ import annotations


def quote(identifier: str) -> str:
    """A quoted SQL identifier; the only way a user-given name reaches SQL text."""
    return '"' + identifier.replace('"', '""') + '"'


def job_filter(
    dataset_id: str | None,
    status: str | None,
    datasets: list[str] | None,
    *,
    param: str,
    among: str,
) -> tuple[str, list[object]]:
    """The WHERE clause and parameters for listing jobs.

    `param` is the backend's placeholder; `among` its test of `dataset_id` against a list.
    """
    clauses: list[str] = []
    params: list[object] = []
    for clause, value in (
        (f"dataset_id = {param}", dataset_id),
        (f"status = {param}", status),
        (among, datasets),
    ):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), params


def purge_jobs(param: str) -> str:
    """Forget finished jobs accepted before a time (one parameter)."""
    return (
        "DELETE FROM _pb_jobs WHERE status IN ('succeeded', 'failed', 'cancelled')"
        f" AND created_at < {param}"
    )


def queued_after(param: str) -> str:
    """A dataset's queued jobs after a sequence number, oldest first (dataset, seq, limit)."""
    return (
        f"SELECT doc FROM _pb_jobs WHERE dataset_id = {param} AND status = 'queued'"
        f" AND seq > {param} ORDER BY seq LIMIT {param}"
    )
