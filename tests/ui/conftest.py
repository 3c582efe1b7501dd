"""Browser tests: headless Chromium (Debian's `chromium` + `chromium-driver`) driven by
Selenium against a live API + worker (its own Redis database) with the tiny model.

No browser is downloaded: a missing Chromium fails these tests loudly (CI installs it,
see .ci/run). Screenshots go to ZEROUNLEARN_UI_ARTIFACTS (default .cache/ui-artifacts)
and are listed at the end of the run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live import LiveService, live_service
from tests.support.processes import REPO

ARTIFACTS = Path(os.environ.get("ZEROUNLEARN_UI_ARTIFACTS", str(REPO / ".cache" / "ui-artifacts")))
CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1280,1000",
)
_saved: list[Path] = []


def _find(*names: str) -> str | None:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="session")
def ui_live(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2_dir: Path) -> Iterator[LiveService]:
    with live_service(tmp_path_factory.mktemp("ui"), tiny_gpt2_dir, "ui") as svc:
        yield svc


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """A headless Chromium under chromedriver; fails (never skips) when either is absent."""
    binary = os.environ.get("CHROMIUM_BINARY") or _find("chromium", "chromium-browser")
    driver_path = os.environ.get("CHROMEDRIVER") or _find("chromedriver")
    if not binary or not driver_path:
        pytest.fail("headless Chromium is required: install Debian's `chromium` and "
                    "`chromium-driver` (apt-get install -y chromium chromium-driver); "
                    ".ci/run does this", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="zu-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for old in ARTIFACTS.glob("*.png"):
        old.unlink()
    return ARTIFACTS


def screenshot(driver: object, directory: Path, name: str) -> Path:
    path = directory / f"{len(_saved) + 1:02d}-{name}.png"
    assert driver.save_screenshot(str(path)), f"could not save {path}"  # type: ignore[attr-defined]
    _saved.append(path)
    return path


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _saved:
        terminalreporter.section("dashboard screenshots")
        for path in _saved:
            terminalreporter.write_line(str(path))
