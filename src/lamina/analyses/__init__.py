"""Analyses: pure functions from a model (or activations) to a result with ``to_frame()``,
``plot()`` and ``save(dir)``."""

from lamina.analyses.alignment import AlignmentResult, alignment
from lamina.analyses.approximation import ApproximationResult, approximation
from lamina.analyses.categories import CategoriesResult, categories
from lamina.analyses.compare import CompareResult, compare
from lamina.analyses.contexts import ContextsResult, contexts
from lamina.analyses.contextuality import ContextualityResult, contextuality
from lamina.analyses.embeddings import EmbeddingsResult, embeddings
from lamina.analyses.head_sweep import HeadSweepResult, head_sweep
from lamina.analyses.lens import LensResult, lens
from lamina.analyses.norms import NormsResult, norms
from lamina.analyses.pathlength import PathLengthResult, pathlength
from lamina.analyses.similar_strings import SimilarStringsResult, similar_strings

__all__ = [
    "AlignmentResult", "ApproximationResult", "CategoriesResult", "ContextsResult",
    "ContextualityResult", "contextuality", "CompareResult", "compare",
    "EmbeddingsResult", "HeadSweepResult", "LensResult", "NormsResult", "PathLengthResult",
    "SimilarStringsResult", "alignment", "approximation", "categories", "contexts", "embeddings",
    "head_sweep", "lens", "norms", "pathlength", "similar_strings",
]
