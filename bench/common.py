"""Shared helpers of the service, storage and GPU benchmarks: machine description,
percentiles, markdown tables and writing results under bench/results/.

Torch-free on purpose: bench_api_latency.py measures the API, which never imports
torch; scripts that use torch add what they know about it (version, GPU) themselves.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"


def git_output(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                             timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else platform.processor()."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> list[float] | None:
    """1/5/15-minute load: other processes on a shared machine skew the timings."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(**extra: Any) -> dict[str, Any]:
    """Where and when a benchmark ran (plus `extra`, e.g. torch version, GPU name)."""
    status = git_output("status", "--porcelain")
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": git_output("rev-parse", "HEAD"),
        "git_dirty": bool(status) if status is not None else None,
        "load_average_start": load_average(),
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
        **extra,
    }


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]) of a non-empty sequence."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def fmt(value: Any, digits: int = 2) -> str:
    """A table cell: floats rounded, None as '-'."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], digits: int = 2) -> str:
    """A markdown table (floats rounded to `digits`)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(c, digits) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_line(info: dict[str, Any]) -> str:
    """One markdown line naming the machine and the run."""
    parts = [f"date {info.get('date')}", f"cpu {info.get('cpu')} x{info.get('cpu_count')}"]
    if info.get("gpu"):
        parts.append(f"gpu {info['gpu']}")
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    dirty = " (dirty)" if info.get("git_dirty") else ""
    parts.append(f"git {str(info.get('git_commit'))[:12]}{dirty}")
    parts.append(f"load average {info.get('load_average_start')} -> "
                 f"{info.get('load_average_end')}")
    return "Machine: " + ", ".join(parts) + "."


def write_results(name: str, data: dict[str, Any], markdown: str,
                  out: Path | None = None) -> tuple[Path, Path]:
    """Write `<out or bench/results/name>.json` and `.md`; returns both paths."""
    data.setdefault("machine", {})["load_average_end"] = load_average()
    base = Path(out) if out is not None else RESULTS_DIR / name
    if base.suffix in (".json", ".md"):
        base = base.with_suffix("")
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = base.with_suffix(".json"), base.with_suffix(".md")
    json_path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    md_path.write_text(machine_line(data["machine"]) + "\n\n" + markdown.rstrip() + "\n")
    return json_path, md_path
