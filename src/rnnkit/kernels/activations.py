"""Activation functions by Keras name.

>>> get_activation("hard_sigmoid")(torch.tensor([-4.0, 0.0, 4.0]))
tensor([0.0000, 0.5000, 1.0000])
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

Activation = Callable[[torch.Tensor], torch.Tensor]

ACTIVATIONS: dict[str, Activation] = {
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    # Keras 3 definition: relu6(x + 3) / 6, i.e. clip(x / 6 + 0.5, 0, 1).
    "hard_sigmoid": lambda x: F.relu6(x + 3.0) / 6.0,
    "relu": torch.relu,
    "linear": lambda x: x,
    "elu": F.elu,
    "selu": F.selu,
    "softsign": F.softsign,
    "softplus": F.softplus,
    "silu": F.silu,
    "swish": F.silu,
    "gelu": F.gelu,
    "exponential": torch.exp,
}


def get_activation(
    activation: str | Activation | None, *, argument: str = "activation"
) -> Activation:
    """Return the activation function for a Keras name (or a callable, returned as is).

    ``None`` means linear, as in Keras. Unknown names raise ``ValueError`` naming ``argument``.
    """
    if activation is None:
        return ACTIVATIONS["linear"]
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(
        f"{argument} must be one of {sorted(ACTIVATIONS)} or a callable; "
        f"received {argument}={activation!r}"
    )
