"""A hostile callback receiver on 127.0.0.1: it reads the request, then answers one byte
every `interval_s` seconds ("HTTP/1.1 200 OK..." never completes in time), and records
when each connection opened and when the client gave up on it."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


@dataclass
class Visit:
    opened: float  # time.monotonic()
    closed: float | None = None  # when a write failed: the client hung up
    request: bytes = b""


class Tarpit:
    """Accepts connections on `url`; close() stops it."""

    def __init__(self, interval_s: float = 3.0) -> None:
        self.interval_s = interval_s
        self.visits: list[Visit] = []
        self._stop = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            visit = Visit(time.monotonic())
            self.visits.append(visit)
            threading.Thread(target=self._drip, args=(conn, visit), daemon=True).start()

    def _drip(self, conn: socket.socket, visit: Visit) -> None:
        with conn:
            conn.settimeout(5)
            with contextlib.suppress(OSError):
                visit.request = conn.recv(65536)
            for byte in ANSWER:
                # wait interval_s, noticing at once when the client hangs up
                conn.settimeout(self.interval_s)
                try:
                    if conn.recv(1) == b"":
                        visit.closed = time.monotonic()
                        return
                except TimeoutError:
                    pass
                except OSError:
                    visit.closed = time.monotonic()
                    return
                if self._stop.is_set():
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:
                    visit.closed = time.monotonic()
                    return

    def close(self) -> None:
        self._stop.set()
        self.server.close()
