"""The operator console in a real browser (issue 18, "Proof"): headless Chromium, driven
through selenium and Debian's chromedriver, against real servers only.

One pipeline serves the module (:class:`devstack.alarmstack.AlarmStack` on site
``demo-yard``, as the shipped demo): three simulated PLCs (two cranes and a rig), an
agent, a collector with the shipped rules, mosquitto and InfluxDB, and three named users
(``otto`` operator, ``sue`` supervisor, ``vera`` viewer). The tests follow one another
as a shift would: the operator sees the overload arrive live and acknowledges it with a
comment, the journal and its CSV say so, a viewer cannot act, a supervisor shelves it.
The escaping test runs the console alone (:class:`AlarmApi` on a thread) with a canned
alarm whose message is hostile: no rule of ours writes such a message.

Screenshots of the summary and the journal go to ``$DERRICK_SCREENSHOTS`` when set (the
README's: ``DERRICK_SCREENSHOTS=docs/img``), else to a temporary directory.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from argon2 import PasswordHasher
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import Select, WebDriverWait

from collector.alarms.changes import Changes
from collector.alarms.httpapi import AlarmApi, HttpApiSettings
from collector.users import Role, UserStore
from derrick.wire.payloads import AlarmCommand, AlarmCommandResult
from devstack.alarmstack import AlarmStack, AssetSpec
from devstack.browser import Browser
from devstack.programs import wait_for
from devstack.receivers import HttpReceiver, SmtpReceiver
from devstack.served import ServedApi
from devstack.services import Influx1, Mosquitto

pytestmark = pytest.mark.integration

SITE = "demo-yard"  # the shipped demo's site (config/agent.example.yaml)
CRANE, WINDY, RIG = "crane-01", "crane-02", "rig-01"
ASSETS = [
    AssetSpec(CRANE),  # seed 1: calm, light lifts; the tests force its overload
    AssetSpec(WINDY, seed=4),  # high wind: wind warning (medium), wind and gust stops (high)
    AssetSpec(RIG, profile="rig", speed=10),  # H2S release: two high alarms, then a critical
]
USERS = {
    "otto": ("operator", "otto-lifts-safely-7"),
    "sue": ("supervisor", "sue-shelves-wisely-3"),
    "vera": ("viewer", "vera-only-watches-5"),
}
OVERLOAD_RULE = "crane_overload"
ACK_COMMENT = "Load set down, LMI checked by otto"
SHELVE_REASON = "LMI load cell replacement, crane locked out"
APPEAR_S = 2.0  # the issue: the overload on the summary within 2 s, without a reload
WAIT_S = 60  # generous: for what should take seconds on a loaded two-core machine
NS = 1_000_000_000
DESKTOP = (1280, 800)
PHONE = (360, 800)
MIN_FONT_PX = 14.0


@dataclass
class Demo:
    stack: AlarmStack
    hooks: HttpReceiver
    influx: Influx1
    db: str
    started_ns: int
    tokens: dict[str, str]
    shots: Path
    notes: dict[str, Any] = field(default_factory=dict)  # what a test leaves for the next

    @property
    def console(self) -> str:
        return self.stack.api_url + "/console"

    @property
    def overload_id(self) -> str:
        return self.stack.alarm_id(OVERLOAD_RULE, CRANE)


# --- the pipeline ---------------------------------------------------------------------------


def _assets_stored(influx: Influx1, db: str) -> bool:
    result = influx.query(
        f"SHOW TAG VALUES FROM telemetry WITH KEY = \"asset\" WHERE site = '{SITE}'", db=db
    )
    series = result["results"][0].get("series")
    return bool(series) and len(series[0]["values"]) == len(ASSETS)


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where screenshots go: ``$DERRICK_SCREENSHOTS``, else a temporary directory."""
    wanted = os.environ.get("DERRICK_SCREENSHOTS")
    if not wanted:
        return tmp_path_factory.mktemp("screenshots")
    path = Path(wanted)
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def demo(
    tmp_path_factory: pytest.TempPathFactory, mosquitto: Mosquitto, influx1: Influx1, shots: Path
) -> Iterator[Demo]:
    base = tmp_path_factory.mktemp("console-browser")
    db = f"console_{uuid.uuid4().hex[:8]}"
    influx1.create_database(db)
    with HttpReceiver() as hooks, SmtpReceiver() as mail:
        stack = AlarmStack(
            base,
            broker_port=mosquitto.port,
            influx={"api": "v1", "url": influx1.url, "database": db},
            hook_url=hooks.url,
            smtp_port=mail.port,
            assets=ASSETS,
            site=SITE,
            users=USERS,
        )
        started_ns = time.time_ns()
        try:
            stack.start()
            store = UserStore(stack.users_file)
            tokens = {name: store.new_token(name, "browser test") for name in ("otto", "vera")}
            wait_for(lambda: _assets_stored(influx1, db), WAIT_S,
                     "telemetry of every asset in InfluxDB", program=stack.collector)  # fmt: skip
            stack.control(WINDY, "/scenario", {"name": "high_wind", "active": True})
            stack.control(RIG, "/scenario", {"name": "h2s_release", "active": True})
            demo = Demo(stack, hooks, influx1, db, started_ns, tokens, shots)
            # the collector reads the users file again within a second of a change
            wait_for(lambda: call(demo, "GET", "/me", token=tokens["vera"])[0] == 200, 10,
                     "the new API tokens accepted", program=stack.collector)  # fmt: skip
            yield demo
        finally:
            codes = stack.stop()
            influx1.drop_database(db)
    assert all(code == 0 for code in codes.values()), (codes, stack.collector.log_tail())


def call(
    demo: Demo,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """The collector's API: (status, parsed JSON or text)."""
    sent = {"Content-Type": "application/json", **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(
        demo.stack.api_url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers=sent,
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw or b"null")
    except ValueError:
        return status, raw.decode(errors="replace")


def overloaded(demo: Demo) -> None:
    """The crane's overload forced (by the first test, or now when a test runs alone) and
    its alarms there."""
    if not demo.notes.get("forced"):
        demo.stack.control(CRANE, "/overload", {"active": True})
        demo.notes["forced"] = True
    for rule in (OVERLOAD_RULE, "crane_lmi_cutout"):
        path = f"/alarms/{quoted(demo.stack.alarm_id(rule, CRANE))}"
        wait_for(lambda path=path: call(demo, "GET", path, token=demo.tokens["otto"])[0] == 200,
                 WAIT_S, f"alarm {rule}", program=demo.stack.collector)  # fmt: skip


def alarm_of(demo: Demo, alarm_id: str) -> dict[str, Any]:
    status, alarm = call(demo, "GET", f"/alarms/{quoted(alarm_id)}", token=demo.tokens["otto"])
    assert status == 200, (status, alarm)
    return alarm


def quoted(alarm_id: str) -> str:
    return urllib.parse.quote(alarm_id, safe="")


# --- the browser ----------------------------------------------------------------------------


def until(driver: WebDriver, check: Callable[[WebDriver], Any], what: str,
          timeout: float = WAIT_S) -> Any:  # fmt: skip
    """Poll ``check(driver)`` until it returns something truthy; a timeout names ``what``
    and the page."""
    wait = WebDriverWait(
        driver, timeout, poll_frequency=0.05,
        ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
    )  # fmt: skip
    return wait.until(check, f"{what}: not within {timeout} s (on {driver.current_url})")


def log_in(browser: Browser, url: str, name: str, password: str) -> WebDriver:
    """Open ``url`` logged out, log in through the form it sends us to, and be back on
    ``url``'s page."""
    browser.reset()
    driver = browser.driver
    driver.get(url)
    until(driver, lambda d: path_of(d.current_url) == "/login", "the login page")
    driver.find_element(By.ID, "name").send_keys(name)
    driver.find_element(By.ID, "password").send_keys(password)
    driver.find_element(By.ID, "login-button").click()
    target = path_of(url)

    def back(d: WebDriver) -> bool:
        assert not d.find_elements(By.ID, "login-error"), d.find_element(By.ID, "login-error").text
        return path_of(d.current_url) == target and d.find_element(By.ID, "user-name").text == name

    until(driver, back, f"logged in as {name}, on {target}")
    return driver


def path_of(url: str) -> str:
    """A URL's path, percent-decoded (the login sends us back to the decoded one)."""
    return urllib.parse.unquote(urllib.parse.urlsplit(url).path)


def log_in_as(browser: Browser, demo: Demo, name: str, path: str = "") -> WebDriver:
    return log_in(browser, demo.console + path, name, USERS[name][1])


def row_of(driver: WebDriver, alarm_id: str, tbody: str = "summary-rows") -> WebElement:
    return driver.find_element(By.CSS_SELECTOR, f'#{tbody} tr[data-alarm-id="{alarm_id}"]')


def rows_in(driver: WebDriver, tbody: str = "summary-rows") -> list[WebElement]:
    return driver.find_elements(By.CSS_SELECTOR, f"#{tbody} tr[data-alarm-id]")


def live(driver: WebDriver) -> None:
    """The summary's event stream is connected."""
    until(driver, lambda d: d.find_element(By.ID, "live-status").text == "live", "live")


def notice(driver: WebDriver) -> str:
    return until(driver, lambda d: d.find_element(By.ID, "notice").text, "a notice")


def session_cookie(driver: WebDriver) -> str:
    """The browser's cookies for the page's site, as a ``Cookie`` header."""
    return "; ".join(f"{c['name']}={c['value']}" for c in driver.get_cookies())


def page_csrf(driver: WebDriver) -> str:
    field_ = driver.find_element(By.CSS_SELECTOR, "#logout-form input[name=csrf]")
    return str(field_.get_attribute("value"))


def screenshot(driver: WebDriver, path: Path) -> Path:
    assert driver.save_screenshot(str(path)), path
    return path


def font_px(driver: WebDriver, element: WebElement) -> float:
    size = driver.execute_script("return getComputedStyle(arguments[0]).fontSize;", element)
    return float(str(size).removesuffix("px"))


def scroll_width(driver: WebDriver) -> int:
    return int(driver.execute_script("return document.documentElement.scrollWidth;"))


def browser_errors(driver: WebDriver) -> list[dict[str, Any]]:
    """The browser console's errors since the last look (reading empties the log)."""
    return [entry for entry in driver.get_log("browser") if entry.get("level") == "SEVERE"]


# Watches the summary's rows and notes when each alarm's row first shows (Date.now()).
WATCH_ROWS = """
window.__marker = 1;
window.__seen = {};
const tbody = document.getElementById("summary-rows");
const note = () => {
  for (const row of tbody.querySelectorAll("tr[data-alarm-id]")) {
    if (!(row.dataset.alarmId in window.__seen)) window.__seen[row.dataset.alarmId] = Date.now();
  }
};
note();
new MutationObserver(note).observe(tbody, {childList: true, subtree: true});
return Object.keys(window.__seen);
"""


# --- 1. the overload arrives live -------------------------------------------------------------


def test_overload_appears_live_within_two_seconds(demo: Demo, browser: Browser) -> None:
    browser.resize(*DESKTOP)
    driver = log_in_as(browser, demo, "otto")
    live(driver)
    before = driver.execute_script(WATCH_ROWS)
    assert demo.overload_id not in before, "the overload is there before it was forced"

    forced_ns = demo.stack.control(CRANE, "/overload", {"active": True})["took_effect_ns"]
    demo.notes["forced"] = True
    seen = "return window.__seen[arguments[0]] || null;"
    seen_ms = until(driver, lambda d: d.execute_script(seen, demo.overload_id), "the overload row")
    assert driver.execute_script("return window.__marker;") == 1, "the page was reloaded"

    row = row_of(driver, demo.overload_id)
    assert row.get_attribute("data-priority") == "critical"
    assert row.get_attribute("data-unacked") == "true"
    assert "OVERLOAD" in row.find_element(By.CSS_SELECTOR, ".message").text

    # When the collector announced it: the alarm's time (its transition) and the arrival
    # of its webhook notice, whichever is earlier (the page may well beat the webhook).
    alarm = alarm_of(demo, demo.overload_id)
    assert alarm["state"] == "active_unacked", alarm
    hooks = wait_for(
        lambda: [
            r for r in demo.hooks.requests
            if isinstance(r.json, dict) and r.json.get("alarm_id") == demo.overload_id
            and r.json.get("event") == "announce"
        ],
        WAIT_S, "the overload's webhook notice",
    )  # fmt: skip
    wall_minus_mono = time.time() - time.monotonic()
    hook_s = hooks[0].arrived + wall_minus_mono
    announced_s = min(alarm["ts_ns"] / NS, hook_s)
    seen_s = seen_ms / 1000
    latency = seen_s - announced_s
    demo.notes["latency"] = {
        "announced_to_row_s": round(latency, 3),
        "alarm_ts_to_row_s": round(seen_s - alarm["ts_ns"] / NS, 3),
        "webhook_to_row_s": round(seen_s - hook_s, 3),
        "forced_to_row_s": round(seen_s - forced_ns / NS, 3),
    }
    print(f"\nappearance latency: {demo.notes['latency']}")
    assert latency <= APPEAR_S, demo.notes["latency"]


def test_a_row_acknowledged_elsewhere_changes_in_place(demo: Demo, browser: Browser) -> None:
    """Only the changed row travels on the stream (with the order, when it moved): the
    page's other rows, and its marker, stay as they were."""
    overloaded(demo)
    browser.resize(*DESKTOP)
    driver = log_in_as(browser, demo, "otto")
    live(driver)
    driver.execute_script(WATCH_ROWS)
    rated = demo.stack.alarm_id("crane_hook_load_rated", CRANE)  # none of the others
    until(driver, lambda d: row_of(d, rated).get_attribute("data-unacked") == "true",
          "the cut-out unacknowledged on the summary")  # fmt: skip
    others = [r for r in rows_in(driver) if r.get_attribute("data-alarm-id") != rated]
    status, result = call(demo, "POST", f"/alarms/{quoted(rated)}/acknowledge",
                          {"comment": "from the API"}, token=demo.tokens["otto"])  # fmt: skip
    assert status == 200, result
    until(driver, lambda d: row_of(d, rated).get_attribute("data-unacked") == "false",
          "the cut-out shown acknowledged, live")  # fmt: skip
    assert driver.execute_script("return window.__marker;") == 1, "the page was reloaded"
    # the same elements, not re-made (a replaced one would be stale and raise here)
    assert all(row.is_displayed() for row in others)


# --- 2. acknowledged with a comment; the journal and its CSV ----------------------------------


def test_acknowledge_with_comment_shows_in_journal_and_csv(demo: Demo, browser: Browser) -> None:
    overloaded(demo)
    browser.resize(*DESKTOP)
    driver = log_in_as(browser, demo, "otto", f"/alarm/{quoted(demo.overload_id)}")
    form = driver.find_element(By.ID, "ack-form")
    form.find_element(By.NAME, "comment").send_keys(ACK_COMMENT)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    assert "Acknowledged" in notice(driver)
    alarm = alarm_of(demo, demo.overload_id)
    assert alarm["acked"] is True and alarm["state"] == "active_acked", alarm

    # The journal page: the acknowledge, by otto, with the comment (InfluxDB, so wait).
    search = urllib.parse.urlencode({"site": SITE, "rule": OVERLOAD_RULE})
    driver.get(f"{demo.console}/journal?{search}")

    def acknowledged(d: WebDriver) -> WebElement | None:
        for row in d.find_elements(By.CSS_SELECTOR, "#journal-rows tr.event-journal"):
            if row.find_element(By.CSS_SELECTOR, ".comment").text == ACK_COMMENT:
                return row
        d.refresh()
        return None

    row = until(driver, acknowledged, "the acknowledge in the journal")
    assert row.find_element(By.CSS_SELECTOR, ".who").text == "otto"
    assert "acknowledge" in row.text

    # The CSV of a closed time range (so nothing new lands in it) against InfluxDB itself.
    start = datetime.fromtimestamp(demo.started_ns // NS - 60, UTC).strftime("%Y-%m-%dT%H:%M")
    end_s = int(time.time())
    end = datetime.fromtimestamp(end_s, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    driver.get(f"{demo.console}/journal?" + urllib.parse.urlencode(
        {"site": SITE, "from": start, "to": end}))  # fmt: skip
    csv_url = driver.find_element(By.ID, "csv-link").get_attribute("href")
    assert urllib.parse.urlsplit(csv_url).path == "/console/journal.csv"
    assert urllib.parse.parse_qs(urllib.parse.urlsplit(csv_url).query) == {
        "site": [SITE], "from": [start], "to": [end]}  # fmt: skip
    cookie = session_cookie(driver)
    start_ns = int(datetime.strptime(start, "%Y-%m-%dT%H:%M").replace(tzinfo=UTC).timestamp()) * NS
    end_ns = (end_s + 1) * NS  # ``to`` with seconds takes in its whole second

    def both() -> tuple[Counter, Counter] | None:
        exported = download_csv(csv_url, cookie)
        stored = influx_journal(demo, start_ns, end_ns)
        return (exported, stored) if exported == stored else None

    exported, stored = wait_for(both, 30, "the CSV export equal to the InfluxDB journal")
    assert sum(exported.values()) == sum(stored.values()) > 0
    assert any(who == "otto" and event == "journal" and reason == "acknowledge"
               for _ts, event, rule, reason, who in exported)  # fmt: skip
    assert any(event == "announce" and rule == OVERLOAD_RULE
               for _ts, event, rule, _reason, _who in exported)  # fmt: skip


JournalKey = tuple[int, str, str, str, str]


def download_csv(url: str, cookie: str) -> Counter[JournalKey]:
    request = urllib.request.Request(url, headers={"Cookie": cookie})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200
        assert response.headers.get_content_type() == "text/csv"
        assert "attachment" in response.headers.get("Content-Disposition", "")
        text = response.read().decode("utf-8")
    return Counter(
        (int(r["ts_ns"]), r["event"], r["rule"], r["reason"], r["who"])
        for r in csv.DictReader(io.StringIO(text))
    )


def influx_journal(demo: Demo, start_ns: int, end_ns: int) -> Counter[JournalKey]:
    """The site's journal straight from InfluxDB (InfluxQL on measurement ``alarms``)."""
    result = demo.influx.query(
        f"SELECT * FROM alarms WHERE site = '{SITE}' AND time >= {start_ns} AND time < {end_ns}",
        db=demo.db,
    )
    found: Counter[JournalKey] = Counter()
    for series in result["results"][0].get("series") or []:
        for values in series["values"]:
            row = dict(zip(series["columns"], values, strict=True))
            found[(int(row["time"]), row["event"], row["rule"], row.get("reason") or "",
                   row.get("who") or "")] += 1  # fmt: skip
    return found


# --- the summary's screenshot ---------------------------------------------------------------


def test_summary_screenshot(demo: Demo, browser: Browser) -> None:
    """The operator's summary with alarms of several priorities, at a desktop size."""
    overloaded(demo)
    browser.resize(*DESKTOP)
    driver = log_in_as(browser, demo, "otto")
    live(driver)

    wanted = [demo.stack.alarm_id(rule, asset) for rule, asset in (
        ("rig_h2s_high", RIG), ("crane_wind_warning", WINDY), (OVERLOAD_RULE, CRANE))]  # fmt: skip
    until(driver, lambda d: all(row_of(d, i) for i in wanted), f"rows of {wanted}")
    shown = {row.get_attribute("data-priority") for row in rows_in(driver)}
    assert {"critical", "high", "medium"} <= shown, shown
    driver.refresh()  # rows that came live flash for 6 s; rows there at load do not
    live(driver)
    path = screenshot(driver, demo.shots / "console-summary.png")
    assert path.stat().st_size > 10_000


# --- 3. a viewer cannot act -----------------------------------------------------------------


def test_viewer_has_no_acknowledge_and_api_refuses(demo: Demo, browser: Browser) -> None:
    overloaded(demo)
    browser.resize(*DESKTOP)
    target = demo.stack.alarm_id("crane_lmi_cutout", CRANE)  # forced with the overload
    assert alarm_of(demo, target)["acked"] is False
    driver = log_in_as(browser, demo, "vera")
    assert driver.find_element(By.ID, "user-role").text == "viewer"
    until(driver, lambda d: row_of(d, target), f"the row of {target}")
    assert not driver.find_elements(By.CSS_SELECTOR, ".ack-button")
    assert not driver.find_elements(By.ID, "ack-selected")
    assert not driver.find_elements(By.CSS_SELECTOR, "#summary-rows input.select-alarm")
    assert not driver.find_elements(By.CSS_SELECTOR, "a.actions-link")
    assert not driver.find_elements(By.CSS_SELECTOR, "form[action^='/console/alarms/']")

    # The alarm's own page shows it, with no form to act on it.
    driver.get(f"{demo.console}/alarm/{quoted(target)}")
    assert target in driver.page_source
    for form in ("ack-form", "shelve-form", "remove-form"):
        assert not driver.find_elements(By.ID, form), form

    # The API answers 403: with the viewer's token, and with her session and CSRF token.
    path = f"/alarms/{quoted(target)}/acknowledge"
    status, answer = call(demo, "POST", path, {"comment": "no"}, token=demo.tokens["vera"])
    assert status == 403, answer
    driver.get(demo.console)
    headers = {"Cookie": session_cookie(driver), "X-CSRF-Token": page_csrf(driver)}
    status, answer = call(demo, "POST", path, {"comment": "no"}, headers=headers)
    assert status == 403, answer
    assert alarm_of(demo, target)["acked"] is False


# --- 4. a supervisor shelves it -------------------------------------------------------------


def test_supervisor_shelves_for_ten_minutes(demo: Demo, browser: Browser) -> None:
    overloaded(demo)
    browser.resize(*DESKTOP)
    driver = log_in_as(browser, demo, "sue", f"/alarm/{quoted(demo.overload_id)}")
    form = driver.find_element(By.ID, "shelve-form")
    form.find_element(By.NAME, "reason").send_keys(SHELVE_REASON)
    Select(form.find_element(By.NAME, "duration_s")).select_by_value("600")
    asked_ns = time.time_ns()
    driver.find_element(By.ID, "shelve-button").click()
    assert "Shelved" in notice(driver)
    alarm = alarm_of(demo, demo.overload_id)
    until_ns = alarm["shelved_until_ns"]
    assert alarm["shelved_by"] == "sue" and alarm["shelve_reason"] == SHELVE_REASON, alarm
    assert abs(until_ns - asked_ns - 600 * NS) < 30 * NS, alarm

    driver.get(f"{demo.console}/shelved")
    row = row_of(driver, demo.overload_id, "hidden-rows")
    assert row.find_element(By.CSS_SELECTOR, ".who").text == "sue"
    assert row.find_element(By.CSS_SELECTOR, ".why").text == SHELVE_REASON
    until = row.find_element(By.CSS_SELECTOR, ".until").text
    assert datetime.fromtimestamp(until_ns / NS, UTC).strftime("%Y-%m-%d %H:%M:%SZ") in until
    assert "min" in until, until  # and how long is left

    driver.get(demo.console)
    live(driver)
    assert rows_in(driver), "the summary is empty"
    assert not driver.find_elements(
        By.CSS_SELECTOR, f'#summary-rows tr[data-alarm-id="{demo.overload_id}"]'
    ), "a shelved alarm is still on the summary"


def test_journal_screenshot(demo: Demo, browser: Browser) -> None:
    """The overload's journal after the acknowledge and the shelve, at a desktop size."""
    browser.resize(*DESKTOP)
    search = urllib.parse.urlencode({"site": SITE, "rule": OVERLOAD_RULE})
    driver = log_in_as(browser, demo, "otto", f"/journal?{search}")

    def operated(d: WebDriver) -> bool:
        who = [cell.text for cell in d.find_elements(By.CSS_SELECTOR, "#journal-rows .who")]
        if {"otto", "sue"} <= set(who):
            return True
        d.refresh()
        return False

    until(driver, operated, "otto and sue in the journal")
    path = screenshot(driver, demo.shots / "console-journal.png")
    assert path.stat().st_size > 10_000


# --- 6. a phone ------------------------------------------------------------------------------


def test_readable_at_360_px(demo: Demo, browser: Browser) -> None:
    overloaded(demo)
    browser.resize(*PHONE)
    try:
        driver = log_in_as(browser, demo, "otto")
        assert driver.execute_script("return window.innerWidth;") == PHONE[0]
        live(driver)
        until(driver, rows_in, "summary rows")
        fits_the_phone(driver, "summary-rows")
        driver.get(f"{demo.console}/journal?site={SITE}")
        fits_the_phone(driver, "journal-rows")
    finally:
        browser.resize(*DESKTOP)


def fits_the_phone(driver: WebDriver, tbody: str) -> None:
    """No horizontal scrolling, and the rows' text at least 14 px."""
    cells = until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f"#{tbody} tr td")[:40],
                  f"cells of #{tbody}")  # fmt: skip
    width = scroll_width(driver)
    assert width <= PHONE[0], (tbody, width)
    sizes = [(cell.text[:40], font_px(driver, cell)) for cell in cells]
    small = [(text, px) for text, px in sizes if px < MIN_FONT_PX]
    assert not small, (tbody, small)


# --- 5. a hostile alarm message renders as text ----------------------------------------------

HOSTILE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">'
FAST = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)


def canned(rule: str, message: str, offset_s: int = 0) -> dict[str, Any]:
    """An alarm as the console lists them (collector.alarms.notify.console_view)."""
    return {
        "v": 1, "alarm_id": f"{rule}:{SITE}:{CRANE}:lmi", "rule": rule, "site": SITE,
        "asset": CRANE, "device": "lmi", "state": "active_unacked", "active": True,
        "acked": False, "priority": "critical", "value": 116.0, "limit": 110.0,
        "message": message, "shelved_until_ns": None, "ts_ns": time.time_ns() - offset_s * NS,
        "latched": False, "max_shelve_s": 28800.0, "suppressed": False,
        "out_of_service": False, "shelved_by": "", "shelve_reason": "", "removed_by": "",
        "remove_reason": "",
    }  # fmt: skip


class Served(ServedApi):
    """The console's server (AlarmApi) on its own event loop in a thread."""

    def __init__(self, tmp_path: Path, alarms: list[dict[str, Any]]) -> None:
        self.users = UserStore(tmp_path / "users.yaml", hasher=FAST)
        self.users.add("otto", Role.OPERATOR, USERS["otto"][1])
        self.alarms = alarms
        self.changes = Changes()
        settings = HttpApiSettings(enabled=True, port=0, users_file=self.users.path)
        api = AlarmApi(
            settings, list_alarms=lambda: self.alarms, command=self._refuse, users=self.users,
            changes=self.changes,
        )  # fmt: skip
        super().__init__(api, timeout_s=60)

    async def _refuse(self, order: AlarmCommand) -> tuple[int, AlarmCommandResult]:
        return 409, AlarmCommandResult(
            request_id=order.request_id, alarm_id=order.alarm_id, action=order.action,
            ok=False, reason="canned", ts_ns=time.time_ns(),
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def test_script_in_alarm_message_renders_as_text(browser: Browser, tmp_path: Path) -> None:
    first = canned("crane_overload", f"overload {HOSTILE}", offset_s=5)
    with Served(tmp_path, [first]) as served:
        browser.resize(*DESKTOP)
        driver = log_in(browser, served.url + "/console", "otto", USERS["otto"][1])
        browser_errors(driver)  # from here on
        live(driver)
        driver.execute_script("window.__marker = 1;")
        row = row_of(driver, first["alarm_id"])
        assert row.find_element(By.CSS_SELECTOR, ".message").text == f"overload {HOSTILE}"

        # The same text arriving live (the event stream's rows, swapped in by the script).
        second = canned("crane_lmi_cutout", f"cutout {HOSTILE}")

        def add() -> None:
            served.alarms = [first, second]
            served.changes.bump()

        served.call_soon(add)
        live_row = until(driver, lambda d: row_of(d, second["alarm_id"]), "the live row")
        assert live_row.find_element(By.CSS_SELECTOR, ".message").text == f"cutout {HOSTILE}"
        assert driver.execute_script("return window.__marker;") == 1

        # ... and on the alarm's own page.
        driver.get(f"{served.url}/console/alarm/{quoted(first['alarm_id'])}")
        assert f"overload {HOSTILE}" in driver.find_element(By.TAG_NAME, "main").text

        assert driver.execute_script("return typeof window.__xss;") == "undefined"
        for element in driver.find_elements(By.CSS_SELECTOR, "main script, main img"):
            pytest.fail(f"markup from an alarm message became an element: {element.tag_name}")
        errors = browser_errors(driver)
        assert not errors, errors  # no CSP violation, no failed /x image, no script error
