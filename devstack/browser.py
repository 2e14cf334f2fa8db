"""Headless Chromium for the console's browser tests (issue 18), through selenium.

Debian's ``chromium`` and its ``chromedriver`` (package ``chromium-driver``), both put
in place by ``scripts/setup.sh``. Nothing is ever downloaded: the driver's path is given
to selenium (so Selenium Manager is not run at all), ``SE_OFFLINE`` is set in case it
ever were, and Chromium starts with its background networking (updates, safe browsing,
metrics) switched off, in a throw-away profile.

    with Browser.start(width=1280, height=800, log_dir=tmp) as browser:
        browser.driver.get("http://127.0.0.1:8470/console")

A missing browser or driver raises :class:`BrowserMissing`, whose message says what to
install; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Self

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

CHROMIUM = ("chromium", "chromium-browser")
CHROMIUM_FALLBACK = "/usr/bin/chromium"
CHROMEDRIVER_FALLBACK = "/usr/bin/chromedriver"
SETUP_HINT = (
    "the console's browser tests need Debian's chromium and chromium-driver: "
    "run scripts/setup.sh (or: sudo apt-get install chromium chromium-driver)"
)
FLAGS = (
    "--headless=new",
    "--no-sandbox",  # tests may run as root or in a container without user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",  # /dev/shm is small in containers: use /tmp
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--metrics-recording-only",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",  # screenshots without scroll bars; widths are measured, not seen
    "--mute-audio",
)


class BrowserMissing(RuntimeError):
    """Chromium or its chromedriver is not installed."""


def chromium_path() -> str | None:
    """Where the chromium executable is (the Debian launcher script), None if nowhere."""
    for name in CHROMIUM:
        found = shutil.which(name)
        if found:
            return found
    return CHROMIUM_FALLBACK if os.access(CHROMIUM_FALLBACK, os.X_OK) else None


def chromedriver_path() -> str | None:
    """Where chromedriver is, None if nowhere."""
    found = shutil.which("chromedriver") or CHROMEDRIVER_FALLBACK
    return found if os.path.isfile(found) and os.access(found, os.X_OK) else None


class Browser:
    """One headless Chromium with its chromedriver and a temporary profile."""

    def __init__(self, driver: webdriver.Chrome, profile: Path) -> None:
        self.driver = driver
        self.profile = profile

    @classmethod
    def start(cls, width: int = 1280, height: int = 800, log_dir: Path | None = None) -> Self:
        """Start Chromium at ``width`` x ``height``; chromedriver logs to
        ``log_dir/chromedriver.log`` when given. The browser's console messages are kept
        for ``driver.get_log("browser")``."""
        browser, driver_path = chromium_path(), chromedriver_path()
        if browser is None or driver_path is None:
            missing = " and ".join(
                name
                for name, path in (("chromium", browser), ("chromedriver", driver_path))
                if path is None
            )
            raise BrowserMissing(f"{missing} not found: {SETUP_HINT}")
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager, were it ever run: no downloads
        profile = Path(tempfile.mkdtemp(prefix="derrick-chromium-"))
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in FLAGS:
            options.add_argument(flag)
        options.add_argument(f"--window-size={width},{height}")
        options.add_argument(f"--user-data-dir={profile}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        log_output = str(log_dir / "chromedriver.log") if log_dir is not None else os.devnull
        service = Service(executable_path=driver_path, log_output=log_output)
        try:
            driver = webdriver.Chrome(service=service, options=options)
        except Exception:
            shutil.rmtree(profile, ignore_errors=True)
            raise
        driver.set_page_load_timeout(60)
        driver.set_script_timeout(30)
        return cls(driver, profile)

    def resize(self, width: int, height: int) -> None:
        """The viewport (the page's ``innerWidth`` x ``innerHeight``) at this size."""
        self.driver.set_window_size(width, height)
        inner = self.driver.execute_script("return [window.innerWidth, window.innerHeight];")
        if inner != [width, height]:  # the window has borders: make up the difference
            self.driver.set_window_size(2 * width - inner[0], 2 * height - inner[1])

    def reset(self) -> None:
        """Logged out and on a blank page: the cookies of every site are dropped (all
        loopback servers share one host, and cookies do not tell ports apart)."""
        with contextlib.suppress(Exception):
            self.driver.get("about:blank")
        self.driver.execute_cdp_cmd("Network.clearBrowserCookies", {})

    def quit(self) -> None:
        """Close the browser and its driver; remove the profile."""
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.quit()
