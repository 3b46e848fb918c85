"""The atlas's sections, one module each (see :mod:`lamina.atlas.registry`)."""
