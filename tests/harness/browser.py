"""Render an HTML page in headless Chromium (Debian's `chromium`) and read what it shows.

`inspect_page(path)` copies the page with a small script appended, runs
``chromium --headless --dump-dom`` on the copy and returns what the script measured in
the rendered document: which section ids exist, and per inline SVG plot its rendered
size, its `data-marks` (data artists drawn, see `analytics._plots`) and the id of the
section it sits in. The page itself is opened from a file with the network off, so a
page that needs the network shows it as missing content.
"""

from __future__ import annotations

import html
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["BrowserError", "PagePlot", "PageView", "chromium_path", "inspect_page"]

_PROBE = """
<script>
(() => {
  const out = {sections: [], plots: [], external: []};
  document.querySelectorAll('h2[id]').forEach(e => out.sections.push(e.id));
  let section = null;
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_ELEMENT);
  for (let n = walker.currentNode; n; n = walker.nextNode()) {
    if (n.tagName === 'H2' && n.id) section = n.id;
    if (n.tagName === 'svg' && n.classList.contains('qw-plot')) {
      const box = n.getBoundingClientRect();
      out.plots.push({section: section, width: box.width, height: box.height,
                      marks: Number(n.getAttribute('data-marks'))});
    }
  }
  document.querySelectorAll('[src],[href]').forEach(e => {
    const url = e.getAttribute('src') || e.getAttribute('href');
    if (/^(https?:)?\\/\\//.test(url)) out.external.push(url);
  });
  const pre = document.createElement('pre');
  pre.id = 'qw-probe';
  pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
})();
</script>
"""


class BrowserError(Exception):
    """Chromium is missing or failed to render the page."""


@dataclass(frozen=True, slots=True)
class PagePlot:
    section: str | None
    width: float
    height: float
    marks: int


@dataclass(frozen=True, slots=True)
class PageView:
    sections: frozenset[str]
    plots: tuple[PagePlot, ...]
    external: tuple[str, ...]


def chromium_path() -> str | None:
    """The system Chromium binary, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def inspect_page(page: Path, workdir: Path) -> PageView:
    """Render `page` in headless Chromium and return what the probe saw."""
    binary = chromium_path()
    if binary is None:
        raise BrowserError("chromium is not installed (scripts/ensure-system.sh installs it)")
    probed = workdir / "probed.html"
    text = page.read_text(encoding="utf-8")
    probed.write_text(text.replace("</body>", _PROBE + "</body>"), encoding="utf-8")
    profile = workdir / "chromium-profile"
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",  # tests run as root in CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--proxy-server=127.0.0.1:9",  # no network: a page needing it shows it
        f"--user-data-dir={profile}",
        "--virtual-time-budget=5000",
        "--window-size=1280,2000",
        "--dump-dom",
        probed.as_uri(),
    ]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BrowserError("chromium did not finish rendering in 120 s") from exc
    dom = done.stdout
    start = dom.find('<pre id="qw-probe">')
    if start < 0:
        raise BrowserError(
            f"chromium rendered no probe (exit {done.returncode}): {done.stderr[-2000:]}"
        )
    end = dom.index("</pre>", start)
    raw = dom[start + len('<pre id="qw-probe">') : end]
    data = json.loads(html.unescape(raw))
    return PageView(
        sections=frozenset(data["sections"]),
        plots=tuple(
            PagePlot(p["section"], float(p["width"]), float(p["height"]), int(p["marks"]))
            for p in data["plots"]
        ),
        external=tuple(data["external"]),
    )
