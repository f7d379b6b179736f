"""The latency probe: a ninth client, apart from the load, in a process of its own.

One 1 MB push every 250 ms to its own dataset; its send → 202 times are "the
acknowledgement latency of a 1 MB push while the above runs". It runs in its own
process so that what it measures is the server, not the GIL of the bench process,
whose eight loading threads are busy sending and polling.
"""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection

from pushclient import PushConnection

PROBE_DATASET = "bench_probe"
PROBE_INTERVAL = 0.25


def _probe(url: str, api_key: str, body: bytes, results: Connection) -> None:
    headers = {"x-api-key": api_key, "content-type": "application/json"}
    latencies: list[tuple[float, float]] = []  # (sent, wall clock; ms to the answer)
    http = PushConnection(url, headers, timeout=60)
    http.request("GET", "/readyz")  # connected before the first measured push
    results.send("ready")
    while not results.poll(PROBE_INTERVAL):
        sent_at, sent = time.time(), time.perf_counter()
        response = http.request("POST", f"/v1/datasets/{PROBE_DATASET}/records?method=insert", body)
        if response.status in (200, 202):
            latencies.append((sent_at, (time.perf_counter() - sent) * 1000))
    http.close()
    results.send(latencies)


class LatencyProbe:
    def __init__(self, url: str, api_key: str, body: bytes) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_probe, args=(url, api_key, body, child), daemon=True
        )

    def start(self) -> None:
        self._process.start()
        self._conn.recv()  # connected: the first push goes out one interval later

    def stop(self) -> list[tuple[float, float]]:
        """(when sent, wall clock; milliseconds to its 202) for each accepted probe push."""
        self._conn.send("stop")
        latencies: list[tuple[float, float]] = self._conn.recv()
        self._process.join()
        return latencies
