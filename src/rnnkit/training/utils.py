"""Small training utilities: seeding, device selection, recurrent-state handling, RNG snapshots.

>>> set_seed(0)
>>> a = torch.rand(2)
>>> set_seed(0)
>>> torch.equal(a, torch.rand(2))
True
>>> select_device("cpu")
device(type='cpu')
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = [
    "set_seed",
    "select_device",
    "detach_state",
    "move_to_device",
    "get_rng_state",
    "set_rng_state",
]


def set_seed(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device).

    Args:
        seed: a non-negative integer.

    Raises:
        TypeError: ``seed`` is not an integer.
        ValueError: ``seed`` is negative.
    """
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int; received seed={seed!r}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0; received seed={seed}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def select_device(device: str | torch.device | None = "auto") -> torch.device:
    """Resolve a device name to a :class:`torch.device`.

    Args:
        device: ``"auto"`` (or ``None``) picks CUDA when available, else CPU; ``"cpu"``,
            ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a ``torch.device`` are taken as given.

    Returns:
        The device.

    Raises:
        ValueError: the name is not a device, or CUDA/MPS was asked for but is not available.

    >>> select_device(torch.device("cpu")).type
    'cpu'
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'; received device={device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} was requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={device!r} was requested but MPS is not available")
    return dev


def detach_state(state: Any) -> Any:
    """Detach a recurrent state from the autograd graph (truncated BPTT between windows).

    Works on ``None``, a tensor, and nested tuples (named tuples included), lists and dicts
    of tensors; other leaves are returned unchanged. The structure is preserved.

    Args:
        state: the state a stateful model returned.

    Returns:
        The same structure with every tensor detached.

    >>> h = torch.ones(2, requires_grad=True) * 2
    >>> s = detach_state((h, [h, {"c": h}], None))
    >>> s[0].requires_grad, s[1][1]["c"].requires_grad, s[2]
    (False, False, None)
    """
    return _map_tensors(state, lambda t: t.detach())


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a nested tuple/list/dict structure to ``device``.

    >>> move_to_device({"x": torch.zeros(1), "n": 3}, torch.device("cpu"))["n"]
    3
    """
    return _map_tensors(obj, lambda t: t.to(device, non_blocking=True))


def _map_tensors(obj: Any, fn) -> Any:
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # named tuple
        return type(obj)(*(_map_tensors(v, fn) for v in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tensors(v, fn) for v in obj)
    if isinstance(obj, Mapping):
        return type(obj)((k, _map_tensors(v, fn)) for k, v in obj.items())
    return obj


def get_rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Snapshot the Python, NumPy and torch (CPU, CUDA) random states.

    Args:
        generator: an extra ``torch.Generator`` (e.g. a DataLoader's) to snapshot too.

    Returns:
        A dict of JSON-able values and CPU tensors (see :mod:`rnnkit.training.checkpoint`).
    """
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *[_py(v) for v in np_state[2:]]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    if generator is not None:
        state["generator"] = generator.get_state()
    return state


def set_rng_state(state: Mapping[str, Any], generator: torch.Generator | None = None) -> None:
    """Restore a snapshot taken by :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))
    if generator is not None and "generator" in state:
        generator.set_state(state["generator"])


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v
