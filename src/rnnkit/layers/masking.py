"""Masks and lengths: two spellings of "which steps of each sequence are real".

A mask is a ``(B, T)`` bool tensor, ``True`` at valid steps. It may be right-padded (valid steps
first), left-padded (Keras' ``pad_sequences`` default) or arbitrary. Lengths ``(B,)`` describe
right- or left-padded masks only.

::

    lengths = [3, 1, 0], T = 4   padding="post"   padding="pre"
                                 1 1 1 0          0 1 1 1
                                 1 0 0 0          0 0 0 1
                                 0 0 0 0          0 0 0 0

>>> lengths_to_mask(torch.tensor([3, 1, 0]), 4)
tensor([[ True,  True,  True, False],
        [ True, False, False, False],
        [False, False, False, False]])
>>> lengths_to_mask(torch.tensor([3, 1]), 4, padding="pre").int()
tensor([[0, 1, 1, 1],
        [0, 0, 0, 1]], dtype=torch.int32)
>>> mask_to_lengths(torch.tensor([[False, True, True]]))
tensor([2])
"""

from __future__ import annotations

import torch


def lengths_to_mask(
    lengths: torch.Tensor, max_len: int | None = None, *, padding: str = "post"
) -> torch.Tensor:
    """Turn lengths ``(B,)`` into a ``(B, max_len)`` bool mask.

    Args:
        lengths: ``(B,)`` integer tensor (or a sequence of ints), each in ``[0, max_len]``.
        max_len: the time dimension ``T``; defaults to ``max(lengths)`` (0 for an empty batch).
        padding: ``"post"`` (valid steps first, right padding) or ``"pre"`` (left padding).

    Returns:
        ``(B, T)`` bool tensor, ``True`` at valid steps.
    """
    if padding not in ("post", "pre"):
        raise ValueError(f"padding must be one of ['post', 'pre']; received padding={padding!r}")
    lengths = torch.as_tensor(lengths)
    if max_len is None:
        max_len = int(lengths.max()) if lengths.numel() else 0
    lengths = validate_lengths(
        lengths, batch_size=lengths.shape[0] if lengths.dim() else -1, time_steps=max_len
    )
    steps = torch.arange(max_len, device=lengths.device)  # (T,)
    if padding == "post":
        return steps[None, :] < lengths[:, None]
    return steps[None, :] >= (max_len - lengths)[:, None]


def mask_to_lengths(mask: torch.Tensor) -> torch.Tensor:
    """Number of valid steps per sequence: ``(B, T)`` bool -> ``(B,)`` int64."""
    if not isinstance(mask, torch.Tensor) or mask.dim() != 2:
        raise ValueError(
            "mask must be a (batch, time) tensor; received "
            f"mask of shape {tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask)}"
        )
    return mask.to(torch.bool).sum(dim=1)


def validate_lengths(lengths, *, batch_size: int, time_steps: int) -> torch.Tensor:
    """Check ``lengths`` is ``(batch_size,)`` integers in ``[0, time_steps]``; return int64."""
    if not isinstance(lengths, torch.Tensor):
        try:
            lengths = torch.as_tensor(lengths)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(
                f"lengths must be a 1-D integer tensor; received lengths={lengths!r}"
            ) from exc
    if lengths.dtype.is_floating_point or lengths.dtype.is_complex or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must have an integer dtype; received dtype {lengths.dtype}")
    if lengths.dim() != 1 or (batch_size >= 0 and lengths.shape[0] != batch_size):
        raise ValueError(
            f"lengths must have shape ({batch_size},) (one per sequence); "
            f"received lengths of shape {tuple(lengths.shape)}"
        )
    if lengths.numel():
        lo, hi = int(lengths.min()), int(lengths.max())
        if lo < 0:
            raise ValueError(f"lengths must be >= 0; received a length of {lo}")
        if hi > time_steps:
            raise ValueError(
                f"lengths must be <= the time dimension ({time_steps}); received a length of {hi}"
            )
    return lengths.to(torch.int64)


def validate_mask(mask, *, batch_size: int, time_steps: int) -> torch.Tensor:
    """Check ``mask`` is ``(batch_size, time_steps)`` bool (or 0/1 integers); return it as bool."""
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"mask must be a torch.Tensor of bools; received {type(mask).__name__}")
    if mask.dtype.is_floating_point or mask.dtype.is_complex:
        raise TypeError(f"mask must be a bool (or 0/1 integer) tensor; received dtype {mask.dtype}")
    if tuple(mask.shape) != (batch_size, time_steps):
        raise ValueError(
            f"mask must have shape (batch, time) = ({batch_size}, {time_steps}); "
            f"received mask of shape {tuple(mask.shape)}"
        )
    if mask.dtype != torch.bool:
        if mask.numel() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("mask must contain only 0 and 1; received other values")
        mask = mask != 0
    return mask


def resolve_mask(mask, lengths, *, batch_size: int, time_steps: int, device=None):
    """The one ``(B, T)`` bool mask (or ``None``) from the ``mask=`` / ``lengths=`` arguments.

    ``lengths`` means right padding. Giving both is an error.
    """
    if mask is not None and lengths is not None:
        raise ValueError("give mask or lengths, not both; received both mask= and lengths=")
    if lengths is not None:
        lengths = validate_lengths(lengths, batch_size=batch_size, time_steps=time_steps)
        steps = torch.arange(time_steps, device=lengths.device)
        mask = steps[None, :] < lengths[:, None]
    elif mask is not None:
        mask = validate_mask(mask, batch_size=batch_size, time_steps=time_steps)
    if mask is not None and device is not None:
        mask = mask.to(device)
    return mask
