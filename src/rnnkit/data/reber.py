"""The Reber grammar and the embedded Reber grammar (seed 002): generators, validator, entropy.

A grammar is data: a sequence of states, each a sequence of ``(label, next_state)`` transitions,
where ``label`` is one symbol or a nested grammar (its whole string is emitted) and
``next_state`` is an index or ``None`` (the end). Generation starts in state 0 and picks one of the
current state's transitions uniformly at random. The Reber grammar, :data:`REBER_GRAMMAR`::

    0 -B-> 1
    1 -T-> 2 | -P-> 3
    2 -X-> 5 | -S-> 2
    3 -T-> 3 | -V-> 4
    4 -V-> 6 | -P-> 5
    5 -X-> 3 | -S-> 6
    6 -E-> end

Valid strings include ``BTXSE``, ``BPVVE``, ``BTSSXXTVVE``. The embedded grammar
(:data:`EMBEDDED_REBER_GRAMMAR`) is ``B``, then ``T`` or ``P``, then a whole Reber string, then
the *same* ``T`` or ``P`` again, then ``E``: ``BTBTXSETE``, ``BPBPVVEPE``. Remembering that second
symbol across the inner string is the long-range dependency that makes it a test for LSTMs.
(The seed's embedded table has two slips: its ``T`` branch ends with ``P``, and its ``P`` branch
goes from state 5 back to state 3, so it never ends. This module uses the standard grammar.)

All randomness comes from an explicit ``numpy.random.Generator`` (or an int seed), never from
global state.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Union

import numpy as np

__all__ = [
    "CHARS",
    "EMBEDDED_REBER_GRAMMAR",
    "REBER_GRAMMAR",
    "GrammarEntropy",
    "default_reber_grammar",
    "embedded_reber_grammar",
    "generate_corrupted_string",
    "generate_data",
    "generate_labelled_strings",
    "generate_valid_string",
    "grammar_entropy",
    "is_valid",
    "log_prob",
    "optimal_perplexity",
    "str2ids",
    "str2onehot",
]

Grammar = Sequence[Sequence[tuple[Union[str, "Grammar"], int | None]]]

#: The symbols of both grammars, in one-hot order (the seed's ``chars``).
CHARS = "BTSXPVE"

REBER_GRAMMAR: Grammar = (
    (("B", 1),),  # 0 -B-> 1
    (("T", 2), ("P", 3)),  # 1 -T-> 2 | -P-> 3
    (("X", 5), ("S", 2)),  # 2 -X-> 5 | -S-> 2
    (("T", 3), ("V", 4)),  # 3 -T-> 3 | -V-> 4
    (("V", 6), ("P", 5)),  # 4 -V-> 6 | -P-> 5
    (("X", 3), ("S", 6)),  # 5 -X-> 3 | -S-> 6
    (("E", None),),  # 6 -E-> end
)

EMBEDDED_REBER_GRAMMAR: Grammar = (
    (("B", 1),),  # 0 -B-> 1
    (("T", 2), ("P", 3)),  # 1 -T-> 2 | -P-> 3
    ((REBER_GRAMMAR, 4),),  # 2 -REBER-> 4   (T branch)
    ((REBER_GRAMMAR, 5),),  # 3 -REBER-> 5   (P branch)
    (("T", 6),),  # 4 -T-> 6: the same symbol as the second one
    (("P", 6),),  # 5 -P-> 6
    (("E", None),),  # 6 -E-> end
)

# The seed's names.
default_reber_grammar = REBER_GRAMMAR
embedded_reber_grammar = EMBEDDED_REBER_GRAMMAR


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, int | np.integer) and not isinstance(rng, bool):
        return np.random.default_rng(int(rng))
    raise TypeError(
        f"rng must be a numpy.random.Generator or an int seed; received {type(rng).__name__}"
    )


def _check_grammar(grammar: Grammar) -> None:
    if len(grammar) == 0:
        raise ValueError("grammar must have at least one state; received an empty grammar")
    for s, options in enumerate(grammar):
        if len(options) == 0:
            raise ValueError(f"grammar state {s} has no transitions")
        for label, nxt in options:
            if nxt is not None and not (isinstance(nxt, int) and 0 <= nxt < len(grammar)):
                raise ValueError(
                    f"grammar state {s}: next state must be None or in [0, {len(grammar)}); "
                    f"received {nxt!r}"
                )
            if isinstance(label, str):
                if len(label) != 1:
                    raise ValueError(
                        f"grammar state {s}: a label is one symbol or a grammar; received {label!r}"
                    )
            else:
                _check_grammar(label)


def generate_valid_string(grammar: Grammar, rng: np.random.Generator | int) -> str:
    """Draw one string of ``grammar``, choosing each transition uniformly.

    Args:
        grammar: :data:`REBER_GRAMMAR`, :data:`EMBEDDED_REBER_GRAMMAR` or a grammar of that form.
        rng: a ``numpy.random.Generator`` or an int seed.

    Returns:
        The string, e.g. ``"BTSXSE"``.

    >>> rng = np.random.default_rng(0)
    >>> s = generate_valid_string(EMBEDDED_REBER_GRAMMAR, rng)
    >>> is_valid(s, EMBEDDED_REBER_GRAMMAR), s[1] == s[-2]
    (True, True)
    """
    _check_grammar(grammar)
    return _generate(grammar, _rng(rng))


def _generate(grammar: Grammar, rng: np.random.Generator) -> str:
    out: list[str] = []
    state: int | None = 0
    while state is not None:
        options = grammar[state]
        label, state = options[int(rng.integers(len(options)))]
        out.append(label if isinstance(label, str) else _generate(label, rng))
    return "".join(out)


def _alphabet(grammar: Grammar) -> str:
    chars: set[str] = set()
    for options in grammar:
        for label, _ in options:
            chars.update(label if isinstance(label, str) else _alphabet(label))
    return "".join(sorted(chars))


def generate_corrupted_string(
    grammar: Grammar, rng: np.random.Generator | int, chars: str = CHARS
) -> str:
    """A string of ``grammar`` with one symbol substituted so that it is no longer valid.

    A valid string is drawn, then a (position, replacement) pair is drawn uniformly among those
    that make the string invalid, checked with :func:`is_valid`; if no substitution breaks the
    drawn string, another string is drawn. The seed substituted blindly, which is only safe for
    grammars where every substitution breaks every string. That holds for both Reber grammars
    (their automata are deterministic, and the two states that one state's different
    transitions lead to never accept a common suffix; the tests check it exhaustively),
    but not in general: in a grammar with ``0 -A-> 1 | -C-> 1``, ``AE -> CE`` stays valid.

    Args:
        grammar: the grammar.
        rng: a ``numpy.random.Generator`` or an int seed.
        chars: the replacement alphabet (the seed's ``'BTSXPVE'``).

    Returns:
        An invalid string of the same length as a valid one.

    >>> rng = np.random.default_rng(0)
    >>> s = generate_corrupted_string(REBER_GRAMMAR, rng)
    >>> is_valid(s, REBER_GRAMMAR)
    False
    """
    _check_grammar(grammar)
    rng = _rng(rng)
    if len(set(chars)) < 2:
        raise ValueError(f"chars must hold at least 2 distinct symbols; received {chars!r}")
    alphabet = sorted(set(chars))
    for _ in range(1000):
        good = _generate(grammar, rng)
        pairs = [(i, c) for i in range(len(good)) for c in alphabet if c != good[i]]
        for k in rng.permutation(len(pairs)):
            i, c = pairs[k]
            bad = good[:i] + c + good[i + 1 :]
            if not is_valid(bad, grammar):
                return bad
    raise ValueError("no single substitution over chars breaks the strings of this grammar")


def is_valid(string: str, grammar: Grammar) -> bool:
    """Whether ``grammar`` can generate ``string``.

    >>> [is_valid(s, REBER_GRAMMAR) for s in ["BTXSE", "BPVVE", "BTSSXXTVVE", "BTXE", "BTSXE"]]
    [True, True, True, False, False]
    >>> [is_valid(s, EMBEDDED_REBER_GRAMMAR) for s in ["BTBTXSETE", "BPBPVVEPE", "BTBPVVEPE"]]
    [True, True, False]
    """
    return _string_prob(string, grammar) > 0.0


def log_prob(string: str, grammar: Grammar) -> float:
    """Natural log of the probability that the uniform generator produces ``string``.

    Sums over derivations, so it is right for ambiguous grammars too; ``-inf`` if invalid.

    >>> round(-log_prob("BTXSE", REBER_GRAMMAR) / math.log(2), 6)  # 3 binary choices
    3.0
    """
    p = _string_prob(string, grammar)
    return math.log(p) if p > 0 else -math.inf


def _string_prob(string: str, grammar: Grammar) -> float:
    """Probability of ``string``, reading it one symbol at a time (no recursion on its length).

    A configuration is a stack of ``(grammar, state)`` frames: the top frame is about to choose
    a transition, the ones below are where nested grammars return to. The empty stack means the
    string is complete.
    """
    _check_grammar(grammar)
    grammars: dict[int, Grammar] = {}

    def settle(frames: tuple) -> tuple:
        while frames and frames[-1][1] is None:  # a finished grammar returns to its caller
            frames = frames[:-1]
        return frames

    def emit(frames: tuple, prob: float, out: list) -> None:
        """Every (symbol, frames after it, probability) reachable by one emitted symbol."""
        gid, s = frames[-1]
        options = grammars[gid][s]
        for label, nxt in options:
            p = prob / len(options)
            if isinstance(label, str):
                out.append((label, settle(frames[:-1] + ((gid, nxt),)), p))
            else:
                grammars[id(label)] = label
                emit(frames[:-1] + ((gid, nxt), (id(label), 0)), p, out)

    grammars[id(grammar)] = grammar
    configs: dict[tuple, float] = {((id(grammar), 0),): 1.0}
    for symbol in string:
        nxt: dict[tuple, float] = {}
        for frames, prob in configs.items():
            if not frames:
                continue  # already complete: no more symbols
            moves: list = []
            emit(frames, prob, moves)
            for label, after, p in moves:
                if label == symbol:
                    nxt[after] = nxt.get(after, 0.0) + p
        configs = nxt
        if not configs:
            return 0.0
    return configs.get((), 0.0)


# --------------------------------------------------------------------------------------------
# Encodings and data sets


def str2onehot(string: str, num_steps: int | None = None, chars: str = CHARS) -> np.ndarray:
    """One-hot encode ``string`` over ``chars`` (the seed's ``str2onehot``).

    Args:
        string: symbols from ``chars``.
        num_steps: rows of the result; a longer string is truncated, a shorter one padded with
            all-zero rows. Default ``len(string)`` (the seed used 12, which cut long strings).
        chars: the alphabet, in column order.

    Returns:
        ``(num_steps, len(chars))`` float32 array.

    >>> str2onehot("BTE", num_steps=4)
    array([[1., 0., 0., 0., 0., 0., 0.],
           [0., 1., 0., 0., 0., 0., 0.],
           [0., 0., 0., 0., 0., 0., 1.],
           [0., 0., 0., 0., 0., 0., 0.]], dtype=float32)
    """
    ids = str2ids(string, chars=chars, offset=0)
    steps = len(string) if num_steps is None else num_steps
    out = np.zeros((steps, len(chars)), dtype=np.float32)
    n = min(len(ids), steps)
    out[np.arange(n), ids[:n]] = 1.0
    return out


def str2ids(string: str, *, chars: str = CHARS, offset: int = 1) -> np.ndarray:
    """Symbol ids of ``string``: ``chars.index(c) + offset`` (default 1, keeping 0 for padding).

    >>> str2ids("BTXSE")
    array([1, 2, 4, 3, 7])
    """
    index = {c: i + offset for i, c in enumerate(chars)}
    try:
        return np.array([index[c] for c in string], dtype=np.int64)
    except KeyError as err:
        raise ValueError(f"symbol {err.args[0]!r} is not in chars={chars!r}") from None


def generate_labelled_strings(
    n: int, grammar: Grammar = EMBEDDED_REBER_GRAMMAR, *, seed: int = 0
) -> tuple[list[str], np.ndarray]:
    """``n`` shuffled strings, ``n - n // 2`` valid (label 1) and ``n // 2`` corrupted (label 0).

    >>> strings, labels = generate_labelled_strings(4, seed=1)
    >>> [is_valid(s, EMBEDDED_REBER_GRAMMAR) for s in strings] == labels.astype(bool).tolist()
    True
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an integer >= 0; received n={n!r}")
    rng = np.random.default_rng(seed)
    n_bad = n // 2
    good = [generate_valid_string(grammar, rng) for _ in range(n - n_bad)]
    bad = [generate_corrupted_string(grammar, rng) for _ in range(n_bad)]
    strings = good + bad
    labels = np.concatenate([np.ones(len(good), np.int64), np.zeros(n_bad, np.int64)])
    perm = rng.permutation(n)
    return [strings[i] for i in perm], labels[perm]


def generate_data(
    data_size: int = 10000,
    grammar: Grammar = EMBEDDED_REBER_GRAMMAR,
    num_steps: int | None = None,
    *,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The seed's labelled one-hot data set: ``(X, lengths, y)``, balanced and shuffled.

    Args:
        data_size: number of strings ``N`` (``N - N // 2`` valid, ``N // 2`` corrupted).
        grammar: the grammar.
        num_steps: ``T``; default the longest string (no truncation).
        seed: seed of the generator.

    Returns:
        ``X (N, T, 7)`` float32 one-hot (zero rows after each string), ``lengths (N,)`` int64,
        ``y (N, 1)`` float32 (1 = valid).

    >>> X, lengths, y = generate_data(6, seed=0)
    >>> X.shape[0], X.shape[2], lengths.shape, y.shape, int(y.sum())
    (6, 7, (6,), (6, 1), 3)
    """
    strings, labels = generate_labelled_strings(data_size, grammar, seed=seed)
    lengths = np.array([len(s) for s in strings], dtype=np.int64)
    steps = int(lengths.max(initial=0)) if num_steps is None else num_steps
    X = np.zeros((len(strings), steps, len(CHARS)), dtype=np.float32)
    for i, s in enumerate(strings):
        X[i] = str2onehot(s, steps)
    return X, lengths, labels.astype(np.float32).reshape(-1, 1)


# --------------------------------------------------------------------------------------------
# Entropy


@dataclass(frozen=True)
class GrammarEntropy:
    """The entropy of a grammar's string distribution under uniform transition choices.

    ``bits_per_symbol = string_entropy_bits / predicted_symbols`` is the lowest next-symbol
    cross-entropy a language model can reach, averaged over predicted symbols as corpus-level
    perplexity averages (total loss / total predicted symbols, in expectation).
    """

    expected_length: float  # E|S|: symbols per string, counting the first 'B' and the last 'E'
    string_entropy_bits: float  # H(S) in bits = E[-log2 P(S)]
    predicted_symbols: float  # E|S| - 1 (every symbol after the first), + 1 with an end token
    bits_per_symbol: float  # H(S) / predicted_symbols
    nats_per_symbol: float  # bits_per_symbol * ln 2: the optimum of F.cross_entropy
    perplexity: float  # 2 ** bits_per_symbol


def _expectations(grammar: Grammar) -> tuple[float, float]:
    """``(E[length], E[entropy in bits])`` of one string, by expected visit counts."""
    return _expectations_cached(_freeze(grammar))


def _freeze(grammar: Grammar):
    return tuple(
        tuple((label if isinstance(label, str) else _freeze(label), nxt) for label, nxt in opts)
        for opts in grammar
    )


@cache
def _expectations_cached(grammar) -> tuple[float, float]:
    # Expected visits v solve v = e_0 + P^T v, P[s, t] = share of s's transitions going to t.
    n = len(grammar)
    P = np.zeros((n, n))
    length = np.zeros(n)  # expected symbols emitted by one transition out of s
    entropy = np.zeros(n)  # expected bits of that transition (choice + nested string)
    for s, opts in enumerate(grammar):
        k = len(opts)
        entropy[s] = math.log2(k)
        for label, nxt in opts:
            if isinstance(label, str):
                sub_len, sub_bits = len(label), 0.0
            else:
                sub_len, sub_bits = _expectations_cached(label)
            length[s] += sub_len / k
            entropy[s] += sub_bits / k
            if nxt is not None:
                P[s, nxt] += 1.0 / k
    e0 = np.zeros(n)
    e0[0] = 1.0
    try:
        visits = np.linalg.solve(np.eye(n) - P.T, e0)
    except np.linalg.LinAlgError:
        raise ValueError("grammar never terminates from some state") from None
    if not np.all(np.isfinite(visits)) or np.any(visits < -1e-9):
        raise ValueError("grammar never terminates from some state")
    return float(visits @ length), float(visits @ entropy)


def grammar_entropy(grammar: Grammar, *, end_token: bool = False) -> GrammarEntropy:
    """Exact entropy of the grammar's strings and the optimal per-symbol cross-entropy.

    The generator chooses each transition uniformly, so a string's probability is the product
    of ``1/k`` over its choices and ``H(S) = E[sum of log2 k]``. Both that and ``E|S|`` are sums
    over expected visit counts of the states, which solve a linear system (the state chain is a
    transient Markov chain; loops give geometric series). Nested grammars contribute their own
    expected length and entropy.

    What is predicted: every symbol after the first (the first, ``B``, is the model's first
    input), including the final ``E``: ``E|S| - 1`` symbols per string. With ``end_token=True``
    an end-of-string token after ``E`` is also predicted (with certainty, so it adds a symbol
    but no entropy). A model that knows the grammar and remembers the whole prefix predicts the
    uniform distribution over the current state's transitions, reaching exactly
    ``H(S) / predicted_symbols`` per symbol; deterministic symbols (``B`` after the embedded
    ``T``/``P``, the embedded grammar's repeated ``T``/``P``, every ``E``) cost 0.

    This assumes what holds for both Reber grammars: the first symbol is certain, every string
    has one derivation, and no valid string is a prefix of another.

    Args:
        grammar: the grammar.
        end_token: also predict an end token after the last symbol.

    Returns:
        :class:`GrammarEntropy`.

    >>> e = grammar_entropy(REBER_GRAMMAR)
    >>> round(e.expected_length, 9), round(e.string_entropy_bits, 9), round(e.perplexity, 6)
    (8.0, 6.0, 1.811447)
    >>> e = grammar_entropy(EMBEDDED_REBER_GRAMMAR)
    >>> round(e.expected_length, 9), round(e.string_entropy_bits, 9), round(e.perplexity, 6)
    (12.0, 7.0, 1.554406)
    """
    _check_grammar(grammar)
    length, bits = _expectations(grammar)
    predicted = length - 1 + (1 if end_token else 0)
    per = bits / predicted
    return GrammarEntropy(
        expected_length=length,
        string_entropy_bits=bits,
        predicted_symbols=predicted,
        bits_per_symbol=per,
        nats_per_symbol=per * math.log(2),
        perplexity=2.0**per,
    )


def optimal_perplexity(grammar: Grammar, *, end_token: bool = False) -> float:
    """The lowest next-symbol perplexity an LM can reach on ``grammar``'s strings.

    ``2 ** (H(S) / predicted symbols)``; see :func:`grammar_entropy` for what is counted.
    Reber: ``2 ** (6/7) = 1.8114`` (``2 ** (6/8) = 1.6818`` with an end token). Embedded Reber:
    ``2 ** (7/11) = 1.5544`` (``2 ** (7/12) = 1.4983``).

    >>> round(optimal_perplexity(REBER_GRAMMAR), 4), round(2 ** (6 / 7), 4)
    (1.8114, 1.8114)
    >>> round(optimal_perplexity(EMBEDDED_REBER_GRAMMAR, end_token=True), 4)
    1.4983
    """
    return grammar_entropy(grammar, end_token=end_token).perplexity
