"""The pieces every loop of the fast path shares: holding finished sequences, the
recurrent mask as keep-and-scale, indexing without wrap-around, a counted ``lax.scan``.

Shape legend: B batch (any leading dims, or none), T time, H hidden size, G gates.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import cell as _cell


def hold(valid_t, new, old, outputs):
  """Where ``valid_t [B..., 1]`` is False (past a sequence's end): the old carry and zero
  outputs. ``valid_t=None`` means every sequence is still running."""
  if valid_t is None:
    return new, outputs
  new = jax.tree.map(lambda n, o: jnp.where(valid_t, n, o), new, old)
  return new, jax.tree.map(lambda y: jnp.where(valid_t, y, jnp.zeros_like(y)), outputs)


def varying_axes(*trees) -> frozenset:
  """The ``shard_map`` mesh axes any leaf of ``trees`` varies over (its type's manual axis
  type; ``vma`` in JAX before 0.10); none outside ``shard_map`` or without ``check_vma``."""
  axes = set()
  for leaf in jax.tree.leaves(trees):
    aval = jax.typeof(leaf) if hasattr(jax, "typeof") else None
    mat = getattr(aval, "mat", None)
    axes.update(mat.varying if mat is not None else getattr(aval, "vma", ()))
  return frozenset(axes)


def vary_like(tree, axes: frozenset):
  """``tree`` with every leaf varying over the mesh ``axes`` too, so that a loop's carry
  has the type its body returns where the inputs vary over a ``shard_map`` axis (with
  ``check_vma``): a zero carry does not vary, a body reading the inputs does."""
  if not axes:
    return tree

  def cast(leaf):
    # Sorted: the same order in every process, whatever the set's.
    missing = tuple(sorted(a for a in axes if a not in varying_axes(leaf)))
    if not missing:
      return leaf
    if hasattr(jax.lax, "pcast"):
      return jax.lax.pcast(leaf, missing, to="varying")
    return jax.lax.pvary(leaf, missing)  # JAX before pcast

  return jax.tree.map(cast, tree)


def step(pointwise, extra, carry, xp_t, hh, valid_t):
  """One step after the recurrent matmul."""
  new, h, _ = pointwise(extra, carry, xp_t, hh)
  return hold(valid_t, new, carry, h)


class Mask(NamedTuple):
  """A recurrent dropout mask whose entries are 0 or one ``scale`` (as
  ``recurrent.dropout.masks`` draws them), held as which units it keeps, bool ``[B..., H]``,
  and that scale: ``h * mask`` as ``where(keep, h, 0) * scale`` reads a quarter of the
  bytes at every step."""

  keep: jax.Array
  scale: jax.Array


def as_mask(mask) -> Mask | None:
  """``mask [B..., H]`` (0 or one scale, or None) as a :class:`Mask`."""
  return None if mask is None else Mask(mask != 0, jnp.max(mask))


def masked_h(carry_h, mask: Mask | None):
  if mask is None:
    return carry_h
  return jnp.where(mask.keep, carry_h, jnp.zeros_like(carry_h)) * mask.scale


# Slicing at the step index of :func:`scan_indexed`, never negative: without the wrap-around
# of negative indices (an add and a select) XLA:CPU compiles one kernel fewer per loop.
index = functools.partial(
  jax.lax.dynamic_index_in_dim, keepdims=False, allow_negative_indices=False
)
update_index = functools.partial(jax.lax.dynamic_update_index_in_dim, allow_negative_indices=False)
slice_ = functools.partial(jax.lax.dynamic_slice_in_dim, allow_negative_indices=False)
update_slice = functools.partial(jax.lax.dynamic_update_slice_in_dim, allow_negative_indices=False)


def scan_indexed(body, init, xs, length: int, reverse: bool, unroll=1):
  """``lax.scan`` whose ``body(carry, t, x) -> (carry, y)`` also gets the step index t.

  t is counted in the carry rather than scanned over ``arange(length)``: that index array
  and the clamped slice of it at every step would be two more XLA:CPU kernels to compile.
  """

  # lax.scan takes a length only if it is a constant (with a symbolic one, jax.export
  # fails), so over no xs a symbolic length gets an empty [T, 0] array to scan instead.
  empty = not jax.tree.leaves(xs)
  placeholder = empty and not isinstance(length, int)
  given = xs

  def counted(state, x):
    carry, t = state
    carry, y = body(carry, t, given if placeholder else x)
    return (carry, t + (-1 if reverse else 1)), y

  if placeholder:
    xs = jnp.zeros((length, 0), bool)
  start = jnp.asarray(length - 1 if reverse else 0, jnp.int32)
  (carry, _), ys = jax.lax.scan(
    counted, (init, start), xs, length=length if empty and not placeholder else None,
    reverse=reverse, unroll=unroll,
  )  # fmt: skip
  return carry, ys


def recur(pointwise, dtype, w_hh, extra, mask, carry, xp_t, valid_t):
  """One whole step: ``(new_carry, h)``."""
  hh = _cell.dot(masked_h(carry.h, mask), w_hh, dtype)
  return step(pointwise, extra, carry, xp_t, _cell.gate_split(hh, len(xp_t)), valid_t)
