"""The atlas's sections, in page order. Adding one: a module under
:mod:`lamina.atlas.sections` defining ``SPEC``, and its name here."""

from __future__ import annotations

import importlib

from lamina.atlas.section import CrossSectionSpec, SectionSpec

SECTION_MODULES = [
    "modelcard", "norms", "embeddings", "categories", "contexts", "contextuality",
    "pathlength", "lens", "alignment",
]


def sections(only: list[str] | None = None) -> list[SectionSpec]:
    """The registered sections (those named in ``only``, in page order), imported lazily."""
    keys = SECTION_MODULES if only is None else [k for k in SECTION_MODULES if k in only]
    return [importlib.import_module(f"lamina.atlas.sections.{k}").SPEC for k in keys]


#: Sections across models (run once over all models, after the per-model ones, when the atlas
#: has two or more), in page order.
CROSS_SECTION_MODULES = ["comparison"]


def cross_sections(only: list[str] | None = None) -> list[CrossSectionSpec]:
    """The registered cross-model sections (those named in ``only``), imported lazily."""
    keys = CROSS_SECTION_MODULES if only is None else [
        k for k in CROSS_SECTION_MODULES if k in only]
    return [importlib.import_module(f"lamina.atlas.sections.{k}").SPEC for k in keys]
