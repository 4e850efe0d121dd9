"""A real headless Chromium for the browser tests (Debian's chromium + chromium-driver, which
.ci/run installs), driven by Selenium. Screenshots go to $EMOSWEEP_TEST_ARTIFACTS (default
test-artifacts/ in the checkout) and stay there after the run."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

ARTIFACTS = Path(os.environ.get("EMOSWEEP_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))


def find_chromium() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def chromium(width: int = 1500, height: int = 1000):
    """A headless Chromium session; the test is skipped, with the reason, where none is installed."""
    found = find_chromium()
    if found is None:
        pytest.skip("no Chromium here: `apt-get install chromium chromium-driver` (.ci/run does it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    # offline machines: no background requests to Google's hosts, which are refused one by one
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--disable-dev-shm-usage", f"--window-size={width},{height}",
                f"--user-data-dir={tempfile.mkdtemp(prefix='emosweep-chromium-')}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=found[1]), options=options)


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.25, what: str = "the page"):
    """predicate() until it returns something truthy; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as e:  # the element is not there yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")
