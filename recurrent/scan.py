"""The scan driver: run any :class:`recurrent.Cell` over a sequence with ``lax.scan``.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size.

The input projection of all T steps is one matmul before the loop (``cell.project``); the
loop body does the recurrent matmul and the gate math only (``cell.recur``). A cell that
declares a :class:`recurrent.cell.FastPath` runs on :mod:`recurrent.fused` instead, whose
forward alone may lay its arrays out otherwise (:mod:`recurrent.fused.policy`). Dropout
masks are drawn once per sequence before the loop (see :mod:`recurrent.dropout`).
"""

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import cell as _cell
from recurrent import dropout as _dropout
from recurrent import fused as _fused
from recurrent import options as _options


def scan(
  cell, params, xs, *, initial_carry=None, seq_lengths=None, key=None, options=None, **kwargs
):
  """Runs ``cell`` over ``xs`` and returns ``(final_carry, outputs)``.

  Args:
    cell: a :class:`recurrent.Cell` (``recurrent.lstm(H)``, ``recurrent.gru(H)``, or
      your own).
    params: the cell's params, e.g. from ``cell.init(key, I)``.
    xs: ``[B..., T, I]`` floating inputs, or ``[T, B..., I]`` if ``time_major``; no
      batch dims at all (``[T, I]``) works too.
    initial_carry: the carry before the first step (leaves ``[B..., H]``); zeros if None.
    seq_lengths: int ``[B...]``, each sequence's number of valid steps. Steps at or past a
      sequence's length leave its carry unchanged and output zeros, so the final carry is
      the carry at the sequence's own last step. Concrete lengths outside ``[0, T]`` raise
      a ValueError. Traced ones (under ``jit``, ``vmap``) cannot be checked in Python and
      act as clamped to ``[0, T]``: a length above T runs all T steps, a negative one none
      (the initial carry, zero outputs). No ``checkify.check`` here: staged without
      ``checkify.checkify`` it fails, so every jitted caller would need that transform;
      to check traced lengths, call ``checkify.check`` on them in your own function and
      wrap that with ``checkify.checkify``.
    key: PRNG keys ``[B...]``, one per sequence (:func:`recurrent.sequence_keys`);
      required when a rate is non-zero and not ``deterministic``.
    options: a :class:`recurrent.Options` with the fields below; keyword arguments
      override its fields.
    reverse: run from the last step to the first. With ``seq_lengths`` each sequence is
      reversed within its own length: its output at step t has seen steps
      ``t..len-1``, and its padding stays at the end, aligned with the forward run.
    time_major: whether time is the first axis of ``xs`` and of the outputs.
    unroll: steps per loop iteration, passed to ``lax.scan``. On the CPU more than 1 (the
      default) did not pay: unroll 2-8 took 1.08-1.37x unroll 1's time for the gradient and
      0.96-1.15x for the forward (``benchmarks/compare.py --unroll``). On a GPU, where
      each iteration costs kernel launches, it can for long sequences of a small batch (8
      at ``[1, 1000, 64]``, ``H = 128`` on an H200: forward 0.88x, gradient 0.69x), less so
      for batches (``benchmarks/compare.py --unroll`` on a GPU). Above 1, the gradient keeps one
      stack more: the LSTM's ``h`` ``[T, B..., H]``, the GRU's ``dz`` ``[T, B..., 3H]``.
    remat_every: None, or k: rematerialise the recurrence in chunks of k steps, so the
      backward pass keeps the inputs and one carry per chunk and recomputes the rest
      (input projection included), for one more forward pass: the activations kept grow
      with ``T / k + k`` rather than ``T``; ``k ~ sqrt(T)`` minimises them.
    dropout: rate of time-invariant dropout on the inputs ``x_t`` (Keras' ``dropout``): a
      float, or a floating scalar array, traced or not (``jax.vmap`` over it sweeps rates
      in one program). A static ``0.0`` draws no mask.
    recurrent_dropout: rate of time-invariant dropout on ``h_{t-1}`` where it enters
      the recurrent matmul (Keras' ``recurrent_dropout``); the carry itself is not
      masked.
    per_gate_masks: False (default) shares each mask among the gates, which keeps the
      input projection one matmul; True draws one mask per gate (Gal & Ghahramani's
      untied variant).
    deterministic: True turns dropout off.
    layout, projection_chunk: how the fast path's forward alone lays out its arrays and
      how many steps it projects at a time; ``'auto'`` (the default) picks by measured
      rules, never by comparing symbolic shapes (see :class:`recurrent.Options`).

  Gradients: for a cell that declares a :class:`recurrent.cell.FastPath` (the LSTM and the
  reset-after GRU; without per-gate recurrent masks) the recurrence has a hand-written
  backward pass (:mod:`recurrent.fused`) that computes the weight gradient with one matmul
  after the backward loop. It supports reverse mode (``grad``, ``vjp``, higher orders),
  ``jit`` and ``vmap``, but not forward mode (``jvp``, ``jacfwd``); for that, pass
  ``cell._replace(fast=None)``, which differentiates the plain ``lax.scan``.

  Inside ``jax.shard_map`` (``check_vma=True``) the carry, zero or given, is cast to vary
  over the mesh axes the inputs, params, keys and lengths vary over, as the loop's carry
  does; gradients of replicated params are summed over those axes, as JAX's own are.

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
  options = _options.make("scan", options, kwargs).one_layer("scan")
  return run(cell, params, xs, options, initial_carry, seq_lengths, key)


def trace(
  cell, params, xs, *, initial_carry=None, seq_lengths=None, key=None, options=None, **kwargs
):
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
  options = _options.make("trace", options, kwargs).one_layer("trace")
  return run(cell, params, xs, options, initial_carry, seq_lengths, key, keep_gates=True)[1]


def _input_masks(cell, options, keys, input_size, dtype, carry_dtype):
  """The masks of one layer: ``(input, recurrent)``, each None, one array (shared by the
  gates) or G of them (``per_gate_masks``). Input masks get a time axis ``[1, B..., I]``."""
  in_mask = rec_mask = None
  num = cell.num_gates if options.per_gate_masks else 1
  pick = (lambda ms: ms) if options.per_gate_masks else (lambda ms: ms[0])
  if _options.is_on(options.dropout):
    ms = _dropout.masks(
      _dropout.derive(keys, _dropout.INPUT), input_size, options.dropout, num, dtype
    )
    in_mask = pick(tuple(m[None] for m in ms))
  if _options.is_on(options.recurrent_dropout):
    ms = _dropout.masks(
      _dropout.derive(keys, _dropout.RECURRENT),
      cell.hidden_size,
      options.recurrent_dropout,
      num,
      carry_dtype,
    )
    rec_mask = pick(ms)
  return in_mask, rec_mask


def needs_keys(cell, options) -> bool:
  """Whether a run draws randomness: dropout is on, or the cell draws its own
  (``cell.draw``) and the run is not deterministic."""
  return options.dropout_on or (cell.draw is not None and not options.deterministic)


def run(
  cell, params, xs, options, initial_carry=None, seq_lengths=None, key=None, keep_gates=False
):
  """The driver behind :func:`scan`, :func:`trace` and :func:`recurrent.stack`.

  ``options`` is a checked :class:`recurrent.Options` with one rate of each kind; the
  arguments are checked here, once. Returns ``(final_carry, outputs)``, or
  ``(final_carry, (carries, gates))`` with ``keep_gates``.
  """
  time_major, reverse, unroll = options.time_major, options.reverse, options.unroll
  batch_shape, num_steps, input_size = _checks.sequence("xs", xs, time_major)
  _checks.params(cell, params)
  _checks.features("xs", input_size, cell.input_size(params))
  lengths = _checks.seq_lengths(seq_lengths, batch_shape, num_steps)
  carry_dtype = _cell.carry_dtype(params)
  if initial_carry is None:
    carry = cell.initial_carry(batch_shape, carry_dtype)
  else:
    expected = jax.eval_shape(lambda: cell.initial_carry(batch_shape, carry_dtype))
    _checks.carry("initial_carry", initial_carry, expected)
    carry = jax.tree.map(lambda c: jnp.asarray(c, carry_dtype), initial_carry)

  in_mask = rec_mask = keys = noise = None
  if needs_keys(cell, options):
    keys = _checks.keys(key, "key", batch_shape)
  if options.dropout_on:
    in_mask, rec_mask = _input_masks(cell, options, keys, input_size, xs.dtype, carry_dtype)
  if cell.draw is not None:
    params, noise = cell.draw(params, keys, num_steps)
  # Under shard_map (check_vma) the carry varies over the mesh axes its inputs vary over, as
  # the loop body's does; a zero carry would vary over none.
  varying = _fused.varying_axes(xs, params, carry, keys, lengths, noise)
  carry = _fused.vary_like(carry, varying)

  xs = xs if time_major else jnp.moveaxis(xs, -2, 0)
  valid = None
  if lengths is not None:
    steps = jnp.arange(num_steps, dtype=lengths.dtype)
    valid = (steps.reshape((num_steps,) + (1,) * lengths.ndim) < lengths[None])[..., None]
    # Padding never reaches the cell: NaN or inf there would turn into NaN gradients
    # (0 * NaN) even though the held carry hides it from the outputs.
    xs = jnp.where(valid, xs, jnp.zeros_like(xs))
  # (No steps: the plain scan's gradient is the zeros; the fast path's loops need a first step.)
  no_steps = isinstance(num_steps, int) and num_steps == 0
  plain = keep_gates or isinstance(rec_mask, tuple) or noise is not None or no_steps
  fast = None if plain else cell.fast
  remat = options.remat_every
  # The fast path can hand back batch-major outputs itself; the chunks of remat_every are
  # joined along time, so they stay time-major.
  batch_major = fast is not None and not time_major and remat is None

  def recurrence(carry, xs, valid, noise):
    if fast is not None:
      plan = _fused.Plan(
        cell.num_gates, reverse, unroll, cell.dtype, batch_major, options.layout,
        options.projection_chunk if remat is None else None,
      )  # fmt: skip
      # The hand-written backward pass returns the weights' gradients per device (varying),
      # so the weights enter it varying too; the transpose of this cast (a psum) sums
      # their gradients over the devices after it.
      w_ih, w_hh, extra = _fused.vary_like(
        (fast.input_weights(params), fast.recurrent_weights(params), fast.pointwise_params(params)),
        varying,
      )
      return _fused.recurrence(fast, plan, w_ih, xs, in_mask, w_hh, extra, carry, valid, rec_mask)
    xp = cell.project(params, xs, in_mask)

    def body(carry, inputs):
      xp_t, valid_t, noise_t = inputs
      if noise_t is not None:
        xp_t = _cell.Noisy(xp_t, noise_t)
      new, h, gates = cell.recur(params, carry, xp_t, rec_mask)
      new, (h, gates) = _fused.hold(valid_t, new, carry, (h, gates))
      return new, ((new, gates) if keep_gates else h)

    return jax.lax.scan(body, carry, (xp, valid, noise), reverse=reverse, unroll=unroll)

  if remat is None:
    final, ys = recurrence(carry, xs, valid, noise)
  else:
    final, ys = _rematerialised(recurrence, carry, xs, valid, noise, batch_shape, remat, reverse)
  if not time_major and not batch_major:
    ys = jax.tree.map(lambda y: jnp.moveaxis(y, 0, -2), ys)
  return final, ys


def _rematerialised(recurrence, carry, xs, valid, noise, batch_shape, every: int, reverse):
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
    fill = lambda a: jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1))  # noqa: E731
    xs, valid, noise = jax.tree.map(fill, (xs, valid, noise))
  split = lambda a: a.reshape((chunks, every) + a.shape[1:])  # noqa: E731
  body = jax.checkpoint(lambda c, inputs: recurrence(c, *inputs))
  final, ys = jax.lax.scan(body, carry, jax.tree.map(split, (xs, valid, noise)), reverse=reverse)
  ys = jax.tree.map(lambda y: y.reshape((chunks * every,) + y.shape[2:])[:num_steps], ys)
  return final, ys
