"""The cell protocol, the options record and what they make possible.

References: plain autodiff of a Python loop over ``cell.step`` (for a user's own cell),
the same program with static rates (for traced rates), and the program before export
(for ``jax.export`` with symbolic shapes).
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import recurrent
from recurrent import cell as cell_lib

B, T, IN, H = 3, 7, 4, 5


def _layer_norm(x, eps=1e-5):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def normalised_input_lstm(hidden_size):
  """A user's cell written against the protocol: an LSTM whose input half normalises each
  gate's projection (so ``project`` is not a plain matmul), reusing the built-in LSTM's
  params and gate maths. It declares no fast path."""
  base = recurrent.lstm(hidden_size)

  def project(params, x, mask=None):
    return tuple(_layer_norm(g) for g in base.project(params, x, mask))

  def step(params, carry, x):
    carry, h, _ = base.recur(params, carry, project(params, x))
    return carry, h

  return recurrent.Cell(
    base.init, base.initial_carry, project, base.recur, step, hidden_size, 4,
    input_size=base.input_size, name="normalised-input-lstm",
  )  # fmt: skip


def _python_loop(cell, params, xs):
  """The reference: ``cell.step`` in a Python loop, batch-major outputs."""
  carry = cell.initial_carry(xs.shape[:1])
  ys = []
  for t in range(xs.shape[1]):
    carry, h = cell.step(params, carry, xs[:, t])
    ys.append(h)
  return carry, jnp.stack(ys, axis=1)


def _data():
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((B, T, IN)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)
  return xs, weights


def test_custom_cell_with_a_non_matmul_projection_gets_autodiff_gradients():
  """The hazard of a driver that assumes ``project`` is ``x @ w_ih``: a cell whose
  ``project`` normalises must get exactly the gradients of its own step, because it
  declares no fast path. Against a Python loop over ``cell.step``."""
  cell = normalised_input_lstm(H)
  assert cell.fast is None
  params = cell.init(jax.random.key(0), IN)
  xs, weights = _data()

  def loss(run):
    def f(p, x):
      carry, ys = run(p, x)
      return jnp.sum(ys * weights) + jnp.sum(jnp.sin(carry.c))

    return jax.jit(jax.value_and_grad(f, argnums=(0, 1)))

  got = loss(lambda p, x: recurrent.scan(cell, p, x))(params, xs)
  want = loss(lambda p, x: _python_loop(cell, p, x))(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # and the normalisation matters: the LSTM's own gradients differ
  plain = loss(lambda p, x: recurrent.scan(recurrent.lstm(H), p, x))(params, xs)
  assert not np.allclose(plain[1][0].w_ih, got[1][0].w_ih, atol=1e-3)


def test_custom_cell_runs_in_stack_bidirectional_with_lengths_and_dropout():
  """A user's cell gets stacking, bidirectionality, lengths and dropout from the driver:
  finite outputs of the right shape, and padded steps output zeros."""
  cell = normalised_input_lstm(H)
  layers = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True)
  xs, _ = _data()
  lengths = jnp.array([7, 3, 0])
  keys = recurrent.sequence_keys(jax.random.key(1), B)
  _, ys = jax.jit(
    lambda p, x: recurrent.stack(
      cell, p, x, seq_lengths=lengths, dropout=0.2, recurrent_dropout=0.2, key=keys
    )
  )(layers, xs)
  assert ys.shape == (B, T, 2 * H)
  assert np.all(np.isfinite(ys)) and np.all(ys[1, 3:] == 0) and np.all(ys[2] == 0)


def test_fast_path_declared_by_the_built_in_cells():
  """The built-in cells declare what the fast path may assume; the reset-before GRU, whose
  recurrent matmul reads ``r * h``, declares nothing."""
  lstm, gru, gru_before = recurrent.lstm(H), recurrent.gru(H), recurrent.gru(H, reset_after=False)
  assert lstm.fast.sums_only and lstm.fast.h_host == "c"
  assert not gru.fast.sums_only and gru.fast.h_host is None
  assert gru_before.fast is None
  params = lstm.init(jax.random.key(0), IN)
  assert lstm.fast.input_weights(params) is params.w_ih
  assert lstm.fast.recurrent_weights(params) is params.w_hh
  assert lstm.input_size(params) == IN


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_traced_rates_sweep_in_one_program(kind):
  """Rates as traced values: ``vmap`` over a vector of rates gives, for each, what a
  static rate gives (same keys, same masks), in one program."""
  cell = getattr(recurrent, kind)(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  keys = recurrent.sequence_keys(jax.random.key(1), B)
  rates = jnp.array([0.0, 0.25, 0.5], jnp.float32)

  def run(rate, recurrent_rate):
    return recurrent.scan(
      cell, params, xs, dropout=rate, recurrent_dropout=recurrent_rate, key=keys
    )[1]

  swept = jax.jit(jax.vmap(run))(rates, rates[::-1])
  for i, (r, rr) in enumerate(zip([0.0, 0.25, 0.5], [0.5, 0.25, 0.0])):
    np.testing.assert_allclose(swept[i], run(r, rr), rtol=1e-5, atol=1e-6)
  assert not np.allclose(swept[1], swept[2])


def test_traced_rate_gradients_and_static_zero_draws_no_mask():
  """A traced rate differentiates like a static one; a static 0.0 draws no mask at all
  (no PRNG in the program), a traced 0.0 does but changes nothing."""
  cell = recurrent.lstm(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  keys = recurrent.sequence_keys(jax.random.key(1), B)

  def loss(p, rate):
    return jnp.sum(recurrent.scan(cell, p, xs, recurrent_dropout=rate, key=keys)[1])

  got = jax.jit(jax.grad(loss))(params, jnp.float32(0.3))
  want = jax.grad(loss)(params, 0.3)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  static = str(jax.make_jaxpr(lambda p: loss(p, 0.0))(params))
  assert "random_bits" not in static and "threefry" not in static
  np.testing.assert_allclose(jax.jit(loss)(params, jnp.float32(0.0)), loss(params, 0.0), rtol=1e-6)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "gradient"])
def test_export_with_symbolic_batch_and_time(kind, grad):
  """``jax.export`` with a symbolic batch and time dimension: the layout policy compares
  no symbolic shapes, and the exported program equals the jitted one at two shapes."""
  cell = getattr(recurrent, kind)(H)
  params = cell.init(jax.random.key(0), IN)

  def forward(p, x):
    return recurrent.scan(cell, p, x)[1]

  fn = forward
  if grad:
    fn = jax.grad(lambda p, x: jnp.sum(forward(p, x) ** 2), argnums=(0, 1))
  b, t = export.symbolic_shape("b, t")
  spec = jax.ShapeDtypeStruct((b, t, IN), jnp.float32)
  exported = export.export(jax.jit(fn))(params, spec)
  rng = np.random.default_rng(0)
  for shape in ((2, 5, IN), (17, 3, IN)):
    xs = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    got, want = exported.call(params, xs), jax.jit(fn)(params, xs)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_options_record_is_checked_once_and_reused():
  """One :class:`recurrent.Options` passes through unchanged; keyword arguments override
  its fields; bad fields are refused where the record is made."""
  cell = recurrent.lstm(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  options = recurrent.Options(reverse=True, unroll=2)
  np.testing.assert_array_equal(
    recurrent.scan(cell, params, xs, options=options)[1],
    recurrent.scan(cell, params, xs, reverse=True, unroll=2)[1],
  )
  np.testing.assert_array_equal(
    recurrent.scan(cell, params, xs, options=options, reverse=False)[1],
    recurrent.scan(cell, params, xs, unroll=2)[1],
  )
  with pytest.raises(ValueError, match=r"^layout must be one of"):
    recurrent.Options(layout="sideways")
  with pytest.raises(ValueError, match=r"^remat_every must be None or a positive int"):
    recurrent.Options(remat_every=0)
  with pytest.raises(TypeError, match=r"^scan\(\) takes one dropout rate"):
    recurrent.scan(cell, params, xs, dropout=(0.1, 0.2))
  with pytest.raises(ValueError, match=r"^layout='unbatched' needs a batch of one"):
    recurrent.scan(cell, params, xs, layout="unbatched")
  with pytest.raises(ValueError, match=r"^projection_chunk must divide"):
    recurrent.scan(cell, params, xs, projection_chunk=2)


def test_stack_refuses_one_layers_params():
  """``stack`` takes a list of per-layer params: one layer's params are refused by name."""
  cell = recurrent.lstm(H)
  with pytest.raises(TypeError, match=r"^params of a stack must be a list"):
    recurrent.stack(cell, cell.init(jax.random.key(0), IN), _data()[0])


def test_carry_dtype_follows_the_params():
  assert cell_lib.carry_dtype(recurrent.gru(H).init(jax.random.key(0), IN)) == jnp.float32


class CellsWithAndWithoutJit(chex.TestCase):
  """Every new cell and regulariser, run by ``recurrent.scan`` with and without ``jit``
  (chex variants), gives the outputs and gradients of a Python loop over its own
  ``cell.step`` (for the regularisers: their evaluation step)."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_new_cells_equal_their_step_loop(self):
    xs, weights = _data()
    cells = {
      "layer_norm_lstm": recurrent.layer_norm_lstm(H),
      "projection_lstm": recurrent.projection_lstm(8, H),
      "zoneout": recurrent.zoneout(recurrent.lstm(H), h=0.3, c=0.5),
      "weight_drop": recurrent.weight_drop(recurrent.lstm(H), 0.4),
      "custom": normalised_input_lstm(H),
    }
    for name, cell in cells.items():
      params = jax.tree.map(lambda p: p + 0.05, cell.init(jax.random.key(0), IN))

      def loss(p, x, run):
        _, ys = run(p, x)
        return jnp.sum(ys * weights), ys

      def by_scan(p, x, cell=cell):
        return recurrent.scan(cell, p, x, deterministic=True)

      def by_loop(p, x, cell=cell):
        return _python_loop(cell, p, x)

      grad = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)
      got = self.variant(grad, static_argnums=2)(params, xs, by_scan)
      want = grad(params, xs, by_loop)
      chex.assert_trees_all_close(got, want, rtol=2e-5, atol=2e-6, custom_message=name)


def test_bidirectional_is_the_former_name_of_bidirectional_scan():
  """``recurrent.bidirectional`` (which shared its name with the ``bidirectional=`` flag)
  still runs, as ``bidirectional_scan``, after a DeprecationWarning."""
  cell = recurrent.gru(H)
  pair = recurrent.init_layers(cell, jax.random.key(0), IN, bidirectional=True)[0]
  xs, _ = _data()
  with pytest.warns(DeprecationWarning, match="recurrent.bidirectional_scan"):
    old = recurrent.bidirectional(cell, pair, xs)
  chex.assert_trees_all_equal(old, recurrent.bidirectional_scan(cell, pair, xs))
