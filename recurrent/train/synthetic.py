"""Synthetic long-range tasks generated in process: the adding problem and the copy task.

Shape legend: B batch, T time (sequence length), S symbols to copy.

Every example is a function of ``(seed, example_id)`` alone: its randomness comes from
``fold_in(key(seed), example_id)``, drawn by a jitted ``vmap`` over chunks of 256 ids. The
same example id gives the same example whatever the batch size, its position in the batch
or the device, so batches, like per-sequence dropout keys, never depend on the batch
layout. Step ``i`` of a run with batch size B holds the ids ``i * B + arange(B)``.

Batches are dicts of NumPy arrays, like :mod:`recurrent.train.batching`'s. Held-out
examples come from another seed (a task with ``seed + 1``): a random stream independent of
the training examples however many steps are run.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_CHUNK = 256  # examples generated per call of a compiled generator


def _example_ids(step: int, batch_size: int) -> np.ndarray:
  for name, value in (("step", step), ("batch_size", batch_size)):
    if not isinstance(value, (int, np.integer)):
      raise TypeError(f"{name} must be an int, got {type(value).__name__}")
  if step < 0 or batch_size < 1:
    raise ValueError(f"expected step >= 0 and batch_size >= 1, got {step} and {batch_size}")
  if (step + 1) * batch_size - 1 > np.iinfo(np.int32).max:
    raise ValueError(f"step {step} x batch_size {batch_size} overflows int32 example ids")
  return np.arange(step * batch_size, (step + 1) * batch_size, dtype=np.int32)


def _check_ids(example_ids) -> np.ndarray:
  ids = np.asarray(example_ids)
  if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
    raise ValueError(f"example_ids must be a 1-d int array, got {ids.dtype} of shape {ids.shape}")
  if ids.size and (ids.min() < 0 or ids.max() > np.iinfo(np.int32).max):
    raise ValueError(f"example_ids must be in [0, 2**31), got [{ids.min()}, {ids.max()}]")
  return ids.astype(np.int32)


def _keys(seed, ids):
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(jax.random.key(seed), ids)


def _generate(fn, seed: int, ids: np.ndarray, *static) -> tuple:
  """``fn(seed, chunk, *static)`` over fixed chunks of ``ids``, as NumPy arrays ``[B, ...]``.

  Fixed chunks compile ``fn`` once per task whatever the batch size (threefry is slow to
  compile); each row depends on its own key only, so padding changes no example.
  """
  padded = np.zeros(max(1, -(-len(ids) // _CHUNK)) * _CHUNK, np.int32)
  padded[: len(ids)] = ids
  chunks = [
    fn(np.uint32(seed), padded[i : i + _CHUNK], *static) for i in range(0, len(padded), _CHUNK)
  ]
  return tuple(
    np.concatenate([np.asarray(c[j]) for c in chunks])[: len(ids)] for j in range(len(chunks[0]))
  )


def _check_seed(seed):
  if not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
    raise ValueError(f"seed must be an int in [0, 2**32), got {seed!r}")


@functools.partial(jax.jit, static_argnums=2)
def _adding(seed, ids, seq_len):
  half = seq_len // 2

  def one(key):
    # One draw for all (jax.random.randint takes seconds to compile): T values, then one
    # marked step in each half, [0, T // 2) and [T // 2, T), as floor(u * size): uniform up
    # to a bias below size * 2**-23 (float32 uniforms are multiples of 2**-23).
    u = jax.random.uniform(key, (seq_len + 2,), jnp.float32)
    values = u[:seq_len]
    start, size = jnp.array([0, half]), jnp.array([half, seq_len - half])
    marked = start + jnp.minimum(
      (u[seq_len:] * size.astype(jnp.float32)).astype(jnp.int32), size - 1
    )
    t = jnp.arange(seq_len)
    markers = ((t == marked[0]) | (t == marked[1])).astype(jnp.float32)
    return jnp.stack([values, markers], axis=-1), values[marked[0]] + values[marked[1]]

  return jax.vmap(one)(_keys(seed, ids))


@dataclasses.dataclass(frozen=True)
class AddingProblem:
  """The adding problem (Hochreiter & Schmidhuber 1997), in Le et al. 2015's form (IRNN).

  Channel 0 of the input holds T values drawn uniformly from ``[0, 1)``; channel 1 is a
  marker, 1 at exactly two steps, one drawn uniformly from the first half ``[0, T // 2)``
  and one from the second half ``[T // 2, T)``, 0 elsewhere. The target is the sum of the
  two marked values, read after the last step; the loss is the mean squared error.

  Baseline: always predicting 1 gives MSE ``Var(u1 + u2) = 1/6 ≈ 0.167`` (Le et al. quote
  "around 0.1767"); a model has learnt the task well below that.

  Attributes:
    seq_len: T (Le et al.: 150, 200, 300, 400), at least 2.
    seed: the data seed.

  Example:
    >>> task = AddingProblem(seq_len=6, seed=0)
    >>> b = task.batch(step=0, batch_size=4)
    >>> b["inputs"].shape, b["inputs"].dtype, b["targets"].shape, b["targets"].dtype
    ((4, 6, 2), dtype('float32'), (4,), dtype('float32'))
    >>> b["inputs"][..., 1].sum(axis=1)
    array([2., 2., 2., 2.], dtype=float32)
    >>> b["example_ids"]
    array([0, 1, 2, 3], dtype=int32)
  """

  seq_len: int
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 2:
      raise ValueError(f"seq_len must be an int >= 2 (one marker per half), got {self.seq_len!r}")
    _check_seed(self.seed)

  def examples(self, example_ids) -> dict:
    """The examples ``example_ids`` (int ``[B]``).

    Returns:
      ``{'inputs': float32 [B, T, 2], 'targets': float32 [B], 'example_ids': int32 [B]}``
      (channel 0 of ``inputs`` the values, channel 1 the markers).
    """
    ids = _check_ids(example_ids)
    inputs, targets = _generate(_adding, self.seed, ids, int(self.seq_len))
    return {"inputs": inputs, "targets": targets, "example_ids": ids}

  def batch(self, step: int, batch_size: int) -> dict:
    """The batch of training step ``step``: the examples ``step * B + arange(B)``."""
    return self.examples(_example_ids(step, batch_size))

  @property
  def baseline_mse(self) -> float:
    """The MSE of the best constant answer, 1 (the mean of the target): ``Var(u1 + u2)``.

    The two marked values are independent and uniform on ``[0, 1)``, each of variance
    ``1/12``, so the target's variance is ``2/12 = 1/6`` whatever ``seq_len``.

    Example:
      >>> round(AddingProblem(seq_len=50).baseline_mse, 4)
      0.1667
    """
    uniform_variance = 1.0 / 12.0  # of U[0, 1): E[u^2] - E[u]^2 = 1/3 - 1/4
    return 2.0 * uniform_variance


def _answer_steps(seq_len: int, copy_length: int):
  """The copy task's answer steps ``[T]`` (bool): the last S, where the symbols are recalled."""
  return np.arange(seq_len) >= seq_len - copy_length


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _copy(seed, ids, seq_len, copy_length, alphabet_size):
  blank, delimiter = alphabet_size, alphabet_size + 1
  recall = seq_len - copy_length  # first step of the answer; the delimiter is one before

  def one(key):
    # Uniform up to a bias below alphabet_size / 2**32 (exact for powers of two). T draws,
    # S used: on XLA:CPU 10 draws per row took 3.8 s to compile, 64 took 1.0 s (randint 5 s).
    bits = jax.random.bits(key, (seq_len,), jnp.uint32)[:copy_length]
    symbols = (bits % jnp.uint32(alphabet_size)).astype(jnp.int32)

    def blanks(n):
      return jnp.full((n,), blank, jnp.int32)

    inputs = [
      symbols,
      blanks(recall - 1 - copy_length),
      jnp.array([delimiter]),
      blanks(copy_length),
    ]
    return jnp.concatenate(inputs), jnp.concatenate([blanks(recall), symbols])

  inputs, targets = jax.vmap(one)(_keys(seed, ids))
  weights = jnp.asarray(_answer_steps(seq_len, copy_length), jnp.float32)
  return inputs, targets, jnp.broadcast_to(weights, targets.shape)


@dataclasses.dataclass(frozen=True)
class CopyTask:
  """The copy (memory) task in Arjovsky et al. 2016's form (uRNN).

  Tokens ``0 .. A-1`` are the symbols, ``A`` the blank and ``A + 1`` the delimiter
  (``vocab_size = A + 2``). With the delay ``D = T - 2 S``, the input is S symbols drawn
  uniformly, ``D - 1`` blanks, the delimiter, then S blanks; the target is ``T - S`` blanks,
  then the S symbols. Arjovsky et al. use ``S = 10``, ``A = 8`` and ``D`` = 100 to 500.

  ``weights`` marks the S answer steps (1.0) and gives 0.0 to the others. Baselines of
  the memoryless strategy (blanks, then a uniform guess among the A symbols): a
  cross-entropy of ``log(A)`` (2.079 for ``A = 8``) per weighted step, and
  ``S log(A) / T`` averaged over all T steps, the number Arjovsky et al. plot (their
  ``10 log(8) / (D + 20)``).

  Attributes:
    seq_len: T, at least ``2 * copy_length + 1``.
    seed: the data seed.
    copy_length: S.
    alphabet_size: A.

  Example:
    >>> task = CopyTask(seq_len=64, seed=0)  # S = 10 symbols, delay 44
    >>> task.blank, task.delimiter, task.vocab_size
    (8, 9, 10)
    >>> b = task.batch(step=0, batch_size=2)
    >>> b["inputs"].shape, b["inputs"].dtype, b["weights"].dtype
    ((2, 64), dtype('int32'), dtype('float32'))
    >>> b["inputs"][0, 50:56], b["weights"][0, 50:56]
    (array([8, 8, 8, 9, 8, 8], dtype=int32), array([0., 0., 0., 0., 1., 1.], dtype=float32))
    >>> bool((b["targets"][:, 54:] == b["inputs"][:, :10]).all())
    True
    >>> bool((b["targets"][:, :54] == task.blank).all())
    True
  """

  seq_len: int
  seed: int = 0
  copy_length: int = 10
  alphabet_size: int = 8

  def __post_init__(self):
    for name in ("copy_length", "alphabet_size"):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    if not isinstance(self.seq_len, (int, np.integer)) or self.seq_len < 2 * self.copy_length + 1:
      raise ValueError(
        f"seq_len must be at least 2 * copy_length + 1 = {2 * self.copy_length + 1} "
        f"(symbols, delimiter, answer), got {self.seq_len!r}"
      )
    _check_seed(self.seed)

  @property
  def blank(self) -> int:
    return self.alphabet_size

  @property
  def delimiter(self) -> int:
    return self.alphabet_size + 1

  @property
  def vocab_size(self) -> int:
    return self.alphabet_size + 2

  @property
  def memoryless_baseline(self) -> dict:
    """The loss and accuracy, per weighted step, of the best model without memory.

    Such a model knows the layout (the targets are blanks until the last S steps, then
    the symbols, drawn uniformly from the A of the alphabet) but not which symbols came:
    it predicts the blank with certainty on the blank steps (cross-entropy 0, always
    right) and a uniform distribution over the A symbols on the answer steps
    (cross-entropy ``log A``, right with probability ``1/A``). The numbers are these
    per-step values averaged with the task's ``weights``; as only the answer steps weigh,
    ``log A`` (2.079 for ``A = 8``) and ``1/A``.

    Returns:
      ``{'loss': ..., 'accuracy': ...}``.

    Example:
      >>> {k: round(v, 4) for k, v in CopyTask(seq_len=64).memoryless_baseline.items()}
      {'loss': 2.0794, 'accuracy': 0.125}
    """
    return {"loss": math.log(self.alphabet_size), "accuracy": 1.0 / self.alphabet_size}

  def examples(self, example_ids) -> dict:
    """The examples ``example_ids`` (int ``[B]``).

    Returns:
      ``{'inputs': int32 [B, T], 'targets': int32 [B, T], 'weights': float32 [B, T],
      'example_ids': int32 [B]}``.
    """
    ids = _check_ids(example_ids)
    static = int(self.seq_len), int(self.copy_length), int(self.alphabet_size)
    inputs, targets, weights = _generate(_copy, self.seed, ids, *static)
    return {"inputs": inputs, "targets": targets, "weights": weights, "example_ids": ids}

  def batch(self, step: int, batch_size: int) -> dict:
    """The batch of training step ``step``: the examples ``step * B + arange(B)``."""
    return self.examples(_example_ids(step, batch_size))
