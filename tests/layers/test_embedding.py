import numpy as np
import pytest
import torch

from rnnkit.layers import LSTM, Embedding


def test_mask_zero_feeds_the_recurrent_layer():
    torch.manual_seed(0)
    emb = Embedding(10, 4, mask_zero=True)
    ids = torch.tensor([[0, 0, 3, 4, 5], [1, 2, 0, 0, 0]])
    layer = LSTM(2, return_state=True)
    out, h, c = layer(emb(ids), mask=emb.compute_mask(ids))
    torch.testing.assert_close(out[0], layer(emb(ids[:1, 2:]))[0][0])
    assert Embedding(10, 4).compute_mask(ids) is None


def test_weights_and_errors():
    emb = Embedding(5, 3)
    assert emb.get_weights()[0].shape == (5, 3)
    assert np.abs(emb.get_weights()[0]).max() <= 0.05
    emb.set_weights([np.ones((5, 3))])
    torch.testing.assert_close(emb(torch.tensor([1])), torch.ones(1, 3))
    with pytest.raises(
        ValueError, match=r"expected shapes \[\(5, 3\)\]; received shapes \[\(3, 5\)\]"
    ):
        emb.set_weights([np.ones((3, 5))])
    with pytest.raises(ValueError, match=r"ids in \[0, 5\).*received ids in \[0, 7\]"):
        emb(torch.tensor([0, 7]))
    with pytest.raises(TypeError, match="integer dtype"):
        emb(torch.tensor([0.0]))
