"""The benchmark's pushing connection: one keep-alive HTTP/1.1 connection (stdlib).

The loaders share this 2-core machine with the server they measure. httpx spends about
3.5 ms of CPU on each 1 MB push here, as much as a third of what the server spends on
it; `http.client` sends the same request for a fraction of that. What the bench
measures is then the server, not its load generator: in a deployment the pushing
programs run elsewhere.
"""

from __future__ import annotations

import http.client
import json
import urllib.parse
from dataclasses import dataclass
from typing import Any


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


class PushConnection:
    def __init__(self, url: str, headers: dict[str, str], timeout: float) -> None:
        parts = urllib.parse.urlsplit(url)
        self._connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self._headers = headers

    def request(self, method: str, path: str, body: bytes | None = None) -> Answer:
        """Send one request on the open connection (reconnecting if the server closed it)."""
        self._connection.request(method, path, body=body, headers=self._headers)
        response = self._connection.getresponse()
        data = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        return Answer(response.status, headers, data)

    def close(self) -> None:
        self._connection.close()
