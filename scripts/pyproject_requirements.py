"""Print the project's requirements from pyproject.toml, one a line: base + named extras.

The Docker images install their dependency layer from this list before the code is
copied in, so a code change does not reinstall the dependencies:

    python scripts/pyproject_requirements.py engine > /tmp/requirements.txt
    pip install -c constraints.txt -r /tmp/requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


class UnknownExtra(ValueError):
    """An extra that pyproject.toml does not define."""


def requirements(extras: list[str], pyproject: Path = PYPROJECT) -> list[str]:
    """The base dependencies, then each named extra's, in pyproject order."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})
    unknown = [name for name in extras if name not in optional]
    if unknown:
        raise UnknownExtra(f"unknown extra(s): {', '.join(unknown)} "
                           f"(defined: {', '.join(sorted(optional))})")
    out = list(project.get("dependencies", []))
    for name in extras:
        out.extend(optional[name])
    return out


def main(argv: list[str]) -> int:
    try:
        lines = requirements(argv)
    except UnknownExtra as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    sys.stdout.write("".join(f"{line}\n" for line in lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
