"""Run the real `pushbase serve` as a subprocess, for slow tests and the benchmark.

Plain functions and one class, no pytest fixtures, so `bench/ingest.py` can import it
too (it puts this directory on `sys.path`).

    server = ServerProcess(data_dir, env={"PUSHBASE_MAX_BODY_BYTES": "2097152"})
    server.start()                      # waits for GET /readyz -> 200
    with server.client() as http:       # httpx.Client with base_url and x-api-key
        http.get("/v1/datasets")
    server.kill()                       # SIGKILL, no shutdown code runs
    server.start()                      # same data dir, new port
    server.stop()                       # SIGTERM, then SIGKILL after a grace period

The server's stdout and stderr go to a log file (never a pipe, which could fill up and
block the server); `ServerProcess.log_tail()` returns its end, and every startup
failure quotes it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ADMIN_KEY = "test-admin-key-0123456789abcdef"


class ServerError(RuntimeError):
    """The server did not come up, or died; the message carries the end of its log."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def server_python() -> str:
    """The interpreter that has pushbase installed: the repo's venv, else this one."""
    venv = REPO_ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _read_proc_status(pid: int) -> dict[str, str]:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _kib_field(fields: Mapping[str, str], name: str) -> int:
    """`VmRSS:   12345 kB` -> bytes (0 when absent)."""
    value = fields.get(name, "")
    parts = value.split()
    if not parts:
        return 0
    return int(parts[0]) * 1024


def process_group_members(pgid: int) -> list[int]:
    """Pids of every live process in process group `pgid` (Linux /proc)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # fields after the ")" that closes the command name: state ppid pgrp ...
        rest = stat.rsplit(")", 1)[-1].split()
        if len(rest) >= 3 and int(rest[2]) == pgid:
            members.append(int(entry))
    return members


class ServerProcess:
    """One `pushbase serve` subprocess over a data directory; restartable."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        admin_key: str = DEFAULT_ADMIN_KEY,
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
        host: str = "127.0.0.1",
        port: int | None = None,
        log_path: str | os.PathLike[str] | None = None,
        python: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.admin_key = admin_key
        self.extra_env = dict(env or {})
        if workers is not None:
            self.extra_env["PUSHBASE_WORKERS"] = str(workers)
        self.host = host
        self.fixed_port = port
        self.port: int | None = None
        self.python = python or server_python()
        if log_path is None:
            fd, name = tempfile.mkstemp(prefix="pushbase-server-", suffix=".log")
            os.close(fd)
            log_path = name
        self.log_path = Path(log_path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- addresses -----------------------------------------------------------------

    @property
    def url(self) -> str:
        if self.port is None:
            raise ServerError("server not started")
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("server not started")
        return self.proc.pid

    def headers(self, api_key: str | None = None) -> dict[str, str]:
        return {"x-api-key": api_key if api_key is not None else self.admin_key}

    def client(
        self, api_key: str | None = None, timeout: float = 30.0, **kwargs: Any
    ) -> httpx.Client:
        """An httpx.Client on this server, authenticated with the admin key by default."""
        headers = {**self.headers(api_key), **kwargs.pop("headers", {})}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout, **kwargs)

    # -- lifecycle -----------------------------------------------------------------

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "pushbase",
            "serve",
            "--host",
            self.host,
            "--port",
            str(self.port),
        ]

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("PUSHBASE_")}
        env.update(
            {
                "PUSHBASE_DATA_DIR": str(self.data_dir),
                "PUSHBASE_ADMIN_KEY": self.admin_key,
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.extra_env)
        return env

    def start(self, timeout: float = 30.0) -> ServerProcess:
        """Start the server and wait until `GET /readyz` answers 200."""
        if self.running():
            raise ServerError(f"server already running (pid {self.pid})")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        attempts = 1 if self.fixed_port else 3
        for attempt in range(attempts):
            self.port = self.fixed_port or free_port(self.host)
            self.starts += 1
            with self.log_path.open("ab") as log:
                banner = f"\n===== start #{self.starts} port {self.port} at {time.ctime()} =====\n"
                log.write(banner.encode())
                log.flush()
                self.proc = subprocess.Popen(
                    self.command(),
                    cwd=str(REPO_ROOT),
                    env=self.environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: kill() reaches children
                )
            try:
                self.wait_ready(timeout)
                return self
            except ServerError as exc:
                port_taken = "address already in use" in str(exc).lower()
                self.kill()
                if not port_taken or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            code = self.proc.poll() if self.proc else None
            if code is not None:
                raise ServerError(
                    f"server exited with code {code} during startup\n{self.log_tail()}"
                )
            try:
                response = httpx.get(f"{self.url}/readyz", timeout=2.0)
                if response.status_code == 200:
                    return
                last = f"/readyz -> {response.status_code} {response.text[:300]}"
            except httpx.HTTPError as exc:
                last = f"/readyz -> {type(exc).__name__}: {exc}"
            time.sleep(0.1)
        raise ServerError(f"server not ready after {timeout:.0f}s ({last})\n{self.log_tail()}")

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    def kill(self) -> None:
        """SIGKILL the server and everything in its process group, at once."""
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=30)
        self._reap_group()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM, wait up to `timeout` for a clean exit, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=30)
        code = self.proc.returncode
        self._signal_group(signal.SIGKILL)  # stray children, if any
        self._reap_group()
        return code

    def _reap_group(self, timeout: float = 10.0) -> None:
        """Wait until no process of the group is left (children hold the store's lock)."""
        if self.proc is None:
            return
        deadline = time.monotonic() + timeout
        while process_group_members(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def __enter__(self) -> ServerProcess:
        if not self.running():
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observation ---------------------------------------------------------------

    def log_tail(self, max_chars: int = 6000) -> str:
        try:
            text = self.log_path.read_bytes().decode("utf-8", "replace")
        except OSError:
            return f"(no server log at {self.log_path})"
        tail = text[-max_chars:]
        return f"--- server log {self.log_path} (last {len(tail)} chars) ---\n{tail}"

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Current resident memory of the server and its children (sum of VmRSS; with
        `field="RssAnon"`, only their anonymous memory, without mapped files)."""
        if not self.running():
            return 0
        return sum(
            _kib_field(_read_proc_status(pid), field) for pid in process_group_members(self.pid)
        )

    def peak_rss_bytes(self) -> int:
        """High-water mark of the main server process's resident memory (VmHWM)."""
        if not self.running():
            return 0
        return _kib_field(_read_proc_status(self.pid), "VmHWM")


def wait_job(
    http: httpx.Client, job_id: str, timeout: float = 60.0, interval: float = 0.1
) -> dict[str, Any]:
    """Poll `GET /v1/jobs/{id}` until the job is succeeded, failed or cancelled."""
    deadline = time.monotonic() + timeout
    doc: dict[str, Any] = {}
    while True:
        response = http.get(f"/v1/jobs/{job_id}")
        if response.status_code != 200:
            raise AssertionError(
                f"GET /v1/jobs/{job_id} -> {response.status_code} {response.text[:500]}"
            )
        doc = response.json()
        if doc.get("status") in TERMINAL:
            return doc
        if time.monotonic() > deadline:
            raise TimeoutError(f"job {job_id} not finished after {timeout}s: {doc}")
        time.sleep(interval)


TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


class ApiOnlyProcess(ServerProcess):
    """`pushbase serve --no-workers`: answers HTTP, applies nothing itself."""

    def command(self) -> list[str]:
        return [*super().command(), "--no-workers"]


class WorkerProcess(ServerProcess):
    """One `pushbase worker` subprocess (PostgreSQL store): no HTTP, ready once it logs so."""

    READY_LINE = b"pushbase worker:"

    def command(self) -> list[str]:
        return [self.python, "-m", "pushbase", "worker"]

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.proc.poll() if self.proc else None
            if code is not None:
                raise ServerError(f"worker exited with code {code}\n{self.log_tail()}")
            if self.READY_LINE in self.log_path.read_bytes().split(b"=====")[-1]:
                return
            time.sleep(0.1)
        raise ServerError(f"worker not ready after {timeout:.0f}s\n{self.log_tail()}")
