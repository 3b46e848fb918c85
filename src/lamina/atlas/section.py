"""What one section of the atlas is: the interface between the analyses and the page.

A section is one analysis applied to one model (norms, embeddings, categories, ...). Its module
under :mod:`lamina.atlas.sections` defines ``SPEC``, a :class:`SectionSpec`; the registry
(:data:`lamina.atlas.registry.SECTIONS`) lists them in page order. The core calls
``spec.applies(model, inputs)`` (``None`` when it applies, else the one-line reason shown on
the page) and then ``spec.run(model, inputs)``, which returns a :class:`Section` holding the
numbers, tables, figures and finding sentences. The core renders, times and saves it; a section
never writes files or HTML itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from lamina.models import Model


@dataclass
class ReportInputs:
    """Everything a section may need besides the model, with offline defaults (the shipped
    corpus and word list); every field can be given by the user.

    Attributes:
        corpus: running text to search for target words (contexts) and draw texts from.
        texts: short texts (one input each) for norms and path length.
        lens_text: one text for the logit lens.
        words: a categories word list (path to a CSV ``label,word``, a mapping label -> words)
            or ``None`` for the built-in 34 words.
        targets: target words for the contexts section, or ``None`` for defaults chosen from
            the corpus (frequent words that are one token).
        heads: ``(layer, head)`` pairs for the alignment section, or ``None``: every head.
        seed: seed of every random draw.
        quick: smaller samples (the demo and tests); the page says so.
    """

    corpus: str
    texts: list[str]
    lens_text: str
    words: Any = None
    targets: list[str] | None = None
    heads: list[tuple[int, int]] | None = None
    seed: int = 0
    quick: bool = False


@dataclass
class Section:
    """One analysis of one model, ready for the page.

    Attributes:
        key: the section's name (``"norms"``), also its folder in the report directory.
        title: heading on the page.
        findings: one sentence each, generated from ``summary`` by a tested function (never
            hard-coded); the first is the headline.
        summary: the headline numbers (JSON-able), written to ``summary.json``.
        tables: name -> table behind the figures (written as CSV, shown as sortable tables;
            keep them small: top rows, per-layer rows, never N x N).
        figures: name -> matplotlib Figure (inlined as SVG, or PNG when SVG would be heavy).
        overlays: name -> frame with columns ``x`` (relative depth, 0..1: see
            :func:`~lamina.analyses.layerwise.relative_depth`), ``y``
            and optionally ``label``: profiles the core overlays across models (one colour
            per model) when the report has several.
        skipped: why the section does not apply to this model (then everything else is
            empty).
        seconds: wall time of ``run`` (filled by the core).
    """

    key: str
    title: str
    findings: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Figure] = field(default_factory=dict)
    overlays: dict[str, pd.DataFrame] = field(default_factory=dict)
    skipped: str | None = None
    seconds: float = 0.0


def layer_profiles(table: pd.DataFrame, n_layers: int,
                   columns: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Overlays of per-layer columns of ``table`` (which has a ``layer`` column): overlay name
    -> frame ``x`` (the layer's relative depth, layer / n_layers: see
    :func:`~lamina.analyses.layerwise.relative_depth`), ``y`` (that column)."""
    from lamina.analyses.layerwise import relative_depth

    x = relative_depth(table["layer"].to_numpy(), n_layers)
    return {name: pd.DataFrame({"x": x, "y": table[col].to_numpy()})
            for name, col in columns.items()}


@dataclass(frozen=True)
class SectionSpec:
    """A section kind: ``applies(model, inputs)`` returns ``None`` or the reason it does not
    apply; ``run(model, inputs)`` computes it."""

    key: str
    title: str
    applies: Callable[[Model, ReportInputs], str | None]
    run: Callable[[Model, ReportInputs], Section]


#: The model key of the cross-model sections' figures (``(CROSS, section key, name)``) and
#: the label of their headlines; no model is named so (a model's name is never empty).
CROSS, CROSS_LABEL = "", "models compared"


@dataclass(frozen=True)
class CrossSectionSpec:
    """A section across models, run once after the per-model sections when the atlas has two
    or more models: ``applies(models, inputs)`` (``models``: report name -> model) returns
    ``None`` or the reason it does not apply; ``run(models, inputs)`` computes it."""

    key: str
    title: str
    applies: Callable[[dict[str, Model], ReportInputs], str | None]
    run: Callable[[dict[str, Model], ReportInputs], Section]


class ReportView(Protocol):
    """What the page (:mod:`lamina.atlas.html`) and the saved folders
    (:mod:`lamina.atlas.save`) read from a :class:`lamina.atlas.core.Report`."""

    sections: dict[str, list[Section]]
    manifest: dict[str, Any]
    inputs: ReportInputs
    figures: dict[tuple[str, str, str], Any]
    overlays: dict[tuple[str, str], Any]
    cross: list[Section]

    def headlines(self) -> list[tuple[str, str, str]]: ...

    def html(self) -> str: ...
