r"""Sequence classifiers: embedding (or features) → recurrent stack → pooling → dense head.

``SequenceClassifier`` is the model of seeds 002 and 004::

    token ids (B, T) ──► Embedding(mask_zero) ─┐            one-hot / float features (B, T, F)
                                               │             + lengths or mask ─┐
                                               ▼                                ▼
                  [Bidirectional](SimpleRNN | LSTM | GRU) × n   (mask passed to every layer)
                                               │
                        pooling: last valid output | masked mean | masked max | attention
                                               │
                       Dense(units, activation) × m  ──►  Dense(1) binary | Dense(C) multi-class

Padded steps are masked end to end: the mask comes from ``ids != 0`` (token inputs, any padding
side) or from ``lengths`` / ``mask`` (feature inputs), is passed to every recurrent layer, and
the pooling ignores padded steps, so padding never changes a prediction.

``forward(inputs, targets=None, *, lengths=None, mask=None) -> (logits, loss)`` follows the
trainer contract. Binary models (``num_classes=2, binary=True``, the default for two classes)
output one logit per example and use BCE from logits; multi-class models output ``C`` logits and
use cross-entropy. Optional ``class_weights`` weight each example's loss by its class; the loss
is then the weighted mean ``sum(w_i l_i) / sum(w_i)`` (as ``torch.nn.CrossEntropyLoss``).

A model built by :func:`build_text_classifier` or :func:`train_text_classifier` carries its
encoder (a :class:`~rnnkit.data.TextVectorization`, or :class:`CharOneHot` for Reber strings)
and :class:`~rnnkit.data.LabelMap`, so :meth:`SequenceClassifier.predict` works on raw texts and
:func:`save_classifier` / :func:`load_classifier` round-trip everything through one checkpoint.

>>> config = ClassifierConfig(vocab_size=50, embedding_dim=8, units=[6], pooling="mean",
...                           head_units=[4])
>>> model = SequenceClassifier(config)
>>> ids = torch.tensor([[5, 7, 9, 0], [3, 0, 0, 0]])             # right-padded, (B, T)
>>> logits, loss = model(ids, torch.tensor([1, 0]))
>>> tuple(logits.shape), loss.dim()
((2,), 0)
>>> left = torch.tensor([[0, 0, 0, 5, 7, 9], [0, 0, 0, 0, 0, 3]])  # the same, left-padded
>>> _ = model.eval()
>>> torch.allclose(model(ids)[0], model(left)[0], atol=1e-6)
True
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.data.classification import LabelMap
from rnnkit.data.vectorization import TextVectorization
from rnnkit.kernels import dispatch, vendor
from rnnkit.layers import GRU, LSTM, AttentionPooling, Bidirectional, Embedding, SimpleRNN
from rnnkit.layers.masking import resolve_mask

__all__ = [
    "CELLS",
    "POOLING_MODES",
    "CharOneHot",
    "ClassifierConfig",
    "SequenceClassifier",
    "build_text_classifier",
    "load_classifier",
    "masked_pool",
    "reverse_valid",
    "save_classifier",
]

CELLS = {"lstm": LSTM, "gru": GRU, "simple": SimpleRNN}
POOLING_MODES = ("last", "mean", "max", "attention")
ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU, "linear": nn.Identity}
MERGE_MODES = ("concat", "sum", "mul", "ave")
CHECKPOINT_KIND = "rnnkit.sequence_classifier/1"


# --------------------------------------------------------------------------------- config


@dataclass
class ClassifierConfig:
    """Everything needed to rebuild a :class:`SequenceClassifier` (saved as JSON).

    Unknown keys in :meth:`from_dict` are an error listing the known ones.
    """

    vocab_size: int | None = None  # token ids in [0, vocab_size); None: float feature inputs
    embedding_dim: int = 64  # embedding size (token inputs)
    input_size: int | None = None  # features per step (feature inputs, e.g. 7 for Reber)
    cell: str = "lstm"  # "lstm" | "gru" | "simple"
    units: list[int] = field(default_factory=lambda: [64])  # one recurrent layer per entry
    bidirectional: bool = True  # wrap every recurrent layer in Bidirectional
    merge_mode: str = "concat"  # Bidirectional merge: concat | sum | mul | ave
    dropout: float = 0.0  # input dropout of each recurrent layer (Keras `dropout`)
    recurrent_dropout: float = 0.0  # recurrent dropout (Keras; disables the vendor kernel)
    embedding_dropout: float = 0.0  # dropout on the embedded / feature inputs
    pooling: str = "last"  # "last" | "mean" | "max" | "attention"
    attention_hidden: int | None = None  # tanh layer size of attention pooling (None: linear)
    head_units: list[int] = field(default_factory=lambda: [32])  # hidden dense layers
    head_activation: str = "relu"  # activation of the hidden dense layers
    head_dropout: float = 0.0  # dropout before each dense layer
    num_classes: int = 2  # number of classes C
    binary: bool = True  # C == 2: one logit + BCE (seed 002's Dense(1)); else C logits + CE
    class_weights: list[float] | None = None  # per-class loss weights (length C)
    backend: str = "auto"  # recurrent backend (see rnnkit.kernels.dispatch)

    def __post_init__(self) -> None:
        if self.vocab_size is None and self.input_size is None:
            raise ValueError(
                "give vocab_size (token inputs) or input_size (feature inputs); received neither"
            )
        if self.vocab_size is not None and self.input_size is not None:
            raise ValueError(
                "give vocab_size (token inputs) or input_size (feature inputs), not both; "
                f"received vocab_size={self.vocab_size}, input_size={self.input_size}"
            )
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {sorted(CELLS)}; received cell={self.cell!r}")
        if self.pooling not in POOLING_MODES:
            raise ValueError(
                f"pooling must be one of {list(POOLING_MODES)}; received pooling={self.pooling!r}"
            )
        if self.merge_mode not in MERGE_MODES:
            raise ValueError(
                f"merge_mode must be one of {list(MERGE_MODES)}; "
                f"received merge_mode={self.merge_mode!r}"
            )
        if self.head_activation not in ACTIVATIONS:
            raise ValueError(
                f"head_activation must be one of {sorted(ACTIVATIONS)}; "
                f"received head_activation={self.head_activation!r}"
            )
        self.units = [int(u) for u in self.units]
        self.head_units = [int(u) for u in self.head_units]
        if not self.units or any(u < 1 for u in self.units):
            raise ValueError(f"units must be a non-empty list of ints >= 1; received {self.units}")
        if any(u < 1 for u in self.head_units):
            raise ValueError(f"head_units must be ints >= 1; received {self.head_units}")
        for name in ("dropout", "recurrent_dropout", "embedding_dropout", "head_dropout"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1); received {name}={v}")
        if not isinstance(self.num_classes, int) or self.num_classes < 2:
            raise ValueError(f"num_classes must be an int >= 2; received {self.num_classes!r}")
        if self.num_classes != 2:
            self.binary = False
        if self.class_weights is not None:
            self.class_weights = [float(w) for w in self.class_weights]
            if len(self.class_weights) != self.num_classes or any(
                not w > 0 for w in self.class_weights
            ):
                raise ValueError(
                    f"class_weights must be {self.num_classes} positive numbers (one per class); "
                    f"received {self.class_weights}"
                )

    @property
    def tokens(self) -> bool:
        """Whether the inputs are token ids (else float features)."""
        return self.vocab_size is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassifierConfig:
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"unknown classifier config keys {unknown}; known keys: {known}")
        return cls(**data)


# -------------------------------------------------------------------------------- pooling


def masked_pool(x: torch.Tensor, mask: torch.Tensor | None, mode: str) -> torch.Tensor:
    """Pool ``(B, T, F)`` over time to ``(B, F)``, ignoring steps where ``mask`` is ``False``.

    Args:
        x: ``(B, T, F)``.
        mask: ``(B, T)`` bool (``True`` at valid steps) or ``None`` (all valid).
        mode: ``"mean"`` or ``"max"``. A row without valid steps pools to zeros.

    Returns:
        ``(B, F)``.

    >>> x = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> m = torch.tensor([[True, True, False]])
    >>> masked_pool(x, m, "mean").item(), masked_pool(x, m, "max").item()
    (2.0, 3.0)
    """
    if mode not in ("mean", "max"):
        raise ValueError(f"mode must be 'mean' or 'max'; received mode={mode!r}")
    if mask is None:
        if x.shape[1] == 0:
            return x.new_zeros(x.shape[0], x.shape[2])
        return x.mean(dim=1) if mode == "mean" else x.amax(dim=1)
    m = mask.unsqueeze(-1)  # (B, T, 1)
    count = m.sum(dim=1)  # (B, 1)
    if mode == "mean":
        return (x * m).sum(dim=1) / count.clamp(min=1)
    if x.shape[1] == 0:
        return x.new_zeros(x.shape[0], x.shape[2])
    out = x.masked_fill(~m, torch.finfo(x.dtype).min).amax(dim=1)  # (B, F)
    return torch.where(count > 0, out, torch.zeros_like(out))


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse the first ``lengths[b]`` steps of each row of ``(B, T, ...)``; padding stays put.

    Flax's ``flip_sequences``: a right-padded sequence reversed this way is still right-padded,
    so a forward recurrence over it is the backward direction of the unpadded sequence.

    >>> reverse_valid(torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]]), torch.tensor([3, 2])).tolist()
    [[3, 2, 1, 0], [5, 4, 0, 0]]
    """
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device)[None, :]  # (1, T)
    n = lengths.to(x.device)[:, None]  # (B, 1)
    idx = torch.where(t < n, n - 1 - t, t)  # (B, T)
    idx = idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(1, idx)


def _right_padded_lengths(mask: torch.Tensor | None, batch: int, steps: int, device):
    """``(B,)`` lengths if ``mask`` is a right-padding mask (or ``None``), else ``None``."""
    if mask is None:
        return torch.full((batch,), steps, dtype=torch.long, device=device)
    if steps > 1 and bool((mask[:, 1:] & ~mask[:, :-1]).any()):
        return None
    return mask.sum(dim=1)


# -------------------------------------------------------------------------------- encoders


class CharOneHot:
    """Characters to one-hot feature sequences (the seed's ``str2onehot``, unpadded per string).

    Args:
        chars: the alphabet, in column order (Reber: ``"BTSXPVE"``).

    >>> enc = CharOneHot("BTE")
    >>> x, lengths = enc(["BTE", "B"])
    >>> tuple(x.shape), lengths.tolist(), x[1, 1].tolist()
    ((2, 3, 3), [3, 1], [0.0, 0.0, 0.0])
    """

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError(f"chars must be distinct characters; received chars={chars!r}")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """``(len(text), len(chars))`` float32 one-hot rows (``ValueError`` on unknown chars)."""
        bad = sorted({c for c in text if c not in self.index})
        if bad:
            raise ValueError(
                f"characters {bad} are not in the alphabet {self.chars!r}; received {text!r}"
            )
        out = torch.zeros(len(text), self.size)
        if text:
            out[torch.arange(len(text)), torch.tensor([self.index[c] for c in text])] = 1.0
        return out

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded ``(B, T, len(chars))`` features and ``(B,)`` lengths."""
        rows = [self.encode(t) for t in texts]
        lengths = torch.tensor([r.shape[0] for r in rows], dtype=torch.long)
        width = int(lengths.max()) if rows else 0
        x = torch.zeros(len(rows), width, self.size)
        for i, r in enumerate(rows):
            x[i, : r.shape[0]] = r
        return x, lengths

    def to_dict(self) -> dict[str, Any]:
        return {"format": "rnnkit.char_onehot/1", "chars": self.chars}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CharOneHot:
        return cls(data["chars"])


# --------------------------------------------------------------------------------- model


def _merge(a: torch.Tensor, b: torch.Tensor, mode: str) -> torch.Tensor:
    if mode == "concat":
        return torch.cat([a, b], dim=-1)
    if mode == "sum":
        return a + b
    if mode == "ave":
        return (a + b) / 2
    return a * b


class SequenceClassifier(nn.Module):
    """Recurrent sequence classifier; see the module docstring for the picture.

    Args:
        config: a :class:`ClassifierConfig` (or a dict of its fields).
        encoder: optional text encoder for :meth:`predict` (:class:`TextVectorization` for
            token inputs, :class:`CharOneHot` for feature inputs).
        label_map: optional :class:`~rnnkit.data.LabelMap` naming the classes.
        max_length: truncate encoded texts to this many steps in :meth:`predict` (as in
            training); ``None`` keeps them whole.
        truncating: ``"pre"`` keeps the last ``max_length`` steps, ``"post"`` the first.

    Call arguments:
        inputs: ``(B, T)`` int64 token ids (0 = padding, any side), or ``(B, T, F)`` floats.
        targets: optional ``(B,)`` class ids (0/1 for binary).
        lengths: optional ``(B,)`` valid lengths (right padding; feature inputs).
        mask: optional ``(B, T)`` bool, ``True`` at valid steps (feature inputs; token inputs
            use ``inputs != 0`` when no mask is given).

    Returns:
        ``(logits, loss)``: logits ``(B,)`` for binary models, ``(B, C)`` otherwise; ``loss``
        a scalar, or ``None`` without targets.

    Attributes:
        fast_path: when ``True`` (default), a right-padded batch (or one without padding) whose
            recurrences are standard (what torch.nn's kernels can run: no recurrent dropout in
            training, default activations, no layer norm or zoneout) runs without masks, each
            backward direction over its rows reversed within their lengths
            (:func:`reverse_valid`). Same numbers (forward and gradients) as the masked layers,
            which pay for per-row final states. Other batches (left or arbitrary padding) always
            take the masked layers.
    """

    def __init__(
        self,
        config: ClassifierConfig | Mapping[str, Any],
        *,
        encoder: TextVectorization | CharOneHot | None = None,
        label_map: LabelMap | None = None,
        max_length: int | None = None,
        truncating: str = "post",
    ) -> None:
        super().__init__()
        if isinstance(config, Mapping):
            config = ClassifierConfig.from_dict(config)
        self.config = cfg = config
        self.encoder = encoder
        self.label_map = label_map
        # Run right-padded batches unmasked on the vendor kernel (exact; see _run_right_padded).
        self.fast_path = True
        self.max_length = max_length
        self.truncating = truncating
        if label_map is not None and len(label_map) != cfg.num_classes:
            raise ValueError(
                f"label_map has {len(label_map)} labels but num_classes={cfg.num_classes}"
            )
        if cfg.tokens:
            self.embedding = Embedding(cfg.vocab_size, cfg.embedding_dim, mask_zero=True)
            features = cfg.embedding_dim
        else:
            self.embedding = None
            features = cfg.input_size
        self.input_dropout = nn.Dropout(cfg.embedding_dropout)
        layer_cls = CELLS[cfg.cell]
        self.rnns = nn.ModuleList()
        for k, units in enumerate(cfg.units):
            last = k == len(cfg.units) - 1
            layer = layer_cls(
                units,
                dropout=cfg.dropout,
                recurrent_dropout=cfg.recurrent_dropout,
                return_sequences=not (last and cfg.pooling == "last"),
                backend=cfg.backend,
                input_size=features,
            )
            if cfg.bidirectional:
                layer = Bidirectional(layer, merge_mode=cfg.merge_mode)
                features = 2 * units if cfg.merge_mode == "concat" else units
            else:
                features = units
            self.rnns.append(layer)
        self.attention = (
            AttentionPooling(features, cfg.attention_hidden) if cfg.pooling == "attention" else None
        )
        head: list[nn.Module] = []
        for units in cfg.head_units:
            head += [nn.Dropout(cfg.head_dropout), nn.Linear(features, units)]
            head.append(ACTIVATIONS[cfg.head_activation]())
            features = units
        head += [nn.Dropout(cfg.head_dropout)]
        self.head = nn.Sequential(*head)
        self.output = nn.Linear(features, 1 if cfg.binary else cfg.num_classes)
        weights = None if cfg.class_weights is None else torch.tensor(cfg.class_weights)
        self.register_buffer("class_weights", weights, persistent=False)

    # ------------------------------------------------------------------- fast path
    def _directions(self, layer) -> list:
        return [layer.forward_layer, layer.backward_layer] if self.config.bidirectional else [layer]

    def _fast_path_ok(self) -> bool:
        """Whether every recurrence is a standard one (the vendor kernel's configurations) that
        may run unmasked on the backend ``auto`` picks (see ``fast_path``)."""
        for layer in self.rnns:
            for rnn in self._directions(layer):
                cell = rnn.cell
                if self.training and cell.recurrent_dropout > 0:
                    return False
                if rnn.backend not in ("auto", "vendor") or rnn.stateful:
                    return False
                if not vendor.supports(cell.spec):
                    return False
        return True

    def _run_right_padded(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """The recurrent stack on a right-padded batch without masks, exactly.

        With right padding a forward recurrence computes every valid step exactly without a
        mask (padding only comes after), and the backward direction is a forward recurrence
        over each row reversed within its length (:func:`reverse_valid`). Outputs at padded
        steps are meaningless; pooling ignores them and ``"last"`` takes step ``length - 1``.
        This runs plain dense tensors: on the CPU the compiled fused loops (LSTM training, GRU)
        or torch's oneDNN kernel, several times faster than packed sequences and faster than the
        masked layers (which pay for per-row final states), backward pass included.
        """
        batch = x.shape[0]
        last_layer = len(self.rnns) - 1
        for k, layer in enumerate(self.rnns):
            outs = []
            for d, rnn in enumerate(self._directions(layer)):
                cell = rnn.cell
                inp = reverse_valid(x, lengths) if d == 1 else x
                masks = cell.sequence_masks(batch, x.shape[1], x.device, x.dtype)
                y, _ = dispatch.run(
                    cell.spec,
                    cell.weights,
                    inp,
                    cell.initial_state(batch, x.device, x.dtype),
                    backend=rnn.backend,
                    **masks,
                )  # (B, T, u)
                if k == last_layer and self.config.pooling == "last":
                    idx = (lengths - 1).clamp(min=0).to(y.device)
                    y = y[torch.arange(batch, device=y.device), idx]  # (B, u)
                    y = torch.where((lengths > 0).to(y.device)[:, None], y, torch.zeros_like(y))
                elif d == 1:
                    y = reverse_valid(y, lengths)
                outs.append(y)
            x = outs[0] if len(outs) == 1 else _merge(outs[0], outs[1], self.config.merge_mode)
        return x

    # ----------------------------------------------------------------------------- call
    def _mask(self, inputs, lengths, mask) -> torch.Tensor | None:
        batch, steps = inputs.shape[0], inputs.shape[1]
        if self.embedding is not None and mask is None and lengths is None:
            return self.embedding.compute_mask(inputs)
        return resolve_mask(mask, lengths, batch_size=batch, time_steps=steps, device=inputs.device)

    def encode(self, inputs, *, lengths=None, mask=None) -> torch.Tensor:
        """The pooled representation ``(B, F)`` fed to the dense head."""
        cfg = self.config
        if cfg.tokens:
            if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
                shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
                raise ValueError(f"token inputs must be (batch, time) ids; received {shape}")
            m = self._mask(inputs, lengths, mask)
            x = self.embedding(inputs)  # (B, T, E)
        else:
            if not isinstance(inputs, torch.Tensor) or inputs.dim() != 3:
                shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs)
                raise ValueError(
                    f"feature inputs must be (batch, time, {cfg.input_size}); received {shape}"
                )
            m = self._mask(inputs, lengths, mask)
            x = inputs.to(self.output.weight.dtype)
        x = self.input_dropout(x)
        lengths_rp = _right_padded_lengths(m, x.shape[0], x.shape[1], x.device)
        if self.fast_path and lengths_rp is not None and self._fast_path_ok():
            x = self._run_right_padded(x, lengths_rp)
        else:
            for layer in self.rnns:
                x = layer(x, mask=m)  # (B, T, H) ... last: (B, H) with pooling="last"
        if cfg.pooling == "last":
            return x
        if cfg.pooling == "attention":
            return self.attention(x, mask=m)
        return masked_pool(x, m, cfg.pooling)

    def forward(self, inputs, targets=None, *, lengths=None, mask=None):
        h = self.head(self.encode(inputs, lengths=lengths, mask=mask))
        logits = self.output(h)  # (B, 1) | (B, C)
        if self.config.binary:
            logits = logits.squeeze(-1)  # (B,)
        loss = None if targets is None else self.loss(logits, targets)
        return logits, loss

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean (class-weighted) BCE-from-logits or cross-entropy."""
        targets = targets.reshape(-1)
        if self.config.binary:
            per = F.binary_cross_entropy_with_logits(
                logits, targets.to(logits.dtype), reduction="none"
            )
            if self.class_weights is None:
                return per.mean()
            w = self.class_weights.to(logits.dtype)[targets.long()]
            return (per * w).sum() / w.sum()
        w = None if self.class_weights is None else self.class_weights.to(logits.dtype)
        return F.cross_entropy(logits, targets.long(), weight=w)

    # ----------------------------------------------------------------------- inference
    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(B, C)`` from logits (``[1 - p, p]`` for binary models)."""
        if self.config.binary:
            p = torch.sigmoid(logits)
            return torch.stack([1 - p, p], dim=-1)
        return torch.softmax(logits, dim=-1)

    def _encode_texts(self, texts: Sequence[str]):
        if self.encoder is None:
            raise RuntimeError(
                "this model has no text encoder; build it with build_text_classifier() or load "
                "it with load_classifier() to predict on raw texts"
            )
        if isinstance(self.encoder, CharOneHot):
            for i, t in enumerate(texts):
                if not t:
                    raise ValueError(f"texts[{i}] is empty: nothing to classify")
            x, lengths = self.encoder(texts)
            return x, {"lengths": lengths}
        seqs = []
        for i, t in enumerate(texts):
            ids = self.encoder.encode(t)
            if not ids:
                raise ValueError(
                    f"texts[{i}] is empty after standardisation ({t!r}): nothing to classify"
                )
            if self.max_length is not None and len(ids) > self.max_length:
                ids = (
                    ids[-self.max_length :] if self.truncating == "pre" else ids[: self.max_length]
                )
            seqs.append(ids)
        width = max((len(s) for s in seqs), default=0)
        x = torch.zeros(len(seqs), width, dtype=torch.long)
        for i, s in enumerate(seqs):
            x[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        return x, {}

    @torch.no_grad()
    def predict_proba(self, texts: str | Sequence[str], *, batch_size: int = 64) -> np.ndarray:
        """Class probabilities of raw texts through the saved encoder.

        Args:
            texts: a text or a list of texts.
            batch_size: texts per forward pass.

        Returns:
            ``(N, C)`` float array (columns in :attr:`label_map` order).

        Raises:
            ValueError: a text is empty (or has no token left after standardisation).
        """
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        was_training = self.training
        self.eval()
        device = self.output.weight.device
        out = []
        try:
            for start in range(0, len(texts), batch_size):
                x, extra = self._encode_texts(texts[start : start + batch_size])
                extra = {k: v.to(device) for k, v in extra.items()}
                logits, _ = self(x.to(device), **extra)
                out.append(self.probabilities(logits).cpu().numpy())
        finally:
            self.train(was_training)
        if not out:
            return np.zeros((0, self.config.num_classes), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def is_empty(self, text: str) -> bool:
        """Whether ``text`` encodes to no step at all (empty, or no token after standardising)."""
        if self.encoder is None:
            raise RuntimeError("this model has no text encoder")
        if isinstance(self.encoder, CharOneHot):
            return not text
        return not self.encoder.encode(text)

    def predict(
        self, texts: str | Sequence[str], *, batch_size: int = 64, on_empty: str = "error"
    ) -> list[dict[str, Any]]:
        """Predicted label and its probability for each text.

        Args:
            texts: a text or a list of texts.
            batch_size: texts per forward pass.
            on_empty: what to do with a text that encodes to nothing (see :meth:`is_empty`):
                ``"error"`` raises ``ValueError``; ``"null"`` returns ``label`` and
                ``probability`` ``None`` with ``"error": "empty text"`` for it.

        Returns:
            One ``{"text", "label", "probability"}`` dict per text, in order (``label`` is the
            label name when the model has a label map, else the class id; ``probability`` is
            that label's probability).
        """
        if on_empty not in ("error", "null"):
            raise ValueError(f"on_empty must be 'error' or 'null'; received on_empty={on_empty!r}")
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        empty = {i for i, t in enumerate(texts) if self.is_empty(t)}
        if empty and on_empty == "error":
            i = min(empty)
            raise ValueError(
                f"texts[{i}] is empty after standardisation ({texts[i]!r}): nothing to classify "
                f"({len(empty)} empty text(s) in all)"
            )
        keep = [i for i in range(len(texts)) if i not in empty]
        probs = iter(self.predict_proba([texts[i] for i in keep], batch_size=batch_size))
        out: list[dict[str, Any]] = []
        for i, t in enumerate(texts):
            if i in empty:
                out.append({"text": t, "label": None, "probability": None, "error": "empty text"})
                continue
            p = next(probs)
            k = int(p.argmax())
            label = self.label_map.decode(k) if self.label_map is not None else k
            out.append({"text": t, "label": label, "probability": float(p[k])})
        return out

    # -------------------------------------------------------------------- persistence
    def artifacts(self) -> dict[str, Any]:
        """JSON-able encoder, label map and preprocessing, saved with checkpoints."""
        out: dict[str, Any] = {
            "classifier": {
                "format": CHECKPOINT_KIND,
                "max_length": self.max_length,
                "truncating": self.truncating,
            }
        }
        if isinstance(self.encoder, TextVectorization):
            out["vectorizer"] = json.loads(self.encoder.to_json())
        elif isinstance(self.encoder, CharOneHot):
            out["char_onehot"] = self.encoder.to_dict()
        if self.label_map is not None:
            out["labels"] = self.label_map.to_dict()
        return out


def save_classifier(model: SequenceClassifier, path: str | os.PathLike) -> Path:
    """Write ``model`` (weights, config, encoder, label map) as a checkpoint directory."""
    from rnnkit.training.checkpoint import save_checkpoint

    return save_checkpoint(path, model, config=model.config.to_dict(), artifacts=model.artifacts())


def load_classifier(path: str | os.PathLike, *, device: str = "cpu") -> SequenceClassifier:
    """Rebuild a classifier from a checkpoint directory or a run folder (its ``best``).

    Raises:
        rnnkit.training.CheckpointError: nothing loadable, or not a classifier checkpoint.
    """
    from rnnkit.training.checkpoint import CheckpointError, load_checkpoint

    ckpt = load_checkpoint(path)
    meta = ckpt.artifacts.get("classifier")
    if (
        ckpt.config is None
        or not isinstance(meta, Mapping)
        or meta.get("format") != CHECKPOINT_KIND
    ):
        raise CheckpointError(
            f"{ckpt.path} is not a sequence-classifier checkpoint (no artifacts/classifier.json "
            f"with format {CHECKPOINT_KIND!r})"
        )
    encoder: TextVectorization | CharOneHot | None = None
    if "vectorizer" in ckpt.artifacts:
        encoder = TextVectorization.from_json(json.dumps(ckpt.artifacts["vectorizer"]))
    elif "char_onehot" in ckpt.artifacts:
        encoder = CharOneHot.from_dict(ckpt.artifacts["char_onehot"])
    labels = ckpt.artifacts.get("labels")
    model = SequenceClassifier(
        ckpt.config,
        encoder=encoder,
        label_map=LabelMap.from_dict(labels) if labels is not None else None,
        max_length=meta.get("max_length"),
        truncating=meta.get("truncating", "post"),
    )
    ckpt.load_weights(model, device=device)
    model.checkpoint_path = ckpt.path
    return model.eval()


def build_text_classifier(
    texts: Iterable[str],
    label_map: LabelMap,
    *,
    max_tokens: int | None = 20000,
    max_length: int | None = None,
    truncating: str = "post",
    standardize: str = "html_lower_and_strip_punctuation",
    **config: Any,
) -> SequenceClassifier:
    """A token classifier with a :class:`TextVectorization` adapted on ``texts``.

    Args:
        texts: training texts (the vocabulary is learned from them).
        label_map: the classes.
        max_tokens: vocabulary size, padding and OOV included (seed 002: 1000).
        max_length: truncate longer texts to this many tokens (``None``: keep all).
        truncating: ``"pre"`` keeps the end of long texts, ``"post"`` the start.
        standardize: see :func:`rnnkit.data.standardize_text`.
        **config: :class:`ClassifierConfig` fields (``vocab_size`` and ``num_classes`` are set
            here).

    >>> from rnnkit.data import LabelMap
    >>> m = build_text_classifier(["good film", "bad film"], LabelMap(["neg", "pos"]),
    ...                           embedding_dim=4, units=[3], head_units=[])
    >>> m.config.vocab_size, m.encoder.get_vocabulary()
    (5, ['', '[UNK]', 'film', 'good', 'bad'])
    """
    vec = TextVectorization(max_tokens=max_tokens, standardize=standardize)
    vec.adapt(texts)
    binary = config.pop("binary", len(label_map) == 2)
    cfg = ClassifierConfig(
        vocab_size=vec.vocabulary_size(), num_classes=len(label_map), binary=binary, **config
    )
    return SequenceClassifier(
        cfg, encoder=vec, label_map=label_map, max_length=max_length, truncating=truncating
    )
