"""The C library's allocator, set for training: large freed blocks stay in the heap for reuse.

A training step allocates and frees the same large buffers every step (the gates and states of
each recurrent layer: tens of MB). With glibc's default settings such a block is mapped from the
kernel anew, or trimmed off the heap's top and grown back, and every page of it faults when it is
first touched again; glibc's dynamic thresholds do not end that. Measured on this project's
2-core machine, 1 thread: ``torch.nn.LSTM``, batch 32, 100 steps, 128 -> 256, faults on 7,412
pages per training step through 150 steps (55 ms per step, 42-45 ms without the faults); the
PTB-small LM step (then rnnkit's layers with an ``nn.Linear`` decoder, as in ``torch.nn``)
4,850-5,160 tokens/s for rnnkit and for ``torch.nn`` alike, 5,400-5,580 with :func:`tune`
(418,000-501,000 page faults in its timing, 61,000 with it).

:func:`tune` has glibc serve every block below 1 GiB from the heap and keep freed memory there
(``mallopt(M_MMAP_THRESHOLD)`` and ``mallopt(M_TRIM_THRESHOLD)``): the process keeps its peak
memory between steps instead of handing it back to the system and faulting it in again. rnnkit's
training commands (``rnnkit lm train``, ``rnnkit clf train``, ``rnnkit clf reber``, ``rnnkit
demo``) and ``rnnkit bench`` call it; ``RNNKIT_TUNE_ALLOCATOR=0`` leaves the allocator as it is.
In a training script of your own, call ``rnnkit.allocator.tune()`` once at the start.
"""

from __future__ import annotations

import ctypes

from rnnkit.switches import switched_on

ENV_SWITCH = "RNNKIT_TUNE_ALLOCATOR"
TUNED = "tuned (glibc heap, no trimming)"
DEFAULT = "default"
_LIMIT = 1 << 30  # blocks below this come from the heap; freed memory above it is trimmed
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters

_state = {"tuned": False}


def enabled() -> bool:
    """False when ``RNNKIT_TUNE_ALLOCATOR=0`` (or ``false``/``off``/``no``) is set."""
    return switched_on(ENV_SWITCH)


def tune() -> bool:
    """Keep large freed blocks in glibc's heap (see the module docstring).

    Returns True when the settings are in place (now or from an earlier call); False where the C
    library is not glibc, or where ``RNNKIT_TUNE_ALLOCATOR=0`` turned it off. Process-wide and
    not undone: call it in programs that train, not in a library import.
    """
    if not enabled():
        return False
    if not is_tuned():
        try:
            libc = ctypes.CDLL("libc.so.6")
            _state["tuned"] = bool(
                libc.mallopt(_M_MMAP_THRESHOLD, _LIMIT) and libc.mallopt(_M_TRIM_THRESHOLD, _LIMIT)
            )
        except (OSError, AttributeError):  # not glibc
            return False
    return is_tuned()


def is_tuned() -> bool:
    """Whether :func:`tune` is in effect in this process."""
    return _state["tuned"]


def describe() -> str:
    """``TUNED`` after a successful :func:`tune` in this process, else ``DEFAULT``."""
    return TUNED if is_tuned() else DEFAULT
