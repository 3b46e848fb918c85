"""Analyses: pure functions from a model (or activations) to a result with ``to_frame()``,
``plot()`` and ``save(dir)``."""

from lamina.analyses.alignment import AlignmentResult, alignment
from lamina.analyses.lens import LensResult, lens
from lamina.analyses.norms import NormsResult, norms
from lamina.analyses.pathlength import PathLengthResult, pathlength

__all__ = [
    "AlignmentResult", "LensResult", "NormsResult", "PathLengthResult",
    "alignment", "lens", "norms", "pathlength",
]
