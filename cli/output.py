"""What the CLI prints: tables for people, JSON for scripts, a live progress bar."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

BAR_WIDTH = 30


def emit_json(value: Any, out: TextIO | None = None) -> None:
    (out or sys.stdout).write(json.dumps(value, indent=2, sort_keys=True) + "\n")


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ",".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]],
          out: TextIO | None = None) -> None:
    """`columns`: (header, key) pairs; a key may be dotted ("progress.phase")."""
    out = out or sys.stdout
    cells = [[cell(dig(row, key)) for _, key in columns] for row in rows]
    headers = [h for h, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))
              .rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  + "\n")
    if not rows:
        out.write("(none)\n")


def fields(doc: dict[str, Any], keys: Sequence[str], out: TextIO | None = None) -> None:
    """`key: value` lines for one document."""
    out = out or sys.stdout
    width = max(len(k) for k in keys)
    for key in keys:
        out.write(f"{key.ljust(width)}  {cell(dig(doc, key))}\n")


def dig(doc: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        doc = doc.get(part) if isinstance(doc, dict) else None
    return doc


class ProgressBar:
    """`[#####.....]  45% forget running: solve` on stderr, redrawn in place on a
    terminal; elsewhere one line per change of status or phase."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.live = self.out.isatty()
        self.last: tuple[str, str] | None = None

    def update(self, job: dict[str, Any]) -> None:
        progress = job.get("progress") or {}
        fraction = float(progress.get("fraction") or 0.0)
        phase = str(progress.get("phase") or "-")
        status = str(job.get("status"))
        filled = int(round(fraction * BAR_WIDTH))
        line = (f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction * 100:3.0f}% "
                f"{job.get('kind', 'job')} {status}: {phase}")
        if self.live:
            self.out.write("\r" + line.ljust(78))
            self.out.flush()
        elif (status, phase) != self.last:
            self.out.write(line + "\n")
            self.out.flush()
        self.last = (status, phase)

    def close(self) -> None:
        if self.live:
            self.out.write("\n")
            self.out.flush()
