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

BODY = json.dumps({"images": [[0] * 392 + [255] * 392]}).encode()
HEADERS = {"Content-Type": "application/json"}


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
        # the workers count a connection until they have seen it close: let them see it, so
        # that the next burst meets up-to-date counts (as wrk's runs, 0.3 s apart, do)
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
