"""Weight-drop (recurrent/weight_drop.py) against a float64 NumPy loop (the LSTM and GRU
steps of tests/numpy_reference.py) run with ``w_hh * mask``, the mask drawn as the module
documents: inverted dropout from ``call_key(keys)``, the sum of the call's per-sequence
key data folded with stream 3."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import recurrent
import recurrent.linen as rnn
from recurrent import nnx as rnnx
from tests import numpy_reference as ref

B, T, IN, H = 3, 6, 4, 5


def _setup(kind):
  cell = getattr(recurrent, kind)(H)
  params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.key(0), IN))
  xs = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, IN)), jnp.float32)
  return cell, params, xs


def _mask(keys, shape, rate):
  """The documented mask: bernoulli(1 - rate) / (1 - rate) from the call's key."""
  data = np.asarray(jax.random.key_data(keys)).astype(np.uint64)
  summed = (data.reshape(-1, data.shape[-1]).sum(axis=0) % 2**32).astype(np.uint32)
  key = jax.random.fold_in(jax.random.wrap_key_data(jnp.asarray(summed)), 3)
  kept = jax.random.bernoulli(key, 1.0 - rate, (1, int(np.prod(shape))))
  return np.where(np.asarray(kept), 1.0 / (1.0 - rate), 0.0).reshape(shape)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("lengths, reverse", [(None, False), ([6, 2, 0], True)])
def test_weight_drop_equals_numpy(kind, lengths, reverse):
  """Training: the NumPy loop with ``w_hh * mask`` (one mask for every sequence and
  step); evaluation: the cell unchanged."""
  cell, params, xs = _setup(kind)
  rate = 0.4
  dcell = recurrent.weight_drop(cell, rate)
  keys = recurrent.sequence_keys(jax.random.key(7), B)
  seq_lengths = None if lengths is None else jnp.asarray(lengths)

  def run(det):
    return recurrent.scan(
      dcell, params, xs, key=keys, seq_lengths=seq_lengths, reverse=reverse, deterministic=det
    )

  mask = _mask(keys, params.w_hh.shape, rate)
  assert 0.2 < np.mean(mask == 0) < 0.6
  for det, w_hh in ((False, np.asarray(params.w_hh, np.float64) * mask), (True, params.w_hh)):
    final, ys = jax.jit(lambda det=det: run(det))()
    want = ref.run(kind, params._replace(w_hh=w_hh), xs, seq_lengths=lengths, reverse=reverse)
    np.testing.assert_allclose(ys, want["outputs"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(final.h, want["final"]["h"], rtol=1e-5, atol=1e-5)


def test_weight_drop_keeps_the_fast_path_and_its_gradients_equal_autodiff():
  """The masked matrix is a plain matrix: the cell keeps its fast path, and its gradients
  (params, inputs) equal plain autodiff's, with recurrent dropout on as well."""
  cell, params, xs = _setup("lstm")
  dcell = recurrent.weight_drop(cell, 0.5)
  assert dcell.fast is cell.fast
  keys = recurrent.sequence_keys(jax.random.key(1), B)

  def loss(c):
    def f(p, x):
      return jnp.sum(jnp.sin(recurrent.scan(c, p, x, key=keys, recurrent_dropout=0.3)[1]))

    return jax.jit(jax.grad(f, argnums=(0, 1)))

  got, want = loss(dcell)(params, xs), loss(dcell._replace(fast=None))(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
  # dropped weights get no gradient
  mask = _mask(keys, params.w_hh.shape, 0.5)
  assert np.all(np.asarray(got[0].w_hh)[mask == 0] == 0)


def test_weight_drop_mask_does_not_depend_on_the_batch_order():
  """One mask per call, from the sum of the sequences' keys: permuting the batch permutes
  the outputs exactly; another step's keys draw another mask."""
  cell, params, xs = _setup("lstm")
  dcell = recurrent.weight_drop(cell, 0.5)
  ids, perm = jnp.array([4, 5, 6]), jnp.array([1, 2, 0])

  def run(step, x, i):
    return recurrent.scan(dcell, params, x, key=recurrent.sequence_keys(step, i))[1]

  k = jax.random.key(3)
  np.testing.assert_allclose(run(k, xs, ids)[perm], run(k, xs[perm], ids[perm]), rtol=1e-6)
  assert not np.allclose(run(k, xs, ids), run(jax.random.key(4), xs, ids))


def test_weight_drop_in_stack_vmap_and_the_flax_layers():
  """Bidirectional stack with lengths under jit and vmap; linen's and NNX's RNN layers
  equal recurrent.stack with dropout off and differ from it with dropout on."""
  cell = recurrent.weight_drop(recurrent.gru(H), 0.5)
  xs = _setup("gru")[2]
  layers = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True)
  keys = recurrent.sequence_keys(jax.random.key(1), B)
  lengths = jnp.array([6, 3, 1])

  def stack(p, x):
    return recurrent.stack(cell, p, x, key=keys, seq_lengths=lengths)[1]

  ys = jax.jit(stack)(layers, xs)
  assert ys.shape == (B, T, 2 * H) and np.all(np.asarray(ys)[2, 1:] == 0)
  batched = jax.vmap(stack, in_axes=(None, 0))(layers, jnp.stack([xs, 2 * xs]))
  np.testing.assert_allclose(batched[0], ys, rtol=1e-5, atol=1e-6)

  want = recurrent.stack(cell, layers, xs, seq_lengths=lengths, deterministic=True)[1]
  model = rnn.RNN(cell=cell, num_layers=2, bidirectional=True)
  variables = {"params": rnn.from_core(layers)}
  got = model.apply(variables, xs, seq_lengths=lengths, deterministic=True)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  dropped = model.apply(
    variables, xs, seq_lengths=lengths, deterministic=False, rngs={"dropout": jax.random.key(2)}
  )
  assert not np.allclose(dropped, want)
  nmodel = rnnx.RNN(IN, cell=cell, num_layers=2, bidirectional=True, rngs=nnx.Rngs(0))
  rnnx.load_core(nmodel, layers)
  nmodel.eval()
  np.testing.assert_allclose(nmodel(xs, seq_lengths=lengths), want, rtol=1e-6, atol=1e-6)


def test_weight_drop_refuses_bad_arguments():
  with pytest.raises(ValueError, match=r"^rate must be in \[0, 1\), got 1.0$"):
    recurrent.weight_drop(recurrent.lstm(H), 1.0)
  with pytest.raises(ValueError, match=r"^weight_drop field 'w_hr' is not in lstm's params"):
    recurrent.weight_drop(recurrent.lstm(H), 0.5, field="w_hr")
