"""Analyses: pure functions from a model (or activations) to a result with ``to_frame()``,
``plot()`` and ``save(dir)``."""

from lamina.analyses.norms import NormsResult, norms

__all__ = ["NormsResult", "norms"]
