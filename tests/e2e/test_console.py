"""The operator's console in a real browser: headless Chromium (Debian's `chromium`, driven by Playwright) signs in
through Envoy at /console/, searches a task, opens its timeline, cancels a task, drains a provider and makes a key
as an admin, and finds no button as a viewer (whose calls the API refuses anyway). A screenshot of each view is
written to .local/test-artifacts/console/."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Route, sync_playwright

from devstack.stack import LocalStack
from tests.conftest import wait_for_status, wait_until
from tests.e2e.helpers import SEEDREAM
from tests.e2e.test_admin import PAUSE_TAKES_EFFECT_SECONDS

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / ".local" / "test-artifacts" / "console"
VIEWS = ["overview", "tasks", "providers", "keys", "audit"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (scripts/install-deps.sh installs it)"
)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield launched
        launched.close()


def signed_in(browser: Browser, stack: LocalStack, key: str) -> Page:
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"http://127.0.0.1:{stack.ports.envoy}/console/")
    page.fill("#key", key)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    return page


def open_view(page: Page, view: str, heading: str) -> None:
    page.evaluate("view => { location.hash = view; }", f"#/{view}")
    page.wait_for_selector(f"h1:text-is('{heading}')")


def shot(page: Page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def create(rest: httpx.Client, user_id: str, prompt: str, **fields: str) -> str:
    response = rest.post("/api/v1/ai/image/task", json={"prompt": prompt, "user_id": user_id, **SEEDREAM, **fields})
    assert response.status_code == 200, response.text
    return str(response.json()["data"]["task_id"])


def test_a_view_answered_after_the_operator_left_it_is_not_drawn_over_the_newer_one(
    browser: Browser, stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    shown = create(rest, user_id, "a lighthouse seen while a list is slow")
    page = signed_in(browser, stack, stack.admin_key)
    page.wait_for_selector("h1:text-is('Overview')")
    held: list[Route] = []
    page.route(
        "**/api/v1/admin/tasks?**", lambda route: held.append(route)
    )  # the list's answer waits until released below
    page.evaluate("() => { location.hash = '#/tasks'; }")
    wait_until(lambda: page.wait_for_timeout(50) or bool(held), timeout=10)
    open_view(page, f"task/{shown}", f"Task {shown}")
    with page.expect_response("**/api/v1/admin/tasks?**"):
        held[0].continue_()
    page.wait_for_timeout(200)  # the late answer's handler has run
    assert page.locator("h1").all_text_contents() == [f"Task {shown}"]
    page.close()


def test_an_admin_finds_a_task_reads_its_timeline_cancels_drains_and_makes_a_key(
    browser: Browser, stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    done = create(rest, user_id, "a lighthouse for the console")
    wait_for_status(rest, done, {"completed"})
    page = signed_in(browser, stack, stack.admin_key)
    assert (page.text_content("#caller") or "").startswith("admin")
    page.wait_for_selector("h2:text-is('Queues')")
    assert page.locator("table").first.locator("tbody tr").count() == 3  # critical, default, low
    shot(page, "overview")

    open_view(page, "tasks", "Tasks")
    page.fill("#task-search input[name=user_id]", user_id)
    page.click("#task-search button[type=submit]")
    page.click(f"a:text-is('{done}')")
    page.wait_for_selector(f"h1:text-is('Task {done}')")
    events = page.locator("td.event").all_text_contents()
    assert events[0] == "created" and "completed" in events and "claimed" in events
    assert page.locator(".preview img").count() == 1
    shot(page, "task")

    rest.post("/api/v1/admin/queues/low/pause", json={})
    try:
        time.sleep(PAUSE_TAKES_EFFECT_SECONDS)  # a worker may pop a job from `low` within a second of the pause
        waiting = create(rest, user_id, "a lighthouse that never runs", priority="low")
        open_view(page, f"task/{waiting}", f"Task {waiting}")
        page.click("button[data-action=Cancel]")
        page.wait_for_selector("dd.status-cancelled")
        assert page.text_content("#flash") == ""
    finally:
        rest.post("/api/v1/admin/queues/low/resume", json={})
    assert rest.get(f"/api/v1/ai/task/result/{waiting}").json()["data"]["status"] == "cancelled"

    open_view(page, "providers", "Providers")
    instance = rest.get("/api/v1/admin/providers").json()["data"][0]["instance_id"]
    row = f"tr[data-instance='{instance}']"
    try:
        page.click(f"{row} button[data-action=Drain]")
        page.wait_for_selector(f"{row} td.draining:text-is('drained')")
        drained = {
            i["instance_id"]: i.get("draining", False) for i in rest.get("/api/v1/admin/providers").json()["data"]
        }
        assert drained[instance] is True
        shot(page, "providers")
        page.click(f"{row} button[data-action=Undrain]")
        page.wait_for_selector(f"{row} td.draining:text-is('taking work')")
    finally:
        rest.post(f"/api/v1/admin/providers/{instance}/undrain", json={})

    open_view(page, "keys", "API keys")
    page.fill("#create-key input[name=user_id]", f"console-{user_id}")
    page.select_option("#create-key select[name=role]", "viewer")
    page.click("#create-key button[type=submit]")
    page.wait_for_selector("#created-key:not([hidden])")
    new_key = page.text_content("#created-key code") or ""
    assert new_key.startswith("ak_")
    with stack.rest(new_key) as as_new_viewer:
        wait_until(lambda: as_new_viewer.get("/api/v1/admin/queues").status_code == 200)
    shot(page, "keys")

    open_view(page, "audit", "Audit log")
    actions = page.locator("tbody tr td:nth-child(2)").all_text_contents()
    assert actions[0] == "CreateApiKey" and "DrainProvider" in actions[:4], actions
    shot(page, "audit")
    page.close()


def test_a_viewer_sees_every_view_and_no_button(
    browser: Browser, stack: LocalStack, rest: httpx.Client, user_id: str
) -> None:
    failed = create(rest, user_id, "a harbour [[fail:400]]")
    wait_for_status(rest, failed, {"failed"})
    page = signed_in(browser, stack, stack.create_api_key(f"viewer-{user_id}", "viewer"))
    assert page.text_content("#caller") == f"viewer · viewer-{user_id}"
    headings = {"overview": "Overview", "tasks": "Tasks", "providers": "Providers", "keys": "API keys"}
    for view in VIEWS:
        open_view(page, view, headings.get(view, "Audit log"))
        assert page.locator("button.action").count() == 0, view
        assert page.locator("#create-key").count() == 0
        shot(page, f"viewer-{view}")
    open_view(page, f"task/{failed}", f"Task {failed}")
    assert "failed" in page.locator("td.event").all_text_contents()
    assert page.locator("button.action").count() == 0  # no Retry, no Delete
    shot(page, "viewer-task")
    # The API refuses what the console does not offer.
    status = page.evaluate(
        """async () => (await fetch('/api/v1/admin/queues/low/pause', {method: 'POST', body: '{}',
            headers: {Authorization: 'Bearer ' + sessionStorage.getItem('aitask-console-key'),
                      'Content-Type': 'application/json'}})).status"""
    )
    assert status == 403
    page.close()


def test_a_user_key_is_told_it_cannot_sign_in(browser: Browser, stack: LocalStack, user_id: str) -> None:
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{stack.ports.envoy}/console")  # redirected to /console/
    page.fill("#key", stack.create_api_key(user_id))
    page.click("#login button[type=submit]")
    page.wait_for_selector("#login-error:has-text('user key')")
    assert page.is_hidden("#nav")
    page.close()


def test_the_console_is_three_files_with_a_strict_policy(stack: LocalStack) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{stack.ports.envoy}") as client:
        home = client.get("/console/")
        assert home.status_code == 200 and "text/html" in home.headers["content-type"]
        assert "script-src" not in home.headers["content-security-policy"]  # default-src 'self' covers scripts
        assert home.headers["content-security-policy"].startswith("default-src 'self'")
        assert client.get("/console/console.js").status_code == 200
        assert client.get("/console/secrets.txt").status_code == 404
