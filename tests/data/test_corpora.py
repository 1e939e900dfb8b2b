"""LM corpora: formats, UTF-8 errors, streaming, and exact counts on the shared data."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from rnnkit.data.corpora import (
    InvalidUTF8Error,
    LMCorpus,
    build_lm_vocabulary,
    encode_file,
    find_split_files,
    iter_encoded,
    iter_line_tokens,
    iter_lines,
    iter_text_files,
    read_text,
)

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared acceptance data not present at {SHARED}"
)


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data, encoding="utf-8")
    return path


def test_word_level_eos_and_unk_maps_to_itself(tmp_path):
    write(tmp_path / "ptb.train.txt", " a b <unk> \n b a \n\n")
    write(tmp_path / "ptb.valid.txt", " b zz \n")
    corpus = LMCorpus.from_directory(tmp_path)
    v = corpus.vocab
    assert v.tokens == ["<pad>", "<unk>", "<eos>", "a", "b"]  # eos x3, a x2, b x2
    assert corpus.train.tolist() == [3, 4, 1, 2, 4, 3, 2, 2]
    assert corpus.valid.tolist() == [4, 1, 2]
    assert corpus.test is None
    assert corpus.oov == {"train": 0, "valid": 1}  # "zz" became <unk>; literal <unk> did not count
    assert corpus.lines == {"train": 3, "valid": 1}
    assert corpus.stats()["vocab"] == {"ids": 5, "tokens": 4}


def test_no_padding_option_gives_literature_sized_vocab(tmp_path):
    write(tmp_path / "train.txt", "a <unk>\n")
    corpus = LMCorpus.from_directory(tmp_path, padding_token=None)
    assert len(corpus.vocab) == 3 and corpus.vocab.tokens[0] == "<unk>"


def test_unknown_without_unk_token_names_the_file(tmp_path):
    write(tmp_path / "train.txt", "a b\n")
    write(tmp_path / "valid.txt", "a c\n")
    with pytest.raises(KeyError, match=r"valid\.txt: token 'c' is not in the vocabulary"):
        LMCorpus.from_directory(tmp_path, unk_token=None)


def test_char_level_plain_text(tmp_path):
    p = write(tmp_path / "input.txt", "ab\nba\n")
    toks = list(iter_line_tokens(p, level="char"))
    assert toks == [["a", "b", "\n"], ["b", "a", "\n"]]
    corpus = LMCorpus.from_files(p, level="char", unk_token=None)
    assert corpus.train.numel() == 6 and corpus.eos_token is None
    split = LMCorpus.from_text(p, valid_fraction=0.5)
    assert split.train.numel() == 3 and split.valid.numel() == 3
    assert split.vocab.decode(torch.cat([split.train, split.valid])) == list("ab\nba\n")


def test_ptb_char_format_is_word_level(tmp_path):
    p = write(tmp_path / "ptb.char.train.txt", "a b _ c\n")
    assert list(iter_line_tokens(p)) == [["a", "b", "_", "c", "<eos>"]]


def test_invalid_utf8_names_file_offset_and_line(tmp_path):
    # "héllo\n" is 7 bytes, "wörld " another 7: the bad byte is at offset 14.
    p = write(tmp_path / "bad.txt", b"h\xc3\xa9llo\nw\xc3\xb6rld \xff")
    msg = r"bad\.txt: invalid UTF-8 at byte offset 14 \(line 2\)"
    with pytest.raises(InvalidUTF8Error, match=msg) as exc:
        list(iter_lines(p))
    assert exc.value.offset == 14 and exc.value.line == 2
    with pytest.raises(InvalidUTF8Error, match="byte offset 14"):
        read_text(p)
    with pytest.raises(InvalidUTF8Error, match="errors='replace'"):
        LMCorpus.from_files(p)
    assert list(iter_lines(p, errors="ignore")) == ["héllo", "wörld "]
    assert read_text(p, errors="replace").endswith("\ufffd")
    with pytest.raises(ValueError, match="errors must be one of"):
        list(iter_lines(p, errors="bogus"))


def test_crlf_lines_and_keepends(tmp_path):
    p = write(tmp_path / "crlf.txt", b"a b\r\nc\r\n")
    assert list(iter_lines(p)) == ["a b", "c"]
    assert list(iter_lines(p, keepends=True)) == ["a b\r\n", "c\r\n"]


def test_streaming_encode_in_chunks(tmp_path):
    p = write(tmp_path / "train.txt", "a b c\n" * 100)
    vocab = build_lm_vocabulary(p)
    chunks = list(iter_encoded(p, vocab, chunk_tokens=37))
    assert all(len(c) >= 37 for c in chunks[:-1])
    assert torch.equal(
        torch.from_numpy(__import__("numpy").concatenate(chunks)), encode_file(p, vocab)
    )
    assert encode_file(write(tmp_path / "empty.txt", ""), vocab).numel() == 0


def test_find_split_files(tmp_path):
    write(tmp_path / "wiki.train.tokens", "x\n")
    write(tmp_path / "wiki.test.tokens", "x\n")
    found = find_split_files(tmp_path)
    assert set(found) == {"train", "test"}
    with pytest.raises(FileNotFoundError, match=r"no train file .* \(tried: mine\.train\.txt\)"):
        find_split_files(tmp_path, "mine.{split}.txt")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_split_files(tmp_path / "nope")
    with pytest.raises(ValueError, match="level must be one of"):
        LMCorpus.from_directory(tmp_path, level="byte")


def test_iter_text_files_sorted(tmp_path):
    write(tmp_path / "b" / "2.txt", "two")
    write(tmp_path / "a.txt", "one")
    write(tmp_path / "c.md", "skip")
    assert [t for _, t in iter_text_files(tmp_path)] == ["one", "two"]
    with pytest.raises(FileNotFoundError):
        list(iter_text_files(tmp_path / "missing"))


# ----------------------------------------------------------------- the shared acceptance data
@pytest.fixture(scope="module")
def ptb():
    return LMCorpus.from_directory(SHARED / "ptb")


@needs_shared
def test_ptb_exact_counts(ptb):
    # README: 42,068 lines, 887,521 words, 929,589 tokens with <eos>, vocabulary 10,000
    # (incl. <unk>, plus <eos>); valid 3,370 lines and 73,760 tokens with <eos>.
    assert ptb.lines == {"train": 42_068, "valid": 3_370}
    assert ptb.train.numel() == 929_589
    assert ptb.train.numel() - ptb.lines["train"] == 887_521
    assert ptb.valid.numel() == 73_760
    assert ptb.vocab.num_tokens == 10_000  # <unk> maps to itself: no extra OOV id
    assert len(ptb.vocab) == 10_001  # + id 0 for padding
    assert ptb.oov == {"train": 0, "valid": 0}
    assert "<eos>" in ptb.vocab and ptb.vocab.oov_token == "<unk>"
    no_pad = LMCorpus.from_files(SHARED / "ptb" / "ptb.valid.txt", vocab=None, padding_token=None)
    assert no_pad.vocab.padding_id is None


@needs_shared
def test_ptb_char_counts():
    corpus = LMCorpus.from_directory(
        SHARED / "ptb", patterns="ptb.char.{split}.txt", unk_token=None
    )
    assert corpus.vocab.num_tokens == 50  # 49 symbols incl. "_" + <eos>
    assert corpus.lines == {"train": 42_069, "valid": 3_371}
    assert corpus.oov == {"train": 0, "valid": 0}


@needs_shared
def test_wikitext2_exact_counts_and_speed():
    start = time.perf_counter()
    corpus = LMCorpus.from_files(SHARED / "wikitext-2" / "wiki.train.tokens")
    elapsed = time.perf_counter() - start
    assert corpus.lines["train"] == 36_718
    assert corpus.train.numel() == 2_088_628
    assert corpus.vocab.num_tokens == 33_278
    # ~1.2 s on one core of the dev machine; "a few seconds, not minutes" with margin for
    # a loaded CI box.
    assert elapsed < 15, f"tokenising+encoding WikiText-2 train took {elapsed:.1f}s"
    valid = LMCorpus.from_files(
        SHARED / "wikitext-2" / "wiki.train.tokens",
        SHARED / "wikitext-2" / "wiki.valid.tokens",
        vocab=corpus.vocab,
    )
    assert valid.valid.numel() == 217_646 and valid.oov["valid"] == 0


@needs_shared
def test_tiny_shakespeare():
    corpus = LMCorpus.from_text(SHARED / "tinyshakespeare" / "input.txt")
    assert corpus.train.numel() + corpus.valid.numel() == 1_115_394
    assert corpus.vocab.num_tokens == 65
    assert corpus.lines["train"] + corpus.lines["valid"] == 40_000
