"""Parity with PyTorch ``nn.LSTM``/``nn.GRU``, the independent reference of every test here.

Weights go from a torch module to ours with :func:`recurrent.convert.from_torch`; both sides
then compute the same scalar loss (outputs and final carries against fixed random weights)
and its gradients with respect to every parameter, the inputs and the initial carries.
float32 throughout; each case is jitted once.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import recurrent

# float32 on both sides. The largest difference seen is about 5e-6, in bias gradients of
# magnitude ~18 (sums over B*T terms, where float32 resolves ~2e-6); rtol adds headroom there.
ATOL, RTOL = 1e-5, 1e-5

# Compiling a case (forward and backward scans of every layer and direction) dominates this
# file's runtime; LLVM's -O0 cuts it by about a third. It changes how XLA's kernels are
# optimised, not which operations run (XLA CPU does not use fast-math), and runs are tiny.
_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


KINDS = ("lstm", "gru")
# (B, T, I, H)
SHAPES = ((1, 1, 1, 1), (3, 7, 5, 4), (4, 20, 16, 32), (2, 50, 8, 16))


def _shape_id(shape) -> str:
  return "B{}-T{}-I{}-H{}".format(*shape)


def _fields(kind: str) -> tuple:
  """The carry fields, in the order torch returns them: ``(h_n, c_n)`` or ``h_n``."""
  return ("h", "c") if kind == "lstm" else ("h",)


def _torch_module(kind, input_size, hidden_size, num_layers, bidirectional, *, seed=0, **kw):
  """A PyTorch module with its default init, seeded: the reference network."""
  torch.manual_seed(seed)
  cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
  kw.setdefault("batch_first", True)
  return cls(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional, **kw)


def _cell(kind: str, hidden_size: int):
  return recurrent.lstm(hidden_size) if kind == "lstm" else recurrent.gru(hidden_size)


def _stack_carries(carries, field: str):
  """Our list of per-layer carries -> PyTorch's ``[L*D, B, H]`` layout (index ``l*D + d``)."""
  rows = []
  for carry in carries:
    directions = (
      (carry.forward, carry.backward) if isinstance(carry, recurrent.Bidirectional) else (carry,)
    )
    rows.extend(getattr(d, field) for d in directions)
  return jnp.stack(rows)


def _unstack_carries(kind, finals, num_layers, bidirectional) -> list:
  """PyTorch's ``(h0[, c0])``, each ``[L*D, B, H]`` -> our list of per-layer carries."""

  def state(i):
    leaves = [jnp.asarray(f[i]) for f in finals]
    return recurrent.LSTMState(*leaves) if kind == "lstm" else recurrent.GRUState(*leaves)

  if bidirectional:
    return [recurrent.Bidirectional(state(2 * i), state(2 * i + 1)) for i in range(num_layers)]
  return [state(i) for i in range(num_layers)]


def _loss_weights(rng, kind, batch, steps, hidden, num_layers, bidirectional, time_major=False):
  """Fixed random weights: ``loss = sum(ys * w_y) + sum(h_n * w_h) [+ sum(c_n * w_c)]``."""
  d = 2 if bidirectional else 1
  ys_shape = (steps, batch, d * hidden) if time_major else (batch, steps, d * hidden)
  w_y = rng.standard_normal(ys_shape).astype(np.float32)
  w_finals = [
    rng.standard_normal((num_layers * d, batch, hidden)).astype(np.float32) for _ in _fields(kind)
  ]
  return w_y, w_finals


def _run_torch(module, kind, xs, weights, *, initial=None, lengths=None, batch_first=True):
  """Loss, outputs, final carries and gradients of the PyTorch reference."""
  w_y, w_finals = weights
  xs_t = torch.tensor(xs, requires_grad=True)
  hx = None if initial is None else [torch.tensor(a, requires_grad=True) for a in initial]
  inputs = xs_t
  if lengths is not None:
    inputs = pack_padded_sequence(
      xs_t, torch.tensor(lengths), batch_first=batch_first, enforce_sorted=False
    )
  module.zero_grad()
  out, state = module(inputs, None if hx is None else (tuple(hx) if kind == "lstm" else hx[0]))
  if lengths is not None:
    out, _ = pad_packed_sequence(out, batch_first=batch_first, total_length=xs.shape[1])
  finals = state if kind == "lstm" else (state,)
  loss = (out * torch.from_numpy(w_y)).sum()
  for f, w in zip(finals, w_finals):
    loss = loss + (f * torch.from_numpy(w)).sum()
  loss.backward()
  return dict(
    loss=loss.item(),
    ys=out.detach().numpy(),
    finals=[f.detach().numpy() for f in finals],
    grads={name: p.grad.numpy().copy() for name, p in module.named_parameters()},
    d_xs=xs_t.grad.numpy(),
    d_initial=None if hx is None else [h.grad.numpy() for h in hx],
  )


def _expected_param_grads(kind: str, torch_grads: dict) -> list:
  """PyTorch's parameter gradients in our layout.

  Weights: ``from_torch`` of the gradient dict transposes them exactly as it does the
  weights. LSTM bias: ``from_torch`` sums ``bias_ih + bias_hh`` into our ``b``; since ``b``
  stands where each of them stands, ``dL/db = dL/dbias_ih = dL/dbias_hh`` (not their sum),
  so ``b``'s expected gradient is ``bias_ih.grad`` alone, set explicitly below.
  """
  expected = recurrent.convert.from_torch(torch_grads)
  if kind == "gru":
    return expected
  for name in torch_grads:
    if name.startswith("bias_ih"):
      np.testing.assert_allclose(
        torch_grads[name], torch_grads[name.replace("bias_ih", "bias_hh")], rtol=0, atol=1e-6
      )

  def with_bias(params, suffix):
    return params._replace(b=jnp.asarray(torch_grads["bias_ih" + suffix]))

  out = []
  for layer, params in enumerate(expected):
    if isinstance(params, recurrent.Bidirectional):
      out.append(
        recurrent.Bidirectional(
          with_bias(params.forward, f"_l{layer}"),
          with_bias(params.backward, f"_l{layer}_reverse"),
        )
      )
    else:
      out.append(with_bias(params, f"_l{layer}"))
  return out


def _ours(kind, hidden_size, *, time_major=False):
  """Our loss as ``jit(value_and_grad)`` over ``(params, xs, initial_carry)``."""
  cell = _cell(kind, hidden_size)

  def loss_fn(params, xs, initial_carry, seq_lengths, weights):
    w_y, w_finals = weights
    carries, ys = recurrent.stack(
      cell,
      params,
      xs,
      initial_carry=initial_carry,
      seq_lengths=seq_lengths,
      time_major=time_major,
    )
    finals = [_stack_carries(carries, field) for field in _fields(kind)]
    loss = jnp.sum(ys * w_y)
    for f, w in zip(finals, w_finals):
      loss = loss + jnp.sum(f * w)
    return loss, (ys, finals)

  grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1, 2), has_aux=True)
  return jax.jit(grad_fn, compiler_options=_COMPILER_OPTIONS)


def _assert_tree_close(actual, expected, what: str, atol=ATOL, rtol=RTOL):
  actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
  expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
  assert actual_tree == expected_tree, f"{what}: {actual_tree} != {expected_tree}"
  for (path, a), (_, e) in zip(actual_leaves, expected_leaves):
    np.testing.assert_allclose(
      np.asarray(a),
      np.asarray(e),
      rtol=rtol,
      atol=atol,
      err_msg=f"{what}{jax.tree_util.keystr(path)}",
    )


def _compare(kind, ours, reference, *, check_initial=False):
  """Loss, outputs, final carries and all gradients: ours vs PyTorch's."""
  (loss, (ys, finals)), (d_params, d_xs, d_initial) = ours
  np.testing.assert_allclose(float(loss), reference["loss"], rtol=RTOL, atol=1e-4)
  _assert_tree_close(ys, reference["ys"], "outputs")
  for field, got, want in zip(_fields(kind), finals, reference["finals"]):
    _assert_tree_close(got, want, f"final {field}")
  _assert_tree_close(d_params, _expected_param_grads(kind, reference["grads"]), "d params")
  _assert_tree_close(d_xs, reference["d_xs"], "d xs")
  if check_initial:
    got = [_stack_carries(d_initial, field) for field in _fields(kind)]
    for field, g, want in zip(_fields(kind), got, reference["d_initial"]):
      _assert_tree_close(g, want, f"d initial {field}")


def _check_stack(kind, num_layers, bidirectional, shape):
  batch, steps, inputs, hidden = shape
  module = _torch_module(kind, inputs, hidden, num_layers, bidirectional)
  rng = np.random.default_rng(0)
  xs = rng.standard_normal((batch, steps, inputs)).astype(np.float32)
  weights = _loss_weights(rng, kind, batch, steps, hidden, num_layers, bidirectional)
  reference = _run_torch(module, kind, xs, weights)

  params = recurrent.convert.from_torch(module.state_dict())
  ours = _ours(kind, hidden)(params, jnp.asarray(xs), None, None, weights)
  _compare(kind, ours, reference)


# Compiling a case costs one to two seconds of CPU, so the full product of options runs at
# one shape, and the other shapes run with 2 bidirectional layers (whose forward halves are
# the unidirectional computation).
@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
@pytest.mark.parametrize("num_layers", (1, 2, 3))
@pytest.mark.parametrize("kind", KINDS)
def test_stack_matches_torch(kind, num_layers, bidirectional):
  """PyTorch ``nn.LSTM``/``nn.GRU(batch_first=True)``: outputs, ``h_n``/``c_n`` and the
  gradients of a scalar loss w.r.t. every parameter and the inputs, from zero carries;
  cell x layers x directions at ``(B, T, I, H) = (3, 7, 5, 4)``."""
  _check_stack(kind, num_layers, bidirectional, SHAPES[1])


@pytest.mark.parametrize("shape", SHAPES[:1] + SHAPES[2:], ids=_shape_id)
@pytest.mark.parametrize("kind", KINDS)
def test_shapes_match_torch(kind, shape):
  """PyTorch, as :func:`test_stack_matches_torch`, for the other ``(B, T, I, H)``: a
  single unit and step, a wider layer, a longer sequence; 2 bidirectional layers."""
  _check_stack(kind, 2, True, shape)


@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
@pytest.mark.parametrize("kind", KINDS)
def test_initial_carry_matches_torch(kind, bidirectional):
  """PyTorch with a nonzero ``(h0, c0)``/``h0``: outputs, final carries and the gradients,
  including those w.r.t. the initial carries."""
  batch, steps, inputs, hidden, num_layers = 3, 9, 5, 6, 2
  d = 2 if bidirectional else 1
  module = _torch_module(kind, inputs, hidden, num_layers, bidirectional, seed=1)
  rng = np.random.default_rng(1)
  xs = rng.standard_normal((batch, steps, inputs)).astype(np.float32)
  initial = [
    rng.standard_normal((num_layers * d, batch, hidden)).astype(np.float32) for _ in _fields(kind)
  ]
  weights = _loss_weights(rng, kind, batch, steps, hidden, num_layers, bidirectional)
  reference = _run_torch(module, kind, xs, weights, initial=initial)

  params = recurrent.convert.from_torch(module.state_dict())
  carries = _unstack_carries(kind, initial, num_layers, bidirectional)
  ours = _ours(kind, hidden)(params, jnp.asarray(xs), carries, None, weights)
  _compare(kind, ours, reference, check_initial=True)


@pytest.mark.parametrize("bidirectional", (False, True), ids=("uni", "bi"))
@pytest.mark.parametrize("kind", KINDS)
def test_seq_lengths_match_torch_packed(kind, bidirectional):
  """PyTorch ``pack_padded_sequence(enforce_sorted=False)`` vs our ``seq_lengths``, 2 layers.

  Valid outputs equal; padded outputs are zero on both sides (``pad_packed_sequence``
  fills zeros); ``h_n``/``c_n`` are each sequence's state at its own last step (and, for
  the reverse direction, after running back to step 0); gradients equal.
  """
  batch, steps, inputs, hidden, num_layers = 5, 11, 4, 6, 2
  lengths = np.array([7, 11, 1, 4, 10], np.int32)  # unsorted, with a full and a length-1 one
  module = _torch_module(kind, inputs, hidden, num_layers, bidirectional, seed=2)
  rng = np.random.default_rng(2)
  xs = rng.standard_normal((batch, steps, inputs)).astype(np.float32)
  # Nonzero padding: it must be ignored, not merely multiplied by zero-valued inputs.
  weights = _loss_weights(rng, kind, batch, steps, hidden, num_layers, bidirectional)
  reference = _run_torch(module, kind, xs, weights, lengths=lengths)

  params = recurrent.convert.from_torch(module.state_dict())
  ours = _ours(kind, hidden)(params, jnp.asarray(xs), None, jnp.asarray(lengths), weights)
  _compare(kind, ours, reference)

  ys = np.asarray(ours[0][1][0])
  padding = np.arange(steps)[None, :] >= lengths[:, None]
  assert padding.sum() > 0
  np.testing.assert_array_equal(ys[padding], 0.0)
  np.testing.assert_array_equal(reference["ys"][padding], 0.0)
  # Padded inputs get no gradient on either side.
  d_xs = np.asarray(ours[1][1])
  np.testing.assert_array_equal(d_xs[padding], 0.0)
  assert np.abs(d_xs[~padding]).min() > 0.0


@pytest.mark.parametrize("kind", KINDS)
def test_time_major_matches_torch_batch_first_false(kind):
  """PyTorch ``batch_first=False`` (``[T, B, I]``) vs our ``time_major=True``; 2
  bidirectional layers, so both scan directions and the layer hand-off are time-major."""
  batch, steps, inputs, hidden, num_layers, bidirectional = 3, 8, 5, 4, 2, True
  module = _torch_module(kind, inputs, hidden, num_layers, bidirectional, seed=3, batch_first=False)
  rng = np.random.default_rng(3)
  xs = rng.standard_normal((steps, batch, inputs)).astype(np.float32)
  weights = _loss_weights(
    rng, kind, batch, steps, hidden, num_layers, bidirectional, time_major=True
  )
  reference = _run_torch(module, kind, xs, weights, batch_first=False)

  params = recurrent.convert.from_torch(module.state_dict())
  ours = _ours(kind, hidden, time_major=True)(params, jnp.asarray(xs), None, None, weights)
  _compare(kind, ours, reference)
  assert ours[0][1][0].shape == (steps, batch, (2 if bidirectional else 1) * hidden)
