"""The web console in a real headless Chromium (Debian's chromium + chromedriver, selenium).

Lists executions (and sees a new one appear live, with no reload), opens one, cancels a
running one and answers an inquiry through its form, then saves a screenshot of the
execution page as a test artifact (build/test-artifacts/, or $ATTUNE_TEST_ARTIFACTS).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REPO
from tests.console.server import console
from tests.helpers import poll_until, start, wait_done

pytestmark = [pytest.mark.console, pytest.mark.e2e]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
ARTIFACTS = Path(os.environ.get("ATTUNE_TEST_ARTIFACTS", REPO / "build" / "test-artifacts"))


@pytest.fixture
def browser() -> Iterator[object]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        message = "headless Chromium is not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("ATTUNE_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="attune-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--window-size=1400,1800",
        f"--user-data-dir={profile}",
    ):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.implicitly_wait(0)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def until(check: Callable[[], object], timeout: float = 20.0) -> object:
    # The page may be swapping a region: an error is "not yet".
    return poll_until(
        check, "waiting in the browser", timeout=timeout, interval=0.1, ignore=(Exception,)
    )


def live(find: Callable[..., object]) -> None:
    """Wait until the page is subscribed and has caught up once (its first refresh)."""
    from selenium.webdriver.common.by import By

    until(lambda: find(By.CSS_SELECTOR, "#live-execution[data-refreshed]"))


def test_list_open_cancel_and_answer_in_a_browser(
    conn: psycopg.Connection,
    dsn: str,
    register: Callable[[str], None],
    worker_thread: Callable[..., object],
    browser: object,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    driver: object = browser
    find = driver.find_element  # type: ignore[attr-defined]
    register("examples")
    register("console")
    worker_thread()
    done = start(conn, "examples.hello_join", {"name": "Ada"})
    wait_done(conn, done)
    slow = start(conn, "console.slow")
    ask = start(conn, "console.ask_count")
    until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM attune.inquiry WHERE workflow_execution_id = %s", (ask,)
            ).fetchone()
            == (1,)
        )
    )
    with console(dsn, allow_control=True) as base:
        # The list, and a new execution appearing live (server-sent events, no reload).
        driver.get(base + "/executions")  # type: ignore[attr-defined]
        for execution_id in (done, slow, ask):
            find(By.CSS_SELECTOR, f'tr[data-id="{execution_id}"]')
        until(lambda: "on" in (find(By.ID, "live-state").get_attribute("class") or ""))
        fresh = start(conn, "examples.hello_join", {"name": "Live"})
        until(lambda: find(By.CSS_SELECTOR, f'tr[data-id="{fresh}"]'))
        assert driver.execute_script("return performance.navigation.type") == 0  # type: ignore[attr-defined]

        # Open the finished one from the list: its graph and tasks.
        find(By.LINK_TEXT, str(done)).click()
        until(lambda: find(By.ID, "exec-status").get_attribute("data-status") == "succeeded")
        assert find(By.CSS_SELECTOR, 'svg.graph g.node[data-task="greet"]')
        assert len(driver.find_elements(By.CSS_SELECTOR, "tr[data-task]")) >= 3  # type: ignore[attr-defined]

        # Cancel the running one, killing its sleeping task.
        driver.get(f"{base}/executions/{slow}")  # type: ignore[attr-defined]
        live(find)
        Select(find(By.ID, "cancel-policy")).select_by_value("cancel_running")
        find(By.ID, "btn-cancel").click()
        until(lambda: "cancel:" in find(By.CSS_SELECTOR, ".notice").text)
        until(lambda: find(By.ID, "exec-status").get_attribute("data-status") == "canceled")
        assert wait_done(conn, slow)["status"] == "canceled"

        # Answer the inquiry: a wrong value is refused with the reason, a right one accepted.
        driver.get(f"{base}/executions/{ask}")  # type: ignore[attr-defined]
        live(find)
        count = find(By.NAME, "count")
        count.clear()
        count.send_keys("0")
        find(By.CSS_SELECTOR, ".answer-submit").click()
        until(lambda: "minimum" in find(By.CSS_SELECTOR, ".problem").text)
        live(find)
        count = find(By.NAME, "count")
        count.clear()
        count.send_keys("2")
        find(By.NAME, "urgent").click()
        find(By.CSS_SELECTOR, ".answer-submit").click()
        until(lambda: "responded" in find(By.CSS_SELECTOR, ".notice").text)
        until(lambda: find(By.ID, "exec-status").get_attribute("data-status") == "succeeded")
        assert wait_done(conn, ask)["output"] == {"copies": 2}

        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        shot = ARTIFACTS / "console-execution.png"
        driver.get(f"{base}/executions/{done}")  # type: ignore[attr-defined]
        find(By.CSS_SELECTOR, "svg.graph")
        assert driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
        assert shot.stat().st_size > 10_000
