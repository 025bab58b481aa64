"""The Flax-facing cells as drop-ins for Flax's own, in Flax's own drivers.

The scenarios are those of Flax's recurrent tests (``tests/linen/linen_recurrent_test.py``
and ``tests/nnx/nn/recurrent_test.py`` in Flax's repository; the wheel does not ship them),
restated for ``recurrent.linen.LSTMCell``/``GRUCell`` and ``recurrent.nnx.LSTMCell``/
``GRUCell``: shapes through ``nn.RNN``/``nnx.RNN`` (batch dims, ``unroll``, ``time_major``),
``nn.RNN`` against a loop of the cell's own ``apply``, ``seq_lengths``, ``reverse`` with and
without ``keep_order``, ``nn.scan`` and ``lax.scan`` of the cell, ``nn.Bidirectional`` with
``merge_fn`` and ``return_carry``, ``initialize_carry`` with ``carry_init``, bf16. Where
Flax's tests inspect Flax's own param names, these compare numbers instead: each of our
cells, given Flax's params through ``recurrent.convert.from_flax``, must give Flax's
outputs and carries. Where we differ on purpose (``gate_fn``/``activation_fn`` other than
sigmoid/tanh), the test asserts the clear error.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrent
import recurrent.linen as rnn
from recurrent import convert
from recurrent import nnx as rnnx

B, T, IN, H = 3, 4, 5, 6
TOL = 1e-5
FLAX = {"lstm": nn.OptimizedLSTMCell, "gru": nn.GRUCell}
OURS = {"lstm": rnn.LSTMCell, "gru": rnn.GRUCell}
OURS_NNX = {"lstm": rnnx.LSTMCell, "gru": rnnx.GRUCell}


def _xs(shape=(B, T, IN), seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def _close(a, b, tol=TOL):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=tol, atol=tol)


def _flax_and_ours(kind, xs, **rnn_kwargs):
  """``(flax_rnn, flax_variables, our_rnn, our_variables)`` with the same function: our
  params from Flax's by ``convert.from_flax``, with non-zero biases."""
  flax_rnn = nn.RNN(FLAX[kind](H), **rnn_kwargs)
  variables = flax_rnn.init(jax.random.key(0), xs)
  cell_vars = jax.tree.map(lambda a: a + 0.1, {"params": variables["params"]["cell"]})
  ours = nn.RNN(OURS[kind](H), **rnn_kwargs)
  our_vars = {"params": {"cell": rnn.from_core(convert.from_flax(cell_vars))}}
  return flax_rnn, {"params": {"cell": cell_vars["params"]}}, ours, our_vars


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
  "kwargs, lengths",
  [
    ({}, None),
    ({"reverse": True}, None),
    ({"reverse": True, "keep_order": True}, None),
    ({"unroll": 2}, None),
    ({}, [4, 1, 3]),
    ({"reverse": True, "keep_order": True}, [4, 1, 3]),
  ],
  ids=["plain", "reverse", "keep-order", "unroll", "lengths", "keep-order-lengths"],
)
def test_in_flax_rnn_equals_flax_cells(kind, kwargs, lengths, eager):
  """nn.RNN of our cell equals nn.RNN of Flax's cell on the same function: outputs and
  the final carry, in Flax's carry convention ((c, h) for the LSTM, h for the GRU)."""
  xs = _xs()
  flax_rnn, flax_vars, ours, our_vars = _flax_and_ours(kind, xs, return_carry=True, **kwargs)
  seq_lengths = None if lengths is None else jnp.asarray(lengths)
  want = flax_rnn.apply(flax_vars, xs, seq_lengths=seq_lengths)
  got = ours.apply(our_vars, xs, seq_lengths=seq_lengths)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  _close(got, want)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_shapes_batch_dims_time_major_and_carry(kind, eager):
  """Outputs [B..., T, H] with two batch dims, time-major [T, B, H], and a carry of
  Flax's structure that is not zeros after a run."""
  for batch, time_major in (((2, 3), False), ((3,), True)):
    shape = (T,) + batch + (IN,) if time_major else batch + (T, IN)
    model = nn.RNN(OURS[kind](H), return_carry=True, time_major=time_major)
    xs = _xs(shape)
    carry, ys = model.apply(model.init(jax.random.key(0), xs), xs)
    assert ys.shape == shape[:-1] + (H,)
    leaves = jax.tree.leaves(carry)
    assert len(leaves) == (2 if kind == "lstm" else 1)
    for leaf in leaves:
      assert leaf.shape == batch + (H,) and not np.allclose(leaf, 0)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_equals_a_loop_of_the_cells_apply(kind, eager):
  """nn.RNN with seq_lengths vs the cell's own apply step by step from initialize_carry:
  each output, and the final carry at each sequence's last valid step; also lax.scan and
  nn.scan of the cell."""
  xs = _xs()
  lengths = jnp.array([4, 2, 1])
  model = nn.RNN(OURS[kind](H), return_carry=True)
  (carry, ys), variables = model.init_with_output(jax.random.key(0), xs, seq_lengths=lengths)
  cell, cell_vars = model.cell, {"params": variables["params"]["cell"]}
  state = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
  states = []
  for t in range(T):
    state, y = cell.apply(cell_vars, state, xs[:, t])
    valid = np.asarray(t < lengths)
    np.testing.assert_allclose(np.asarray(y)[valid], np.asarray(ys[:, t])[valid], rtol=TOL)
    states.append(state)
  for b, n in enumerate(np.asarray(lengths)):
    _close(
      jax.tree.map(lambda a, b=b: a[b], states[n - 1]), jax.tree.map(lambda a, b=b: a[b], carry)
    )

  def step(state, x):
    return cell.apply(cell_vars, state, x)

  start = cell.initialize_carry(jax.random.key(0), xs[:, 0].shape)
  final, scanned = jax.lax.scan(step, start, jnp.swapaxes(xs, 0, 1))
  _close(final, states[-1])
  lifted = nn.scan(
    type(cell), variable_broadcast="params", split_rngs={"params": False}, in_axes=1, out_axes=1
  )(H)
  final_nn, ys_nn = lifted.apply(cell_vars, start, xs)
  _close((final_nn, ys_nn), (final, jnp.swapaxes(scanned, 0, 1)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_bidirectional_merge_fn_and_return_carry(kind, eager):
  """nn.Bidirectional of our cells: concatenated [B, T, 2H], a merge_fn, a shared cell,
  and return_carry's pair of carries in Flax's structure; equal to Flax's cells on the same
  params."""
  xs = _xs()
  flax_bi = nn.Bidirectional(nn.RNN(FLAX[kind](H)), nn.RNN(FLAX[kind](H)), return_carry=True)
  variables = flax_bi.init(jax.random.key(1), xs)
  p = jax.tree.map(lambda a: a + 0.1, variables["params"])
  ours_p = {
    side: {"cell": rnn.from_core(convert.from_flax({"params": p[side]["cell"]}))}
    for side in ("forward_rnn", "backward_rnn")
  }
  ours = nn.Bidirectional(nn.RNN(OURS[kind](H)), nn.RNN(OURS[kind](H)), return_carry=True)
  _close(ours.apply({"params": ours_p}, xs), flax_bi.apply({"params": p}, xs))
  summed = nn.Bidirectional(
    nn.RNN(OURS[kind](H)), nn.RNN(OURS[kind](H)), merge_fn=lambda a, b: a + b
  )
  assert summed.apply({"params": ours_p}, xs).shape == (B, T, H)
  shared = OURS[kind](H)
  ys = nn.Bidirectional(nn.RNN(shared), nn.RNN(shared)).init_with_output(jax.random.key(0), xs)[0]
  assert ys.shape == (B, T, 2 * H)


def test_gate_and_activation_functions_other_than_sigmoid_tanh_are_refused():
  """Flax's cells take any gate_fn/activation_fn; ours compute sigmoid and tanh and say
  so, rather than silently ignoring the argument."""
  xs = _xs((B, IN))
  cell = rnn.LSTMCell(H, gate_fn=jax.nn.relu)
  with pytest.raises(ValueError, match=r"^LSTMCell computes sigmoid for gate_fn, got"):
    cell.init(jax.random.key(0), cell.initialize_carry(jax.random.key(0), xs.shape), xs)
  with pytest.raises(ValueError, match=r"^GRUCell computes tanh for activation_fn, got"):
    rnnx.GRUCell(IN, H, activation_fn=jax.nn.elu, rngs=nnx.Rngs(0))
  ok = rnn.LSTMCell(H, gate_fn=nn.sigmoid, activation_fn=nn.tanh)  # Flax's own defaults
  ok.init(jax.random.key(0), ok.initialize_carry(jax.random.key(0), xs.shape), xs)


def test_core_carry_order_is_refused():
  """A recurrent.LSTMState (h, c) passed where Flax's (c, h) goes raises, instead of
  swapping h and c silently."""
  cell = rnn.LSTMCell(H)
  xs = _xs((B, IN))
  carry = cell.initialize_carry(jax.random.key(0), xs.shape)
  variables = cell.init(jax.random.key(0), carry, xs)
  with pytest.raises(TypeError, match=r"takes Flax's LSTM carry, a tuple \(c, h\).*state\.c"):
    cell.apply(variables, recurrent.LSTMState(*carry[::-1]), xs)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_initialize_carry_with_carry_init(kind):
  """initialize_carry honours carry_init (the constructor's, or NNX's argument), per
  field, in Flax's structure."""
  carry = OURS[kind](H, carry_init=nn.initializers.ones).initialize_carry(
    jax.random.key(0), (2, IN)
  )
  leaves = jax.tree.leaves(carry)
  assert all(leaf.shape == (2, H) and np.all(leaf == 1) for leaf in leaves)
  cell = OURS_NNX[kind](IN, H, rngs=nnx.Rngs(0))
  zeros = cell.initialize_carry((2, IN), nnx.Rngs(0))
  assert all(np.all(leaf == 0) for leaf in jax.tree.leaves(zeros))
  ones = cell.initialize_carry((2, IN), nnx.Rngs(0), carry_init=nnx.initializers.ones)
  assert all(np.all(leaf == 1) for leaf in jax.tree.leaves(ones))
  c_h = OURS_NNX[kind](IN, H, carry_init=nnx.initializers.ones, rngs=nnx.Rngs(0))
  assert all(np.all(leaf == 1) for leaf in jax.tree.leaves(c_h.initialize_carry((2, IN))))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_nnx_cells_in_nnx_rnn_equal_flax_cells(kind, eager):
  """nnx.RNN of our NNX cell, loaded with a Flax cell's params (from_flax + load_core),
  equals Flax's own cell in nn.RNN on those params, with lengths, reverse and
  keep_order; bf16 params give bf16 outputs."""
  xs = _xs()
  lengths = jnp.array([4, 1, 3])
  for kwargs in ({}, {"reverse": True}, {"reverse": True, "keep_order": True}):
    flax_rnn, flax_vars, _, _ = _flax_and_ours(kind, xs, return_carry=True, **kwargs)
    ours = OURS_NNX[kind](IN, H, rngs=nnx.Rngs(1))
    rnnx.load_core(ours, convert.from_flax({"params": flax_vars["params"]["cell"]}))
    want = flax_rnn.apply(flax_vars, xs, seq_lengths=lengths)
    got = nnx.RNN(ours, return_carry=True, **kwargs)(xs, seq_lengths=lengths)
    _close(got, want)
  half = OURS_NNX[kind](IN, H, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  x = jnp.ones((2, IN), jnp.bfloat16)
  _, y = half(half.initialize_carry(x.shape), x)
  assert y.dtype == jnp.bfloat16 and y.shape == (2, H)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_cell_dropout_is_time_invariant_and_off_when_deterministic(kind, eager):
  """With dropout in nn.RNN: the masks are drawn at the first step and held in the carry
  (the same masks at every step, different per sequence); the run equals a loop of
  ``cell.recur`` with those masks; deterministic equals the cell without dropout."""
  xs = _xs()
  plain = nn.RNN(OURS[kind](H), return_carry=True)
  variables = plain.init(jax.random.key(0), xs)
  dropped = nn.RNN(
    OURS[kind](H, dropout=0.3, recurrent_dropout=0.4, deterministic=False),
    return_carry=True,
    split_rngs={"params": False, "dropout": True},  # nn.RNN passes 'dropout' in so only
  )
  (final, masks), ys = dropped.apply(variables, xs, rngs={"dropout": jax.random.key(5)})
  assert np.all(np.asarray(masks.drawn) == 1)
  kept = np.asarray(masks.hidden) != 0
  assert 0.2 < 1 - kept.mean() < 0.7 and not np.all(kept[0] == kept[1])

  core = rnn.to_core(variables["params"]["cell"])
  cell = recurrent.lstm(H) if kind == "lstm" else recurrent.gru(H)
  state = cell.initial_carry((B,))
  for t in range(T):
    state, h, _ = cell.recur(core, state, cell.project(core, xs[:, t], masks.inputs), masks.hidden)
    np.testing.assert_allclose(ys[:, t], h, rtol=TOL, atol=TOL)
  want_final = (state.c, state.h) if kind == "lstm" else state.h
  _close(final, want_final)

  det = nn.RNN(
    OURS[kind](H, dropout=0.3, recurrent_dropout=0.4, deterministic=True), return_carry=True
  )
  (det_final, _), det_ys = det.apply(variables, xs)
  _close((det_final, det_ys), plain.apply(variables, xs))

  nnx_cell = OURS_NNX[kind](IN, H, dropout=0.3, recurrent_dropout=0.4, rngs=nnx.Rngs(0))
  rnnx.load_core(nnx_cell, core)
  (_, nnx_masks), _ = nnx.RNN(nnx_cell, return_carry=True)(xs)
  assert not np.all(np.asarray(nnx_masks.hidden) != 0)
  nnx_cell.eval()
  (nnx_final, _), nnx_ys = nnx.RNN(nnx_cell, return_carry=True)(xs)
  _close((nnx_final, nnx_ys), plain.apply(variables, xs))


def test_cell_dropout_needs_the_carry_with_masks():
  cell = rnn.GRUCell(H, dropout=0.2, deterministic=False)
  xs = _xs((B, IN))
  carry = rnn.GRUCell(H).initialize_carry(jax.random.key(0), xs.shape)  # without masks
  with pytest.raises(TypeError, match=r"^GRUCell has dropout on: its carry is \(carry, masks\)"):
    cell.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, carry, xs)


@pytest.mark.parametrize("merge", ["concat", "sum", "mean", "mul", "none", "fn"])
def test_bidirectional_merge_modes(merge):
  """recurrent.bidirectional/stack and the linen and NNX layers join the two directions
  as Keras' merge_mode and Flax's merge_fn do, against the two directions run apart."""
  fn = (lambda f, b: f - b) if merge == "fn" else merge
  want_fn = {
    "concat": lambda f, b: jnp.concatenate([f, b], -1),
    "sum": lambda f, b: f + b,
    "mean": lambda f, b: (f + b) / 2,
    "mul": lambda f, b: f * b,
    "none": lambda f, b: recurrent.Bidirectional(f, b),
    "fn": lambda f, b: f - b,
  }[merge]
  cell = recurrent.gru(H)
  xs = _xs()
  lengths = jnp.array([4, 2, 3])
  layers = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True, merge=fn)
  # layer 1 takes the merged outputs of layer 0
  assert layers[1].forward.w_ih.shape[0] == (2 * H if merge == "concat" else H)
  first, top = layers
  _, f = recurrent.scan(cell, first.forward, xs, seq_lengths=lengths)
  _, b = recurrent.scan(cell, first.backward, xs, seq_lengths=lengths, reverse=True)
  _, got = recurrent.bidirectional_scan(cell, first, xs, seq_lengths=lengths, merge=fn)
  _close(got, want_fn(f, b))
  if merge == "none":
    with pytest.raises(ValueError, match=r"^merge='none' returns a pair of outputs"):
      recurrent.stack(cell, layers, xs, merge=fn)
    layers = [layers[0].forward, top]  # a unidirectional layer below the pair
    _, got = recurrent.stack(cell, layers, xs, merge=fn)
    assert isinstance(got, recurrent.Bidirectional)
    return
  _, ys = recurrent.stack(cell, layers, xs, seq_lengths=lengths, merge=fn)
  _, f = recurrent.scan(cell, top.forward, got, seq_lengths=lengths)
  _, b = recurrent.scan(cell, top.backward, got, seq_lengths=lengths, reverse=True)
  _close(ys, want_fn(f, b))
  model = rnn.GRU(H, num_layers=2, bidirectional=True, merge=fn)
  linen_ys = model.apply({"params": rnn.from_core(layers)}, xs, seq_lengths=lengths)
  nnx_model = rnnx.GRU(IN, H, num_layers=2, bidirectional=True, merge=fn, rngs=nnx.Rngs(0))
  rnnx.load_core(nnx_model, layers)
  _close((linen_ys, nnx_model(xs, seq_lengths=lengths)), (ys, ys))


def test_merge_is_checked():
  with pytest.raises(ValueError, match=r"^merge must be one of \('concat', 'sum'"):
    recurrent.Options(merge="add")
