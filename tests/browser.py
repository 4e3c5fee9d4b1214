"""Web pages as a browser loads them: a local HTML file opened in headless Chromium and inspected through the
Chrome DevTools Protocol (CDP): what its scripts evaluate to, every URL it requested, its console errors, a screenshot.

:mod:`tests.ui`'s DOM dump tells what a page says, not whether an embedded image decoded or whether the page tried
to fetch something from outside its file; CDP's Runtime and Network domains tell both. Only subprocess, websockets
and json (no Playwright or Selenium to install); tests skip with :data:`NO_BROWSER` where no Chromium is installed.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
import os
import queue
import re
import signal
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from websockets.sync.client import ClientConnection, connect

from tests.ui import BROWSER, NO_BROWSER

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions"]
FLAGS += ["--window-size=1280,900"]  # a laptop's width: pages lay out as people see them
LOADED = "document.readyState === 'complete' && Array.from(document.images).every(image => image.complete)"


class Page:
    """A page open in Chromium: commands over its CDP socket, the events that arrive between their replies kept."""

    def __init__(self, socket: ClientConnection, timeout_s: float) -> None:
        self.socket, self.timeout_s, self.ids = socket, timeout_s, itertools.count(1)
        self.requests: list[str] = []  # every URL requested, in order, failed ones too
        self.console_errors: list[str] = []  # console.error() calls and uncaught exceptions
        self.events: set[str] = set()  # the methods of the events seen since the last navigation

    def _receive(self, deadline: float, what: str) -> dict[str, Any]:
        """The next message from Chromium, an event recorded on its way."""
        try:
            message = json.loads(self.socket.recv(timeout=max(deadline - time.monotonic(), 0)))
        except TimeoutError:
            raise TimeoutError(f"no {what} from Chromium within {self.timeout_s:g} s") from None
        method, params = message.get("method"), message.get("params", {})
        if method:
            self.events.add(method)
        if method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Runtime.consoleAPICalled" and params["type"] == "error":
            texts = (str(arg.get("value", arg.get("description"))) for arg in params["args"])
            self.console_errors.append(" ".join(texts))
        elif method == "Runtime.exceptionThrown":
            self.console_errors.append(_described(params["exceptionDetails"]))
        return message

    def command(self, method: str, **params: Any) -> dict[str, Any]:
        """The result of CDP command ``method``; raises :class:`RuntimeError` with the error Chromium answers."""
        ident = next(self.ids)
        self.socket.send(json.dumps({"id": ident, "method": method, "params": params}))
        deadline = time.monotonic() + self.timeout_s
        while (message := self._receive(deadline, f"reply to {method}")).get("id") != ident:
            pass
        if "error" in message:
            raise RuntimeError(f"{method}: {message['error'].get('message')}")
        return message["result"]

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` (a promise awaited); raises :class:`RuntimeError` where it throws."""
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} threw {_described(result['exceptionDetails'])}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        """Open ``url`` and wait for its load event, then until the document and every image are complete."""
        self.events.clear()
        if error := self.command("Page.navigate", url=url).get("errorText"):
            raise RuntimeError(f"cannot open {url}: {error}")
        deadline = time.monotonic() + self.timeout_s
        while "Page.loadEventFired" not in self.events:
            self._receive(deadline, f"load event of {url}")
        while not self.evaluate(LOADED):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url}: document or images not complete within {self.timeout_s:g} s")
            time.sleep(0.05)

    def screenshot(self, out_png: Path, full_page: bool = True) -> Path:
        """A PNG of the viewport, or of the whole document (the viewport sized to its content for the shot)."""
        if full_page:
            size = self.command("Page.getLayoutMetrics")["cssContentSize"]
            box = {side: math.ceil(size[side]) for side in ("width", "height")}
            self.command("Emulation.setDeviceMetricsOverride", **box, deviceScaleFactor=1, mobile=False)
        try:
            out_png.write_bytes(base64.b64decode(self.command("Page.captureScreenshot", format="png")["data"]))
        finally:
            if full_page:
                self.command("Emulation.clearDeviceMetricsOverride")
        return out_png


def _described(details: dict[str, Any]) -> str:
    return details.get("exception", {}).get("description") or details["text"]


def _page_socket(browser: subprocess.Popen[str], lines: queue.Queue[str], deadline: float) -> str:
    """The CDP WebSocket URL of the browser's page, from the port its stderr announces."""
    seen: list[str] = []
    while not (match := re.search(r"DevTools listening on (ws://\S+)", "".join(seen[-1:]))):
        try:
            seen.append(lines.get(timeout=max(deadline - time.monotonic(), 0)))
        except queue.Empty:
            raise TimeoutError(f"Chromium did not print 'DevTools listening on' in time: {seen}") from None
        if not seen[-1]:
            raise RuntimeError(f"Chromium exited ({browser.poll()}) before listening: {seen}")
    targets_url = f"http://127.0.0.1:{urlparse(match[1]).port}/json/list"
    while time.monotonic() < deadline:
        with urllib.request.urlopen(targets_url, timeout=max(deadline - time.monotonic(), 0.1)) as reply:
            pages = [target for target in json.load(reply) if target["type"] == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        time.sleep(0.05)
    raise TimeoutError(f"no page target in {targets_url} in time")


@contextmanager
def open_page(path: Path, timeout_s: float = 30) -> Iterator[Page]:
    """``path`` loaded in a fresh headless Chromium (its own profile), every wait bounded by ``timeout_s``;
    the browser's whole process group killed and its profile removed on exit."""
    assert BROWSER, NO_BROWSER
    with tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True) as profile:
        command = [BROWSER, *FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"]
        browser = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            errors="replace", start_new_session=True,
        )  # fmt: skip
        assert browser.stderr
        lines: queue.Queue[str] = queue.Queue()  # stderr's lines, "" at its end: read on, so the pipe never fills
        reader = threading.Thread(target=lambda: [*map(lines.put, browser.stderr or ()), lines.put("")], daemon=True)
        reader.start()
        try:
            url = _page_socket(browser, lines, time.monotonic() + timeout_s)
            with connect(url, max_size=None, open_timeout=timeout_s, close_timeout=1) as socket:
                page = Page(socket, timeout_s)
                for domain in ("Network", "Page", "Runtime"):
                    page.command(f"{domain}.enable")
                page.navigate(path.resolve().as_uri())
                yield page
        finally:  # the browser's helper processes (zygote, renderer, GPU) too
            with suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
            reader.join(timeout=5)
            browser.stderr.close()
