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

    overrides = {"host": host, "port": port, "data_dir": data_dir, "workers": workers}
    settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    logging.basicConfig(level=log_level.upper(), format=LOG_FORMAT)
    application = create_app(settings, workers=0 if no_workers else None)
    uvicorn.run(
        application,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        timeout_graceful_shutdown=10,
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
