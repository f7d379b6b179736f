"""The benchmark's report: environment, medians, targets, and the Markdown tables."""

from __future__ import annotations

import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


# -- measurements ------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    method: str
    rows: int
    batches: int
    seconds: float = 0.0
    accept_seconds: float = 0.0
    failed_jobs: int = 0
    failed_rows: int = 0
    refused_pushes: int = 0
    retries_429: int = 0
    ack_ms: list[float] = field(default_factory=list)  # send -> 202, one per accepted push
    probe_ms: list[float] = field(default_factory=list)  # the probe client's send -> 202
    # the probe pushes sent once every loading push was accepted (the writes still running)
    probe_after_ms: list[float] = field(default_factory=list)
    stats: dict[str, int] = field(default_factory=dict)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds else 0.0

    @property
    def lost_rows(self) -> int:
        return self.failed_rows


@dataclass
class BackendRun:
    """One backend on one fresh server: its phases, push latencies and peak RSS."""

    backend: str  # duckdb | postgres
    run: int
    phases: dict[str, PhaseResult] = field(default_factory=dict)
    peak_rss: int = 0
    peak_anon: int = 0  # the RSS peak's anonymous part (RssAnon), without mapped files
    data_bytes: int | None = None  # the dataset's data on disk (datasize.py), largest seen
    log_errors: int = 0  # server log lines with a traceback or an error
    stopped: bool = False  # the run ended before its last phase (a failed server or store)
    problems: list[str] = field(default_factory=list)  # lost rows, wrong counts, ...

    @property
    def ack_ms(self) -> list[float]:
        return [ms for phase in self.phases.values() for ms in phase.ack_ms]

    @property
    def probe_ms(self) -> list[float]:
        return [ms for phase in self.phases.values() for ms in phase.probe_ms]

    @property
    def probe_after_ms(self) -> list[float]:
        return [ms for phase in self.phases.values() for ms in phase.probe_after_ms]


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else math.nan


# -- environment -------------------------------------------------------------------------


def _git(*args: str) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip()
    except OSError:
        return ""


def git_commit() -> str:
    commit = _git("rev-parse", "--short", "HEAD") or "-"
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", "src")
    return f"{commit}{' + uncommitted changes in src/' if dirty else ''}"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def ram_total() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return "?"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 0


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def postgres_version(url: str) -> str:
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=5) as conn:
            (version,) = conn.execute("SELECT version()").fetchone()
        return version.split(" on ")[0]
    except Exception as exc:  # reported, never fatal
        return f"unavailable ({type(exc).__name__})"


def load_average() -> str:
    try:
        return " / ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def environment_lines(pg_url: str | None, load_at_start: str = "") -> list[str]:
    versions = [
        f"Python {platform.python_version()}",
        f"duckdb {package_version('duckdb')}",
        f"pyarrow {package_version('pyarrow')}",
        f"psycopg {package_version('psycopg')}",
        f"orjson {package_version('orjson')}",
    ]
    if pg_url:
        versions.append(postgres_version(pg_url))
    return [
        f"- date: {time.strftime('%Y-%m-%d %H:%M %Z')}; commit {git_commit()}",
        f"- machine: {nproc()} CPUs ({cpu_model()}), {ram_total()} RAM, "
        f"{platform.system()} {platform.release()}",
        f"- load average (1/5/15 min): "
        f"{load_at_start + ' at start, ' if load_at_start else ''}{load_average()} at end",
        f"- versions: {', '.join(versions)}",
    ]


# -- the summary table -------------------------------------------------------------------


@dataclass
class Row:
    workload: str
    target: str
    figure: str
    ratio: str = "—"
    verdict: str = "—"


def fmt_rate(value: float) -> str:
    return "not run" if math.isnan(value) else f"{value:,.0f} rows/s"


def fmt_runs(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """' (median of 3: a / b / c)' when there were several runs."""
    if len(values) < 2:
        return ""
    return f" (median of {len(values)}: {' / '.join(fmt(v) for v in values)})"


def verdict(ok: bool | None, problems: Sequence[str] = ()) -> str:
    if ok is None:
        return "—"
    text = "PASS" if ok and not problems else "FAIL"
    if problems:
        text += " (" + "; ".join(problems) + ")"
    return text


LABELS = {"duckdb": "embedded", "postgres": "PostgreSQL"}

# (backend, phase, workload label, minimum rows/s or None, minimum ratio to baseline or None)
THROUGHPUT_ROWS = [
    ("duckdb", "insert", "embedded, new rows", 150_000, 0.5),
    ("duckdb", "upsert", "embedded, upsert, half the keys existing", 100_000, None),
    ("duckdb", "delete", "embedded, delete 10% of keys by key, ~1 MB requests", 100_000, None),
    ("postgres", "insert", "PostgreSQL, new rows", 60_000, None),
    ("postgres", "upsert", "PostgreSQL, upsert, half existing", 35_000, None),
    ("postgres", "delete", "PostgreSQL, delete 10% of keys by key, ~1 MB requests", None, None),
]
ACK_P99_MS = 50.0
PEAK_RSS_MB = 800.0  # decimal MB (10^6 bytes): the stricter reading of "800 MB"


def throughput_row(
    runs: Sequence[BackendRun],
    backend: str,
    phase: str,
    label: str,
    judge: Callable[[float], tuple[str, bool | None]],
    ratio: Callable[[float], str],
) -> Row | None:
    """One phase's rows/s over the backend's runs (median), its target and verdict, and any
    rows lost in it. A phase that a run never reached because it stopped (a store that
    failed, say) is a FAIL, not a missing row; one skipped on purpose (`--no-delete`) is
    left out."""
    mine = [r for r in runs if r.backend == backend]
    reached = [r for r in mine if phase in r.phases]
    stopped = [r for r in mine if phase not in r.phases and r.stopped]
    if not reached:
        if not stopped:
            return None
        target, _ = judge(math.nan)
        return Row(label, target, "not run: the run stopped before it (see Problems)", "—", "FAIL")
    values = [r.phases[phase].rows_per_s for r in reached]
    value = median(values)
    target, ok = judge(value)
    problems = []
    lost = sum(r.phases[phase].lost_rows for r in reached)
    refused = sum(r.phases[phase].refused_pushes for r in reached)
    if lost:
        problems.append(f"{lost:,} rows failed")
    if refused:
        problems.append(f"{refused} push{'es' if refused > 1 else ''} refused")
    if stopped:
        problems.append(f"{len(stopped)} of {len(mine)} runs stopped before it")
    if problems and ok is None:
        ok = False
    return Row(
        label,
        target,
        fmt_rate(value) + fmt_runs(values, lambda v: f"{v:,.0f}"),
        ratio(value),
        verdict(ok, problems),
    )


def summary_rows(
    runs: Sequence[BackendRun],
    baseline: Sequence[float],
    extra: Sequence[Row] = (),
    rss_limit_mb: float = PEAK_RSS_MB,
) -> list[Row]:
    """The summary table: baseline, the contiguous phases, then `extra` (the spread phases
    and their reference, spreadrows.py), the latency probe and the peak RSS, whose target
    is `rss_limit_mb` (800 MB for 1M rows, 1 GB against a 10M-row dataset)."""
    base = median(list(baseline))
    rows = [
        Row(
            "DuckDB baseline: `read_json` of the insert rows (NDJSON file) into a keyed table, "
            "in process",
            "reference",
            (fmt_rate(base) + fmt_runs(baseline, lambda v: f"{v:,.0f}")) if baseline else "not run",
            "1.00x" if baseline else "—",
        )
    ]

    def ratio(value: float) -> str:
        if math.isnan(value) or not baseline or not base:
            return "—"
        return f"{value / base:.2f}x baseline"

    for backend, phase, label, minimum, min_ratio in THROUGHPUT_ROWS:

        def judge(value: float, minimum=minimum, min_ratio=min_ratio) -> tuple[str, bool | None]:
            target_parts = []
            ok: bool | None = None
            if minimum is not None:
                target_parts.append(f"≥ {minimum:,} rows/s")
                ok = value >= minimum
            if min_ratio is not None and baseline:
                target_parts.append(f"≥ {min_ratio}x baseline")
                ok = bool(ok) and value >= min_ratio * base
            elif min_ratio is not None:  # --no-baseline: only the rows/s part can be judged
                target_parts.append(f"≥ {min_ratio}x baseline (not run: not judged)")
            return " and ".join(target_parts) or "— (reported)", ok

        if row := throughput_row(runs, backend, phase, label, judge, ratio):
            rows.append(row)
    rows += list(extra)

    for backend in ("duckdb", "postgres"):
        mine = [r for r in runs if r.backend == backend]
        if not mine:
            continue
        p50 = median([percentile(r.probe_ms, 50) for r in mine])
        p99s = [percentile(r.probe_ms, 99) for r in mine]
        p99 = median(p99s)
        probes = sum(len(r.probe_ms) for r in mine)
        rows.append(
            Row(
                f"acknowledgement latency of a 1 MB push while the {LABELS[backend]} phases run "
                "(a probe client, one push every 250 ms; p50 / p99)",
                f"p99 ≤ {ACK_P99_MS:.0f} ms",
                f"{p50:.1f} / {p99:.1f} ms, {probes} pushes"
                + fmt_runs(p99s, lambda v: f"p99 {v:.1f}"),
                "—",
                verdict(p99 <= ACK_P99_MS if not math.isnan(p99) else None),
            )
        )
        after = [r.probe_after_ms for r in mine]
        rows.append(
            Row(
                f"the same probe, only its pushes sent after the loading clients' last push was"
                f" accepted ({LABELS[backend]} workers still writing; p50 / p99)",
                "— (reported)",
                f"{median([percentile(a, 50) for a in after]):.1f} /"
                f" {median([percentile(a, 99) for a in after]):.1f} ms,"
                f" {sum(len(a) for a in after)} pushes",
                "—",
                "—",
            )
        )
        load_p50 = median([percentile(r.ack_ms, 50) for r in mine])
        load_p99 = median([percentile(r.ack_ms, 99) for r in mine])
        pushes = sum(len(r.ack_ms) for r in mine)
        retries = sum(p.retries_429 for r in mine for p in r.phases.values())
        note = f", {pushes} pushes" + (f", {retries} answered 429 first" if retries else "")
        rows.append(
            Row(
                f"latency of the loading clients' own pushes, {LABELS[backend]} "
                "(8 back to back: a saturated queue; p50 / p99)",
                "— (reported)",
                f"{load_p50:.1f} / {load_p99:.1f} ms{note}",
                "—",
                "—",
            )
        )

    for backend in ("duckdb", "postgres"):
        mine = [r for r in runs if r.backend == backend and r.peak_rss]
        if not mine:
            continue
        values = [r.peak_rss / 1e6 for r in mine]
        value = median(values)
        anon = median([r.peak_anon / 1e6 for r in mine])
        measured = backend == "duckdb"
        rows.append(
            Row(
                f"server peak RSS during the {LABELS[backend]} run",
                f"≤ {rss_limit_mb:,.0f} MB" if measured else "— (reported)",
                f"{value:,.0f} MB"
                + fmt_runs(values, lambda v: f"{v:,.0f}")
                + f"; anonymous memory {anon:,.0f} MB",
                "—",
                verdict(value <= rss_limit_mb) if measured else "—",
            )
        )
    return rows


def markdown_table(rows: Sequence[Row]) -> list[str]:
    lines = [
        "| workload | target | figure | ratio to baseline / reference | pass/fail |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r.workload} | {r.target} | {r.figure} | {r.ratio} | {r.verdict} |" for r in rows]
    return lines


def details_table(runs: Sequence[BackendRun]) -> list[str]:
    """One line per backend, run and phase: the raw figures behind the medians."""
    lines = [
        "| store | run | phase | records | pushes | rows/s | all accepted after | "
        "ack p50 / p99 | 429 retries | failed jobs / rows |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        for p in run.phases.values():
            lines.append(
                f"| {run.backend} | {run.run} | {p.name} | {p.rows:,} | {p.batches} | "
                f"{p.rows_per_s:,.0f} | {p.accept_seconds:.2f} s | "
                f"{percentile(p.ack_ms, 50):.1f} / {percentile(p.ack_ms, 99):.1f} ms | "
                f"{p.retries_429} | {p.failed_jobs} / {p.failed_rows:,} |"
            )
    return lines
