import random
from collections import namedtuple

import numpy as np
import pytest
import torch

from rnnkit.training import detach_state, select_device, set_seed
from rnnkit.training.utils import get_rng_state, set_rng_state


def test_set_seed_seeds_everything():
    set_seed(7)
    a = (random.random(), np.random.rand(), torch.rand(1))
    set_seed(7)
    b = (random.random(), np.random.rand(), torch.rand(1))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2])
    with pytest.raises(ValueError, match="seed must be >= 0; received seed=-1"):
        set_seed(-1)
    with pytest.raises(TypeError, match="seed must be an int"):
        set_seed(1.5)


def test_rng_snapshot_round_trip():
    g = torch.Generator().manual_seed(3)
    snap = get_rng_state(g)
    a = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    set_rng_state(snap, g)
    b = (random.random(), np.random.rand(), torch.rand(1), torch.rand(1, generator=g))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and torch.equal(a[3], b[3])


def test_select_device():
    assert select_device("cpu") == torch.device("cpu")
    assert select_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="received device='gpu0'"):
        select_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            select_device("cuda")


def test_detach_state_keeps_structure():
    LSTMState = namedtuple("LSTMState", "h c")
    x = torch.ones(2, requires_grad=True)
    state = [LSTMState(x * 2, x * 3), {"g": (x * 4,)}]
    out = detach_state(state)
    assert isinstance(out, list) and isinstance(out[0], LSTMState)
    assert not out[0].h.requires_grad and not out[1]["g"][0].requires_grad
    assert torch.equal(out[0].c, torch.full((2,), 3.0))
    assert detach_state(None) is None
