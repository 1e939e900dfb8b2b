import pytest
import torch

from rnnkit.layers import lengths_to_mask, mask_to_lengths


def test_roundtrip_both_sides():
    lengths = torch.tensor([0, 3, 5])
    for padding in ("post", "pre"):
        mask = lengths_to_mask(lengths, 5, padding=padding)
        assert mask.dtype == torch.bool and mask.shape == (3, 5)
        torch.testing.assert_close(mask_to_lengths(mask), lengths)


def test_errors():
    with pytest.raises(ValueError, match="padding must be one of"):
        lengths_to_mask(torch.tensor([1]), 2, padding="left")
    with pytest.raises(ValueError, match="received a length of 3"):
        lengths_to_mask(torch.tensor([3]), 2)
    with pytest.raises(TypeError, match="integer dtype"):
        lengths_to_mask(torch.tensor([1.0]), 2)
