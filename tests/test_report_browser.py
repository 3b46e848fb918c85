"""The atlas in a real browser: headless Chromium opens ``index.html`` from ``file://`` and the
page must raise no console error, request nothing from the network, render every figure, resolve
every table-of-contents link and sort its sortable tables; a screenshot is saved (also to env
``LAMINA_SCREENSHOT`` when set). Skipped locally when Chromium is missing; never in CI.

The checks are first run on small hand-written pages, one that passes and one made to fail each
check, so a check that sees nothing cannot pass the atlas by accident.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import lamina
from conftest import save_model, tiny
from report_browser import (
    console_errors,
    empty_figures,
    main,
    network_requests,
    number,
    require_browser,
    screenshot,
    sort_problems,
    start_driver,
    toc_links,
    visit,
)

PNG = ("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJ"
       "RU5ErkJggg==")  # one pixel

SORT_JS = """
document.querySelectorAll('table.sortable th').forEach((th, col) => {
  th.addEventListener('click', () => {
    const body = th.closest('table').tBodies[0];
    const asc = th.dataset.dir !== 'asc';
    th.dataset.dir = asc ? 'asc' : 'desc';
    const key = r => parseFloat(r.cells[col].dataset.sort ?? r.cells[col].textContent);
    Array.from(body.rows).sort((a, b) => asc ? key(a) - key(b) : key(b) - key(a))
      .forEach(r => body.appendChild(r));
  });
});
"""

GOOD = f"""<!doctype html><html><head><meta charset="utf-8"><title>atlas</title></head><body>
<header><h1>tiny &lt;model&gt;</h1><p>Headline.</p></header>
<nav class="toc"><a href="#norms">Norms</a> <a href="#heads">Heads</a></nav>
<section id="norms"><h2>Norms</h2>
<svg width="200" height="100" viewBox="0 0 200 100"><rect width="200" height="100" fill="#ddd"/>
<svg x="10" y="10" width="0" height="0"></svg></svg>
<img alt="png" src="data:image/png;base64,{PNG}" width="20" height="20">
</section>
<section id="heads"><h2>Heads</h2><details><summary>more</summary>
<svg width="50" height="50"><circle cx="25" cy="25" r="20"/></svg></details>
<table class="sortable"><thead><tr><th>head</th><th>layer</th><th>separation</th></tr></thead>
<tbody><tr><td>10.7</td><td>10</td><td data-sort="0.5">0.50</td></tr>
<tr><td>2.1</td><td>2</td><td data-sort="-1.25">&minus;1.25</td></tr>
<tr><td>5.3</td><td>5</td><td data-sort="3">3.00</td></tr></tbody></table></section>
<script>{SORT_JS}</script></body></html>"""

BAD = """<!doctype html><html><head><meta charset="utf-8"><title>bad</title>
<link rel="stylesheet" href="https://cdn.example.invalid/style.css"></head><body>
<nav id="toc"><a href="#norms">Norms</a> <a href="#nowhere">Gone</a></nav>
<section id="norms"><svg width="0" height="80"></svg></section>
<table class="sortable"><thead><tr><th>x</th></tr></thead>
<tbody><tr><td>2</td></tr><tr><td>1</td></tr><tr><td>3</td></tr></tbody></table>
<script>console.error("boom");</script></body></html>"""


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    browser = require_browser()
    drv = start_driver(browser)
    try:
        yield drv
    finally:
        drv.quit()


def _page(tmp_path: Path, html: str, name: str = "index.html") -> Path:
    page = tmp_path / name
    page.write_text(html, encoding="utf-8")
    return page


def test_number_reads_table_cells() -> None:
    assert [number(t) for t in ("3", " -1.5 ", "\u22120.25", "1,024", "12%", "1e-3")] == \
        [3.0, -1.5, -0.25, 1024.0, 12.0, 0.001]
    assert number("gpt2") is None and number(None) is None and number("") is None


def test_checks_pass_on_a_well_formed_page(driver: Any, tmp_path: Path) -> None:
    v = visit(driver, _page(tmp_path, GOOD))
    assert console_errors(v) == []
    assert v.url in v.requests, "the performance log saw no request: network check is blind"
    assert network_requests(v) == []
    assert empty_figures(driver) == []
    toc, broken = toc_links(driver)
    assert toc == ["#norms", "#heads"] and broken == []
    checked, problems = sort_problems(driver)
    assert (checked, problems) == (3, [])
    shot = screenshot(driver, tmp_path / "shot.png")
    assert shot.read_bytes()[:4] == b"\x89PNG"


def test_checks_catch_a_broken_page(driver: Any, tmp_path: Path) -> None:
    v = visit(driver, _page(tmp_path, BAD))
    assert any("boom" in m for m in console_errors(v))
    assert network_requests(v) == ["https://cdn.example.invalid/style.css"]
    assert [p.split(":")[0] for p in empty_figures(driver)] == ["svg#0"]
    assert toc_links(driver) == (["#norms", "#nowhere"], ["#nowhere"])
    checked, problems = sort_problems(driver)
    assert checked == 1 and len(problems) == 1 and "not ascending and descending" in problems[0]


def test_screenshot_also_goes_where_env_says(driver: Any, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "docs" / "figures" / "atlas.png"
    monkeypatch.setenv("LAMINA_SCREENSHOT", str(target))
    visit(driver, _page(tmp_path, GOOD))
    screenshot(driver, tmp_path / "shot.png")
    assert target.read_bytes() == (tmp_path / "shot.png").read_bytes()


def test_command_line_checks_a_page_and_saves_its_screenshot(tmp_path: Path, capsys) -> None:
    require_browser()
    assert main([str(_page(tmp_path, GOOD)), str(tmp_path / "good.png")]) == 0
    assert (tmp_path / "good.png").read_bytes()[:4] == b"\x89PNG"
    assert main([str(_page(tmp_path, BAD, "bad.html")), str(tmp_path / "bad.png")]) == 1
    out = capsys.readouterr().out
    assert "boom" in out and "network: https://cdn.example.invalid" in out


def _saved(name: str, root: Path) -> str:
    model = tiny(name)
    path = root / f"tiny-{name}"
    save_model(model, path)
    return str(path)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``index.html`` of a report on a tiny GPT-2 and a tiny BERT saved to disk."""
    root = tmp_path_factory.mktemp("atlas")
    models = [_saved("gpt2", root), _saved("bert", root)]
    lamina.report(models, out=root / "report", quick=True)
    page = root / "report" / "index.html"
    assert page.is_file(), f"lamina.report wrote no {page}"
    return page


def test_atlas_opens_offline_and_works(driver: Any, atlas: Path, tmp_path: Path) -> None:
    v = visit(driver, atlas)
    assert console_errors(v) == []
    assert v.url in v.requests, "the performance log saw no request: network check is blind"
    assert network_requests(v) == []
    assert empty_figures(driver) == []
    assert driver.execute_script("return document.querySelectorAll('svg, img').length") > 0
    toc, broken = toc_links(driver)
    assert toc, "no table-of-contents links (inside nav, .toc or #toc)"
    assert broken == []
    checked, problems = sort_problems(driver, max_columns=2)
    assert checked > 0, "no sortable table with a numeric column"
    assert problems == []
    shot = screenshot(driver, tmp_path / "atlas.png")
    assert shot.stat().st_size > 10_000
