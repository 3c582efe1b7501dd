"""Search files for a text, also inside the compressed payloads they may hold.

Redis/Valkey persistence hides text two ways: RQ stores a job's arguments and results
zlib-compressed, and an RDB file (a `SAVE`, or the base of a rewritten append-only file)
stores strings over 20 bytes LZF-compressed (type byte 0xC3). `find_text` looks at the
raw bytes, at every zlib or gzip stream found at any offset, and at every LZF string of
RDB encoding, recursively (an LZF string may hold a listpack that holds zlib data).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

MAX_DEPTH = 3
ZLIB_LEVEL_BYTES = (0x01, 0x5E, 0x9C, 0xDA)
RDB_ENC_LZF = 0xC3
RDB_MAGIC = (b"REDIS", b"VALKEY")


def lzf_decompress(src: bytes, out_len: int) -> bytes:
    """liblzf's decompression; ValueError when `src` is not LZF of `out_len` bytes."""
    out = bytearray()
    i = 0
    while i < len(src):
        ctrl = src[i]
        i += 1
        if ctrl < 32:  # a literal run of ctrl + 1 bytes
            run = src[i : i + ctrl + 1]
            if len(run) != ctrl + 1:
                raise ValueError("truncated literal")
            out += run
            i += ctrl + 1
            continue
        length = ctrl >> 5  # a back reference
        if length == 7:
            if i >= len(src):
                raise ValueError("truncated reference")
            length += src[i]
            i += 1
        if i >= len(src):
            raise ValueError("truncated reference")
        ref = len(out) - ((ctrl & 0x1F) << 8) - src[i] - 1
        i += 1
        if ref < 0:
            raise ValueError("reference before the start")
        for _ in range(length + 2):
            out.append(out[ref])
            ref += 1
        if len(out) > out_len:
            raise ValueError("longer than announced")
    if len(out) != out_len:
        raise ValueError("shorter than announced")
    return bytes(out)


def _rdb_length(data: bytes, i: int) -> tuple[int, int]:
    """An RDB length at data[i]: (value, next index); ValueError for the special forms."""
    first = data[i]
    kind = first >> 6
    if kind == 0:
        return first & 0x3F, i + 1
    if kind == 1:
        return ((first & 0x3F) << 8) | data[i + 1], i + 2
    if first == 0x80:
        return int.from_bytes(data[i + 1 : i + 5], "big"), i + 5
    if first == 0x81:
        return int.from_bytes(data[i + 1 : i + 9], "big"), i + 9
    raise ValueError("not a length")


def _lzf_strings(data: bytes) -> Iterator[bytes]:
    start = 0
    while (i := data.find(bytes([RDB_ENC_LZF]), start)) >= 0:
        start = i + 1
        try:
            clen, j = _rdb_length(data, i + 1)
            size, j = _rdb_length(data, j)
            if 0 < clen <= len(data) - j and 0 < size < 1 << 28:
                yield lzf_decompress(data[j : j + clen], size)
        except (ValueError, IndexError):
            continue


def _zlib_streams(data: bytes) -> Iterator[bytes]:
    view = memoryview(data)  # slices without copies
    for i in range(len(data) - 1):
        head, level = data[i], data[i + 1]
        if head == 0x78 and level in ZLIB_LEVEL_BYTES:
            wbits = zlib.MAX_WBITS
        elif head == 0x1F and level == 0x8B:
            wbits = zlib.MAX_WBITS | 16  # gzip
        else:
            continue
        try:
            out = zlib.decompressobj(wbits).decompress(view[i:])
        except zlib.error:
            continue
        if out:
            yield out


def payloads(data: bytes, route: str = "raw", depth: int = 0) -> Iterator[tuple[str, bytes]]:
    """(route, bytes): the data itself, then what decompresses out of it."""
    yield route, data
    if depth >= MAX_DEPTH:
        return
    for out in _zlib_streams(data):
        yield from payloads(out, f"{route}>zlib", depth + 1)
    if route != "raw" or data.startswith(RDB_MAGIC):  # LZF has no header: RDB files only
        for out in _lzf_strings(data):
            yield from payloads(out, f"{route}>lzf", depth + 1)


def files_under(*roots: Path) -> list[Path]:
    """Every regular file under the roots (symlinks not followed)."""
    return [p for root in roots for p in sorted(root.rglob("*"))
            if p.is_file() and not p.is_symlink()]


def find_text(paths: Iterable[Path], needles: Iterable[str]) -> list[tuple[str, str, str]]:
    """(needle, file, route) for every needle found, raw or inside compressed data."""
    wanted = [(n, n.encode("utf-8")) for n in needles]
    found = []
    for path in paths:
        for route, data in payloads(path.read_bytes()):
            found += [(text, str(path), route) for text, raw in wanted if raw in data]
    return found
