"""rnnkit's on/off environment switches (``RNNKIT_CPU_EXT``, ``RNNKIT_TUNE_ALLOCATOR``): on
unless set to ``0``, ``false``, ``off`` or ``no`` (any case, surrounding spaces ignored)."""

from __future__ import annotations

import os

_OFF = ("0", "false", "off", "no")


def switched_on(name: str) -> bool:
    """Whether the environment switch ``name`` is on (unset: on)."""
    return os.environ.get(name, "1").strip().lower() not in _OFF
