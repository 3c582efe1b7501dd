"""Following the API's pages: the `Link: <...>; rel="next"` header (RFC 8288)."""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

_LINK = re.compile(r'<([^>]*)>\s*((?:;\s*[^;,]*)*)')
_REL = re.compile(r';\s*rel\s*=\s*"?([^";,]*)"?', re.IGNORECASE)


def next_link(header: str | None, base: str) -> str | None:
    """The rel="next" target of a Link header, resolved against `base` (the URL that
    was called); None without one. A target on another origin is ignored: the client
    would send it its API key."""
    if not header:
        return None
    for match in _LINK.finditer(header):
        rels = {r.lower() for rel in _REL.findall(match.group(2)) for r in rel.split()}
        if "next" not in rels:
            continue
        link: str = match.group(1)  # typeshed types a group as `str | Any`
        target = urljoin(base, link)
        here, there = urlsplit(base), urlsplit(target)
        if (here.scheme, here.netloc) != (there.scheme, there.netloc):
            return None
        return target
    return None
