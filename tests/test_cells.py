"""The cells and the scan driver against a NumPy float64 loop written from the equations
(``tests/numpy_reference.py``), over cell x reverse x time_major x seq_lengths x dropout
masks; dtypes (float64, bfloat16), gradients, ``jit``, ``vmap`` and ``trace``.

Shape legend: B batch, T time, IN input size (I in the docstrings), H hidden size, G gates.
"""

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import recurrent
from recurrent import dropout as rdropout
from tests import numpy_reference as ref

B, T, IN, H = 4, 6, 3, 5
# Ragged lengths: a full sequence, an empty one and two partial ones.
LENGTHS = np.array([T, 0, 3, 1])
DROPOUT, RECURRENT_DROPOUT = 0.3, 0.4
F32_TOL = 1e-5
# check_grads in float64: central differences (eps 1e-4) vs autodiff agree to ~5e-7 here;
# 1e-5 is 100x tighter than check_grads' float64 default.
GRAD_TOL = dict(atol=1e-5, rtol=1e-5)

# name -> (factory, reference kind, reset_after)
CELLS = {
  "lstm": (recurrent.lstm, "lstm", True),
  "gru": (recurrent.gru, "gru", True),
  "gru_reset_before": (lambda h, **kw: recurrent.gru(h, reset_after=False, **kw), "gru", False),
}
CELL_NAMES = list(CELLS)


def make_cell(name, **kwargs):
  return CELLS[name][0](H, **kwargs)


def ref_run(name, params, xs, **kwargs):
  _, kind, reset_after = CELLS[name]
  return ref.run(kind, params, xs, reset_after=reset_after, **kwargs)


def ref_step(name, params, carry, x):
  """The reference's one step; returns ``({'h'[, 'c']}, h)``."""
  _, kind, reset_after = CELLS[name]
  if kind == "lstm":
    h, c, _ = ref.lstm_step(params, carry.h, carry.c, x)
    return {"h": h, "c": c}, h
  h, _ = ref.gru_step(params, carry.h, x, reset_after)
  return {"h": h}, h


def random_params(cell, seed, input_size, dtype=jnp.float32):
  """Params of ``cell`` with every leaf (biases included) random, so that a misplaced bias
  or gate block shows up. Drawn with NumPy: ``cell.init``'s orthogonal initialiser costs
  a QR compile per shape and dtype, and its values do not matter here."""
  rng = np.random.default_rng(seed)
  size = cell.num_gates * cell.hidden_size

  def normal(*shape):
    return jnp.asarray(0.5 * rng.standard_normal(shape), dtype)

  w_ih, w_hh = normal(input_size, size), normal(cell.hidden_size, size)
  if cell.name == "lstm":
    return recurrent.LSTMParams(w_ih, w_hh, normal(size))
  kind = type(jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size)))  # either GRU form
  return kind(w_ih, w_hh, normal(size), normal(size))


def random_stack(cell, seed, input_size, dtype=jnp.float32):
  """Two bidirectional layers of random params, laid out as ``recurrent.init_layers``."""
  sizes = (input_size, 2 * cell.hidden_size)
  return [
    recurrent.Bidirectional(
      random_params(cell, seed + 2 * layer, size, dtype),
      random_params(cell, seed + 2 * layer + 1, size, dtype),
    )
    for layer, size in enumerate(sizes)
  ]


def random_carry(cell, seed, batch_shape, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  zeros = cell.initial_carry(batch_shape, dtype)
  return type(zeros)(*(jnp.asarray(rng.standard_normal(z.shape), dtype) for z in zeros))


def inputs(seed, shape=(B, T, IN), dtype=jnp.float32):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def seq_keys(batch=B):
  return recurrent.sequence_keys(jax.random.key(7), batch)


def as_dict(carry):
  return {k: np.asarray(v) for k, v in carry._asdict().items()}


def assert_close(actual, expected, tol, what=""):
  actual = np.asarray(actual).astype(np.float64)
  np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol, err_msg=what)


def assert_carry_close(carry, expected, tol):
  assert set(carry._fields) == set(expected), (carry._fields, expected.keys())
  for field in carry._fields:
    assert_close(getattr(carry, field), expected[field], tol, f"carry.{field}")


def driver_masks(cell, keys, per_gate, input_dtype=jnp.float32, carry_dtype=jnp.float32):
  """The masks ``recurrent.scan`` draws (``_run`` in recurrent/scan.py): ``[B, IN]`` and
  ``[B, H]`` arrays, or lists of G of them when ``per_gate``."""
  num = cell.num_gates if per_gate else 1
  m_in = rdropout.masks(rdropout.derive(keys, rdropout.INPUT), IN, DROPOUT, num, input_dtype)
  m_rec = rdropout.masks(
    rdropout.derive(keys, rdropout.RECURRENT), cell.hidden_size, RECURRENT_DROPOUT, num, carry_dtype
  )
  if per_gate:
    return [np.asarray(m) for m in m_in], [np.asarray(m) for m in m_rec]
  return np.asarray(m_in[0]), np.asarray(m_rec[0])


# cell.step


@pytest.mark.parametrize("batch_shape", [(), (B,), (2, 3)], ids=["unbatched", "B", "2x3"])
@pytest.mark.parametrize("name", CELL_NAMES)
def test_step_matches_reference(name, batch_shape):
  """cell.step on x [I], [B, I] and [2, 3, I] vs the NumPy reference's one step."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  carry = random_carry(cell, 1, batch_shape)
  x = inputs(2, batch_shape + (IN,))
  new_carry, h = cell.step(params, carry, x)
  expected_carry, expected_h = ref_step(name, params, carry, x)
  assert h.shape == batch_shape + (H,)
  assert_close(h, expected_h, F32_TOL, "h")
  assert_carry_close(new_carry, expected_carry, F32_TOL)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_step_vmap_equals_batched(name):
  """vmap of cell.step over unbatched x [I] equals the batched call (and the reference)."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  carry = random_carry(cell, 1, (B,))
  x = inputs(2, (B, IN))
  batched = cell.step(params, carry, x)
  mapped = jax.vmap(cell.step, in_axes=(None, 0, 0))(params, carry, x)
  for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(batched)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
  assert_close(mapped[1], ref_step(name, params, carry, x)[1], F32_TOL)


# recurrent.scan over the options

MASKS = ("none", "shared", "per_gate")


def _scan_case(cell_index, mask_index, reverse):
  """The full product cell x masks x reverse, with seq_lengths and time_major alternating
  so that every value of every option meets every value of every other (a pairwise
  covering; cell x reverse x seq_lengths is even complete): 18 scans to compile, not 72."""
  lengths = "ragged" if (mask_index + reverse) % 2 else None
  time_major = bool((cell_index + mask_index) % 2)
  name, masks = CELL_NAMES[cell_index], MASKS[mask_index]
  layout = "time_major" if time_major else "batch_major"
  direction = "reverse" if reverse else "forward"
  case_id = f"{name}-{masks}-{direction}-{lengths or 'full'}-{layout}"
  return pytest.param(name, reverse, time_major, lengths, masks, id=case_id)


SCAN_CASES = [
  _scan_case(c, m, r)
  for c in range(len(CELL_NAMES))
  for m in range(len(MASKS))
  for r in (False, True)
]


@pytest.mark.parametrize("name, reverse, time_major, lengths, masks", SCAN_CASES)
def test_scan_matches_reference(name, reverse, time_major, lengths, masks):
  """recurrent.scan vs the NumPy reference loop, from a random initial carry; the dropout
  masks given to the reference are the ones the driver draws from the sequences' keys."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  carry = random_carry(cell, 1, (B,))
  xs = inputs(2)
  seq_lengths = None if lengths is None else jnp.asarray(LENGTHS, jnp.int32)
  options = {}
  in_mask = rec_mask = None
  if masks != "none":
    keys = seq_keys()
    per_gate = masks == "per_gate"
    options = dict(
      dropout=DROPOUT, recurrent_dropout=RECURRENT_DROPOUT, per_gate_masks=per_gate, key=keys
    )
    in_mask, rec_mask = driver_masks(cell, keys, per_gate)
    # The masks must drop something, or this case would not test them.
    assert all((m == 0).any() for m in jax.tree.leaves((in_mask, rec_mask)))

  final, ys = recurrent.scan(
    cell,
    params,
    jnp.swapaxes(xs, 0, 1) if time_major else xs,
    initial_carry=carry,
    seq_lengths=seq_lengths,
    reverse=reverse,
    time_major=time_major,
    **options,
  )
  assert ys.shape == ((T, B, H) if time_major else (B, T, H)) and ys.dtype == jnp.float32
  if time_major:
    ys = jnp.swapaxes(ys, 0, 1)
  expected = ref_run(
    name,
    params,
    xs,
    initial_carry=as_dict(carry),
    seq_lengths=None if lengths is None else LENGTHS,
    reverse=reverse,
    in_mask=in_mask,
    rec_mask=rec_mask,
  )
  assert_close(ys, expected["outputs"], F32_TOL, "outputs")
  assert_carry_close(final, expected["final"], F32_TOL)
  if lengths is not None:
    padding = np.arange(T)[None, :] >= LENGTHS[:, None]
    assert np.all(np.asarray(ys)[padding] == 0.0), "outputs past seq_lengths must be zeros"


@pytest.mark.parametrize("name", ["lstm", "gru"])
def test_scan_multiple_batch_dims(name):
  """xs [2, 2, T, I] with seq_lengths [2, 2] and keys [2, 2], zero initial carry, vs the
  NumPy reference on the flattened batch [4, T, I] (a sequence's masks depend on its key
  only)."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  xs = inputs(2).reshape(2, 2, T, IN)
  keys = seq_keys().reshape(2, 2)
  final, ys = recurrent.scan(
    cell,
    params,
    xs,
    seq_lengths=jnp.asarray(LENGTHS.reshape(2, 2), jnp.int32),
    dropout=DROPOUT,
    recurrent_dropout=RECURRENT_DROPOUT,
    key=keys,
  )
  in_mask, rec_mask = driver_masks(cell, keys.reshape(-1), per_gate=False)
  expected = ref_run(
    name, params, xs.reshape(B, T, IN), seq_lengths=LENGTHS, in_mask=in_mask, rec_mask=rec_mask
  )
  assert ys.shape == (2, 2, T, H)
  assert_close(ys.reshape(B, T, H), expected["outputs"], F32_TOL, "outputs")
  assert_close(final.h.reshape(B, H), expected["final"]["h"], F32_TOL, "carry.h")


# dtypes


@pytest.mark.parametrize("name", CELL_NAMES)
def test_float64_matches_reference(name):
  """In float64 (jax.enable_x64) scan with seq_lengths, reverse and an initial carry
  matches the NumPy reference to 1e-12. (Masks in float64: the stack gradient test.)"""
  with jax.enable_x64(True):
    cell = make_cell(name, param_dtype=jnp.float64)
    params = random_params(cell, 0, IN, jnp.float64)
    carry = random_carry(cell, 1, (B,), jnp.float64)
    xs = inputs(2, dtype=jnp.float64)
    final, ys = recurrent.scan(
      cell, params, xs, initial_carry=carry, seq_lengths=jnp.asarray(LENGTHS), reverse=True
    )
    assert ys.dtype == jnp.float64 and final.h.dtype == jnp.float64
  expected = ref_run(
    name,
    params,
    xs,
    initial_carry=as_dict(carry),
    seq_lengths=LENGTHS,
    reverse=True,
  )
  assert_close(ys, expected["outputs"], 1e-12, "outputs")
  assert_carry_close(final, expected["final"], 1e-12)


def test_float64_with_int32_seq_lengths():
  """Under jax.enable_x64, int32 seq_lengths (the dtype data pipelines and the float32
  tests use) work as int64 ones do: NumPy reference, 1e-12. Under the strict dtype
  promotion of this test session the library must not mix int32 with its own int64."""
  with jax.enable_x64(True):
    cell = make_cell("lstm", param_dtype=jnp.float64)
    params = random_params(cell, 0, IN, jnp.float64)
    xs = inputs(2, dtype=jnp.float64)
    final, ys = recurrent.scan(cell, params, xs, seq_lengths=jnp.asarray(LENGTHS, jnp.int32))
  expected = ref_run("lstm", params, xs, seq_lengths=LENGTHS)
  assert_close(ys, expected["outputs"], 1e-12, "outputs")
  assert_carry_close(final, expected["final"], 1e-12)


@pytest.mark.parametrize("name", CELL_NAMES)
def test_bfloat16_matmuls(name):
  """dtype=bfloat16 with float32 params: float32 carries, bfloat16 outputs, within 3e-2 of
  the float64 NumPy reference (bfloat16 keeps 8 bits of mantissa)."""
  cell = make_cell(name, dtype=jnp.bfloat16)
  params = random_params(cell, 0, IN)
  xs = inputs(2)
  final, ys = recurrent.scan(cell, params, xs, seq_lengths=jnp.asarray(LENGTHS, jnp.int32))
  assert ys.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in final)
  expected = ref_run(name, params, xs, seq_lengths=LENGTHS)
  assert_close(ys, expected["outputs"], 3e-2, "outputs")
  assert_carry_close(final, expected["final"], 3e-2)
  step_carry, h = cell.step(params, cell.initial_carry((B,)), xs[:, 0])
  assert h.dtype == jnp.bfloat16
  assert all(leaf.dtype == jnp.float32 for leaf in step_carry)


# gradients (float64)


@pytest.mark.parametrize("name, order", [("lstm", 2), ("gru", 1), ("gru_reset_before", 1)])
def test_step_grads(name, order):
  """Reverse-mode derivatives of cell.step vs finite differences (jax.test_util.check_grads),
  float64; up to order 2 for the LSTM (order 2 doubles the cost, the GRUs stay at 1)."""
  with jax.enable_x64(True):
    cell = make_cell(name, param_dtype=jnp.float64)
    params = random_params(cell, 0, IN, jnp.float64)
    carry = random_carry(cell, 1, (2,), jnp.float64)
    x = inputs(2, (2, IN), jnp.float64)
    jax.test_util.check_grads(cell.step, (params, carry, x), order=order, modes=["rev"], **GRAD_TOL)


def test_scan_grads_with_lengths_and_reverse():
  """Reverse-mode derivatives of recurrent.scan (a GRU: the cells' own derivatives are
  test_step_grads') with ragged seq_lengths, reverse=True and an initial carry vs finite
  differences (check_grads), float64. Dropout's are in the stack test below."""
  with jax.enable_x64(True):
    cell = make_cell("gru", param_dtype=jnp.float64)
    params = random_params(cell, 0, IN, jnp.float64)
    carry = random_carry(cell, 1, (B,), jnp.float64)
    xs = inputs(2, dtype=jnp.float64)
    lengths = jnp.asarray(LENGTHS)

    @jax.jit
    def run(params, carry, xs):
      return recurrent.scan(
        cell, params, xs, initial_carry=carry, seq_lengths=lengths, reverse=True
      )

    jax.test_util.check_grads(run, (params, carry, xs), order=1, modes=["rev"], **GRAD_TOL)


def test_stack_bidirectional_grads_with_dropout():
  """Reverse-mode derivatives of a bidirectional recurrent.stack layer with seq_lengths,
  dropout and recurrent dropout on (fixed keys) vs finite differences, float64. (One
  layer: the masks' compile dominates and a second adds no new kind of derivative.)"""
  with jax.enable_x64(True):
    cell = recurrent.lstm(H, param_dtype=jnp.float64)
    params = random_stack(cell, 0, IN, jnp.float64)[:1]
    xs = inputs(2, dtype=jnp.float64)
    lengths, keys = jnp.asarray(LENGTHS), seq_keys()

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

    jax.test_util.check_grads(run, (params, xs), order=1, modes=["rev"], **GRAD_TOL)


# layers


def test_stack_bidirectional_matches_reference():
  """A 2-layer bidirectional GRU recurrent.stack with seq_lengths and dropout vs the NumPy
  reference run forward and reversed in each layer, with masks from the keys
  fold_in(fold_in(key, layer), direction) that recurrent/layers.py documents."""
  cell = make_cell("gru")
  params = random_stack(cell, 0, IN)
  xs = inputs(2)
  keys = seq_keys()
  finals, ys = recurrent.stack(
    cell,
    params,
    xs,
    seq_lengths=jnp.asarray(LENGTHS, jnp.int32),
    dropout=DROPOUT,
    recurrent_dropout=RECURRENT_DROPOUT,
    key=keys,
  )
  layer_in = np.asarray(xs, np.float64)
  for layer, layer_params in enumerate(params):
    outs = []
    for direction, p in enumerate(layer_params):
      k = rdropout.derive(keys, layer, direction)
      (m_in,) = rdropout.masks(rdropout.derive(k, rdropout.INPUT), layer_in.shape[-1], DROPOUT)
      (m_rec,) = rdropout.masks(rdropout.derive(k, rdropout.RECURRENT), H, RECURRENT_DROPOUT)
      out = ref.run(
        "gru",
        p,
        layer_in,
        seq_lengths=LENGTHS,
        reverse=direction == 1,
        in_mask=np.asarray(m_in),
        rec_mask=np.asarray(m_rec),
      )
      what = f"layer {layer} direction {direction} carry.h"
      assert_close(finals[layer][direction].h, out["final"]["h"], F32_TOL, what)
      outs.append(out["outputs"])
    layer_in = np.concatenate(outs, axis=-1)
  assert ys.shape == (B, T, 2 * H)
  assert_close(ys, layer_in, F32_TOL, "top outputs")


# jit, vmap, trace


@pytest.mark.parametrize("name", ["gru"])
def test_scan_under_jit(name):
  """jax.jit(recurrent.scan) with traced seq_lengths and keys vs the NumPy reference."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  xs = inputs(2)
  keys = seq_keys()

  @jax.jit
  def run(params, xs, lengths, keys):
    return recurrent.scan(
      cell,
      params,
      xs,
      seq_lengths=lengths,
      reverse=True,
      dropout=DROPOUT,
      recurrent_dropout=RECURRENT_DROPOUT,
      key=keys,
    )

  final, ys = run(params, xs, jnp.asarray(LENGTHS, jnp.int32), keys)
  in_mask, rec_mask = driver_masks(cell, keys, per_gate=False)
  expected = ref_run(
    name, params, xs, seq_lengths=LENGTHS, reverse=True, in_mask=in_mask, rec_mask=rec_mask
  )
  assert_close(ys, expected["outputs"], F32_TOL, "outputs")
  assert_carry_close(final, expected["final"], F32_TOL)


@pytest.mark.parametrize("name", ["lstm"])
def test_scan_vmap_equals_batched(name):
  """vmap of recurrent.scan over unbatched sequences [T, I], each with its own length,
  key and initial carry, equals the batched call: a sequence's result, dropout masks
  included, does not depend on its batch."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  carry = random_carry(cell, 1, (B,))
  xs = inputs(2)
  lengths, keys = jnp.asarray(LENGTHS, jnp.int32), seq_keys()
  options = dict(
    reverse=True, dropout=DROPOUT, recurrent_dropout=RECURRENT_DROPOUT, per_gate_masks=True
  )

  def one(x, length, key, c):
    return recurrent.scan(cell, params, x, initial_carry=c, seq_lengths=length, key=key, **options)

  mapped = jax.jit(jax.vmap(one))(xs, lengths, keys, carry)
  batched = recurrent.scan(
    cell, params, xs, initial_carry=carry, seq_lengths=lengths, key=keys, **options
  )
  for a, b in zip(jax.tree.leaves(mapped), jax.tree.leaves(batched)):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
  "name, reverse, time_major",
  [("lstm", False, False), ("lstm", True, True), ("gru", True, False)]
  + [("gru_reset_before", False, True)],
)
def test_trace_matches_reference(name, reverse, time_major):
  """recurrent.trace's gates and carries vs the NumPy reference's per-step gate
  activations and carries (zero gates and the held carry at padding steps); its carries'
  h equal recurrent.scan's outputs at valid steps."""
  cell = make_cell(name)
  params = random_params(cell, 0, IN)
  carry = random_carry(cell, 1, (B,))
  xs = inputs(2)
  keys = seq_keys()
  options = dict(
    initial_carry=carry,
    seq_lengths=jnp.asarray(LENGTHS, jnp.int32),
    reverse=reverse,
    time_major=time_major,
    dropout=DROPOUT,
    recurrent_dropout=RECURRENT_DROPOUT,
    key=keys,
  )
  xs_in = jnp.swapaxes(xs, 0, 1) if time_major else xs
  carries, gates = recurrent.trace(cell, params, xs_in, **options)
  _, ys = recurrent.scan(cell, params, xs_in, **options)
  if time_major:
    carries, gates, ys = jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), (carries, gates, ys))

  in_mask, rec_mask = driver_masks(cell, keys, per_gate=False)
  expected = ref_run(
    name,
    params,
    xs,
    initial_carry=as_dict(carry),
    seq_lengths=LENGTHS,
    reverse=reverse,
    in_mask=in_mask,
    rec_mask=rec_mask,
  )
  assert set(gates._fields) == set(expected["gates"])
  for field in gates._fields:
    assert getattr(gates, field).shape == (B, T, H)
    assert_close(getattr(gates, field), expected["gates"][field], F32_TOL, f"gates.{field}")
  assert_carry_close(carries, expected["carries"], F32_TOL)
  valid = np.arange(T)[None, :] < LENGTHS[:, None]
  np.testing.assert_allclose(
    np.asarray(carries.h)[valid], np.asarray(ys)[valid], rtol=1e-6, atol=1e-6
  )
