"""Headless Chromium for the dashboard tests, through Selenium.

Debian's ``chromium`` and ``chromium-driver`` are used as installed (no
driver download): :func:`start_browser` skips the test when either is
missing, gives each browser a fresh profile in the test's work directory
and registers its ``quit()`` as cleanup, so a failing test never leaves a
browser behind. Artifacts (screenshots) go to ``$TEETH_ARTIFACTS``
(tox's functional environment sets it to ``.tox/functional/artifacts``),
else to ``teeth-artifacts`` in the temporary directory.
"""

import os
import shutil
import tempfile
import unittest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def artifacts_dir():
    path = os.environ.get("TEETH_ARTIFACTS") or os.path.join(
        tempfile.gettempdir(), "teeth-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


def start_browser(testcase, workdir, cls_level=False):
    """A headless Chromium WebDriver (quit at (class) cleanup)."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome import service as chrome_service
    except ImportError:
        raise unittest.SkipTest("selenium is not installed")
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(path)):
            raise unittest.SkipTest("%s is not installed" % path)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-", dir=workdir)
    options.add_argument("--user-data-dir=%s" % profile)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = chrome_service.Service(executable_path=CHROMEDRIVER,
                                     log_output=os.path.join(
                                         workdir, "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    (testcase.addClassCleanup if cls_level else testcase.addCleanup)(
        driver.quit)
    driver.set_page_load_timeout(30)
    return driver


def console_errors(driver):
    """The browser console's SEVERE entries since the last call."""
    return [entry for entry in driver.get_log("browser")
            if entry.get("level") == "SEVERE"]
