"""Helpers for the browser check of the atlas: find the Debian ``chromium`` and ``chromedriver``
(never download one), drive them headless with selenium, and read back what the page did.

Every check returns a list of problems (empty when the page passes) so a test can assert on it
and the checks themselves can be tested on pages made to fail them.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")
INSTALL_HINT = "apt-get install -y chromium chromium-driver (what .ci/run does)"
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")


@dataclass(frozen=True)
class Browser:
    """Paths of a Chromium executable and the chromedriver that drives it."""

    chromium: str
    chromedriver: str


def in_ci() -> bool:
    """Whether this run is CI's (env ``CI`` set to a true value), where nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def find_browser() -> Browser | None:
    """The installed Chromium and chromedriver, or ``None`` when either is missing."""
    chromium = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    return Browser(chromium, driver) if chromium and driver else None


def missing_browser() -> str | None:
    """Why the browser check cannot run (``None`` when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    if find_browser() is None:
        return f"headless Chromium not found: {INSTALL_HINT}"
    return None


def require_browser() -> Browser:
    """The browser, or skip (locally) / fail (in CI, where this check must run) saying why."""
    reason = missing_browser()
    if reason is not None:
        if in_ci():
            pytest.fail(f"CI=true but the browser check cannot run: {reason}", pytrace=False)
        pytest.skip(reason)
    browser = find_browser()
    assert browser is not None
    return browser


def start_driver(browser: Browser, width: int = 1280, height: int = 900) -> Any:
    """A headless Chrome WebDriver on ``browser``, offline: the driver path is given so
    selenium-manager never runs, and browser console plus performance (network) logs are on."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # belt and braces: selenium-manager must not download
    options = webdriver.ChromeOptions()
    options.binary_location = browser.chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--no-first-run", "--disable-extensions", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--hide-scrollbars",
                f"--window-size={width},{height}"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options,
                              service=Service(executable_path=browser.chromedriver))
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
        "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver


@dataclass
class Visit:
    """What happened while a page loaded: its console messages and the URLs it requested."""

    url: str
    console: list[dict[str, Any]]
    requests: list[str]


def visit(driver: Any, page: Path) -> Visit:
    """Open ``page`` from ``file://`` and collect the console and network logs of that load."""
    driver.get_log("browser")  # drain what earlier pages left
    driver.get_log("performance")
    url = page.resolve().as_uri()
    driver.get(url)
    driver.execute_script("return document.readyState")
    return Visit(url, driver.get_log("browser"), requested_urls(driver.get_log("performance")))


def requested_urls(performance_log: list[dict[str, Any]]) -> list[str]:
    """Every URL the page asked for, from chromedriver's performance log entries."""
    urls = []
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def console_errors(v: Visit) -> list[str]:
    """Console messages at error level (uncaught exceptions, failed loads, console.error)."""
    return [e["message"] for e in v.console if e.get("level") == "SEVERE"]


def network_requests(v: Visit) -> list[str]:
    """Requested URLs that would leave the machine (anything not file:, data:, about:, blob:)."""
    return [u for u in v.requests if not u.startswith(LOCAL_SCHEMES)]


_FIGURE_SIZES = """
document.querySelectorAll('details').forEach(d => { d.open = true; });
const out = [];
document.querySelectorAll('svg, img').forEach((el, i) => {
  if (el.parentElement && el.parentElement.closest('svg')) return;  // part of a bigger figure
  const r = el.getBoundingClientRect();
  const name = el.id || el.getAttribute('aria-label') || el.getAttribute('alt') || '';
  out.push([el.tagName.toLowerCase() + '#' + i + (name ? ' ' + name : ''), r.width, r.height,
            el.tagName === 'IMG' ? el.complete && el.naturalWidth > 0 : true]);
});
return out;
"""


def figure_sizes(driver: Any) -> list[tuple[str, float, float, bool]]:
    """Each outermost figure (``svg`` or ``img``): name, rendered width and height, and whether
    an image decoded; collapsed ``details`` are opened first."""
    return [tuple(row) for row in driver.execute_script(_FIGURE_SIZES)]


def empty_figures(driver: Any) -> list[str]:
    """Figures rendered with zero width or height, or images that failed to decode."""
    return [f"{name}: {w:g}x{h:g}{'' if ok else ', not decoded'}"
            for name, w, h, ok in figure_sizes(driver) if not (w > 0 and h > 0 and ok)]


_ANCHORS = """
return Array.from(document.querySelectorAll('a[href^="#"]')).map(a => {
  const id = decodeURIComponent(a.getAttribute('href').slice(1));
  return [a.getAttribute('href'), !!a.closest('nav, .toc, #toc'),
          id === '' || id === 'top' || document.getElementById(id) !== null];
});
"""


def toc_links(driver: Any) -> tuple[list[str], list[str]]:
    """The table of contents' ``#anchor`` links (inside ``nav``, ``.toc`` or ``#toc``), and every
    in-page link anywhere on the page whose target id does not exist."""
    rows = driver.execute_script(_ANCHORS)
    return [h for h, in_toc, _ in rows if in_toc], [h for h, _, ok in rows if not ok]


_COLUMN = """
const [t, c] = arguments;
const table = document.querySelectorAll('table.sortable')[t];
const rows = table.tBodies.length ? Array.from(table.tBodies[0].rows)
                                  : Array.from(table.rows).slice(1);
return rows.map(r => {
  const cell = r.cells[c];
  if (!cell) return null;
  return cell.getAttribute('data-sort') ?? cell.getAttribute('data-value') ?? cell.textContent;
});
"""


def number(text: str | None) -> float | None:
    """A table cell read as a number (unicode minus, thousands commas, a trailing % allowed),
    or ``None`` when it is not one."""
    if text is None:
        return None
    t = text.strip().replace("\u2212", "-").replace(",", "").removesuffix("%").strip()
    try:
        return float(t)
    except ValueError:
        return None


def numeric_column(driver: Any, table: int, column: int) -> list[float] | None:
    """Column ``column`` of the ``table``-th sortable table as numbers, or ``None`` when a cell
    is not a number."""
    values = [number(v) for v in driver.execute_script(_COLUMN, table, column)]
    return None if not values or any(v is None for v in values) else values  # type: ignore


def _ordered(xs: list[float], descending: bool) -> bool:
    return all((a >= b) if descending else (a <= b) for a, b in zip(xs, xs[1:], strict=False))


def sort_problems(driver: Any, max_columns: int | None = None) -> tuple[int, list[str]]:
    """Click, twice, the header of every numeric column (at least two distinct values; the
    first ``max_columns`` such per table when given) of every ``table.sortable``: one click
    must leave the column in ascending and the other in descending numeric order. Returns how
    many columns were checked and what failed."""
    from selenium.webdriver.common.by import By

    checked, problems = 0, []
    tables = driver.find_elements(By.CSS_SELECTOR, "table.sortable")
    for t, table in enumerate(tables):
        headers = table.find_elements(By.CSS_SELECTOR, "thead th") or \
            table.find_elements(By.CSS_SELECTOR, "tr:first-child th")
        in_table = 0
        for c, header in enumerate(headers):
            if max_columns is not None and in_table >= max_columns:
                break
            before = numeric_column(driver, t, c)
            if before is None or len(set(before)) < 2:
                continue
            checked, in_table = checked + 1, in_table + 1
            seen = []
            for _ in range(2):
                driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", header)
                header.click()
                seen.append(numeric_column(driver, t, c) or [])
            if sorted(seen[0] + seen[1]) != sorted(before * 2):
                problems.append(f"table {t} column {c}: sorting changed the values")
            elif not any(_ordered(s, False) for s in seen) or \
                    not any(_ordered(s, True) for s in seen):
                problems.append(f"table {t} column {c} ({header.text!r}): two clicks gave "
                                f"{seen[0][:5]}... and {seen[1][:5]}..., not ascending and "
                                f"descending order")
    return checked, problems


def screenshot(driver: Any, path: Path) -> Path:
    """Save a PNG of the top of the page (the window) to ``path``; also copy it to the path in
    env ``LAMINA_SCREENSHOT`` when set (the README's docs/figures/atlas.png)."""
    driver.execute_script("window.scrollTo(0, 0)")
    path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path)), f"no screenshot written to {path}"
    extra = os.environ.get("LAMINA_SCREENSHOT")
    if extra:
        Path(extra).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, extra)
    return path


def main(argv: list[str] | None = None) -> int:
    """``python tests/report_browser.py INDEX_HTML PNG``: check a built atlas in headless
    Chromium and save its screenshot (how docs/figures/atlas.png is taken from ``make demo``'s
    report). Prints each problem; exit status 1 when there is one."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python tests/report_browser.py INDEX_HTML PNG", file=sys.stderr)
        return 2
    reason = missing_browser()
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    driver = start_driver(find_browser())  # type: ignore[arg-type]
    try:
        v = visit(driver, Path(args[0]))
        problems = console_errors(v) + [f"network: {u}" for u in network_requests(v)]
        problems += empty_figures(driver) + [f"broken link {h}" for h in toc_links(driver)[1]]
        problems += sort_problems(driver, max_columns=2)[1]
        screenshot(driver, Path(args[1]))
    finally:
        driver.quit()
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
