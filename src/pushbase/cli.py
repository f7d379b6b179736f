"""The `pushbase` command: the server (`serve`, `worker`) and a client for it.

Client commands find the server and key in `--url` / `--key` (before or after the
command name) or `PUSHBASE_URL` / `PUSHBASE_API_KEY`. Exit codes: 0 done, 1 rows or jobs
failed, 2 the command could not do its work (bad input, HTTP error, server unreachable),
130 interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pushbase.settings import Settings

if TYPE_CHECKING:
    from rich.console import Console

    from pushbase.client import Client, PushResult

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
app = typer.Typer(help="pushbase: push data into managed, typed datasets over HTTP.",
                  no_args_is_help=True)  # fmt: skip
keys_app = typer.Typer(help="API keys: create, list, revoke.", no_args_is_help=True)
datasets_app = typer.Typer(help="Datasets: create, list, show, drop.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs: show, list, watch.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
app.add_typer(datasets_app, name="datasets")
app.add_typer(jobs_app, name="jobs")

UrlOption = Annotated[
    str | None, typer.Option("--url", help="server URL [env PUSHBASE_URL; http://127.0.0.1:8000]")
]
KeyOption = Annotated[
    str | None, typer.Option("--key", "--api-key", help="API key [env PUSHBASE_API_KEY]")
]
ApiKeyOption = Annotated[
    str | None, typer.Option("--api-key", help="API key [env PUSHBASE_API_KEY]")
]
JsonOption = Annotated[bool, typer.Option("--json", help="print the raw JSON document")]


@app.callback()
def main(ctx: typer.Context, url: UrlOption = None, key: KeyOption = None) -> None:
    """pushbase command line."""
    ctx.obj = {"url": url, "key": key}


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
    data_dir: Annotated[Path | None, typer.Option(help="embedded store folder")] = None,
    workers: Annotated[int | None, typer.Option(help="job worker threads")] = None,
    no_workers: Annotated[bool, typer.Option("--no-workers", help="API only")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Serve the HTTP API and run job workers (PUSHBASE_* settings apply)."""
    import uvicorn

    from pushbase.api import create_app
    from pushbase.api.timeouts import uvicorn_options

    overrides = {"host": host, "port": port, "data_dir": data_dir, "workers": workers}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    # Worker threads run Python between database calls; a short GIL switch interval keeps
    # the request path from queueing behind them (acknowledgement latency under load).
    sys.setswitchinterval(0.0005)
    application = create_app(settings, workers=0 if no_workers else None)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        **uvicorn_options(settings),  # header, body and keep-alive timeouts; connection limit
    )


@app.command()
def worker(
    workers: Annotated[int | None, typer.Option(help="job worker threads")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning")] = "info",
) -> None:
    """Only apply jobs (PostgreSQL store): run as many of these as you like."""
    from pushbase.errors import PushbaseError
    from pushbase.worker import run_worker

    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    try:
        run_worker(Settings(), workers)
    except PushbaseError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(2) from exc


# -- client plumbing -----------------------------------------------------------------


def _consoles() -> tuple[Console, Console]:
    """(stdout, stderr) consoles; wide when not a terminal, so ids are never cut."""
    from rich.console import Console

    def width(stream: Any) -> int | None:
        return None if stream.isatty() or os.environ.get("COLUMNS") else 200

    return Console(width=width(sys.stdout)), Console(stderr=True, width=width(sys.stderr))


def _client(ctx: typer.Context, url: str | None, key: str | None, retries: int = 2) -> Client:
    from pushbase.client import Client

    root = ctx.find_root().obj or {}
    url = url or root.get("url") or os.environ.get("PUSHBASE_URL") or "http://127.0.0.1:8000"
    key = key or root.get("key") or os.environ.get("PUSHBASE_API_KEY")
    if not key:
        _, err = _consoles()
        err.print("[red]error:[/] no API key: pass --key KEY or set PUSHBASE_API_KEY")
        raise typer.Exit(2)
    return Client(url, key, retries=retries)


@contextlib.contextmanager
def _errors() -> Iterator[None]:
    """Client errors as one red line and exit code 2; Ctrl-C as 130."""
    from pushbase.batching import BatchError
    from pushbase.errors import PushbaseError

    try:
        yield
    except PushbaseError as exc:
        _, err = _consoles()
        status = f" ({exc.status})" if exc.status else ""
        err.print(f"[red]error{status}:[/] {exc.code}: {exc.message}", highlight=False)
        raise typer.Exit(2) from exc
    except BrokenPipeError as exc:  # `pushbase export ... | head`
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(0) from exc
    except (BatchError, OSError, ValueError) as exc:
        _, err = _consoles()
        err.print(f"[red]error:[/] {exc}", highlight=False)
        raise typer.Exit(2) from exc
    except KeyboardInterrupt as exc:
        _, err = _consoles()
        err.print("[yellow]interrupted[/]")
        raise typer.Exit(130) from exc


def _print_json(value: Any) -> None:
    import orjson

    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")
    sys.stdout.flush()


def _split_list(values: list[str] | None) -> list[str]:
    return [part.strip() for v in values or [] for part in v.split(",") if part.strip()]


def _when(value: str | None) -> str:
    return (value or "")[:19].replace("T", " ")


# -- keys ------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="a name to recognise the key by")],
    scope: Annotated[
        list[str] | None, typer.Option("--scope", "-s", help="admin, write or read (repeatable)")
    ] = None,
    dataset: Annotated[
        list[str] | None, typer.Option("--dataset", "-d", help="limit the key to these datasets")
    ] = None,
    url: UrlOption = None,
    key: KeyOption = None,
    json: JsonOption = False,
) -> None:
    """Create an API key; its secret is printed once."""
    out, err = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        created = pb.keys.create(
            name, _split_list(scope) or ["write"], _split_list(dataset) or None
        )
    if json:
        _print_json(created)
        return
    limited = ", ".join(created["datasets"] or []) or "all datasets"
    err.print(f"created key [bold]{created['id']}[/] ({', '.join(created['scopes'])}; {limited})")
    err.print("the secret is shown only now:")
    out.print(created["key"], highlight=False)


@keys_app.command("list")
def keys_list(
    ctx: typer.Context, url: UrlOption = None, key: KeyOption = None, json: JsonOption = False
) -> None:
    """List API keys (never their secrets)."""
    from rich.table import Table

    out, _ = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        keys = pb.keys.list()
    if json:
        _print_json(keys)
        return
    table = Table("id", "name", "scopes", "datasets", "created")
    for k in keys:
        datasets = ", ".join(k.get("datasets") or []) or "all"
        table.add_row(k["id"], k["name"], ", ".join(k["scopes"]), datasets, _when(k["created_at"]))
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key_id: Annotated[str, typer.Argument(help="the key's id (not its secret)")],
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Revoke an API key: it stops working at once."""
    _, err = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        pb.keys.revoke(key_id)
    err.print(f"revoked key {key_id}")


# -- datasets ------------------------------------------------------------------------


def _columns_spec(spec: str) -> list[dict[str, Any]]:
    """`id:integer,email:string,seen:datetime` -> column documents."""
    columns = []
    for part in spec.split(","):
        name, _, type_ = part.strip().rpartition(":")
        if not name:
            name, type_ = type_, "string"
        columns.append({"name": name.strip(), "type": type_.strip() or "string"})
    return columns


def _print_dataset(out: Console, dataset: dict[str, Any]) -> None:
    from rich.table import Table

    key = dataset.get("unique_key") or []
    out.print(
        f"[bold]{dataset['id']}[/] ({dataset.get('name')}): {dataset.get('row_count', 0):,} rows, "
        f"key {', '.join(key) if key else '(none: pushes append)'}, "
        f"unknown fields: {dataset.get('unknown_fields')}",
        highlight=False,
    )
    table = Table("column", "type", "nullable", "key", "format", "description")
    for column in dataset["columns"]:
        table.add_row(
            column["name"],
            column["type"],
            "yes" if column.get("nullable", True) else "no",
            "key" if column["name"] in key else "",
            column.get("format") or "",
            column.get("description") or "",
        )
    out.print(table)


@datasets_app.command("create")
def datasets_create(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID", help="the dataset id")],
    from_sample: Annotated[
        Path | None,
        typer.Option("--from-sample", help="JSON, NDJSON, CSV or Parquet file to infer from"),
    ] = None,
    columns: Annotated[
        str | None, typer.Option("--columns", help="name:type,... (instead of a sample)")
    ] = None,
    unique_key: Annotated[
        str | None, typer.Option("--key", "--unique-key", help="unique key columns: COL,COL")
    ] = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    description: Annotated[str | None, typer.Option(help="description")] = None,
    unknown_fields: Annotated[
        str | None, typer.Option(help="reject (default), ignore or evolve")
    ] = None,
    url: UrlOption = None,
    api_key: ApiKeyOption = None,
    json: JsonOption = False,
) -> None:
    """Create a dataset from a sample file (types inferred) or from --columns."""
    from pushbase.client import load_sample

    out, err = _consoles()
    if (from_sample is None) == (columns is None):
        err.print("[red]error:[/] give --from-sample FILE or --columns name:type,...")
        raise typer.Exit(2)
    with _errors(), _client(ctx, url, api_key) as pb:
        sample = load_sample(from_sample) if from_sample is not None else None
        if from_sample is not None and not sample:
            raise ValueError(f"{from_sample}: no records to infer columns from")
        dataset = pb.datasets.create(
            dataset_id,
            sample=sample,
            columns=_columns_spec(columns) if columns else None,
            unique_key=_split_list([unique_key]) if unique_key else None,
            name=name,
            description=description,
            unknown_fields=unknown_fields,
        )
    if json:
        _print_json(dataset)
        return
    err.print(f"created dataset {dataset['id']}")
    _print_dataset(out, dataset)


@datasets_app.command("list")
def datasets_list(
    ctx: typer.Context, url: UrlOption = None, key: KeyOption = None, json: JsonOption = False
) -> None:
    """List datasets with their row counts."""
    from rich.table import Table

    out, _ = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        datasets = pb.datasets.list()
    if json:
        _print_json(datasets)
        return
    table = Table("id", "name", "rows", "columns", "key", "updated")
    for d in datasets:
        table.add_row(
            d["id"],
            d["name"],
            f"{d.get('row_count', 0):,}",
            str(len(d["columns"])),
            ", ".join(d.get("unique_key") or []),
            _when(d.get("updated_at")),
        )
    out.print(table)


@datasets_app.command("show")
def datasets_show(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    rows: Annotated[int, typer.Option(help="sample rows to print")] = 5,
    url: UrlOption = None,
    key: KeyOption = None,
    json: JsonOption = False,
) -> None:
    """A dataset's columns, key, row count and first rows."""
    from rich.table import Table

    out, _ = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        dataset = pb.datasets.get(dataset_id)
        page = pb.datasets.rows(dataset_id, limit=rows) if rows > 0 else {"rows": []}
    if json:
        _print_json({**dataset, "sample_rows": page["rows"]})
        return
    _print_dataset(out, dataset)
    if page["rows"]:
        names = [c["name"] for c in dataset["columns"]]
        table = Table(*names, title=f"first {len(page['rows'])} rows")
        for row in page["rows"]:
            table.add_row(*("" if row.get(n) is None else str(row.get(n)) for n in names))
        out.print(table)


@datasets_app.command("drop")
def datasets_drop(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Drop a dataset and all its rows."""
    _, err = _consoles()
    if not yes and not typer.confirm(f"drop dataset {dataset_id!r} and all its rows?"):
        raise typer.Exit(1)
    with _errors(), _client(ctx, url, key) as pb:
        pb.datasets.drop(dataset_id)
    err.print(f"dropped dataset {dataset_id}")


@datasets_app.command("delete-all")
def datasets_delete_all(
    ctx: typer.Context,
    dataset_id: Annotated[str, typer.Argument(metavar="ID")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait for the job")] = True,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Delete every row (a job, applied in order after the pushes before it)."""
    out, _ = _consoles()
    if not yes and not typer.confirm(f"delete all rows of {dataset_id!r}?"):
        raise typer.Exit(1)
    with _errors(), _client(ctx, url, key) as pb:
        job = pb.delete_all(dataset_id, wait=wait)
    if "stats" in job:
        _print_job(out, job)
    else:
        out.print(f"job {job['job_id']} {job['status']}", highlight=False)


# -- jobs ------------------------------------------------------------------------------


def _job_line(job: dict[str, Any]) -> str:
    stats = job.get("stats") or {}
    parts = [f"{k} {stats.get(k, 0):,}" for k in ("received", "inserted", "updated", "deleted")]
    if stats.get("not_found"):
        parts.append(f"not found {stats['not_found']:,}")
    parts.append(f"failed {stats.get('failed', 0):,}")
    return " · ".join(parts)


def _print_job(out: Console, job: dict[str, Any]) -> None:
    from rich.table import Table

    colour = {"succeeded": "green", "failed": "red", "cancelled": "yellow"}.get(
        job["status"], "cyan"
    )
    phase = f" ({job['phase']}, {job.get('progress', 0)}%)" if job.get("phase") else ""
    took = f" in {job['duration_ms']} ms" if job.get("duration_ms") is not None else ""
    out.print(
        f"[bold]{job['id']}[/] {job['method']} into [bold]{job['dataset_id']}[/]: "
        f"[{colour}]{job['status']}[/]{phase}{took}, {job.get('bytes', 0):,} bytes, "
        f"source {job.get('source')}",
        highlight=False,
    )
    out.print(_job_line(job), highlight=False)
    if job.get("error"):
        out.print(f"[red]error:[/] {job['error']['code']}: {job['error']['message']}")
    if job.get("errors"):
        table = Table(
            "row",
            "column",
            "code",
            "message",
            "value",
            title=f"row errors ({len(job['errors'])} of {job.get('errors_total', 0)})",
        )
        for e in job["errors"]:
            table.add_row(
                str(e.get("row")),
                e.get("column") or "",
                e.get("code", ""),
                e.get("message", ""),
                _short(e.get("value")),
            )
        out.print(table)


def _short(value: Any, size: int = 40) -> str:
    if value is None:
        return ""
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= size else text[: size - 1] + "…"


def _job_failed(job: dict[str, Any]) -> bool:
    return job["status"] in ("failed", "cancelled") or bool((job.get("stats") or {}).get("failed"))


@jobs_app.command("show")
def jobs_show(
    ctx: typer.Context,
    job_id: Annotated[str, typer.Argument(metavar="JOB_ID")],
    url: UrlOption = None,
    key: KeyOption = None,
    json: JsonOption = False,
) -> None:
    """A job's status, stats and row errors."""
    out, _ = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        job = pb.jobs.get(job_id)
    if json:
        _print_json(job)
        return
    _print_job(out, job)


def _jobs_table(jobs: list[dict[str, Any]]):
    from rich.table import Table

    table = Table("id", "dataset", "method", "status", "progress", "rows", "failed", "created")
    for j in jobs:
        stats = j.get("stats") or {}
        table.add_row(
            j["id"],
            j["dataset_id"],
            j["method"],
            j["status"],
            f"{j.get('progress', 0)}%",
            f"{stats.get('received', 0):,}",
            f"{stats.get('failed', 0):,}",
            _when(j.get("created_at")),
        )
    return table


@jobs_app.command("list")
def jobs_list(
    ctx: typer.Context,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="only this dataset")
    ] = None,
    status: Annotated[
        str | None, typer.Option(help="queued, running, succeeded, failed, cancelled")
    ] = None,
    limit: Annotated[int, typer.Option(help="at most this many, newest first")] = 20,
    url: UrlOption = None,
    key: KeyOption = None,
    json: JsonOption = False,
) -> None:
    """Recent jobs, newest first."""
    out, _ = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        jobs = pb.jobs.list(dataset=dataset, status=status, limit=limit)
    if json:
        _print_json(jobs)
        return
    out.print(_jobs_table(jobs))


@jobs_app.command("watch")
def jobs_watch(
    ctx: typer.Context,
    job_ids: Annotated[
        list[str] | None, typer.Argument(metavar="[JOB_ID]...", help="default: unfinished jobs")
    ] = None,
    dataset: Annotated[
        str | None, typer.Option("--dataset", "-d", help="only this dataset")
    ] = None,
    interval: Annotated[float, typer.Option(help="seconds between polls")] = 0.5,
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Follow jobs live until they finish; exit 1 if any failed or rejected rows."""
    from rich.live import Live

    out, err = _consoles()
    with _errors(), _client(ctx, url, key) as pb:
        ids = list(job_ids or [])
        if not ids:
            open_jobs = [
                j
                for j in pb.jobs.list(dataset=dataset, limit=1000)
                if j["status"] in ("queued", "running")
            ]
            ids = [j["id"] for j in reversed(open_jobs)]
            if not ids:
                err.print("no unfinished jobs")
                return
        jobs = [pb.jobs.get(i) for i in ids]
        with Live(_jobs_table(jobs), console=err, refresh_per_second=4, transient=True) as live:
            while any(j["status"] in ("queued", "running") for j in jobs):
                time.sleep(interval)
                jobs = [
                    j if j["status"] not in ("queued", "running") else pb.jobs.get(j["id"])
                    for j in jobs
                ]
                live.update(_jobs_table(jobs))
    for job in jobs:
        _print_job(out, job)
    if any(_job_failed(j) for j in jobs):
        raise typer.Exit(1)


# -- export ----------------------------------------------------------------------------


@app.command()
def export(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="dataset id")],
    format: Annotated[
        str | None, typer.Option("--format", "-f", help="csv, ndjson or parquet")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="file, or - for stdout")] = "-",
    url: UrlOption = None,
    key: KeyOption = None,
) -> None:
    """Write every row of a dataset as CSV, NDJSON or Parquet."""
    _, err = _consoles()
    if format is None:
        suffix = Path(output).suffix.lower().lstrip(".") if output != "-" else ""
        format = {"jsonl": "ndjson", "pq": "parquet"}.get(suffix, suffix)
        format = format if format in ("csv", "ndjson", "parquet") else "ndjson"
    if format not in ("csv", "ndjson", "parquet"):
        err.print(f"[red]error:[/] unknown format {format!r}: use csv, ndjson or parquet")
        raise typer.Exit(2)
    with _errors(), _client(ctx, url, key) as pb:
        if output == "-":
            pb.export(dataset, format, file=sys.stdout.buffer)
            sys.stdout.flush()
        else:
            pb.export(dataset, format, path=output)
            err.print(
                f"wrote {dataset} as {format} to {output} ({os.path.getsize(output):,} bytes)"
            )


# -- push ------------------------------------------------------------------------------


class _PushProgress:
    """The rich progress display of a push: bytes and rows sent, rows applied, rates, ETA."""

    def __init__(self, console: Console, total_bytes: int | None, follow: bool) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.started = time.monotonic()
        self.progress = Progress(
            TextColumn("{task.description:>8}"),
            BarColumn(),
            TextColumn("{task.fields[detail]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self.sent = self.progress.add_task("sent", total=total_bytes, detail="")
        self.applied = self.progress.add_task("applied", total=None, detail="") if follow else None

    def __enter__(self) -> _PushProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, run: Any) -> None:
        elapsed = max(1e-6, time.monotonic() - self.started)
        mb = run.bytes_sent / 1e6
        self.progress.update(
            self.sent,
            completed=run.bytes_sent,
            total=run.bytes_read if run.sending_done else self.progress.tasks[self.sent].total,
            detail=f"{run.rows_sent:,} rows · {mb:,.1f} MB · {mb / elapsed:,.1f} MB/s",
        )
        if self.applied is not None:
            self.progress.update(
                self.applied,
                completed=run.rows_applied,
                total=max(run.rows_read, 1),
                detail=f"{run.rows_applied:,} rows · {run.rows_applied / elapsed:,.0f} rows/s",
            )


def _print_summary(out: Console, result: PushResult, seconds: float, shown: int) -> None:
    from rich.table import Table

    out.print(
        f"pushed {result.rows_sent:,} rows ({result.bytes_sent / 1e6:,.1f} MB) to "
        f"[bold]{result.dataset_id}[/] in {result.batches} batches, {seconds:.1f} s",
        highlight=False,
    )
    if not result.finished:
        out.print(
            f"{len(result.job_ids)} jobs accepted; follow them with: "
            f"pushbase jobs watch --dataset {result.dataset_id}",
            highlight=False,
        )
        return
    colour = "red" if result.failed else "green"
    out.print(
        f"inserted {result.inserted:,} · updated {result.updated:,} · deleted {result.deleted:,}"
        + (f" · not found {result.not_found:,}" if result.not_found else "")
        + (f" · ignored fields {result.ignored_fields:,}" if result.ignored_fields else "")
        + f" · [{colour}]failed {result.failed:,}[/]",
        highlight=False,
    )
    for message in result.batch_errors[:shown]:
        out.print(f"[red]batch failed:[/] {message}", highlight=False)
    if result.errors and shown:
        table = Table(
            "where",
            "column",
            "code",
            "message",
            "value",
            title=f"first row errors ({min(shown, len(result.errors))} of {result.errors_total:,})",
        )
        for e in result.errors[:shown]:
            table.add_row(e.location, e.column or "", e.code, e.message, _short(e.value))
        out.print(table)


@app.command()
def push(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Argument(help="dataset id")],
    files: Annotated[
        list[str], typer.Argument(help="JSON, NDJSON, CSV or Parquet files (.gz ok); - for stdin")
    ],
    method: Annotated[str, typer.Option(help="upsert, insert, replace or delete")] = "upsert",
    batch_bytes: Annotated[
        str | None,
        typer.Option(help="batch size, e.g. 1MB [default: the server's optimal, 1MB]"),
    ] = None,
    concurrency: Annotated[int, typer.Option(help="batches in flight at once")] = 8,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="follow the jobs and print totals")
    ] = True,
    atomic: Annotated[bool, typer.Option(help="each batch all-or-nothing")] = False,
    format: Annotated[
        str | None, typer.Option("--format", help="json, ndjson, csv, parquet (default: by name)")
    ] = None,
    run_id: Annotated[
        str,
        typer.Option(help="change to push the same file again within 24 h (keys differ)"),
    ] = "",
    retries: Annotated[
        int, typer.Option(help="retries per batch on 429, 5xx, lost connection")
    ] = 8,
    show_errors: Annotated[int, typer.Option(help="row errors to print")] = 10,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    url: UrlOption = None,
    key: KeyOption = None,
    json: JsonOption = False,
) -> None:
    """Push files into a dataset: batched, parallel, retried safely, with live progress.

    Each batch carries an Idempotency-Key derived from the file and the batch's byte range
    and content: running the same command again after an interruption applies nothing twice.
    """
    from dataclasses import asdict

    from pushbase.batching import file_size

    out, err = _consoles()
    sizes = [file_size(f) for f in files]
    total = None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)
    started = time.monotonic()
    with _errors(), _client(ctx, url, key, retries) as pb:
        display = _PushProgress(err, total, wait) if not quiet else None
        with display or contextlib.nullcontext():
            result = pb.push_file(
                dataset,
                *files,
                format=format,
                method=method,
                wait=wait,
                atomic=atomic,
                batch_bytes=batch_bytes,
                concurrency=concurrency,
                run_id=run_id,
                on_progress=display.update if display else None,
                max_errors=max(show_errors, 100),
            )
    if json:
        doc = {k: v for k, v in asdict(result).items() if k != "jobs"}
        doc["job_ids"] = result.job_ids
        _print_json(doc)
    else:
        _print_summary(out, result, time.monotonic() - started, show_errors)
    if result.finished and not result.ok:
        raise typer.Exit(1)
