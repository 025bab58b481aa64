"""The projection LSTM (:mod:`recurrent.projection_lstm`) against PyTorch's
``nn.LSTM(proj_size=P)``, its independent reference, and under the library's drivers.

Shape legend: B batch, T time, IN input size (I in the docstrings), H cell size, P
projection size, L layers, D directions.

PyTorch parity follows ``tests/test_torch_parity.py``: weights go from a seeded torch module
to ours with :func:`recurrent.convert.from_torch`, both sides compute the same scalar loss
(outputs and final ``h``/``c`` against fixed random weights) and its gradients w.r.t. every
parameter and the inputs; float32, 1e-5. The rest checks the cell's equations against NumPy
(masks included), its init, and that ``jit``/``grad``/``vmap``, dropout and the Flax
wrappers run it as they run the built-in cells.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import recurrent
from recurrent import convert
from recurrent.projection_lstm import ProjectionLSTMParams, projection_lstm

ATOL, RTOL = 1e-5, 1e-5
B, T, IN, H, P = 3, 7, 5, 6, 4
# As in test_torch_parity: LLVM's -O0 cuts compile time, the dominant cost here; it changes
# how XLA optimises its kernels, not which operations run.
_jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

pytestmark = [
  pytest.mark.usefixtures("torch_one_thread"),
  # torch's CPU LSTM falls back from oneDNN for projections, and says so once per process.
  pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning"),
]


def _torch_module(num_layers, bidirectional, *, seed=0, hidden=H, proj=P, inputs=IN, **kw):
  """A seeded ``nn.LSTM(proj_size=P, batch_first=True)`` with PyTorch's own init."""
  torch.manual_seed(seed)
  return torch.nn.LSTM(
    inputs, hidden, num_layers=num_layers, bidirectional=bidirectional, proj_size=proj,
    batch_first=True, **kw,
  )  # fmt: skip


def _xs(seed, shape=(B, T, IN)):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _rows(carries, field):
  """Our per-layer carries -> PyTorch's ``[L*D, B, F]`` (row ``l*D + d``)."""
  rows = []
  for carry in carries:
    rows.extend(carry if isinstance(carry, recurrent.Bidirectional) else (carry,))
  return jnp.stack([getattr(r, field) for r in rows])


def _unrows(h0, c0, num_layers, bidirectional):
  """PyTorch's ``(h0 [L*D, B, P], c0 [L*D, B, H])`` -> our per-layer carries."""
  state = lambda i: recurrent.LSTMState(jnp.asarray(h0[i]), jnp.asarray(c0[i]))  # noqa: E731
  if bidirectional:
    return [recurrent.Bidirectional(state(2 * i), state(2 * i + 1)) for i in range(num_layers)]
  return [state(i) for i in range(num_layers)]


def _loss_weights(rng, batch, steps, hidden, proj, num_layers, bidirectional):
  """``loss = sum(ys * w_y) + sum(h_n * w_h) + sum(c_n * w_c)``: note ``h_n`` is P wide and
  ``c_n`` H wide."""
  d = 2 if bidirectional else 1
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
  return (
    normal(batch, steps, d * proj),
    normal(num_layers * d, batch, proj),
    normal(num_layers * d, batch, hidden),
  )


def _run_torch(module, xs, weights, *, lengths=None, initial=None):
  w_y, w_h, w_c = weights
  xs_t = torch.tensor(xs, requires_grad=True)
  hx = None if initial is None else tuple(torch.tensor(a, requires_grad=True) for a in initial)
  inputs = xs_t
  if lengths is not None:
    inputs = pack_padded_sequence(
      xs_t, torch.tensor(lengths), batch_first=True, enforce_sorted=False
    )
  module.zero_grad()
  out, (h_n, c_n) = module(inputs, hx)
  if lengths is not None:
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=xs.shape[1])
  loss = (out * torch.from_numpy(w_y)).sum()
  loss = loss + (h_n * torch.from_numpy(w_h)).sum() + (c_n * torch.from_numpy(w_c)).sum()
  loss.backward()
  return dict(
    loss=loss.item(),
    ys=out.detach().numpy(),
    finals=(h_n.detach().numpy(), c_n.detach().numpy()),
    grads={name: p.grad.numpy().copy() for name, p in module.named_parameters()},
    d_xs=xs_t.grad.numpy(),
    d_initial=None if hx is None else tuple(a.grad.numpy() for a in hx),
  )


def _ours(hidden, proj):
  """Our loss as ``jit(value_and_grad)`` over ``(params, xs, initial_carry)``."""
  cell = projection_lstm(hidden, proj)

  def loss_fn(params, xs, initial_carry, seq_lengths, weights):
    w_y, w_h, w_c = weights
    carries, ys = recurrent.stack(
      cell, params, xs, initial_carry=initial_carry, seq_lengths=seq_lengths
    )
    h_n, c_n = _rows(carries, "h"), _rows(carries, "c")
    loss = jnp.sum(ys * w_y) + jnp.sum(h_n * w_h) + jnp.sum(c_n * w_c)
    return loss, (ys, (h_n, c_n))

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
  return _jit(grad_fn)


def _expected_param_grads(torch_grads):
  """PyTorch's gradients in our layout: ``from_torch`` of the gradient dict transposes the
  weights (``weight_hr`` included) as it does the weights; ``b`` stands where ``bias_ih``
  and ``bias_hh`` each stand, so its gradient is ``bias_ih.grad`` (equal to
  ``bias_hh.grad``), not the sum ``from_torch`` makes."""
  expected = convert.from_torch(torch_grads)
  out = []
  for layer, params in enumerate(expected):
    pair = isinstance(params, recurrent.Bidirectional)
    fixed = []
    for params_d, suffix in zip(params if pair else (params,), ("", "_reverse")):
      name = f"_l{layer}{suffix}"
      np.testing.assert_allclose(
        torch_grads["bias_ih" + name], torch_grads["bias_hh" + name], rtol=0, atol=1e-6
      )
      fixed.append(params_d._replace(b=jnp.asarray(torch_grads["bias_ih" + name])))
    out.append(recurrent.Bidirectional(*fixed) if pair else fixed[0])
  return out


def _assert_tree_close(actual, expected, what, atol=ATOL, rtol=RTOL):
  actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
  expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
  assert actual_tree == expected_tree, f"{what}: {actual_tree} != {expected_tree}"
  for (path, a), (_, e) in zip(actual_leaves, expected_leaves):
    np.testing.assert_allclose(
      np.asarray(a), np.asarray(e), rtol=rtol, atol=atol,
      err_msg=f"{what}{jax.tree_util.keystr(path)}",
    )  # fmt: skip


def _compare(ours, reference, *, check_initial=False):
  (loss, (ys, finals)), (d_params, d_xs, d_initial) = ours
  np.testing.assert_allclose(float(loss), reference["loss"], rtol=RTOL, atol=1e-4)
  _assert_tree_close(ys, reference["ys"], "outputs")
  for field, got, want in zip("hc", finals, reference["finals"]):
    assert got.shape == want.shape, field
    _assert_tree_close(got, want, f"final {field}")
  _assert_tree_close(d_params, _expected_param_grads(reference["grads"]), "d params")
  _assert_tree_close(d_xs, reference["d_xs"], "d xs")
  if check_initial:
    got = (_rows(d_initial, "h"), _rows(d_initial, "c"))
    _assert_tree_close(got, reference["d_initial"], "d initial")


# --- PyTorch parity -----------------------------------------------------------------------


@pytest.mark.parametrize(
  "num_layers, bidirectional", ((1, False), (1, True), (2, False), (2, True)),
  ids=("1-uni", "1-bi", "2-uni", "2-bi"),
)  # fmt: skip
def test_stack_matches_torch(num_layers, bidirectional):
  """PyTorch ``nn.LSTM(proj_size=P)``: outputs ``[B, T, D*P]``, ``h_n [L*D, B, P]``,
  ``c_n [L*D, B, H]`` and the gradients w.r.t. every parameter (``weight_hr`` included)
  and the inputs, from zero carries."""
  module = _torch_module(num_layers, bidirectional)
  rng = np.random.default_rng(0)
  xs = _xs(0)
  weights = _loss_weights(rng, B, T, H, P, num_layers, bidirectional)
  reference = _run_torch(module, xs, weights)

  params = convert.from_torch(module.state_dict())
  ours = _ours(H, P)(params, jnp.asarray(xs), None, None, weights)
  _compare(ours, reference)


@pytest.mark.parametrize(
  "shape", ((1, 1, 1, 2, 1), (2, 30, 8, 16, 5)), ids=("B1-T1-I1-H2-P1", "B2-T30-I8-H16-P5")
)
def test_shapes_match_torch(shape):
  """PyTorch, as :func:`test_stack_matches_torch`, with 2 bidirectional layers: a single
  step of one projected unit, and a longer sequence with ``P`` far below ``H``."""
  batch, steps, inputs, hidden, proj = shape
  module = _torch_module(2, True, seed=4, hidden=hidden, proj=proj, inputs=inputs)
  rng = np.random.default_rng(4)
  xs = _xs(4, (batch, steps, inputs))
  weights = _loss_weights(rng, batch, steps, hidden, proj, 2, True)
  reference = _run_torch(module, xs, weights)
  params = convert.from_torch(module.state_dict())
  ours = _ours(hidden, proj)(params, jnp.asarray(xs), None, None, weights)
  _compare(ours, reference)


def test_initial_carry_matches_torch():
  """PyTorch with nonzero ``(h0 [L*D, B, P], c0 [L*D, B, H])``: outputs, final carries and
  the gradients, those w.r.t. the initial carries included; 2 bidirectional layers."""
  num_layers, bidirectional = 2, True
  module = _torch_module(num_layers, bidirectional, seed=1)
  rng = np.random.default_rng(1)
  xs = _xs(1)
  h0 = rng.standard_normal((2 * num_layers, B, P)).astype(np.float32)
  c0 = rng.standard_normal((2 * num_layers, B, H)).astype(np.float32)
  weights = _loss_weights(rng, B, T, H, P, num_layers, bidirectional)
  reference = _run_torch(module, xs, weights, initial=(h0, c0))

  params = convert.from_torch(module.state_dict())
  carries = _unrows(h0, c0, num_layers, bidirectional)
  ours = _ours(H, P)(params, jnp.asarray(xs), carries, None, weights)
  _compare(ours, reference, check_initial=True)


@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
def test_seq_lengths_match_torch_packed(bidirectional):
  """PyTorch ``pack_padded_sequence(enforce_sorted=False)`` vs ``seq_lengths``, 2 layers:
  valid outputs and gradients equal, padded outputs zero on both sides, ``h_n``/``c_n``
  each sequence's state at its own last step; padded inputs get no gradient."""
  batch, steps = 5, 11
  lengths = np.array([7, 11, 1, 4, 10], np.int32)  # unsorted, a full and a length-1 one
  module = _torch_module(2, bidirectional, seed=2)
  rng = np.random.default_rng(2)
  xs = _xs(2, (batch, steps, IN))  # nonzero padding: it must be ignored
  weights = _loss_weights(rng, batch, steps, H, P, 2, bidirectional)
  reference = _run_torch(module, xs, weights, lengths=lengths)

  params = convert.from_torch(module.state_dict())
  ours = _ours(H, P)(params, jnp.asarray(xs), None, jnp.asarray(lengths), weights)
  _compare(ours, reference)

  padding = np.arange(steps)[None, :] >= lengths[:, None]
  assert padding.sum() > 0
  np.testing.assert_array_equal(np.asarray(ours[0][1][0])[padding], 0.0)
  np.testing.assert_array_equal(reference["ys"][padding], 0.0)
  d_xs = np.asarray(ours[1][1])
  np.testing.assert_array_equal(d_xs[padding], 0.0)
  assert np.abs(d_xs[~padding]).min() > 0.0


# --- converters ---------------------------------------------------------------------------


def _forward(params, xs, hidden=H, proj=P):
  """Our stack's outputs and ``(h_n, c_n)`` in PyTorch's layout, as NumPy."""
  run = _jit(lambda p, x: recurrent.stack(projection_lstm(hidden, proj), p, x))
  carries, ys = run(params, jnp.asarray(xs))
  return np.asarray(ys), (np.asarray(_rows(carries, "h")), np.asarray(_rows(carries, "c")))


def _torch_forward(module, xs):
  with torch.no_grad():
    out, (h_n, c_n) = module(torch.from_numpy(xs))
  return out.numpy(), (h_n.numpy(), c_n.numpy())


def _assert_same_outputs(ours, reference):
  (ys, (h, c)), (ys_ref, (h_ref, c_ref)) = ours, reference
  np.testing.assert_allclose(ys, ys_ref, rtol=RTOL, atol=ATOL, err_msg="outputs")
  np.testing.assert_allclose(h, h_ref, rtol=RTOL, atol=ATOL, err_msg="h_n")
  np.testing.assert_allclose(c, c_ref, rtol=RTOL, atol=ATOL, err_msg="c_n")


def test_from_torch_layout():
  """PyTorch ``nn.LSTM(proj_size=P)`` state dict: :class:`ProjectionLSTMParams` for every
  layer and direction, weights transposed exactly (``w_hr = weight_hr.T``), ``b = bias_ih +
  bias_hh``; torch tensors and their NumPy copies convert alike; ``dtype=`` casts all."""
  sd = _torch_module(2, True).state_dict()
  sd_np = {k: v.numpy() for k, v in sd.items()}
  params = convert.from_torch(sd)
  assert len(params) == 2
  for layer, pair in enumerate(params):
    assert isinstance(pair, recurrent.Bidirectional)
    for params_d, suffix in zip(pair, ("", "_reverse")):
      key = f"_l{layer}{suffix}"
      assert isinstance(params_d, ProjectionLSTMParams)
      assert params_d.w_ih.shape == ((IN if layer == 0 else 2 * P), 4 * H)
      assert params_d.w_hh.shape == (P, 4 * H) and params_d.w_hr.shape == (H, P)
      np.testing.assert_array_equal(params_d.w_ih, sd_np["weight_ih" + key].T)
      np.testing.assert_array_equal(params_d.w_hh, sd_np["weight_hh" + key].T)
      np.testing.assert_array_equal(params_d.w_hr, sd_np["weight_hr" + key].T)
      np.testing.assert_array_equal(params_d.b, sd_np["bias_ih" + key] + sd_np["bias_hh" + key])
  same = convert.from_torch(sd_np)
  assert jax.tree.structure(same) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(same), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)
  leaves = jax.tree.leaves(convert.from_torch(sd, dtype=jnp.bfloat16))
  assert len(leaves) == 16 and all(x.dtype == jnp.bfloat16 for x in leaves)


@pytest.mark.parametrize(
  "num_layers, bidirectional", ((1, False), (2, True)), ids=("1-uni", "2-bi")
)
def test_torch_round_trip(num_layers, bidirectional):
  """``to_torch(from_torch(sd))`` has the module's keys (``weight_hr_l*`` included), loads
  strictly into a differently seeded ``nn.LSTM(proj_size=P)``, which then computes the
  original module's outputs and ``(h_n, c_n)``; ``bias_hh`` is zero and ``from_torch`` of
  it gives the params back bitwise. Our stack computes the same."""
  module = _torch_module(num_layers, bidirectional, seed=5)
  sd = module.state_dict()
  params = convert.from_torch(sd)
  back = convert.to_torch(params)
  assert sorted(back) == sorted(sd)
  for name, value in back.items():
    assert value.shape == tuple(sd[name].shape), name
    if name.startswith("bias_hh"):
      np.testing.assert_array_equal(value, 0.0)
    if name.startswith("weight"):
      np.testing.assert_array_equal(value, sd[name].numpy())
  fresh = _torch_module(num_layers, bidirectional, seed=6)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in back.items()})  # strict
  xs = _xs(5)
  reference = _torch_forward(module, xs)
  seeded_6 = _torch_forward(_torch_module(num_layers, bidirectional, seed=6), xs)
  assert not np.allclose(seeded_6[0], reference[0])  # the load changes the module
  _assert_same_outputs(_torch_forward(fresh, xs), reference)
  _assert_same_outputs(_forward(params, xs), reference)
  for a, b in zip(jax.tree.leaves(convert.from_torch(back)), jax.tree.leaves(params)):
    np.testing.assert_array_equal(a, b)


def test_to_torch_single_layer():
  """One layer's params (not in a list) -> keys ``*_l0`` of a 1-layer module, loadable."""
  params = projection_lstm(H, P, forget_bias=0.5).init(jax.random.key(0), IN)
  sd = convert.to_torch(params)
  assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_hr_l0", "weight_ih_l0"]
  module = _torch_module(1, False, seed=7)
  module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  xs = _xs(6)
  _assert_same_outputs(_forward([params], xs), _torch_forward(module, xs))


def test_torch_without_bias():
  """PyTorch ``nn.LSTM(proj_size=P, bias=False)``: zero ``b [4H]``, the same outputs."""
  module = _torch_module(2, True, seed=8, bias=False)
  params = convert.from_torch(module.state_dict())
  for params_d in (params[0].forward, params[1].backward):
    assert params_d.b.shape == (4 * H,) and params_d.b.dtype == jnp.float32
    np.testing.assert_array_equal(params_d.b, 0.0)
  xs = _xs(7)
  _assert_same_outputs(_forward(params, xs), _torch_forward(module, xs))


def test_from_torch_rejects_mismatched_projection():
  """A ``weight_hr`` whose shape does not fit ``weight_hh`` raises, naming both."""
  sd = {k: v.numpy() for k, v in _torch_module(1, False).state_dict().items()}
  sd["weight_hr_l0"] = np.zeros((P + 1, H), np.float32)
  with pytest.raises(ValueError, match="weight_hr_l0"):
    convert.from_torch(sd)


# --- the cell -----------------------------------------------------------------------------


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _numpy_step(params, h, c, x, masks=(1.0,) * 4):
  """One step in float64 NumPy, straight from the equations; ``masks`` multiply ``h`` where
  it enters each gate's columns of ``w_hh``."""
  p = [np.asarray(a, np.float64) for a in params]
  w_ih, w_hh, b, w_hr = p
  pre = []
  for k, m in enumerate(masks):
    cols = slice(k * H, (k + 1) * H)
    pre.append(x @ w_ih[:, cols] + (h * m) @ w_hh[:, cols] + b[cols])
  i, f, o = _sigmoid(pre[0]), _sigmoid(pre[1]), _sigmoid(pre[3])
  g = np.tanh(pre[2])
  c = f * c + i * g
  return (o * np.tanh(c)) @ w_hr, c


def _random_params(seed, input_size=IN):
  params = projection_lstm(H, P).init(jax.random.key(seed), input_size)
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda a: a + jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), params
  )


def test_cell_protocol_and_init():
  """The Cell: ``hidden_size`` P, 4 gates, no fast path, its name; init shapes, the forget
  bias, orthogonal ``w_hr`` (orthonormal columns) and ``w_hh`` blocks (orthonormal rows);
  ``initial_carry`` gives ``h [B..., P]`` and ``c [B..., H]``; bf16 params init too."""
  cell = projection_lstm(H, P, forget_bias=2.0)
  assert (cell.hidden_size, cell.num_gates, cell.name, cell.fast) == (P, 4, "projection_lstm", None)
  params = cell.init(jax.random.key(0), IN)
  assert isinstance(params, ProjectionLSTMParams) and cell.input_size(params) == IN
  assert [a.shape for a in params] == [(IN, 4 * H), (P, 4 * H), (4 * H,), (H, P)]
  assert all(a.dtype == jnp.float32 for a in params)
  np.testing.assert_array_equal(params.b, np.repeat([0.0, 2.0, 0.0, 0.0], H))
  np.testing.assert_allclose(params.w_hr.T @ params.w_hr, np.eye(P), atol=1e-5)
  for block in jnp.split(params.w_hh, 4, axis=1):
    np.testing.assert_allclose(block @ block.T, np.eye(P), atol=1e-5)
  carry = cell.initial_carry((2, 3))
  assert isinstance(carry, recurrent.LSTMState)
  assert (carry.h.shape, carry.c.shape) == ((2, 3, P), (2, 3, H))
  carry = cell.initial_carry(2, jnp.bfloat16)
  assert (carry.h.shape, carry.c.shape, carry.c.dtype) == ((2, P), (2, H), jnp.bfloat16)
  assert cell.initial_carry().h.shape == (P,)
  bf16 = projection_lstm(H, P, param_dtype=jnp.bfloat16).init(jax.random.key(0), IN)
  assert all(a.dtype == jnp.bfloat16 for a in bf16)
  with pytest.raises(ValueError, match="proj_size"):
    projection_lstm(H, 0)


@pytest.mark.parametrize("masks", ("none", "one", "per-gate"))
def test_recur_matches_numpy_equations(masks, eager):
  """``cell.step`` and ``cell.recur`` with recurrent masks ``[B, P]`` (one shared, or one
  per gate) vs the equations in float64 NumPy; the gates are ``[B, H]``."""
  cell = projection_lstm(H, P)
  params = _random_params(1)
  rng = np.random.default_rng(1)
  x = rng.standard_normal((B, IN)).astype(np.float32)
  h = rng.standard_normal((B, P)).astype(np.float32)
  c = rng.standard_normal((B, H)).astype(np.float32)
  draw = lambda: (rng.random((B, P)) > 0.3).astype(np.float32) / 0.7  # noqa: E731
  ms = {"none": None, "one": draw(), "per-gate": tuple(draw() for _ in range(4))}[masks]
  np_masks = (1.0,) * 4 if ms is None else (ms,) * 4 if masks == "one" else ms
  want_h, want_c = _numpy_step(params, h, c, x, np_masks)

  carry = recurrent.LSTMState(jnp.asarray(h), jnp.asarray(c))
  jmask = None if ms is None else jax.tree.map(jnp.asarray, ms)
  new, out, gates = cell.recur(params, carry, cell.project(params, jnp.asarray(x)), jmask)
  np.testing.assert_allclose(new.h, want_h, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(new.c, want_c, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out, new.h)
  assert isinstance(gates, recurrent.LSTMGates) and gates.f.shape == (B, H)
  if ms is None:
    stepped, h_out = cell.step(params, carry, jnp.asarray(x))
    np.testing.assert_array_equal(h_out, out)
    np.testing.assert_array_equal(stepped.c, new.c)


def test_bfloat16_matmuls():
  """``dtype=jnp.bfloat16``: bf16 outputs, float32 carry, close to the float32 cell."""
  params = [_random_params(2)]
  xs = jnp.asarray(_xs(8))
  run = _jit(lambda cell, p, x: recurrent.stack(cell, p, x), static_argnums=0)
  (ref,), ys_ref = run(projection_lstm(H, P), params, xs)
  (carry,), ys = run(projection_lstm(H, P, dtype=jnp.bfloat16), params, xs)
  assert ys.dtype == jnp.bfloat16 and carry.h.dtype == carry.c.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(ys, np.float32), ys_ref, atol=5e-2)
  np.testing.assert_allclose(carry.c, ref.c, atol=5e-2)


# --- transformations, dropout, Flax -------------------------------------------------------


def test_jit_grad_vmap():
  """``jit`` matches eager; ``vmap`` over sequences without a batch axis matches the
  batched run; ``grad`` w.r.t. every param (``w_hr`` included) is finite and nonzero (its
  values are checked against PyTorch above), and ``remat_every=3`` gives the same."""
  cell = projection_lstm(H, P)
  params = [_random_params(3)]
  xs = jnp.asarray(_xs(9))
  lengths = jnp.array([T, 3, 5])

  def run(p, x, n, **options):
    return recurrent.stack(cell, p, x, seq_lengths=n, **options)

  carries, ys = _jit(run)(params, xs, lengths)
  with jax.disable_jit():
    eager_carries, eager_ys = run(params, xs, lengths)
  np.testing.assert_allclose(ys, eager_ys, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(carries[0].c, eager_carries[0].c, rtol=1e-6, atol=1e-6)
  v_carries, v_ys = _jit(jax.vmap(run, in_axes=(None, 0, 0)))(params, xs, lengths)
  np.testing.assert_allclose(v_ys, ys, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(v_carries[0].h, carries[0].h, rtol=1e-6, atol=1e-6)

  def loss(p, **options):
    finals, ys = run(p, xs, lengths, **options)
    return jnp.sum(ys**2) + jnp.sum(finals[0].c ** 2)

  grads, remat_grads = _jit(lambda p: (jax.grad(loss)(p), jax.grad(loss)(p, remat_every=3)))(params)
  for g in grads[0]:
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0
  _assert_tree_close(remat_grads, grads, "remat_every=3 grads", atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("per_gate_masks", (False, True), ids=("shared", "per-gate"))
def test_recurrent_dropout_masks_projected_state(per_gate_masks, eager):
  """``recurrent.stack`` with recurrent dropout (one layer) equals a hand-written loop of
  ``cell.recur`` with the masks :mod:`recurrent.dropout` draws for it: ``[B, P]`` masks on
  ``h_{t-1}`` where it enters ``w_hh``; input dropout likewise on ``x [B, I]``."""
  cell = projection_lstm(H, P)
  params = _random_params(4)
  xs = jnp.asarray(_xs(10))
  keys = recurrent.sequence_keys(jax.random.key(0), B)
  rate = 0.4
  _, ys = recurrent.stack(
    cell, [params], xs, key=keys, dropout=rate, recurrent_dropout=rate,
    per_gate_masks=per_gate_masks,
  )  # fmt: skip
  layer = recurrent.layers.layer_keys(keys, 0)
  num = 4 if per_gate_masks else 1
  pick = (lambda ms: ms) if per_gate_masks else (lambda ms: ms[0])  # noqa: E731
  draw = lambda stream, size: recurrent.dropout.masks(  # noqa: E731
    recurrent.dropout.derive(layer, stream), size, rate, num
  )
  in_masks, rec_masks = draw(recurrent.dropout.INPUT, IN), draw(recurrent.dropout.RECURRENT, P)
  assert rec_masks[0].shape == (B, P)
  carry, outs = cell.initial_carry((B,)), []
  for t in range(T):
    xp = cell.project(params, xs[:, t], pick(in_masks))
    carry, h, _ = cell.recur(params, carry, xp, pick(rec_masks))
    outs.append(h)
  np.testing.assert_allclose(ys, jnp.stack(outs, 1), rtol=1e-5, atol=1e-5)


def test_stack_with_dropout():
  """Two bidirectional layers with input and recurrent dropout under ``jit(grad)``:
  finite gradients; ``deterministic=True`` is the run without dropout; the masks change
  the outputs; ``trace`` gives ``c``/gates ``[..., H]`` and ``h [..., P]``."""
  cell = projection_lstm(H, P)
  params = recurrent.init_layers(cell, jax.random.key(5), IN, 2, bidirectional=True)
  xs = jnp.asarray(_xs(11))
  keys = recurrent.sequence_keys(jax.random.key(1), jnp.arange(B))
  options = recurrent.Options(dropout=(0.0, 0.3), recurrent_dropout=0.25)

  lengths = jnp.array([T, 2, 4])

  def loss(p):
    carries, ys = recurrent.stack(cell, p, xs, key=keys, options=options, seq_lengths=lengths)
    return jnp.sum(ys**2), (carries, ys)

  def off(p):  # dropout off by deterministic=True, and by no rates at all
    _, ys_off = recurrent.stack(
      cell, p, xs, key=keys, options=options, seq_lengths=lengths, deterministic=True
    )
    return ys_off, recurrent.stack(cell, p, xs, seq_lengths=lengths)[1]

  grads, (carries, ys) = _jit(jax.grad(loss, has_aux=True))(params)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  assert ys.shape == (B, T, 2 * P) and carries[1].backward.c.shape == (B, H)
  ys_off, ys_plain = _jit(off)(params)
  np.testing.assert_allclose(ys_off, ys_plain, rtol=1e-6, atol=1e-6)
  assert not np.allclose(ys, ys_plain)
  carries, gates = recurrent.trace(cell, params[0].forward, xs)
  assert (carries.h.shape, carries.c.shape, gates.o.shape) == ((B, T, P), (B, T, H), (B, T, H))


def test_linen_rnn(eager):
  """``recurrent.linen.RNN(cell=projection_lstm(H, P), num_layers=2, bidirectional=True)``:
  params ``[P, 4H]``/``[H, P]``, layer 1 takes ``2P`` inputs; outputs and carries equal
  :func:`recurrent.stack` on ``to_core(params, kind=ProjectionLSTMParams)`` with dropout
  off; with dropout on it runs and differs."""
  import recurrent.linen as rnn

  cell = projection_lstm(H, P)
  xs = jnp.asarray(_xs(12))
  model = rnn.RNN(cell=cell, num_layers=2, bidirectional=True, return_carry=True,
                  recurrent_dropout=0.25)  # fmt: skip
  variables = model.init(jax.random.key(0), xs, deterministic=True)
  layer_1 = variables["params"]["layer_1"]["backward"]
  assert layer_1["w_ih"].shape == (2 * P, 4 * H) and layer_1["w_hr"].shape == (H, P)
  carries, ys = model.apply(variables, xs, deterministic=True)
  core = rnn.to_core(variables["params"], kind=ProjectionLSTMParams)
  assert isinstance(core[1].forward, ProjectionLSTMParams)
  ref_carries, ref_ys = recurrent.stack(cell, core, xs)
  _assert_tree_close(ys, ref_ys, "outputs", atol=1e-6, rtol=1e-6)
  _assert_tree_close(carries, ref_carries, "carries", atol=1e-6, rtol=1e-6)
  _, dropped = model.apply(variables, xs, deterministic=False, rngs={"dropout": jax.random.key(1)})
  assert dropped.shape == (B, T, 2 * P) and not np.allclose(dropped, ys)


def test_nnx_rnn(eager):
  """``recurrent.nnx.RNN(IN, cell=projection_lstm(H, P), num_layers=2, bidirectional=True)``
  equals :func:`recurrent.stack` on ``to_core(model)`` with dropout off; PyTorch weights
  loaded with ``load_core`` give PyTorch's outputs."""
  from flax import nnx

  from recurrent import nnx as rnnx

  cell = projection_lstm(H, P)
  model = rnnx.RNN(IN, cell=cell, num_layers=2, bidirectional=True, return_carry=True,
                   rngs=nnx.Rngs(0))  # fmt: skip
  xs = _xs(13)
  carries, ys = model(jnp.asarray(xs))
  core = rnnx.to_core(model)
  assert isinstance(core[0].backward, ProjectionLSTMParams)
  ref_carries, ref_ys = recurrent.stack(cell, core, jnp.asarray(xs))
  _assert_tree_close(ys, ref_ys, "outputs", atol=1e-6, rtol=1e-6)
  _assert_tree_close(carries, ref_carries, "carries", atol=1e-6, rtol=1e-6)

  module = _torch_module(2, True, seed=9)
  rnnx.load_core(model, convert.from_torch(module.state_dict()))
  carries, ys = model(jnp.asarray(xs))
  got = np.asarray(ys), (np.asarray(_rows(carries, "h")), np.asarray(_rows(carries, "c")))
  _assert_same_outputs(got, _torch_forward(module, xs))
