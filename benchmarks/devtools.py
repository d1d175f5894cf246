"""A small synchronous driver for headless Chromium over the DevTools protocol (CDP), shared by the
browser tests (tests/test_browser.py, through tests/browser.py) and the page-load benchmark
(benchmarks/browser.py).

Why not Playwright or Puppeteer: both download a browser build of their own, and CI cannot fetch one.
Debian's `chromium` package speaks CDP itself; with `--remote-debugging-pipe` it reads commands on
file descriptor 3 and writes answers and events on descriptor 4, each a JSON message ended by a NUL
byte, so this file needs nothing beyond the standard library.

One `Browser` per test module (or benchmark run); one `Page` per test (or page load), each in a
browser context of its own (its own cache, cookies and connections), so no load sees another's
cached resources or warm connections.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

Message = dict[str, Any]

# Descriptors 3 and 4 are where Chromium expects the pipe; bash moves the pipe's ends there and
# closes them where they were, so Chromium inherits nothing else (Popen can only keep descriptors
# at the numbers they already have, and 3 and 4 may be taken in this process).
_LAUNCH = 'exec "$@" 3<&"$CDP_IN" 4>&"$CDP_OUT" {CDP_IN}<&- {CDP_OUT}>&-'
FLAGS = (
    "--headless",  # the new headless mode: the real browser, without a window
    "--remote-debugging-pipe",
    "--no-sandbox",  # tests may run as root, where the sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",  # the server speaks TCP only; no Alt-Svc probing either way
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
    "--window-size=1280,900",
    # Not --disable-crashpad-for-testing (to keep crashpad from starting): with it, Chromium 156's
    # network service crashes at once ("FD ownership violation") and every navigation fails with
    # net::ERR_ABORTED. close() ends the crash handlers instead.
    "about:blank",
)


class BrowserError(AssertionError):
    """Chromium could not start, or a command failed; the message says why (an AssertionError, so
    a test that meets it fails, with the browser's own words, rather than erroring obscurely)."""


def find_chromium() -> str:
    """The Chromium binary: $CHROMIUM, else `chromium` (Debian) or `chromium-browser` on PATH."""
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser"):
        if name and (path := shutil.which(name)):
            return path
    raise BrowserError("Chromium not found: install Debian's chromium package "
                       "(apt-get install --no-install-recommends chromium), or set $CHROMIUM")


def spki_hash(cert_pem: bytes) -> str:
    """base64(SHA-256(SubjectPublicKeyInfo DER)) of the first certificate in `cert_pem`: what
    --ignore-certificate-errors-spki-list takes to trust exactly that key, and no other."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


def _pipe() -> tuple[int, int]:
    """A pipe whose ends are above 4, so that moving them onto 3 and 4 never overwrites one."""
    ends = []
    for fd in os.pipe():
        ends.append(fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10))
        os.close(fd)
    return ends[0], ends[1]


def _helpers(profile: Path) -> list[int]:
    """Live processes (not zombies: those have an empty command line) whose command line names
    `profile`: the crash handlers of the Chromium started with it."""
    marker = str(profile).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


class Browser:
    """A Chromium process and the CDP pipe to it. Commands block until their answer arrives; events
    are kept (per session) for `wait_event` and `events`."""

    def __init__(self, proc: subprocess.Popen[bytes], to_browser: int, from_browser: int,
                 profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self.log_path = profile / "chromium.log"
        self._out = os.fdopen(to_browser, "wb", buffering=0)
        self._in = os.fdopen(from_browser, "rb", buffering=0)
        self._lock = threading.Condition()
        self._write_lock = threading.Lock()
        self._next_id = 0
        self._answers: dict[int, Message] = {}
        self._events: list[Message] = []
        self._closed = False
        self._reader = threading.Thread(target=self._read_loop, name="cdp-reader", daemon=True)
        self._reader.start()

    # -- starting and stopping ------------------------------------------------------------------

    @classmethod
    def launch(cls, profile: Path, *, spki: str, extra: tuple[str, ...] = (),
               timeout: float = 30) -> Browser:
        """Start Chromium with a fresh profile under `profile`, trusting the key `spki`; wait until
        it answers a command. One retry: a first start on a cold machine (fonts, shader caches being
        built) can be slow or fail where a second succeeds."""
        errors = []
        for attempt in (1, 2):
            browser = None
            try:
                browser = cls._spawn(profile / f"attempt{attempt}", spki, extra)
                browser.send("Browser.getVersion", timeout=timeout)
                return browser
            except BrowserError as e:
                errors.append(f"attempt {attempt}: {e}")
                if browser is not None:
                    browser.close()
        raise BrowserError("Chromium did not start:\n" + "\n".join(errors))

    @classmethod
    def _spawn(cls, profile: Path, spki: str, extra: tuple[str, ...]) -> Browser:
        home = profile / "home"  # Chromium's config, caches, NSS database and crash reports go here
        home.mkdir(parents=True, exist_ok=True)
        args = [find_chromium(), f"--user-data-dir={profile / 'data'}",
                f"--ignore-certificate-errors-spki-list={spki}", *extra, *FLAGS]
        cmd_in, to_browser = _pipe()      # we write commands, Chromium reads them on fd 3
        from_browser, cmd_out = _pipe()   # Chromium writes on fd 4, we read
        env = {**os.environ, "CDP_IN": str(cmd_in), "CDP_OUT": str(cmd_out), "HOME": str(home),
               "XDG_CONFIG_HOME": str(home / ".config"), "XDG_CACHE_HOME": str(home / ".cache")}
        try:
            with open(profile / "chromium.log", "wb") as log:
                proc = subprocess.Popen(
                    ["bash", "-c", _LAUNCH, "chromium", *args], pass_fds=(cmd_in, cmd_out), env=env,
                    stdin=subprocess.DEVNULL, stdout=log, stderr=log, process_group=0)
        except OSError as e:
            for fd in (to_browser, from_browser):
                os.close(fd)
            raise BrowserError(f"cannot run {args[0]}: {e}") from None
        finally:
            os.close(cmd_in)
            os.close(cmd_out)
        return cls(proc, to_browser, from_browser, profile)

    def close(self) -> None:
        """Ask Chromium to quit, then kill what is left of it and wait until it is gone, so no
        process outlives the test whatever state it was in."""
        if not self._closed and self.proc.poll() is None:
            with contextlib.suppress(BrowserError):
                self.send("Browser.close", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        self._closed = True
        self._kill_all()
        for stream in (self._out, self._in):
            with contextlib.suppress(OSError):
                stream.close()

    def _kill_all(self, timeout: float = 10) -> None:
        """SIGKILL the process group Popen made for Chromium (browser, zygotes, renderers, GPU and
        utility processes) and the crash handlers it started in sessions of their own (found by
        this profile's path in their command line), until none is left. Orphans are reaped by
        init, which takes a moment."""
        deadline = time.monotonic() + timeout
        while True:
            alive = _helpers(self.profile)
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # raises once the group is empty
                alive.append(self.proc.pid)
            if self.proc.poll() is None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(1)
            if not alive or time.monotonic() > deadline:
                return
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        """The end of Chromium's standard error, for failure messages, without its complaints
        about D-Bus (there is no system bus in a container, and Chromium does not need one)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        useful = [line for line in text.splitlines() if "dbus" not in line]
        return "\n".join(useful[-lines:]) or "(empty log)"

    # -- the protocol ---------------------------------------------------------------------------

    def send(self, method: str, params: Message | None = None, *, session: str | None = None,
             timeout: float = 15) -> Message:
        """Send one command (to the browser, or to a page's `session`) and return its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
        message: Message = {"id": ident, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            with self._write_lock:
                self._out.write(json.dumps(message).encode() + b"\0")
        except (OSError, ValueError) as e:
            raise self._failure(f"{method}: cannot write to Chromium ({e})") from None
        with self._lock:
            if not self._lock.wait_for(lambda: ident in self._answers or self._closed, timeout):
                raise self._failure(f"{method}: no answer in {timeout:g}s")
            if ident not in self._answers:
                raise self._failure(f"{method}: Chromium went away")
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method} failed: {answer['error']}")
        return answer.get("result", {})

    def mark(self) -> int:
        """A position in the event record: `wait_event(after=...)` looks only at later events."""
        with self._lock:
            return len(self._events)

    def wait_event(self, method: str, *, session: str | None = None, timeout: float = 15,
                   after: int = 0, where: Callable[[Message], bool] = lambda params: True) -> Message:
        """The params of the first event `method` (on `session`, past the mark `after`) matching
        `where`, waiting for it."""
        def found() -> Message | None:
            for event in self._events[after:]:
                if (event["method"] == method and event.get("sessionId") == session
                        and where(event.get("params", {}))):
                    return event.get("params", {})
            return None

        with self._lock:
            if self._lock.wait_for(lambda: found() is not None or self._closed, timeout):
                params = found()
                if params is not None:
                    return params
        raise self._failure(f"no {method} event in {timeout:g}s")

    def events(self, method: str, *, session: str | None = None) -> list[Message]:
        """The params of every `method` event received so far on `session`."""
        with self._lock:
            return [e.get("params", {}) for e in self._events
                    if e["method"] == method and e.get("sessionId") == session]

    def _read_loop(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._in.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            with self._lock:
                for raw in filter(None, messages):
                    self._dispatch(json.loads(raw))
                self._lock.notify_all()
        with self._lock:
            self._closed = True
            self._lock.notify_all()

    def _dispatch(self, message: Message) -> None:
        if "id" in message:
            self._answers[message["id"]] = message
        else:
            self._events.append(message)

    def _failure(self, what: str) -> BrowserError:
        code = self.proc.poll()
        state = "is still running" if code is None else f"has exited with status {code}"
        return BrowserError(f"{what}; Chromium {state}; its log ({self.log_path}) ends:\n"
                            f"{self.log_tail()}")

    # -- pages ----------------------------------------------------------------------------------

    def new_page(self) -> Page:
        """A tab in a new browser context: nothing cached, no cookies, no open connections."""
        context = self.send("Target.createBrowserContext", {"disposeOnDetach": True})["browserContextId"]
        target = self.send("Target.createTarget", {"url": "about:blank", "browserContextId": context})
        session = self.send("Target.attachToTarget",
                            {"targetId": target["targetId"], "flatten": True})["sessionId"]
        page = Page(self, session, context)
        for domain in ("Page", "Network", "Runtime"):
            page.send(f"{domain}.enable")
        return page


@dataclass
class Page:
    """One tab, driven through its flat CDP session."""

    browser: Browser
    session: str
    context: str
    closed: bool = False

    def send(self, method: str, params: Message | None = None, *, timeout: float = 15) -> Message:
        return self.browser.send(method, params, session=self.session, timeout=timeout)

    def events(self, method: str) -> list[Message]:
        return self.browser.events(method, session=self.session)

    def goto(self, url: str, *, timeout: float = 20) -> None:
        """Navigate and wait for the load event (every subresource of the page fetched)."""
        started, mark = time.monotonic(), self.browser.mark()
        result = self.send("Page.navigate", {"url": url}, timeout=timeout)
        if result.get("errorText"):
            raise BrowserError(f"navigating to {url} failed: {result['errorText']}")
        left = max(1.0, timeout - (time.monotonic() - started))
        self.browser.wait_event("Page.loadEventFired", session=self.session, timeout=left,
                                after=mark)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (promises awaited), as JSON data."""
        result = self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self) -> bytes:
        """The viewport as PNG bytes."""
        return base64.b64decode(self.send("Page.captureScreenshot", {"format": "png"})["data"])

    def cookies(self) -> list[Message]:
        """Every cookie of this page's browser context."""
        return self.browser.send("Storage.getCookies", {"browserContextId": self.context})["cookies"]

    def close(self) -> None:
        """Drop the browser context: its tab, cache, cookies and connections."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(BrowserError):
                self.browser.send("Target.disposeBrowserContext", {"browserContextId": self.context})
