"""Pieces of the compiled CPU epilogue, against numpy."""

from __future__ import annotations

import numpy as np

from lamina.similarity._cpu_kernels import jit, key_to_float
from lamina.similarity._rescore import candidate_dots


def test_float_keys_order_like_the_floats_and_map_back():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000),
                        [0.0, -0.0, 1.0, -1.0, 3.4e38, -3.4e38, 1e-45, -1e-45]]).astype(np.float32)
    bits = x.view(np.int32)
    keys = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))  # the kernel's formula
    order = np.argsort(keys, kind="stable")
    assert np.all(np.diff(x[order]) >= 0)
    assert key_to_float(keys.min()) == x.min()
    assert key_to_float(keys.max()) == x.max()


def test_candidate_dots_equal_numpy():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((50, 33)).astype(np.float32)
    b = rng.standard_normal((80, 33)).astype(np.float32)
    cand = rng.integers(0, 80, (50, 7))
    out = np.empty((50, 7), np.float32)
    candidate_dots(a, b, cand, out)
    np.testing.assert_allclose(out, np.einsum("nd,nkd->nk", a, b[cand]), rtol=1e-5, atol=1e-5)


def test_jit_compiles_without_a_place_to_cache():
    """Functions numba cannot cache (here: no source file) still compile, once per process."""
    ns: dict = {}
    exec("def add_one(x):\n    return x + 1\n", ns)
    assert jit()(ns["add_one"])(41) == 42
