"""The report of a tiny real campaign, opened in headless Chromium the way a person opens it: from disk.

A campaign runs as a user runs it (``python -m nas search``, SQLite), ``python -m nas report`` writes its report,
and Chromium loads the page: every figure must load (a natural width above 0), nothing may be logged as an error,
and nothing may be fetched from anywhere but the report's directory. A copy with a figure deleted shows that the
check sees a broken page. The page opens with its verdict on the first screen, and a mouse click on a header of the
trials table sorts it in place. A screenshot of the page's top is left in the test's temporary directory; the test
prints its path (``pytest -s`` shows it).

Chromium is driven over its DevTools pipe (``--remote-debugging-pipe``: NUL-separated JSON messages, commands on
file descriptor 3 and replies on 4), so no browser-automation package is needed. Without Chromium the test is
skipped, or fails where NAS_REQUIRE_ALL_TESTS is set (``.ci/run`` installs Chromium from the distribution).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from nas.figures import FIGURES
from nas.outputs import REPORT_FILE

from conftest import service_unavailable  # tests/conftest.py; pytest puts tests/ on sys.path to load it
from e2e_support import load as load_study
from e2e_support import nas, sqlite_url, write_campaign

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
)
WINDOW = (1280, 2000)
TIMEOUT_S = 120
IMAGES = "Array.from(document.images, image => [image.getAttribute('src'), image.complete, image.naturalWidth])"


class DevTools:
    """One headless Chromium, driven over its DevTools pipe; remembers every event it was sent."""

    def __init__(self, chromium: str, profile: Path) -> None:
        commands_in, commands_out = os.pipe()
        replies_in, replies_out = os.pipe()
        # The pipe must sit at fds 3 and 4 in the browser; moved above 9 first so that no dup2 overwrites the other.
        child_commands, child_replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (commands_in, replies_out))

        def map_pipe() -> None:
            os.dup2(child_commands, 3)
            os.dup2(child_replies, 4)

        self.process = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, "--remote-debugging-pipe", f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(3, 4), preexec_fn=map_pipe, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for fd in (commands_in, replies_out, child_commands, child_replies):
            os.close(fd)
        self._commands, self._replies = commands_out, replies_in
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def __enter__(self) -> DevTools:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.call("Browser.close")
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
            os.close(self._commands)
            os.close(self._replies)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        reply = self.wait_for(lambda received: received.get("id") == self._next_id)
        assert "error" not in reply, reply
        return reply["result"]

    def wait_for(self, wanted: Any) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" not in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            ready, _, _ = select.select([self._replies], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"Chromium sent nothing for {TIMEOUT_S} s"
            chunk = os.read(self._replies, 1 << 16)
            assert chunk, "Chromium closed its DevTools pipe"
            self._buffer += chunk

    def open(self, url: str) -> str:
        """Loads ``url`` in a new tab, returns the tab's session once its load event has fired."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=session)
        self.call("Page.navigate", {"url": url}, session=session)
        self.wait_for(lambda message: message.get("method") == "Page.loadEventFired")
        return session

    def evaluate(self, session: str, expression: str) -> Any:
        reply = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session)
        return reply["result"]["value"]

    def errors(self) -> list[str]:
        """Errors the page logged: failed loads, exceptions, console.error."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(f"{params['entry']['text']} ({params['entry'].get('url', '')})")
            elif method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"]["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
                found.append(str(params["args"]))
        return found

    def requested(self) -> list[str]:
        return [event["params"]["request"]["url"] for event in self.events
                if event.get("method") == "Network.requestWillBeSent"]


@pytest.fixture
def chromium() -> str:
    path = next((found for found in map(shutil.which, CHROMIUM_NAMES) if found), None)
    if path is None:
        service_unavailable(f"Chromium not installed (looked for {', '.join(CHROMIUM_NAMES)}); "
                            "install the distribution's chromium package to run the report's browser test")
    return path


@pytest.fixture(scope="module")
def campaign_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report directory of a finished tiny campaign, written by the ``nas report`` command (its study in
    ``runs/e2e.db`` beside it); the tests only read it."""
    tmp_path = tmp_path_factory.mktemp("campaign")
    campaign = write_campaign(tmp_path)
    # in the driver's process (--executor local): the report reads the study, whichever executor wrote it
    for argv in (["search", "--config", str(campaign), "--executor", "local"],
                 ["report", "--study", "e2e", "-o", "report"]):
        result = nas(tmp_path, *argv)
        assert result.returncode == 0, result.stderr
    return tmp_path / "report"


def load(chromium: str, report: Path, profile: Path) -> tuple[list[list[Any]], list[str], list[str]]:
    """The page's images (src, complete, natural width), its errors and every URL it requested."""
    with DevTools(chromium, profile) as browser:
        session = browser.open((report / REPORT_FILE).as_uri())
        images = browser.evaluate(session, IMAGES)
        return images, browser.errors(), browser.requested()


def test_the_report_opens_in_chromium_with_every_figure(chromium, campaign_report, tmp_path):
    figures = sorted(path.name for path in campaign_report.glob("*.png"))  # the learning curves only with rungs
    assert {f"{figure.name}.png" for figure in FIGURES if figure.shown is None} <= set(figures)
    images, errors, requested = load(chromium, campaign_report, tmp_path / "profile")
    assert sorted(source for source, _, _ in images) == figures
    assert all(complete and width > 0 for _, complete, width in images), images
    assert errors == []
    assert requested and all(url.startswith(campaign_report.as_uri()) for url in requested), requested

    broken = tmp_path / "broken"  # the same check on a page with a figure missing must see it
    shutil.copytree(campaign_report, broken)
    (broken / "history.png").unlink()
    images, errors, _ = load(chromium, broken, tmp_path / "profile-broken")
    assert [width for source, _, width in images if source == "history.png"] == [0]
    assert any("ERR_FILE_NOT_FOUND" in error and "history.png" in error for error in errors), errors


VERDICT = """(() => {
  const line = document.querySelector("#verdict-line, #baseline-wins");
  return {top: document.querySelector("#verdict").getBoundingClientRect().top, screen: window.innerHeight,
          line: line && line.textContent,
          versus: Array.from(document.querySelectorAll("#verdict-table tbody tr"), row => row.cells[0].textContent),
          factors: document.querySelectorAll("#factors tbody tr").length,
          definition: document.querySelector("#noise-definition").textContent};
})()"""
HEADERS = "Array.from(document.querySelectorAll('#all-trials thead th'), cell => cell.textContent)"
ORDER = "Array.from(document.querySelectorAll('#all-trials tbody tr'), row => Number(row.cells[0].textContent))"


def click(browser: DevTools, session: str, selector: str) -> None:
    """A mouse click (pressed and released) on the middle of the element ``selector``, scrolled into view first."""
    x, y = browser.evaluate(session, f"""(() => {{
      const element = document.querySelector({json.dumps(selector)});
      element.scrollIntoView({{block: "center"}});
      const box = element.getBoundingClientRect();
      return [box.x + box.width / 2, box.y + box.height / 2];
    }})()""")
    for kind in ("mousePressed", "mouseReleased"):
        browser.call("Input.dispatchMouseEvent", {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1},
                     session)


def test_the_report_opens_with_its_verdict_and_the_trials_table_sorts_on_a_click(chromium, campaign_report,
                                                                                   tmp_path):
    trials = load_study(sqlite_url(campaign_report.parent)).trials
    complete = sorted((trial for trial in trials if trial.value is not None), key=lambda trial: trial.value)
    missing = [trial.number for trial in trials if trial.value is None]  # last in either order
    with DevTools(chromium, tmp_path / "profile") as browser:
        session = browser.open((campaign_report / REPORT_FILE).as_uri())
        verdict = browser.evaluate(session, VERDICT)
        assert 0 < verdict["top"] < verdict["screen"], verdict  # on the first screen, before any figure
        assert "trial" in verdict["line"] and "baseline" in verdict["line"], verdict
        assert verdict["versus"][0] == "baseline" and len(verdict["versus"]) == 2, verdict
        assert verdict["factors"] >= 2 and "σ(A) = √(A(1−A)/n)" in verdict["definition"], verdict
        assert "z·√(δ₁² + δ₂²)" in verdict["definition"], verdict  # the one rule, stated where it is applied

        headers = browser.evaluate(session, HEADERS)
        assert browser.evaluate(session, ORDER) == [trial.number for trial in trials]  # one row each, trial order
        reward = f"#all-trials thead th:nth-child({headers.index('reward') + 1})"
        sorted_as = f"document.querySelector({json.dumps(reward)}).getAttribute('aria-sort')"
        click(browser, session, reward)
        assert browser.evaluate(session, ORDER) == [trial.number for trial in complete] + missing
        assert browser.evaluate(session, sorted_as) == "ascending"
        click(browser, session, reward)
        assert browser.evaluate(session, ORDER) == [trial.number for trial in reversed(complete)] + missing
        assert browser.evaluate(session, sorted_as) == "descending"
        click(browser, session, "#all-trials thead th:nth-child(1)")  # back to trial order
        assert browser.evaluate(session, ORDER) == [trial.number for trial in trials]
        assert browser.errors() == []

    screenshot = tmp_path / "report-top.png"
    subprocess.run(
        [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile-screenshot'}", f"--screenshot={screenshot}",
         f"--window-size={WINDOW[0]},{WINDOW[1]}", (campaign_report / REPORT_FILE).as_uri()],
        capture_output=True, timeout=TIMEOUT_S, check=True,
    )
    with Image.open(screenshot) as image:
        assert image.format == "PNG" and image.size == WINDOW
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is not None and len(colours) > 100, "the screenshot is (nearly) blank"
    print(f"the report's top, as Chromium shows it: {screenshot}")
