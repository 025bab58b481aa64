"""Text corpora as int32 token ids: word-level Penn Treebank and character-level text.

Shape legend: N tokens in a corpus (or in a sequence to encode or decode).

Word level, as Zaremba et al. 2014 (``data.lua``) and TensorFlow's PTB ``reader.py`` read
Mikolov's Penn Treebank: every newline becomes an ``<eos>`` token and the text is split on
whitespace; the vocabulary is built from the training split alone (10,000 types for PTB,
``<unk>`` and ``<eos>`` included), ids sorted by decreasing frequency, ties alphabetically,
as ``reader.py`` does. Character level, as char-rnn and nanoGPT do: the vocabulary is the
sorted set of the text's characters.
"""

import collections
import dataclasses
import pathlib
from typing import NamedTuple

import numpy as np

from recurrent.train.config import UserError

EOS = "<eos>"
PTB_SPLITS = ("train", "valid", "test")


@dataclasses.dataclass(frozen=True)
class Vocabulary:
  """Tokens to int32 ids and back; the id of ``tokens[i]`` is ``i``.

  Attributes:
    tokens: the tokens, each once, in id order.
    separator: what :meth:`decode` puts between tokens (``""`` for characters, ``" "``
      for words).

  Example:
    >>> vocab = char_vocabulary("hello")
    >>> vocab.tokens
    ('e', 'h', 'l', 'o')
    >>> ids = vocab.encode("hole")
    >>> ids, ids.dtype
    (array([1, 3, 2, 0], dtype=int32), dtype('int32'))
    >>> vocab.decode(ids)
    'hole'
  """

  tokens: tuple
  separator: str = ""
  _index: dict = dataclasses.field(init=False, repr=False, compare=False)

  def __post_init__(self):
    tokens = tuple(self.tokens)
    index = {t: i for i, t in enumerate(tokens)}
    if len(index) != len(tokens):
      repeated = [t for t, n in collections.Counter(tokens).items() if n > 1]
      raise ValueError(f"tokens must be distinct, got {len(repeated)} repeated: {repeated[:5]}")
    object.__setattr__(self, "tokens", tokens)
    object.__setattr__(self, "_index", index)

  def __len__(self) -> int:
    return len(self.tokens)

  def __contains__(self, token) -> bool:
    return token in self._index

  def id(self, token: str) -> int:
    """The id of ``token``."""
    return self._index[token]

  def encode(self, tokens) -> np.ndarray:
    """int32 ids ``[N]`` of ``tokens`` (a string for characters, a list of words).

    Raises:
      ValueError: a token is not in the vocabulary (the message shows a few).
    """
    tokens = list(tokens)
    try:
      return np.fromiter((self._index[t] for t in tokens), np.int32, count=len(tokens))
    except KeyError:
      unknown = sorted({t for t in tokens if t not in self._index})
      raise ValueError(
        f"tokens has {len(unknown)} types not in the vocabulary of {len(self)}, e.g. {unknown[:5]}"
      ) from None

  def decode(self, ids) -> str:
    """The text of ids ``[N]`` (any ints in ``[0, len(self))``), joined by ``separator``."""
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
      raise ValueError(f"ids must be a 1-d int array, got {ids.dtype} of shape {ids.shape}")
    if ids.size and (ids.min() < 0 or ids.max() >= len(self)):
      raise ValueError(f"ids must be in [0, {len(self)}), got values in [{ids.min()}, {ids.max()}]")
    return self.separator.join(self.tokens[i] for i in ids.tolist())


def words(text: str) -> list:
  """Whitespace-separated words with ``<eos>`` for every newline, as Zaremba et al. do.

  Example:
    >>> words(" the cat \\n sat \\n")
    ['the', 'cat', '<eos>', 'sat', '<eos>']
  """
  return text.replace("\n", f" {EOS} ").split()


def word_vocabulary(tokens) -> Vocabulary:
  """The vocabulary of ``tokens``, by decreasing count, ties in alphabetical order.

  Example:
    >>> word_vocabulary(["b", "a", "c", "a", "b", "a"]).tokens
    ('a', 'b', 'c')
  """
  counts = collections.Counter(tokens)
  return Vocabulary(tuple(sorted(counts, key=lambda t: (-counts[t], t))), separator=" ")


def char_vocabulary(text: str) -> Vocabulary:
  """The sorted set of ``text``'s characters."""
  return Vocabulary(tuple(sorted(set(text))), separator="")


def _read_text(path: pathlib.Path, newline: str | None = None) -> str:
  """The UTF-8 text of ``path``; ``newline`` as ``open`` takes it (``""``: as on disk).

  Raises:
    UserError: the file is not UTF-8, naming it and the first bad byte's offset.
  """
  with open(path, encoding="utf-8", newline=newline) as f:
    try:
      return f.read()
    except UnicodeDecodeError as e:
      raise UserError(
        f"{path} is not UTF-8 text: byte {e.object[e.start]:#04x} at offset {e.start} ({e.reason})"
      ) from None


class PTB(NamedTuple):
  """Penn Treebank as int32 ids ``[N]`` per split (929,589 / 73,760 / 82,430 tokens)."""

  vocab: Vocabulary
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray


def ptb(directory) -> PTB:
  """Reads ``ptb.{train,valid,test}.txt`` from ``directory``.

  Args:
    directory: a directory holding the three files (e.g. from
      :func:`recurrent.train.download.fetch_ptb`).

  Returns:
    :class:`PTB`: the vocabulary built from the training split and each split's ids
    ``int32 [N]``.

  Raises:
    FileNotFoundError: a file is missing.
    UserError: a file is not UTF-8 text, or the validation or test split has words the
      training split lacks.
  """
  directory = pathlib.Path(directory).expanduser()
  split_words = {}
  for split in PTB_SPLITS:
    path = directory / f"ptb.{split}.txt"
    if not path.is_file():
      raise FileNotFoundError(
        f"directory {directory} has no {path.name}; expected ptb.train.txt, ptb.valid.txt "
        "and ptb.test.txt (recurrent.train.download.fetch_ptb downloads them)"
      )
    split_words[split] = words(_read_text(path))
  vocab = word_vocabulary(split_words["train"])
  ids = {}
  for split, tokens in split_words.items():
    try:
      ids[split] = vocab.encode(tokens)
    except ValueError as e:
      raise UserError(
        f"{directory / f'ptb.{split}.txt'} has words that ptb.train.txt lacks: {e}"
      ) from None
  return PTB(vocab, **ids)


class CharCorpus(NamedTuple):
  """A character-level corpus: the vocabulary and int32 ids ``[N]`` of each split."""

  vocab: Vocabulary
  train: np.ndarray
  valid: np.ndarray


def char_corpus(path, valid_fraction: float = 0.1) -> CharCorpus:
  """Reads a UTF-8 text file as characters; the last ``valid_fraction`` is the validation split.

  The vocabulary is the sorted set of the whole file's characters (so validation has none
  unknown), as nanoGPT's ``shakespeare_char`` does; its 90/10 split is the default. The text
  is read as it is on disk (``\\r\\n`` stays two characters).

  Args:
    path: the text file, e.g. tiny-shakespeare's ``input.txt`` (65 characters).
    valid_fraction: share of the characters, at the end of the file, kept for validation
      (the training split is the first ``int(N * (1 - valid_fraction))``, as nanoGPT).

  Returns:
    :class:`CharCorpus` with ids ``int32 [N]``.

  Raises:
    OSError: the file cannot be read (missing, a directory, no permission).
    UserError: the file is empty or not UTF-8 text (the message names the file and the
      first bad byte).
  """
  if not 0.0 <= valid_fraction < 1.0:
    raise ValueError(f"valid_fraction must be in [0, 1), got {valid_fraction}")
  text = _read_text(pathlib.Path(path).expanduser(), newline="")
  if not text:
    raise UserError(f"path {path} is an empty file; expected some text")
  vocab = char_vocabulary(text)
  ids = vocab.encode(text)
  n_train = int(len(ids) * (1.0 - valid_fraction))
  return CharCorpus(vocab, ids[:n_train], ids[n_train:])
