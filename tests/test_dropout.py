"""Time-invariant ("variational") dropout, Gal & Ghahramani 2016 (arXiv 1512.05287).

Shape legend: B batch, T time, I input size, H hidden size, F features, G gates.

References, named in each test:

* masks made observable: with every gate block of ``w_ih`` the identity, ``w_hh = 0``, zero
  biases and ``x_t = 1``, each gate's pre-activation *is* the input mask, so inverting the
  gate's activation in :func:`recurrent.trace` reads the mask off at every step; with the
  identity in ``w_hh`` instead, the pre-activation is ``h_{t-1} * mask``. Nothing in this
  reading depends on how the library draws its masks;
* masks made observable by gradients: a dropped input unit ``j`` gives an exactly zero row
  ``j`` in the gradient of ``w_ih`` (a dropped recurrent unit, of ``w_hh``);
* a NumPy loop from the LSTM equations (``recurrent/lstm.py``) that applies, at every
  step, the masks ``recurrent.dropout.masks(recurrent.dropout.derive(keys, stream), ...)``
  which the module docstrings document;
* binomial statistics for rates, and an 8-device run in a subprocess for sharding.
"""

import functools
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import dropout as rd

REPO = pathlib.Path(__file__).resolve().parents[1]

# Every driver call is jitted with cheap XLA CPU settings: at the default optimisation
# level the threefry hashes that derive the dropout keys dominate compile time (~5 s for a
# 2-layer bidirectional stack). What is compared (masks, batch/device invariance) does
# not depend on these settings.
FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jit(fn, **kwargs):
  return jax.jit(fn, compiler_options=FAST, **kwargs)


# Params and data come from NumPy: compiling JAX's initialisers and samplers eagerly for
# every new shape would cost seconds per test.
def random_params(init, seed=0):
  """Params with the structure and shapes of ``init(key)``, uniform in [-0.5, 0.5)."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(init, jax.random.key(0))
  return jax.tree.map(lambda s: jnp.asarray(rng.uniform(-0.5, 0.5, s.shape), s.dtype), shapes)


def normal(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


CELLS = {
  "lstm": lambda h: recurrent.lstm(h),
  "gru": lambda h: recurrent.gru(h),
  "gru_reset_before": lambda h: recurrent.gru(h, reset_after=False),
}
# Activation of each gate, in gate order (LSTM i, f, g, o; GRU r, z, n).
ACTIVATIONS = {"lstm": "ssts", "gru": "sst", "gru_reset_before": "sst"}


def _inverse(gate, kind):
  """Pre-activation of a gate from its activation (s: sigmoid, t: tanh), in float64."""
  g = np.asarray(gate, np.float64)
  return np.log(g / (1.0 - g)) if kind == "s" else np.arctanh(g)


seq_keys = jit(recurrent.sequence_keys)  # (key, ids array) -> keys


def _sequence_keys(n, seed=1):
  return seq_keys(jax.random.key(seed), jnp.arange(n))


# --------------------------------------------------------------- observable masks


def _eye_params(cell, name, size, source):
  """Params where each gate's pre-activation is ``source * mask`` (+ a bias): every gate
  block of ``w_ih`` (source 'input') or of ``w_hh`` (source 'recurrent') is the identity,
  the other matrix is zero. For 'recurrent' a positive candidate bias keeps ``h > 0``."""
  eye = np.tile(np.eye(size, dtype=np.float32), (1, cell.num_gates))
  zero = np.zeros_like(eye)
  w_ih, w_hh = (eye, zero) if source == "input" else (zero, eye)
  bias = np.zeros((cell.num_gates, size), np.float32)
  bias[2] = 0.0 if source == "input" else 1.0  # LSTM g, GRU n
  if name == "lstm":
    return recurrent.LSTMParams(jnp.asarray(w_ih), jnp.asarray(w_hh), jnp.asarray(bias.ravel()))
  zero_b = jnp.zeros((3 * size,), jnp.float32)
  kind = type(jax.eval_shape(lambda: cell.init(jax.random.key(0), size)))  # either GRU form
  return kind(jnp.asarray(w_ih), jnp.asarray(w_hh), jnp.asarray(bias.ravel()), zero_b)


OBS_BATCH, OBS_STEPS, OBS_SIZE = 32, 4, 16


@functools.cache
def observed_masks(name, source, rate=0.5, per_gate=False, time_major=False):
  """The masks a driver applied, read off its gates at every step (see the module
  docstring), for 32 sequences of 4 steps and 16 units, x_t = 1.

  Returns float64 ``[G', B, T', F]``: for 'input' all G gates and T steps; for
  'recurrent' the gates that see ``h_{t-1} * mask`` alone (LSTM all four, GRU r and z)
  at steps 1..T-1 (``h_{-1} = 0`` shows nothing)."""
  cell = CELLS[name](OBS_SIZE)
  params = _eye_params(cell, name, OBS_SIZE, source)
  shape = (OBS_STEPS, OBS_BATCH, OBS_SIZE) if time_major else (OBS_BATCH, OBS_STEPS, OBS_SIZE)
  rates = {"dropout": rate} if source == "input" else {"recurrent_dropout": rate}
  carries, gates = jit(
    lambda keys: recurrent.trace(
      cell,
      params,
      jnp.ones(shape),
      key=keys,
      per_gate_masks=per_gate,
      time_major=time_major,
      **rates,
    )
  )(_sequence_keys(OBS_BATCH))
  if time_major:
    carries, gates = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (carries, gates))
  pre = [_inverse(g, kind) for g, kind in zip(gates, ACTIVATIONS[name])]
  if source == "input":
    return np.stack(pre)
  h_prev = np.asarray(carries.h, np.float64)[:, :-1]
  assert np.all(h_prev > 0.05)
  if name == "lstm":
    pre[2] = pre[2] - 1.0  # the candidate bias
    return np.stack([p[:, 1:] / h_prev for p in pre])
  return np.stack([p[:, 1:] / h_prev for p in pre[:2]])


def assert_is_mask(m, rate):
  """Every value is 0 or 1/(1-rate) (to the precision of reading it off a gate)."""
  scale = 1.0 / (1.0 - rate)
  assert np.all((np.abs(m) < 1e-3) | (np.abs(m - scale) < 1e-3)), np.unique(np.round(m, 4))
  assert np.any(np.abs(m) < 1e-3) and np.any(np.abs(m - scale) < 1e-3), "nothing dropped/kept"


# The input mask is applied by the projection every cell shares (cell.masked_gate_dot), so
# one input case covers it; each cell applies the recurrent mask in its own code.
OBSERVED = [
  ("lstm", "input", False),
  ("lstm", "input", True),
  ("lstm", "recurrent", False),
  ("gru", "recurrent", False),
  ("gru_reset_before", "recurrent", False),
]


@pytest.mark.parametrize("name,source,time_major", OBSERVED)
def test_driver_masks_constant_over_time(name, source, time_major):
  """Gal & Ghahramani's time-invariant masks: the mask read off the gates (identity
  construction) is the same at every step and is a 0 / 1/(1-p) mask."""
  m = observed_masks(name, source, time_major=time_major)
  assert_is_mask(m, 0.5)
  np.testing.assert_allclose(m, np.broadcast_to(m[:, :, :1], m.shape), atol=1e-3)


@pytest.mark.parametrize("name,source", [c[:2] for c in OBSERVED if not c[2]])
def test_tied_masks_shared_by_gates(name, source):
  """per_gate_masks=False: one mask per sequence, shared by every gate (read off each
  gate with the identity construction)."""
  m = observed_masks(name, source)
  for k in range(1, m.shape[0]):
    np.testing.assert_allclose(m[k], m[0], atol=1e-3)


@pytest.mark.parametrize("name,source", [c[:2] for c in OBSERVED if not c[2]])
def test_per_gate_masks_differ_by_gate(name, source):
  """per_gate_masks=True (Gal's untied variant): each gate has its own mask, still constant
  over time; every pair of gates differs on every sequence."""
  m = observed_masks(name, source, per_gate=True)
  assert_is_mask(m, 0.5)
  np.testing.assert_allclose(m, np.broadcast_to(m[:, :, :1], m.shape), atol=1e-3)
  kept = m[:, :, 0] > 0.5  # [G', B, F]
  for a in range(len(kept)):
    for b in range(a):
      assert np.all(np.any(kept[a] != kept[b], axis=-1)), (a, b)


@pytest.mark.parametrize("source", ["input", "recurrent"])
def test_sequences_draw_different_masks(source):
  """Each sequence has its own mask: no two of 32 sequences share one (16 units, p=0.5:
  a coincidence has probability 2**-16 per pair)."""
  kept = observed_masks("lstm", source)[0, :, 0] > 0.5  # [B, F]
  assert len({row.tobytes() for row in kept}) == len(kept)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_driver_keep_rate(rate):
  """The masks scan applies keep a fraction 1-p of the units, within 4 binomial sigmas
  (B*F = 512 units), with kept units scaled by 1/(1-p)."""
  m = observed_masks("lstm", "input", rate)[0, :, 0]
  assert_is_mask(m, rate)
  kept = np.mean(m > 0.5 / (1.0 - rate))
  assert abs(kept - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / m.size), kept


# ----------------------------------------------------------- NumPy loop reference


def numpy_lstm(params, xs, in_masks, rec_masks):
  """LSTM from the equations in recurrent/lstm.py, float64, masks (G arrays [B, F] each)
  multiplying x_t and h_{t-1} at every step where they enter the matmuls."""
  w_i = np.split(np.asarray(params.w_ih, np.float64), 4, axis=1)
  w_h = np.split(np.asarray(params.w_hh, np.float64), 4, axis=1)
  b = np.split(np.asarray(params.b, np.float64), 4)
  xs = np.asarray(xs, np.float64)
  batch, steps, _ = xs.shape
  h = np.zeros((batch, w_h[0].shape[0]))
  c = np.zeros_like(h)
  sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
  ys = []
  for t in range(steps):
    pre = [(xs[:, t] * in_masks[k]) @ w_i[k] + (h * rec_masks[k]) @ w_h[k] + b[k] for k in range(4)]
    c = sig(pre[1]) * c + sig(pre[0]) * np.tanh(pre[2])
    h = sig(pre[3]) * np.tanh(c)
    ys.append(h)
  return np.stack(ys, 1), h, c


@pytest.mark.parametrize("per_gate", [False, True])
def test_scan_matches_numpy_loop_with_fixed_masks(per_gate):
  """scan with dropout equals a NumPy LSTM loop that applies, at every step, the masks
  dropout.masks(dropout.derive(keys, INPUT | RECURRENT), ...) (recurrent/dropout.py)."""
  batch, steps, i_size, h_size = 3, 7, 5, 6
  cell = recurrent.lstm(h_size)
  params = random_params(lambda k: cell.init(k, i_size), 0)
  xs = normal((batch, steps, i_size), 1)
  keys = _sequence_keys(batch)
  num = 4 if per_gate else 1

  @jit
  def run(xs, keys):
    in_m = rd.masks(rd.derive(keys, rd.INPUT), i_size, 0.3, num)
    rec_m = rd.masks(rd.derive(keys, rd.RECURRENT), h_size, 0.4, num)
    out = recurrent.scan(
      cell, params, xs, dropout=0.3, recurrent_dropout=0.4, per_gate_masks=per_gate, key=keys
    )
    return in_m, rec_m, out

  in_m, rec_m, (carry, ys) = run(xs, keys)
  in_m = [np.asarray(m) for m in in_m] * (4 // num)
  rec_m = [np.asarray(m) for m in rec_m] * (4 // num)
  ys_ref, h_ref, c_ref = numpy_lstm(params, xs, in_m, rec_m)
  np.testing.assert_allclose(ys, ys_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.h, h_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(carry.c, c_ref, rtol=1e-5, atol=1e-6)
  # Control: the loop without masks does not match.
  ones_i, ones_h = [np.ones((batch, i_size))] * 4, [np.ones((batch, h_size))] * 4
  assert not np.allclose(ys, numpy_lstm(params, xs, ones_i, ones_h)[0], atol=1e-3)


def test_per_gate_masks_change_the_result():
  """per_gate_masks=True gives a different output than the tied masks (same keys)."""
  cell = recurrent.lstm(8)
  params = random_params(lambda k: cell.init(k, 8), 0)
  xs = normal((4, 5, 8), 1)

  @jit
  def run(keys):
    out = []
    for rates in ({"dropout": 0.5}, {"recurrent_dropout": 0.5}):
      for per_gate in (False, True):
        out.append(recurrent.scan(cell, params, xs, key=keys, per_gate_masks=per_gate, **rates)[1])
    return out

  tied_in, untied_in, tied_rec, untied_rec = run(_sequence_keys(4))
  assert not np.allclose(tied_in, untied_in, atol=1e-3)
  assert not np.allclose(tied_rec, untied_rec, atol=1e-3)


# ------------------------------------------------------------------- dropout.apply


@pytest.mark.parametrize("time_major", [False, True])
def test_apply_constant_over_time(time_major):
  """dropout.apply on ones: every time step equals step 0 (time-invariant mask)."""
  shape = (20, 16, 32) if time_major else (16, 20, 32)
  ys = jit(lambda k: rd.apply(k, jnp.ones(shape), 0.5, time_major=time_major))(_sequence_keys(16))
  ys = np.asarray(ys)
  first = ys[:1] if time_major else ys[:, :1]
  np.testing.assert_array_equal(ys, np.broadcast_to(first, ys.shape))
  assert np.any(ys == 0) and np.any(ys == 2)


@pytest.mark.parametrize("rate", [0.1, 0.25, 0.5])
def test_masks_keep_rate_and_scale(rate):
  """dropout.masks and dropout.apply: kept fraction 1-p within 4 binomial sigmas over
  1000 sequences x 256 units; kept values exactly 1/(1-p) (float32); the mean of masked
  ones is 1 within 4 sigmas (inverted scaling)."""
  n, f = 1000, 256
  keys = _sequence_keys(n)
  m, ys = jit(lambda k: (rd.masks(k, f, rate)[0], rd.apply(k, jnp.ones((n, 3, f)), rate)))(keys)
  m, ys = np.asarray(m), np.asarray(ys)
  scale = np.float32(1.0 / (1.0 - rate))
  assert m.dtype == np.float32 and set(np.unique(m)) == {np.float32(0), scale}
  kept = np.mean(m > 0)
  assert abs(kept - (1 - rate)) < 4 * np.sqrt(rate * (1 - rate) / m.size), kept
  assert set(np.unique(ys)) == {np.float32(0), scale}
  assert abs(ys[:, 0].mean() - 1.0) < 4 * np.sqrt(rate / (1 - rate) / m.size)


def test_masks_dtype():
  """Masks take the dtype asked for; apply keeps a bfloat16 input bfloat16."""
  m, ys = jit(
    lambda k: (
      rd.masks(k, 8, 0.25, dtype=jnp.bfloat16)[0],
      rd.apply(k, jnp.ones((4, 3, 8), jnp.bfloat16), 0.25),
    )
  )(_sequence_keys(4))
  assert m.dtype == jnp.bfloat16 and ys.dtype == jnp.bfloat16
  assert set(np.unique(np.asarray(ys, np.float32))) == {0.0, float(jnp.bfloat16(1 / 0.75))}


def test_masks_independent_across_sequences():
  """Masks of different sequences are uncorrelated: the correlation between the masks of
  consecutive example ids (the closest keys fold_in makes) and of far-apart ids is 0
  within 4/sqrt(n); also no two sequences share a mask."""
  n, f = 1024, 128
  (m,) = jit(lambda k: rd.masks(k, f, 0.5))(_sequence_keys(n))
  kept = np.asarray(m) > 0
  for lag in (1, n // 2):
    r = np.corrcoef(kept[:-lag].ravel(), kept[lag:].ravel())[0, 1]
    assert abs(r) < 4 / np.sqrt(kept[lag:].size), (lag, r)
  assert len({row.tobytes() for row in kept}) == n


def test_masks_per_gate_pairwise_different():
  """masks(..., num=G) gives G independent masks: pairwise different on every sequence."""
  ms = [np.asarray(m) for m in jit(lambda k: rd.masks(k, 32, 0.5, num=4))(_sequence_keys(64))]
  assert len(ms) == 4 and all(m.shape == (64, 32) for m in ms)
  for a in range(4):
    for b in range(a):
      assert np.all(np.any(ms[a] != ms[b], axis=-1)), (a, b)


def test_different_keys_different_outputs():
  """Two copies of a sequence with different ids get different masks (different outputs);
  with the same id they get the same masks (bitwise equal outputs)."""
  cell = recurrent.lstm(8)
  params = random_params(lambda k: cell.init(k, 4), 0)
  xs = jnp.broadcast_to(normal((1, 6, 4), 1), (2, 6, 4))
  key = jax.random.key(2)
  run = jit(
    lambda ids: recurrent.scan(
      cell, params, xs, key=recurrent.sequence_keys(key, ids), dropout=0.5, recurrent_dropout=0.5
    )[1]
  )
  ys = run(jnp.array([0, 1]))
  assert not np.allclose(ys[0], ys[1], atol=1e-3)
  ys = run(jnp.array([3, 3]))
  np.testing.assert_array_equal(ys[0], ys[1])


# ------------------------------------------------ batch layout and device count

T, IN, H = 7, 3, 5
NUM_EXAMPLES = 20
DATA = normal((NUM_EXAMPLES, T, IN), 10)
LENGTHS = jnp.asarray(np.random.default_rng(11).integers(2, T + 1, NUM_EXAMPLES), jnp.int32)
STEP_KEY = jax.random.key(12)
DROP = dict(dropout=0.3, recurrent_dropout=0.3)


def _drivers():
  """Jitted drivers ``run(xs, seq_lengths=None, key=None, **rates) -> (carry, ys)``
  (module-level, so tests with the same shapes share compilations); ``run.fn`` is the
  unjitted driver."""
  lstm, gru = recurrent.lstm(H), recurrent.gru(H)
  p = random_params(lambda k: lstm.init(k, IN), 0)
  p_bi = recurrent.Bidirectional(
    random_params(lambda k: gru.init(k, IN), 1), random_params(lambda k: gru.init(k, IN), 2)
  )
  p_stack = random_params(lambda k: recurrent.init_layers(lstm, k, IN, 2, bidirectional=True), 3)
  fns = {
    "scan": lambda xs, **kw: recurrent.scan(lstm, p, xs, **kw),
    # GRU with one mask per gate, so both cells and both mask kinds are covered.
    "bidirectional": lambda xs, **kw: recurrent.bidirectional_scan(
      gru, p_bi, xs, per_gate_masks=True, **kw
    ),
    "stack": lambda xs, **kw: recurrent.stack(lstm, p_stack, xs, **kw),
  }
  statics = ("dropout", "recurrent_dropout", "deterministic")

  def jitted(fn):
    return jit(
      lambda xs, seq_lengths=None, key=None, **kw: fn(xs, seq_lengths=seq_lengths, key=key, **kw),
      static_argnames=statics,
    )

  drivers = {name: jitted(fn) for name, fn in fns.items()}
  for name, fn in fns.items():
    drivers[name].fn = fn  # the unjitted driver, to build bigger jitted programs from
  drivers["scan"].params = p
  return drivers


DRIVERS = _drivers()


@functools.cache
def _by_ids(driver):
  """``run(data_ids, key_ids)``: the driver with dropout on examples ``data_ids`` and
  the keys ``sequence_keys(STEP_KEY, key_ids)``, gathered inside one program."""
  fn = DRIVERS[driver].fn
  return jit(
    lambda data_ids, key_ids: fn(
      DATA[data_ids],
      seq_lengths=LENGTHS[data_ids],
      key=recurrent.sequence_keys(STEP_KEY, key_ids),
      **DROP,
    )
  )


def _run_ids(driver, ids):
  ids = jnp.asarray(ids)
  return _by_ids(driver)(ids, ids)


def _at(tree, index):
  return jax.tree.map(lambda a: a[index], tree)


def _assert_close(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6), a, b)


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_masks_unchanged_by_batch_position_and_size(driver):
  """Example 7's outputs and final carry are the same alone, at position 0 of a batch of
  5 and at position 3 of a batch of 9 (keys from sequence_keys(key, example_ids)); a
  control with another id's key on the same data differs."""
  alone = _at(_run_ids(driver, [7]), 0)
  _assert_close(_at(_run_ids(driver, [7, 0, 1, 2, 3]), 0), alone)
  _assert_close(_at(_run_ids(driver, [0, 1, 2, 7, 4, 5, 6, 8, 9]), 3), alone)
  other = _by_ids(driver)(jnp.array([7]), jnp.array([8]))
  assert not np.allclose(other[1][0], alone[1], atol=1e-3)


def test_masks_unchanged_by_batch_shape():
  """Multi-dim batches [2, 3]: example 7 at [1, 2] matches example 7 alone."""
  got = _at(_run_ids("scan", jnp.array([[0, 1, 2], [3, 4, 7]])), (1, 2))
  _assert_close(got, _at(_run_ids("scan", [7]), 0))


DEVICE_SCRIPT = textwrap.dedent(
  """
  import sys
  import jax
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, NamedSharding, PartitionSpec
  import recurrent

  FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  assert jax.device_count() == 8, jax.devices()
  data = np.load(sys.argv[1])
  cell = recurrent.lstm(data["w_hh"].shape[0])
  params = recurrent.LSTMParams(data["w_ih"], data["w_hh"], data["b"])
  keys = recurrent.sequence_keys(jax.random.key(2), data["ids"])

  def run(xs, lengths, keys):
    _, ys = recurrent.scan(cell, params, xs, seq_lengths=lengths, dropout=0.3,
                           recurrent_dropout=0.3, key=keys)
    (mask,) = recurrent.dropout.masks(keys, 7, 0.5)
    return ys, mask

  mesh = Mesh(np.array(jax.devices()), ("data",))
  shard = NamedSharding(mesh, PartitionSpec("data"))
  args = [jax.device_put(a, shard) for a in (data["xs"], data["lengths"], keys)]
  assert args[0].sharding.shard_shape(args[0].shape)[0] == 2
  assert args[2].sharding.shard_shape(keys.shape) == (2,)
  ys_sharded, mask_sharded = jax.jit(run, compiler_options=FAST)(*args)
  assert len(ys_sharded.sharding.device_set) == 8, ys_sharded.sharding
  assert ys_sharded.sharding.shard_shape(ys_sharded.shape)[0] == 2, ys_sharded.sharding
  ys_single, mask_single = jax.jit(run, compiler_options=FAST)(data["xs"], data["lengths"], keys)
  assert len(ys_single.sharding.device_set) == 1
  np.savez(sys.argv[2], ys_sharded=ys_sharded, ys_single=ys_single,
           mask_sharded=mask_sharded, mask_single=mask_single)
  """
)


def test_masks_unchanged_by_device_count(tmp_path):
  """A batch of 16 sharded over 8 (forced host) devices along a 'data' mesh axis gives the
  same scan outputs (input and recurrent dropout, seq_lengths) and masks as one device,
  in that process and in this one. The subprocess reads params and data from this one."""
  run = DRIVERS["scan"]
  ids = jnp.arange(100, 116)
  params = run.params
  xs, lengths = normal((16, T, IN), 5), jnp.arange(16, dtype=jnp.int32) % T + 1
  data = tmp_path / "data.npz"
  np.savez(data, xs=xs, lengths=lengths, ids=ids, **params._asdict())
  script = tmp_path / "sharded.py"
  script.write_text(DEVICE_SCRIPT)
  out = tmp_path / "out.npz"
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  proc = subprocess.run(
    [sys.executable, str(script), str(data), str(out)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=180,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  got = np.load(out)
  np.testing.assert_array_equal(got["mask_sharded"], got["mask_single"])
  np.testing.assert_allclose(got["ys_sharded"], got["ys_single"], rtol=1e-6, atol=1e-6)

  # The same computation in this process, on its single default device (outputs compared
  # on CPU only: another backend's matmuls round differently).
  keys = seq_keys(jax.random.key(2), ids)
  np.testing.assert_array_equal(got["mask_single"], jit(lambda k: rd.masks(k, 7, 0.5)[0])(keys))
  if jax.default_backend() == "cpu":
    _, ys = run(xs, lengths, keys, **DROP)
    np.testing.assert_allclose(got["ys_sharded"], ys, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------ deterministic, no key

XS4, KEYS4 = DATA[:4], _sequence_keys(4)


@functools.cache
def _with_dropout(driver):
  """The driver's output on XS4 with dropout and typed keys (shared by two tests)."""
  return DRIVERS[driver](XS4, key=KEYS4, **DROP)


@functools.cache
def _no_dropout_variants(driver):
  """The driver on XS4 without dropout, spelled five ways, in one program (XLA merges the
  identical computations, so this compiles about as fast as one)."""
  run = DRIVERS[driver].fn
  variants = {
    "default": lambda keys: run(XS4),
    "deterministic_with_key": lambda keys: run(XS4, key=keys, deterministic=True, **DROP),
    "deterministic_no_key": lambda keys: run(XS4, deterministic=True, **DROP),
    "zero_rates_no_key": lambda keys: run(XS4, dropout=0.0, recurrent_dropout=0.0, key=None),
  }
  if driver == "stack":
    variants["zero_per_layer_rates_no_key"] = lambda keys: run(
      XS4, dropout=(0.0, 0.0), recurrent_dropout=[0.0, 0.0]
    )
  return jit(lambda keys: {name: v(keys) for name, v in variants.items()})(KEYS4)


@pytest.mark.parametrize("driver", ["scan", "stack"])
def test_deterministic_is_no_dropout(driver):
  """deterministic=True equals the run without dropout bitwise (with keys or without);
  control: the same rates without deterministic change the outputs."""
  out = _no_dropout_variants(driver)
  for name in ("deterministic_with_key", "deterministic_no_key"):
    jax.tree.map(np.testing.assert_array_equal, out[name], out["default"])
  assert not np.allclose(_with_dropout(driver)[1], out["default"][1], atol=1e-3)


@pytest.mark.parametrize("driver", ["scan", "stack"])
def test_zero_rates_need_no_key(driver):
  """dropout=0 and recurrent_dropout=0 (for a stack also per-layer zero rates) run without
  a key and equal the default run."""
  out = _no_dropout_variants(driver)
  for name in out:
    if name.startswith("zero"):
      jax.tree.map(np.testing.assert_array_equal, out[name], out["default"])


def test_apply_deterministic_and_zero_rate():
  """dropout.apply returns xs itself when deterministic or at rate 0, with no key."""
  assert rd.apply(None, XS4, 0.5, deterministic=True) is XS4
  assert rd.apply(None, XS4, 0.0) is XS4


# --------------------------------------------------- layers and directions differ


def test_bidirectional_directions_draw_different_masks():
  """With equal forward/backward params and a palindromic sequence, the backward output
  is the forward output mirrored in time; with dropout (input or recurrent) it no longer
  is, so the two directions use different masks."""
  cell = recurrent.lstm(H)
  p = random_params(lambda k: cell.init(k, IN), 0)
  half = normal((4, 3, IN), 1)
  xs = jnp.concatenate([half, half[:, ::-1]], axis=1)  # palindromes, T = 6
  pair = recurrent.Bidirectional(p, p)

  @jit
  def run(keys):
    return [
      recurrent.bidirectional_scan(cell, pair, xs)[1],
      recurrent.bidirectional_scan(cell, pair, xs, key=keys, dropout=0.5)[1],
      recurrent.bidirectional_scan(cell, pair, xs, key=keys, recurrent_dropout=0.5)[1],
    ]

  plain, *dropped = run(_sequence_keys(4))
  np.testing.assert_allclose(plain[..., :H], plain[:, ::-1, H:], rtol=1e-5, atol=1e-6)
  for ys in dropped:
    mirrored = np.isclose(ys[..., :H], ys[:, ::-1, H:], atol=1e-5).all(axis=(1, 2))
    assert not mirrored.any()


GRAD_H = 16
GRAD_CELL = recurrent.lstm(GRAD_H)
GRAD_PARAMS = random_params(
  lambda k: recurrent.init_layers(GRAD_CELL, k, 2 * GRAD_H, 2, bidirectional=True), 0
)
GRAD_XS = normal((1, 6, 2 * GRAD_H), 1)
GRAD_KEYS = _sequence_keys(1, seed=3)


@functools.cache
def _grad_masks(rate=0.5):
  """Kept units of every (layer, direction, stream) of a 2-layer bidirectional stack, read
  off gradients: row j of d(sum ys)/d w_ih (w_hh) is exactly zero iff input (recurrent)
  unit j is dropped. One sequence, so no sum over the batch."""

  @jit
  def grads(params, keys):
    def loss(p):
      return jnp.sum(
        recurrent.stack(GRAD_CELL, p, GRAD_XS, key=keys, dropout=rate, recurrent_dropout=rate)[1]
      )

    return jax.grad(loss)(params)

  out = {}
  for layer, g in enumerate(grads(GRAD_PARAMS, GRAD_KEYS)):
    for d, gd in zip("fb", g):
      out[(layer, d, "input")] = np.any(np.asarray(gd.w_ih) != 0, axis=1)
      out[(layer, d, "recurrent")] = np.any(np.asarray(gd.w_hh) != 0, axis=1)
  return out


def test_stack_layers_and_directions_draw_different_masks():
  """In a 2-layer bidirectional stack (I = 2H so all input masks have 2H units), the kept
  units (32 or 16 of them) read off gradients differ between every pair of (layer,
  direction), for input and for recurrent masks; each is a real mask (some units dropped,
  some kept)."""
  kept = _grad_masks(0.5)
  for stream in ("input", "recurrent"):
    found = {k[:2]: v for k, v in kept.items() if k[2] == stream}
    for v in found.values():
      assert v.any() and not v.all(), (stream, v)
    assert len({v.tobytes() for v in found.values()}) == 4, (stream, found)


def test_stack_masks_follow_documented_derivation():
  """The kept units of layer l, direction d are those of
  dropout.masks(derive(key, l, d, stream)), as recurrent/layers.py documents."""
  kept = _grad_masks(0.5)
  paths = {k: (k[0], "fb".index(k[1]), rd.INPUT if k[2] == "input" else rd.RECURRENT) for k in kept}
  documented = jit(
    lambda keys: {
      k: rd.masks(rd.derive(keys, *path), kept[k].size, 0.5)[0] for k, path in paths.items()
    }
  )(GRAD_KEYS)
  for k, v in kept.items():
    np.testing.assert_array_equal(v, np.asarray(documented[k][0]) > 0, err_msg=str(k))


def test_unidirectional_stack_equals_layer_by_layer_scans():
  """A unidirectional 2-layer stack equals scan(layer 0, key=derive(key, 0)) then
  scan(layer 1, key=derive(key, 1)), as recurrent/layers.py documents."""
  cell = recurrent.lstm(H)
  layer = random_params(lambda k: recurrent.init_layers(cell, k, H, 1), 0)[0]
  params = [layer, layer]  # identical layers: only the masks tell them apart
  xs = normal((4, 6, H), 1)

  @jit
  def run(keys):
    ys = recurrent.stack(cell, params, xs, key=keys, **DROP)[1]
    h = recurrent.scan(cell, layer, xs, key=rd.derive(keys, 0), **DROP)[1]
    return ys, recurrent.scan(cell, layer, h, key=rd.derive(keys, 1), **DROP)[1]

  ys, by_hand = run(_sequence_keys(4))
  np.testing.assert_allclose(ys, by_hand, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ MC dropout


def test_mc_average_equals_python_loop():
  """mc_average(predict, key, n) is the mean of predict over jax.random.split(key, n)."""
  cell = recurrent.gru(H)
  params = random_params(lambda k: cell.init(k, IN), 0)
  xs = DATA[:3]

  def predict(k):
    keys = recurrent.sequence_keys(k, jnp.arange(3))
    return jax.nn.sigmoid(recurrent.scan(cell, params, xs, key=keys, **DROP)[1])

  key = jax.random.key(5)
  got = jit(lambda k: recurrent.mc_average(predict, k, 6))(key)
  predict_one = jit(predict)
  loop = np.mean([predict_one(k) for k in jax.random.split(key, 6)], axis=0)
  np.testing.assert_allclose(got, loop, rtol=1e-5, atol=1e-6)
  # Control: one sample is not the average.
  assert not np.allclose(predict_one(key), got, atol=1e-3)


def test_mc_average_of_linear_model_is_unbiased():
  """Inverted scaling makes dropout unbiased: for a linear model y = dropout(x) @ w, the MC
  average over 2000 samples is x @ w within 5 standard errors, and for x = 1 the mean of
  dropout.apply is 1 within 4."""
  n, rate = 2000, 0.5
  xs = normal((4, 3, 16), 0)
  w = normal((16, 2), 1)

  def predict(k):
    return rd.apply(recurrent.sequence_keys(k, jnp.arange(4)), xs, rate) @ w

  got = np.asarray(jit(lambda k: recurrent.mc_average(predict, k, n))(jax.random.key(2)))
  exact = np.asarray(xs, np.float64) @ np.asarray(w, np.float64)
  # Var of sum_f x_f m_f w_f with m in {0, 1/(1-p)}: sum_f (x_f w_f)^2 p / (1-p).
  var = np.einsum("btf,fo->bto", np.asarray(xs, np.float64) ** 2, np.asarray(w, np.float64) ** 2)
  se = np.sqrt(var * rate / (1 - rate) / n)
  assert np.all(np.abs(got - exact) < 5 * se + 1e-5), np.max(np.abs(got - exact) / se)

  def ones(k):
    return rd.apply(recurrent.sequence_keys(k, 8), jnp.ones((8, 2, 32)), rate)

  mean = float(jnp.mean(jit(lambda k: recurrent.mc_average(ones, k, n))(jax.random.key(3))))
  assert abs(mean - 1.0) < 4 * np.sqrt(rate / (1 - rate) / (n * 8 * 32))


# ----------------------------------------------------------------- sequence_keys


def _data(keys):
  return np.asarray(jax.random.key_data(keys))


def test_sequence_keys_raw_and_typed():
  """sequence_keys(key, ids)[b] is fold_in(key, ids[b]); a raw uint32 key
  (jax.random.PRNGKey) and a typed key (jax.random.key) of the same seed agree."""
  ids = [7, 0, 123456]
  typed = recurrent.sequence_keys(jax.random.key(3), jnp.array(ids))
  raw = recurrent.sequence_keys(jax.random.PRNGKey(3), jnp.array(ids))
  assert typed.shape == raw.shape == (3,)
  assert jax.dtypes.issubdtype(raw.dtype, jax.dtypes.prng_key)
  np.testing.assert_array_equal(_data(typed), _data(raw))
  for b, i in enumerate(ids):
    np.testing.assert_array_equal(_data(typed[b]), _data(jax.random.fold_in(jax.random.key(3), i)))


def test_sequence_keys_ids_forms():
  """An int n means arange(n); numpy and uint32 ids work; a [2, 3] ids array gives [2, 3]
  keys, each that of its id alone; the same id always gives the same key."""
  key = jax.random.key(0)
  want = _data(recurrent.sequence_keys(key, jnp.arange(5)))
  np.testing.assert_array_equal(_data(recurrent.sequence_keys(key, 5)), want)
  np.testing.assert_array_equal(_data(recurrent.sequence_keys(key, np.arange(5))), want)
  uint_ids = jnp.arange(5, dtype=jnp.uint32)
  np.testing.assert_array_equal(_data(recurrent.sequence_keys(key, uint_ids)), want)
  keys = recurrent.sequence_keys(key, np.array([[4, 1, 9], [0, 4, 2]]))
  assert keys.shape == (2, 3)
  np.testing.assert_array_equal(_data(keys[1, 1]), _data(keys[0, 0]))
  np.testing.assert_array_equal(_data(keys[0, 2]), _data(recurrent.sequence_keys(key, [9])[0]))


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_drivers_accept_raw_keys(driver):
  """Drivers take raw uint32 per-sequence keys [B, 2] as well as typed keys [B], with the
  same result."""
  raw = jax.random.key_data(KEYS4)
  assert raw.shape == (4, 2) and raw.dtype == jnp.uint32
  got = DRIVERS[driver](XS4, key=raw, **DROP)
  jax.tree.map(np.testing.assert_array_equal, got, _with_dropout(driver))


def test_apply_accepts_raw_keys():
  """dropout.apply takes raw [B, 2] keys with the result of typed ones."""
  xs = jnp.ones((4, 3, 8))
  raw, typed = jit(lambda r, t: (rd.apply(r, xs, 0.5), rd.apply(t, xs, 0.5)))(
    jax.random.key_data(KEYS4), KEYS4
  )
  np.testing.assert_array_equal(raw, typed)
