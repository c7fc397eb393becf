"""Keep the garbage collector off a service's long-lived state.

``anxiao serve`` builds hundreds of thousands of long-lived objects when it
starts: the per-device states of every rule for the whole fleet (about
550,000 at 10,000 buses). CPython's full (generation 2) collections walk
every one of them each time enough newer objects have survived: 0.12 s at
10,000 buses, landing on whichever batch happens to allocate at that moment.

:func:`freeze_long_lived` moves everything alive into the permanent
generation (:func:`gc.freeze`), so later collections only walk what was
made since. Frozen objects are still freed by reference counting; only a
reference cycle among them would never be collected, so call it when the
state is built, not per batch.
"""

from __future__ import annotations

import gc

__all__ = ["freeze_long_lived"]


def freeze_long_lived() -> int:
    """Collect, then freeze every object alive; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()
