"""One callback POST with a total deadline, to the address that was checked.

Why not httpx: its timeouts bound each network operation, so a receiver that sends one
byte every 3 s never trips a 5 s read timeout and holds the attempt for as long as it
likes. Here one deadline covers the whole attempt (`resolve_and_post`: name resolution,
connect, TLS handshake, sending, and the response's status line): every socket operation
gets the time that is left, and a timer shuts the socket down when the deadline passes,
which ends any blocked call. getaddrinfo has no timeout and cannot be interrupted, so
the name is resolved in a daemon thread that the attempt waits for only until the
deadline (a hung resolver then holds that thread, not the attempt).

The host name is resolved once (`resolve`): the addresses are checked (a name that
resolves to a loopback, private or link-local address is refused, DNS rebinding) and the
connection goes to the first of them, so a second DNS answer cannot send it elsewhere.
The Host header and the TLS server name (SNI, certificate check) stay the URL's host;
the certificate is checked against the system's CAs plus ZEROUNLEARN_CALLBACK_CA_FILE
(`tls_context`). Only the status line of the answer is read; redirects are never
followed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

LOOPBACK_NAMES = ("localhost",)
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_STATUS_LINE = 8192
"""Bytes read at most before the status line must have ended."""
USER_AGENT = "zerounlearn-callbacks/1"


class DeliveryFailed(Exception):
    """The attempt got no HTTP status; `reason` is short and holds no URL."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_loopback_host(host: str) -> bool:
    """A loopback name or IP literal (brackets allowed)."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _literal(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        return None


def resolve(host: str, port: int) -> str:
    """The IP address to connect to for `host` (DeliveryFailed when refused).

    An IP literal is used as it is (the allow-list judged it); a loopback name must
    resolve to a loopback address; any other name must resolve only to public
    addresses.
    """
    literal = _literal(host)
    if literal is not None:
        return literal
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP)
    except OSError:
        raise DeliveryFailed("refused: the host does not resolve") from None
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
    if not addresses:
        raise DeliveryFailed("refused: the host does not resolve")
    if host in LOOPBACK_NAMES:
        loopback = [a for a in addresses if a.is_loopback]
        if not loopback:
            raise DeliveryFailed("refused: a loopback name resolves elsewhere")
        return str(loopback[0])
    if any(not a.is_global for a in addresses):
        raise DeliveryFailed("refused: the host resolves to an internal address")
    return str(addresses[0])


Resolver = Callable[[str, int], str]
"""(host, port) -> the checked address to connect to, or DeliveryFailed: `resolve`, or a
slower or stricter one given to app.callback_delivery.CallbackDispatcher."""


def resolve_within(host: str, port: int, timeout_s: float,
                   resolver: Resolver = resolve) -> str:
    """resolver(host, port), waited for at most timeout_s (DeliveryFailed("deadline
    exceeded") beyond). It runs in a daemon thread: a resolver stuck past the deadline
    keeps only that thread until it returns."""
    outcome: list[str | DeliveryFailed] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(resolver(host, port))
        except DeliveryFailed as exc:
            outcome.append(exc)
        except Exception as exc:  # an answer, whatever the resolver raised
            outcome.append(DeliveryFailed(f"resolution failed: {type(exc).__name__}"))
        finally:
            done.set()

    threading.Thread(target=run, daemon=True, name="callback-resolve").start()
    if not done.wait(timeout_s):
        raise DeliveryFailed("deadline exceeded")
    if isinstance(outcome[0], DeliveryFailed):
        raise outcome[0]
    return outcome[0]


def tls_context(ca_file: Path | None = None) -> ssl.SSLContext:
    """Certificate checks of HTTPS callbacks: the system's CAs, plus those of `ca_file`
    (PEM; ZEROUNLEARN_CALLBACK_CA_FILE) for receivers behind a private CA. Host names
    are checked (against the URL's host, whatever address the connection goes to)."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def resolve_and_post(url: str, headers: dict[str, str], body: bytes, deadline_s: float,
                     *, resolver: Resolver = resolve,
                     tls: ssl.SSLContext | None = None) -> int:
    """One attempt within deadline_s in all: the URL's host resolved and checked
    (`resolver`), then `post` to that address with the time left."""
    deadline = time.monotonic() + deadline_s
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    address = resolve_within(host, parts.port or DEFAULT_PORTS.get(parts.scheme, 443),
                             deadline_s, resolver)
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryFailed("deadline exceeded")
    return post(url, address, headers, body, left, tls)


def _request_bytes(parts: SplitResult, headers: dict[str, str], body: bytes) -> bytes:
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    lines = [f"POST {target} HTTP/1.1", f"Host: {parts.netloc}",
             f"User-Agent: {USER_AGENT}", f"Content-Length: {len(body)}",
             "Connection: close"]
    for name, value in headers.items():
        if "\r" in name + value or "\n" in name + value:
            raise DeliveryFailed("refused: a header holds a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _status(line: bytes) -> int:
    fields = line.split(None, 2)
    if len(fields) < 2 or not fields[0].startswith(b"HTTP/") or not fields[1].isdigit():
        raise DeliveryFailed("not an HTTP answer")
    return int(fields[1])


def post(url: str, address: str, headers: dict[str, str], body: bytes,
         deadline_s: float, tls: ssl.SSLContext | None = None) -> int:
    """POST `body` to `url`, connecting to `address`; the answer's status code.

    DeliveryFailed("deadline exceeded") when the attempt took longer than deadline_s
    in all; DeliveryFailed(<error type>) for a network error.
    """
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    request = _request_bytes(parts, headers, body)
    deadline = time.monotonic() + deadline_s

    def left() -> float:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeliveryFailed("deadline exceeded")
        return remaining

    holder: list[socket.socket] = []
    expired = threading.Event()

    def cut() -> None:  # the deadline: end whatever call is blocked on the socket
        expired.set()
        for sock in holder:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(deadline_s, cut)
    timer.daemon = True
    timer.start()
    try:
        raw = socket.create_connection((address, port), timeout=left())
        holder.append(raw)
        if expired.is_set():
            raise DeliveryFailed("deadline exceeded")
        sock: socket.socket = raw
        if parts.scheme == "https":
            context = tls or ssl.create_default_context()
            raw.settimeout(left())
            sock = context.wrap_socket(raw, server_hostname=parts.hostname)
            holder.append(sock)
        with sock:
            sock.settimeout(left())
            sock.sendall(request)
            received = b""
            while b"\r\n" not in received:
                sock.settimeout(left())
                chunk = sock.recv(1024)
                if not chunk:
                    if expired.is_set():
                        raise DeliveryFailed("deadline exceeded")
                    raise DeliveryFailed("connection closed before an answer")
                received += chunk
                if len(received) > MAX_STATUS_LINE:
                    raise DeliveryFailed("not an HTTP answer")
            return _status(received.split(b"\r\n", 1)[0])
    except DeliveryFailed:
        raise
    except TimeoutError:
        raise DeliveryFailed("deadline exceeded") from None
    except OSError as exc:
        if expired.is_set():
            raise DeliveryFailed("deadline exceeded") from None
        raise DeliveryFailed(type(exc).__name__) from None
    finally:
        timer.cancel()
        for sock in holder:
            with contextlib.suppress(OSError):
                sock.close()
