"""lamina: the geometry of transformer representations, layer by layer, by cosine similarity.

Data flows one way: load a model -> capture activations -> similarity engine -> analysis
result -> table, figure, report.

>>> import lamina
>>> model = lamina.load("minilm")                      # doctest: +SKIP
>>> acts = model.collect(["the cat sat"], "resid_post.*")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

from lamina._version import __version__  # noqa: E402
from lamina.activations import Activations  # noqa: E402
from lamina.errors import LaminaError  # noqa: E402
from lamina.models import BUILTINS, Model, load  # noqa: E402


def report(models: Any, out: Any = None, **options: Any) -> Any:
    """The atlas of ``models`` (see :func:`lamina.atlas.core.report`), imported lazily so
    that ``import lamina`` stays fast."""
    from lamina.atlas.core import report as _report

    return _report(models, out, **options)


def compare(a: Any, b: Any, **options: Any) -> Any:
    """Similarity of every layer of ``a`` with every layer of ``b`` on the same inputs (see
    :func:`lamina.analyses.compare.compare`), imported lazily so that ``import lamina`` stays
    fast."""
    from lamina.analyses.compare import compare as _compare

    return _compare(a, b, **options)


#: Subpackages loaded on first attribute access (``lamina.store.open(...)`` after a bare
#: ``import lamina``), so that ``import lamina`` itself stays fast.
_LAZY = ("analyses", "similarity", "store", "sampling", "train", "atlas")


def __getattr__(name: str) -> Any:
    """Import a subpackage of :data:`_LAZY` on first use."""
    if name in _LAZY:
        import importlib

        return importlib.import_module(f"lamina.{name}")
    raise AttributeError(f"module 'lamina' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = ["Activations", "BUILTINS", "LaminaError", "Model", "__version__", "compare", "load",
           "report"]
