"""The LSTM cell (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000).

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size.

Equations, gate order ``i, f, g, o`` (PyTorch's and Flax's order)::

    i = sigmoid(x W_i + h W_hi + b_i)      input gate
    f = sigmoid(x W_f + h W_hf + b_f)      forget gate
    g = tanh(x W_g + h W_hg + b_g)         candidate
    o = sigmoid(x W_o + h W_ho + b_o)      output gate
    c' = f * c + i * g
    h' = o * tanh(c')
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import cell as _cell

Array = jax.Array


class LSTMParams(NamedTuple):
  """Fused LSTM weights, gates in order ``i, f, g, o``.

  Attributes:
    w_ih: ``[I, 4H]`` input weights.
    w_hh: ``[H, 4H]`` recurrent weights.
    b: ``[4H]`` bias (PyTorch's ``bias_ih + bias_hh``).
  """

  w_ih: Array
  w_hh: Array
  b: Array


class LSTMState(NamedTuple):
  """LSTM carry: hidden state ``h [..., H]`` and cell state ``c [..., H]``."""

  h: Array
  c: Array


class LSTMGates(NamedTuple):
  """Gate activations of one step, each ``[..., H]``."""

  i: Array
  f: Array
  g: Array
  o: Array


def lstm(
  hidden_size: int,
  *,
  forget_bias: float = 1.0,
  kernel_init=jax.nn.initializers.glorot_uniform(),
  recurrent_init=jax.nn.initializers.orthogonal(),
  dtype=None,
  param_dtype=jnp.float32,
) -> _cell.Cell:
  """An LSTM cell as pure functions.

  Args:
    hidden_size: H.
    forget_bias: initial value of the forget-gate bias ``b_f``; the other biases start at
      zero. The default 1.0 follows Jozefowicz et al. 2015 (and Keras'
      ``unit_forget_bias``): the cell remembers by default early in training. PyTorch
      and Flax start at 0; pass ``forget_bias=0.0`` to match them.
    kernel_init: initialiser of ``w_ih [I, 4H]``; Glorot uniform by default (Keras' choice;
      fan-in I, fan-out 4H).
    recurrent_init: initialiser of each gate's ``[H, H]`` block of ``w_hh``; orthogonal by
      default (Saxe et al. 2014), so repeated products with ``w_hh`` neither explode nor
      vanish at initialisation.
    dtype: the matmul operand dtype, e.g. ``jnp.bfloat16`` (accumulation, gate math and
      the carry stay in ``param_dtype``); None uses ``param_dtype``. Outputs ``h`` are
      cast to ``dtype`` when it is given.
    param_dtype: dtype of the params and of the carry.

  Returns:
    A :class:`recurrent.Cell`; params are :class:`LSTMParams`, the carry an
    :class:`LSTMState`, the gates :class:`LSTMGates`.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.lstm(8)
    >>> params = cell.init(jax.random.key(0), 3)
    >>> carry, h = cell.step(params, cell.initial_carry((2,)), jnp.ones((2, 3)))
    >>> h.shape, carry.c.shape
    ((2, 8), (2, 8))
  """
  hs = _checks.size("hidden_size", hidden_size)

  def init(key, input_size: int) -> LSTMParams:
    k_ih, k_hh = jax.random.split(key)
    b = jnp.zeros((4 * hs,), param_dtype).at[hs : 2 * hs].set(forget_bias)
    return LSTMParams(
      w_ih=kernel_init(k_ih, (input_size, 4 * hs), param_dtype),
      w_hh=_cell.orthogonal_blocks(recurrent_init, k_hh, hs, 4, param_dtype),
      b=b,
    )

  def initial_carry(batch_shape=(), dtype=None) -> LSTMState:
    return LSTMState(*_cell.zeros_carry(2, hs, batch_shape, dtype or param_dtype))

  def project(params: LSTMParams, x, mask=None) -> tuple:
    return _cell.project_gates(x, params.w_ih, mask, 4, dtype)

  def pointwise(b, carry: LSTMState, xp, hh):
    # (x + r) + b, in that order: the fused backward pass sees that x and r only meet
    # in that sum and stores one gradient for both (recurrent/fused.py).
    i, f, g, o = (_cell.add_bias(x + r, bg) for x, r, bg in zip(xp, hh, jnp.split(b, 4)))
    gates = LSTMGates(jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o))
    c = gates.f * carry.c + gates.i * gates.g
    h = gates.o * jnp.tanh(c)
    out = h if dtype is None else h.astype(dtype)
    return LSTMState(h, c), out, gates

  def recur(params: LSTMParams, carry: LSTMState, xp, mask=None):
    hh = _cell.masked_gate_dot(carry.h, params.w_hh, mask, 4, dtype)
    return pointwise(params.b, carry, xp, hh)

  fast = _cell.FastPath(
    pointwise,
    pointwise_params=lambda params: params.b,
    input_weights=lambda params: params.w_ih,
    recurrent_weights=lambda params: params.w_hh,
    sums_only=True,  # every gate reads x + r only
    h_host="c",  # pointwise reads c, never h
  )
  return _cell.Cell(
    init,
    initial_carry,
    project,
    recur,
    _cell.step_of(project, recur),
    hs,
    4,
    input_size=lambda params: params.w_ih.shape[0],
    name="lstm",
    fast=fast,
    dtype=dtype,
  )
