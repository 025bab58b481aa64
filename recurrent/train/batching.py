"""Language-model batches for truncated backpropagation through time.

Shape legend: N tokens in the corpus, B batch (parallel streams), T steps per window,
L tokens per stream.

As Zaremba et al. 2014's ``ptb_iterator``: the corpus is cut into B contiguous streams,
``streams = tokens[:B * L].reshape(B, L)`` with ``L = N // B``, and window ``k`` holds steps
``k * T`` to ``(k + 1) * T`` of every stream. Row ``s`` of window ``k + 1`` continues row ``s``
of window ``k``, so the training loop carries the final state of one window into the next
and resets it at window 0. There are ``(L - 1) // T`` windows per epoch (the last token of
a stream is only a target); the tail of the corpus that does not fill them is not used.

Each row's ``example_id`` is ``window * B + stream``, a global index unique within an epoch:
per-sequence dropout keys (:func:`recurrent.sequence_keys`) then depend on which
(window, stream) a row is, never on how the batch is laid out or sharded.
"""

import numpy as np


class LMBatches:
  """The windows of one epoch of a corpus; window ``i`` is ``batches[i]`` or ``batch(i)``.

  Deterministic and indexable, so a resumed run restarts at any window exactly. Build it
  with :func:`lm_batches`.

  Attributes:
    streams: int32 ``[B, L]``, the corpus cut into B contiguous streams.
    batch_size: B.
    num_steps: T.
    num_windows: windows per epoch, ``(L - 1) // T``; also ``len(batches)``.
  """

  def __init__(self, tokens, batch_size: int, num_steps: int):
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
      raise ValueError(
        f"tokens must be a 1-d int array, got {tokens.dtype} of shape {tokens.shape}"
      )
    for name, value in (("batch_size", batch_size), ("num_steps", num_steps)):
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    length = len(tokens) // batch_size
    num_windows = (length - 1) // num_steps
    if num_windows < 1:
      raise ValueError(
        f"tokens has {len(tokens)} tokens, too few for one window of batch_size {batch_size} "
        f"x num_steps {num_steps}; expected at least {batch_size * (num_steps + 1)}"
      )
    if num_windows * batch_size > np.iinfo(np.int32).max:
      raise ValueError(f"{num_windows * batch_size} windows x streams overflow int32 ids")
    self.streams = tokens[: batch_size * length].astype(np.int32).reshape(batch_size, length)
    self.batch_size = int(batch_size)
    self.num_steps = int(num_steps)
    self.num_windows = int(num_windows)

  def __len__(self) -> int:
    return self.num_windows

  def batch(self, i: int) -> dict:
    """Window ``i`` of the epoch, ``0 <= i < num_windows`` (negative ``i`` counts from the end).

    Returns:
      A dict of new arrays:

      * ``inputs``: int32 ``[B, T]``, ``streams[:, i*T : (i+1)*T]``;
      * ``targets``: int32 ``[B, T]``, the next tokens, ``streams[:, i*T+1 : (i+1)*T+1]``;
      * ``example_ids``: int32 ``[B]``, ``i * B + arange(B)``.

    Example:
      >>> import numpy as np
      >>> batches = lm_batches(np.arange(20), batch_size=2, num_steps=3)
      >>> len(batches)
      3
      >>> b = batches.batch(1)
      >>> b["inputs"]
      array([[ 3,  4,  5],
             [13, 14, 15]], dtype=int32)
      >>> b["targets"]
      array([[ 4,  5,  6],
             [14, 15, 16]], dtype=int32)
      >>> b["example_ids"]
      array([2, 3], dtype=int32)
    """
    if not isinstance(i, (int, np.integer)):
      raise TypeError(f"i must be an int, got {type(i).__name__}")
    if not -self.num_windows <= i < self.num_windows:
      raise IndexError(f"i must be in [0, {self.num_windows}), the windows per epoch; got {i}")
    i = int(i) % self.num_windows
    start = i * self.num_steps
    window = self.streams[:, start : start + self.num_steps + 1]
    return {
      "inputs": window[:, :-1].copy(),
      "targets": window[:, 1:].copy(),
      "example_ids": np.arange(i * self.batch_size, (i + 1) * self.batch_size, dtype=np.int32),
    }

  __getitem__ = batch

  def __iter__(self):
    for i in range(self.num_windows):
      yield self.batch(i)


def lm_batches(tokens, batch_size: int, num_steps: int) -> LMBatches:
  """One epoch of truncated-BPTT windows of ``tokens``: see :class:`LMBatches`.

  Args:
    tokens: int ``[N]``, the corpus (e.g. ``recurrent.train.text.ptb(dir).train``).
    batch_size: B, parallel streams (Zaremba et al.: 20).
    num_steps: T, steps per window (Zaremba et al.: 35; Gal & Ghahramani: 35).

  Returns:
    :class:`LMBatches` with ``num_windows = (N // B - 1) // T`` windows.
  """
  return LMBatches(tokens, batch_size, num_steps)
