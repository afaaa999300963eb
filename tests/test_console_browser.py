"""The web console (docs/console.md) in a real headless browser: Debian's ``chromium``
driven through its ``chromedriver`` by Selenium (no browser download: the Service is
pointed at /usr/bin/chromedriver). One standalone instance (tests/_apiutil.py: the agent's
wiring over a fake Serf, real HTTP, real ansible with ansible_connection=local and the
playbooks of tests/playbooks_console) and one browser session serve the whole module.

The tests run in file order and build on each other (sign in, commission, ...); what a test
needs of an earlier one's state it also gets from a fixture, so that it runs alone too
(``-k``): ``console`` is the browser signed in with the admin token, ``master`` also has
node-0 Allocated as the master (through the API, unless the commission test did it from the
page). Every page is saved as a screenshot under pytest's tmp dir, or ``--screenshots DIR``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gossipmgr.core.tokens import READ, make_token

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
HERE = Path(__file__).parent
ADMIN_TOKEN = "console-admin-secret-0123"
READ_TOKEN = "console-read-secret-0123"
WATCH_HISTORY = 100
BURST = 300
#: Generous: a shared 2-core machine runs ansible and a browser here.
WAIT_S = 60.0

pytestmark = [
    pytest.mark.ansible,
    pytest.mark.skipif(
        not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)),
        reason="chromium and chromium-driver not installed (./dev bootstrap installs them)",
    ),
]

try:
    from selenium import webdriver
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import Select, WebDriverWait
except ImportError:  # pragma: no cover - selenium is in the test extras
    pytest.skip("selenium is not installed", allow_module_level=True)


class Console:
    """The server's URL, the browser, and where screenshots go."""

    def __init__(
        self,
        url: str,
        driver: WebDriver,
        shots: Path,
        root: Path,
        procs: list[subprocess.Popen[bytes]],
    ) -> None:
        self.url, self.driver, self.shots, self.root = url, driver, shots, root
        self.procs = procs

    def restart(self) -> None:
        """Stop the instance and start it again on its data dir and its port."""
        _stop(self.procs[-1])
        proc, url = _start_server(self.root, self.url.removeprefix("http://"))
        self.procs.append(proc)
        assert url == self.url

    def wait(self, what: str, cond: Callable[[], Any], timeout: float = WAIT_S) -> Any:
        """Wait (bounded) until ``cond()`` is truthy; a vanished element counts as not yet."""

        def check(_: WebDriver) -> Any:
            try:
                return cond()
            except StaleElementReferenceException:
                return False

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(check, what)
        except TimeoutException:
            page = self.text("page")
            raise AssertionError(f"not within {timeout} s: {what}; the page shows:\n{page}")

    def click(self, selector: str) -> None:
        """Click the first element ``selector`` finds, once it is there: a live page may redraw
        it between the find and the click (the element is then stale), so both are tried again
        until one click lands."""

        def clicked() -> bool:
            found = self.driver.find_elements(By.CSS_SELECTOR, selector)
            if not found:
                return False
            found[0].click()
            return True

        self.wait(f"a click on {selector}", clicked)

    def text(self, element_id: str) -> str:
        return self.css_text(f"#{element_id}")

    def css_text(self, selector: str) -> str:
        """The rendered text of the first element ``selector`` finds ("" for none), read in
        one step in the page: the live pages redraw their parts at any time."""
        script = "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''"
        return str(self.driver.execute_script(script, selector))

    def go(self, fragment: str) -> None:
        """Follow an in-page link (no reload): set the location's hash."""
        self.driver.execute_script("location.hash = arguments[0]", fragment)

    def title_is(self, title: str) -> None:
        self.wait(f"page {title!r}", lambda: self.text("page-title") == title)

    def shot(self, name: str) -> Path:
        """Save the whole page (the window grown to its height for the picture)."""
        d = self.driver
        size = d.get_window_size()
        height = int(d.execute_script("return document.documentElement.scrollHeight"))
        d.set_window_size(size["width"], max(size["height"], min(height, 4000)))
        path = self.shots / f"{name}.png"
        try:
            d.save_screenshot(str(path))
        finally:
            d.set_window_size(size["width"], size["height"])
        return path

    def sign_in(self, token: str) -> None:
        d = self.driver
        self.wait("the sign-in form", lambda: d.find_element(By.ID, "login").is_displayed())
        d.find_element(By.ID, "token").send_keys(token)
        d.find_element(By.CSS_SELECTOR, "#login-form button[type=submit]").click()
        self.wait("signed in", lambda: not d.find_element(By.ID, "login").is_displayed())

    def signed_in_as(self, token: str, who: str) -> None:
        """The page loaded and signed in with ``token`` (shown as ``who``), whatever the
        browser showed before: a test run alone starts on a blank page."""
        d = self.driver
        if not d.current_url.startswith(self.url + "/ui/"):
            d.get(self.url + "/ui/")
        login = d.find_element(By.ID, "login")
        self.wait("the page to settle", lambda: login.is_displayed() or self.text("who"))
        if self.text("who") == who and not login.is_displayed():
            return
        if not login.is_displayed():
            d.find_element(By.ID, "signout").click()
        self.sign_in(token)
        self.wait(f"signed in as {who}", lambda: self.text("who") == who)

    def status(self, node: str) -> str:
        return str(self.api("GET", f"/info/node/{node}")[1]["inventory_state"]["status"])

    def api(self, method: str, path: str, body: Any = None, token: str = ADMIN_TOKEN) -> Any:
        hdr = {"Authorization": f"Bearer {token}"}
        r = httpx.request(method, self.url + path, json=body, headers=hdr, timeout=30)
        return r.status_code, r.json()


def _start_server(root: Path, api_addr: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """Start the instance (again, on its data dir: ``api_addr`` keeps its port)."""
    tokens = root / "tokens"
    tokens.write_text(make_token("viewer", READ, READ_TOKEN).line() + "\n")
    url_file = root / "url"
    url_file.unlink(missing_ok=True)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, str(HERE / "_apiutil.py"), "--data", str(root / "data")]
    cmd += ["--url-file", str(url_file), "--token", ADMIN_TOKEN, "--tokens-file", str(tokens)]
    cmd += ["--nodes", "2", "--playbooks", str(HERE / "playbooks_console")]
    # a short feed history, so one batch of BURST globals outruns any reader: a cutoff
    cmd += ["--watch-history", str(WATCH_HISTORY)]
    cmd += ["--api-addr", api_addr] if api_addr else []
    with (root / "server.log").open("ab") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + WAIT_S
    while not url_file.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            raise RuntimeError(f"the server did not start: {(root / 'server.log').read_text()}")
        time.sleep(0.1)  # polling a file the server writes once bound, with a deadline
    return proc, url_file.read_text()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _browser() -> WebDriver:
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        opts.add_argument(arg)
    opts.add_argument("--window-size=1280,1000")
    return webdriver.Chrome(options=opts, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def session(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    opt = request.config.getoption("--screenshots")
    shots = Path(opt) if opt else root / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    proc, url = _start_server(root)
    procs = [proc]  # the test that restarts the instance adds the new process
    try:
        driver = _browser()
        try:
            yield Console(url, driver, shots, root, procs)
        finally:
            driver.quit()
    finally:
        for p in procs:
            _stop(p)


@pytest.fixture
def console(session: Console) -> Console:
    """The module's browser on the console, signed in with the admin token."""
    session.signed_in_as(ADMIN_TOKEN, "token default (admin)")
    return session


@pytest.fixture
def master(console: Console) -> Console:
    """The signed-in browser, and node-0 Allocated as the cluster's master (a worker's
    commission needs one; an update or an upgrade needs an Allocated node):
    test_commission_from_the_ui_live leaves it so; without it, it is commissioned here
    through the API."""
    if console.status("node-0") != "Allocated":
        release = console.root / "release-master"
        release.write_text("go")  # the playbook does not wait
        body: dict[str, Any] = {"nodes": ["node-0"], "host_group": "service-master"}
        body["extra_vars"] = {"console_release": str(release)}
        st, job = console.api("POST", "/commission/nodes", body)
        assert st == 200, job
        console.wait("node-0 Allocated", lambda: console.status("node-0") == "Allocated")
    return console


def test_overview_after_sign_in(session: Console) -> None:
    """The sign-in form, then the overview (the first test: the browser is signed out)."""
    console = session
    d = console.driver
    d.get(console.url + "/ui/")
    console.sign_in(ADMIN_TOKEN)
    console.title_is("Overview")
    console.wait("the lease holder", lambda: "Holder\ni1" in _card(console, "h-lease"))
    body = console.text("page")
    assert "Instances" in body and "i1 (this instance)" in body
    assert "Epoch" in _card(console, "h-lease")
    assert "Majority\nmajority: sees 1 of 1 instances" in _card(console, "h-lease")
    assert "Unallocated" in _card(console, "h-nodes") and "2 in all" in _card(console, "h-nodes")
    assert "Healthy" in _card(console, "h-serf")
    assert console.text("who") == "token default (admin)"
    console.wait("the change feed", lambda: console.text("live") == "live")
    console.shot("overview")


def _card(c: Console, heading_id: str) -> str:
    return c.css_text(f"section[aria-labelledby={heading_id}]")


def _has(text: str, *parts: str) -> bool:
    return all(p in text for p in parts)


def _rows(c: Console, attr: str = "node") -> list[str]:
    script = f"return [...document.querySelectorAll('tr[data-{attr}]')].map(r => r.dataset.{attr})"
    return list(c.driver.execute_script(script))


def test_nodes_filter_and_search(console: Console) -> None:
    d = console.driver
    # keyboard only: the skip link, then the pages' links in order; Enter follows one
    d.execute_script("document.querySelector('a.skip').focus()")
    d.switch_to.active_element.send_keys(Keys.TAB)
    assert d.switch_to.active_element.text == "Overview"
    d.switch_to.active_element.send_keys(Keys.TAB)
    assert d.switch_to.active_element.text == "Nodes"
    d.switch_to.active_element.send_keys(Keys.ENTER)
    console.title_is("Nodes")
    assert console.css_text("nav a[aria-current=page]") == "Nodes"
    console.wait("two nodes", lambda: _rows(console) == ["node-0", "node-1"])
    search = d.find_element(By.ID, "f-search")
    search.send_keys("node-1")
    console.wait("the search", lambda: _rows(console) == ["node-1"])
    search.clear()
    search.send_keys("127.0.1.1")  # an address: node-0's
    console.wait("search by address", lambda: _rows(console) == ["node-0"])
    search.clear()
    Select(d.find_element(By.ID, "f-status")).select_by_value("Allocated")
    console.wait("the status filter", lambda: _rows(console) == [])
    Select(d.find_element(By.ID, "f-status")).select_by_value("")
    console.wait("no filter", lambda: len(_rows(console)) == 2)
    console.shot("nodes")
    # a phone's width: nothing wider than the screen but the tables' own scrolling boxes
    size = d.get_window_size()
    d.set_window_size(390, 844)
    try:
        wide = "return document.documentElement.scrollWidth <= window.innerWidth"
        console.wait("the page fits a phone's width", lambda: d.execute_script(wide))
        console.shot("nodes-phone")
    finally:
        d.set_window_size(size["width"], size["height"])
    # a redraw keeps the keyboard's place: the focused link's successor takes the focus
    d.execute_script("window.focused = document.querySelector('a[href=\"#/node/node-1\"]')")
    d.execute_script("window.focused.focus()")
    st, _ = console.api("POST", "/node/node-1/host_group", {"host_group": "service-worker"})
    assert st == 200
    console.wait("the redraw", lambda: d.execute_script("return !window.focused.isConnected"))
    console.wait("service-worker shown", lambda: "service-worker" in console.text("page"))
    focused = d.execute_script("return document.activeElement.getAttribute('href')")
    assert focused == "#/node/node-1"


def test_refused_action_shows_clusterms_text(console: Console) -> None:
    d = console.driver
    console.go("#/node/node-0")
    console.title_is("Node node-0")
    console.wait("the node's status", lambda: console.text("node-status") == "Unallocated")
    console.click("button.a-decommission")
    want = (
        "decommission refused: failed to update node-0's state in inventory, Error: "
        'transition from "Unallocated" to "Cancelled" is not allowed'
    )
    console.wait("the refusal", lambda: console.text("action-error") == want)
    Select(d.find_element(By.ID, "a-hostgroup")).select_by_value("")  # keep the node's
    console.click("button.a-update")
    want = (
        "update refused: failed to update node-0's state in inventory, Error: "
        'transition from "Unallocated" to "Maintenance" is not allowed'
    )
    console.wait("the update's refusal", lambda: console.text("action-error") == want)
    Select(d.find_element(By.ID, "a-hostgroup")).select_by_value("service-worker")
    console.click("button.a-commission")
    want = (
        "commission refused: Cannot commission a worker node without existence of a master "
        "node in the cluster, make sure atleast one master node is commissioned."
    )
    console.wait("clusterm's worker rule", lambda: console.text("action-error") == want)
    assert console.text("action-result") == ""
    assert console.text("node-status") == "Unallocated"  # nothing changed
    assert console.api("GET", "/info/jobs") == (200, {"jobs": []})
    # the node's own extra-vars, shown as they change
    assert console.api("PUT", "/node/node-0/extra_vars/console_rack", {"value": "r7"})[0] == 200
    console.wait(
        "the node's extra-vars", lambda: _has(_card(console, "h-vars"), "console_rack", '"r7"')
    )


def test_commission_from_the_ui_live(console: Console) -> None:
    """Commission node-0 from its page; its status, then the job's status and log change on
    the page without a reload (the change feed and the followed log)."""
    d = console.driver
    release = console.root / "release"
    d.execute_script("window.consoleNoReload = 42")
    console.go("#/node/node-0")
    console.title_is("Node node-0")
    Select(d.find_element(By.ID, "a-hostgroup")).select_by_value("service-master")
    ev = d.find_element(By.ID, "a-extravars")
    ev.clear()
    ev.send_keys(json.dumps({"console_release": str(release)}))
    console.click("button.a-commission")
    console.wait("the job link", lambda: "commission started: job" in console.text("action-result"))
    console.wait("Provisioning, live", lambda: console.text("node-status") == "Provisioning")
    console.shot("node")
    console.click("#action-result a")
    console.wait("the job page", lambda: console.text("page-title").startswith("Job "))
    console.wait("the first task's line", lambda: "waiting for" in console.text("job-log"))
    assert console.text("job-status") == "Running"
    assert "released" not in console.text("job-log")
    before = int(console.text("log-count"))
    release.write_text("go")
    console.wait("the rest of the log", lambda: "console test: released" in console.text("job-log"))
    console.wait("Complete, live", lambda: console.text("job-status") == "Complete")
    console.wait("the end of the log", lambda: console.text("log-state") == "complete")
    assert int(console.text("log-count")) > before
    console.shot("job")
    console.go("#/node/node-0")
    console.wait("Allocated", lambda: console.text("node-status") == "Allocated")
    hist = _card(console, "h-hist")
    assert "default" in hist and "commission" in hist.lower()
    console.go("#/jobs")
    console.title_is("Jobs")
    console.wait("the job in the history", lambda: "Complete" in console.text("page"))
    console.shot("jobs")
    assert d.execute_script("return window.consoleNoReload") == 42  # never reloaded


def test_check_mode_from_the_ui_changes_nothing(master: Console) -> None:
    """The "Check mode" toggle sends ``check: true``: a check job (its record and the job
    history say so), and the node's status and host-group stay as they were."""
    console = master
    d = console.driver
    console.go("#/node/node-1")
    console.title_is("Node node-1")
    console.wait("the node's status", lambda: console.text("node-status") == "Unallocated")
    before = console.api("GET", "/info/node/node-1")[1]
    Select(d.find_element(By.ID, "a-hostgroup")).select_by_value("service-worker")
    ev = d.find_element(By.ID, "a-extravars")
    release = console.root / "release-check"
    release.write_text("go")  # the playbook does not wait
    ev.clear()
    ev.send_keys(json.dumps({"console_release": str(release)}))
    d.find_element(By.ID, "a-check").click()
    console.click("button.a-commission")
    started = "commission (check) started: job"
    console.wait("the check job", lambda: started in console.text("action-result"))
    job_id = d.find_element(By.CSS_SELECTOR, "#action-result a").text

    def ended() -> Any:
        rec = console.api("GET", f"/info/job/{job_id}")[1]
        return rec if rec["status"] != "Running" else None

    rec = console.wait("the check job's end", ended)
    assert (rec["status"], rec["check"]) == ("Complete", True), rec
    assert rec["desc"] == "commission nodes [node-1] host-group service-worker (check)"
    after = console.api("GET", "/info/node/node-1")[1]
    assert after["inventory_state"] == before["inventory_state"]
    assert after["configuration_state"] == before["configuration_state"]  # host-group too
    console.go("#/jobs")
    console.wait("shown as a check", lambda: "commission (check)" in console.text("page"))


def test_a_queued_job_shows_its_place_and_is_cancelled_from_the_jobs_page(
    master: Console,
) -> None:
    """While a job runs, a request with "queue": true waits; the jobs page shows it Queued
    with its position and a Cancel button, which ends it Cancelled (it never runs). Then
    the running job is cancelled from its own page (its button named for a running job)."""
    console = master
    release = console.root / "release-queue"
    body = {"nodes": ["node-0"], "extra_vars": {"console_release": str(release)}}
    st, running = console.api("POST", "/update/nodes", body)
    assert st == 200 and running["status"] == "Running", running
    try:
        ask = {"nodes": ["node-1"], "host_group": "service-worker", "queue": True}
        st, queued = console.api("POST", "/commission/nodes", ask)
        assert st == 200 and queued["status"] == "Queued", queued
        console.go("#/jobs")
        console.title_is("Jobs")
        console.wait("the queued job", lambda: "Queued #1" in console.text("page"))
        console.shot("jobs-queued")
        label = f"Cancel queued job {queued['id']}"
        console.click(f'button[aria-label="{label}"]')
        console.wait("Cancelled", lambda: "Queued" not in console.text("page"))
        st, rec = console.api("GET", f"/info/job/{queued['id']}")
        assert (rec["status"], rec["started_ms"]) == ("Cancelled", 0)
        console.go(f"#/job/{running['id']}")
        console.wait("the running job's page", lambda: console.text("job-status") == "Running")
        label = f"Cancel running job {running['id']}"
        button = f'button[aria-label="{label}"]'
        console.click(button)
        console.wait("Cancelled, live", lambda: console.text("job-status") == "Cancelled")
        assert console.api("GET", f"/info/job/{running['id']}")[1]["status"] == "Cancelled"
    finally:
        release.write_text("go")


def test_globals_view_edit_and_live(console: Console) -> None:
    d = console.driver
    console.go("#/globals")
    console.title_is("Globals")
    d.find_element(By.ID, "g-name").send_keys("ntp/server")
    d.find_element(By.ID, "g-value").send_keys('{"host": "10.0.0.1"}')
    d.find_element(By.CSS_SELECTOR, "#global-form button[type=submit]").click()
    console.wait("saved", lambda: console.text("global-result") == "ntp/server saved")
    assert console.api("GET", "/globals/ntp%2Fserver") == (
        200,
        {"key": "ntp/server", "value": {"host": "10.0.0.1"}},
    )
    console.wait("the row", lambda: "ntp/server" in _rows(console, "global"))
    # a bad value is refused with the server's reason, and nothing is written
    name, value = d.find_element(By.ID, "g-name"), d.find_element(By.ID, "g-value")
    name.clear()
    name.send_keys("ansible_user")
    value.clear()
    value.send_keys('"root"')
    d.find_element(By.CSS_SELECTOR, "#global-form button[type=submit]").click()
    console.wait("the refusal", lambda: "ansible_user" in console.text("global-error"))
    assert console.api("GET", "/globals/ansible_user")[0] == 404
    # a write from elsewhere appears without a reload
    assert console.api("PUT", "/globals/from_cli", {"value": 7})[0] == 200
    console.wait("the live row", lambda: "from_cli" in _rows(console, "global"))
    console.shot("globals")


def test_a_restart_resets_the_feed_and_the_page_rereads(console: Console) -> None:
    """The instance restarts: the page's stream breaks, is reopened with the last event id
    of the old run, gets `event: reset`, re-reads, and goes on showing changes live."""
    d = console.driver
    d.execute_script("window.consoleNoReload = 43")
    console.go("#/globals")
    console.title_is("Globals")
    console.wait("the feed", lambda: console.text("live") == "live")
    console.restart()
    console.wait("the reset", lambda: console.text("live") == "live, re-read after a reset")
    assert console.api("PUT", "/globals/after_restart", {"value": "yes"})[0] == 200
    console.wait("live again", lambda: "after_restart" in _rows(console, "global"))
    assert d.execute_script("return window.consoleNoReload") == 43


def test_a_cutoff_reconnects_and_rereads(console: Console) -> None:
    """One batch of more changes than the feed keeps: the page's stream is cut off; the
    page opens a new one from now, re-reads, and shows the whole batch."""
    d = console.driver
    d.execute_script("window.consoleNoReload = 44")
    console.go("#/globals")
    console.title_is("Globals")
    console.wait("the feed", lambda: console.text("live").startswith("live"))
    batch = {f"burst{i:03d}": i for i in range(BURST)}
    assert console.api("PATCH", "/globals", batch) == (200, {"set": BURST, "deleted": 0})
    console.wait("the cutoff", lambda: console.text("live") == "live, re-read after a cutoff")
    console.wait("the whole batch", lambda: set(batch) <= set(_rows(console, "global")))
    assert d.execute_script("return window.consoleNoReload") == 44


def test_read_token_sees_no_actions(console: Console) -> None:
    d = console.driver
    d.find_element(By.ID, "signout").click()
    console.sign_in(READ_TOKEN)
    assert console.text("who") == "token viewer (read)"
    for page, title in (
        ("#/node/node-1", "Node node-1"),
        ("#/globals", "Globals"),
        ("#/jobs", "Jobs"),
    ):
        console.go(page)
        console.title_is(title)
        console.wait(f"{page} read", lambda: console.css_text("table caption"))
        assert not d.find_elements(By.CSS_SELECTOR, "form#actions, #global-form, button.action")
    console.go("#/node/node-1")
    console.wait("node-1's state", lambda: console.text("node-status") == "Unallocated")
    console.shot("node-read-token")
    # and the server refuses what the page does not offer
    st, err = console.api("POST", "/decommission/nodes", {"nodes": ["node-1"]}, READ_TOKEN)
    assert st == 403 and 'token "viewer" has the role read' in err["error"]


def test_an_upgrade_job_shows_its_batches(master: Console) -> None:
    """A rolling upgrade's record shows its progress on the job page (there is no upgrade
    playbook here: the batch fails at once, and the job stops past --max-fail 0)."""
    console = master
    st, rec = console.api("POST", "/upgrade/nodes", {"nodes": ["node-0"]})
    assert st == 200, rec
    console.go(f"#/job/{rec['id']}")
    console.wait("the job's end", lambda: console.text("job-status") == "Errored")
    want = "1 of 1 batches done; failed: node-0 (max-fail 0)"
    console.wait("its progress", lambda: console.text("job-upgrade") == want)
    console.shot("job-upgrade")
