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

:func:`prefetch` asks the CPU to start loading an array element that a
compiled loop will read a little later. Loops that chase indices through
tables larger than the CPU caches (a grid cell, then its entries, then
their vertices) otherwise wait for memory at every step, one fix after
another; prefetched a few fixes ahead, those waits overlap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import numba
import numpy as np
import numpy.typing as npt
from llvmlite import ir  # type: ignore[import-untyped]
from numba.extending import intrinsic, overload

__all__ = ["jit", "prefetch"]

F = TypeVar("F", bound=Callable[..., Any])


def jit(fn: F) -> F:
    """``fn`` compiled with Numba (nopython, nogil, cached); same signature for mypy."""
    return cast(F, numba.njit(cache=True, nogil=True)(fn))


def prefetch(array: npt.NDArray[Any], index: int | np.integer[Any]) -> None:
    """Hint that ``array.flat[index]`` (C order) will be read soon; a no-op outside Numba.

    Compiled, it is one prefetch instruction into all cache levels: it never
    faults or changes a result, whatever the index, and costs about as much
    as an addition. ``array`` must be C-contiguous.
    """


def _prefetch_typer(typingctx: Any, array: Any, index: Any) -> Any:
    """``llvm.prefetch`` (read, high locality, data cache) of ``&array.flat[index]``."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        ary = context.make_array(signature.args[0])(context, builder, args[0])
        # The address only (nothing is read): the index times the item size past the data.
        item = context.get_abi_sizeof(context.get_data_type(signature.args[0].dtype))
        offset = builder.mul(args[1], context.get_constant(numba.types.intp, item))
        addr = builder.add(builder.ptrtoint(ary.data, offset.type), offset)
        ptr = builder.inttoptr(addr, ir.IntType(8).as_pointer())
        int32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, int32, int32, int32])
        fn = builder.module.globals.get("llvm.prefetch.p0") or ir.Function(
            builder.module, fnty, "llvm.prefetch.p0"
        )
        builder.call(fn, [ptr, int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return numba.types.void(array, numba.types.intp), codegen


_prefetch: Any = intrinsic(_prefetch_typer)


def _prefetch_overload(array: Any, index: Any) -> Any:
    if isinstance(array, numba.types.Array) and isinstance(index, numba.types.Integer):

        def impl(array: Any, index: Any) -> None:
            _prefetch(array, np.intp(index))

        return impl
    return None


overload(prefetch, jit_options={"nogil": True})(_prefetch_overload)
