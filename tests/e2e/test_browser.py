"""The web UI in a real browser (issue "Web UI", tests): Chromium drives a running cluster.

One scenario on one cluster (etcd, primary p1, backups b1 and b2, two agents,
all real processes, served over HTTPS):

1. log in on the primary; the overview shows p1 leading;
2. Settings › General: choose the backup ("none", then b1) and press Save All;
   the flash says so, the select keeps the value after a reload, the status
   API agrees;
3. log in on the backup b1: the banner says it is the backup and view only
   (with a link to the primary), the controls are disabled, and a forced POST
   with the page's own CSRF token is refused with 403;
4. SIGKILL the primary: the backup's open overview shows b1 serving agents
   (its build form enabled, its settings still not)
   without a reload (live.js polls).

Screenshots of the main pages are written into the test's tmp directory; with
BATON_SCREENSHOTS=1 they are also copied to docs/screenshots/ (CI leaves the
work tree alone).

About TLS: Chromium does not know the cluster's private CA, and teaching it
one needs an NSS database or SPKI pins; so the browser context ignores
certificate errors, and the certificate is checked separately with Python's
ssl and the cluster CA (test_ui_certificate_verifies_for_localhost, on the same
cluster fixture setup): the UI's certificate must verify for host "localhost".
"""
from __future__ import annotations

import os
import shutil
import socket
import ssl
from pathlib import Path
from urllib.parse import urlparse

import pytest
from playwright import sync_api

from tests.harness.wait import wait_until

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
MS = 1000  # Playwright timeouts are in milliseconds

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Chromium is not installed at {CHROMIUM}"),
]

expect = sync_api.expect
expect.set_options(timeout=15 * MS)  # a loaded 2-core machine: slack, never a sleep


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"])
        yield chromium
        chromium.close()


@pytest.fixture
def context(browser):
    # ignore_https_errors: see the module docstring; the certificate is verified with ssl below.
    ctx = browser.new_context(ignore_https_errors=True, viewport={"width": 1280, "height": 800})
    ctx.set_default_timeout(15 * MS)
    yield ctx
    ctx.close()


class Shots:
    """Full-page screenshots into tmp; copied to docs/screenshots/ only when BATON_SCREENSHOTS=1."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page, name: str) -> None:
        path = self.dir / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def publish(self) -> None:
        if os.environ.get("BATON_SCREENSHOTS") != "1":
            return
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        for path in self.taken:
            shutil.copyfile(path, SCREENSHOTS / path.name)


def build_spec(ran: Path) -> dict:
    """A build that runs for a while (progress bars part filled) with one failing task."""
    tasks = [{"id": f"compile-{i:02d}", "cmd": f"echo compiling unit {i}; echo {i} >> {ran}; sleep 2"}
             for i in range(16)]
    tasks.append({"id": "lint", "cmd": "echo 'src/app.c:12: line too long' >&2; exit 3"})
    tasks.append({"id": "link", "cmd": "echo linking app; sleep 1", "deps": [t["id"] for t in tasks[:4]]})
    return {"name": "firmware", "tasks": tasks}


def login(page, base: str, password: str) -> None:
    page.goto(base + "/login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("header .who")).to_have_text("admin (admin)")


def save_backup(page, base: str, choice: str) -> None:
    """Settings › General: pick choice in the Backup select, Save All, and see it saved."""
    page.goto(base + "/settings")
    page.select_option("#selected_backup", choice)
    page.get_by_role("button", name="Save All").click()
    expect(page.locator(".flash-ok")).to_have_text("Settings saved.")
    page.reload()
    expect(page.locator("#selected_backup")).to_have_value(choice)


def build_progress(cluster, build_id):
    tasks = cluster.api("p1").build(build_id)["tasks"]
    done = sum(t["state"] in ("done", "failed") for t in tasks)
    return 4 <= done < len(tasks)


def test_ui_certificate_verifies_for_localhost(make_cluster):
    # The browser scenario ignores certificate errors (no private CA in Chromium); this is the check it skips.
    cluster = make_cluster(agents=0, backups=0, cores=1, tls=True)
    url = urlparse(cluster.web_urls["p1"])
    assert url.scheme == "https" and url.hostname == "localhost"
    tls = ssl.create_default_context(cafile=cluster.ca)  # verifies the chain and the host name
    with socket.create_connection(("127.0.0.1", url.port), timeout=10) as raw:
        with tls.wrap_socket(raw, server_hostname="localhost") as conn:
            names = [v for k, v in conn.getpeercert()["subjectAltName"] if k == "DNS"]
    assert "localhost" in names
    with socket.create_connection(("127.0.0.1", url.port), timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")  # system CAs: refused


def test_primary_settings_backup_view_only_and_live_failover(make_cluster, context, tmp_path):
    cluster = make_cluster(agents=2, backups=2, cores=2, tls=True, grace=4)
    p1, b1 = cluster.web_urls["p1"], cluster.web_urls["b1"]
    password = cluster.admin_password
    shots = Shots(tmp_path / "screenshots")
    build_id = cluster.api("p1").request("POST", "/api/v1/builds", build_spec(tmp_path / "ran.log"))["id"]

    # 1. Log in on the primary; the overview shows p1 leading.
    page = context.new_page()
    page.goto(p1 + "/")
    expect(page.get_by_role("heading", name="Log in to p1")).to_be_visible()  # redirected to the login form
    shots.take(page, "login")
    login(page, p1, password)
    expect(page).to_have_url(p1 + "/")
    expect(page.locator("#leader-name")).to_have_text("p1")
    expect(page.locator("#coordinators tr", has_text="p1")).to_contain_text("★ leader")
    expect(page.locator("#banner")).to_be_hidden()
    wait_until(lambda: build_progress(cluster, build_id), 60, message="the build part done")
    expect(page.locator("#build-counts")).to_have_text("1 / 0")
    shots.take(page, "overview-primary")

    page.goto(p1 + "/agents")
    expect(page.locator("#agents tr")).to_have_count(2)
    expect(page.locator("#agents button", has_text="Disable").first).to_be_enabled()
    shots.take(page, "agents")
    page.goto(p1 + "/builds")
    expect(page.locator("#builds tr", has_text=build_id)).to_contain_text("firmware")
    shots.take(page, "builds")
    page.goto(f"{p1}/builds/{build_id}")
    expect(page.locator("#tasks tr", has_text="lint")).to_contain_text("failed")
    expect(page.locator("#tasks tr", has_text="lint")).to_contain_text("line too long")
    shots.take(page, "build")

    # 2. Settings › General: the Backup select and Save All (none, then b1 again).
    save_backup(page, p1, "")
    assert cluster.api("p1").status()["selected_backup"] is None
    save_backup(page, p1, "b1")
    assert cluster.api("p1").status()["selected_backup"] == "b1"
    page.get_by_role("button", name="Save All").click()  # for the screenshot: the form with its flash
    expect(page.locator(".flash-ok")).to_have_text("Settings saved.")
    shots.take(page, "settings")
    page.goto(p1 + "/users")
    page.get_by_label("Name").fill("alice")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Add user").click()
    expect(page.locator(".flash-ok")).to_be_visible()
    expect(page.locator("main table tr", has_text="alice")).to_contain_text("viewer")
    shots.take(page, "users")

    # 3. The backup b1: banner, view only, controls disabled, a forced write refused.
    backup = context.new_page()
    login(backup, b1, password)
    banner = backup.locator("#banner-text")
    expect(banner).to_have_text("This is the backup coordinator b1 — view only.")
    expect(backup.locator("#banner-link")).to_have_text("Go to the primary p1")
    assert backup.locator("#banner-link").get_attribute("href").startswith(p1)
    expect(backup.locator("#leader-name")).to_have_text("p1")
    backup.goto(b1 + "/settings")
    expect(backup.get_by_role("button", name="Save All")).to_be_disabled()
    expect(backup.locator("#selected_backup")).to_be_disabled()
    backup.goto(b1 + "/agents")
    buttons = backup.locator("#agents button")
    expect(buttons).to_have_count(2)
    for i in range(2):
        expect(buttons.nth(i)).to_be_disabled()
    forced = backup.evaluate("""async () => {
        const token = document.querySelector('meta[name="csrf-token"]').content;
        const form = new FormData();
        for (const [k, v] of Object.entries({csrf_token: token, selected_backup: "b2", deselect_after: "5",
                                              failback_delay: "1", max_cores_per_build: "7"})) form.append(k, v);
        const r = await fetch("/settings", {method: "POST", body: form, credentials: "same-origin"});
        return {status: r.status, text: await r.text()};
    }""")
    assert forced["status"] == 403, forced
    assert "backup coordinator b1" in forced["text"], "refused as view only, not for a bad CSRF token"
    settings = cluster.api("p1").status()["settings"]
    assert settings["selected_backup"] == "b1" and settings["max_cores_per_build"] != 7

    # 4. SIGKILL the primary: the backup's open overview follows without a reload.
    backup.goto(b1 + "/")
    expect(backup.locator("#leader-name")).to_have_text("p1")
    expect(backup.locator("#coordinators tr", has_text="b1")).to_contain_text("yes")  # the selected backup
    shots.take(backup, "overview-backup")
    backup.evaluate("window.__sameDocument = true")
    cluster.coordinators["p1"].kill()
    expect(backup.locator("#leader-name")).to_have_text("b1", timeout=30 * MS)
    # Builds are work, not changes (docs/design.md section 1): the serving backup takes builds.
    expect(banner).to_have_text("This is the backup coordinator b1, serving agents now because the primary is "
                                "unavailable. It accepts builds and their cancellation; settings, users and "
                                "agent configuration change only on the primary p1.")
    expect(backup.locator("#coordinators tr", has_text="b1")).to_contain_text("★ leader")
    expect(backup.locator("#coordinators tr", has_text="p1")).to_contain_text("down")
    assert backup.evaluate("window.__sameDocument === true"), "the page was reloaded"
    cluster.wait_agents(2, timeout=30, coordinator="b1")
    shots.take(backup, "overview-backup-serving")
    backup.goto(b1 + "/builds")
    expect(backup.get_by_role("button", name="Submit build")).to_be_enabled()
    backup.goto(b1 + "/settings")
    expect(backup.get_by_role("button", name="Save All")).to_be_disabled()
    shots.publish()
