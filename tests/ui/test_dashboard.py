"""The dashboard in a real headless Chromium against a real API + worker: sign in with a
key, submit a forget request through the form, watch it finish, open the verification
report, compare two versions, roll back; then the same pages as a viewer. Each page is
saved as a PNG screenshot (see conftest)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.live import LiveService, records
from tests.support.processes import TEST_ADMIN_TOKEN
from tests.support.tiny_model import TINY_REQUEST_HPARAMS
from tests.ui.conftest import screenshot

pytestmark = pytest.mark.timeout(600)


def wait_for(driver: WebDriver, css: str, timeout: float = 60, text: str | None = None) -> Any:
    """The first element matching `css` (containing `text`), once it exists."""

    def found(d: WebDriver) -> Any:
        try:
            for element in d.find_elements(By.CSS_SELECTOR, css):
                if text is None or text in element.text:
                    return element
        except StaleElementReferenceException:  # the page re-rendered meanwhile
            return False
        return False

    return WebDriverWait(driver, timeout, poll_frequency=0.2).until(
        found, message=f"{css!r}{f' with {text!r}' if text else ''} within {timeout:g} s"
    )


def sign_in(driver: WebDriver, url: str, key: str, role: str) -> None:
    driver.get(f"{url}/#/models")
    wait_for(driver, "#api-key").send_keys(key)
    driver.find_element(By.ID, "key-save").click()
    wait_for(driver, "#whoami", text=role)


def answer_prompt(driver: WebDriver, text: str) -> None:
    """Type `text` into the page's window.prompt (the reason of a seal override)."""
    alert = WebDriverWait(driver, 30, poll_frequency=0.2).until(
        lambda d: d.switch_to.alert, message="a prompt for the override's reason")
    assert "sealed" in alert.text
    alert.send_keys(text)
    alert.accept()


def js_errors(driver: WebDriver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def test_forget_watch_report_rollback(ui_live: LiveService, browser: WebDriver,
                                      artifacts: Path) -> None:
    driver, url, mid = browser, ui_live.url, ui_live.model["id"]
    secret = records(5)[0]
    sign_in(driver, url, TEST_ADMIN_TOKEN, "admin")

    # models: status, active version, architecture
    row = wait_for(driver, f"tr[data-model='{mid}']")
    assert "ready" in row.text and "gpt2" in row.text and "v0" in row.text
    screenshot(driver, artifacts, "models")

    # the forget form, records as a table
    driver.get(f"{url}/#/forget")
    wait_for(driver, "#forget-form")
    assert "null" not in driver.find_element(By.ID, "view").text  # no empty parts rendered
    cells = driver.find_elements(By.CSS_SELECTOR, "#records-table tbody tr input")
    values = {"prompt": secret["prompt"], "answer": secret["answer"],
              "neighbors": " | ".join(f"{n['prompt']} => {n['answer']}"
                                      for n in secret["neighbors"])}
    for cell in cells:
        if cell.get_attribute("name") in values:
            cell.send_keys(values[cell.get_attribute("name")])
    driver.find_element(By.CSS_SELECTOR, "#forget-form details summary").click()
    driver.find_element(By.ID, "forget-hparams").send_keys(json.dumps(TINY_REQUEST_HPARAMS))
    screenshot(driver, artifacts, "forget-form")
    driver.find_element(By.ID, "forget-submit").click()

    # the job page: live status with a progress bar, until it succeeded
    wait_for(driver, "#job-status", 30)
    assert "/#/jobs/j-" in driver.current_url
    forget_job = driver.current_url.rsplit("/", 1)[1]
    wait_for(driver, ".progress[data-phase]")
    wait_for(driver, "#job-status", 300, text="succeeded")
    wait_for(driver, "[data-metric='efficacy']")
    screenshot(driver, artifacts, "forget-job")

    # the verification report the form asked for
    wait_for(driver, "#open-report", 60).click()
    wait_for(driver, "#report", 300)
    report = driver.find_element(By.ID, "records-report").text
    assert "forgotten" in report and secret["prompt"] in report  # the text typed here
    assert "1 of 1 facts forgotten" in driver.find_element(By.TAG_NAME, "main").text
    for metric in ("efficacy", "generalization", "specificity", "perplexity"):
        wait_for(driver, f"[data-metric='{metric}']")
    screenshot(driver, artifacts, "verification-report")

    # jobs list
    driver.get(f"{url}/#/jobs")
    wait_for(driver, f"tr[data-job='{forget_job}']", text="succeeded")
    screenshot(driver, artifacts, "jobs")

    # the same prompt against v0 and v1, side by side
    driver.get(f"{url}/#/compare?model={mid}")
    wait_for(driver, "#version-b option[value='v1']")
    driver.find_element(By.ID, "compare-prompt").send_keys(secret["prompt"])
    assert "(sealed)" in wait_for(driver, "#version-a option[value='v0']").text
    driver.find_element(By.ID, "compare-submit").click()
    answer_prompt(driver, "ui test: compare with the sealed v0")  # v0 is sealed: a reason
    wait_for(driver, "#output-a strong", 120)
    wait_for(driver, "#output-b strong", 120)
    screenshot(driver, artifacts, "compare")

    # lineage, then roll back to v0 with the confirmation
    driver.get(f"{url}/#/models/{mid}")
    wait_for(driver, "#active-version", text="v1")
    assert "1 record" in wait_for(driver, ".node[data-version='v1']").text
    wait_for(driver, ".node[data-version='v0'] [data-sealed='v0']")
    screenshot(driver, artifacts, "lineage")
    wait_for(driver, "button[data-activate='v0']").click()
    answer_prompt(driver, "ui test: incident rollback")
    dialog = wait_for(driver, "dialog#confirm[open]")
    assert "Roll back" in dialog.text
    screenshot(driver, artifacts, "rollback-confirm")
    driver.find_element(By.ID, "confirm-ok").click()
    wait_for(driver, "#active-version", text="v0")
    screenshot(driver, artifacts, "rolled-back")
    with ui_live.client() as api:
        assert api.get_model(mid)["active_version"] == "v0"
        overrides = [e["detail"] for e in api.audit(limit=1000)["items"]
                     if e["action"] == "version.seal_overridden"]
    assert [(o["action"], o["reason"]) for o in overrides] == [
        ("generate", "ui test: compare with the sealed v0"),
        ("activate", "ui test: incident rollback")]
    assert js_errors(driver) == []

    # the request text is not in the page once it is reloaded (only what was typed, kept
    # in memory, was ever shown)
    driver.get(f"{url}/#/jobs/{forget_job}")
    driver.refresh()
    wait_for(driver, "#job-status", text="succeeded")
    assert secret["prompt"] not in driver.page_source


def test_a_failed_job_says_why_in_plain_words(ui_live: LiveService, browser: WebDriver,
                                              artifacts: Path) -> None:
    driver, url, mid = browser, ui_live.url, ui_live.model["id"]
    with ui_live.client() as api:
        # an in-range but harmful edit, stopped by the quality gate (tightened here)
        harmful = {"layers": [1], "lr": 0.1, "steps": 50, "stop_when_forgotten": False}
        accepted = api.forget(mid, records(7), method="gradient-ascent", hparams=harmful,
                              quality_gate={"max_neighbor_drop": 0})
        job = api.wait_job(accepted["job_id"], timeout=120, check=False)
    assert job["status"] == "failed" and job["error"]["code"] == "quality_gate_failed"
    if "Forget key" not in driver.page_source or not driver.find_elements(
            By.CSS_SELECTOR, "#whoami[data-role='admin']"):
        sign_in(driver, url, TEST_ADMIN_TOKEN, "admin")
    driver.get(f"{url}/#/jobs/{job['id']}")
    box = wait_for(driver, ".error-box")
    assert "quality gate" in box.text.lower()
    screenshot(driver, artifacts, "failed-job")


def test_viewer_sees_but_cannot_act(ui_live: LiveService, browser: WebDriver,
                                    artifacts: Path) -> None:
    driver, url, mid = browser, ui_live.url, ui_live.model["id"]
    with ui_live.client() as api:
        viewer = api.create_key("viewer")
    driver.get(f"{url}/")
    driver.find_element(By.ID, "key-clear").click()
    sign_in(driver, url, viewer["key"], "viewer")
    assert not driver.find_element(By.CSS_SELECTOR, "nav a[data-nav='forget']").is_displayed()
    driver.get(f"{url}/#/models/{mid}")
    wait_for(driver, "button[data-activate='v0']")
    buttons = driver.find_elements(By.CSS_SELECTOR, "button[data-activate]")
    assert buttons and not any(b.is_enabled() for b in buttons)
    driver.get(f"{url}/#/models")
    wait_for(driver, f"tr[data-model='{mid}']")
    assert not driver.find_elements(By.ID, "register-form")
    screenshot(driver, artifacts, "viewer-lineage")
    driver.execute_script("sessionStorage.clear()")
