"""The atlas: one self-contained HTML page of a model's geometry, layer by layer.

:func:`lamina.report` (:func:`lamina.atlas.core.report`) runs every section of
:mod:`lamina.atlas.registry` that applies to each model and returns a
:class:`~lamina.atlas.core.Report`; ``Report.save(dir)`` writes ``index.html``,
``manifest.json`` and one folder per model and section.
"""

from __future__ import annotations
