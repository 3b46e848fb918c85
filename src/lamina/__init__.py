"""lamina: the geometry of transformer representations, layer by layer, by cosine similarity.

Data flows one way: load a model -> capture activations -> similarity engine -> analysis
result -> table, figure, report.
"""

from __future__ import annotations

__version__ = "0.1.0"

from lamina.errors import LaminaError  # noqa: E402

__all__ = ["LaminaError", "__version__"]
