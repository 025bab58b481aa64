"""The layer-normalised LSTM (``recurrent/layer_norm_lstm.py``) against a NumPy float64 loop
written here from the equations of Ba, Kiros & Hinton 2016 (per-gate LN), not from the
library code; its gradients against plain autodiff and finite differences; and the cell
in ``recurrent.stack``, ``jax.vmap`` and the Flax wrappers.

Shape legend: B batch, T time, IN input size (I in the docstrings), H hidden size.
"""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import recurrent
from recurrent import dropout as rdropout
from recurrent.layer_norm_lstm import LayerNormLSTMParams, layer_norm_lstm

B, T, IN, H = 3, 7, 4, 5
EPS = 1e-5
# A full sequence, an empty one and a partial one.
LENGTHS = np.array([T, 0, 4])
DROPOUT, RECURRENT_DROPOUT = 0.3, 0.4
F32_TOL = 1e-5
GRAD_TOL = dict(atol=1e-5, rtol=1e-5)


# --- the NumPy reference -------------------------------------------------------------------


def _f64(a):
  return np.asarray(a, dtype=np.float64)


def np_sigmoid(v):
  return 1.0 / (1.0 + np.exp(-v))


def np_layer_norm(v, gamma, beta):
  """``gamma * (v - mean) / sqrt(var + eps) + beta`` over the last axis (biased variance)."""
  mean = v.mean(axis=-1, keepdims=True)
  var = ((v - mean) ** 2).mean(axis=-1, keepdims=True)
  return gamma * (v - mean) / np.sqrt(var + EPS) + beta


def _per_gate(mask):
  """None, one mask or a list of 4 -> a list of 4 (None: no mask)."""
  if isinstance(mask, (list, tuple)):
    assert len(mask) == 4
    return [_f64(m) for m in mask]
  return [None if mask is None else _f64(mask)] * 4


def np_step(p, h, c, x, in_mask=None, rec_mask=None):
  """One step on ``x [..., IN]``, ``h, c [..., H]``: ``(h', c')``. Gate k uses columns
  ``k*H:(k+1)*H`` of every ``[.., 4H]`` param, in the order i, f, g, o."""
  mi, mh = _per_gate(in_mask), _per_gate(rec_mask)
  x, h, c = _f64(x), _f64(h), _f64(c)
  pre = []
  for k in range(4):
    cols = slice(k * H, (k + 1) * H)
    xk = x if mi[k] is None else x * mi[k]
    hk = h if mh[k] is None else h * mh[k]
    xw = xk @ _f64(p.w_ih)[:, cols]
    hw = hk @ _f64(p.w_hh)[:, cols]
    a = (
      np_layer_norm(xw, _f64(p.gamma_x)[cols], _f64(p.beta_x)[cols])
      + np_layer_norm(hw, _f64(p.gamma_h)[cols], _f64(p.beta_h)[cols])
      + _f64(p.b)[cols]
    )
    pre.append(a)
  i, f, g, o = np_sigmoid(pre[0]), np_sigmoid(pre[1]), np.tanh(pre[2]), np_sigmoid(pre[3])
  c_new = f * c + i * g
  h_new = o * np.tanh(np_layer_norm(c_new, _f64(p.gamma_c), _f64(p.beta_c)))
  return h_new, c_new


def _row(mask, b):
  if mask is None:
    return None
  if isinstance(mask, (list, tuple)):
    return [_f64(m)[b] for m in mask]
  return _f64(mask)[b]


def np_run(p, xs, *, seq_lengths=None, reverse=False, initial=None, in_mask=None, rec_mask=None):
  """The cell over ``xs [B, T, IN]``: ``(outputs [B, T, H], h [B, H], c [B, H])``.

  Sequence b runs steps ``0..len-1`` (``len-1..0`` when ``reverse``); the others output
  zeros and leave the carry alone. Masks are ``[B, F]`` (or lists of 4 of them)."""
  xs = _f64(xs)
  num_batch, num_steps, _ = xs.shape
  lengths = np.full(num_batch, num_steps) if seq_lengths is None else np.asarray(seq_lengths)
  outputs = np.zeros((num_batch, num_steps, H))
  hs, cs = np.zeros((num_batch, H)), np.zeros((num_batch, H))
  for b in range(num_batch):
    h, c = (np.zeros(H), np.zeros(H)) if initial is None else (_f64(v)[b] for v in initial)
    length = int(lengths[b])
    for t in range(length - 1, -1, -1) if reverse else range(length):
      h, c = np_step(p, h, c, xs[b, t], _row(in_mask, b), _row(rec_mask, b))
      outputs[b, t] = h
    hs[b], cs[b] = h, c
  return outputs, hs, cs


# --- helpers -------------------------------------------------------------------------------


def random_params(seed, input_size=IN, dtype=jnp.float32):
  """Every leaf random and away from its init (gammas around 1, betas and biases around 0),
  so a misplaced gate block, gain or shift shows up."""
  rng = np.random.default_rng(seed)

  def normal(shape, scale=0.5, centre=0.0):
    return jnp.asarray(centre + scale * rng.standard_normal(shape), dtype)

  return LayerNormLSTMParams(
    w_ih=normal((input_size, 4 * H)),
    w_hh=normal((H, 4 * H)),
    b=normal((4 * H,)),
    gamma_x=normal((4 * H,), 0.3, 1.0),
    beta_x=normal((4 * H,), 0.3),
    gamma_h=normal((4 * H,), 0.3, 1.0),
    beta_h=normal((4 * H,), 0.3),
    gamma_c=normal((H,), 0.3, 1.0),
    beta_c=normal((H,), 0.3),
  )


def random_stack(seed, input_size=IN):
  """Two bidirectional layers, laid out as ``recurrent.init_layers``."""
  return [
    recurrent.Bidirectional(
      random_params(seed + 2 * layer, size), random_params(seed + 2 * layer + 1, size)
    )
    for layer, size in enumerate((input_size, 2 * H))
  ]


def inputs(seed, shape=(B, T, IN), dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def seq_keys(batch=B):
  return recurrent.sequence_keys(jax.random.key(7), batch)


def driver_masks(keys, per_gate, input_size=IN, dtype=jnp.float32):
  """The masks ``recurrent.scan`` draws (``_input_masks`` in recurrent/scan.py)."""
  num = 4 if per_gate else 1
  m_in = rdropout.masks(rdropout.derive(keys, rdropout.INPUT), input_size, DROPOUT, num, dtype)
  m_rec = rdropout.masks(
    rdropout.derive(keys, rdropout.RECURRENT), H, RECURRENT_DROPOUT, num, dtype
  )
  if per_gate:
    return [np.asarray(m) for m in m_in], [np.asarray(m) for m in m_rec]
  return np.asarray(m_in[0]), np.asarray(m_rec[0])


def assert_close(actual, expected, tol=F32_TOL, what=""):
  np.testing.assert_allclose(
    np.asarray(actual, np.float64), expected, rtol=tol, atol=tol, err_msg=what
  )


# --- the cell ------------------------------------------------------------------------------


def test_init():
  """Shapes, dtypes and the documented initial values."""
  cell = layer_norm_lstm(H, forget_bias=2.0)
  p = cell.init(jax.random.key(0), IN)
  assert isinstance(p, LayerNormLSTMParams)
  shapes = {k: v.shape for k, v in p._asdict().items()}
  assert shapes == {
    "w_ih": (IN, 4 * H),
    "w_hh": (H, 4 * H),
    "b": (4 * H,),
    "gamma_x": (4 * H,),
    "beta_x": (4 * H,),
    "gamma_h": (4 * H,),
    "beta_h": (4 * H,),
    "gamma_c": (H,),
    "beta_c": (H,),
  }
  assert all(v.dtype == jnp.float32 for v in p)
  np.testing.assert_array_equal(p.b, np.repeat([0.0, 2.0, 0.0, 0.0], H))
  for gamma in (p.gamma_x, p.gamma_h, p.gamma_c):
    np.testing.assert_array_equal(gamma, 1.0)
  for beta in (p.beta_x, p.beta_h, p.beta_c):
    np.testing.assert_array_equal(beta, 0.0)
  # Each gate's recurrent block is orthogonal, as the LSTM's.
  for block in np.split(np.asarray(p.w_hh), 4, axis=1):
    np.testing.assert_allclose(block.T @ block, np.eye(H), atol=1e-5)
  assert cell.fast is None and cell.name == "layer_norm_lstm" and cell.num_gates == 4
  assert cell.input_size(p) == IN and cell.hidden_size == H
  carry = cell.initial_carry((2,))
  assert isinstance(carry, recurrent.LSTMState) and carry.h.shape == carry.c.shape == (2, H)


@pytest.mark.parametrize("batch_shape", [(), (B,), (2, 3)], ids=["unbatched", "B", "2x3"])
def test_step_matches_reference(batch_shape):
  """One cell.step (project + recur) on a random carry vs the reference step."""
  cell = layer_norm_lstm(H)
  p = random_params(0)
  rng = np.random.default_rng(1)
  h, c = (jnp.asarray(rng.standard_normal(batch_shape + (H,)), jnp.float32) for _ in "hc")
  x = inputs(2, batch_shape + (IN,))
  carry, out = cell.step(p, recurrent.LSTMState(h, c), x)
  ref_h, ref_c = np_step(p, h, c, x)
  assert isinstance(carry, recurrent.LSTMState)
  assert_close(out, ref_h, what="h")
  assert_close(carry.h, ref_h, what="carry.h")
  assert_close(carry.c, ref_c, what="carry.c")


CASES = {
  "plain": dict(),
  "lengths": dict(lengths=True),
  "reverse": dict(reverse=True),
  "lengths+reverse+carry": dict(lengths=True, reverse=True, carry=True),
  "dropout": dict(masks="shared"),
  "lengths+reverse+dropout": dict(lengths=True, reverse=True, masks="shared"),
  "per-gate-dropout+lengths": dict(lengths=True, masks="per_gate"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_scan_matches_reference(case):
  """recurrent.scan (float32) vs the float64 loop: outputs and final carry, with padded
  steps holding the carry and outputting zeros, reverse within each length, and the
  driver's own dropout masks fed to the reference."""
  opts = CASES[case]
  cell = layer_norm_lstm(H)
  p = random_params(0)
  xs = inputs(2)
  kwargs, ref_kwargs = {}, {}
  if opts.get("lengths"):
    kwargs["seq_lengths"] = ref_kwargs["seq_lengths"] = jnp.asarray(LENGTHS, jnp.int32)
  if opts.get("reverse"):
    kwargs["reverse"] = ref_kwargs["reverse"] = True
  if opts.get("carry"):
    rng = np.random.default_rng(3)
    initial = recurrent.LSTMState(
      *(jnp.asarray(rng.standard_normal((B, H)), jnp.float32) for _ in "hc")
    )
    kwargs["initial_carry"], ref_kwargs["initial"] = initial, initial
  if "masks" in opts:
    per_gate = opts["masks"] == "per_gate"
    keys = seq_keys()
    kwargs.update(
      dropout=DROPOUT, recurrent_dropout=RECURRENT_DROPOUT, per_gate_masks=per_gate, key=keys
    )
    ref_kwargs["in_mask"], ref_kwargs["rec_mask"] = driver_masks(keys, per_gate)
  final, ys = recurrent.scan(cell, p, xs, **kwargs)
  ref_ys, ref_h, ref_c = np_run(p, xs, **ref_kwargs)
  assert ys.shape == (B, T, H) and ys.dtype == jnp.float32
  assert_close(ys, ref_ys, what="outputs")
  assert_close(final.h, ref_h, what="final h")
  assert_close(final.c, ref_c, what="final c")
  if opts.get("lengths"):
    # Padded steps output exact zeros; the empty sequence keeps its initial carry.
    padded = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(np.asarray(ys)[padded] == 0.0)
    initial = kwargs.get("initial_carry", cell.initial_carry((B,)))
    np.testing.assert_array_equal(final.h[1], initial.h[1])
  if "masks" in opts:
    # The masks matter: without them the outputs differ.
    plain, _, _ = np_run(p, xs, **{k: v for k, v in ref_kwargs.items() if "mask" not in k})
    assert np.max(np.abs(plain - ref_ys)) > 1e-2


def test_trace_gates():
  """recurrent.trace returns LSTMGates from the cell, consistent with the outputs."""
  cell = layer_norm_lstm(H)
  p = random_params(0)
  xs = inputs(2)
  carries, gates = recurrent.trace(cell, p, xs)
  assert isinstance(gates, recurrent.LSTMGates) and gates.f.shape == (B, T, H)
  _, ys = recurrent.scan(cell, p, xs)
  assert_close(carries.h, np.asarray(ys, np.float64))
  # c' = f * c + i * g, from the traced gates.
  c_prev = np.concatenate([np.zeros((B, 1, H)), np.asarray(carries.c)[:, :-1]], axis=1)
  expected = np.asarray(gates.f) * c_prev + np.asarray(gates.i) * np.asarray(gates.g)
  assert_close(carries.c, expected)


def test_bfloat16_matmuls():
  """dtype=bfloat16: bf16 matmul operands, LN, gate math and carry in float32, outputs in
  bf16; close to the float64 reference to bf16 precision."""
  cell = layer_norm_lstm(H, dtype=jnp.bfloat16)
  p = random_params(0)
  xs = inputs(2)
  final, ys = recurrent.scan(cell, p, xs, seq_lengths=jnp.asarray(LENGTHS, jnp.int32))
  assert ys.dtype == jnp.bfloat16
  assert final.h.dtype == final.c.dtype == jnp.float32
  ref_ys, ref_h, _ = np_run(p, xs, seq_lengths=LENGTHS)
  assert_close(ys, ref_ys, tol=5e-2, what="outputs")
  assert_close(final.h, ref_h, tol=5e-2, what="final h")


def test_layer_norm_matters():
  """With the initial gains (1) and shifts (0) the cell is still not the plain LSTM with
  the same weights and bias: the LNs change the result."""
  ln_cell, lstm_cell = layer_norm_lstm(H), recurrent.lstm(H)
  p = ln_cell.init(jax.random.key(0), IN)
  xs = inputs(2)
  _, ln_ys = recurrent.scan(ln_cell, p, xs)
  _, lstm_ys = recurrent.scan(lstm_cell, recurrent.LSTMParams(p.w_ih, p.w_hh, p.b), xs)
  assert np.max(np.abs(np.asarray(ln_ys) - np.asarray(lstm_ys))) > 1e-2
  # and the reference agrees with the LN cell, not with the LSTM
  assert_close(ln_ys, np_run(p, xs)[0])


# --- gradients -----------------------------------------------------------------------------


def test_scan_grad_matches_step_loop():
  """jax.grad through recurrent.scan (dropout on, one mask per gate) vs jax.grad of the
  same loss through a Python loop of cell.project/cell.recur given the driver's masks; and
  forward mode (jax.jvp, possible without a FastPath) agrees with reverse mode. In float64:
  in float32 the two orders of summation differ by up to ~4e-5 relative."""
  with jax.enable_x64(True):
    cell = layer_norm_lstm(H, param_dtype=jnp.float64)
    p = random_params(0, dtype=jnp.float64)
    xs = inputs(2, dtype=jnp.float64)
    keys = seq_keys()
    target = inputs(4, (B, T, H), jnp.float64)

    def scan_loss(p, xs):
      _, ys = recurrent.scan(
        cell, p, xs, dropout=DROPOUT, recurrent_dropout=RECURRENT_DROPOUT, per_gate_masks=True,
        key=keys,
      )  # fmt: skip
      return jnp.sum((ys - target) ** 2)

    m_in, m_rec = (tuple(map(jnp.asarray, m)) for m in driver_masks(keys, True, dtype=jnp.float64))

    def loop_loss(p, xs):
      carry = cell.initial_carry((B,), jnp.float64)
      total = jnp.zeros((), jnp.float64)
      for t in range(T):
        carry, h, _ = cell.recur(p, carry, cell.project(p, xs[:, t], m_in), m_rec)
        total = total + jnp.sum((h - target[:, t]) ** 2)
      return total

    g_scan = jax.jit(jax.grad(scan_loss, argnums=(0, 1)))(p, xs)
    g_loop = jax.jit(jax.grad(loop_loss, argnums=(0, 1)))(p, xs)
    np.testing.assert_allclose(scan_loss(p, xs), loop_loss(p, xs), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_loop)):
      np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    assert all(np.any(np.asarray(leaf) != 0) for leaf in jax.tree.leaves(g_scan))

    # Forward mode: the directional derivative equals <grad, direction>.
    rng = np.random.default_rng(5)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), a.dtype), (p, xs))
    _, tangent = jax.jit(lambda primals, tangents: jax.jvp(scan_loss, primals, tangents))(
      (p, xs), direction
    )
    leaves = zip(jax.tree.leaves(g_scan), jax.tree.leaves(direction))
    np.testing.assert_allclose(tangent, sum(jnp.vdot(g, d) for g, d in leaves), rtol=1e-10)


def test_scan_grads_float64():
  """Reverse-mode derivatives of recurrent.scan with ragged lengths, reverse, an initial
  carry and dropout on vs finite differences (check_grads), in float64."""
  with jax.enable_x64(True):
    cell = layer_norm_lstm(H, param_dtype=jnp.float64)
    p = random_params(0, dtype=jnp.float64)
    xs = inputs(2, (B, 4, IN), jnp.float64)
    rng = np.random.default_rng(3)
    carry = recurrent.LSTMState(
      *(jnp.asarray(rng.standard_normal((B, H)), jnp.float64) for _ in "hc")
    )
    lengths, keys = jnp.asarray([4, 0, 2], jnp.int32), seq_keys()

    @jax.jit
    def run(p, carry, xs):
      return recurrent.scan(
        cell,
        p,
        xs,
        initial_carry=carry,
        seq_lengths=lengths,
        reverse=True,
        dropout=DROPOUT,
        recurrent_dropout=RECURRENT_DROPOUT,
        key=keys,
      )

    final, ys = run(p, carry, xs)
    assert ys.dtype == final.c.dtype == jnp.float64
    # eps 1e-6, not check_grads' 1e-4: the LNs of these 5-unit vectors (variances down to
    # ~3e-3 here) are so curved that central differences err by ~7e3 * eps^2 relative
    # (measured: 6.8e-5 at eps 1e-4, 6.8e-7 at 1e-5); it is the differences that err.
    jax.test_util.check_grads(run, (p, carry, xs), order=1, modes=["rev"], eps=1e-6, **GRAD_TOL)


# --- layers, vmap, Flax --------------------------------------------------------------------


def test_stack_bidirectional_matches_reference():
  """A jitted 2-layer bidirectional recurrent.stack with seq_lengths and dropout vs the
  reference run forward and reversed in each layer, with masks from the keys
  fold_in(fold_in(key, layer), direction) that recurrent/layers.py documents."""
  cell = layer_norm_lstm(H)
  params = random_stack(0)
  xs = inputs(2)
  keys = seq_keys()
  lengths = jnp.asarray(LENGTHS, jnp.int32)

  @jax.jit
  def run(params, xs):
    return recurrent.stack(
      cell,
      params,
      xs,
      seq_lengths=lengths,
      dropout=DROPOUT,
      recurrent_dropout=RECURRENT_DROPOUT,
      key=keys,
    )

  finals, ys = run(params, xs)
  assert ys.shape == (B, T, 2 * H)
  layer_in = np.asarray(xs, np.float64)
  for layer, layer_params in enumerate(params):
    outs = []
    for direction, p in enumerate(layer_params):
      k = rdropout.derive(keys, layer, direction)
      (m_in,) = rdropout.masks(rdropout.derive(k, rdropout.INPUT), layer_in.shape[-1], DROPOUT)
      (m_rec,) = rdropout.masks(rdropout.derive(k, rdropout.RECURRENT), H, RECURRENT_DROPOUT)
      out, h, c = np_run(
        p, layer_in, seq_lengths=LENGTHS, reverse=direction == 1, in_mask=m_in, rec_mask=m_rec
      )
      what = f"layer {layer} direction {direction}"
      assert_close(finals[layer][direction].h, h, what=what + " h")
      assert_close(finals[layer][direction].c, c, what=what + " c")
      outs.append(out)
    layer_in = np.concatenate(outs, axis=-1)
  assert_close(ys, layer_in, what="outputs")


def test_vmap_over_params_and_inputs():
  """jax.vmap of recurrent.scan over a leading axis of params (an ensemble) and over
  unbatched sequences [T, IN], each with its own length and key, vs one call each."""
  cell = layer_norm_lstm(H)
  ensemble = jax.tree.map(lambda *leaves: jnp.stack(leaves), random_params(0), random_params(1))
  xs = inputs(2)
  lengths = jnp.asarray(LENGTHS, jnp.int32)
  opts = dict(dropout=DROPOUT, recurrent_dropout=RECURRENT_DROPOUT)

  def over_params(p):
    return recurrent.scan(cell, p, xs, seq_lengths=lengths, key=seq_keys(), **opts)

  finals, ys = jax.jit(jax.vmap(over_params))(ensemble)
  assert ys.shape == (2, B, T, H)
  for e in range(2):
    one_final, one_ys = over_params(jax.tree.map(lambda a, e=e: a[e], ensemble))
    assert_close(ys[e], np.asarray(one_ys, np.float64))
    assert_close(finals.c[e], np.asarray(one_final.c, np.float64))

  p = random_params(0)

  def one_sequence(x, length, key):
    return recurrent.scan(cell, p, x, seq_lengths=length, key=key, **opts)

  finals, ys = jax.jit(jax.vmap(one_sequence))(xs, lengths, seq_keys())
  batched_final, batched_ys = recurrent.scan(
    cell, p, xs, seq_lengths=lengths, key=seq_keys(), **opts
  )
  assert_close(ys, np.asarray(batched_ys, np.float64))
  assert_close(finals.h, np.asarray(batched_final.h, np.float64))


def module_dropout_key(rng):
  """The key a top-level linen layer's single ``make_rng('dropout')`` draws from ``rng``."""
  import flax.linen as nn

  class Probe(nn.Module):
    @nn.compact
    def __call__(self):
      return self.make_rng("dropout")

  return Probe().apply({}, rngs={"dropout": rng})


def test_linen_rnn_matches_stack(eager):
  """recurrent.linen.RNN with this cell (2 bidirectional layers, dropout and recurrent
  dropout, seq_lengths) vs recurrent.stack on to_core(params, kind=LayerNormLSTMParams)
  with the keys the module derives from its 'dropout' rng."""
  import recurrent.linen as rnn

  model = rnn.RNN(
    cell=layer_norm_lstm(H), num_layers=2, bidirectional=True, dropout=0.2, recurrent_dropout=0.2
  )
  xs = inputs(2)
  lengths = jnp.asarray(LENGTHS, jnp.int32)
  params = model.init(jax.random.key(0), xs, deterministic=True)["params"]
  assert set(params["layer_1"]["backward"]) == set(LayerNormLSTMParams._fields)
  assert params["layer_1"]["forward"]["w_ih"].shape == (2 * H, 4 * H)
  rng = jax.random.key(5)
  ys = model.apply(
    {"params": params}, xs, seq_lengths=lengths, deterministic=False, rngs={"dropout": rng}
  )
  core = rnn.to_core(params, kind=LayerNormLSTMParams)
  assert isinstance(core[0].forward, LayerNormLSTMParams)
  keys = recurrent.sequence_keys(module_dropout_key(rng), jnp.arange(B))
  _, ref_ys = recurrent.stack(
    layer_norm_lstm(H), core, xs, seq_lengths=lengths, dropout=0.2, recurrent_dropout=0.2,
    key=keys,
  )  # fmt: skip
  assert_close(ys, np.asarray(ref_ys, np.float64))
  off = model.apply({"params": params}, xs, seq_lengths=lengths, deterministic=True)
  _, ref_off = recurrent.stack(layer_norm_lstm(H), core, xs, seq_lengths=lengths)
  assert_close(off, np.asarray(ref_off, np.float64))
  assert np.max(np.abs(np.asarray(off) - np.asarray(ys))) > 1e-2


def test_nnx_rnn_matches_stack(eager):
  """recurrent.nnx.RNN with this cell (2 bidirectional layers, dropout off) vs
  recurrent.stack on its to_core params."""
  from flax import nnx

  import recurrent.nnx as rnnx

  if not hasattr(rnnx, "RNN"):
    pytest.skip("recurrent.nnx has no RNN")
  model = rnnx.RNN(IN, cell=layer_norm_lstm(H), num_layers=2, bidirectional=True,
                   rngs=nnx.Rngs(0))  # fmt: skip
  xs = inputs(2)
  lengths = jnp.asarray(LENGTHS, jnp.int32)
  ys = model(xs, seq_lengths=lengths)
  assert ys.shape == (B, T, 2 * H)
  core = rnnx.to_core(model, kind=LayerNormLSTMParams)
  assert isinstance(core[1].backward, LayerNormLSTMParams)
  _, ref_ys = recurrent.stack(layer_norm_lstm(H), core, xs, seq_lengths=lengths)
  assert_close(ys, np.asarray(ref_ys, np.float64))
