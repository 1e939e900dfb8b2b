"""Vocabulary and Keras-semantics Tokenizer."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnkit.data.vocabulary import Tokenizer, Vocabulary, text_to_word_sequence


def test_vocabulary_order_count_then_first_occurrence():
    vocab = Vocabulary.from_iterator([["b", "a", "c"], ["a", "b", "d"]], oov_token="<unk>")
    # a and b both twice: b was seen first; c and d once: c first.
    assert vocab.tokens == ["<pad>", "<unk>", "b", "a", "c", "d"]
    assert vocab.padding_id == 0 and vocab.oov_id == 1
    assert len(vocab) == 6 and vocab.num_tokens == 5


def test_vocabulary_oov_already_in_text_maps_to_itself():
    counts = {"the": 5, "<unk>": 3, "cat": 1}
    vocab = Vocabulary.from_counts(counts, oov_token="<unk>")
    assert vocab.tokens == ["<pad>", "<unk>", "the", "cat"]
    assert vocab.encode(["<unk>", "dog", "the"]) == [1, 1, 2]


def test_vocabulary_max_size_counts_every_id():
    counts = {"a": 3, "b": 2, "c": 1}
    vocab = Vocabulary.from_counts(counts, max_size=4, oov_token="<unk>")
    assert vocab.tokens == ["<pad>", "<unk>", "a", "b"]
    assert Vocabulary.from_counts(counts, min_freq=2, padding_token=None).tokens == ["a", "b"]


def test_vocabulary_without_oov_raises_on_unknown():
    vocab = Vocabulary(["a"])
    with pytest.raises(KeyError, match="'zzz' is not in the vocabulary"):
        vocab.encode(["a", "zzz"])
    with pytest.raises(KeyError, match="no oov_token"):
        vocab.lookup("zzz")


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="duplicate token"):
        Vocabulary(["a", "a"])
    with pytest.raises(ValueError, match="must differ"):
        Vocabulary(padding_token="x", oov_token="x")
    with pytest.raises(ValueError, match="max_size must be"):
        Vocabulary.from_counts({"a": 1}, max_size=0)
    with pytest.raises(IndexError, match="out of range"):
        Vocabulary(["a"]).lookup_token(5)
    with pytest.raises(ValueError, match="not an rnnkit vocabulary"):
        Vocabulary.from_dict({"format": "other"})


def test_vocabulary_save_load(tmp_path):
    vocab = Vocabulary.from_iterator([["x", "y", "y", "é"]], oov_token="<unk>")
    path = tmp_path / "v" / "vocab.json"
    vocab.save(path)
    again = Vocabulary.load(path)
    assert again == vocab
    assert again.counts == {"x": 1, "y": 2, "é": 1}
    assert list(tmp_path.joinpath("v").iterdir()) == [path]  # no temp file left behind


def test_text_to_word_sequence_keras_defaults():
    assert text_to_word_sequence("A-b\tc\n(d)") == ["a", "b", "c", "d"]
    assert text_to_word_sequence("A,B", filters="", lower=False, split=",") == ["A", "B"]


def test_tokenizer_keras_semantics_without_oov():
    tok = Tokenizer()
    tok.fit_on_texts(["The cat sat on the mat.", "The dog ate my homework!"])
    assert tok.word_index == {
        "the": 1,
        "cat": 2,
        "sat": 3,
        "on": 4,
        "mat": 5,
        "dog": 6,
        "ate": 7,
        "my": 8,
        "homework": 9,
    }
    assert tok.index_word[1] == "the"
    assert tok.word_counts["the"] == 3
    assert tok.word_docs["the"] == 2 and tok.document_count == 2
    # Unknown words are dropped without an oov_token (Keras).
    assert tok.texts_to_sequences(["the zebra sat"]) == [[1, 3]]


def test_tokenizer_num_words_keeps_most_frequent_minus_one():
    tok = Tokenizer(num_words=3)
    tok.fit_on_texts(["a a a b b c"])
    assert tok.word_index == {"a": 1, "b": 2, "c": 3}  # the index keeps every word
    assert tok.texts_to_sequences(["a b c"]) == [[1, 2]]  # ids < num_words only
    tok_oov = Tokenizer(num_words=3, oov_token="<unk>")
    tok_oov.fit_on_texts(["a a a b b c"])
    assert tok_oov.word_index == {"<unk>": 1, "a": 2, "b": 3, "c": 4}
    assert tok_oov.texts_to_sequences(["a b c z"]) == [[2, 1, 1, 1]]
    assert tok_oov.sequences_to_texts([[2, 3, 4, 0]]) == ["a <unk> <unk>"]


def test_tokenizer_char_level_and_pretokenized():
    tok = Tokenizer(char_level=True)
    tok.fit_on_texts(["abba!"])
    assert tok.word_index == {"a": 1, "b": 2, "!": 3}  # tie: "a" first; no filters
    assert tok.sequences_to_texts(tok.texts_to_sequences(["ab!"])) == ["ab!"]
    words = Tokenizer()
    words.fit_on_texts([["New", "York"], ["york"]])
    assert words.word_index == {"york": 1, "new": 2}


def test_tokenizer_json_round_trip(tmp_path):
    tok = Tokenizer(num_words=10, oov_token="<unk>", filters="")
    tok.fit_on_texts(["hello world", "hello there, world!"])
    again = Tokenizer.from_json(tok.to_json())
    assert again.word_index == tok.word_index
    assert again.word_counts == tok.word_counts
    assert again.get_config() == tok.get_config()
    assert again.texts_to_sequences(["hello you"]) == tok.texts_to_sequences(["hello you"])
    tok.save(tmp_path / "tok.json")
    assert Tokenizer.load(tmp_path / "tok.json").word_index == tok.word_index
    assert json.loads(tok.to_json())["format"] == "rnnkit.tokenizer/1"


def test_tokenizer_validation():
    with pytest.raises(ValueError, match="num_words must be a positive int"):
        Tokenizer(num_words=0)
    with pytest.raises(ValueError, match="split must be a non-empty string"):
        Tokenizer(split="")


_words = st.lists(st.sampled_from(["a", "b", "c", "dd", "e", "ff"]), min_size=0, max_size=12)


@settings(max_examples=60, deadline=None)
@given(st.lists(_words, min_size=1, max_size=6))
def test_tokenizer_round_trip_property(docs):
    texts = [" ".join(d) for d in docs]
    tok = Tokenizer(oov_token="<unk>")
    tok.fit_on_texts(texts)
    assert tok.sequences_to_texts(tok.texts_to_sequences(texts)) == texts
    ids = sorted(tok.word_index.values())
    assert ids == list(range(1, len(ids) + 1))  # dense ids from 1; 0 is padding
    counts = [
        tok.word_counts[w]
        for w, i in sorted(tok.word_index.items(), key=lambda x: x[1])
        if w != "<unk>"
    ]
    assert counts == sorted(counts, reverse=True)
