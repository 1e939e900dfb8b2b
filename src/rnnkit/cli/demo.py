"""``rnnkit demo``: a short offline tour of the recurrent layers (to be replaced by the LM demo).

Builds a tiny masked-sequence task (does a left-padded sequence of digits contain more 7s than
3s?), trains an ``Embedding -> Bidirectional(LSTM) -> AttentionPooling -> Linear`` classifier
for a few seconds on CPU, and shows the backend each layer dispatches to.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from rnnkit.kernels import dispatch
from rnnkit.layers import LSTM, AttentionPooling, Bidirectional, Embedding


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="short offline demo of the recurrent layers")
    p.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.set_defaults(run=run)


def make_batch(batch: int, max_len: int, gen: torch.Generator):
    """Left-padded digit sequences (id = digit + 1, 0 = padding) and their labels."""
    lengths = torch.randint(1, max_len + 1, (batch,), generator=gen)
    digits = torch.randint(0, 10, (batch, max_len), generator=gen)
    valid = torch.arange(max_len)[None, :] >= (max_len - lengths)[:, None]  # (B, T) left-padded
    ids = torch.where(valid, digits + 1, torch.zeros_like(digits))
    labels = (((digits == 7) & valid).sum(1) > ((digits == 3) & valid).sum(1)).long()
    return ids, labels


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = Embedding(11, 16, mask_zero=True)
        self.rnn = Bidirectional(LSTM(32, return_sequences=True, input_size=16))
        self.pool = AttentionPooling(64)
        self.head = nn.Linear(64, 2)

    def forward(self, ids):
        mask = self.embed.compute_mask(ids)
        return self.head(self.pool(self.rnn(self.embed(ids), mask=mask), mask=mask))


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, args.threads))
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = Classifier()
    lstm = model.rnn.forward_layer
    print("rnnkit demo: Embedding(mask_zero) -> Bidirectional(LSTM) -> AttentionPooling -> Linear")
    print(f"  LSTM weights (Keras layout): {[w.shape for w in lstm.get_weights()]}")
    print(f"  backend for this LSTM: {dispatch.select(lstm.cell.spec)} (auto)")
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    test_ids, test_labels = make_batch(512, 12, gen)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, labels = make_batch(64, 12, gen)
        loss = nn.functional.cross_entropy(model(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 0 or step == args.steps:
            model.eval()
            with torch.no_grad():
                acc = (model(test_ids).argmax(1) == test_labels).float().mean().item()
            model.train()
            print(f"  step {step:4d}  loss {loss.item():.3f}  held-out accuracy {acc:.3f}")
    print(f"  trained {args.steps} steps in {time.perf_counter() - start:.1f} s")
    return 0
