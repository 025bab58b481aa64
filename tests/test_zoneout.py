"""Zoneout (recurrent/zoneout.py) against a float64 NumPy loop written from Krueger et al.'s
equations (the cell steps from tests/numpy_reference.py), with masks drawn as the module
documents: ``bernoulli(fold_in(derive(key, 2, field), t), rate)`` per step, or
``bernoulli(derive(key, 2, field), rate)`` held at every step."""

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
RATES = {"lstm": {"h": 0.3, "c": 0.6}, "gru": {"h": 0.4}}


def _setup(kind, seed=0):
  cell = getattr(recurrent, kind)(H)
  params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.key(seed), IN))
  rng = np.random.default_rng(seed)
  xs = jnp.asarray(rng.standard_normal((B, T, IN)), jnp.float32)
  return cell, params, xs


def _masks(keys, fields, rates, per_step):
  """The documented masks: {field: bool [B, T, H]}."""
  out = {}
  for i, name in enumerate(fields):
    if name not in rates:
      continue
    rows = []
    for k in recurrent.dropout.derive(keys, 2, i):
      if per_step:
        rows.append(
          [jax.random.bernoulli(jax.random.fold_in(k, t), rates[name], (H,)) for t in range(T)]
        )
      else:
        rows.append([jax.random.bernoulli(k, rates[name], (H,))] * T)
    out[name] = np.asarray(rows)
  return out


def _numpy_zoneout(kind, params, xs, rates, masks=None, lengths=None, reverse=False):
  """Krueger et al.: s_t = d * s_{t-1} + (1 - d) * s~_t (d the mask, or the rate at
  evaluation), the output the zoned h; padded steps hold the carry and output zeros."""
  fields = ("h", "c") if kind == "lstm" else ("h",)
  xs = np.asarray(xs, np.float64)
  lengths = np.full(B, T) if lengths is None else np.asarray(lengths)
  outputs = np.zeros((B, T, H))
  final = {k: np.zeros((B, H)) for k in fields}
  for b in range(B):
    carry = {k: np.zeros(H) for k in fields}
    order = range(lengths[b] - 1, -1, -1) if reverse else range(lengths[b])
    for t in order:
      if kind == "lstm":
        h, c, _ = ref.lstm_step(params, carry["h"], carry["c"], xs[b, t])
        new = {"h": h, "c": c}
      else:
        new = {"h": ref.gru_step(params, carry["h"], xs[b, t])[0]}
      for k in fields:
        if k in rates:
          d = rates[k] if masks is None else masks[k][b, t].astype(np.float64)
          new[k] = d * carry[k] + (1.0 - d) * new[k]
      carry = new
      outputs[b, t] = carry["h"]
    final = {k: np.concatenate([final[k][:b], carry[k][None], final[k][b + 1 :]]) for k in fields}
  return outputs, final


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("per_step", [True, False], ids=["per-step", "time-invariant"])
@pytest.mark.parametrize("lengths, reverse", [(None, False), ([6, 2, 0], True)])
def test_zoneout_equals_numpy(kind, per_step, lengths, reverse):
  """Training (masks) and evaluation (expected value) against the NumPy loop, with
  lengths and reverse."""
  cell, params, xs = _setup(kind)
  rates = RATES[kind]
  zcell = recurrent.zoneout(cell, per_step=per_step, **rates)
  keys = recurrent.sequence_keys(jax.random.key(7), B)
  seq_lengths = None if lengths is None else jnp.asarray(lengths)
  run = jax.jit(
    lambda p, x, det: recurrent.scan(
      zcell, p, x, key=keys, seq_lengths=seq_lengths, reverse=reverse, deterministic=det
    ),
    static_argnums=2,
  )
  masks = _masks(keys, type(cell.initial_carry())._fields, rates, per_step)
  for det, m in ((False, masks), (True, None)):
    final, ys = run(params, xs, det)
    want_ys, want_final = _numpy_zoneout(kind, params, xs, rates, m, lengths, reverse)
    np.testing.assert_allclose(ys, want_ys, rtol=1e-5, atol=1e-5)
    for name in want_final:
      np.testing.assert_allclose(getattr(final, name), want_final[name], rtol=1e-5, atol=1e-5)


def test_zoneout_masks_rate_and_time_structure():
  """Per-step masks change over time, time-invariant ones do not; both zone out about
  ``rate`` of the units; the two fields' masks are independent."""
  keys = recurrent.sequence_keys(jax.random.key(0), 64)
  for per_step in (True, False):
    masks = _masks(keys, ("h", "c"), {"h": 0.3, "c": 0.3}, per_step)
    cell = recurrent.zoneout(recurrent.lstm(H), per_step=per_step, h=0.3, c=0.3)
    _, noise = cell.draw(None, keys, T)
    for name in ("h", "c"):
      np.testing.assert_array_equal(np.moveaxis(np.asarray(noise[name]), 0, 1), masks[name])
    drawn = np.asarray(noise["h"])
    assert abs(drawn.mean() - 0.3) < 0.05
    changes = np.any(drawn[1:] != drawn[:-1])
    assert changes == per_step
    assert not np.array_equal(noise["h"], noise["c"])


def test_zoneout_masks_do_not_depend_on_the_batch_layout():
  """A sequence's masks come from its own key: permuting the batch (and its ids) permutes
  the outputs exactly."""
  cell, params, xs = _setup("lstm")
  zcell = recurrent.zoneout(cell, h=0.3, c=0.5)
  ids = jnp.array([10, 11, 12])
  perm = jnp.array([2, 0, 1])

  def run(x, i):
    return recurrent.scan(zcell, params, x, key=recurrent.sequence_keys(jax.random.key(1), i))[1]

  np.testing.assert_allclose(run(xs, ids)[perm], run(xs[perm], ids[perm]), rtol=1e-6, atol=1e-6)


def test_zoneout_gradients_equal_a_python_loop():
  """Gradients through the scan equal those of a Python loop over ``recur`` with the
  same noise (plain autodiff both ways)."""
  cell, params, xs = _setup("lstm")
  zcell = recurrent.zoneout(cell, h=0.3, c=0.5)
  keys = recurrent.sequence_keys(jax.random.key(2), B)

  def by_scan(p, x):
    return jnp.sum(jnp.sin(recurrent.scan(zcell, p, x, key=keys)[1]))

  def by_loop(p, x):
    _, noise = zcell.draw(p, keys, T)
    carry, total = zcell.initial_carry((B,)), 0.0
    for t in range(T):
      xp = zcell.project(p, x[:, t])
      carry, h, _ = zcell.recur(
        p, carry, recurrent.cell.Noisy(xp, jax.tree.map(lambda n, t=t: n[t], noise))
      )
      total = total + jnp.sum(jnp.sin(h))
    return total

  got = jax.grad(by_scan, argnums=(0, 1))(params, xs)
  want = jax.grad(by_loop, argnums=(0, 1))(params, xs)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_zoneout_in_stack_vmap_and_the_flax_layers():
  """In a bidirectional stack with lengths, dropout and remat under jit and vmap, and in
  linen's and NNX's RNN layers: each equals recurrent.stack on the same params and keys."""
  cell = recurrent.zoneout(recurrent.lstm(H), h=0.1, c=0.4)
  xs = _setup("lstm")[2]
  layers = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True)
  keys = recurrent.sequence_keys(jax.random.key(1), B)
  lengths = jnp.array([6, 3, 1])

  def stack(p, x, **kw):
    return recurrent.stack(cell, p, x, key=keys, seq_lengths=lengths, dropout=0.2, **kw)[1]

  ys = jax.jit(stack)(layers, xs)
  assert ys.shape == (B, T, 2 * H) and np.all(np.asarray(ys)[2, 1:] == 0)
  np.testing.assert_allclose(
    jax.jit(lambda p, x: stack(p, x, remat_every=4))(layers, xs), ys, rtol=1e-5, atol=1e-6
  )
  batched = jax.vmap(stack, in_axes=(None, 0))(layers, jnp.stack([xs, 2 * xs]))
  np.testing.assert_allclose(batched[0], ys, rtol=1e-5, atol=1e-6)

  model = rnn.RNN(cell=cell, num_layers=2, bidirectional=True, dropout=0.2)
  variables = model.init(jax.random.key(0), xs, deterministic=True)
  rng = jax.random.key(5)
  got = model.apply(variables, xs, seq_lengths=lengths, deterministic=False, rngs={"dropout": rng})
  core = rnn.to_core(variables["params"])
  want_det = recurrent.stack(cell, core, xs, seq_lengths=lengths, deterministic=True)[1]
  got_det = model.apply(variables, xs, seq_lengths=lengths, deterministic=True)
  np.testing.assert_allclose(got_det, want_det, rtol=1e-6, atol=1e-6)
  assert not np.allclose(got, got_det)

  nmodel = rnnx.RNN(
    IN, cell=cell, num_layers=2, bidirectional=True, rngs=nnx.Rngs(params=0, dropout=1)
  )
  rnnx.load_core(nmodel, core)
  nmodel.eval()
  np.testing.assert_allclose(nmodel(xs, seq_lengths=lengths), want_det, rtol=1e-6, atol=1e-6)
  nmodel.train()
  assert not np.allclose(nmodel(xs, seq_lengths=lengths), want_det)


def test_zoneout_refuses_unknown_fields_and_bad_rates():
  with pytest.raises(
    ValueError, match=r"^zoneout rates name \['c'\]; the carry's fields are \['h'\]$"
  ):
    recurrent.zoneout(recurrent.gru(H), c=0.1)
  with pytest.raises(ValueError, match=r"^h must be in \[0, 1\), got 1.0$"):
    recurrent.zoneout(recurrent.lstm(H), h=1.0)
  with pytest.raises(ValueError, match=r"^zoneout needs a rate"):
    recurrent.zoneout(recurrent.lstm(H))
