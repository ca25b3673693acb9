"""A headless Chromium (Debian's `chromium`) driven over the DevTools protocol: open a page, collect
what a person's browser console would show (console errors, uncaught exceptions, failed loads) and
every network request, and evaluate expressions in the page."""
from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.sync.client import connect

INSTALL_HINT = "apt-get install chromium (deploy/run-tests.sh does it before the suite)"


def chromium_path() -> str:
    """The chromium binary; the tests fail without it (never skip), so a machine without it is noticed."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise AssertionError(f"chromium is not installed: {INSTALL_HINT}")
    return found


@dataclass
class PageReport:
    console_errors: list[str] = field(default_factory=list)  # console.error/assert, uncaught exceptions, log errors
    requests: list[str] = field(default_factory=list)  # every URL the page asked for (the page's own included)
    values: dict[str, Any] = field(default_factory=dict)  # the evaluated expressions


class Browser:
    """One headless chromium with a fresh profile; `with Browser() as b: b.open(url, {...})`."""

    def __enter__(self) -> Browser:
        self.profile = Path(tempfile.mkdtemp(prefix="loopline-chromium."))
        self.proc = subprocess.Popen(
            [chromium_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", "--disable-extensions", "--remote-debugging-port=0",
             "--remote-allow-origins=*", f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start (exit status {self.proc.poll()})")
            time.sleep(0.1)
        self.port = int(port_file.read_text().split()[0])
        return self

    def __exit__(self, *exc: Any) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.profile, ignore_errors=True)

    def open(self, url: str, expressions: dict[str, str], timeout_s: float = 60.0) -> PageReport:
        """Load `url` in a new tab, wait for its load event and a quiet moment, evaluate `expressions`."""
        target = httpx.put(f"http://127.0.0.1:{self.port}/json/new?about:blank", timeout=10).json()
        report = PageReport()
        ids = itertools.count(1)
        with connect(target["webSocketDebuggerUrl"], max_size=None, open_timeout=10) as ws:
            def call(method: str, **params: Any) -> dict[str, Any]:
                n = next(ids)
                ws.send(json.dumps({"id": n, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=timeout_s))
                    if msg.get("id") == n:
                        if "error" in msg:
                            raise AssertionError(f"{method}: {msg['error']}")
                        return msg.get("result", {})
                    observe(msg)

            def observe(msg: dict[str, Any]) -> None:
                method, p = msg.get("method"), msg.get("params", {})
                if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert"):
                    report.console_errors.append("console: " + " ".join(
                        str(a.get("value", a.get("description", ""))) for a in p["args"]))
                elif method == "Runtime.exceptionThrown":
                    d = p["exceptionDetails"]
                    report.console_errors.append(f"exception: {d.get('exception', {}).get('description') or d['text']}")
                elif method == "Log.entryAdded" and p["entry"]["level"] == "error":
                    report.console_errors.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
                elif method == "Network.requestWillBeSent":
                    report.requests.append(p["request"]["url"])
                elif method == "Network.loadingFailed":
                    report.console_errors.append(f"failed to load: {p.get('errorText')}")
                elif method == "Page.loadEventFired":
                    loaded.append(True)

            loaded: list[bool] = []
            for domain in ("Runtime", "Log", "Network", "Page"):
                call(f"{domain}.enable")
            call("Page.navigate", url=url)
            deadline = time.monotonic() + timeout_s
            while not loaded:
                if time.monotonic() > deadline:
                    raise AssertionError(f"{url} did not finish loading in {timeout_s}s")
                observe(json.loads(ws.recv(timeout=timeout_s)))
            quiet_until = time.monotonic() + 1.0  # late errors (e.g. a failed image) still arrive
            while time.monotonic() < quiet_until:
                try:
                    observe(json.loads(ws.recv(timeout=max(0.05, quiet_until - time.monotonic()))))
                except TimeoutError:
                    break
            for name, expression in expressions.items():
                result = call("Runtime.evaluate", expression=expression, returnByValue=True)
                if "exceptionDetails" in result:
                    raise AssertionError(f"{name}: {result['exceptionDetails']}")
                report.values[name] = result["result"].get("value")
        httpx.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}", timeout=10)
        return report
