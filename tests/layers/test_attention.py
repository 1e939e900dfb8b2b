import torch

from rnnkit.layers import AttentionPooling, lengths_to_mask


def test_padded_positions_get_no_weight_and_do_not_change_the_result():
    torch.manual_seed(0)
    pool = AttentionPooling(4, hidden=3)
    x = torch.randn(3, 5, 4)
    mask = lengths_to_mask(torch.tensor([5, 2, 0]), 5, padding="pre")
    y, w = pool(x, mask=mask, return_weights=True)
    assert (w[~mask] == 0).all()
    torch.testing.assert_close(w.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(y[1], pool(x[1:2, 3:])[0])
    x2 = x.clone()
    x2[~mask] = 100.0  # garbage in the padding changes nothing
    torch.testing.assert_close(pool(x2, mask=mask), y)
    assert (y[2] == 0).all() and torch.isfinite(y).all()
