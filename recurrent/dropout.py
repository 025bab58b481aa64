"""Time-invariant ("variational") dropout, Gal & Ghahramani 2016 (arXiv 1512.05287).

Shape legend: B batch (any leading dims), T time, F features.

Every sequence owns a PRNG key. Its masks are drawn once from that key, before the time
loop, and reused at every step: the same units of ``x_t`` (``dropout``, "vertical") and
of ``h_{t-1}`` (``recurrent_dropout``, "horizontal") are dropped for the whole
sequence. Because a mask is a function of its sequence's key alone, it does not change
with the batch size, the sequence's position in the batch or the number of devices the
batch is sharded over, as long as the keys come from something that identifies the
example, such as its global index in the data set::

    keys = recurrent.sequence_keys(step_key, example_ids)   # [B] keys

Masks use inverted scaling: kept units are divided by the keep probability ``1 - rate``,
so nothing changes at evaluation. The keys of the masks inside a model are derived from a
sequence's key with ``fold_in`` (see :func:`derive`), one stream per layer, direction and
use, so they are independent of each other.

MC dropout (Gal & Ghahramani's evaluation with dropout on) is :func:`mc_average`.
"""

import jax
import jax.numpy as jnp

Array = jax.Array

# Streams folded into a sequence's key, so the masks of a model never share randomness.
INPUT, RECURRENT = 0, 1


def as_key_array(key) -> Array:
  """A typed PRNG key array from a typed key array or raw ``uint32 [..., 2]`` key data."""
  if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    return key
  return jax.random.wrap_key_data(key)


def sequence_keys(key, example_ids) -> Array:
  """One key per sequence: ``fold_in(key, example_id)``.

  Args:
    key: a single PRNG key (e.g. the training step's key).
    example_ids: int array ``[B...]`` of global example indices (their position in the
      data set, not in the batch), or an int ``n`` for ``arange(n)``.

  Returns:
    A typed key array ``[B...]``; the key of an example depends on ``key`` and its id
    only, so its dropout masks survive any re-batching or sharding.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> keys = recurrent.sequence_keys(jax.random.key(0), jnp.array([7, 3]))
    >>> keys.shape
    (2,)
    >>> bool(jnp.all(jax.random.key_data(keys[0]) ==
    ...     jax.random.key_data(recurrent.sequence_keys(jax.random.key(0), jnp.array([7]))[0])))
    True
  """
  key = as_key_array(key)
  if key.shape != ():
    raise ValueError(f"key must be a single key, got a key array of shape {key.shape}")
  ids = jnp.arange(example_ids) if isinstance(example_ids, int) else jnp.asarray(example_ids)
  if not jnp.issubdtype(ids.dtype, jnp.integer):
    raise TypeError(f"example_ids must be integers, got dtype {ids.dtype}")
  flat = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, ids.reshape(-1))
  return flat.reshape(ids.shape)


def _per_key(fn, keys: Array) -> Array:
  """Apply ``fn(key) -> [...]`` to each key of ``keys [B...]``, giving ``[B..., ...]``."""
  flat = jax.vmap(fn)(keys.reshape(-1))
  return flat.reshape(keys.shape + flat.shape[1:])


def derive(keys: Array, *path: int) -> Array:
  """Keys ``[B...]`` folded with ``path`` (e.g. layer, direction, stream), per sequence."""

  def fold(k):
    for p in path:
      k = jax.random.fold_in(k, p)
    return k

  return _per_key(fold, keys)


def masks(keys: Array, size: int, rate: float, num: int = 1, dtype=jnp.float32) -> tuple:
  """``num`` independent inverted-dropout masks per sequence.

  Args:
    keys: typed key array ``[B...]``, one key per sequence.
    size: F, the number of units.
    rate: drop probability in ``[0, 1)``.
    num: how many masks (G for one mask per gate).
    dtype: dtype of the masks.

  Returns:
    A tuple of ``num`` arrays ``[B..., F]`` with values ``0`` or ``1 / (1 - rate)``.
  """
  keep = 1.0 - rate

  def draw(k):
    kept = jax.random.bernoulli(k, keep, (num, size))
    return jnp.where(kept, jnp.asarray(1.0 / keep, dtype), jnp.asarray(0.0, dtype))

  drawn = _per_key(draw, keys)  # [B..., num, F]
  return tuple(jnp.moveaxis(drawn, -2, 0))


def apply(keys, xs: Array, rate: float, *, time_major: bool = False, deterministic=False):
  """Time-invariant dropout of a whole sequence, e.g. on embeddings or on the top layer.

  Args:
    keys: key array ``[B...]``, one key per sequence.
    xs: ``[B..., T, F]`` (``[T, B..., F]`` if ``time_major``).
    rate: drop probability in ``[0, 1)``, a float or a floating scalar array.
    time_major: whether time is the first axis of ``xs``.
    deterministic: True returns ``xs`` unchanged.

  Returns:
    ``xs`` times one mask per sequence, the same at every time step.
  """
  from recurrent import _checks
  from recurrent import options as _options

  _options.check_rate("rate", rate)
  if deterministic or not _options.is_on(rate):
    return xs
  keys = _checks.keys(keys, "keys", xs.shape[1:-1] if time_major else xs.shape[:-2])
  (mask,) = masks(keys, xs.shape[-1], rate, dtype=xs.dtype)
  return xs * (mask[None] if time_major else jnp.expand_dims(mask, -2))


def mc_average(predict, key, num_samples: int) -> Array:
  """MC dropout: the mean of ``predict(key_s)`` over ``num_samples`` independent keys.

  ``predict(key)`` runs the model with dropout on (``deterministic=False``), deriving its
  per-sequence keys from ``key`` (e.g. ``sequence_keys(key, example_ids)``), and returns
  probabilities (average probabilities, not logits, as Gal & Ghahramani do). The samples
  run in one ``vmap``; wrap the call in ``jax.jit``. ``num_samples`` is a positive int
  (else a ValueError, or a TypeError for a float or bool).

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> xs = jnp.ones((2, 5, 4))
    >>> def predict(k):
    ...   keys = recurrent.sequence_keys(k, 2)
    ...   return recurrent.dropout.apply(keys, xs, 0.5).mean(axis=(1, 2))
    >>> recurrent.mc_average(predict, jax.random.key(0), 64).shape
    (2,)
  """
  from recurrent import _checks

  num_samples = _checks.size("num_samples", num_samples)
  return jnp.mean(jax.vmap(predict)(jax.random.split(as_key_array(key), num_samples)), axis=0)
