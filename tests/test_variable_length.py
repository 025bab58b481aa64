"""Variable-length sequences: a padded run agrees with unpadded runs.

Shape legend: B batch, T time, I input size, H hidden size.

Reference throughout: the same sequence run alone, unpadded, at its own length, with no
``seq_lengths`` (the library's plain path). A batch of 3 sequences of lengths 5, 9 and 12
is padded to T = 12 with large random garbage; property checked (README, scan docstring):
on every valid step the padded run's outputs equal the unpadded run's, its outputs past
a sequence's length are exactly zero, and its final carry is the unpadded run's final
carry; ``reverse`` reverses each sequence within its own length. With dropout the keys
come from ``sequence_keys`` so a sequence has the same masks padded or not.

The padded runs take ``seq_lengths`` as a traced argument of ``jax.jit``.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent

# Cheap XLA CPU settings: compile time dominates these tests; the comparisons do not depend
# on the optimisation level.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST, **kwargs)


def random_params(init, seed=0):
  """Params with the structure and shapes of ``init(key)``, uniform in [-0.5, 0.5), from
  NumPy (compiling JAX's initialisers for every shape would cost seconds)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


def normal(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


T, IN, H = 12, 3, 4
LENS = (5, 9, 12)
LENGTHS = jnp.array(LENS, jnp.int32)
VALID = [normal((n, IN), seed=b) for b, n in enumerate(LENS)]


def _pad(garbage):
  xs = np.array(garbage, np.float32)
  for b, v in enumerate(VALID):
    xs[b, : len(v)] = v
  return jnp.asarray(xs)


XS = _pad(100.0 * normal((3, T, IN), seed=99))  # padded with large random garbage
IDS = jnp.array([10, 11, 12])
STEP_KEY = jax.random.key(7)
RATE = 0.3

CELLS = {"lstm": recurrent.lstm(H), "gru": recurrent.gru(H)}
DRIVERS = ("forward", "reverse", "bidirectional", "stack")


def _params(name, driver):
  cell = CELLS[name]
  if driver in ("forward", "reverse"):
    return random_params(lambda k: cell.init(k, IN), 1)
  if driver == "bidirectional":
    return random_params(lambda k: recurrent.Bidirectional(cell.init(k, IN), cell.init(k, IN)), 2)
  return random_params(lambda k: recurrent.init_layers(cell, k, IN, 2, bidirectional=True), 3)


PARAMS = {(name, driver): _params(name, driver) for name in CELLS for driver in DRIVERS}


def params_for(name, driver):
  return PARAMS[name, driver]


def call(name, driver, xs, lengths=None, keys=None, **kw):
  """Runs ``driver`` (forward/reverse scan, bidirectional, 2-layer bidirectional stack);
  dropout on both inputs and recurrent state when ``keys`` is given."""
  cell, params = CELLS[name], params_for(name, driver)
  if keys is not None:
    kw.update(dropout=RATE, recurrent_dropout=RATE, key=keys)
  if driver in ("forward", "reverse"):
    return recurrent.scan(cell, params, xs, seq_lengths=lengths, reverse=driver == "reverse", **kw)
  if driver == "bidirectional":
    return recurrent.bidirectional_scan(cell, params, xs, seq_lengths=lengths, **kw)
  return recurrent.stack(cell, params, xs, seq_lengths=lengths, **kw)


@functools.cache
def padded_and_alone(name, driver, dropout):
  """``run(xs, lengths) -> (padded, [alone_b])``: the padded batch with traced lengths,
  and each sequence ``b`` alone, unpadded (``xs[b:b+1, :LENS[b]]``), no seq_lengths."""

  def run(xs, lengths, ids):
    keys = recurrent.sequence_keys(STEP_KEY, ids) if dropout else None
    padded = call(name, driver, xs, lengths, keys)
    alone = [
      call(name, driver, xs[b : b + 1, :n], None, None if keys is None else keys[b : b + 1])
      for b, n in enumerate(LENS)
    ]
    return padded, alone

  return jit(run)


def assert_matches_alone(padded, alone, lens=LENS, atol=1e-6):
  """Valid steps and final carries equal the unpadded runs; padded outputs are 0."""
  carry, ys = padded
  for b, n in enumerate(lens):
    a_carry, a_ys = alone[b]
    np.testing.assert_allclose(ys[b, :n], a_ys[0], rtol=1e-5, atol=atol, err_msg=f"seq {b}")
    np.testing.assert_array_equal(ys[b, n:], 0.0, err_msg=f"padding of seq {b}")
    jax.tree.map(
      lambda p, a, b=b: np.testing.assert_allclose(p[b], a[0], rtol=1e-5, atol=atol),
      carry,
      a_carry,
    )


CASES = [(name, driver, False) for name in CELLS for driver in DRIVERS] + [
  ("lstm", "bidirectional", True),
  ("gru", "stack", True),
]


@pytest.mark.parametrize("name,driver,dropout", CASES)
def test_padded_matches_unpadded(name, driver, dropout):
  """Padded (garbage, seq_lengths traced in jit) vs each sequence alone, unpadded: equal
  outputs on valid steps and final carries, exact zeros on padding. With dropout, keys
  from sequence_keys give each sequence the same masks in both runs."""
  padded, alone = padded_and_alone(name, driver, dropout)(XS, LENGTHS, IDS)
  assert_matches_alone(padded, alone)


@pytest.mark.parametrize("driver", ["forward", "reverse"])
def test_padding_values_do_not_matter(driver):
  """Other garbage, zeros, or NaN and inf in the padding give the same outputs and final
  carries as the unpadded runs (the padded steps never reach the carry)."""
  run = padded_and_alone("lstm", driver, False)
  _, alone = run(XS, LENGTHS, IDS)
  for fill in (np.zeros((3, T, IN)), np.full((3, T, IN), np.nan), np.full((3, T, IN), -np.inf)):
    padded, _ = run(_pad(fill), LENGTHS, IDS)
    assert_matches_alone(padded, alone)


def test_reverse_is_within_each_length():
  """reverse=True reverses each sequence within its own length: the padded reverse run
  equals the forward run of each sequence flipped in time, flipped back (a second
  reference, independent of seq_lengths)."""
  cell, params = CELLS["lstm"], params_for("lstm", "reverse")
  (carry, ys), _ = padded_and_alone("lstm", "reverse", False)(XS, LENGTHS, IDS)
  flipped = jit(lambda vs: [recurrent.scan(cell, params, v[::-1]) for v in vs])(VALID)
  for b, n in enumerate(LENS):
    f_carry, f_ys = flipped[b]
    np.testing.assert_allclose(ys[b, :n], f_ys[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(carry.h[b], f_carry.h, rtol=1e-5, atol=1e-6)


def test_eager_matches_jit():
  """Outside jit (concrete lengths, checked for range) forward and reverse give the jitted
  padded results."""
  for driver in ("forward", "reverse"):
    padded, alone = padded_and_alone("lstm", driver, False)(XS, LENGTHS, IDS)
    eager = call("lstm", driver, XS, LENGTHS)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, padded)
    assert_matches_alone(eager, alone)


def test_traced_lengths_do_not_retrace():
  """seq_lengths is a traced argument: new length values (including 0 and T) reuse the
  compiled function and still match the unpadded runs, for a bidirectional layer."""

  @jit
  @chex.assert_max_traces(n=1)
  def padded(xs, lengths):
    return call("lstm", "bidirectional", xs, lengths)

  new_lens = (12, 0, 3)

  @jit
  def alone(xs):
    return [call("lstm", "bidirectional", xs[b : b + 1, :n]) for b, n in enumerate(new_lens)]

  assert_matches_alone(
    padded(XS, LENGTHS), padded_and_alone("lstm", "bidirectional", False)(XS, LENGTHS, IDS)[1]
  )
  assert_matches_alone(padded(XS, jnp.array(new_lens, jnp.int32)), alone(XS), lens=new_lens)
  assert padded._cache_size() == 1


@pytest.mark.parametrize("driver", ["forward", "reverse", "bidirectional"])
def test_zero_length_keeps_initial_carry(driver):
  """A sequence of length 0 outputs only zeros and its final carry is the initial carry
  (non-zero here); its batch mate of length 4 matches its unpadded run from the same
  initial carry."""
  h0 = jnp.asarray(normal((2, H), seed=5))
  carry0 = recurrent.GRUState(h0)
  if driver == "bidirectional":
    carry0 = recurrent.Bidirectional(carry0, recurrent.GRUState(-h0))

  @jit
  def run(xs):
    padded = call("gru", driver, xs, jnp.array([0, 4], jnp.int32), initial_carry=carry0)
    first = jax.tree.map(lambda c: c[1:], carry0)
    return padded, call("gru", driver, xs[1:, :4], initial_carry=first)

  (carry, ys), (a_carry, a_ys) = run(XS[:2])
  np.testing.assert_array_equal(ys[0], 0.0)
  jax.tree.map(lambda c, c0: np.testing.assert_array_equal(c[0], c0[0]), carry, carry0)
  np.testing.assert_allclose(ys[1, :4], a_ys[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ys[1, 4:], 0.0)
  jax.tree.map(
    lambda c, a: np.testing.assert_allclose(c[1], a[0], rtol=1e-5, atol=1e-6), carry, a_carry
  )


def test_time_major_padded():
  """time_major=True with seq_lengths gives the batch-major padded results, transposed."""

  @jit
  def run(xs, lengths):
    tm = [call("gru", d, jnp.swapaxes(xs, 0, 1), lengths, time_major=True) for d in DRIVERS[:3]]
    return tm, [call("gru", d, xs, lengths) for d in DRIVERS[:3]]

  time_major, batch_major = run(XS, LENGTHS)
  for (tc, tys), (bc, bys) in zip(time_major, batch_major):
    np.testing.assert_allclose(jnp.swapaxes(tys, 0, 1), bys, rtol=1e-6, atol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6), tc, bc)


def test_unbatched_sequence_with_scalar_length():
  """No batch dims: xs [T, I] with a scalar seq_lengths matches xs[:n] unpadded."""

  @jit
  def run(x, n):
    return call("lstm", "reverse", x, n), call("lstm", "reverse", x[:5])

  (carry, ys), (a_carry, a_ys) = run(XS[0], jnp.int32(5))
  np.testing.assert_allclose(ys[:5], a_ys, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(ys[5:], 0.0)
  np.testing.assert_allclose(carry.c, a_carry.c, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [np.int64, np.int16, np.uint32])
def test_seq_lengths_integer_dtypes(dtype):
  """Any integer dtype of seq_lengths (the check accepts all of them) gives the int32
  result, eagerly (numpy lengths) and in jit (lengths of that dtype)."""
  want, _ = padded_and_alone("lstm", "forward", False)(XS, LENGTHS, IDS)
  lengths = np.array(LENS, dtype)
  eager = call("lstm", "forward", XS, lengths)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), eager, want)
  jitted = jit(lambda xs, n: call("lstm", "forward", xs, n))(XS, jnp.asarray(lengths))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), jitted, want)


def test_trace_with_lengths():
  """recurrent.trace: past a sequence's length the carry holds its final value and the
  gates are 0; before it, the carries' h equal the unpadded outputs. In reverse, the steps
  past the length hold the initial (zero) carry."""

  @jit
  def run(xs, lengths):
    cell, params = CELLS["lstm"], params_for("lstm", "forward")
    fwd = recurrent.trace(cell, params, xs, seq_lengths=lengths)
    bwd = recurrent.trace(cell, params, xs, seq_lengths=lengths, reverse=True)
    return fwd, bwd

  (carries, gates), (r_carries, r_gates) = run(XS, LENGTHS)
  (_, ys), alone = padded_and_alone("lstm", "forward", False)(XS, LENGTHS, IDS)
  for b, n in enumerate(LENS):
    np.testing.assert_allclose(carries.h[b, :n], alone[b][1][0], rtol=1e-5, atol=1e-6)
    for leaf in carries:
      np.testing.assert_array_equal(leaf[b, n:], np.broadcast_to(leaf[b, n - 1], leaf[b, n:].shape))
    for g in (*gates, *r_gates):
      np.testing.assert_array_equal(g[b, n:], 0.0)
    for leaf in r_carries:
      np.testing.assert_array_equal(leaf[b, n:], 0.0)
    assert np.all(np.asarray(gates.f[b, :n]) > 0)


@functools.cache
def _gradients():
  """``run(params, xs) -> (padded_grads, [alone_grads])``: gradients w.r.t. params and xs
  of a loss on a padded reverse LSTM (the direction where padding comes first), and of
  the same loss on each sequence alone, unpadded."""
  w = jnp.asarray(normal((H,), seed=3))

  def loss(params, xs, lengths):
    carry, ys = recurrent.scan(CELLS["lstm"], params, xs, seq_lengths=lengths, reverse=True)
    return jnp.sum(ys * w[None, None]) + jnp.sum(carry.c) + jnp.sum(carry.h)

  grad = jax.grad(loss, argnums=(0, 1))

  def run(params, xs):
    padded = grad(params, xs, LENGTHS)
    alone = [grad(params, xs[b : b + 1, :n], None) for b, n in enumerate(LENS)]
    return padded, alone

  return jit(run)


def assert_gradients_match(xs):
  (g_params, g_xs), alone = _gradients()(params_for("lstm", "reverse"), xs)
  for b, n in enumerate(LENS):
    np.testing.assert_array_equal(g_xs[b, n:], 0.0)
    np.testing.assert_allclose(g_xs[b, :n], alone[b][1][0], rtol=1e-5, atol=1e-6)
  summed = jax.tree.map(lambda *g: sum(g), *[a[0] for a in alone])
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5), g_params, summed
  )


def test_gradients_ignore_padding():
  """Gradients through a padded reverse LSTM: zero for every padded input step; the valid
  steps' input gradients and the params gradient equal those of the unpadded runs (summed
  over sequences)."""
  assert_gradients_match(XS)


def test_gradients_ignore_nonfinite_padding():
  """NaN padding (a common sentinel) leaves the outputs unchanged (see
  test_padding_values_do_not_matter), so it must not reach the gradients either: they
  equal those of the unpadded runs, with no NaN."""
  assert_gradients_match(_pad(np.full((3, T, IN), np.nan)))
