"""The GRU cell (Cho et al. 2014), in its reset-after and reset-before forms.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size.

Equations, gate order ``r, z, n`` (PyTorch's order)::

    r = sigmoid(x W_ir + b_ir + h W_hr + b_hr)        reset gate
    z = sigmoid(x W_iz + b_iz + h W_hz + b_hz)        update gate
    reset-after:  n = tanh(x W_in + b_in + r * (h W_hn + b_hn))
    reset-before: n = tanh(x W_in + b_in + (r * h) W_hn + b_hn)
    h' = (1 - z) * n + z * h

Reset-after is what PyTorch ``nn.GRU``, cuDNN, Keras (``reset_after=True``, its default)
and Flax ``GRUCell`` compute. Reset-before is the form of Cho et al. 2014 and of Keras
with ``reset_after=False``; only the NumPy reference in the tests checks it.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import cell as _cell
from recurrent import options as _options

Array = jax.Array


class GRUParams(NamedTuple):
  """Fused GRU weights, gates in order ``r, z, n``.

  Attributes:
    w_ih: ``[I, 3H]`` input weights.
    w_hh: ``[H, 3H]`` recurrent weights.
    b_ih: ``[3H]`` input bias.
    b_hh: ``[3H]`` recurrent bias; its ``n`` third ``b_hn`` sits inside ``r * (...)`` in
      the reset-after form, which is why the two biases are kept apart.
  """

  w_ih: Array
  w_hh: Array
  b_ih: Array
  b_hh: Array


class ResetBeforeGRUParams(NamedTuple):
  """The reset-before GRU's weights (``gru(H, reset_after=False)``), laid out as
  :class:`GRUParams`; ``b_hn`` adds to ``b_in`` here.

  A type of its own because the same arrays compute another function in the reset-after
  form: PyTorch's or Flax's GRU weights (:class:`GRUParams`) given to a reset-before cell
  are refused by ``recurrent.scan``, ``stack`` and ``trace`` (and the Flax layers built on
  them) instead of running; ``cell.step`` itself does not check its params. Reset-before
  weights that are :class:`GRUParams` convert with ``ResetBeforeGRUParams(*params)``.

  Attributes:
    w_ih: ``[I, 3H]`` input weights.
    w_hh: ``[H, 3H]`` recurrent weights.
    b_ih: ``[3H]`` input bias.
    b_hh: ``[3H]`` recurrent bias.
  """

  w_ih: Array
  w_hh: Array
  b_ih: Array
  b_hh: Array


_checks.MISMATCH_HINTS["GRUParams", "ResetBeforeGRUParams"] = (
  "GRUParams are reset-after weights (PyTorch's, Flax's, recurrent.gru(H)'s), which a"
  " reset-before GRU would run as another function: use recurrent.gru(H) for them, or"
  " recurrent.ResetBeforeGRUParams(*params) for reset-before weights"
)


class GRUState(NamedTuple):
  """GRU carry: the hidden state ``h [..., H]``."""

  h: Array


class GRUGates(NamedTuple):
  """Gate activations of one step, each ``[..., H]``: reset, update, candidate."""

  r: Array
  z: Array
  n: Array


def gru(
  hidden_size: int,
  *,
  reset_after: bool = True,
  kernel_init=jax.nn.initializers.glorot_uniform(),
  recurrent_init=jax.nn.initializers.orthogonal(),
  dtype=None,
  param_dtype=jnp.float32,
) -> _cell.Cell:
  """A GRU cell as pure functions.

  Args:
    hidden_size: H.
    reset_after: True (default) for the reset-after form of PyTorch, cuDNN, Keras and
      Flax; False for the reset-before form of Cho et al. 2014.
    kernel_init: initialiser of ``w_ih [I, 3H]``; Glorot uniform by default (Keras).
    recurrent_init: initialiser of each gate's ``[H, H]`` block of ``w_hh``; orthogonal.
      Biases start at zero.
    dtype: matmul operand dtype (e.g. ``jnp.bfloat16``); gate math and the carry stay in
      ``param_dtype``, outputs are cast to ``dtype`` when it is given.
    param_dtype: dtype of the params and of the carry.

  Returns:
    A :class:`recurrent.Cell`; params are :class:`GRUParams` (reset-after) or
    :class:`ResetBeforeGRUParams`, the carry a :class:`GRUState`, the gates
    :class:`GRUGates`.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.gru(8, reset_after=False)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry, h = cell.step(params, cell.initial_carry(), jnp.ones((3,)))
    >>> h.shape
    (8,)
  """
  hs = _checks.size("hidden_size", hidden_size)
  _options.check_flag("reset_after", reset_after)

  kind = GRUParams if reset_after else ResetBeforeGRUParams

  def init(key, input_size: int) -> GRUParams | ResetBeforeGRUParams:
    k_ih, k_hh = jax.random.split(key)
    return kind(
      w_ih=kernel_init(k_ih, (input_size, 3 * hs), param_dtype),
      w_hh=_cell.orthogonal_blocks(recurrent_init, k_hh, hs, 3, param_dtype),
      b_ih=jnp.zeros((3 * hs,), param_dtype),
      b_hh=jnp.zeros((3 * hs,), param_dtype),
    )

  def initial_carry(batch_shape=(), dtype=None) -> GRUState:
    return GRUState(*_cell.zeros_carry(1, hs, batch_shape, dtype or param_dtype))

  def project(params: GRUParams, x, mask=None) -> tuple:
    return _cell.project_gates(x, params.w_ih, mask, 3, dtype)

  def pointwise_params(params: GRUParams) -> tuple:
    """The biases ``(b_ih, b_hh)``, split and added inside the step, where the slices fuse
    into the gate math: split outside, each would be one more XLA:CPU kernel to compile."""
    return params.b_ih, params.b_hh

  def step_biases(biases) -> tuple:
    """``(b_ih, b_hh) -> (b_ir + b_hr, b_iz + b_hz, b_in, b_hn)``."""
    (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = (jnp.split(b, 3) for b in biases)
    return b_ir + b_hr, b_iz + b_hz, b_in, b_hn

  def output(carry: GRUState, r, z, n):
    new_h = (1.0 - z) * n + z * carry.h
    out = new_h if dtype is None else new_h.astype(dtype)
    return GRUState(new_h), out, GRUGates(r, z, n)

  def pointwise(biases, carry: GRUState, xp, hh):
    """Reset-after: everything after ``hh = h @ w_hh``."""
    (x_r, x_z, x_n), (hh_r, hh_z, hh_n) = xp, hh
    b_r, b_z, b_in, b_hn = step_biases(biases)
    # (x + hh) + b: see the LSTM's pointwise.
    r = jax.nn.sigmoid(_cell.add_bias(x_r + hh_r, b_r))
    z = jax.nn.sigmoid(_cell.add_bias(x_z + hh_z, b_z))
    n = jnp.tanh(_cell.add_bias(x_n, b_in) + r * _cell.add_bias(hh_n, b_hn))
    return output(carry, r, z, n)

  def recur(params: GRUParams, carry: GRUState, xp, mask=None):
    h = carry.h
    if reset_after:
      hh = _cell.masked_gate_dot(h, params.w_hh, mask, 3, dtype)
      return pointwise(pointwise_params(params), carry, xp, hh)
    x_r, x_z, x_n = xp
    b_r, b_z, b_in, b_hn = step_biases(pointwise_params(params))
    w_hr, w_hz, w_hn = _cell.gate_columns(params.w_hh, 3)
    masks = mask if isinstance(mask, (tuple, list)) else (mask,) * 3
    h_r, h_z, h_n = (h if m is None else h * m.astype(h.dtype) for m in masks)
    if isinstance(mask, (tuple, list)):
      hh_r, hh_z = _cell.dot(h_r, w_hr, dtype), _cell.dot(h_z, w_hz, dtype)
    else:
      hh_r, hh_z = _cell.gate_split(_cell.dot(h_r, params.w_hh[:, : 2 * hs], dtype), 2)
    r = jax.nn.sigmoid(_cell.add_bias(x_r + hh_r, b_r))
    z = jax.nn.sigmoid(_cell.add_bias(x_z + hh_z, b_z))
    n = jnp.tanh(_cell.add_bias(x_n, b_in + b_hn) + _cell.dot(r * h_n, w_hn, dtype))
    return output(carry, r, z, n)

  fast = None
  if reset_after:  # reset-before multiplies h by r before its matmul: not that shape
    fast = _cell.FastPath(
      pointwise,
      pointwise_params,
      input_weights=lambda params: params.w_ih,
      recurrent_weights=lambda params: params.w_hh,
    )
  return _cell.Cell(
    init,
    initial_carry,
    project,
    recur,
    _cell.step_of(project, recur),
    hs,
    3,
    input_size=lambda params: params.w_ih.shape[0],
    name="gru",
    fast=fast,
    dtype=dtype,
  )
