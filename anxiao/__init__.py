"""anxiao (安校): the composition root — the ``anxiao`` CLI and ``serve``.

This package wires the others together and holds no logic of its own.
"""

__all__: list[str] = []
