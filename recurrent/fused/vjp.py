"""The fast path's ``custom_vjp``: the forward under ``grad`` keeps little, and the
backward loop leaves the weight gradient to one matmul after it.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size,
G gates.

Differentiating ``lax.scan`` directly accumulates the gradient of ``w_hh`` with one small
``[H, B] @ [B, G*H]`` matmul per step. Here the backward recurrence only keeps each step's
gradient of the recurrent pre-activation ``dz_t [B..., G*H]``, and the weight gradient is
one large matmul after the loop: ``dW_hh = sum_t (h_{t-1} * m)^T dz_t``; the projection's
gradients ``[T, B..., G*H]`` give one matmul for ``w_ih`` and one for the inputs.

Under ``grad`` the projection is one array ``[T, B..., G*H]``, and the loops write over it
instead of keeping stacks of their own. Where the cell declares ``sums_only`` (it uses
projection ``x`` and recurrent pre-activation ``r`` only as their sum, every LSTM gate),
the forward writes each step's ``x + r`` over ``x``, and the backward, which needs only
that sum, writes ``dz_t`` (the gradient of both) over it. Otherwise (the GRU's candidate
gate needs ``r`` apart) the forward stacks ``r`` too, and the backward writes the
projection's gradient over ``x`` and ``dz_t`` over ``r``. Where the cell declares an
``h_host`` (its pointwise maths never reads ``h``; the LSTM's reads ``c`` alone), the
forward does not stack ``h`` either: the backward recomputes each step anyway, and writes
its ``h_t`` over the row of the host's stack it has read. With batch-major outputs the
backward loop reads each step's output gradient from ``[B..., T, H]`` where it lies
instead of from a transposed copy. All of it keeps XLA's temporary buffer small: XLA:CPU
allocates it afresh at every call, and one above glibc's mmap threshold (32 MiB at most)
is page-faulted in again at every call.
"""

import functools

import jax
import jax.numpy as jnp

from recurrent import cell as _cell
from recurrent.fused import layouts as _layouts
from recurrent.fused import loops
from recurrent.fused.layouts import Plan, to_out
from recurrent.fused.loops import index as _index
from recurrent.fused.loops import update_index as _update_index


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recurrence(fast, plan: Plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask):
  """Projects the inputs and runs the recurrence; returns ``(final_carry, ys)``.

  Args:
    fast: the cell's :class:`recurrent.cell.FastPath`.
    plan: the static half of the call, a :class:`Plan`.
    w_ih: ``[I, G*H]``, the cell's ``fast.input_weights(params)``.
    xs: ``[T, B..., I]``.
    in_mask: input dropout mask ``[1, B..., I]`` (or a tuple of G, one per gate), or None.
    w_hh: ``[H, G*H]``, the cell's ``fast.recurrent_weights(params)``.
    extra: ``fast.pointwise_params(params)``, the params the pointwise maths reads.
    carry: the initial carry, leaves ``[B..., H]``.
    valid: bool ``[T, B..., 1]``, or None when every step is valid.
    mask: recurrent dropout mask ``[B..., H]`` whose entries are 0 or one scale, as
      ``recurrent.dropout.masks`` draws them; or None.

  Returns:
    The carry after the last valid step and the outputs ``[T, B..., H]`` (``[B..., T, H]``
    if ``plan.batch_major``).
  """
  return _layouts.forward(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask)


def _steps_apart(unroll) -> bool:
  """Whether each iteration of the gradient's loops runs one step (``unroll`` 1, the
  default). Those loops write over arrays they read, each step reading the row the next one
  needs (the loop's carry materialises it). Where ``lax.scan``'s ``unroll`` puts several
  steps in one iteration, XLA fuses such a read into the next step's kernels, some of them
  after that step's write, and copied the whole ``[T, ...]`` array at every iteration
  (unroll 4-16: 1.15-2.6x the gradient's time on an H200): there the loops write only what
  no later kernel reads."""
  return unroll is not True and unroll <= 1


def _project_rows(dtype, num_gates, w_ih, xs, in_mask):
  """The projection as one array ``[T, B..., G*H]`` (one matmul, as the
  :class:`recurrent.cell.FastPath` promises), and its vjp."""
  if isinstance(in_mask, (tuple, list)):  # a mask per gate: a matmul per gate

    def rows(w, x, m):
      return jnp.concatenate(_cell.project_gates(x, w, m, num_gates, dtype), axis=-1)

  else:

    def rows(w, x, m):
      x = x if m is None else x * m.astype(x.dtype)
      flat = _cell.dot(x.reshape(-1, x.shape[-1]), w, dtype)  # 2-D: no transposes
      return flat.reshape(x.shape[:-1] + flat.shape[-1:])

  return jax.vjp(rows, w_ih, xs, in_mask)


def _host(fast, carry):
  """The declared ``h_host`` field, if the carry has it with ``h``'s shape and dtype."""
  name = fast.h_host
  if name is None or name == "h" or name not in carry._fields:
    return None
  field, h = getattr(carry, name), carry.h
  if field is None or field.dtype != h.dtype or field.shape[field.ndim - h.ndim :] != h.shape:
    return None
  return name


def _recurrence_fwd(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, mask):
  """The forward under ``grad``. Residuals: the carries before every step (less ``h``
  where the backward rebuilds it in the declared ``h_host``'s stack), the initial ``h``
  and the projection ``[T, B..., G*H]``; where the cell declares ``sums_only``, each
  step's ``x + r`` written over ``x``, else a stack of ``r [T, B..., G*H]`` besides."""
  pointwise, dtype, reverse, unroll = fast.pointwise, plan.dtype, plan.reverse, plan.unroll
  num_gates = plan.num_gates
  xp, pull = _project_rows(dtype, num_gates, w_ih, xs, in_mask)
  h_mask = loops.as_mask(mask)
  sums = fast.sums_only and w_ih.dtype == w_hh.dtype
  # Step t reads its row from the loop's carry, writes the sums over it and reads row t + 1
  # of the updated array for the next step. Had it read its own row from the array and
  # written after the math, the write would not depend on the read, and XLA would copy the
  # whole array at every step to keep them apart.
  ahead = -1 if reverse else 1
  split = lambda a: _cell.gate_split(a, num_gates)  # noqa: E731
  apart = _steps_apart(unroll)
  rebuild = apart and _host(fast, carry) is not None

  def body(state, t, valid_t):
    carry, xp, xp_t = state
    hh = _cell.dot(loops.masked_h(carry.h, h_mask), w_hh, dtype)
    if sums and apart:
      xp_t, hh = xp_t + hh, jnp.zeros_like(hh)
      xp = _update_index(xp, xp_t, t, 0)
    elif sums:  # the step's kernels read the sums back, after the write
      xp = _update_index(xp, xp_t + hh, t, 0)
      xp_t, hh = _index(xp, t, 0), jnp.zeros_like(hh)
    new, h = loops.step(pointwise, extra, carry, split(xp_t), split(hh), valid_t)
    own = None if sums else hh
    kept = carry._replace(h=None) if rebuild else carry
    return (new, xp, _index(xp, t + ahead, 0)), (h, (kept, own))  # t + ahead clamped

  first = xp[-1 if reverse else 0]
  (final, xp, _), (ys, (carries, hhs)) = loops.scan_indexed(
    body, (carry, xp, first), valid, xp.shape[0], reverse, unroll
  )
  residuals = (pull, w_hh, extra, carries, carry.h, hhs, xp, valid, mask)
  return (final, to_out(ys, plan.batch_major)), residuals


def _recurrence_bwd(fast, plan, residuals, cotangents):
  pull, w_hh, extra, carries, h_0, hhs, xp, valid, mask = residuals
  pointwise, dtype, reverse, unroll = fast.pointwise, plan.dtype, plan.reverse, plan.unroll
  d_final, d_ys = cotangents
  d_mask = None if mask is None else jnp.zeros_like(mask)
  time_axis = d_ys.ndim - 2 if plan.batch_major else 0
  w_hh_t = w_hh.T
  num_gates = plan.num_gates
  split = lambda a: _cell.gate_split(a, num_gates)  # noqa: E731
  ahead = -1 if reverse else 1  # the forward's direction
  h_mask = loops.as_mask(mask)

  # Each step reads its rows and writes the gradients over them: the projection's over
  # the projection (or the sums), and the recurrent pre-activation's ``dz_t`` over ``r``
  # where there is a stack of ``r`` (with sums the two gradients are one). Step t's row of
  # ``r`` rides in the loop's carry, read the step before: read in the step, XLA:CPU fused
  # the read (at H <= 32) into the bias gradient's sum as well, which need not come before
  # the write of dz_t over the row, and copied the whole stack twice a step (the GRU's
  # gradient took 11x Flax's time at (32, 1000, 16, 32)). The stored
  # h_{t-1} ride in the loop's carry: with a recurrent mask the weight gradient needs
  # (h * m)^T dz, and the loop writes each h_{t-1} * m over h_{t-1}, rather than the
  # product being one more [T, B..., H] buffer after the loop (that buffer took the LSTM's
  # at (32, 100, 128, 256) over glibc's mmap threshold, faulted in at every call). That
  # step reads h_{t-1} the step before, after the write: as for the forward's sums, a
  # write that did not depend on every read of the array would make XLA copy it whole at
  # every step (the GRU's pointwise math reads h_{t-1} too). Where the forward kept no h
  # (rebuild), the stack in the loop's carry is the host's (the LSTM's c): step t reads its
  # row c_{t-1} the step before, and writes its recomputed h_t * m over row t + 1 (read by
  # then) and h_{t-1} * m, the initial h for the first step, over its own row; the loop
  # ends with the stack of h_{t-1} * m that dW_hh needs, as without rebuild.
  rebuild = carries.h is None
  host = fast.h_host if rebuild else "h"
  if rebuild:
    h_first = loops.masked_h(h_0, h_mask).astype(h_0.dtype)  # the first step's h_{t-1}
  # With several steps in an iteration (_steps_apart) the loop neither rebuilds h nor
  # writes h * m: the product is taken after it.
  apart = _steps_apart(unroll)
  masks_in_loop = mask is not None and apart
  dz_over_r = hhs is not None and apart  # else the loop stacks dz_t as its output
  reads_ahead = rebuild or masks_in_loop  # the loop carries the next step's row

  def body(acc, t, inputs):
    d_carry, d_extra, dxs, dzs, hs, row, hh_t = acc
    carry, valid_t = inputs
    if rebuild:  # row: the host's, read the step before, after that step's write. The
      # step does not read h but holds it past a sequence's end: the initial h is right
      # where the held steps come first (reverse), and meets a zero dz_t where they follow.
      carry = carry._replace(h=h_0, **{host: row})
    elif not masks_in_loop:
      carry = carry._replace(h=_index(hs, t, 0))
    else:  # row: h_t, read the step before, after that step's write
      hs = _update_index(hs, loops.masked_h(row, h_mask), t, 0)
      carry = carry._replace(h=row)
    xp_t = _index(dxs, t, 0)
    if hhs is None:
      hh_t = jnp.zeros_like(xp_t)
    elif not dz_over_r:
      hh_t = _index(dzs, t, 0)  # else read the step before
    dy = _index(d_ys, t, time_axis)
    (new, _), vjp = jax.vjp(
      lambda e, c, x, r: loops.step(pointwise, e, c, x, r, valid_t),
      extra, carry, split(xp_t), split(hh_t),
    )  # fmt: skip
    if rebuild:  # h_t over the row the step after t has read; h_{-1} over this step's,
      # which the step before t (next in this loop) overwrites in turn, but for the first.
      # Written at every step: one write after the loop made XLA copy the whole stack.
      hs = _update_index(hs, loops.masked_h(new.h, h_mask).astype(hs.dtype), t + ahead, 0)
      hs = _update_index(hs, h_first, t, 0)
    de, dc, dx, dz = vjp((d_carry, dy))
    dz = jnp.concatenate(dz, axis=-1)
    dh = _cell.dot(dz, w_hh_t, dtype)
    dc = dc._replace(h=dc.h + loops.masked_h(dh, h_mask))
    dxs = _update_index(dxs, jnp.concatenate(dx, axis=-1).astype(dxs.dtype), t, 0)
    if dz_over_r:
      dzs = _update_index(dzs, dz.astype(dzs.dtype), t, 0)
    row = _index(hs, t - ahead, 0) if reads_ahead else None  # clamped at the end
    hh_t = _index(dzs, t - ahead, 0) if dz_over_r else None
    dz_out = None if dz_over_r or hhs is None else dz.astype(hhs.dtype)
    return (dc, jax.tree.map(jnp.add, d_extra, de), dxs, dzs, hs, row, hh_t), dz_out

  zeros_extra = jax.tree.map(jnp.zeros_like, extra)
  stack = getattr(carries, host)
  last = 0 if reverse else -1  # the backward's first step
  first = stack[last] if reads_ahead else None
  first_hh = hhs[last] if dz_over_r else None
  (d_carry, d_extra, dxs, dzs, hs, *_), dz_stack = loops.scan_indexed(
    body,
    (d_final, zeros_extra, xp, hhs, stack, first, first_hh),
    (carries._replace(**{host: None}), valid),
    xp.shape[0],
    not reverse,
    unroll,
  )
  if dz_stack is not None:
    dzs = dz_stack
  elif dzs is None:  # sums: the projection's gradient is dz
    dzs = dxs
  if not (rebuild or masks_in_loop):
    hs = loops.masked_h(hs, h_mask)
  hidden = w_hh.shape[0]
  hm = hs.reshape(-1, hidden)  # h, or h * m
  d_w_hh = _cell.dot(hm.T, dzs.reshape(-1, dzs.shape[-1]), dtype).astype(w_hh.dtype)
  d_w_ih, d_xs, d_in_mask = pull(dxs)
  return d_w_ih, d_xs, d_in_mask, d_w_hh, d_extra, d_carry, None, d_mask


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
