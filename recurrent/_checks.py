"""Input validation, in Python, before anything is traced: each error names the argument,
what it got and what was expected."""

import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import dropout as _dropout


def _shape(x) -> tuple:
  return tuple(np.shape(x))


def size(name: str, value) -> int:
  """A positive Python (or NumPy) int, not a bool: a hidden size, a count. Returns it as an
  ``int``."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
    raise TypeError(f"{name} must be a positive int, got {value!r} ({type(value).__name__})")
  if value < 1:
    raise ValueError(f"{name} must be a positive int, got {value!r}")
  return int(value)


def floating(name: str, x) -> None:
  dtype = jnp.result_type(x)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
      f"{name} has dtype {dtype}; expected a floating dtype (float32, bfloat16, float64)."
      " Embed integer tokens first, e.g. with an embedding table."
    )


def sequence(name: str, xs, time_major: bool) -> tuple:
  """Checks ``xs`` and returns ``(batch_shape, T, I)``."""
  if not hasattr(xs, "shape") or not hasattr(xs, "dtype"):
    raise TypeError(f"{name} must be an array, got {type(xs).__name__}")
  floating(name, xs)
  if xs.ndim < 2:
    layout = "[T, B..., I]" if time_major else "[B..., T, I]"
    raise ValueError(f"{name} must have shape {layout} (at least [T, I]), got shape {xs.shape}")
  if time_major:
    return tuple(xs.shape[1:-1]), xs.shape[0], xs.shape[-1]
  return tuple(xs.shape[:-2]), xs.shape[-2], xs.shape[-1]


def features(name: str, got: int, expected: int) -> None:
  if got != expected:
    raise ValueError(f"{name} has feature size {got} but params expect input_size {expected}")


def keys(key, name: str, batch_shape: tuple):
  """A typed key array of shape ``batch_shape``, one key per sequence."""
  if key is None:
    raise ValueError(
      f"dropout is on but {name} is None: pass one PRNG key per sequence"
      " (recurrent.sequence_keys(key, example_ids)), or deterministic=True"
    )
  try:
    key = _dropout.as_key_array(jnp.asarray(key) if not hasattr(key, "dtype") else key)
  except (TypeError, ValueError) as e:
    raise TypeError(
      f"{name} must be a PRNG key array, got {type(key).__name__} of shape {_shape(key)}"
    ) from e
  if key.shape != tuple(batch_shape):
    raise ValueError(
      f"{name} has shape {key.shape}; expected one key per sequence, shape"
      f" {tuple(batch_shape)}. Make them with recurrent.sequence_keys(key, example_ids)"
      " so each sequence's masks do not depend on the batch"
    )
  return key


def seq_lengths(lengths, batch_shape: tuple, num_steps: int):
  if lengths is None:
    return None
  lengths = lengths if hasattr(lengths, "dtype") else np.asarray(lengths)
  if not jnp.issubdtype(lengths.dtype, jnp.integer):
    raise TypeError(f"seq_lengths must be integers, got dtype {lengths.dtype}")
  if _shape(lengths) != tuple(batch_shape):
    raise ValueError(
      f"seq_lengths has shape {_shape(lengths)}; expected the batch shape"
      f" {tuple(batch_shape)} of xs"
    )
  if not isinstance(lengths, jax.core.Tracer):
    values = np.asarray(lengths)
    if values.size and (values.min() < 0 or values.max() > num_steps):
      raise ValueError(
        f"seq_lengths must be in [0, {num_steps}] (the number of time steps), got values"
        f" from {values.min()} to {values.max()}"
      )
  return jnp.asarray(lengths)


def carry(name: str, given, expected) -> None:
  """``given`` must have the tree structure and the leaf shapes of ``expected``."""
  given_leaves, given_tree = jax.tree.flatten(given)
  expected_leaves, expected_tree = jax.tree.flatten(expected)
  if given_tree != expected_tree:
    raise ValueError(f"{name} has structure {given_tree}; expected {expected_tree}")
  for g, e in zip(given_leaves, expected_leaves):
    if _shape(g) != _shape(e):
      raise ValueError(
        f"{name} has leaves of shape {_shape(g)}; expected {_shape(e)}"
        " (batch shape of xs + (hidden_size,))"
      )
    floating(name, g)


# ``(given params type, expected params type) -> hint`` for :func:`params`' message, set by
# the module that defines the types (two types with the same fields that compute different
# functions, e.g. the GRU's reset-after and reset-before params).
MISMATCH_HINTS = {}


@functools.lru_cache(maxsize=64)
def _init_shapes(init, input_size):
  """The tree structure and leaf shapes of ``init(key, input_size)``, found without running
  it; None for an init that cannot be traced abstractly."""
  try:
    abstract = jax.eval_shape(lambda key: init(key, input_size), jax.random.key(0))
  except Exception:  # a cell of one's own may need concrete values: then no check
    return None
  leaves, tree = jax.tree.flatten(abstract)
  return tree, tuple(leaf.shape for leaf in leaves)


def _kind(tree) -> str:
  """A params tree's type for a message: the NamedTuple's name, else the tree."""
  node = jax.tree.unflatten(tree, [0] * tree.num_leaves)
  return type(node).__name__ if hasattr(node, "_fields") else str(tree)


def params(cell, params) -> None:
  """``params`` must be what ``cell.init`` makes: its structure (the params' NamedTuple
  type and fields) and, for the input size they take, its leaf shapes. Generic over
  cells: the expected tree is ``jax.eval_shape`` of ``cell.init(key, input_size)``."""
  given = jax.tree.structure(params)
  try:
    input_size = cell.input_size(params)
  except (AttributeError, IndexError, KeyError, TypeError):
    input_size = 1  # params of another kind: their structure tells
  try:
    expected = _init_shapes(cell.init, input_size)
  except TypeError:  # an unhashable (symbolic) input size: nothing cached, nothing checked
    return
  if expected is not None and given != expected[0]:
    got, want = _kind(given), _kind(expected[0])
    if got == want:  # the same type, other fields or leaves: show the trees
      got, want = str(given), str(expected[0])
    hint = MISMATCH_HINTS.get((got, want), "params of another cell?")
    raise TypeError(
      f"params are {got} but the cell {cell.name!r} takes {want} (what its init returns): " + hint
    )
  if expected is None:
    return
  leaves = jax.tree_util.tree_leaves_with_path(params)
  for (path, leaf), shape in zip(leaves, expected[1]):
    if _shape(leaf) != tuple(shape):
      raise ValueError(
        f"params{jax.tree_util.keystr(path)} has shape {_shape(leaf)}; the cell"
        f" {cell.name!r} (hidden size {cell.hidden_size}) expects {tuple(shape)} for"
        f" input_size {input_size}: params of another hidden size?"
      )
