"""Tiny models and data shared by the training tests (imported by name, not a test file)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


class TinyClassifier(nn.Module):
    """MLP with dropout (so resume must restore the RNG too): (B, F) -> (B, C) logits."""

    def __init__(self, features: int = 4, classes: int = 3, hidden: int = 8, dropout: float = 0.2):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(features, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, classes)
        )

    def forward(self, inputs, targets=None):
        logits = self.net(inputs)  # (B, C)
        loss = None if targets is None else nn.functional.cross_entropy(logits, targets)
        return logits, loss


def classification_data(n: int = 48, features: int = 4, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    y = (x @ w).argmax(-1)
    return x, y


def loader(x, y, batch_size=8, shuffle=True, **kwargs):
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, **kwargs)


class TinyStreamLM(nn.Module):
    """Embedding -> GRU -> tied output; carries the GRU state; records what it was given."""

    def __init__(self, vocab: int = 7, hidden: int = 6, tie: bool = True):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)
        if tie:
            self.out.weight = self.embed.weight
        self.received: list = []

    def forward(self, inputs, targets=None, state=None):
        self.received.append(state)
        h, new_state = self.rnn(self.embed(inputs), state)  # (B, T, H), (1, B, H)
        logits = self.out(h)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss, new_state


def stream_batches(n_windows: int = 4, batch: int = 2, bptt: int = 5, vocab: int = 7):
    """A cyclic token stream cut into BPTT windows (the layout of seed 003's batch_producer)."""
    total = batch * (n_windows * bptt + 1)
    data = (torch.arange(total) % vocab).reshape(batch, -1)  # (B, L)
    return [
        (data[:, i * bptt : (i + 1) * bptt], data[:, i * bptt + 1 : (i + 1) * bptt + 1])
        for i in range(n_windows)
    ]
