"""Headless Chromium for tests: dump a page's DOM after its scripts ran, or screenshot it.

Reuse from any test::

    from tests.browser import dump_dom, parse_dom, screenshot

    html = await asyncio.to_thread(dump_dom, f"{base}/?token=t", 4000)
    dom = parse_dom(html)
    assert dom.by_id("node-count").text() == "137"
    city = dom.one(**{"data-node": "431200"})
    assert "state-failed" in city.classes

``dump_dom`` and ``screenshot`` are blocking (one Chromium process each, a fresh
profile, no network but the URL's own host); call them through ``asyncio.to_thread``
when the page is served by an aiohttp server in the test's own event loop.  A missing
Chromium raises :class:`ChromiumMissing` — the test fails, it is never skipped.
``--virtual-time-budget`` lets the page's timers and fetches run for ``wait_ms`` of
virtual time (Chromium waits for pending fetches), then the DOM is serialised.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

CHROMIUM = "/usr/bin/chromium"
#: wall-clock allowance on top of the virtual time budget (start-up, fonts, teardown)
STARTUP_ALLOWANCE_S = 60.0


class ChromiumMissing(RuntimeError):
    """No Chromium on this machine: the browser tests cannot run (and must not pass)."""


class ChromiumFailed(RuntimeError):
    """Chromium exited non-zero or ran past its timeout; carries its stderr tail."""


def chromium_path() -> str | None:
    """``/usr/bin/chromium`` if executable, else ``chromium`` on PATH, else None."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    return shutil.which("chromium")


def _require() -> str:
    path = chromium_path()
    if path is None:
        raise ChromiumMissing(
            "chromium not found (looked at /usr/bin/chromium and PATH): the dashboard tests need it. "
            "Install it with `apt-get install -y chromium` (.ci/run does this).")
    return path


def _run(url: str, wait_ms: int, extra: list[str]) -> str:
    """Run one headless Chromium on ``url`` with a throw-away profile; return its stdout."""
    exe = _require()
    with tempfile.TemporaryDirectory(prefix="syncd-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={profile}",
               f"--virtual-time-budget={int(wait_ms)}", *extra, url]
        # A session of its own, so a timeout kills Chromium's helper processes too.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        timeout = wait_ms / 1000 + STARTUP_ALLOWANCE_S
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            raise ChromiumFailed(f"chromium ran past {timeout:.0f}s on {url}: "
                                 f"{err.decode(errors='replace')[-2000:]}") from None
        if proc.returncode != 0:
            raise ChromiumFailed(f"chromium exited {proc.returncode} on {url}: "
                                 f"{err.decode(errors='replace')[-2000:]}")
        return out.decode("utf-8", errors="replace")


def dump_dom(url: str, wait_ms: int = 3000) -> str:
    """The page's serialised DOM after ``wait_ms`` of virtual time (scripts, timers, fetches)."""
    html = _run(url, wait_ms, ["--dump-dom"])
    if "<html" not in html.lower():
        raise ChromiumFailed(f"chromium printed no DOM for {url}: {html[:500]!r}")
    return html


def screenshot(url: str, path: str | Path, wait_ms: int = 3000, size: str = "1400,1000") -> Path:
    """Save a PNG of the page (``size`` is ``"width,height"`` of the window) to ``path``."""
    target = Path(path).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        target.unlink()
    _run(url, wait_ms, ["--hide-scrollbars", f"--window-size={size}", f"--screenshot={target}"])
    if not target.is_file() or target.stat().st_size == 0:
        raise ChromiumFailed(f"chromium wrote no screenshot to {target}")
    return target


# -- a small DOM for assertions on dump_dom's output --------------------------------------

_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}


@dataclass
class Element:
    """One element of a parsed page: tag, attributes, children (elements and text)."""

    tag: str
    attrs: dict[str, str]
    children: list["Element | str"] = field(default_factory=list)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def text(self) -> str:
        """All text below this element, whitespace collapsed."""
        parts: list[str] = []

        def walk(e: Element) -> None:
            for c in e.children:
                if isinstance(c, str):
                    parts.append(c)
                else:
                    walk(c)
        walk(self)
        return " ".join("".join(parts).split())

    def iter(self) -> Iterator["Element"]:
        """This element and every element below it, in document order."""
        yield self
        for c in self.children:
            if isinstance(c, Element):
                yield from c.iter()

    def find_all(self, tag: str | None = None, cls: str | None = None, **attrs: str | bool) -> list["Element"]:
        """Elements below (and including) this one matching ``tag``, class ``cls`` and ``attrs``;
        an attribute given as ``True`` only has to be present.  Use ``**{"data-node": "430100"}``."""
        out = []
        for e in self.iter():
            if tag is not None and e.tag != tag:
                continue
            if cls is not None and cls not in e.classes:
                continue
            if all((k in e.attrs) if v is True else e.attrs.get(k) == v for k, v in attrs.items()):
                out.append(e)
        return out

    def one(self, tag: str | None = None, cls: str | None = None, **attrs: str | bool) -> "Element":
        """The single element matching; AssertionError naming the query when there are 0 or 2+."""
        found = self.find_all(tag, cls, **attrs)
        assert len(found) == 1, f"expected one element {tag or '*'} .{cls or ''} {attrs}, found {len(found)}"
        return found[0]

    def by_id(self, element_id: str) -> "Element":
        return self.one(id=element_id)


class _Builder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        if tag not in _VOID:
            self.stack.append(e)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].children.append(Element(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data: str) -> None:
        self.stack[-1].children.append(data)


def parse_dom(html: str) -> Element:
    """Parse serialised HTML (as printed by :func:`dump_dom`) into an :class:`Element` tree."""
    b = _Builder()
    b.feed(html)
    b.close()
    return b.root
