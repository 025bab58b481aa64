"""The forward alone (not under ``grad``): three layouts of the same loop.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size,
G gates.

Each step's output is written over the first gate's projection, which no later step
reads, instead of into a stack of its own; for a long or wide sequence an outer loop
projects k steps at a time (:func:`recurrent.fused.policy.chunk_rule`), so the temporary
buffer holds one chunk's projection instead of all T steps'. The layouts:

* ``'batch'``: carries ``[B..., H]``, the projection ``[T, B..., H]`` per gate;
* ``'feature'``: every ``[B..., N]`` array as ``[N, B]`` (B flattened), the recurrent
  matmul as ``w_hh^T @ h`` and the projection and outputs as ``[H, T, B]``;
* ``'unbatched'``: a batch of one sequence without its batch dims, carries ``[H]``.

Which one runs is :mod:`recurrent.fused.policy`'s choice, or the caller's.
"""

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from recurrent import cell as _cell
from recurrent.fused import loops
from recurrent.fused import policy as _policy


class Plan(NamedTuple):
  """The static half of a fast-path call.

  Attributes:
    num_gates: G.
    reverse, unroll: as in ``lax.scan``.
    dtype: the matmul operand dtype, or None.
    batch_major: outputs ``[B..., T, H]`` rather than ``[T, B..., H]``.
    layout, projection_chunk: ``Options.layout`` and ``Options.projection_chunk``.
  """

  num_gates: int
  reverse: bool
  unroll: Any
  dtype: Any
  batch_major: bool
  layout: str = "auto"
  projection_chunk: Any = "auto"


def to_out(ys, batch_major: bool):
  """Time-major ``ys [T, B..., H]`` as returned."""
  return jnp.moveaxis(ys, 0, -2) if batch_major else ys


class Layout(NamedTuple):
  """How the forward alone lays out its arrays: ``recur(carry, xp_t, valid_t) -> (carry,
  h)`` one step, ``project(xs) -> xp`` with time on ``axis``, ``to_out(ys)`` the outputs
  as returned, ``carry``, ``xs`` and ``valid`` in this layout and ``final(carry)`` the
  final carry back as returned."""

  recur: Callable
  project: Callable
  to_out: Callable
  axis: int
  carry: Any
  xs: jax.Array
  valid: jax.Array | None
  final: Callable


def _batch(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask) -> Layout:
  return Layout(
    functools.partial(loops.recur, fast.pointwise, plan.dtype, w_hh, extra, loops.as_mask(mask)),
    lambda x: _cell.project_gates(x, w_ih, in_mask, plan.num_gates, plan.dtype),
    lambda y: to_out(y, plan.batch_major),
    0, carry, xs, valid, lambda final: final,
  )  # fmt: skip


def _project_fm(xs, w_ih_t, mask, num_gates: int, dtype) -> tuple:
  """The projection feature-major: ``xs [T, B, I]`` (``mask [1, B, I]``, or G of them) ->
  G arrays ``[H, T, B]``, as ``w_ih^T @ (xs * mask)^T`` with ``w_ih_t [G*H, I]``
  materialised: XLA:CPU runs that form in its matmul library, and the transposed product
  it would otherwise fold the transposes into about 1.5x slower."""
  steps, batch, _ = xs.shape
  flat_t = lambda m: (xs if m is None else xs * m.astype(xs.dtype)).reshape(steps * batch, -1).T  # noqa: E731
  if isinstance(mask, (tuple, list)):
    xs_t = [flat_t(m) for m in mask]
  else:
    xs_t = [flat_t(mask)] * num_gates  # one masked copy, shared by the gates
  return tuple(
    _cell.dot(w, x_t, dtype, w.dtype).reshape(-1, steps, batch)
    for w, x_t in zip(jnp.split(w_ih_t, num_gates), xs_t)
  )


def _from_fm(ys, batch_shape: tuple, batch_major: bool):
  """``[H, T, B]`` -> ``[B..., T, H]`` (``batch_major``) or ``[T, B..., H]``."""
  hidden, steps = ys.shape[:2]
  if batch_major:
    return jnp.transpose(ys, (2, 1, 0)).reshape(batch_shape + (steps, hidden))
  return jnp.transpose(ys, (1, 2, 0)).reshape((steps,) + batch_shape + (hidden,))


def _feature(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask) -> Layout:
  batch_shape = carry.h.shape[:-1]
  batch, num_gates = math.prod(batch_shape), plan.num_gates
  fm = lambda a: jnp.broadcast_to(a, batch_shape + a.shape[-1:]).reshape(batch, -1).T  # noqa: E731
  w_hh_t, mask_t = w_hh.T, None if mask is None else loops.as_mask(fm(mask))
  step = jax.vmap(fast.pointwise, in_axes=(None, 1, 1, 1), out_axes=1)

  def recur(carry, xp_t, valid_t):
    hh = _cell.dot(w_hh_t, loops.masked_h(carry.h, mask_t), plan.dtype, w_hh_t.dtype)
    return loops.step(step, extra, carry, xp_t, tuple(jnp.split(hh, num_gates)), valid_t)

  w_ih_t = jax.lax.optimization_barrier(w_ih.T)
  # The input masks broadcast against xs [T, B..., I], over time.
  in_fm = lambda m: jnp.broadcast_to(m, (1,) + xs.shape[1:]).reshape(1, batch, -1)  # noqa: E731
  in_mask = None if in_mask is None else jax.tree.map(in_fm, in_mask)
  if valid is not None:
    valid = jnp.swapaxes(valid.reshape(valid.shape[:1] + (batch, 1)), 1, 2)  # [T, 1, B]
  return Layout(
    recur,
    lambda x: _project_fm(x, w_ih_t, in_mask, num_gates, plan.dtype),
    lambda y: _from_fm(y, batch_shape, plan.batch_major),
    1, jax.tree.map(fm, carry), xs.reshape(xs.shape[:1] + (batch, -1)), valid,
    lambda final: jax.tree.map(lambda a: a.T.reshape(carry.h.shape), final),
  )  # fmt: skip


def _unbatched(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask) -> Layout:
  """XLA:CPU then needs no ``[1, H] -> [H, 1]`` kernel before each step's matmul (a
  bitcast now), nor a relayout copy of each gate's projection before the loop."""
  batch_shape = carry.h.shape[:-1]
  drop = lambda a: a.reshape(a.shape[len(batch_shape) :])  # noqa: E731  [B..., N] -> [N]
  timed = lambda a: a.reshape(a.shape[:1] + a.shape[1 + len(batch_shape) :])  # noqa: E731

  def out(ys):  # [T, H] -> [B..., T, H] (batch_major) or [T, B..., H]
    steps, hidden = ys.shape
    batch_major = plan.batch_major
    return ys.reshape(batch_shape + ys.shape if batch_major else (steps,) + batch_shape + (hidden,))

  mask = None if mask is None else loops.as_mask(drop(mask))
  in_mask = None if in_mask is None else jax.tree.map(timed, in_mask)
  return Layout(
    functools.partial(loops.recur, fast.pointwise, plan.dtype, w_hh, extra, mask),
    lambda x: _cell.project_gates(x, w_ih, in_mask, plan.num_gates, plan.dtype),
    out, 0, jax.tree.map(drop, carry), timed(xs), None if valid is None else timed(valid),
    lambda final: jax.tree.map(lambda a: a.reshape(batch_shape + a.shape), final),
  )  # fmt: skip


LAYOUTS = {"batch": _batch, "feature": _feature, "unbatched": _unbatched}


def _primal(recur, carry, xp, valid, axis, reverse, unroll):
  """``(final_carry, ys, h_dtype)`` without residuals: each step's output is written over
  the first gate's projection, which no later step reads, so there is no output stack of
  its own (nor its zero fill). ``recur(carry, xp_t, valid_t) -> (carry, h)``; ``xp`` and
  ``ys`` have time on ``axis``. ``ys`` has the carry's dtype; the caller casts it to
  ``h_dtype`` (bfloat16 with ``dtype=bfloat16``)."""
  h_dtype = []  # seen while tracing the body

  def body(state, t, valid_t):
    carry, buf = state
    xp_t = tuple(loops.index(a, t, axis) for a in (buf,) + xp[1:])
    new, h = recur(carry, xp_t, valid_t)
    h_dtype[:] = [h.dtype]
    return (new, loops.update_index(buf, h.astype(buf.dtype), t, axis)), None

  (final, ys), _ = loops.scan_indexed(
    body, (carry, xp[0]), valid, xp[0].shape[axis], reverse, unroll
  )
  return final, ys, h_dtype[0]


def _in_chunks(run, lay, chunk, ys, axis, reverse):
  """``run(lay.carry, lay.project(lay.xs), lay.valid) -> (final, ys, h_dtype)``, ``ys``
  laid out by ``lay.to_out``. With ``chunk``, an outer loop over chunks of that many
  steps, each projecting its steps, running them and writing its outputs in place into
  ``ys``, the zero outputs as returned (time on ``axis``): no ``[T, ...]`` stack but that."""
  if chunk is None:
    final, ys, h_dtype = run(lay.carry, lay.project(lay.xs), lay.valid)
    return final, lay.to_out(ys), h_dtype
  h_dtype = []  # seen while tracing the body

  def body(state, index, _):
    carry, ys = state
    take = lambda a: loops.slice_(a, index * chunk, chunk)  # noqa: E731
    valid = None if lay.valid is None else take(lay.valid)
    carry, y, dtype_c = run(carry, lay.project(take(lay.xs)), valid)
    h_dtype[:] = [dtype_c]
    y = lay.to_out(y).astype(ys.dtype)
    return (carry, loops.update_slice(ys, y, index * chunk, axis)), None

  (final, ys), _ = loops.scan_indexed(
    body, (lay.carry, ys), None, lay.xs.shape[0] // chunk, reverse
  )
  return final, ys, h_dtype[0]


def forward(fast, plan: Plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask):
  """The forward alone: ``(final_carry, ys)``, arguments as :func:`recurrent.fused.recurrence`."""
  num_steps = xs.shape[0]
  if (isinstance(num_steps, int) and num_steps == 0) or w_ih.dtype != carry.h.dtype:
    # nothing to write the outputs over: a plain loop
    rec = functools.partial(
      loops.recur, fast.pointwise, plan.dtype, w_hh, extra, loops.as_mask(mask)
    )
    xp = _cell.project_gates(xs, w_ih, in_mask, plan.num_gates, plan.dtype)
    final, ys = jax.lax.scan(
      lambda c, inputs: rec(c, *inputs), carry, (xp, valid), reverse=plan.reverse,
      unroll=plan.unroll,
    )  # fmt: skip
    return final, to_out(ys, plan.batch_major)
  batch_shape = carry.h.shape[:-1]
  kind = _policy.layout(plan.layout, batch_shape, w_hh.shape[1])
  lay = LAYOUTS[kind](fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask)
  step_bytes = math.prod(batch_shape) * w_hh.shape[1] * w_ih.dtype.itemsize
  chunk = _policy.chunk(plan.projection_chunk, num_steps, step_bytes)
  zeros = None
  if chunk is not None:
    zeros = to_out(jnp.zeros(xs.shape[:-1] + w_hh.shape[:1], carry.h.dtype), plan.batch_major)
    zeros = loops.vary_like(zeros, loops.varying_axes(xs, carry))  # the loop writes over it
  final, ys, h_dtype = _in_chunks(
    functools.partial(_primal, lay.recur, axis=lay.axis, reverse=plan.reverse, unroll=plan.unroll),
    lay, chunk, zeros, len(batch_shape) if plan.batch_major else 0, plan.reverse,
  )  # fmt: skip
  return lay.final(final), ys.astype(h_dtype)
