"""lamina: the geometry of transformer representations, layer by layer, by cosine similarity.

Data flows one way: load a model -> capture activations -> similarity engine -> analysis
result -> table, figure, report.

>>> import lamina
>>> model = lamina.load("minilm")                      # doctest: +SKIP
>>> acts = model.collect(["the cat sat"], "resid_post.*")  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from lamina.activations import Activations  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402
from lamina.models import BUILTINS, Model, load  # noqa: E402

__all__ = ["Activations", "BUILTINS", "LaminaError", "Model", "__version__", "load"]
