"""The scan driver: run any :class:`recurrent.Cell` over a sequence with ``lax.scan``.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size.

The input projection of all T steps is one matmul before the loop (``cell.project``); the
loop body does the recurrent matmul and the gate math only (``cell.recur``). On the CPU a
forward that is not differentiated projects long sequences in chunks of steps instead
(:func:`recurrent.fused.projection_chunk`), and runs small batches feature-major
(:func:`recurrent.fused.feature_major`). Dropout masks are drawn once per sequence before
the loop (see :mod:`recurrent.dropout`).
"""

import math

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent import fused as _fused


def scan(
  cell,
  params,
  xs,
  *,
  initial_carry=None,
  seq_lengths=None,
  reverse: bool = False,
  time_major: bool = False,
  unroll: int = 1,
  remat_every: int | None = None,
  dropout: float = 0.0,
  recurrent_dropout: float = 0.0,
  per_gate_masks: bool = False,
  key=None,
  deterministic: bool = False,
):
  """Runs ``cell`` over ``xs`` and returns ``(final_carry, outputs)``.

  Args:
    cell: a :class:`recurrent.Cell` (``recurrent.lstm(H)``, ``recurrent.gru(H)``).
    params: the cell's params, e.g. from ``cell.init(key, I)``.
    xs: ``[B..., T, I]`` floating inputs, or ``[T, B..., I]`` if ``time_major``; no
      batch dims at all (``[T, I]``) works too.
    initial_carry: the carry before the first step (leaves ``[B..., H]``); zeros if None.
    seq_lengths: int ``[B...]``, each sequence's number of valid steps. Steps at or past a
      sequence's length leave its carry unchanged and output zeros, so the final carry is
      the carry at the sequence's own last step.
    reverse: run from the last step to the first. With ``seq_lengths`` each sequence is
      reversed within its own length: its output at step t has seen steps
      ``t..len-1``, and its padding stays at the end, aligned with the forward run.
    time_major: whether time is the first axis of ``xs`` and of the outputs.
    unroll: steps per loop iteration, passed to ``lax.scan``. On the CPU more than 1 (the
      default) did not pay: unroll 2-8 took 1.08-1.37x unroll 1's time for the gradient and
      0.96-1.15x for the forward (``benchmarks/lstm_cpu.py --unroll``). On a GPU, where
      each iteration costs kernel launches, it can for long sequences of a small batch (8
      at ``[1, 1000, 64]``, ``H = 128`` on an H200: forward 0.88x, gradient 0.69x), less so
      for batches (``benchmarks/lstm_gpu.py --unroll``). Above 1, the gradient keeps one
      stack more: the LSTM's ``h`` ``[T, B..., H]``, the GRU's ``dz`` ``[T, B..., 3H]``.
    remat_every: None, or k: rematerialise the recurrence in chunks of k steps, so the
      backward pass keeps the inputs and one carry per chunk and recomputes the rest
      (input projection included), for one more forward pass: the activations kept grow
      with ``T / k + k`` rather than ``T``; ``k ~ sqrt(T)`` minimises them.
    dropout: rate of time-invariant dropout on the inputs ``x_t`` (Keras' ``dropout``).
    recurrent_dropout: rate of time-invariant dropout on ``h_{t-1}`` where it enters
      the recurrent matmul (Keras' ``recurrent_dropout``); the carry itself is not
      masked.
    per_gate_masks: False (default) shares each mask among the gates, which keeps the
      input projection one matmul; True draws one mask per gate (Gal & Ghahramani's
      untied variant).
    key: PRNG keys ``[B...]``, one per sequence (:func:`recurrent.sequence_keys`);
      required when a rate is non-zero and not ``deterministic``.
    deterministic: True turns dropout off.

  Gradients: for the LSTM and the reset-after GRU (without per-gate recurrent masks) the
  recurrence has a hand-written backward pass (:mod:`recurrent.fused`) that computes the
  weight gradient with one matmul after the backward loop. It supports reverse mode
  (``grad``, ``vjp``, higher orders), ``jit`` and ``vmap``, but not forward mode
  (``jvp``, ``jacfwd``); for that, pass ``cell._replace(pointwise=None)``, which
  differentiates the plain ``lax.scan``.

  Returns:
    ``(final_carry, outputs)``: the carry after each sequence's last valid step (leaves
    ``[B..., H]``) and the outputs ``[B..., T, H]`` (``[T, B..., H]`` if ``time_major``).

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.lstm(16)
    >>> params = cell.init(jax.random.key(0), 4)
    >>> xs = jnp.ones((3, 10, 4))
    >>> keys = recurrent.sequence_keys(jax.random.key(1), jnp.arange(3))
    >>> carry, ys = recurrent.scan(cell, params, xs, seq_lengths=jnp.array([10, 7, 2]),
    ...                            dropout=0.25, recurrent_dropout=0.25, key=keys)
    >>> ys.shape, carry.h.shape
    ((3, 10, 16), (3, 16))
  """
  options = dict(locals())
  del options["cell"], options["params"], options["xs"]
  return _run(cell, params, xs, trace=False, **options)


def trace(cell, params, xs, **kwargs):
  """The carry and the gate activations at every step, for plots and analysis.

  Takes the arguments of :func:`scan`. A separate path, so :func:`scan` never stacks
  gates it does not return.

  Returns:
    ``(carries, gates)``: the carry after each step (e.g. ``LSTMState`` with ``h`` and
    ``c``) and the gates (``LSTMGates(i, f, g, o)`` or ``GRUGates(r, z, n)``), every
    leaf ``[B..., T, H]`` (``[T, B..., H]`` if ``time_major``). Steps past
    ``seq_lengths`` hold the carry unchanged and zero gates.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.lstm(8)
    >>> carries, gates = recurrent.trace(cell, cell.init(jax.random.key(0), 2),
    ...                                  jnp.ones((5, 2)))
    >>> carries.c.shape, gates.f.shape
    ((5, 8), (5, 8))
  """
  unknown = set(kwargs) - set(_OPTIONS)
  if unknown:
    raise TypeError(f"trace() got unexpected arguments {sorted(unknown)}")
  return _run(cell, params, xs, trace=True, **kwargs)[1]


def _input_size(params) -> int:
  return params.w_ih.shape[0]


_OPTIONS = (
  "initial_carry", "seq_lengths", "reverse", "time_major", "unroll", "remat_every", "dropout",
  "recurrent_dropout", "per_gate_masks", "key", "deterministic",
)  # fmt: skip


def _run(
  cell,
  params,
  xs,
  *,
  trace,
  initial_carry=None,
  seq_lengths=None,
  reverse=False,
  time_major=False,
  unroll=1,
  remat_every=None,
  dropout=0.0,
  recurrent_dropout=0.0,
  per_gate_masks=False,
  key=None,
  deterministic=False,
):
  batch_shape, num_steps, input_size = _checks.sequence("xs", xs, time_major)
  _checks.features("xs", input_size, _input_size(params))
  _checks.rate("dropout", dropout)
  _checks.rate("recurrent_dropout", recurrent_dropout)
  _checks.flag("deterministic", deterministic)
  if remat_every is not None and (
    isinstance(remat_every, bool) or not isinstance(remat_every, int) or remat_every < 1
  ):
    raise ValueError(f"remat_every must be None or a positive int, got {remat_every!r}")
  lengths = _checks.seq_lengths(seq_lengths, batch_shape, num_steps)
  carry_dtype = params.w_hh.dtype
  if initial_carry is None:
    carry = cell.initial_carry(batch_shape, carry_dtype)
  else:
    expected = jax.eval_shape(lambda: cell.initial_carry(batch_shape, carry_dtype))
    _checks.carry("initial_carry", initial_carry, expected)
    carry = jax.tree.map(lambda c: jnp.asarray(c, carry_dtype), initial_carry)

  in_mask = rec_mask = None
  use_in = dropout > 0.0 and not deterministic
  use_rec = recurrent_dropout > 0.0 and not deterministic
  if use_in or use_rec:
    keys = _checks.keys(key, "key", batch_shape)
    num = cell.num_gates if per_gate_masks else 1
    pick = (lambda ms: ms) if per_gate_masks else (lambda ms: ms[0])
    if use_in:
      ms = _dropout.masks(_dropout.derive(keys, _dropout.INPUT), input_size, dropout, num, xs.dtype)
      in_mask = pick(tuple(m[None] for m in ms))  # a time axis: [1, B..., I]
    if use_rec:
      ms = _dropout.masks(
        _dropout.derive(keys, _dropout.RECURRENT),
        cell.hidden_size,
        recurrent_dropout,
        num,
        carry_dtype,
      )
      rec_mask = pick(ms)

  xs = xs if time_major else jnp.moveaxis(xs, -2, 0)
  valid = None
  if lengths is not None:
    steps = jnp.arange(num_steps, dtype=lengths.dtype)
    valid = (steps.reshape((num_steps,) + (1,) * lengths.ndim) < lengths[None])[..., None]
    # Padding never reaches the cell: NaN or inf there would turn into NaN gradients
    # (0 * NaN) even though the held carry hides it from the outputs.
    xs = jnp.where(valid, xs, jnp.zeros_like(xs))
  fused = not trace and cell.pointwise is not None and not isinstance(rec_mask, tuple)
  # The fused recurrence can hand back batch-major outputs itself (see fused.recurrence);
  # the chunks of remat_every are joined along time, so they stay time-major.
  batch_major = fused and not time_major and remat_every is None

  chunk = None
  if fused and remat_every is None:
    step_bytes = math.prod(batch_shape) * cell.num_gates * cell.hidden_size
    chunk = _fused.projection_chunk(num_steps, step_bytes * params.w_ih.dtype.itemsize)

  def recurrence(carry, xs, valid):
    if fused:
      return _fused.recurrence(
        cell.pointwise, cell.project, reverse, unroll, cell.dtype, batch_major, chunk,
        (params, xs, in_mask), params.w_hh, cell.pointwise_params(params), carry, valid,
        rec_mask,
      )  # fmt: skip
    xp = cell.project(params, xs, in_mask)

    def body(carry, inputs):
      xp_t, valid_t = inputs
      new, h, gates = cell.recur(params, carry, xp_t, rec_mask)
      new, (h, gates) = _fused.hold(valid_t, new, carry, (h, gates))
      return new, ((new, gates) if trace else h)

    return jax.lax.scan(body, carry, (xp, valid), reverse=reverse, unroll=unroll)

  if remat_every is None:
    final, ys = recurrence(carry, xs, valid)
  else:
    final, ys = _rematerialised(recurrence, carry, xs, valid, batch_shape, remat_every, reverse)
  if not time_major and not batch_major:
    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return final, ys


def _rematerialised(recurrence, carry, xs, valid, batch_shape, every: int, reverse: bool):
  """``recurrence`` over chunks of ``every`` steps, each chunk under ``jax.checkpoint``.

  The backward pass keeps only the inputs and the carries between chunks, and recomputes
  a chunk's input projection and activations when it reaches it: memory grows with
  ``T * I + (T / every) * H + every * G * H`` per sequence instead of ``T * (I + ~7H)``,
  for one more forward pass. Steps added to fill the last chunk are invalid (carry held),
  so they change nothing, forward or reverse.
  """
  num_steps = xs.shape[0]
  chunks = -(-num_steps // every)
  pad = chunks * every - num_steps
  if pad:
    if valid is None:
      valid = jnp.ones((num_steps,) + batch_shape + (1,), bool)
    xs = jnp.pad(xs, [(0, pad)] + [(0, 0)] * (xs.ndim - 1))
    valid = jnp.pad(valid, [(0, pad)] + [(0, 0)] * (valid.ndim - 1))
  split = lambda a: a.reshape((chunks, every) + a.shape[1:])  # noqa: E731
  body = jax.checkpoint(lambda c, inputs: recurrence(c, *inputs))
  final, ys = jax.lax.scan(body, carry, jax.tree.map(split, (xs, valid)), reverse=reverse)
  ys = jax.tree.map(lambda y: y.reshape((chunks * every,) + y.shape[2:])[:num_steps], ys)
  return final, ys
