"""Compiled loops for the hot kernels (Numba), typed for mypy.

Some work is inherently one reading after another: a state machine that
opens and closes episodes, or the nearest of a handful of candidate
segments per fix. NumPy pays its fixed cost per call, so such work in
NumPy costs a Python round trip per device or per episode; compiled with
Numba it costs nanoseconds per reading.

:func:`jit` compiles in ``nopython`` mode, releases the GIL and caches the
machine code beside the module (``NUMBA_CACHE_DIR`` moves it, e.g. in a
read-only container), so only the first start after an install compiles.
Kernels stay plain Python functions of NumPy arrays: with
``NUMBA_DISABLE_JIT=1`` they run as Python, which tests use as a check
that the compiled and interpreted forms agree.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba

__all__ = ["jit"]

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """``fn`` compiled with Numba (nopython, nogil, cached); same signature for mypy."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))
