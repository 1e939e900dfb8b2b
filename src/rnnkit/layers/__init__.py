"""Keras-semantics recurrent layers on PyTorch.

Cells (``SimpleRNNCell``, ``LSTMCell``, ``GRUCell``, ``StackedRNNCells``), the ``RNN`` wrapper
and ``SimpleRNN`` / ``LSTM`` / ``GRU``, ``Bidirectional``, ``Embedding``, masking helpers,
``AttentionPooling`` and converters to and from ``torch.nn`` recurrent modules.
"""

from rnnkit.layers.attention import AttentionPooling
from rnnkit.layers.bidirectional import Bidirectional
from rnnkit.layers.cells import GRUCell, LSTMCell, RecurrentCell, SimpleRNNCell, StackedRNNCells
from rnnkit.layers.convert import from_torch, load_torch_state_dict, to_torch, to_torch_state_dict
from rnnkit.layers.embedding import Embedding
from rnnkit.layers.masking import lengths_to_mask, mask_to_lengths
from rnnkit.layers.rnn import GRU, LSTM, RNN, SimpleRNN

__all__ = [
    "GRU",
    "LSTM",
    "RNN",
    "AttentionPooling",
    "Bidirectional",
    "Embedding",
    "GRUCell",
    "LSTMCell",
    "RecurrentCell",
    "SimpleRNN",
    "SimpleRNNCell",
    "StackedRNNCells",
    "from_torch",
    "lengths_to_mask",
    "load_torch_state_dict",
    "mask_to_lengths",
    "to_torch",
    "to_torch_state_dict",
]
