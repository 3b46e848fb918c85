"""Running the atlas: every section that applies to every model, timed, with a progress bar;
the :class:`Report` that holds the sections, renders the page and saves the directory."""

from __future__ import annotations

import datetime as _dt
import html as _html
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lamina.atlas.registry import CROSS_SECTION_MODULES, SECTION_MODULES
from lamina.atlas.registry import cross_sections as registered_cross
from lamina.atlas.registry import sections as registered
from lamina.atlas.save import MARKERS
from lamina.atlas.section import CROSS, CROSS_LABEL, ReportInputs, Section
from lamina.errors import LaminaError

if TYPE_CHECKING:
    from lamina.atlas.figures import InlineFigure
    from lamina.models import Model

#: A page above this size gets a warning (figures are inlined).
WARN_BYTES = 20_000_000
#: Characters of the shipped corpus used by default (quick: fewer).
CORPUS_CHARS, QUICK_CORPUS_CHARS = 100_000, 30_000
#: Texts drawn from the corpus for norms and path length (quick: fewer).
N_TEXTS, QUICK_TEXTS = 64, 16


@dataclass
class Report:
    """The atlas of one or more models.

    Attributes:
        sections: model name -> its sections in page order (skipped ones included).
        manifest: lamina's version, each model's identity (name, path, revision, weights
            fingerprint, dtype, sites), the inputs' sizes, the seed and per-section seconds;
            the only place with timestamps.
        inputs: the inputs every section was given.
        cross: the sections across models (with two or more models), in page order.
    """

    sections: dict[str, list[Section]]
    manifest: dict[str, Any]
    inputs: ReportInputs
    figures: dict[tuple[str, str, str], InlineFigure] = field(default_factory=dict, repr=False)
    overlays: dict[tuple[str, str], InlineFigure] = field(default_factory=dict, repr=False)
    cross: list[Section] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(self.sections)

    def headlines(self) -> list[tuple[str, str, str]]:
        """``(model, section title, first finding)`` of every section that has one."""
        return [(m, s.title, s.findings[0]) for m, secs in self.sections.items()
                for s in secs if s.findings and not s.skipped] + [
            (CROSS_LABEL, s.title, s.findings[0]) for s in self.cross
            if s.findings and not s.skipped]

    def html(self) -> str:
        """The self-contained page (the same inputs give the same bytes)."""
        from lamina.atlas.html import render_page

        return render_page(self)

    def save(self, directory: str | Path) -> Path:
        """Write ``index.html``, ``manifest.json`` and, per model and section, a folder with
        ``summary.json``, the tables (CSV, and Parquet when pyarrow is installed) and the
        figures, atomically (an interrupted save leaves no ``index.html``). Returns the
        path of ``index.html``."""
        from lamina.atlas.save import save_report

        return save_report(self, directory)

    def _repr_html_(self) -> str:
        page = _html.escape(self.html(), quote=True)
        return (f'<iframe srcdoc="{page}" style="width:100%;height:80vh;border:1px solid #ccc" '
                f'sandbox="allow-scripts"></iframe>')

    def __repr__(self) -> str:
        n = sum(len(v) for v in self.sections.values())
        skipped = sum(bool(s.skipped) for v in self.sections.values() for s in v)
        return (f"Report(models={self.models}, sections={n}, skipped={skipped}"
                f"{', quick' if self.inputs.quick else ''})")


def _models(models: Any) -> dict[str, Model]:
    """Report name -> model, each loaded once (a repeated name gets " (2)", " (3)", ...)."""
    from lamina.analyses.layerwise import load_models
    from lamina.models import Model

    items = [models] if isinstance(models, (str, Path, Model, tuple)) else list(models or [])
    if not items:
        raise LaminaError("Give at least one model to report on.", cli="Give --model M.")
    return load_models(items)


def _inputs(corpus: str | Path | None, texts: Sequence[str] | None, words: Any,
            targets: Sequence[str] | None, heads: Sequence[tuple[int, int]] | None,
            seed: int, quick: bool) -> ReportInputs:
    from lamina.corpus import sample_lines, text_of, tinyshakespeare

    if corpus is None:
        text = tinyshakespeare()[: QUICK_CORPUS_CHARS if quick else CORPUS_CHARS]
    else:
        text = text_of(corpus)
    if not text.strip():
        raise LaminaError("The corpus is empty: give running text (corpus=).",
                          cli="The --text-file is empty: give running text.")
    if texts is None:
        n = QUICK_TEXTS if quick else N_TEXTS
        lines = [ln.strip() for ln in text.splitlines() if len(ln.strip()) >= 40][:n]
        texts = lines if len(lines) >= 2 else sample_lines(n)
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if not texts:
        raise LaminaError("texts= holds no non-empty text.", cli="--lines has no non-empty line.")
    return ReportInputs(
        corpus=text, texts=list(texts), lens_text=texts[0], words=words,
        targets=None if targets is None else list(targets),
        heads=None if heads is None else [(int(a), int(b)) for a, b in heads],
        seed=int(seed), quick=bool(quick))


def _run_one(spec: Any, model: Model, inputs: ReportInputs) -> Section:
    """One section of one model: skipped with the reason when it does not apply or raises a
    :class:`LaminaError`; any other exception propagates."""
    start = time.perf_counter()
    reason = spec.applies(model, inputs)
    if reason is None:
        try:
            section = spec.run(model, inputs)
        except LaminaError as err:
            section = Section(spec.key, spec.title, skipped=" ".join(str(err).split()))
    else:
        section = Section(spec.key, spec.title, skipped=reason)
    section.seconds = time.perf_counter() - start
    return section


def _run_cross(specs: list[Any], models: dict[str, Model], inputs: ReportInputs,
               figures: dict[tuple[str, str, str], InlineFigure], bar: Any) -> list[Section]:
    """The cross-model sections, each skipped with the reason when it does not apply or
    raises a :class:`LaminaError`, its figures rendered under the model key :data:`CROSS`."""
    from matplotlib import pyplot as plt

    out = []
    for spec in specs:
        bar.set_description(f"{CROSS_LABEL}: {spec.key}")
        before = set(plt.get_fignums())
        out.append(_run_one(spec, models, inputs))  # type: ignore[arg-type]
        _render_section(figures, "x", CROSS, out[-1], before)  # type: ignore[arg-type]
        bar.update()
    return out


def _identity(model: Model) -> dict[str, Any]:
    from lamina.fingerprint import model_fingerprint

    path = getattr(model.config, "_name_or_path", None)
    return {
        "name": model.name, "path": str(path) if path else None,
        "revision": getattr(model.config, "_commit_hash", None),
        "fingerprint": model_fingerprint(model), "family": model.family,
        "dtype": sorted({str(p.dtype).removeprefix("torch.")
                         for p in model.hf_model.parameters()}),
        "processing": model.processing, "sites": model.sites,
    }


def _render_section(figures: dict[tuple[str, str, str], InlineFigure], i: int, model: str,
                    section: Section, before: set[int]) -> None:
    """Render a section's figures as soon as it has run, then close every pyplot figure
    the section opened (``before``: the figure numbers open before it ran)."""
    from matplotlib import pyplot as plt

    from lamina.atlas.figures import render

    for name, fig in section.figures.items():
        figures[(model, section.key, name)] = render(fig, f"m{i}/{section.key}/{name}")
        plt.close(fig)
    for num in set(plt.get_fignums()) - before:
        plt.close(num)


def _overlays(report: Report) -> None:
    """With two or more models: one overlay figure per overlay name that 2+ models have."""
    from lamina.atlas.figures import overlay_figure, render

    if len(report.sections) < 2:
        return
    names: dict[tuple[str, str], dict[str, Any]] = {}
    for model, secs in report.sections.items():
        for sec in secs:
            for name, frame in sec.overlays.items():
                names.setdefault((sec.key, name), {})[model] = frame
    for (key, name), profiles in names.items():
        if len(profiles) >= 2:
            report.overlays[(key, name)] = render(overlay_figure(profiles, name),
                                                  f"overlay/{key}/{name}")


def report(
    models: Any,
    out: str | Path | None = None,
    *,
    corpus: str | Path | None = None,
    texts: Sequence[str] | None = None,
    words: Any = None,
    targets: Sequence[str] | None = None,
    heads: Sequence[tuple[int, int]] | None = None,
    sections: Sequence[str] | None = None,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
) -> Report:
    """The atlas of ``models``: every section that applies, computed and rendered.

    Args:
        models: a model (name, directory, hub id or :class:`~lamina.Model`) or a list.
        out: when given, the report directory is written there (see :meth:`Report.save`).
        corpus: running text (a ``str``) or a file (:class:`~pathlib.Path`); default the
            first 100,000 characters of TinyShakespeare (30,000 with ``quick``).
        texts: short inputs for norms and path length (default: 64 corpus lines, 16 quick).
        words: a categories word list (CSV path or label -> words), default built in.
        targets: target words for the contexts section (default chosen from the corpus).
        heads: ``(layer, head)`` pairs for alignment (default every head).
        sections: the section names to compute (default all, in page order).
        quick: smaller samples everywhere (the demo); the page says so.
        seed: seed of every random draw.
        progress: show a progress bar per model and section.
    """
    from tqdm.auto import tqdm

    from lamina._version import __version__

    sections = [sections] if isinstance(sections, str) else sections
    targets = [targets] if isinstance(targets, str) else targets
    if sections is not None:
        unknown = [s for s in sections if s not in SECTION_MODULES + CROSS_SECTION_MODULES]
        if unknown:
            raise LaminaError(f"Unknown section(s) {', '.join(map(repr, unknown))}: choose from "
                              f"{', '.join(SECTION_MODULES + CROSS_SECTION_MODULES)} "
                              "(sections=).",
                              cli=f"Unknown --section {', '.join(unknown)}: choose from "
                                  f"{', '.join(SECTION_MODULES + CROSS_SECTION_MODULES)}.")
    if out is not None:
        from lamina.outputs import check_output_dir

        check_output_dir(out, marker=MARKERS)
    specs = registered(None if sections is None else list(sections))
    inputs = _inputs(corpus, texts, words, targets, heads, seed, quick)
    by_name = _models(models)  # report name -> model, each loaded once
    names, loaded = list(by_name), list(by_name.values())
    cross_specs = registered_cross(None if sections is None else list(sections)) \
        if len(loaded) >= 2 else []
    started = _dt.datetime.now(_dt.timezone.utc)
    from matplotlib import pyplot as plt

    result: dict[str, list[Section]] = {}
    figures: dict[tuple[str, str, str], InlineFigure] = {}
    bar = tqdm(total=len(loaded) * len(specs) + len(cross_specs), disable=not progress,
               unit="section")
    for i, (name, model) in enumerate(zip(names, loaded, strict=True)):
        result[name] = []
        for spec in specs:
            bar.set_description(f"{name}: {spec.key}")
            before = set(plt.get_fignums())
            result[name].append(_run_one(spec, model, inputs))
            _render_section(figures, i, name, result[name][-1], before)
            bar.update()
    cross = _run_cross(cross_specs, by_name, inputs, figures, bar)
    bar.close()
    manifest = {
        "lamina": __version__,
        "started": started.isoformat(timespec="seconds"),
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "models": [{**_identity(m), "report_name": n} for n, m in zip(names, loaded, strict=True)],
        "inputs": {"corpus_chars": len(inputs.corpus), "n_texts": len(inputs.texts),
                   "lens_text_chars": len(inputs.lens_text),
                   "words": None if inputs.words is None else str(inputs.words),
                   "targets": inputs.targets, "heads": inputs.heads},
        "seed": inputs.seed, "quick": inputs.quick,
        "sections": {n: {s.key: {"seconds": round(s.seconds, 3), "skipped": s.skipped}
                         for s in secs} for n, secs in result.items()},
        "cross_sections": {s.key: {"seconds": round(s.seconds, 3), "skipped": s.skipped}
                           for s in cross},
    }
    rep = Report(result, json.loads(json.dumps(manifest, default=str)), inputs, figures,
                 cross=cross)
    _overlays(rep)
    size = len(rep.html().encode())
    if size > WARN_BYTES:
        warnings.warn(f"The report page is {size / 1e6:.1f} MB (above "
                      f"{WARN_BYTES / 1e6:.0f} MB); pass quick=True or fewer sections.",
                      stacklevel=2)
    if out is not None:
        rep.save(out)
    return rep
