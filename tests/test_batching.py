"""recurrent.train.batching: truncated-BPTT windows of a corpus.

References, named in each test: Zaremba et al. 2014's ``ptb_iterator`` (the TensorFlow PTB
tutorial's ``reader.py`` before ``ptb_producer``), transcribed below; a corpus
``arange(N)``, whose token values are their own positions, so every row can be checked in
closed form; and, when it is on this machine, the real Penn Treebank with Zaremba et al.'s
small configuration.
"""

import os
import pathlib

import numpy as np
import pytest

from recurrent.train import batching, text

DATA = pathlib.Path(os.environ.get("RECURRENT_DATA", "/work/shared/data"))
PTB_DIR = DATA / "ptb"


def ptb_iterator(raw_data, batch_size, num_steps):
  """Zaremba et al.'s iterator (TensorFlow models, rnn/ptb/reader.py, 2015), transcribed."""
  raw_data = np.array(raw_data, dtype=np.int32)
  data_len = len(raw_data)
  batch_len = data_len // batch_size
  data = np.zeros([batch_size, batch_len], dtype=np.int32)
  for i in range(batch_size):
    data[i] = raw_data[batch_len * i : batch_len * (i + 1)]
  epoch_size = (batch_len - 1) // num_steps
  if epoch_size == 0:
    raise ValueError("epoch_size == 0, decrease batch_size or num_steps")
  for i in range(epoch_size):
    x = data[:, i * num_steps : (i + 1) * num_steps]
    y = data[:, i * num_steps + 1 : (i + 1) * num_steps + 1]
    yield (x, y)


@pytest.mark.parametrize("n, batch_size, num_steps", [(100, 4, 5), (101, 3, 7), (64, 1, 63)])
def test_matches_ptb_iterator(n, batch_size, num_steps):
  tokens = np.random.default_rng(n).integers(0, 50, n)
  batches = batching.lm_batches(tokens, batch_size, num_steps)
  reference = list(ptb_iterator(tokens, batch_size, num_steps))
  assert len(batches) == batches.num_windows == len(reference)
  for i, (x, y) in enumerate(reference):
    b = batches.batch(i)
    assert set(b) == {"inputs", "targets", "example_ids"}
    for key, shape in (("inputs", (batch_size, num_steps)), ("targets", (batch_size, num_steps))):
      assert b[key].dtype == np.int32 and b[key].shape == shape
    np.testing.assert_array_equal(b["inputs"], x)
    np.testing.assert_array_equal(b["targets"], y)
  assert [b["inputs"].tolist() for b in batches] == [x.tolist() for x, _ in reference]


def test_streams_are_contiguous_and_windows_continue():
  # Reference: arange(N), so stream s, window k, step t holds s * L + k * T + t.
  n, batch_size, num_steps = 1000, 7, 9
  batches = batching.lm_batches(np.arange(n), batch_size, num_steps)
  length = n // batch_size  # 142
  assert len(batches) == (length - 1) // num_steps == 15
  s, t = np.arange(batch_size)[:, None], np.arange(num_steps)[None, :]
  for k in range(len(batches)):
    b = batches[k]
    np.testing.assert_array_equal(b["inputs"], s * length + k * num_steps + t)
    np.testing.assert_array_equal(b["targets"], b["inputs"] + 1)  # the next token
    np.testing.assert_array_equal(b["example_ids"], k * batch_size + np.arange(batch_size))
    if k + 1 < len(batches):  # row s of window k + 1 continues row s of window k
      nxt = batches[k + 1]
      np.testing.assert_array_equal(nxt["inputs"][:, 0], b["targets"][:, -1])
  np.testing.assert_array_equal(batches.streams, np.arange(batch_size * length).reshape(7, -1))


def test_example_ids_unique_and_independent_of_visiting_order():
  batches = batching.lm_batches(np.arange(500) % 13, batch_size=6, num_steps=4)
  in_order = [batches.batch(i) for i in range(len(batches))]
  ids = np.concatenate([b["example_ids"] for b in in_order])
  assert ids.dtype == np.int32
  assert len(np.unique(ids)) == len(ids) == len(batches) * 6
  order = np.random.default_rng(0).permutation(len(batches))
  for i in order:  # shuffled, and visited again: the same window gives the same batch
    b = batches.batch(int(i))
    for key in b:
      np.testing.assert_array_equal(b[key], in_order[i][key])
  np.testing.assert_array_equal(batches[-1]["inputs"], in_order[-1]["inputs"])
  # A fresh object (e.g. a resumed run) gives the same window i.
  again = batching.lm_batches(np.arange(500) % 13, batch_size=6, num_steps=4)
  np.testing.assert_array_equal(again.batch(17)["targets"], in_order[17]["targets"])


def test_batches_are_copies():
  batches = batching.lm_batches(np.arange(50), 2, 4)
  batches.batch(0)["inputs"][:] = -1
  assert batches.batch(0)["inputs"].min() == 0


@pytest.mark.parametrize(
  "tokens, batch_size, num_steps, error, match",
  [
    (np.arange(20), 2, 10, ValueError, "tokens has 20 tokens, too few.*at least 22"),
    (np.arange(20.0), 2, 3, ValueError, "tokens must be a 1-d int array, got float64"),
    (np.zeros((4, 5), np.int32), 2, 3, ValueError, r"of shape \(4, 5\)"),
    (np.arange(20), 0, 3, ValueError, "batch_size must be a positive int, got 0"),
    (np.arange(20), 2, 1.5, ValueError, "num_steps must be a positive int, got 1.5"),
  ],
)
def test_bad_arguments(tokens, batch_size, num_steps, error, match):
  with pytest.raises(error, match=match):
    batching.lm_batches(tokens, batch_size, num_steps)


def test_bad_index():
  batches = batching.lm_batches(np.arange(20), 2, 3)
  with pytest.raises(IndexError, match=r"i must be in \[0, 3\).*got 3"):
    batches.batch(3)
  with pytest.raises(TypeError, match="i must be an int, got float"):
    batches.batch(1.0)


@pytest.mark.skipif(not PTB_DIR.is_dir(), reason=f"no local Penn Treebank copy at {PTB_DIR}")
def test_real_ptb_small_config():
  # Zaremba et al.'s small model: batch_size 20, num_steps 35.
  train = text.ptb(PTB_DIR).train
  batches = batching.lm_batches(train, 20, 35)
  assert len(batches) == (929_589 // 20 - 1) // 35 == 1327
  reference = ptb_iterator(train, 20, 35)
  for i in range(len(batches)):
    x, y = next(reference)
    b = batches.batch(i)
    np.testing.assert_array_equal(b["inputs"], x)
    np.testing.assert_array_equal(b["targets"], y)
