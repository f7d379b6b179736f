"""The `pushbase` command."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from pushbase.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
app = typer.Typer(help="pushbase: push data into managed, typed datasets over HTTP.",
                  no_args_is_help=True)  # fmt: skip


@app.callback()
def main() -> None:
    """pushbase command line."""


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
