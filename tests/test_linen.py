"""``recurrent.linen``: the linen layers and cells against the pure core and Flax's RNN.

Shape legend: B batch, T time, IN input size (I in the docstrings), H hidden size.

References: every layer output is compared with :func:`recurrent.stack` (or
:func:`recurrent.scan` for a reversed layer) run on the module's params mapped by
``to_core``; the cells run inside ``flax.linen.RNN``/``nn.Bidirectional`` are compared
with the layers; Flax's ``OptimizedLSTMCell`` is the reference of the ``from_flax`` path.
Dropout keys: the layer draws one ``make_rng('dropout')``; the tests get the same key
from a probe module at the same (top-level) scope, then build the reference keys with
``recurrent.sequence_keys``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import serialization

import recurrent
import recurrent.linen as rnn
from recurrent import convert

B, T, IN, H = 3, 5, 4, 6
LENGTHS = np.array([T, 2, 4])
TOL = 1e-5

LAYERS = {"lstm": (rnn.LSTM, recurrent.lstm), "gru": (rnn.GRU, recurrent.gru)}
# (num_layers, bidirectional, reverse)
LAYOUTS = {"1-forward": (1, False, False), "1-reverse": (1, False, True), "2-bi": (2, True, False)}


def normal(shape, seed, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


class _Probe(nn.Module):
  """Draws the key a top-level layer's single ``make_rng('dropout')`` gets."""

  @nn.compact
  def __call__(self):
    return self.make_rng("dropout")


def module_dropout_key(rng):
  return _Probe().apply({}, rngs={"dropout": rng})


def core_reference(cell, core, xs, *, reverse, keys, **options):
  """The pure core on the module's params: ``(carries, outputs)``."""
  if reverse:
    key = None if keys is None else recurrent.dropout.derive(keys, 0)
    initial = options.pop("initial_carry")
    final, ys = recurrent.scan(
      cell,
      core[0],
      xs,
      reverse=True,
      key=key,
      initial_carry=None if initial is None else initial[0],
      **options,
    )
    return [final], ys
  return recurrent.stack(cell, core, xs, key=keys, **options)


def assert_trees_close(a, b, tol=TOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), tol, tol)


@pytest.mark.parametrize("extras", ["plain", "time_major+lengths+carry"])
@pytest.mark.parametrize("use_dropout", [False, True], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_core(name, layout, use_dropout, extras, eager):
  """LSTM/GRU layer vs recurrent.stack/scan with the to_core params, over a product of
  options; with dropout the same rng gives the same per-sequence keys, hence the same
  outputs, and different outputs than without dropout."""
  module_cls, factory = LAYERS[name]
  num_layers, bidirectional, reverse = LAYOUTS[layout]
  time_major = extras != "plain"
  # Two layers drop only between them, PyTorch's placement.
  rates = dict(dropout=(0.0, 0.3) if num_layers == 2 else 0.3, recurrent_dropout=0.3)
  rates = rates if use_dropout else {}
  model = module_cls(
    H,
    num_layers=num_layers,
    bidirectional=bidirectional,
    reverse=reverse,
    time_major=time_major,
    return_carry=True,
    **rates,
  )
  xs = normal((T, B, IN) if time_major else (B, T, IN), 0)
  params = model.init(jax.random.key(0), xs, deterministic=True)["params"]
  cell, core = factory(H), rnn.to_core(params)
  seq_lengths = initial_carry = None
  if extras != "plain":
    seq_lengths = jnp.asarray(LENGTHS, jnp.int32)
    zeros = recurrent.stack(cell, core, xs, time_major=True)[0]
    initial_carry = jax.tree.map(lambda z: normal(z.shape, 1), zeros)
  rng = jax.random.key(5)
  carries, ys = model.apply(
    {"params": params},
    xs,
    seq_lengths=seq_lengths,
    initial_carry=initial_carry,
    deterministic=False,
    rngs={"dropout": rng},
  )
  keys = None
  if use_dropout:
    keys = recurrent.sequence_keys(module_dropout_key(rng), jnp.arange(B))
  ref_carries, ref_ys = core_reference(
    cell,
    core,
    xs,
    reverse=reverse,
    keys=keys,
    seq_lengths=seq_lengths,
    initial_carry=initial_carry,
    time_major=time_major,
    **rates,
  )
  width = H * (2 if bidirectional else 1)
  assert ys.shape == ((T, B, width) if time_major else (B, T, width))
  assert_trees_close(ys, ref_ys)
  assert_trees_close(carries, ref_carries)
  if use_dropout:
    _, ys_off = model.apply({"params": params}, xs, seq_lengths=seq_lengths, deterministic=True)
    assert not np.allclose(ys, ys_off), "dropout must change the outputs"


@pytest.mark.parametrize("name", list(LAYERS))
def test_return_carry_false_and_bf16(name, eager):
  """return_carry=False returns the outputs alone; dtype=bfloat16 equals the core cell
  made with dtype=bfloat16 (float32 params and carry)."""
  module_cls, factory = LAYERS[name]
  model = module_cls(H, num_layers=2, dtype=jnp.bfloat16)
  xs = normal((B, T, IN), 0)
  params = model.init(jax.random.key(0), xs)["params"]
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  ys = model.apply({"params": params}, xs)
  _, ref = recurrent.stack(factory(H, dtype=jnp.bfloat16), rnn.to_core(params), xs)
  assert ys.dtype == ref.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(ys, np.float32), np.asarray(ref, np.float32))


def test_param_tree_and_init(eager):
  """Params are the core's fields under readable names, drawn by the core's init (the
  forget bias of recurrent.lstm), in param_dtype."""
  model = rnn.LSTM(H, num_layers=2, bidirectional=True, param_dtype=jnp.bfloat16)
  xs = normal((B, T, IN), 0)
  # Shapes and dtypes only: recurrent.cell.orthogonal_blocks calls
  # jnp.promote_types(bfloat16, float32), which strict promotion rejects (a core issue).
  with jax.numpy_dtype_promotion("standard"):
    params = jax.eval_shape(model.init, jax.random.key(0), xs)["params"]
  assert sorted(params) == ["layer_0", "layer_1"]
  assert sorted(params["layer_1"]) == ["backward", "forward"]
  layer = params["layer_1"]["forward"]
  assert sorted(layer) == ["b", "w_hh", "w_ih"]
  assert layer["w_ih"].shape == (2 * H, 4 * H) and layer["w_ih"].dtype == jnp.bfloat16
  b = rnn.LSTM(H).init(jax.random.key(0), xs)["params"]["layer_0"]["b"]
  np.testing.assert_array_equal(b, recurrent.lstm(H).init(jax.random.key(0), IN).b)
  gru_params = jax.eval_shape(rnn.GRU(H).init, jax.random.key(0), xs)["params"]
  assert sorted(gru_params["layer_0"]) == ["b_hh", "b_ih", "w_hh", "w_ih"]


def test_example_ids_make_masks_independent_of_batch_layout(eager):
  """Permuting the batch and its example_ids permutes the outputs (same masks per example)."""
  model = rnn.LSTM(H, dropout=0.4, recurrent_dropout=0.4)
  xs = normal((B, T, IN), 0)
  params = model.init(jax.random.key(0), xs, deterministic=True)
  ids, perm = jnp.array([10, 20, 30]), np.array([2, 0, 1])
  rngs = {"dropout": jax.random.key(3)}
  ys = model.apply(params, xs, example_ids=ids, deterministic=False, rngs=rngs)
  ys_perm = model.apply(params, xs[perm], example_ids=ids[perm], deterministic=False, rngs=rngs)
  np.testing.assert_allclose(ys[perm], ys_perm, rtol=TOL, atol=TOL)


class _Tagger(nn.Module):
  @nn.compact
  def __call__(self, tokens, lengths, deterministic):
    xs = nn.Embed(11, 8)(tokens)
    ys = rnn.LSTM(H, num_layers=2, bidirectional=True, dropout=(0.0, 0.2), recurrent_dropout=0.2)(
      xs, seq_lengths=lengths, deterministic=deterministic
    )
    return nn.Dense(3)(ys)


def test_training_reduces_loss():
  """Embed -> LSTM(2 layers, bidirectional, dropout) -> Dense, 5 adam steps under jit:
  the (deterministic) loss on the batch falls."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (B, T)), jnp.int32)
  labels = tokens % 3
  lengths = jnp.asarray(LENGTHS, jnp.int32)
  model, tx = _Tagger(), optax.adam(3e-2)
  params = model.init(jax.random.key(0), tokens, lengths, True)["params"]

  def loss_fn(params, rngs):
    deterministic = rngs is None
    logits = model.apply({"params": params}, tokens, lengths, deterministic, rngs=rngs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @jax.jit
  def train_step(params, opt_state, step):
    rng = jax.random.fold_in(jax.random.key(1), step)
    grads = jax.grad(loss_fn)(params, {"dropout": rng})
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  eval_loss = jax.jit(lambda params: loss_fn(params, None))
  # optax's adam computes `decay ** count` (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    opt_state = tx.init(params)
    before = eval_loss(params)
    for step in range(5):
      params, opt_state = train_step(params, opt_state, step)
    after = eval_loss(params)
  assert after < before


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_cells_in_flax_rnn_match_layers(name, eager):
  """rnn.LSTMCell/GRUCell inside nn.RNN and nn.Bidirectional vs the rnn.LSTM/GRU layers
  with the same params: outputs at valid steps and final carries."""
  cell_cls = rnn.LSTMCell if name == "lstm" else rnn.GRUCell
  layer_cls = LAYERS[name][0]
  xs, lengths = normal((B, T, IN), 0), jnp.asarray(LENGTHS, jnp.int32)
  valid = np.arange(T)[None, :] < LENGTHS[:, None]

  flax_rnn = nn.RNN(cell_cls(H), return_carry=True)
  variables = flax_rnn.init(jax.random.key(0), xs)
  flax_carry, flax_ys = flax_rnn.apply(variables, xs, seq_lengths=lengths)
  core = rnn.to_core(variables["params"]["cell"])
  layer = layer_cls(H, return_carry=True)
  (carry,), ys = layer.apply({"params": rnn.from_core([core])}, xs, seq_lengths=lengths)
  np.testing.assert_allclose(ys[valid], flax_ys[valid], rtol=TOL, atol=TOL)
  # Flax's carry convention: (c, h) for the LSTM, h for the GRU
  assert_trees_close(carry, core_carry(name, flax_carry))

  flax_bi = nn.Bidirectional(nn.RNN(cell_cls(H)), nn.RNN(cell_cls(H)), return_carry=True)
  variables = flax_bi.init(jax.random.key(1), xs)
  (flax_fwd, flax_bwd), flax_ys = flax_bi.apply(variables, xs, seq_lengths=lengths)
  p = variables["params"]
  core = recurrent.Bidirectional(
    rnn.to_core(p["forward_rnn"]["cell"]), rnn.to_core(p["backward_rnn"]["cell"])
  )
  layer = layer_cls(H, bidirectional=True, return_carry=True)
  (carry,), ys = layer.apply({"params": rnn.from_core([core])}, xs, seq_lengths=lengths)
  np.testing.assert_allclose(ys[valid], flax_ys[valid], rtol=TOL, atol=TOL)
  assert_trees_close(
    carry, recurrent.Bidirectional(core_carry(name, flax_fwd), core_carry(name, flax_bwd))
  )


def core_carry(name, carry):
  """Flax's carry -> the core's: (c, h) -> LSTMState(h, c), h -> GRUState(h)."""
  return recurrent.LSTMState(carry[1], carry[0]) if name == "lstm" else recurrent.GRUState(carry)


def test_from_flax_optimized_lstm_cell(eager):
  """convert.from_flax of Flax's OptimizedLSTMCell params, loaded with from_core, gives
  Flax's outputs in rnn.LSTMCell (one step, Flax carry (c, h)) and in rnn.LSTM (nn.RNN)."""
  flax_cell = nn.OptimizedLSTMCell(H)
  xs = normal((B, T, IN), 0)
  flax_rnn = nn.RNN(flax_cell)
  variables = flax_rnn.init(jax.random.key(0), xs)
  cell_vars = {"params": variables["params"]["cell"]}
  # Non-zero biases, so a misplaced bias shows.
  cell_vars = jax.tree.map(lambda a: a + normal(a.shape, 7, 0.1), cell_vars)
  core = convert.from_flax(cell_vars)

  c, h = normal((B, H), 1), normal((B, H), 2)
  (flax_c, flax_h), flax_y = flax_cell.apply(cell_vars, (c, h), xs[:, 0])
  (new_c, new_h), y = rnn.LSTMCell(H).apply({"params": rnn.from_core(core)}, (c, h), xs[:, 0])
  assert_trees_close((y, new_h, new_c), (flax_y, flax_h, flax_c))

  flax_ys = flax_rnn.apply({"params": {"cell": cell_vars["params"]}}, xs)
  ys = rnn.LSTM(H).apply({"params": rnn.from_core([core])}, xs)
  np.testing.assert_allclose(ys, flax_ys, rtol=TOL, atol=TOL)


def test_to_core_from_core_round_trip(eager):
  core = recurrent.init_layers(recurrent.gru(H), jax.random.key(0), IN, 2, bidirectional=True)
  params = rnn.from_core(core)
  assert_trees_close(rnn.to_core(params), core)
  assert_trees_close(rnn.to_core({"params": params}), core)
  assert_trees_close(rnn.from_core(rnn.to_core(params)), params)
  cell_params = recurrent.lstm(H).init(jax.random.key(1), IN)
  assert_trees_close(rnn.to_core(rnn.from_core(cell_params)), cell_params)


def test_serialization_round_trip(eager):
  """Params survive flax.serialization to_bytes/from_bytes and msgpack_restore."""
  model = rnn.LSTM(H, num_layers=2, bidirectional=True)
  xs = normal((B, T, IN), 0)
  variables = model.init(jax.random.key(0), xs)
  data = serialization.to_bytes(variables)
  zeros = jax.tree.map(jnp.zeros_like, variables)
  restored = serialization.from_bytes(zeros, data)
  assert_trees_close(restored, variables)
  raw = serialization.msgpack_restore(data)
  np.testing.assert_array_equal(model.apply(raw, xs), model.apply(variables, xs))


def test_tabulate(eager):
  """nn.tabulate lists the layer and its parameter count."""
  model = rnn.LSTM(H, num_layers=2, bidirectional=True)
  xs = normal((B, T, IN), 0)
  table = nn.tabulate(model, jax.random.key(0))(xs)
  core = recurrent.init_layers(recurrent.lstm(H), jax.random.key(0), IN, 2, bidirectional=True)
  count = sum(leaf.size for leaf in jax.tree.leaves(core))
  assert "LSTM" in table
  assert f"{count:,}" in table


def _init(model, xs, **kwargs):
  return model.init(jax.random.key(0), xs, **kwargs)


def test_errors(eager):
  xs = normal((B, T, IN), 0)
  model = rnn.LSTM(H, dropout=0.2)
  variables = _init(model, xs, deterministic=True)
  with pytest.raises(ValueError, match=r"no 'dropout'.*rng.*deterministic=True"):
    model.apply(variables, xs, deterministic=False)
  with pytest.raises(ValueError, match="deterministic"):
    model.apply(variables, xs)  # dropout on, no flag anywhere
  with pytest.raises(ValueError, match="inputs has feature size 5 but params expect input_size 4"):
    model.apply(variables, normal((B, T, 5), 0), deterministic=True)
  with pytest.raises(ValueError, match=r"inputs must have shape \[B..., T, I\]"):
    _init(rnn.GRU(H), normal((T,), 0))
  with pytest.raises(TypeError, match="inputs has dtype int32"):
    _init(rnn.GRU(H), jnp.ones((B, T, IN), jnp.int32))
  with pytest.raises(ValueError, match="reverse=True cannot be combined with bidirectional"):
    _init(rnn.LSTM(H, bidirectional=True, reverse=True), xs)
  with pytest.raises(ValueError, match="reverse=True needs num_layers=1"):
    _init(rnn.LSTM(H, num_layers=2, reverse=True), xs)
  with pytest.raises(ValueError, match="example_ids has shape"):
    model.apply(variables, xs, example_ids=jnp.arange(4), deterministic=False,
                rngs={"dropout": jax.random.key(0)})  # fmt: skip
  with pytest.raises(ValueError, match="initial_carry has 1 layers; expected one per layer"):
    _init(rnn.LSTM(H, num_layers=2), xs, initial_carry=[recurrent.lstm(H).initial_carry(B)])
  cell = rnn.LSTMCell(H)
  carry = cell.initialize_carry(jax.random.key(0), (B, IN))
  cell_vars = cell.init(jax.random.key(0), carry, xs[:, 0])
  with pytest.raises(ValueError, match="inputs has feature size 5"):
    cell.apply(cell_vars, carry, normal((B, 5), 0))
