"""Keep-alive connections spread over the gunicorn workers, whatever order they arrive in.

A burst of keep-alive connections used to land on whichever worker woke first, which then did all
the work (service/connection_balance.py). Here real gunicorn workers answer bursts of connections;
the X-Request-ID prefix (random per process) says which worker answered each.
"""

from __future__ import annotations

import http.client
import json
import time
from collections import Counter
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from tests.integration.conftest import loopback_sockets

BODY = json.dumps({"images": [[0] * 392 + [255] * 392]}).encode()
HEADERS = {"Content-Type": "application/json"}


def _not_closed_by_the_server(port: int) -> int:
    """Accepted connections on 127.0.0.1:``port`` that no worker has closed yet (the kernel's
    table): established, or closed by the client and waiting for the worker (CLOSE_WAIT)."""
    return sum(1 for row in loopback_sockets(port) if row[3] in ("01", "08"))


def workers_of_a_burst(url: str, connections: int) -> Counter[str]:
    """Open ``connections`` keep-alive connections at once, then one request on each, twice."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port
    clients = [http.client.HTTPConnection(host, port, timeout=10) for _ in range(connections)]
    try:
        for client in clients:
            client.connect()  # all handshakes first: the workers accept them in a burst
        answered: Counter[str] = Counter()
        for _ in range(2):
            for client in clients:
                client.request("POST", "/predict", body=BODY, headers=HEADERS)
            for client in clients:
                response = client.getresponse()
                response.read()
                assert response.status == 200
                answered[response.headers["X-Request-ID"][:16]] += 1
        return answered
    finally:
        for client in clients:
            client.close()
        # the workers count a connection until they have seen it close: let them see it (as
        # long as that takes on a loaded machine), then publish their counts, so that the next
        # burst meets up-to-date counts (as wrk's runs, 0.3 s apart, do)
        deadline = time.monotonic() + 10
        while _not_closed_by_the_server(port or 80) and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.5)


def test_bursts_of_keep_alive_connections_are_shared_evenly(
    gunicorn_server: Callable[..., Any],
) -> None:
    server = gunicorn_server(workers=2)
    # a worker takes part once its event loop runs, which may be a moment after it loaded the
    # model: wait until both have answered
    deadline = time.monotonic() + 60
    while len(workers_of_a_burst(server.url, 2)) < 2:
        assert time.monotonic() < deadline, "the second worker never answered"
    for connections in (2, 4, 8, 2, 4, 8):
        answered = workers_of_a_burst(server.url, connections)
        # each connection stays with one worker: 2 requests per connection
        per_worker = sorted(count // 2 for count in answered.values())
        assert per_worker == [connections // 2, connections // 2], (connections, answered)
