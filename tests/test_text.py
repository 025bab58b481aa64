"""recurrent.train.text: Penn Treebank and character-level corpora as int32 ids.

References, named in each test: small PTB-format files written here, with the tokens and
ids worked out by hand; TensorFlow's PTB ``reader.py`` (``_read_words``: ``read().replace(
"\\n", "<eos>").split()``, ``_build_vocab``: sort by (-count, word)) transcribed below; the
published counts of the real corpus (929,589 / 73,760 / 82,430 tokens, 10,000 types, also
printed in Gal's PTB log) and of tiny-shakespeare (65 characters), when the files are on
this machine; nanoGPT's 90/10 character split.
"""

import collections
import os
import pathlib

import numpy as np
import pytest

from recurrent.train import text

DATA = pathlib.Path(os.environ.get("RECURRENT_DATA", "/work/shared/data"))
PTB_DIR = DATA / "ptb"
SHAKESPEARE = DATA / "tinyshakespeare" / "input.txt"

# PTB's format: every line starts with a space and ends with " \n".
TRAIN = " the cat sat on the mat \n the dog sat \n <unk> ate the <unk> \n"
VALID = " the dog ate \n"
TEST = " a cat sat \n the mat \n"


def write_ptb(directory, train=TRAIN, valid=VALID, test=TEST):
  for split, content in (("train", train), ("valid", valid), ("test", test)):
    (directory / f"ptb.{split}.txt").write_text(content)
  return directory


def tf_reader(path):
  """TensorFlow's models/tutorials/rnn/ptb/reader.py, transcribed."""
  with open(path) as f:
    data = f.read().replace("\n", "<eos>").split()
  return data


def tf_vocab(words):
  counter = collections.Counter(words)
  pairs = sorted(counter.items(), key=lambda x: (-x[1], x[0]))
  return dict(zip([w for w, _ in pairs], range(len(pairs))))


def test_ptb_fixture_by_hand(tmp_path):
  corpus = text.ptb(write_ptb(tmp_path, test=" the cat sat \n the mat \n"))
  # counts: the 4, <eos> 3, sat 2, <unk> 2, cat/mat/dog/on/ate 1 (ties alphabetical)
  assert corpus.vocab.tokens == (
    "the",
    "<eos>",
    "<unk>",
    "sat",
    "ate",
    "cat",
    "dog",
    "mat",
    "on",
  )
  assert corpus.train.dtype == np.int32
  np.testing.assert_array_equal(corpus.train, [0, 5, 3, 8, 0, 7, 1, 0, 6, 3, 1, 2, 4, 0, 2, 1])
  np.testing.assert_array_equal(corpus.valid, [0, 6, 4, 1])
  np.testing.assert_array_equal(corpus.test, [0, 5, 3, 1, 0, 7, 1])
  assert corpus.vocab.decode(corpus.valid) == "the dog ate <eos>"


def test_ptb_fixture_matches_tf_reader(tmp_path):
  corpus = text.ptb(write_ptb(tmp_path, test=" the cat sat \n the mat \n"))
  word_to_id = tf_vocab(tf_reader(tmp_path / "ptb.train.txt"))
  assert dict(zip(corpus.vocab.tokens, range(len(corpus.vocab)))) == word_to_id
  for split in ("train", "valid", "test"):
    expected = [word_to_id[w] for w in tf_reader(tmp_path / f"ptb.{split}.txt")]
    np.testing.assert_array_equal(getattr(corpus, split), expected)


def test_ptb_unknown_word_in_test_split(tmp_path):
  # "a" never occurs in the training split.
  with pytest.raises(
    ValueError, match=r"ptb.test.txt has words that ptb.train.txt lacks: .*\['a'\]"
  ):
    text.ptb(write_ptb(tmp_path))


def test_ptb_missing_file(tmp_path):
  write_ptb(tmp_path)
  (tmp_path / "ptb.valid.txt").unlink()
  with pytest.raises(FileNotFoundError, match="no ptb.valid.txt.*fetch_ptb"):
    text.ptb(tmp_path)


def test_words_one_eos_per_newline():
  assert text.words(" a b \n\n c") == ["a", "b", "<eos>", "<eos>", "c"]
  assert text.words("a\nb\n") == ["a", "<eos>", "b", "<eos>"]


def test_vocabulary_errors():
  vocab = text.char_vocabulary("abc")
  with pytest.raises(ValueError, match=r"tokens has 2 types not in the vocabulary of 3.*'x'"):
    vocab.encode("abxyx")
  with pytest.raises(ValueError, match=r"ids must be in \[0, 3\), got values in \[0, 3\]"):
    vocab.decode(np.array([0, 3]))
  with pytest.raises(ValueError, match="ids must be a 1-d int array"):
    vocab.decode(np.zeros((2, 2), np.int32))
  with pytest.raises(ValueError, match="tokens must be distinct"):
    text.Vocabulary(("a", "b", "a"))
  assert vocab.decode(np.array([], np.int32)) == ""
  assert "b" in vocab and vocab.id("b") == 1 and len(vocab) == 3


def test_char_corpus_round_trip(tmp_path):
  content = "First Citizen:\r\nBefore we proceed, hear me speak. Ünïcode ✓\n"
  (tmp_path / "t.txt").write_bytes(content.encode("utf-8"))
  corpus = text.char_corpus(tmp_path / "t.txt", valid_fraction=0.25)
  assert corpus.vocab.tokens == tuple(sorted(set(content)))
  ids = np.concatenate([corpus.train, corpus.valid])
  assert ids.dtype == np.int32
  assert corpus.vocab.decode(ids) == content  # "\r\n" kept as it is on disk
  assert len(corpus.train) == int(len(content) * 0.75)
  np.testing.assert_array_equal(ids, [corpus.vocab.tokens.index(c) for c in content])


def test_char_corpus_errors(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  with pytest.raises(ValueError, match="empty file"):
    text.char_corpus(tmp_path / "empty.txt")
  with pytest.raises(ValueError, match=r"valid_fraction must be in \[0, 1\), got 1.0"):
    text.char_corpus(tmp_path / "empty.txt", valid_fraction=1.0)


@pytest.mark.skipif(not PTB_DIR.is_dir(), reason=f"no local Penn Treebank copy at {PTB_DIR}")
def test_real_ptb_published_counts():
  corpus = text.ptb(PTB_DIR)
  assert len(corpus.vocab) == 10_000
  assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
  eos = corpus.vocab.id("<eos>")
  splits = (corpus.train, corpus.valid, corpus.test)
  assert [int(np.sum(s == eos)) for s in splits] == [42_068, 3_370, 3_761]  # lines
  assert int(np.sum(corpus.train == corpus.vocab.id("<unk>"))) == 45_020
  # TF's reader.py gives "the" 0, "<unk>" 1, "<eos>" 2 on this corpus.
  assert corpus.vocab.tokens[:3] == ("the", "<unk>", "<eos>")
  assert corpus.train.min() == 0 and corpus.train.max() == 9_999
  word_to_id = tf_vocab(tf_reader(PTB_DIR / "ptb.train.txt"))
  assert dict(zip(corpus.vocab.tokens, range(len(corpus.vocab)))) == word_to_id
  expected = [word_to_id[w] for w in tf_reader(PTB_DIR / "ptb.test.txt")]
  np.testing.assert_array_equal(corpus.test, expected)
  first_line = (PTB_DIR / "ptb.valid.txt").read_text().split("\n")[0]
  assert corpus.vocab.decode(corpus.valid[: len(first_line.split()) + 1]) == (
    " ".join(first_line.split()) + " <eos>"
  )


@pytest.mark.skipif(not SHAKESPEARE.is_file(), reason=f"no tiny-shakespeare at {SHAKESPEARE}")
def test_real_tiny_shakespeare():
  content = SHAKESPEARE.read_text()
  corpus = text.char_corpus(SHAKESPEARE)
  assert len(corpus.vocab) == 65
  assert corpus.vocab.tokens == tuple(sorted(set(content)))
  # nanoGPT's shakespeare_char: train = data[:int(n * 0.9)].
  assert (len(corpus.train), len(corpus.valid)) == (1_003_854, 111_540)
  assert corpus.vocab.decode(np.concatenate([corpus.train, corpus.valid])) == content
