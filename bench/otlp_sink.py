"""An OTLP/HTTP receiver that reads what it gets and drops it: the cheapest fair collector.

Run by serve_variants_bench.py as a process of its own, so its CPU is measured apart from the
service's (a real collector would run elsewhere). Answers every POST with 200 and an empty
protobuf body, over keep-alive connections; on SIGTERM prints one JSON line (posts, bytes) and
exits. Usage: python bench/otlp_sink.py PORT
"""

from __future__ import annotations

import http.server
import json
import signal
import sys
import threading
from types import FrameType


class _Sink(http.server.ThreadingHTTPServer):
    daemon_threads = True
    posts = 0
    received = 0


class _DropSpans(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the exporter's session expects
    server: _Sink

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(size)
        self.server.posts += 1
        self.server.received += size
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silent."""


def main(argv: list[str]) -> int:
    """Serve on 127.0.0.1:PORT until SIGTERM; print the counts."""
    server = _Sink(("127.0.0.1", int(argv[0])), _DropSpans)

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown).start()

    signal.signal(signal.SIGTERM, stop)
    server.serve_forever()
    print(json.dumps({"posts": server.posts, "bytes": server.received}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
