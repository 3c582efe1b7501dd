"""The jobs list's "Show more" in a real headless Chromium against the live API + worker:
with more jobs than the dashboard's page (100, app/static/js/jobs.js), the list shows
the newest 100 and a "Show more" button; a click adds the next page, in the API's order,
with no job twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from client import Client
from tests.support.live import LiveService, records
from tests.support.processes import TEST_ADMIN_TOKEN
from tests.ui.conftest import screenshot
from tests.ui.test_dashboard import js_errors, sign_in, wait_for

pytestmark = pytest.mark.timeout(600)
PAGE = 100
"""The dashboard's page of jobs (PAGE in app/static/js/jobs.js)."""
SECOND_PAGE = 15
"""Jobs beyond the first page."""
ROW_IDS = ("return [...document.querySelectorAll('#jobs-table tr[data-job]')]"
           ".map(r => r.dataset.job)")


def unsealed_version(api: Client, model_id: str) -> str:
    """The newest version a verification may use without an admin's override (an
    earlier test of this session may have sealed v0)."""
    return [v["id"] for v in api.list_versions(model_id) if not v.get("sealed")][-1]


def make_jobs(api: Client, model_id: str, count: int) -> None:
    """`count` real jobs, one-record verifications (about 0.3 s each on the tiny model);
    returns once every one has ended. (Not cancelled to save time: a DELETE racing the
    worker that is just finishing the job answers 500 today, app.queue.JobQueue.cancel.)"""
    version = unsealed_version(api, model_id)
    ids = [api.verify(model_id, version, records(i % 40))["job_id"] for i in range(count)]
    for job_id in ids:
        api.wait_job(job_id, timeout=300, check=False)


def shown_ids(driver: WebDriver, count: int) -> list[str]:
    """The job ids the list shows, once it shows at least `count` rows."""
    WebDriverWait(driver, 60, poll_frequency=0.2).until(
        lambda d: len(d.execute_script(ROW_IDS)) >= count,
        message=f"{count} rows in the jobs list")
    return list(driver.execute_script(ROW_IDS))


def test_show_more_adds_the_next_page_without_duplicates(
    ui_live: LiveService, browser: WebDriver, artifacts: Path
) -> None:
    driver, url, mid = browser, ui_live.url, ui_live.model["id"]
    with ui_live.client() as api:
        make_jobs(api, mid, max(0, PAGE + SECOND_PAGE - len(api.list_jobs())))
        newest_first = [j["id"] for j in api.list_jobs(newest_first=True)]
    total = len(newest_first)
    assert PAGE < total <= 2 * PAGE, total  # a second page, and it is the last one

    driver.get(f"{url}/")
    driver.execute_script("sessionStorage.clear()")
    driver.refresh()  # a fresh page: the list starts at one page
    sign_in(driver, url, TEST_ADMIN_TOKEN, "admin")
    driver.get(f"{url}/#/jobs")
    first = shown_ids(driver, PAGE)
    assert first == newest_first[:PAGE]
    for _ in range(3):  # the list re-renders every few seconds: click the current button
        try:
            wait_for(driver, "#jobs-more", text="Show more").click()
            break
        except StaleElementReferenceException:
            continue

    shown = shown_ids(driver, total)
    assert shown[:PAGE] == first  # the first page stays, the next one follows it
    assert shown == newest_first
    assert len(set(shown)) == len(shown)
    assert not driver.find_elements(By.CSS_SELECTOR, "#jobs-more")  # nothing further
    screenshot(driver, artifacts, "jobs-show-more")
    assert js_errors(driver) == []
