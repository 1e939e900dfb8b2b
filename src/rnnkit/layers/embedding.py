"""``Embedding``: token ids to vectors, optionally producing the padding mask (Keras).

>>> emb = Embedding(10, 3, mask_zero=True)
>>> ids = torch.tensor([[0, 0, 4, 2], [5, 1, 0, 0]])   # left- and right-padded rows
>>> tuple(emb(ids).shape)
(2, 4, 3)
>>> emb.compute_mask(ids)
tensor([[False, False,  True,  True],
        [ True,  True, False, False]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.layers.cells import check_positive_int
from rnnkit.layers.initializers import get_initializer


class Embedding(nn.Module):
    """Look up ``(input_dim, output_dim)`` vectors by integer id.

    Args:
        input_dim: vocabulary size (ids are in ``[0, input_dim)``).
        output_dim: vector size.
        mask_zero: id 0 is padding: :meth:`compute_mask` returns ``ids != 0`` (pass it on to the
            recurrent layer with ``mask=``). The vector of id 0 is still a trainable row, as in
            Keras.
        embeddings_initializer: Keras name or callable; default ``"uniform"`` (``U(-0.05, 0.05)``).
        device, dtype: where to create the table.

    Call arguments:
        inputs: integer tensor of any shape ``(...)``. Ids outside ``[0, input_dim)`` raise
            ``ValueError`` for CPU inputs. GPU inputs are not checked here: reading their range
            would make the host wait for the GPU on every call (a synchronisation that measured
            as a large share of a small language model's training step); an out-of-range id
            there fails inside torch's lookup instead (a device-side assertion).

    Returns:
        ``(..., output_dim)``.
    """

    def __init__(
        self,
        input_dim: int,
        output_dim: int,
        mask_zero: bool = False,
        embeddings_initializer="uniform",
        *,
        device=None,
        dtype=None,
    ):
        super().__init__()
        self.input_dim = check_positive_int("input_dim", input_dim)
        self.output_dim = check_positive_int("output_dim", output_dim)
        if not isinstance(mask_zero, bool):
            raise TypeError(f"mask_zero must be a bool; received mask_zero={mask_zero!r}")
        self.mask_zero = mask_zero
        self.embeddings_initializer = get_initializer(
            embeddings_initializer, argument="embeddings_initializer"
        )
        self.embeddings = nn.Parameter(
            torch.empty(self.input_dim, self.output_dim, device=device, dtype=dtype)
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.embeddings_initializer(self.embeddings.data)

    def _check_ids(self, inputs) -> torch.Tensor:
        if not isinstance(inputs, torch.Tensor):
            raise TypeError(
                f"inputs must be a torch.Tensor of ids; received {type(inputs).__name__}"
            )
        if inputs.dtype.is_floating_point or inputs.dtype.is_complex or inputs.dtype == torch.bool:
            raise TypeError(f"inputs must have an integer dtype; received dtype {inputs.dtype}")
        return inputs

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        inputs = self._check_ids(inputs)
        if inputs.numel() and inputs.device.type == "cpu":
            lo, hi = torch.aminmax(inputs)
            lo, hi = int(lo), int(hi)
            if lo < 0 or hi >= self.input_dim:
                raise ValueError(
                    f"inputs must be ids in [0, {self.input_dim}) (input_dim={self.input_dim}); "
                    f"received ids in [{lo}, {hi}]"
                )
        return F.embedding(inputs, self.embeddings)

    def compute_mask(self, inputs: torch.Tensor) -> torch.Tensor | None:
        """``inputs != 0`` when ``mask_zero``, else ``None``."""
        if not self.mask_zero:
            return None
        return self._check_ids(inputs) != 0

    def get_weights(self) -> list[np.ndarray]:
        return [self.embeddings.detach().cpu().numpy().copy()]

    def set_weights(self, weights: Sequence) -> None:
        weights = list(weights)
        expected = [(self.input_dim, self.output_dim)]
        received = [tuple(np.shape(w)) for w in weights]
        if received != expected:
            raise ValueError(
                f"Embedding.set_weights expected shapes {expected}; received shapes {received}"
            )
        with torch.no_grad():
            self.embeddings.copy_(torch.as_tensor(np.asarray(weights[0])))

    def extra_repr(self) -> str:
        return f"{self.input_dim}, {self.output_dim}, mask_zero={self.mask_zero}"
