"""Paging of list endpoints: `limit` and an opaque `cursor`, the next page announced in
a `Link: <...>; rel="next"` header (RFC 8288).

A cursor is the sort key of the last item a page returned, base64url-encoded JSON: the
next page is a keyset query for the items after it (store: an indexed SQL query), so
items added or removed meanwhile never shift a page. A
cursor this API did not issue is a 422 (`invalid_cursor`). The Link target is a
relative reference (path and query, as the request had them, with the new cursor),
which stays right behind a reverse proxy; clients resolve it against the URL they
called. No Link header: this was the last page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar
from urllib.parse import urlencode

from fastapi import Depends, Query, Request, Response

from app.errors import InvalidInput

DEFAULT_LIMIT = 100
"""Items per page when the caller does not say."""
MAX_LIMIT = 1000
"""Most items one page may hold."""
MAX_CURSOR = 512
"""Longest cursor accepted (characters)."""

T = TypeVar("T")
SortKey = list[Any]


@dataclass(frozen=True)
class PageParams:
    """What the caller asked for: at most `limit` items after `after` (None: first page)."""

    limit: int
    after: SortKey | None
    request: Request


def encode_cursor(key: Sequence[Any]) -> str:
    """The cursor that resumes after an item with this sort key."""
    raw = json.dumps(list(key), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> SortKey:
    """The sort key in a cursor; InvalidInput (422) for anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (binascii.Error, ValueError):
        key = None
    if not isinstance(key, list) or not key or not all(
            isinstance(k, str | int) and not isinstance(k, bool) for k in key):
        raise InvalidInput("cursor: not a cursor this API issued (use the Link header)",
                           code="invalid_cursor")
    return key


def page_params(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Most items to return")] =
    DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, description=(
        "Where to resume: the cursor of the previous page's `Link: rel=\"next\"` "
        "header"))] = None,
) -> PageParams:
    return PageParams(limit, decode_cursor(cursor) if cursor else None, request)


Page = Annotated[PageParams, Depends(page_params)]


def _comparable(key: SortKey) -> tuple[tuple[int, Any], ...]:
    # ints before strings at one position, so mixed keys never raise TypeError
    return tuple((0, k) if isinstance(k, int) else (1, str(k)) for k in key)


def after_cursor(items: Iterable[T], key: Callable[[T], SortKey], page: PageParams,
                 descending: bool = False) -> tuple[list[T], SortKey | None]:
    """(this page's items, the sort key to resume after or None) from `items` sorted by
    `key` (descending: newest first); reads nothing but `items`."""
    ordered = sorted(items, key=lambda item: _comparable(key(item)), reverse=descending)
    if page.after is not None:
        start = _comparable(page.after)
        ordered = [item for item in ordered
                   if (_comparable(key(item)) < start if descending
                       else _comparable(key(item)) > start)]
    chosen = ordered[: page.limit]
    more = len(ordered) > page.limit
    return chosen, (key(chosen[-1]) if more and chosen else None)


def keyset_page(fetch: Callable[[int], list[T]], key: Callable[[T], SortKey],
                page: PageParams) -> tuple[list[T], SortKey | None]:
    """A page read by a keyset query: fetch(n) returns up to n items after the cursor,
    in order (the database does the filtering and sorting); one more than the page is
    asked for, to know whether there is a next page."""
    items = fetch(page.limit + 1)
    chosen = items[: page.limit]
    return chosen, (key(chosen[-1]) if len(items) > page.limit and chosen else None)


def string_pair(page: PageParams) -> tuple[str, str] | None:
    """The (created_at, id) a cursor of a list ordered by creation resumes after."""
    if page.after is None:
        return None
    if len(page.after) != 2 or not all(isinstance(k, str) for k in page.after):
        raise InvalidInput("cursor: not a cursor of this list (use the Link header)",
                           code="invalid_cursor")
    return str(page.after[0]), str(page.after[1])


def seq_after(page: PageParams, after: int) -> int:
    """For lists paged by sequence number (the audit trail, its checkpoints): the seq
    the cursor resumes after, else the caller's `after`."""
    if page.after is None:
        return after
    seq = page.after[0]
    if len(page.after) != 1 or not isinstance(seq, int) or seq < 0:
        raise InvalidInput("cursor: not a cursor of this list (use the Link header)",
                           code="invalid_cursor")
    return seq


def link_next(response: Response, page: PageParams, next_key: Sequence[Any] | None) -> None:
    """Announce the next page (when there is one) in the Link header."""
    if next_key is None:
        return
    query = [(k, v) for k, v in page.request.query_params.multi_items() if k != "cursor"]
    query.append(("cursor", encode_cursor(next_key)))
    response.headers["Link"] = f'<{page.request.url.path}?{urlencode(query)}>; rel="next"'


PAGED: dict[int | str, dict[str, Any]] = {200: {
    "description": "A page of items; the Link header names the next page, if any",
    "headers": {"Link": {
        "description": 'The next page: `<path?...&cursor=...>; rel="next"` (RFC 8288); '
                       "absent on the last page",
        "schema": {"type": "string"}}},
}}
"""`responses=` entry of a paged list endpoint (documents the Link header)."""
