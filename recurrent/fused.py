"""The recurrence with a hand-written backward pass, as cuDNN's and oneDNN's RNN kernels do.

Shape legend: B batch (any leading dims, or none), T time, H hidden size, G gates.

Differentiating ``lax.scan`` directly accumulates the gradient of ``w_hh`` with one small
``[H, B] @ [B, G*H]`` matmul per step. Here the backward recurrence only keeps each step's
gradient of the recurrent pre-activation ``dz_t [B..., G*H]``, and the weight gradient is
one large matmul after the loop: ``dW_hh = sum_t (h_{t-1} * m)^T dz_t``; the projection's
gradients ``[T, B..., G*H]`` give one matmul for ``w_ih`` and one for the inputs.

Under ``grad`` the projection is one array ``[T, B..., G*H]``, and the loops write over it
instead of keeping stacks of their own. Where the cell uses projection ``x`` and recurrent
pre-activation ``r = (h_{t-1} * m) @ w_hh`` only as their sum (every LSTM gate), the
forward writes each step's ``x + r`` over ``x``, and the backward, which needs only that
sum, writes ``dz_t`` (the gradient of both) over it. Otherwise (the GRU's candidate gate
needs ``r`` apart) the forward stacks ``r`` too, and the backward writes the projection's
gradient over ``x`` and ``dz_t`` over ``r``. Where the cell's pointwise math never reads
``h_{t-1}`` (the LSTM's reads ``c`` alone), the forward does not stack ``h`` either: the
backward recomputes each step anyway, and writes its ``h_t`` over the row of ``c_t`` it has
read. With batch-major outputs the backward loop
reads each step's output gradient from ``[B..., T, H]`` where it lies instead of from a
transposed copy. All of it keeps XLA's temporary buffer small: XLA:CPU allocates it
afresh at every call, and one above glibc's mmap threshold (32 MiB at most) is
page-faulted in again at every call (``benchmarks/matmul_floor.py`` prints both). At
(B, T, I, H) = (32, 100, 128, 256) the forward + backward buffer is 16.7 MB (LSTM) and
23.2 MB (GRU), where Flax's needs 47.6 and 35.8 MB
(``benchmarks/results/matmul_floor_2026-11-27_zen4.md``).

The forward alone (not under ``grad``) writes each step's output over the first gate's
projection, which no later step reads, instead of into a stack of its own; and for a long
or wide sequence it runs in chunks of time steps (:func:`projection_chunk`): an outer loop
projects k steps, runs them and writes their outputs into the final array, so the temporary
buffer holds one chunk's projection instead of all T steps'. At (64, 200, 256, 512) the
LSTM forward's buffer is 19.8 MB and nothing is faulted in, where Flax's 33.8 MB buffer is
faulted in at every call (``benchmarks/results/matmul_floor_2026-11-26_run3.md``). For a
batch of 16 to 32 and G*H >= 3072 on the CPU the forward alone also runs feature-major
(:func:`feature_major`): carries ``[H, B]`` and the recurrent matmul ``w_hh^T @ h``, which
XLA:CPU runs faster there than ``h @ w_hh``. It computes the cell's projection
itself, as ``w_ih^T @ (x * mask)^T``: ``cell.project`` is ``(x * mask) @ w_ih`` by the
:class:`recurrent.Cell` contract. For a batch of one sequence the forward alone runs on
arrays without their batch dims, carries ``[H]`` (:func:`unbatched`).

It serves any cell whose step is ``hh = (h * m) @ w_hh`` followed by pointwise math
(``cell.pointwise``): the LSTM and the reset-after GRU. The driver falls back to plain
autodiff for the others (reset-before GRU, one recurrent mask per gate, ``trace``).
"""

import functools
import math
from typing import Any, Callable, NamedTuple

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


def _step(pointwise, extra, carry, xp_t, hh, valid_t):
  """One step after the recurrent matmul."""
  new, h, _ = pointwise(extra, carry, xp_t, hh)
  return hold(valid_t, new, carry, h)


class _Mask(NamedTuple):
  """A recurrent dropout mask whose entries are 0 or one ``scale`` (as
  ``recurrent.dropout.masks`` draws them), held as which units it keeps, bool ``[B..., H]``,
  and that scale: ``h * mask`` as ``where(keep, h, 0) * scale`` reads a quarter of the
  bytes at every step. The LSTM's forward with both dropouts at (256, 50, 64, 128) took
  1.15x its time without in ``benchmarks/lstm_cpu.py`` run 15 and 1.05x in run 16."""

  keep: jax.Array
  scale: jax.Array


def _as_mask(mask) -> _Mask | None:
  """``mask [B..., H]`` (0 or one scale, or None) as a :class:`_Mask`."""
  return None if mask is None else _Mask(mask != 0, jnp.max(mask))


def _masked_h(carry_h, mask: _Mask | None):
  if mask is None:
    return carry_h
  return jnp.where(mask.keep, carry_h, jnp.zeros_like(carry_h)) * mask.scale


# Slicing at the step index of :func:`_scan_indexed`, never negative: without the wrap-around
# of negative indices (an add and a select) XLA:CPU compiles one kernel fewer per loop.
_index = functools.partial(
  jax.lax.dynamic_index_in_dim, keepdims=False, allow_negative_indices=False
)
_update_index = functools.partial(jax.lax.dynamic_update_index_in_dim, allow_negative_indices=False)
_slice = functools.partial(jax.lax.dynamic_slice_in_dim, allow_negative_indices=False)
_update_slice = functools.partial(jax.lax.dynamic_update_slice_in_dim, allow_negative_indices=False)


def _scan_indexed(body, init, xs, length: int, reverse: bool, unroll=1):
  """``lax.scan`` whose ``body(carry, t, x) -> (carry, y)`` also gets the step index t.

  t is counted in the carry rather than scanned over ``arange(length)``: that index array
  and the clamped slice of it at every step would be two more XLA:CPU kernels to compile.
  """

  def counted(state, x):
    carry, t = state
    carry, y = body(carry, t, x)
    return (carry, t + (-1 if reverse else 1)), y

  start = jnp.asarray(length - 1 if reverse else 0, jnp.int32)
  (carry, _), ys = jax.lax.scan(
    counted, (init, start), xs, length=length, reverse=reverse, unroll=unroll
  )
  return carry, ys


def _recur(pointwise, dtype, w_hh, extra, mask, carry, xp_t, valid_t):
  """One whole step: ``(new_carry, h)``."""
  hh = _cell.dot(_masked_h(carry.h, mask), w_hh, dtype)
  return _step(pointwise, extra, carry, xp_t, _cell.gate_split(hh, len(xp_t)), valid_t)


def _primal(recur, carry, xp, valid, axis, reverse, unroll):
  """``(final_carry, ys, h_dtype)`` without residuals: each step's output is written over
  the first gate's projection, which no later step reads, so there is no output stack of
  its own (nor its zero fill). ``recur(carry, xp_t, valid_t) -> (carry, h)``; ``xp`` and
  ``ys`` have time on ``axis``. ``ys`` has the carry's dtype; the caller casts it to
  ``h_dtype`` (bfloat16 with ``dtype=bfloat16``)."""
  h_dtype = []  # seen while tracing the body

  def body(state, t, valid_t):
    carry, buf = state
    xp_t = tuple(_index(a, t, axis) for a in (buf,) + xp[1:])
    new, h = recur(carry, xp_t, valid_t)
    h_dtype[:] = [h.dtype]
    return (new, _update_index(buf, h.astype(buf.dtype), t, axis)), None

  (final, ys), _ = _scan_indexed(body, (carry, xp[0]), valid, xp[0].shape[axis], reverse, unroll)
  return final, ys, h_dtype[0]


def feature_major(batch: int, width: int) -> bool:
  """Whether the forward alone runs feature-major: carries ``[H, B]``, the recurrent
  matmul as ``w_hh^T [G*H, H] @ h [H, B]`` and the projections as ``[H, T, B]``.

  On XLA:CPU the usual ``h [B, H] @ w_hh`` can run well below the matmul peak when the
  batch is small, and the transposed product puts the large dimension G*H where the batch
  was. How much that pays depends on the host. Feature-major forward time over the usual
  (``benchmarks/feature_major.py``), LSTM and GRU:

  * 2-vCPU Zen 4 host, jnp.dot peak 182-196 GFLOP/s, the kind PERFORMANCE-NOTES describes
    (``benchmarks/results/feature_major_2026-11-26_zen4.md``): 0.81-0.89 at H=1024 and
    B=16-32, but 0.91-1.16 at B=8 or 48, 0.95-1.04 at H=768 and 0.98-1.60 at H=256-512;
  * a slower 2-vCPU EPYC host, jnp.dot peak 108-116 GFLOP/s
    (``benchmarks/results/feature_major_2026-11-26.md``): 0.44-0.52 at H=1024 (B=16-32),
    0.60-0.99 at H=512 (B=8-48), 0.85-1.04 at H=256 (B=16-48).

  Hence only where it paid on both: B from 16 to 32 and a matmul ``width`` G*H of at
  least 3072 (the LSTM from H=768, the GRU from H=1024), on the CPU only.
  """
  return jax.default_backend() == "cpu" and 16 <= batch <= 32 and width >= 3072


def _project_fm(xs, w_ih_t, mask, num_gates: int, dtype) -> tuple:
  """``cell.project`` feature-major: ``xs [T, B, I]`` (``mask [1, B, I]``, or G of them) ->
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


def _in_chunks(run, lay, chunk, ys, axis, reverse):
  """``run(lay.carry, lay.project(lay.xs), lay.valid) -> (final, ys, h_dtype)``, ``ys``
  laid out by ``lay.to_out``. With ``chunk`` (:func:`projection_chunk`), an outer loop over
  chunks of that many steps, each projecting its steps, running them and writing its
  outputs in place into ``ys``, the zero outputs as returned (time on ``axis``): no
  ``[T, ...]`` stack but that."""
  if chunk is None:
    final, ys, h_dtype = run(lay.carry, lay.project(lay.xs), lay.valid)
    return final, lay.to_out(ys), h_dtype
  h_dtype = []  # seen while tracing the body

  def body(state, index, _):
    carry, ys = state
    take = lambda a: _slice(a, index * chunk, chunk)  # noqa: E731
    valid = None if lay.valid is None else take(lay.valid)
    carry, y, dtype_c = run(carry, lay.project(take(lay.xs)), valid)
    h_dtype[:] = [dtype_c]
    y = lay.to_out(y).astype(ys.dtype)
    return (carry, _update_slice(ys, y, index * chunk, axis)), None

  (final, ys), _ = _scan_indexed(body, (lay.carry, ys), None, lay.xs.shape[0] // chunk, reverse)
  return final, ys, h_dtype[0]


# The forward alone runs in chunks of time steps when its stacked projection exceeds this
# many bytes (XLA:CPU only, see projection_chunk), each chunk about CHUNK_BYTES.
CHUNK_ABOVE = 32 * 2**20
CHUNK_BYTES = 8 * 2**20


def projection_chunk(num_steps: int, step_bytes: int) -> int | None:
  """How many steps the forward projects at a time: None (all at once) or a divisor of T.

  XLA:CPU allocates a program's temporary buffer afresh at every call, and glibc maps one
  above its mmap threshold (32 MiB at most) fresh from the kernel, so it is page-faulted
  in again at every call. The stacked projection ``[T, B..., G*H]`` is most of a forward's
  buffer; projecting ``k`` steps at a time inside an outer loop reuses one chunk's buffer.
  ``step_bytes``: one step's projection, ``B * G * H * itemsize``. Chunks are the largest
  divisor of T that keeps a chunk under ``CHUNK_BYTES``, if that is at least half of it
  (else None); on other backends, None.
  """
  if jax.default_backend() != "cpu" or num_steps * step_bytes <= CHUNK_ABOVE:
    return None
  most = max(1, CHUNK_BYTES // step_bytes)
  chunk = max(k for k in range(1, min(most, num_steps) + 1) if num_steps % k == 0)
  return chunk if 2 * chunk >= most else None


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4, 5, 6))
def recurrence(
  pointwise, project, reverse, unroll, dtype, batch_major, chunk, inputs, w_hh, extra, carry,
  valid, mask,
):  # fmt: skip
  """Projects the inputs and runs the recurrence; returns ``(final_carry, ys)``.

  Args:
    pointwise: ``cell.pointwise(extra, carry, xp_t, hh) -> (carry, h, gates)``.
    project: ``cell.project(params, xs, mask) -> xp``, a tuple of G arrays ``[T, B..., H]``.
    reverse, unroll: as in ``lax.scan``.
    dtype: matmul operand dtype, or None.
    batch_major: return the outputs as ``[B..., T, H]``. The backward loop then reads
      each step's output gradient from that layout instead of from a transposed copy,
      one buffer fewer.
    chunk: None, or k dividing T (:func:`projection_chunk`): the forward, when not
      differentiated, projects and runs k steps at a time. Under ``grad`` the whole
      projection is kept for the backward pass anyway.
    inputs: ``project``'s arguments ``(params, xs [T, B..., I], input_mask or None)``;
      the feature-major forward projects with ``params.w_ih`` itself.
    w_hh: ``[H, G*H]``.
    extra: ``cell.pointwise_params(params)``, the params the pointwise math uses.
    carry: the initial carry, leaves ``[B..., H]``.
    valid: bool ``[T, B..., 1]``, or None when every step is valid.
    mask: recurrent dropout mask ``[B..., H]`` whose entries are 0 or one scale, as
      ``recurrent.dropout.masks`` draws them; or None.

  Returns:
    The carry after the last valid step and the outputs ``[T, B..., H]`` (``[B..., T, H]``
    if ``batch_major``).
  """
  params, xs, input_mask = inputs
  if xs.shape[0] == 0 or params.w_ih.dtype != carry.h.dtype:  # nothing to write over
    recur = functools.partial(_recur, pointwise, dtype, w_hh, extra, _as_mask(mask))
    body = lambda c, inputs: recur(c, *inputs)  # noqa: E731
    final, ys = jax.lax.scan(body, carry, (project(*inputs), valid), reverse=reverse, unroll=unroll)
    return final, _layout(ys, batch_major)
  batch_shape = carry.h.shape[:-1]
  if feature_major(math.prod(batch_shape), w_hh.shape[1]):
    lay = _feature_major_layout(
      pointwise, dtype, batch_major, inputs, w_hh, extra, carry, valid, mask
    )
  elif unbatched(batch_shape):
    lay = _unbatched_layout(
      pointwise, project, dtype, batch_major, inputs, w_hh, extra, carry, valid, mask
    )
  else:
    lay = _Layout(
      functools.partial(_recur, pointwise, dtype, w_hh, extra, _as_mask(mask)),
      lambda x: project(params, x, input_mask),
      lambda y: _layout(y, batch_major),
      0, carry, xs, valid, lambda final: final,
    )  # fmt: skip
  zeros = None
  if chunk is not None:
    zeros = _layout(jnp.zeros(xs.shape[:-1] + w_hh.shape[:1], carry.h.dtype), batch_major)
  final, ys, h_dtype = _in_chunks(
    functools.partial(_primal, lay.recur, axis=lay.axis, reverse=reverse, unroll=unroll),
    lay, chunk, zeros, len(batch_shape) if batch_major else 0, reverse,
  )  # fmt: skip
  return lay.final(final), ys.astype(h_dtype)


class _Layout(NamedTuple):
  """How :func:`recurrence`'s forward alone lays out its arrays: ``recur(carry, xp_t,
  valid_t) -> (carry, h)`` one step, ``project(xs) -> xp`` with time on ``axis``,
  ``to_out(ys)`` the outputs as returned, ``carry``, ``xs`` and ``valid`` in this layout
  and ``final(carry)`` the final carry back as returned."""

  recur: Callable
  project: Callable
  to_out: Callable
  axis: int
  carry: Any
  xs: jax.Array
  valid: jax.Array | None
  final: Callable


def _feature_major_layout(pointwise, dtype, batch_major, inputs, w_hh, extra, carry, valid, mask):
  """The feature-major :class:`_Layout` (:func:`feature_major`): every ``[B..., N]`` array
  as ``[N, B]``, B flattened, and the projection and outputs as ``[H, T, B]``."""
  params, xs, input_mask = inputs
  batch_shape = carry.h.shape[:-1]
  batch, num_gates = math.prod(batch_shape), w_hh.shape[1] // carry.h.shape[-1]
  fm = lambda a: jnp.broadcast_to(a, batch_shape + a.shape[-1:]).reshape(batch, -1).T  # noqa: E731
  w_hh_t, mask_t = w_hh.T, None if mask is None else _as_mask(fm(mask))
  step = jax.vmap(pointwise, in_axes=(None, 1, 1, 1), out_axes=1)

  def recur(carry, xp_t, valid_t):
    hh = _cell.dot(w_hh_t, _masked_h(carry.h, mask_t), dtype, w_hh_t.dtype)
    return _step(step, extra, carry, xp_t, tuple(jnp.split(hh, num_gates)), valid_t)

  w_ih_t = jax.lax.optimization_barrier(params.w_ih.T)
  # The input masks broadcast against xs [T, B..., I], over time.
  in_fm = lambda m: jnp.broadcast_to(m, (1,) + xs.shape[1:]).reshape(1, batch, -1)  # noqa: E731
  in_mask = None if input_mask is None else jax.tree.map(in_fm, input_mask)
  if valid is not None:
    valid = jnp.swapaxes(valid.reshape(valid.shape[:1] + (batch, 1)), 1, 2)  # [T, 1, B]
  return _Layout(
    recur,
    lambda x: _project_fm(x, w_ih_t, in_mask, num_gates, dtype),
    lambda y: _from_fm(y, batch_shape, batch_major),
    1, jax.tree.map(fm, carry), xs.reshape(xs.shape[:1] + (batch, -1)), valid,
    lambda final: jax.tree.map(lambda a: a.T.reshape(carry.h.shape), final),
  )  # fmt: skip


def unbatched(batch_shape: tuple) -> bool:
  """Whether the forward alone drops the batch dims and carries ``[H]``, not ``[1, H]``:
  for a batch of one sequence (at least one batch dim, all of them 1), on the CPU only.

  Time over the ``[1, H]`` loop on the 2-vCPU Zen 4 host (``benchmarks/batch_of_one.py``,
  2026-11-27, ``benchmarks/results/batch_of_one_2026-11-27_zen4.md`` the last run): the
  forward at (B, T, I, H) = (1, 1000, 64, 128) 0.94-0.98 (LSTM) and 0.97-0.98 (GRU) in seven
  runs, at (1, 200, 128, 256) 0.98-0.99 and 0.97-0.99 in four; at (1, 100, 256, 512), where
  each step's matmul outweighs the relayout kernel it saves, 0.94-1.00 (LSTM) and 1.00-1.04
  (GRU, 1.02 on average: within the noise of those runs). Under ``grad`` dropping the batch
  dims was slower (1.11-1.18 at (1, 1000, 64, 128)), so it never applies there."""
  return jax.default_backend() == "cpu" and len(batch_shape) > 0 and math.prod(batch_shape) == 1


def _unbatched_layout(
  pointwise, project, dtype, batch_major, inputs, w_hh, extra, carry, valid, mask
):
  """The :class:`_Layout` of a batch of one sequence (every batch dim 1): every array
  without its batch dims, carries ``[H]``, the projection ``[T, H]`` per gate. XLA:CPU
  then needs no ``[1, H] -> [H, 1]`` kernel before each step's matmul (a bitcast now), nor
  a relayout copy of each gate's projection before the loop."""
  params, xs, input_mask = inputs
  batch_shape = carry.h.shape[:-1]
  drop = lambda a: a.reshape(a.shape[len(batch_shape) :])  # noqa: E731  [B..., N] -> [N]
  timed = lambda a: a.reshape(a.shape[:1] + a.shape[1 + len(batch_shape) :])  # noqa: E731

  def to_out(ys):  # [T, H] -> [B..., T, H] (batch_major) or [T, B..., H]
    steps, hidden = ys.shape
    return ys.reshape(batch_shape + ys.shape if batch_major else (steps,) + batch_shape + (hidden,))

  mask = None if mask is None else _as_mask(drop(mask))
  in_mask = None if input_mask is None else jax.tree.map(timed, input_mask)
  return _Layout(
    functools.partial(_recur, pointwise, dtype, w_hh, extra, mask),
    lambda x: project(params, x, in_mask),
    to_out, 0, jax.tree.map(drop, carry), timed(xs), None if valid is None else timed(valid),
    lambda final: jax.tree.map(lambda a: a.reshape(batch_shape + a.shape), final),
  )  # fmt: skip


def _layout(ys, batch_major):
  return jnp.moveaxis(ys, 0, -2) if batch_major else ys


def _sums_only(pointwise, dtype, w_hh, extra, mask, carry, xp, valid) -> bool:
  """Whether the step uses each gate's projection ``x`` and recurrent pre-activation ``r``
  only as their sum ``x + r``, of one dtype (every LSTM gate; not the GRU's n). Found by
  tracing the step's vjp abstractly: JAX hands both operands of an add the same cotangent
  object. Then the forward under ``grad`` keeps ``x + r`` over ``x`` and nothing else,
  and one gradient serves both."""
  found = []

  def probe(extra, carry, xp_t, valid_t):
    hh = _cell.gate_split(_cell.dot(_masked_h(carry.h, mask), w_hh, dtype), len(xp_t))
    out, vjp = jax.vjp(lambda x, r: _step(pointwise, extra, carry, x, r, valid_t), xp_t, hh)
    dx, dr = vjp(out)
    found[:] = [all(a is b and x.dtype == r.dtype for a, b, x, r in zip(dx, dr, xp_t, hh))]

  xp_t = _cell.gate_split(xp[0], w_hh.shape[1] // w_hh.shape[0])
  jax.eval_shape(probe, extra, carry, xp_t, None if valid is None else valid[0])
  return found[0]


def _rebuilds_h(pointwise, extra, carry, xp_t) -> bool:
  """Whether the backward pass rebuilds the stack of ``h_{t-1}`` instead of the forward
  keeping it: when the cell's pointwise maths never reads ``carry.h`` (the LSTM's reads
  only ``c``) and another carry field can hold it (:func:`_host`). The backward's
  recomputed step t gives ``h_t``, which it writes over the host's row t + 1, read by
  then; that keeps one ``[T, B..., H]`` stack fewer."""
  if _host(carry, carry.h) is None:
    return False
  jaxpr = jax.make_jaxpr(lambda h, e, c, x: pointwise(e, c._replace(h=h), x, x))(
    carry.h, extra, carry, xp_t
  ).jaxpr
  h = jaxpr.invars[0]
  return not (h in jaxpr.outvars or any(h in eqn.invars for eqn in jaxpr.eqns))


def _steps_apart(unroll) -> bool:
  """Whether each iteration of the gradient's loops runs one step (``unroll`` 1, the
  default). Those loops write over arrays they read, each step reading the row the next one
  needs (the loop's carry materialises it). Where ``lax.scan``'s ``unroll`` puts several
  steps in one iteration, XLA fuses such a read into the next step's kernels, some of them
  after that step's write, and copied the whole ``[T, ...]`` array at every iteration
  (unroll 4-16: 1.15-2.6x the gradient's time on an H200): there the loops write only what
  no later kernel reads."""
  return unroll is not True and unroll <= 1


def _host(carry, h):
  """The first carry field other than h with h's shape (less a leading time axis, where
  the fields are stacked) and dtype, or None."""
  for name, field in zip(carry._fields, carry):
    if name != "h" and field is not None and field.dtype == h.dtype:
      if field.shape[field.ndim - h.ndim :] == h.shape:
        return name
  return None


def _project_rows(project, dtype, params, xs, input_mask):
  """The projection as one array ``[T, B..., G*H]`` (one matmul, as ``cell.project`` is
  ``(x * mask) @ w_ih`` by the :class:`recurrent.Cell` contract), and its vjp."""
  if isinstance(input_mask, (tuple, list)):  # a mask per gate: a matmul per gate
    rows = lambda p, x, m: jnp.concatenate(project(p, x, m), axis=-1)  # noqa: E731
  else:

    def rows(p, x, m):
      x = x if m is None else x * m.astype(x.dtype)
      flat = _cell.dot(x.reshape(-1, x.shape[-1]), p.w_ih, dtype)  # 2-D: no transposes
      return flat.reshape(x.shape[:-1] + flat.shape[-1:])

  return jax.vjp(rows, params, xs, input_mask)


def _recurrence_fwd(
  pointwise, project, reverse, unroll, dtype, batch_major, chunk, inputs, w_hh, extra, carry,
  valid, mask,
):  # fmt: skip
  """The forward under ``grad``. Residuals: the carries before every step (less ``h``
  where the backward rebuilds it, :func:`_rebuilds_h`), the initial ``h`` and the
  projection ``[T, B..., G*H]``; where the cell only sums projection and recurrent
  pre-activation (:func:`_sums_only`), each step's ``x + r`` written over ``x``, else a
  stack of ``r [T, B..., G*H]`` besides."""
  xp, pull = _project_rows(project, dtype, *inputs)
  h_mask = _as_mask(mask)
  sums = _sums_only(pointwise, dtype, w_hh, extra, h_mask, carry, xp, valid)
  num_gates = w_hh.shape[1] // w_hh.shape[0]
  # Step t reads its row from the loop's carry, writes the sums over it and reads row t + 1
  # of the updated array for the next step. Had it read its own row from the array and
  # written after the math, the write would not depend on the read, and XLA would copy the
  # whole array at every step to keep them apart.
  ahead = -1 if reverse else 1
  split = lambda a: _cell.gate_split(a, num_gates)  # noqa: E731
  apart = _steps_apart(unroll)
  rebuild = apart and _rebuilds_h(pointwise, extra, carry, split(xp[0]))

  def body(state, t, valid_t):
    carry, xp, xp_t = state
    hh = _cell.dot(_masked_h(carry.h, h_mask), w_hh, dtype)
    if sums and apart:
      xp_t, hh = xp_t + hh, jnp.zeros_like(hh)
      xp = _update_index(xp, xp_t, t, 0)
    elif sums:  # the step's kernels read the sums back, after the write
      xp = _update_index(xp, xp_t + hh, t, 0)
      xp_t, hh = _index(xp, t, 0), jnp.zeros_like(hh)
    new, h = _step(pointwise, extra, carry, split(xp_t), split(hh), valid_t)
    own = None if sums else hh
    kept = carry._replace(h=None) if rebuild else carry
    return (new, xp, _index(xp, t + ahead, 0)), (h, (kept, own))  # t + ahead clamped

  first = xp[-1 if reverse else 0]
  (final, xp, _), (ys, (carries, hhs)) = _scan_indexed(
    body, (carry, xp, first), valid, xp.shape[0], reverse, unroll
  )
  residuals = (pull, w_hh, extra, carries, carry.h, hhs, xp, valid, mask)
  return (final, _layout(ys, batch_major)), residuals


def _recurrence_bwd(
  pointwise, project, reverse, unroll, dtype, batch_major, chunk, residuals, cotangents
):  # fmt: skip
  pull, w_hh, extra, carries, h_0, hhs, xp, valid, mask = residuals
  d_final, d_ys = cotangents
  time_axis = d_ys.ndim - 2 if batch_major else 0
  w_hh_t = w_hh.T
  num_gates = w_hh.shape[1] // w_hh.shape[0]
  split = lambda a: _cell.gate_split(a, num_gates)  # noqa: E731
  ahead = -1 if reverse else 1  # the forward's direction
  h_mask = _as_mask(mask)

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
  host = _host(carries, h_0) if rebuild else "h"
  if rebuild:
    h_first = _masked_h(h_0, h_mask).astype(h_0.dtype)  # the first step's h_{t-1}
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
      hs = _update_index(hs, _masked_h(row, h_mask), t, 0)
      carry = carry._replace(h=row)
    xp_t = _index(dxs, t, 0)
    if hhs is None:
      hh_t = jnp.zeros_like(xp_t)
    elif not dz_over_r:
      hh_t = _index(dzs, t, 0)  # else read the step before
    dy = _index(d_ys, t, time_axis)
    (new, _), vjp = jax.vjp(
      lambda e, c, x, r: _step(pointwise, e, c, x, r, valid_t),
      extra, carry, split(xp_t), split(hh_t),
    )  # fmt: skip
    if rebuild:  # h_t over the row the step after t has read; h_{-1} over this step's,
      # which the step before t (next in this loop) overwrites in turn, but for the first.
      # Written at every step: one write after the loop made XLA copy the whole stack.
      hs = _update_index(hs, _masked_h(new.h, h_mask).astype(hs.dtype), t + ahead, 0)
      hs = _update_index(hs, h_first, t, 0)
    de, dc, dx, dz = vjp((d_carry, dy))
    dz = jnp.concatenate(dz, axis=-1)
    dh = _cell.dot(dz, w_hh_t, dtype)
    dc = dc._replace(h=dc.h + _masked_h(dh, h_mask))
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
  (d_carry, d_extra, dxs, dzs, hs, *_), dz_stack = _scan_indexed(
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
    hs = _masked_h(hs, h_mask)
  hidden = w_hh.shape[0]
  hm = hs.reshape(-1, hidden)  # h, or h * m
  d_w_hh = _cell.dot(hm.T, dzs.reshape(-1, dzs.shape[-1]), dtype).astype(w_hh.dtype)
  d_mask = None if mask is None else jnp.zeros_like(mask)
  return pull(dxs), d_w_hh, d_extra, d_carry, None, d_mask


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
