"""Writing a report directory atomically: ``index.html``, ``manifest.json`` and one folder per
model and section with ``summary.json``, its tables (CSV; Parquet when pyarrow is there) and
its figures."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from lamina.atlas.section import CROSS, CROSS_LABEL, ReportView
from lamina.outputs import atomic_dir, check_output_dir
from lamina.results import _jsonable, write_csv

#: Files whose presence marks a directory as a previous report (it may be replaced).
MARKERS = ("index.html", "manifest.json")


def slug(name: str) -> str:
    """A file- and anchor-safe form of a model name: its last path part, ``[a-z0-9._-]``."""
    last = Path(str(name).rstrip("/\\")).name or str(name)
    return re.sub(r"[^a-z0-9._-]+", "-", last.lower()).strip("-.") or "model"



def _parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def folders(report: ReportView) -> dict[str, str]:
    """Model name -> its folder name (a slug, made unique)."""

    out: dict[str, str] = {}
    for model in report.sections:
        base = name = slug(model)
        i = 2
        while name in out.values():
            name, i = f"{base}-{i}", i + 1
        out[model] = name
    return out


def save_report(report: ReportView, directory: str | Path) -> Path:
    """Write the report into ``directory`` (replaced as a whole; refused when it is a
    non-empty directory that is no previous report). Returns the path of ``index.html``."""

    out = check_output_dir(directory, marker=MARKERS)
    page = report.html()
    parquet = _parquet_available()
    named = folders(report)
    cross = "models-compared"
    while cross in named.values():
        cross += "_"
    places = [(model, folder, report.sections[model]) for model, folder in named.items()]
    places.append((CROSS, cross, list(getattr(report, "cross", []))))
    with atomic_dir(out) as tmp:
        for model, folder, secs in places:
            for sec in secs:
                d = tmp / folder / sec.key
                d.mkdir(parents=True)
                summary = {"model": model or CROSS_LABEL, "section": sec.key,
                           "title": sec.title,
                           "skipped": sec.skipped, "findings": sec.findings,
                           "summary": sec.summary}
                (d / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2))
                for name, frame in sec.tables.items():
                    write_csv(frame, d / f"{name}.csv")
                    if parquet:
                        frame.to_parquet(d / f"{name}.parquet", index=False)
                for name in sec.figures:
                    fig = report.figures.get((model, sec.key, name))
                    if fig is None:
                        continue
                    if fig.kind == "svg":
                        (d / f"{name}.svg").write_text(fig.data, "utf-8")
                    else:
                        (d / f"{name}.png").write_bytes(
                            base64.b64decode(fig.data.split(",", 1)[1]))
        (tmp / "manifest.json").write_text(json.dumps(report.manifest, indent=2))
        (tmp / "index.html").write_text(page, "utf-8")
    return out.resolve() / "index.html"
