r"""``LanguageModel``: the seeds' LSTM language model, also trained as a stream LM (PTB).

One network, two ways of feeding it:

* **Padded sentences** (seeds 000/001). The methods keep the seeds' names and meaning:
  :meth:`~LanguageModel.tokenize_text_corpus` (the Keras ``Tokenizer``),
  :meth:`~LanguageModel.get_input_target_sequence` (``input = seq[:-1]``, ``target = seq[1:]``,
  padded with 0 to ``max_length - 1``), :meth:`~LanguageModel.make_lstm_cell`,
  :meth:`~LanguageModel.stacked_lstm_cells`, :meth:`~LanguageModel.get_input_embeddings`,
  :meth:`~LanguageModel.run_lstm` (only the non-padded steps are computed),
  :meth:`~LanguageModel.calculate_loss` (masked on padding),
  :meth:`~LanguageModel.get_word_predictions`, :meth:`~LanguageModel.next_word_probabilities`.
* **A token stream** (seed 003): :meth:`~LanguageModel.forward` takes ``(B, T)`` windows and the
  state of the previous window and returns ``(logits, loss, new_state)``; the trainer detaches the
  state between windows and resets it each epoch. :meth:`~LanguageModel.generate` samples token
  by token, carrying the state (the prefix is never re-run).

The network::

    ids (B, T) ─► Embedding (V, E) [embedding dropout: whole rows] ─► dropout
        ─► LSTM/GRU layer 1 [weight drop on U] ─► dropout ─► ... ─► layer L ─► dropout
        ─► Linear (H -> V) [tied to the embedding] | adaptive softmax ─► logits (B, T, V)

"dropout" is the rate ``1 - dropout_keep_prob`` on the non-recurrent connections (Zaremba et
al. 2014), with a fresh mask per time step, or one mask per window and sequence with
``locked_dropout=True`` (variational dropout, Gal & Ghahramani; AWD-LSTM's ``LockedDropout``).
Weight drop is DropConnect on each layer's recurrent kernel, one mask per forward call (AWD-LSTM).

>>> model = LanguageModel(vocab_size=12, max_length=6, num_lstm_units=8, num_lstm_layers=2)
>>> x = torch.tensor([[3, 4, 5, 0, 0], [6, 7, 8, 9, 10]])     # (B, T), 0 is padding
>>> logits, loss, state = model(x, targets=torch.roll(x, -1, dims=1))
>>> tuple(logits.shape), loss.dim(), [tuple(s.shape) for s in state]
((2, 5, 12), 0, [(2, 8), (2, 8), (2, 8), (2, 8)])
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnnkit.data.vocabulary import Tokenizer
from rnnkit.kernels import dispatch
from rnnkit.kernels.products import linear
from rnnkit.layers import RNN, Embedding, GRUCell, LSTMCell, StackedRNNCells
from rnnkit.layers.cells import RecurrentCell

__all__ = ["IGNORE_INDEX", "LanguageModel", "LanguageModelConfig", "unknown_keys_error"]

#: Targets equal to this are not predicted (``F.cross_entropy``'s default ``ignore_index``).
IGNORE_INDEX = -100

State = tuple[torch.Tensor, ...]

_CELLS = {"lstm": LSTMCell, "gru": GRUCell}


def unknown_keys_error(kind: str, unknown: Iterable[str], valid: Iterable[str]) -> ValueError:
    """``ValueError`` naming the unknown keys and listing the valid ones."""
    return ValueError(
        f"unknown {kind} key(s) {sorted(unknown)}; valid keys are: {', '.join(sorted(valid))}"
    )


@dataclass
class LanguageModelConfig:
    """Everything that defines a :class:`LanguageModel`; saved with checkpoints as JSON.

    Unknown keys are an error listing the valid ones (:meth:`from_dict`).
    """

    vocab_size: int  # V: ids are in [0, V); id 0 is padding when mask_zero
    max_length: int | None = None  # seed: longest sequence; inputs/targets are max_length - 1
    num_lstm_units: int = 200  # H: hidden units per layer
    num_lstm_layers: int = 2  # L: stacked recurrent layers
    embedding_dim: int | None = None  # E; None: int(vocab_size ** 0.25) as in the seed
    cell: str = "lstm"  # "lstm" or "gru"
    dropout_keep_prob: float = 0.5  # keep probability of non-recurrent connections in training
    locked_dropout: bool = False  # one dropout mask per sequence (variational) instead of per step
    embedding_dropout: float = 0.0  # rate of dropping whole embedding rows (words) in training
    weight_drop: float = 0.0  # DropConnect rate on the recurrent kernels in training
    tie_weights: bool = False  # output weights = input embedding (needs E == H)
    adaptive_softmax_cutoffs: list[int] | None = None  # e.g. [2000, 10000]: adaptive softmax
    adaptive_softmax_div_value: float = 4.0  # size ratio between adaptive-softmax clusters
    init_scale: float | None = None  # uniform(-s, s) for every parameter; None: Keras initialisers
    mask_zero: bool = True  # id 0 is padding: masked in the recurrence and ignored as a target
    backend: str = "auto"  # recurrence backend: auto, vendor, fused, reference

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LanguageModelConfig:
        """Build from a mapping; unknown keys raise ``ValueError`` listing the valid ones.

        >>> LanguageModelConfig.from_dict({"vocab_size": 5, "units": 3})
        Traceback (most recent call last):
        ...
        ValueError: unknown model config key(s) ['units']; valid keys are: ...
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise unknown_keys_error("model config", unknown, names)
        return cls(**dict(data))


def _check_prob(name: str, value: float, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float; received {name}={value!r}")
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value < 1.0)
    if not ok:
        allowed = "(0, 1]" if low_open else "[0, 1)"
        raise ValueError(f"{name} must be in {allowed}; received {name}={value}")
    return float(value)


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; received {name}={value!r}")
    return value


class LanguageModel(nn.Module):
    """LSTM (or GRU) language model: the seeds' class, done right, and a stream LM.

    Args:
        vocab_size: ``V``; token ids are in ``[0, V)`` and id 0 is padding (``mask_zero``).
            The tokenizer keeps the ``V - 1`` most frequent words (Keras ``num_words=V``).
        max_length: the seed's maximum sequence length (inputs and targets have
            ``max_length - 1`` steps); only :meth:`get_input_target_sequence` needs it.
        num_lstm_units: ``H``, hidden units per layer.
        num_lstm_layers: ``L``, number of stacked layers.
        **options: the other fields of :class:`LanguageModelConfig` (``embedding_dim``,
            ``cell``, ``dropout_keep_prob``, ``locked_dropout``, ``embedding_dropout``,
            ``weight_drop``, ``tie_weights``, ``adaptive_softmax_cutoffs``, ``init_scale``, ...).

    Attributes:
        config: the :class:`LanguageModelConfig`.
        tokenizer: a :class:`rnnkit.data.Tokenizer` with ``num_words=vocab_size`` (seed).
        embedding: the :class:`~rnnkit.layers.Embedding` ``(V, E)``, ``mask_zero`` as configured.
        cells: the :class:`~rnnkit.layers.StackedRNNCells` of ``L`` cells.
        decoder: ``nn.Linear(H, V)`` (weight shared with the embedding when tied), or
            ``None`` with an adaptive softmax (:attr:`adaptive_softmax`).

    Raises:
        ValueError: an option is out of range (the message names it), or ``tie_weights``
            with ``embedding_dim != num_lstm_units`` or with an adaptive softmax.
    """

    def __init__(
        self,
        vocab_size: int,
        max_length: int | None = None,
        num_lstm_units: int = 200,
        num_lstm_layers: int = 2,
        **options: Any,
    ):
        super().__init__()
        names = {f.name for f in dataclasses.fields(LanguageModelConfig)}
        unknown = set(options) - names
        if unknown:
            raise unknown_keys_error("LanguageModel option", unknown, names - {"vocab_size"})
        cfg = LanguageModelConfig(
            vocab_size=vocab_size,
            max_length=max_length,
            num_lstm_units=num_lstm_units,
            num_lstm_layers=num_lstm_layers,
            **options,
        )
        self.vocab_size = _positive_int("vocab_size", cfg.vocab_size)
        if cfg.max_length is not None and (
            isinstance(cfg.max_length, bool) or not isinstance(cfg.max_length, int)
            or cfg.max_length < 2
        ):  # fmt: skip
            raise ValueError(f"max_length must be an int >= 2 or None; received {cfg.max_length!r}")
        self.max_length = cfg.max_length
        self.num_lstm_units = _positive_int("num_lstm_units", cfg.num_lstm_units)
        self.num_lstm_layers = _positive_int("num_lstm_layers", cfg.num_lstm_layers)
        if cfg.embedding_dim is None:
            cfg.embedding_dim = max(1, int(cfg.vocab_size**0.25))
        self.embedding_dim = _positive_int("embedding_dim", cfg.embedding_dim)
        if cfg.cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}; received cell={cfg.cell!r}")
        self.dropout_keep_prob = _check_prob(
            "dropout_keep_prob", cfg.dropout_keep_prob, low_open=True
        )
        self.embedding_dropout = _check_prob(
            "embedding_dropout", cfg.embedding_dropout, low_open=False
        )
        self.weight_drop = _check_prob("weight_drop", cfg.weight_drop, low_open=False)
        if cfg.init_scale is not None and not (
            isinstance(cfg.init_scale, (int, float)) and cfg.init_scale > 0
        ):
            raise ValueError(f"init_scale must be > 0 or None; received {cfg.init_scale!r}")
        dispatch.check_backend_name(cfg.backend)
        if cfg.tie_weights and cfg.embedding_dim != cfg.num_lstm_units:
            raise ValueError(
                "tie_weights needs embedding_dim == num_lstm_units; received "
                f"embedding_dim={cfg.embedding_dim}, num_lstm_units={cfg.num_lstm_units}"
            )
        if cfg.adaptive_softmax_cutoffs is not None:
            cutoffs = [int(c) for c in cfg.adaptive_softmax_cutoffs]
            if cfg.tie_weights:
                raise ValueError("tie_weights cannot be combined with adaptive_softmax_cutoffs")
            if not cutoffs or cutoffs != sorted(set(cutoffs)) or not 0 < cutoffs[0]:
                raise ValueError(
                    "adaptive_softmax_cutoffs must be increasing positive ints below vocab_size; "
                    f"received {cfg.adaptive_softmax_cutoffs!r}"
                )
            if cutoffs[-1] >= cfg.vocab_size:
                raise ValueError(
                    f"adaptive_softmax_cutoffs must be below vocab_size={cfg.vocab_size}; "
                    f"received {cutoffs}"
                )
            smallest = int(cfg.num_lstm_units // cfg.adaptive_softmax_div_value ** len(cutoffs))
            if smallest < 1:
                raise ValueError(
                    f"adaptive_softmax_div_value={cfg.adaptive_softmax_div_value} is too large for "
                    f"num_lstm_units={cfg.num_lstm_units} and {len(cutoffs)} cutoffs: the last "
                    "cluster would have 0 dimensions"
                )
            cfg.adaptive_softmax_cutoffs = cutoffs
        self.config = cfg
        self.tokenizer = Tokenizer(num_words=cfg.vocab_size)

        self.embedding = Embedding(cfg.vocab_size, cfg.embedding_dim, mask_zero=cfg.mask_zero)
        cells = [self.make_lstm_cell(self.dropout_keep_prob) for _ in range(cfg.num_lstm_layers)]
        self.cells = StackedRNNCells(cells)
        self.cells.build(cfg.embedding_dim)
        if cfg.adaptive_softmax_cutoffs is not None:
            self.decoder = None
            self.adaptive_softmax = nn.AdaptiveLogSoftmaxWithLoss(
                cfg.num_lstm_units,
                cfg.vocab_size,
                cfg.adaptive_softmax_cutoffs,
                div_value=cfg.adaptive_softmax_div_value,
            )
        else:
            self.decoder = nn.Linear(cfg.num_lstm_units, cfg.vocab_size)
            self.adaptive_softmax = None
            if cfg.tie_weights:
                self.decoder.weight = self.embedding.embeddings  # (V, H) shared
        if cfg.init_scale is not None:
            self.init_uniform_(cfg.init_scale)

    # ------------------------------------------------------------------ configuration

    @property
    def dropout(self) -> float:
        """The dropout rate of the non-recurrent connections: ``1 - dropout_keep_prob``."""
        return 1.0 - self.dropout_keep_prob

    @classmethod
    def from_config(cls, config: LanguageModelConfig | Mapping[str, Any]) -> LanguageModel:
        """Rebuild a model from :attr:`config` (or its dict, as stored in checkpoints)."""
        if not isinstance(config, LanguageModelConfig):
            config = LanguageModelConfig.from_dict(config)
        kw = config.to_dict()
        return cls(
            kw.pop("vocab_size"),
            kw.pop("max_length"),
            kw.pop("num_lstm_units"),
            kw.pop("num_lstm_layers"),
            **kw,
        )

    @torch.no_grad()
    def init_uniform_(self, scale: float) -> None:
        """Draw every parameter from ``U(-scale, scale)`` (Zaremba et al.; biases included)."""
        for p in self.parameters():
            p.uniform_(-scale, scale)

    # ------------------------------------------------------------------ seed methods

    def tokenize_text_corpus(self, texts: Sequence[str]) -> list[list[int]]:
        """Fit :attr:`tokenizer` on ``texts`` and return their id sequences (seed).

        Ids are below ``vocab_size``: words outside the ``vocab_size - 1`` most frequent are
        dropped, as Keras' ``Tokenizer(num_words=...)`` does.

        >>> m = LanguageModel(vocab_size=4, num_lstm_units=2, num_lstm_layers=1)
        >>> m.tokenize_text_corpus(["the cat", "the dog the end"])
        [[1, 2], [1, 3, 1]]
        """
        self.tokenizer.fit_on_texts(texts)
        return self.tokenizer.texts_to_sequences(texts)

    def get_input_target_sequence(self, sequence: Sequence[int]) -> tuple[list[int], list[int]]:
        """The seed's input/target pair: ``input = seq[:-1]``, ``target = seq[1:]``.

        Both have ``max_length - 1`` ids: longer sequences are truncated to their first
        ``max_length`` ids, shorter ones are padded with 0 at the end.

        >>> m = LanguageModel(vocab_size=9, max_length=5, num_lstm_units=2, num_lstm_layers=1)
        >>> m.get_input_target_sequence([3, 4, 5])
        ([3, 4, 0, 0], [4, 5, 0, 0])
        >>> m.get_input_target_sequence([1, 2, 3, 4, 5, 6, 7])
        ([1, 2, 3, 4], [2, 3, 4, 5])

        Raises:
            ValueError: the model has no ``max_length``.
        """
        if self.max_length is None:
            raise ValueError("get_input_target_sequence needs a model built with max_length=...")
        seq = list(sequence)[: self.max_length]
        width = self.max_length - 1
        inputs, targets = seq[:-1], seq[1:]
        return inputs + [0] * (width - len(inputs)), targets + [0] * (width - len(targets))

    def make_cell(self, dropout_keep_prob: float) -> RecurrentCell:
        """A fresh cell of the configured type with ``num_lstm_units`` units.

        Args:
            dropout_keep_prob: the probability of *keeping* each input unit; the cell's dropout
                rate is ``1 - dropout_keep_prob`` (the seed passed the keep probability as the
                rate, which drops half when it means to keep all).
        """
        keep = _check_prob("dropout_keep_prob", dropout_keep_prob, low_open=True)
        return _CELLS[self.config.cell](
            self.num_lstm_units, dropout=1.0 - keep, recurrent_weight_dropout=self.weight_drop
        )

    def make_lstm_cell(self, dropout_keep_prob: float) -> RecurrentCell:
        """The seed's name for :meth:`make_cell`: an ``LSTMCell`` (or a ``GRUCell`` with
        ``cell="gru"``) with dropout rate ``1 - dropout_keep_prob``.

        >>> m = LanguageModel(vocab_size=9, num_lstm_units=3, num_lstm_layers=1)
        >>> cell = m.make_lstm_cell(0.8)
        >>> type(cell).__name__, cell.units, round(cell.dropout, 6)
        ('LSTMCell', 3, 0.2)
        """
        return self.make_cell(dropout_keep_prob)

    def stacked_lstm_cells(self, is_training: bool) -> StackedRNNCells:
        """The model's stacked cells, set up for training or inference.

        In training each cell's input dropout rate is ``1 - dropout_keep_prob`` (keep 0.5 by
        default, as in the seed); otherwise the keep probability is 1.0. The cells are the
        model's own (trained) parameters, not new ones. (The seed returned the list of cells
        instead of the ``StackedRNNCells`` it built; this returns the stack.)

        >>> m = LanguageModel(vocab_size=9, num_lstm_units=3, num_lstm_layers=2)
        >>> [c.dropout for c in m.stacked_lstm_cells(is_training=True).cells]
        [0.5, 0.5]
        >>> [c.dropout for c in m.stacked_lstm_cells(is_training=False).cells]
        [0.0, 0.0]
        """
        keep = self.dropout_keep_prob if is_training else 1.0
        for c in self.cells.cells:
            c.dropout = 1.0 - keep
        self.cells.train(bool(is_training))
        return self.cells

    def get_input_embeddings(self, input_sequences: torch.Tensor) -> torch.Tensor:
        """Embed ``(B, T)`` ids into ``(B, T, E)`` vectors (``E = int(V ** 0.25)`` by default).

        Embedding dropout (whole rows, one mask per call) applies in training mode.
        ``self.embedding.compute_mask(input_sequences)`` is the padding mask (``ids != 0``).
        """
        emb = self.embedding
        if self.training and self.embedding_dropout > 0:
            w = emb.embeddings
            keep = torch.empty(w.shape[0], 1, device=w.device, dtype=w.dtype).bernoulli_(
                1.0 - self.embedding_dropout
            )
            emb._check_ids(input_sequences)
            return F.embedding(input_sequences, w * keep / (1.0 - self.embedding_dropout))
        return emb(input_sequences)

    def run_lstm(
        self, input_sequences: torch.Tensor, is_training: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the stacked cells over a padded batch, computing only the non-padded steps.

        Args:
            input_sequences: ``(B, T)`` ids, 0 for padding (right padding, as
                :meth:`get_input_target_sequence` makes; other layouts are masked the same way).
            is_training: apply the cells' input dropout (see :meth:`stacked_lstm_cells`).

        Returns:
            ``(lstm_outputs (B, T, H), binary_sequences (B, T))``: the outputs are zero at padded
            steps; ``binary_sequences`` is ``sign(input_sequences)`` (1 at real tokens), whose row
            sums are the non-padded lengths.
        """
        cell = self.stacked_lstm_cells(is_training)
        input_embeddings = self.get_input_embeddings(input_sequences)  # (B, T, E)
        binary_sequences = torch.sign(input_sequences)  # (B, T)
        sequence_lengths = binary_sequences.sum(dim=1)  # (B,)
        rnn = RNN(
            cell, return_sequences=True, zero_output_for_mask=True, backend=self.config.backend
        )
        contiguous = bool(
            (
                binary_sequences.bool() == _length_mask(sequence_lengths, input_sequences.shape[1])
            ).all()
        )
        if contiguous:
            lstm_outputs = rnn(input_embeddings, lengths=sequence_lengths)
        else:
            lstm_outputs = rnn(input_embeddings, mask=binary_sequences.bool())
        return lstm_outputs, binary_sequences

    def output_logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """``(..., H)`` recurrent outputs to ``(..., V)`` logits (log-probabilities with an
        adaptive softmax)."""
        if self.adaptive_softmax is not None:
            flat = outputs.reshape(-1, outputs.shape[-1])
            return self.adaptive_softmax.log_prob(flat).view(*outputs.shape[:-1], -1)
        return self._decode(outputs)

    def _decode(self, hidden: torch.Tensor) -> torch.Tensor:
        """``self.decoder(hidden)`` on oneDNN's products on the CPU in float32 (the decoder is
        most of a PTB step's FLOPs; measured, (400, 200) -> 10,000 with the cross-entropy,
        forward + backward, 1 thread: 32.7 ms against 60.5 ms through ``nn.Linear``'s MKL)."""
        return linear(hidden, self.decoder.weight, self.decoder.bias)

    def calculate_loss(
        self,
        lstm_outputs: torch.Tensor,
        binary_sequences: torch.Tensor,
        output_sequences: torch.Tensor,
        reduction: str = "sum",
    ) -> torch.Tensor:
        """Cross-entropy of ``output_sequences`` masked on padding (seed).

        Args:
            lstm_outputs: ``(B, T, H)`` from :meth:`run_lstm`.
            binary_sequences: ``(B, T)``, 1 where the input is a real token.
            output_sequences: ``(B, T)`` target ids.
            reduction: ``"sum"`` (the seed's total over real tokens) or ``"mean"`` (per token).

        Returns:
            A scalar; padded positions contribute exactly nothing.
        """
        if reduction not in ("sum", "mean"):
            raise ValueError(f"reduction must be 'sum' or 'mean'; received {reduction!r}")
        mask = binary_sequences.bool()
        hidden = lstm_outputs[mask]  # (N, H) real positions only
        targets = output_sequences[mask]  # (N,)
        if self.adaptive_softmax is not None:
            if targets.numel() == 0:
                return hidden.sum() * 0.0
            loss = self.adaptive_softmax(hidden, targets).loss * targets.numel()
        else:
            loss = F.cross_entropy(self._decode(hidden), targets, reduction="sum")
        return loss / max(targets.numel(), 1) if reduction == "mean" else loss

    def get_word_predictions(
        self, word_preds: torch.Tensor, binary_sequences: torch.Tensor, batch_size: int
    ) -> torch.Tensor:
        """Pick each row's prediction at its last real token (seed).

        Args:
            word_preds: ``(B, T)`` predicted ids or ``(B, T, V)`` probabilities.
            binary_sequences: ``(B, T)``, 1 at real tokens (right padding).
            batch_size: ``B``.

        Returns:
            ``(B,)`` or ``(B, V)``: ``word_preds[b, length_b - 1]``.

        >>> m = LanguageModel(vocab_size=9, num_lstm_units=2, num_lstm_layers=1)
        >>> preds = torch.tensor([[5, 6, 7], [8, 1, 2]])
        >>> m.get_word_predictions(preds, torch.tensor([[1, 1, 0], [1, 1, 1]]), 2)
        tensor([6, 2])
        """
        row_indices = torch.arange(batch_size, device=word_preds.device)
        final_indexes = (binary_sequences.sum(dim=1) - 1).clamp(min=0).to(word_preds.device)
        return word_preds[row_indices, final_indexes]

    @torch.no_grad()
    def next_word_probabilities(self, input_sequences: torch.Tensor) -> torch.Tensor:
        """``(B, V)`` probabilities of the word after each right-padded sequence of ``(B, T)``."""
        was = self.training
        self.eval()
        try:
            outputs, binary = self.run_lstm(input_sequences, is_training=False)
            last = self.get_word_predictions(outputs, binary, input_sequences.shape[0])  # (B, H)
            logits = self.output_logits(last)
            if self.adaptive_softmax is not None:
                return logits.exp()
            return torch.softmax(logits, dim=-1)
        finally:
            self.train(was)
            self.stacked_lstm_cells(was)

    def predict_next_words(self, input_sequences: torch.Tensor) -> torch.Tensor:
        """``(B,)`` most likely next id after each right-padded sequence."""
        return self.next_word_probabilities(input_sequences).argmax(dim=-1)

    # ------------------------------------------------------------------ stream LM

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: a flat tuple of ``(B, H)`` tensors (``h, c`` per LSTM layer)."""
        p = self.cells.cells[0].kernel
        return self.cells.initial_state(batch_size, device or p.device, dtype or p.dtype)

    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout
        if not self.training or p == 0.0:
            return x
        if not self.config.locked_dropout:
            return F.dropout(x, p, training=True)
        keep = x.new_empty(x.shape[0], 1, x.shape[2]).bernoulli_(1.0 - p)  # (B, 1, F)
        return x * keep / (1.0 - p)

    def _check_state(self, state, batch: int) -> State:
        state = tuple(state)
        sizes = self.cells.state_sizes
        if len(state) != len(sizes) or any(
            tuple(s.shape) != (batch, n) for s, n in zip(state, sizes, strict=False)
        ):
            expected = [(batch, n) for n in sizes]
            raise ValueError(
                f"expected state of shapes {expected}; received {[tuple(s.shape) for s in state]}"
            )
        return state

    def run_layers(
        self,
        inputs: torch.Tensor,
        state: State | None = None,
        *,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, State]:
        """Embedding and recurrent layers (with every configured regulariser in training).

        Args:
            inputs: ``(B, T)`` ids.
            state: flat tuple of ``(B, H)`` tensors, or ``None`` for zeros.
            mask: ``(B, T)`` bool of real steps; default ``inputs != 0`` with ``mask_zero``.

        Returns:
            ``(outputs (B, T, H) after output dropout, new_state)``.
        """
        if not isinstance(inputs, torch.Tensor) or inputs.dim() != 2:
            raise ValueError(
                "inputs must be a (batch, time) tensor of ids; received "
                + (f"shape {tuple(inputs.shape)}" if isinstance(inputs, torch.Tensor) else
                   type(inputs).__name__)
            )  # fmt: skip
        batch = inputs.shape[0]
        x = self.get_input_embeddings(inputs)  # (B, T, E)
        if mask is None and self.config.mask_zero:
            mask = inputs != 0
            # On the CPU a batch without padding runs unmasked (torch's kernel, for the LSTM).
            # On CUDA, reading the mask would make the host wait for the GPU every step, and the
            # recurrence takes masks at full speed there (Triton; cuDNN's backend checks itself).
            if inputs.device.type == "cpu" and bool(mask.all()):
                mask = None
        state = self.initial_state(batch) if state is None else self._check_state(state, batch)
        x = self._dropout(x)
        finals: list[torch.Tensor] = []
        cells = list(self.cells.cells)
        for cell, s0 in zip(cells, self.cells.split_state(state), strict=True):
            # The cells' weight drop (DropConnect) applies; their Keras input dropout does not:
            # the stream LM's own dropout between layers (per step or locked) replaces it.
            masks = cell.sequence_masks(batch, x.shape[1], x.device, x.dtype)
            masks["input_dropout_mask"] = None
            x, final = dispatch.run(
                cell.spec, cell.weights, x, s0, backend=self.config.backend, mask=mask, **masks
            )  # (B, T, H)
            finals.extend(final)
            x = self._dropout(x)  # between layers, and on the last layer's output
        return x, tuple(finals)

    def forward(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor | None = None,
        state: State | None = None,
        *,
        mask: torch.Tensor | None = None,
        lengths: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, State]:
        """Predict the next token at every position.

        Args:
            inputs: ``(B, T)`` ids.
            targets: ``(B, T)`` next ids, or ``None``. Targets equal to ``-100`` (and, with
                ``mask_zero``, 0) are not counted.
            state: the state after the previous window (``None``: zeros).
            mask: ``(B, T)`` bool of real steps (default ``inputs != 0`` with ``mask_zero``).
            lengths: ``(B,)`` valid lengths (right padding), instead of ``mask``.

        Returns:
            ``(logits (B, T, V), loss, new_state)``: ``loss`` is the mean NLL over the counted
            targets (``None`` without targets). With an adaptive softmax, ``logits`` are
            log-probabilities, and ``None`` when ``targets`` are given (not computed).
        """
        if lengths is not None:
            if mask is not None:
                raise ValueError("give mask or lengths, not both")
            mask = _length_mask(lengths.to(inputs.device), inputs.shape[1])
        hidden, new_state = self.run_layers(inputs, state, mask=mask)  # (B, T, H)
        if targets is None:
            return self.output_logits(hidden), None, new_state
        if targets.shape != inputs.shape:
            raise ValueError(
                f"targets must have the shape of inputs {tuple(inputs.shape)}; "
                f"received {tuple(targets.shape)}"
            )
        valid = self.target_mask(targets)
        if self.adaptive_softmax is not None:
            h, t = hidden[valid], targets[valid]
            if t.numel() == 0:
                return None, hidden.sum() * 0.0, new_state
            return None, self.adaptive_softmax(h, t).loss, new_state
        logits = self._decode(hidden)  # (B, T, V)
        t = targets.masked_fill(~valid, IGNORE_INDEX)
        total = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), t.reshape(-1), reduction="sum"
        )
        return logits, total / valid.sum().clamp(min=1), new_state

    def target_mask(self, targets: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` bool: the targets that count (not ``-100``; not 0 with ``mask_zero``)."""
        valid = targets != IGNORE_INDEX
        if self.config.mask_zero:
            valid &= targets != 0
        return valid

    def count_targets(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Number of counted targets in a batch: the weight of its mean loss (for ``Trainer``)."""
        return self.target_mask(targets).sum()

    @torch.no_grad()
    def evaluate_stream(
        self, ids: torch.Tensor | Sequence[int], batch_size: int = 1, num_steps: int = 200
    ) -> dict[str, float]:
        """Exact perplexity of a token stream: every token but the first predicted once.

        The stream is cut into ``batch_size`` rows that overlap by one token
        (:func:`rnnkit.data.batch_producer` with ``cover_all=True``) and read in windows of
        ``num_steps`` with the state carried; the summed NLL is divided by the number of
        predicted tokens. With ``batch_size=1`` each token has its whole left context, and the
        result does not depend on ``num_steps``.

        Returns:
            ``{"loss": mean NLL, "perplexity", "tokens": predicted tokens, "batch_size",
            "num_steps"}``.

        >>> m = LanguageModel(vocab_size=7, num_lstm_units=4, num_lstm_layers=1)
        >>> a = m.evaluate_stream(torch.arange(1, 7).repeat(5), batch_size=1, num_steps=4)
        >>> b = m.evaluate_stream(torch.arange(1, 7).repeat(5), batch_size=1, num_steps=7)
        >>> a["tokens"], abs(a["perplexity"] - b["perplexity"]) < 1e-4
        (29, True)
        """
        from rnnkit.data.batching import batch_producer

        batches = batch_producer(ids, batch_size, num_steps, cover_all=True)
        device = self.embedding.embeddings.device
        was = self.training
        self.eval()
        total = torch.zeros((), dtype=torch.float64, device=device)
        count = torch.zeros((), dtype=torch.int64, device=device)
        state = None
        try:
            for x, y in batches:
                x, y = x.to(device), y.to(device)
                _, loss, state = self(x, y, state=state)
                n = self.count_targets(x, y)
                total += loss.double() * n
                count += n
        finally:
            self.train(was)
        count = int(count)
        if count == 0:
            raise ValueError("evaluate_stream: the stream has no token to predict")
        mean = float(total) / count
        return {
            "loss": mean,
            "perplexity": math.exp(mean) if mean < 700 else math.inf,
            "tokens": count,
            "batch_size": batch_size,
            "num_steps": num_steps,
        }

    # ------------------------------------------------------------------ generation

    def _stepper(self):
        """A one-token step ``(token (B,), state) -> (logits (B, V), state)`` for generation.

        Cells that the vendor kernel computes exactly (default activations) step with the fused
        ``torch.lstm_cell`` / ``torch.gru_cell`` on the torch-layout views of their weights
        (:func:`rnnkit.kernels.vendor.torch_params`); others use their own ``forward``. The output
        weights are laid out ``(H, V)`` once, so each token reads them contiguously.
        """
        from rnnkit.kernels import vendor

        steps = []
        for cell in self.cells.cells:
            spec = cell.spec
            if spec.cell in ("lstm", "gru") and vendor.supports(spec):
                w_ih, w_hh, *bias = vendor.torch_params(spec, cell.weights)
                b_ih, b_hh = (bias[0], bias[1] if spec.cell == "gru" else None) if bias else (
                    None, None,
                )  # fmt: skip
                if spec.cell == "lstm":
                    steps.append(lambda x, s, a=(w_ih, w_hh, b_ih, b_hh): torch.lstm_cell(x, s, *a))
                else:
                    steps.append(
                        lambda x, s, a=(w_ih, w_hh, b_ih, b_hh): (torch.gru_cell(x, s[0], *a),)
                    )
            else:
                steps.append(lambda x, s, c=cell: c(x, s)[1])
        if self.decoder is not None:
            wt = self.decoder.weight.t().contiguous()  # (H, V)
            b = self.decoder.bias

            def head(h: torch.Tensor) -> torch.Tensor:
                return torch.addmm(b, h, wt) if b is not None else h @ wt

        else:
            head = self.output_logits
        table = self.embedding.embeddings
        split = self.cells.split_state

        def step(token: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
            x = table[token]  # (B, E)
            new: list[torch.Tensor] = []
            for fn, s in zip(steps, split(state), strict=True):
                ns = fn(x, s)
                x = ns[0]
                new.extend(ns)
            return head(x), tuple(new)

        return step

    @torch.no_grad()
    def generate(
        self,
        prompt: torch.Tensor | Sequence[int],
        max_new_tokens: int = 50,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        eos_id: int | None = None,
        state: State | None = None,
    ) -> torch.Tensor:
        """Sample continuations of ``prompt``, one token at a time, carrying the state.

        The prompt is read once; each new token costs one step of every layer (the prefix is
        never re-run). Runs in eval mode under ``torch.no_grad()``; padding id 0 is never
        sampled when ``mask_zero``.

        Args:
            prompt: ``(P,)`` or ``(B, P)`` ids, ``P >= 1``.
            max_new_tokens: the most tokens to generate per row.
            temperature: divides the logits; 0 means greedy (argmax).
            top_k: sample only among the ``k`` most likely tokens.
            top_p: nucleus sampling: the smallest set of most likely tokens whose probability
                reaches ``top_p`` (in ``(0, 1]``).
            seed: seed of a private generator (reproducible samples); or pass ``generator``.
            generator: a ``torch.Generator`` to draw from.
            eos_id: stop a row once it produces this id (it is included); generation ends when
                every row has stopped. Rows that stopped are padded with 0.
            state: the state to start from (default zeros).

        Returns:
            ``(B, N)`` int64 new tokens (``(N,)`` for a 1-D prompt), ``N <= max_new_tokens``.

        >>> m = LanguageModel(vocab_size=20, num_lstm_units=8, num_lstm_layers=1)
        >>> a = m.generate([3, 4], 5, seed=1)
        >>> torch.equal(a, m.generate([3, 4], 5, seed=1)), tuple(a.shape)
        (True, (5,))
        """
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0; received temperature={temperature}")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                                  or top_k < 1):  # fmt: skip
            raise ValueError(f"top_k must be a positive int or None; received top_k={top_k!r}")
        if top_p is not None and not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1]; received top_p={top_p!r}")
        if (
            isinstance(max_new_tokens, bool)
            or not isinstance(max_new_tokens, int)
            or (max_new_tokens < 0)
        ):
            raise ValueError(f"max_new_tokens must be an int >= 0; received {max_new_tokens!r}")
        device = self.embedding.embeddings.device
        prompt_t = torch.as_tensor(prompt, dtype=torch.long, device=device)
        squeeze = prompt_t.dim() == 1
        if squeeze:
            prompt_t = prompt_t[None]
        if prompt_t.dim() != 2 or prompt_t.shape[1] == 0:
            raise ValueError(
                f"prompt must be (P,) or (B, P) ids with P >= 1; received {tuple(prompt_t.shape)}"
            )
        if generator is None and seed is not None:
            generator = torch.Generator(device=device)
            generator.manual_seed(int(seed))
        was = self.training
        self.eval()
        try:
            batch = prompt_t.shape[0]
            if prompt_t.shape[1] > 1:
                _, _, state = self(prompt_t[:, :-1], state=state)
            elif state is None:
                state = self.initial_state(batch)
            token = prompt_t[:, -1]
            step = self._stepper()
            out: list[torch.Tensor] = []
            done = torch.zeros(batch, dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                logits, state = step(token, state)  # (B, V)
                token = self.sample_from_logits(
                    logits, temperature=temperature, top_k=top_k, top_p=top_p,
                    generator=generator, inplace=True,
                )  # fmt: skip
                token = token.masked_fill(done, 0)
                out.append(token)
                if eos_id is not None:
                    done |= token == eos_id
                    if bool(done.all()):
                        break
            result = torch.stack(out, dim=1) if out else prompt_t.new_zeros(batch, 0)
        finally:
            self.train(was)
        return result[0] if squeeze else result

    def sample_from_logits(
        self,
        logits: torch.Tensor,
        *,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float | None = None,
        generator: torch.Generator | None = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        """Draw one id per row from ``(B, V)`` logits with temperature / top-k / top-p.

        Top-k keeps the ``k`` largest logits, then the temperature applies, then top-p keeps
        the smallest set of best candidates whose probability reaches ``top_p``. With
        ``mask_zero`` the padding id 0 is never drawn (``inplace=True`` writes that into
        ``logits`` instead of a copy).

        >>> m = LanguageModel(vocab_size=5, num_lstm_units=2, num_lstm_layers=1)
        >>> logits = torch.tensor([[0.0, 1.0, 3.0, 2.0, 0.5]])
        >>> m.sample_from_logits(logits, temperature=0.0)
        tensor([2])
        >>> bool(m.sample_from_logits(logits, top_k=1) == 2)
        True
        """
        logits = logits.float()
        if self.config.mask_zero:
            logits = logits if inplace else logits.clone()
            logits[:, 0] = -math.inf
        if temperature == 0:
            return logits.argmax(dim=-1)
        ids = None  # candidate ids when the support is cut down, best first
        if top_k is not None and top_k < logits.shape[-1]:
            logits, ids = torch.topk(logits, top_k, dim=-1)  # (B, k)
        logits = logits / temperature
        if top_p is not None and top_p < 1.0:
            if ids is None:
                logits, ids = torch.sort(logits, dim=-1, descending=True)
            probs = torch.softmax(logits, dim=-1)
            before = probs.cumsum(dim=-1) - probs  # mass of the candidates ranked above
            logits = logits.masked_fill(before >= top_p, -math.inf)
        # Inverse-CDF sampling: one uniform draw per row (torch.multinomial draws V exponentials).
        cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V) or (B, k)
        u = torch.rand(cdf.shape[0], 1, generator=generator, device=cdf.device) * cdf[:, -1:]
        pick = torch.searchsorted(cdf, u, right=True).clamp(max=cdf.shape[-1] - 1)  # (B, 1)
        return (pick if ids is None else ids.gather(1, pick))[:, 0]

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"vocab_size={c.vocab_size}, units={c.num_lstm_units}, layers={c.num_lstm_layers}, "
            f"cell={c.cell!r}, keep_prob={c.dropout_keep_prob}, tie_weights={c.tie_weights}"
        )


def _length_mask(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    return torch.arange(steps, device=lengths.device)[None, :] < lengths[:, None]
