"""lamina's version (one place; ``lamina.__version__``)."""

__version__ = "0.1.0"
