"""Web pages as a browser shows them: the text of the DOM that headless Chromium renders, scripts run.

Tests of the stack's UIs skip with :data:`NO_BROWSER` where no Chromium is installed (Debian's package
`chromium`; ``.ci/run`` installs it where apt and root allow).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from contextlib import suppress
from html.parser import HTMLParser

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
NO_BROWSER = "no Chromium on PATH (the Debian package `chromium`, which .ci/run installs where apt and root allow)"


class _Text(HTMLParser):
    """The text a reader sees: the DOM's text outside scripts and styles, whitespace folded."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in ("script", "style"):
            self.hidden += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self.hidden:
            self.hidden -= 1

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def text_of(dom: str) -> str:
    parser = _Text()
    parser.feed(dom)
    return " ".join(" ".join(parser.parts).split())


def _dump_dom(url: str, budget_ms: int, timeout_s: float) -> str:
    """The DOM of ``url`` once the page's scripts had ``budget_ms`` of virtual time (network waits excluded)."""
    assert BROWSER, NO_BROWSER
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
        command = [BROWSER, *flags, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}", "--dump-dom"]
        browser = subprocess.Popen(
            [*command, url], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True
        )
        try:
            return browser.communicate(timeout=timeout_s)[0]
        except subprocess.TimeoutExpired:
            return ""
        finally:  # the browser's helper processes (zygote, renderer) too
            with suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()


def rendered_text(url: str, expected: Sequence[str], timeout_s: float = 60) -> str:
    """The text of ``url`` as rendered, rendered again (with more time for its scripts) until every string
    of ``expected`` shows or ``timeout_s`` has passed; the last rendering's text."""
    deadline, budget_ms = time.monotonic() + timeout_s, 10_000
    while True:
        text = text_of(_dump_dom(url, budget_ms, max(deadline - time.monotonic(), 30)))
        if all(item in text for item in expected) or time.monotonic() > deadline:
            return text
        budget_ms = min(2 * budget_ms, 40_000)
