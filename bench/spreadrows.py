"""The summary rows of the spread phases (issue 21, DESIGN §7 "Spread keys"): the no-index
DuckDB reference, the spread upsert and delete of each backend with their ratio to it, the
data on disk, and what a 10M-row dataset at default settings must show.

Against a 10M-row dataset (`make bench-large`) a run has only that size, so the "≥ 0.8x of
the 1M-row figure" targets are judged against the figures of the table under "### Last run"
in bench/README.md, the last full 1M-row run quoted there.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path

from baseline import ReferenceResult
from report import LABELS, BackendRun, Row, fmt_rate, fmt_runs, median, throughput_row, verdict

README = Path(__file__).resolve().parent / "README.md"
LARGE_ROWS = 10_000_000  # preload + insert at or above this: the 10M-row targets apply
LARGE_RATIO = 0.8  # of the 1M-row figure
LARGE_RSS_MB = 1_000.0  # decimal, like every MB here
LARGE_FILE_MB = 600.0

UPSERT = "spread upsert: half the keys existing, drawn from the whole dataset, shuffled, half new"
DELETE = "spread delete: random existing keys from the whole dataset, ~1 MB requests"
# (backend, phase, label, minimum rows/s on 1M rows, minimum rows/s on 10M rows,
#  0.8x of the 1M-row figure on 10M rows?)
SPREAD_ROWS = [
    ("duckdb", "spread_upsert", f"embedded, {UPSERT}", 150_000, None, True),
    ("postgres", "spread_upsert", f"PostgreSQL, {UPSERT}", 80_000, None, True),
    ("duckdb", "spread_delete", f"embedded, {DELETE}", 150_000, 150_000, False),
    ("postgres", "spread_delete", f"PostgreSQL, {DELETE}", None, None, True),
]


def last_run_figures(readme: Path = README) -> dict[str, float]:
    """Workload label -> rows/s in the first table under "### Last run" (empty when that
    table has no such rows yet)."""
    try:
        text = readme.read_text()
    except OSError:
        return {}
    _, found, section = text.partition("### Last run")
    figures: dict[str, float] = {}
    in_table = False
    for line in section.splitlines() if found else []:
        if not line.startswith("|"):
            if in_table:
                break
            continue
        in_table = True
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and (m := re.match(r"([\d,]+) rows/s", cells[2])):
            figures[cells[0]] = float(m.group(1).replace(",", ""))
    return figures


def _reference_row(label: str, values: list[float], note: str) -> Row:
    return Row(
        label,
        "reference",
        fmt_rate(median(values)) + fmt_runs(values, lambda v: f"{v:,.0f}") + note,
        "1.00x" if values else "—",
    )


def spread_rows(
    runs: Sequence[BackendRun],
    references: Sequence[ReferenceResult],
    large: bool,
    last_1m: dict[str, float],
) -> list[Row]:
    """The reference upsert, each backend's spread upsert, the reference delete, each
    backend's spread delete."""
    rows: list[Row] = []
    table = f"{references[0].table_rows:,}" if references else "?"
    file_mb = median([r.file_bytes / 1e6 for r in references])
    reference_rows = {
        "spread_upsert": (
            "reference: the spread upsert straight into DuckDB, a table of the same "
            f"{table} rows *without* an index, `DELETE ... USING` the staged keys then "
            "`INSERT`, 60,000 rows per transaction, in process",
            [r.upsert_per_s for r in references],
            f"; its file + wal after the reference's phases {file_mb:,.0f} MB",
        ),
        "spread_delete": (
            "reference: the spread delete straight into DuckDB, the same table after the "
            "reference upsert, `DELETE ... USING` the staged keys, 60,000 keys per transaction",
            [r.delete_per_s for r in references if r.delete_rows],
            "",
        ),
    }
    for spread_phase, (ref_label, ref_values, note) in reference_rows.items():
        if ref_values:
            rows.append(_reference_row(ref_label, ref_values, note))
        reference = median(ref_values)
        for backend, phase, label, minimum, large_minimum, relative in SPREAD_ROWS:
            if phase != spread_phase:
                continue
            quoted = last_1m.get(label) if large and relative else None

            def judge(
                value: float,
                minimum=minimum,
                large_minimum=large_minimum,
                quoted=quoted,
                relative=relative,
            ) -> tuple[str, bool | None]:
                parts: list[str] = []
                ok: bool | None = None
                floor = large_minimum if large else minimum
                if floor is not None:
                    parts.append(f"≥ {floor:,} rows/s")
                    ok = value >= floor
                if large and relative and quoted:
                    parts.append(
                        f"≥ {LARGE_RATIO}x the 1M-row figure in bench/README.md's Last run"
                        f" ({quoted:,.0f} rows/s, so ≥ {LARGE_RATIO * quoted:,.0f})"
                    )
                    ok = ok is not False and value >= LARGE_RATIO * quoted
                elif large and relative:
                    parts.append(
                        f"≥ {LARGE_RATIO}x the 1M-row figure (none quoted in bench/README.md's"
                        " Last run yet: not judged)"
                    )
                return " and ".join(parts) or "— (reported)", ok

            def ratio(value: float, reference: float = reference) -> str:
                if math.isnan(value) or math.isnan(reference) or not reference:
                    return "—"
                return f"{value / reference:.2f}x reference"

            if row := throughput_row(runs, backend, phase, label, judge, ratio):
                rows.append(row)
    return rows


def disk_and_scale_rows(runs: Sequence[BackendRun], large: bool, overrides: str) -> list[Row]:
    """The data on disk per backend; against 10M rows at default settings, the embedded
    store must hold it: no error, RSS (in summary_rows) and file within their targets."""
    rows: list[Row] = []
    what = {
        "duckdb": "DuckDB database file + wal, largest after any phase or at stop",
        "postgres": "`pg_total_relation_size` of the dataset's table, largest after any phase",
    }
    for backend in ("duckdb", "postgres"):
        mine = [r for r in runs if r.backend == backend and r.data_bytes is not None]
        if not mine:
            continue
        values = [r.data_bytes / 1e6 for r in mine]
        value = median(values)
        judged = large and backend == "duckdb"
        rows.append(
            Row(
                f"data on disk after the {LABELS[backend]} run ({what[backend]})",
                f"≤ {LARGE_FILE_MB:,.0f} MB with 10M rows" if judged else "— (reported)",
                f"{value:,.0f} MB" + fmt_runs(values, lambda v: f"{v:,.0f}"),
                "—",
                verdict(value <= LARGE_FILE_MB) if judged else "—",
            )
        )
    embedded = [r for r in runs if r.backend == "duckdb"]
    if large and embedded:
        problems = [p for r in embedded for p in r.problems]
        log_errors = sum(r.log_errors for r in embedded)
        figure = f"{len(problems)} problems, first: {problems[0][:200]}" if problems else "no error"
        if log_errors:
            figure += f"; {log_errors} error lines in the server log"
        rows.append(
            Row(
                "embedded, a 10M-row dataset loaded through pushes at the defaults of `make run`",
                "no error",
                figure + (f" (settings overridden: {overrides})" if overrides else ""),
                "—",
                "— (not judged: settings overridden)"
                if overrides
                else verdict(not problems and not log_errors),
            )
        )
    return rows
