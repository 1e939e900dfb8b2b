"""TextVectorization: standardisation, vocabulary, padding, persistence."""

from __future__ import annotations

import pytest
import torch

from rnnkit.data.classification import LabelMap
from rnnkit.data.vectorization import TextVectorization, standardize_text
from rnnkit.data.vocabulary import Vocabulary

REVIEWS = [
    "This movie was GREAT!<br /><br />I loved it.",
    "Terrible movie... I want my 2 hours back.<br />",
    "great acting, great story",
]


def test_standardize_strips_html_before_punctuation():
    assert "br" not in standardize_text(REVIEWS[0]).split()
    # Keras' own default leaves the "br" behind; we keep that mode available.
    assert "br" in standardize_text(REVIEWS[0], "lower_and_strip_punctuation").split()
    assert standardize_text("It's OK", "lower") == "it's ok"
    assert standardize_text("It's OK", "strip_punctuation") == "Its OK"
    with pytest.raises(ValueError, match="standardize must be one of"):
        standardize_text("x", "upper")


def test_adapt_vocabulary_and_call():
    vec = TextVectorization(max_tokens=8, output_sequence_length=5)
    vec.adapt(REVIEWS)
    vocab = vec.get_vocabulary()
    assert vocab[:4] == ["", "[UNK]", "great", "movie"]
    assert len(vocab) == vec.vocabulary_size() == 8
    out = vec(["great movie", "an unseen word great great great great great"])
    assert out.dtype == torch.int64 and out.shape == (2, 5)
    assert out[0].tolist() == [2, 3, 0, 0, 0]
    assert out[1].tolist() == [1, 1, 1, 2, 2]  # truncated at the end (post)
    single = vec("great")
    assert single.tolist() == [2, 0, 0, 0, 0]


def test_pads_to_longest_without_output_sequence_length():
    vec = TextVectorization()
    vec.adapt(REVIEWS)
    out = vec(["great", "great movie was"])
    assert out.shape == (2, 3)
    assert out[0, 1:].tolist() == [0, 0]


def test_pre_padding_and_truncation():
    vec = TextVectorization(output_sequence_length=2, padding="pre", truncating="pre")
    vec.adapt(["a b c"])
    assert vec(["a b c", "c"]).tolist() == [[3, 4], [0, 4]]


def test_same_vocabulary_class_as_tokenizer():
    vec = TextVectorization()
    vec.adapt(REVIEWS)
    assert isinstance(vec.vocabulary, Vocabulary)
    vec2 = TextVectorization(vocabulary=["great", "movie"])
    assert vec2.get_vocabulary() == ["", "[UNK]", "great", "movie"]
    assert vec2.encode("Great MOVIE, bad") == [2, 3, 1]


def test_save_load_with_labels(tmp_path):
    vec = TextVectorization(
        max_tokens=20, output_sequence_length=6, labels=LabelMap(["neg", "pos"])
    )
    vec.adapt(REVIEWS)
    vec.save(tmp_path / "vec.json")
    again = TextVectorization.load(tmp_path / "vec.json")
    assert again.get_vocabulary() == vec.get_vocabulary()
    assert again.labels == LabelMap(["neg", "pos"])
    assert torch.equal(again(REVIEWS), vec(REVIEWS))


def test_errors():
    with pytest.raises(RuntimeError, match="call adapt"):
        TextVectorization()(["x"])
    with pytest.raises(ValueError, match="max_tokens must be an int >= 3"):
        TextVectorization(max_tokens=2)
    with pytest.raises(ValueError, match="output_sequence_length must be a positive int"):
        TextVectorization(output_sequence_length=0)
    with pytest.raises(ValueError, match='padding must be "pre" or "post"'):
        TextVectorization(padding="mid")
    with pytest.raises(ValueError, match="callable standardize"):
        TextVectorization(standardize=str.lower).get_config()
    with pytest.raises(ValueError, match="padding token"):
        TextVectorization(vocabulary=Vocabulary(["a"], padding_token=None, oov_token="?"))


def test_callables():
    vec = TextVectorization(standardize=str.upper, split=lambda s: s.split(","))
    vec.adapt(["a,b", "b"])
    assert vec.get_vocabulary() == ["", "[UNK]", "B", "A"]
