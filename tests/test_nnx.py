"""``recurrent.nnx``: the NNX layers and cells against the pure core and Flax's nnx.RNN.

Shape legend: B batch, T time, IN input size (I in the docstrings), H hidden size.

References: every layer output is compared with :func:`recurrent.stack` (or
:func:`recurrent.scan` for a reversed layer) on the module's params mapped by ``to_core``;
dropout keys are ``recurrent.sequence_keys(key, arange(B))`` of the key the layer draws
(passed explicitly, or the next key of an identically forked ``'dropout'`` stream). The
cells inside ``nnx.RNN`` are compared with the layers, Flax's ``OptimizedLSTMCell``
with the ``from_flax`` path.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import recurrent
from recurrent import convert
from recurrent import nnx as rnnx

B, T, IN, H = 3, 5, 4, 6
LENGTHS = np.array([T, 2, 4])
TOL = 1e-5

LAYERS = {"lstm": (rnnx.LSTM, recurrent.lstm), "gru": (rnnx.GRU, recurrent.gru)}
# (num_layers, bidirectional, reverse)
LAYOUTS = {"1-forward": (1, False, False), "1-reverse": (1, False, True), "2-bi": (2, True, False)}


def normal(shape, seed, scale=1.0):
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def assert_trees_close(a, b, tol=TOL):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32), tol, tol)


def core_reference(cell, core, xs, *, reverse, keys, initial_carry, **options):
  if reverse:
    key = None if keys is None else recurrent.dropout.derive(keys, 0)
    carry = None if initial_carry is None else initial_carry[0]
    final, ys = recurrent.scan(
      cell, core[0], xs, reverse=True, key=key, initial_carry=carry, **options
    )
    return [final], ys
  return recurrent.stack(cell, core, xs, key=keys, initial_carry=initial_carry, **options)


@pytest.mark.parametrize("extras", ["plain", "dropout+time_major+lengths+carry"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_core(name, layout, extras, eager):
  """LSTM/GRU vs recurrent.stack/scan on to_core(model), over a product of options; with
  dropout, the same key gives the same outputs, and they differ from model.eval()'s."""
  module_cls, factory = LAYERS[name]
  num_layers, bidirectional, reverse = LAYOUTS[layout]
  on = extras != "plain"
  # Two layers drop only between them, PyTorch's placement.
  rates = dict(dropout=(0.0, 0.3) if num_layers == 2 else 0.3, recurrent_dropout=0.3)
  rates = rates if on else {}
  model = module_cls(
    IN,
    H,
    num_layers=num_layers,
    bidirectional=bidirectional,
    reverse=reverse,
    time_major=on,
    return_carry=True,
    rngs=nnx.Rngs(0),
    **rates,
  )
  xs = normal((T, B, IN) if on else (B, T, IN), 0)
  cell, core = factory(H), rnnx.to_core(model)
  seq_lengths = initial_carry = keys = None
  key = jax.random.key(5)
  if on:
    seq_lengths = jnp.asarray(LENGTHS, jnp.int32)
    zeros = recurrent.stack(cell, core, xs, time_major=True)[0]
    initial_carry = jax.tree.map(lambda z: normal(z.shape, 1), zeros)
    keys = recurrent.sequence_keys(key, jnp.arange(B))
  carries, ys = model(xs, seq_lengths=seq_lengths, initial_carry=initial_carry, rngs=key)
  ref_carries, ref_ys = core_reference(
    cell,
    core,
    xs,
    reverse=reverse,
    keys=keys,
    initial_carry=initial_carry,
    seq_lengths=seq_lengths,
    time_major=on,
    **rates,
  )
  assert_trees_close(ys, ref_ys)
  assert_trees_close(carries, ref_carries)
  if on:
    model.eval()
    _, ys_off = model(xs, seq_lengths=seq_lengths, initial_carry=initial_carry)
    assert not np.allclose(ys, ys_off), "dropout must change the outputs"


def test_dropout_stream_and_train_eval(eager):
  """Without a call-time key the layer draws from its forked 'dropout' stream;
  eval()/train() and nnx.view set `deterministic`."""
  model = rnnx.GRU(IN, H, recurrent_dropout=0.4, rngs=nnx.Rngs(params=0, dropout=1))
  xs = normal((B, T, IN), 0)
  stream = nnx.Rngs(params=0, dropout=1)["dropout"].fork()
  ys = model(xs)
  _, ref = recurrent.stack(
    recurrent.gru(H),
    rnnx.to_core(model),
    xs,
    recurrent_dropout=0.4,
    key=recurrent.sequence_keys(stream(), jnp.arange(B)),
  )
  np.testing.assert_allclose(ys, ref, rtol=TOL, atol=TOL)
  _, plain = recurrent.stack(recurrent.gru(H), rnnx.to_core(model), xs)
  model.eval()
  assert model.deterministic is True
  np.testing.assert_allclose(model(xs), plain, rtol=TOL, atol=TOL)
  model.train()
  assert model.deterministic is False
  assert not np.allclose(model(xs), plain)
  assert nnx.view(model, deterministic=True).deterministic is True
  np.testing.assert_allclose(model(xs, deterministic=True), plain, rtol=TOL, atol=TOL)


def test_bf16_and_param_layout(eager):
  """dtype=bfloat16 equals the core cell made so; the param state has the linen layout."""
  model = rnnx.LSTM(IN, H, num_layers=2, bidirectional=True, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  state = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  assert sorted(state) == ["layer_0", "layer_1"]
  assert sorted(state["layer_1"]["forward"]) == ["b", "w_hh", "w_ih"]
  assert state["layer_1"]["forward"]["w_ih"].shape == (2 * H, 4 * H)
  xs = normal((B, T, IN), 0)
  _, ref = recurrent.stack(recurrent.lstm(H, dtype=jnp.bfloat16), rnnx.to_core(model), xs)
  ys = model(xs)
  assert ys.dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(ys, np.float32), np.asarray(ref, np.float32))


class _Tagger(nnx.Module):
  def __init__(self, rngs):
    self.embed = nnx.Embed(11, 8, rngs=rngs)
    self.lstm = rnnx.LSTM(
      8, H, num_layers=2, bidirectional=True, dropout=(0.0, 0.2), recurrent_dropout=0.2, rngs=rngs
    )
    self.out = nnx.Linear(2 * H, 3, rngs=rngs)

  def __call__(self, tokens, lengths):
    return self.out(self.lstm(self.embed(tokens), seq_lengths=lengths))


def test_training_reduces_loss():
  """Embed -> LSTM(2 layers, bidirectional, dropout) -> Linear, 5 adam steps with
  nnx.jit and nnx.Optimizer: the eval-mode loss on the batch falls."""
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 11, (B, T)), jnp.int32)
  labels, lengths = tokens % 3, jnp.asarray(LENGTHS, jnp.int32)
  model = _Tagger(nnx.Rngs(params=0, dropout=1))

  def loss_fn(model):
    logits = model(tokens, lengths)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  eval_loss = nnx.jit(loss_fn)
  # optax's adam computes `decay ** count` (float ** int32), which strict promotion rejects.
  with jax.numpy_dtype_promotion("standard"):
    optimizer = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)
    model.eval()
    before = eval_loss(model)
    model.train()
    for _ in range(5):
      train_step(model, optimizer)
    model.eval()
    after = eval_loss(model)
  assert after < before


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_cells_in_nnx_rnn_match_layer(name, eager):
  """rnnx.LSTMCell/GRUCell inside nnx.RNN vs the rnnx layer loaded with the cell's params."""
  cell_cls = rnnx.LSTMCell if name == "lstm" else rnnx.GRUCell
  module_cls = LAYERS[name][0]
  cell = cell_cls(IN, H, rngs=nnx.Rngs(0))
  xs = normal((B, T, IN), 0)
  ys = nnx.RNN(cell)(xs)
  layer = module_cls(IN, H, rngs=nnx.Rngs(1))
  rnnx.load_core(layer, [rnnx.to_core(cell)])
  np.testing.assert_allclose(layer(xs), ys, rtol=TOL, atol=TOL)


def test_from_flax_and_load_core_round_trip(eager):
  """Flax OptimizedLSTMCell params -> convert.from_flax -> load_core: rnnx.LSTMCell gives
  Flax's step; a layer's to_core/load_core round trip is exact."""
  flax_cell = nn.OptimizedLSTMCell(H)
  x, c, h = normal((B, IN), 0), normal((B, H), 1), normal((B, H), 2)
  variables = flax_cell.init(jax.random.key(0), (c, h), x)
  variables = jax.tree.map(lambda a: a + normal(a.shape, 7, 0.1), variables)
  (flax_c, flax_h), flax_y = flax_cell.apply(variables, (c, h), x)
  cell = rnnx.LSTMCell(IN, H, rngs=nnx.Rngs(0))
  rnnx.load_core(cell, convert.from_flax(variables))
  (new_c, new_h), y = cell((c, h), x)
  assert_trees_close((y, new_h, new_c), (flax_y, flax_h, flax_c))

  core = recurrent.init_layers(recurrent.gru(H), jax.random.key(3), IN, 2, bidirectional=True)
  model = rnnx.GRU(IN, H, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
  rnnx.load_core(model, core)
  assert_trees_close(rnnx.to_core(model), core)
  assert_trees_close(rnnx.to_core(nnx.state(model, nnx.Param)), core)
  assert_trees_close(rnnx.from_core(core), nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_errors(eager):
  with pytest.raises(ValueError, match="neither a 'dropout' nor a 'default' stream"):
    rnnx.LSTM(IN, H, dropout=0.2, rngs=nnx.Rngs(params=0))
  model = rnnx.LSTM(IN, H, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="inputs has feature size 5 but params expect input_size 4"):
    model(normal((B, T, 5), 0))
  with pytest.raises(ValueError, match=r"inputs must have shape \[B..., T, I\]"):
    model(normal((T,), 0))
  with pytest.raises(ValueError, match="reverse=True cannot be combined with bidirectional"):
    rnnx.GRU(IN, H, bidirectional=True, reverse=True, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="core params have shapes"):
    rnnx.load_core(model, recurrent.init_layers(recurrent.lstm(H), jax.random.key(0), 5))
  cell = rnnx.GRUCell(IN, H, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="inputs has feature size 5"):
    cell(cell.initialize_carry((B, 5)), normal((B, 5), 0))
