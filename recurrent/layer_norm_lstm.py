"""The layer-normalised LSTM cell (Ba, Kiros & Hinton 2016, "Layer Normalization",
arXiv:1607.06450).

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size.

Equations, gate order ``i, f, g, o`` (as :func:`recurrent.lstm`), for each gate ``k``::

    a_k = LN(x W_k; gamma_x_k, beta_x_k) + LN(h W_hk; gamma_h_k, beta_h_k) + b_k
    i = sigmoid(a_i)   f = sigmoid(a_f)   g = tanh(a_g)   o = sigmoid(a_o)
    c' = f * c + i * g
    h' = o * tanh(LN(c'; gamma_c, beta_c))

with ``LN(v; gamma, beta) = gamma * (v - mean(v)) / sqrt(var(v) + eps) + beta``, the mean
and the (biased) variance taken over the last axis, the H units of one gate (or of ``c'``).

Each gate's H pre-activations are normalised on their own, where the paper's equation
applies one LN to the stacked 4H vector (TensorFlow's ``LayerNormBasicLSTMCell`` also
normalises per gate, but ``x W + h W_h`` together). Per gate, no gate's scale can swamp
another's statistics, and a gate's LN is invariant to rescaling that gate's columns of
``W`` alone.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import cell as _cell
from recurrent.lstm import LSTMGates, LSTMState

Array = jax.Array


class LayerNormLSTMParams(NamedTuple):
  """Layer-normalised LSTM params, gates in order ``i, f, g, o``.

  ``beta_x``, ``beta_h`` and ``b`` only ever enter the pre-activations as their sum
  ``beta_x + beta_h + b``: two of the three are redundant (their gradients are equal). They
  are kept to match the paper's parameterisation (a shift per LN, and a bias); the
  function depends on the sum only. ``beta_c`` is not redundant (it sits inside the tanh).

  Attributes:
    w_ih: ``[I, 4H]`` input weights.
    w_hh: ``[H, 4H]`` recurrent weights.
    b: ``[4H]`` bias; the forget block starts at ``forget_bias``, the others at 0.
    gamma_x: ``[4H]`` gain of each gate's LN of ``x W`` (ones).
    beta_x: ``[4H]`` shift of each gate's LN of ``x W`` (zeros).
    gamma_h: ``[4H]`` gain of each gate's LN of ``h W_h`` (ones).
    beta_h: ``[4H]`` shift of each gate's LN of ``h W_h`` (zeros).
    gamma_c: ``[H]`` gain of the LN of the cell state (ones).
    beta_c: ``[H]`` shift of the LN of the cell state (zeros).
  """

  w_ih: Array
  w_hh: Array
  b: Array
  gamma_x: Array
  beta_x: Array
  gamma_h: Array
  beta_h: Array
  gamma_c: Array
  beta_c: Array


def _vector(v: Array, ndim: int) -> Array:
  """``v [N] -> [1, ..., N]`` of rank ``ndim`` (explicit broadcasting under strict rank
  promotion)."""
  return jnp.reshape(v, (1,) * (ndim - 1) + (-1,))


def layer_norm(v: Array, gamma: Array, beta: Array, eps: float) -> Array:
  """``gamma * (v - mean(v)) / sqrt(var(v) + eps) + beta`` over the last axis of
  ``v [..., N]``; ``gamma, beta [N]``."""
  mean = jnp.mean(v, axis=-1, keepdims=True)
  centred = v - mean
  var = jnp.mean(centred * centred, axis=-1, keepdims=True)
  normed = centred * jax.lax.rsqrt(var + eps)
  return normed * _vector(gamma, v.ndim) + _vector(beta, v.ndim)


def _gate_norms(ys: tuple, gamma: Array, beta: Array, eps: float) -> tuple:
  """Each gate's ``[..., H]`` block normalised with its own slice of ``gamma, beta [4H]``."""
  return tuple(
    layer_norm(y, g, b, eps) for y, g, b in zip(ys, jnp.split(gamma, 4), jnp.split(beta, 4))
  )


def layer_norm_lstm(
  hidden_size: int,
  *,
  eps: float = 1e-5,
  forget_bias: float = 1.0,
  kernel_init=jax.nn.initializers.glorot_uniform(),
  recurrent_init=jax.nn.initializers.orthogonal(),
  dtype=None,
  param_dtype=jnp.float32,
) -> _cell.Cell:
  """A layer-normalised LSTM cell as pure functions (see the module docstring).

  ``project`` returns the normalised input pre-activations ``LN(x W_k)``, so the driver
  still hoists the input half (matmul and LN) out of the time loop; ``recur`` does the
  recurrent matmul, its LN, the gate math and the LN of the cell state. The cell declares
  no :class:`recurrent.cell.FastPath` (its projection is not a plain matmul):
  :func:`recurrent.scan` differentiates it with plain autodiff of ``lax.scan``.

  Args:
    hidden_size: H.
    eps: added to each variance before the square root.
    forget_bias: initial value of the forget-gate bias ``b_f``; the other biases start at
      zero (see :func:`recurrent.lstm`).
    kernel_init: initialiser of ``w_ih [I, 4H]``; Glorot uniform by default.
    recurrent_init: initialiser of each gate's ``[H, H]`` block of ``w_hh``; orthogonal.
    dtype: the matmul operand dtype, e.g. ``jnp.bfloat16`` (accumulation, the LNs, the
      gate math and the carry stay in ``param_dtype``); None uses ``param_dtype``. Outputs
      ``h`` are cast to ``dtype`` when it is given.
    param_dtype: dtype of the params and of the carry.

  Returns:
    A :class:`recurrent.Cell`; params are :class:`LayerNormLSTMParams`, the carry a
    :class:`recurrent.LSTMState`, the gates :class:`recurrent.LSTMGates`.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.layer_norm_lstm(8)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry, h = cell.step(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
    >>> h.shape, carry.c.shape, params.gamma_c.shape
    ((2, 8), (2, 8), (8,))
    >>> _, ys = recurrent.scan(cell, params, jnp.ones((2, 5, 3)))
    >>> ys.shape
    (2, 5, 8)
  """
  hs = _checks.size("hidden_size", hidden_size)

  def init(key, input_size: int) -> LayerNormLSTMParams:
    k_ih, k_hh = jax.random.split(key)
    ones, zeros = jnp.ones((4 * hs,), param_dtype), jnp.zeros((4 * hs,), param_dtype)
    return LayerNormLSTMParams(
      w_ih=kernel_init(k_ih, (input_size, 4 * hs), param_dtype),
      w_hh=_cell.orthogonal_blocks(recurrent_init, k_hh, hs, 4, param_dtype),
      b=zeros.at[hs : 2 * hs].set(forget_bias),
      gamma_x=ones,
      beta_x=zeros,
      gamma_h=ones,
      beta_h=zeros,
      gamma_c=jnp.ones((hs,), param_dtype),
      beta_c=jnp.zeros((hs,), param_dtype),
    )

  def initial_carry(batch_shape=(), dtype=None) -> LSTMState:
    return LSTMState(*_cell.zeros_carry(2, hs, batch_shape, dtype or param_dtype))

  def project(params: LayerNormLSTMParams, x, mask=None) -> tuple:
    xw = _cell.project_gates(x, params.w_ih, mask, 4, dtype)
    return _gate_norms(xw, params.gamma_x, params.beta_x, eps)

  def recur(params: LayerNormLSTMParams, carry: LSTMState, xp, mask=None):
    hw = _cell.masked_gate_dot(carry.h, params.w_hh, mask, 4, dtype)
    hh = _gate_norms(hw, params.gamma_h, params.beta_h, eps)
    i, f, g, o = (_cell.add_bias(x + r, bg) for x, r, bg in zip(xp, hh, jnp.split(params.b, 4)))
    gates = LSTMGates(jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o))
    c = gates.f * carry.c + gates.i * gates.g
    h = gates.o * jnp.tanh(layer_norm(c, params.gamma_c, params.beta_c, eps))
    out = h if dtype is None else h.astype(dtype)
    return LSTMState(h, c), out, gates

  return _cell.Cell(
    init,
    initial_carry,
    project,
    recur,
    _cell.step_of(project, recur),
    hs,
    4,
    input_size=lambda params: params.w_ih.shape[0],
    name="layer_norm_lstm",
    fast=None,  # the projection is matmul + LN, not the plain matmul FastPath promises
    dtype=dtype,
  )
