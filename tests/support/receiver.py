"""A real HTTP callback receiver on 127.0.0.1 for service tests (the test stacks allow
that host): it records every delivery and can fail the first few with a 500."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """POSTs to `url` are recorded in `calls` ({"headers", "raw"}); the first `failures`
    of them are answered 500, the rest 200. close() stops the server."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers["content-length"]))
                receiver.calls.append({"headers": dict(self.headers), "raw": raw})
                self.send_response(500 if len(receiver.calls) <= receiver.failures else 200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def bodies(self) -> list[dict[str, Any]]:
        """The deliveries' JSON bodies, in order."""
        return [json.loads(call["raw"]) for call in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
