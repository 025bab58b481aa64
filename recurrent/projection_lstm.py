"""The LSTM with a recurrent projection layer (LSTMP, Sak et al. 2014).

Shape legend: B batch (any leading dims, or none), T time, I input size, H cell size
(hidden size), P projection size (the size of the outputs and of the recurrent state).

Equations, gate order ``i, f, g, o`` (PyTorch's ``nn.LSTM(proj_size=P)``)::

    i = sigmoid(x W_i + h W_hi + b_i)      input gate          [..., H]
    f = sigmoid(x W_f + h W_hf + b_f)      forget gate         [..., H]
    g = tanh(x W_g + h W_hg + b_g)         candidate           [..., H]
    o = sigmoid(x W_o + h W_ho + b_o)      output gate         [..., H]
    c' = f * c + i * g                                         [..., H]
    h' = (o * tanh(c')) W_hr                                   [..., P]

``h`` is ``P`` wide, so the recurrent weights are ``[P, 4H]`` rather than ``[H, 4H]``: with
``P < H`` the recurrent matmul and the layer's output shrink by ``H / P`` while the cell
state keeps ``H`` units. Reference: H. Sak, A. Senior, F. Beaufays, "Long Short-Term Memory
Recurrent Neural Network Architectures for Large Scale Acoustic Modeling", Interspeech
2014 (arXiv 1402.1128); this is their LSTMP without peepholes, as in PyTorch.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import cell as _cell
from recurrent.lstm import LSTMGates, LSTMState

Array = jax.Array


class ProjectionLSTMParams(NamedTuple):
  """Projection-LSTM weights, gates in order ``i, f, g, o``.

  Attributes:
    w_ih: ``[I, 4H]`` input weights.
    w_hh: ``[P, 4H]`` recurrent weights (they multiply the projected ``h``).
    b: ``[4H]`` bias (PyTorch's ``bias_ih + bias_hh``).
    w_hr: ``[H, P]`` projection (PyTorch's ``weight_hr`` transposed).
  """

  w_ih: Array
  w_hh: Array
  b: Array
  w_hr: Array


def _blocks(init, key, rows: int, cols: int, num_blocks: int, dtype) -> Array:
  """``[rows, num_blocks * cols]``: each ``[rows, cols]`` block drawn on its own from
  ``init`` (in at least float32: the orthogonal initialiser's QR has no bf16)."""
  draw_dtype = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
  keys = jax.random.split(key, num_blocks)
  return jnp.concatenate([init(k, (rows, cols), draw_dtype) for k in keys], 1).astype(dtype)


def projection_lstm(
  hidden_size: int,
  proj_size: int,
  *,
  forget_bias: float = 1.0,
  kernel_init=jax.nn.initializers.glorot_uniform(),
  recurrent_init=jax.nn.initializers.orthogonal(),
  projection_init=jax.nn.initializers.orthogonal(),
  dtype=None,
  param_dtype=jnp.float32,
) -> _cell.Cell:
  """An LSTM cell with a recurrent projection layer, as pure functions.

  Args:
    hidden_size: H, the size of the gates and of the cell state ``c``.
    proj_size: P, the size of ``h``: the outputs, the recurrent state and the rows of
      ``w_hh``. PyTorch requires ``P < H``; any ``P >= 1`` works here.
    forget_bias: initial value of the forget-gate bias ``b_f``, as in
      :func:`recurrent.lstm` (1.0; pass 0.0 to match PyTorch's zero-mean init).
    kernel_init: initialiser of ``w_ih [I, 4H]``; Glorot uniform, as the LSTM's.
    recurrent_init: initialiser of each gate's ``[P, H]`` block of ``w_hh``; orthogonal
      (semi-orthogonal when ``P != H``), as the LSTM's ``[H, H]`` blocks.
    projection_init: initialiser of ``w_hr [H, P]``; orthogonal by default. ``w_hr``
      is as much a recurrent weight as ``w_hh``: every ``h`` that reaches ``w_hh`` went
      through it, so the linear part of the step from ``h`` to ``h'`` is a product of a
      ``w_hh`` block and ``w_hr``. Orthogonal factors keep every singular value of that
      product at most one, where a Glorot-uniform ``w_hr`` would spread them (some above
      one, repeated over the steps), the reason the LSTM's ``w_hh`` is orthogonal
      (Saxe et al. 2014).
    dtype: the matmul operand dtype, e.g. ``jnp.bfloat16``, for all three matmuls
      (accumulation, gate math and the carry stay in ``param_dtype``); None uses
      ``param_dtype``. Outputs ``h`` are cast to ``dtype`` when it is given.
    param_dtype: dtype of the params and of the carry.

  Returns:
    A :class:`recurrent.Cell` with ``hidden_size`` P (the outputs' size, and the size of
    the recurrent dropout masks, which multiply ``h [..., P]`` where it enters ``w_hh``);
    params are :class:`ProjectionLSTMParams`, the carry a :class:`recurrent.LSTMState`
    with ``h [..., P]`` and ``c [..., H]``, the gates :class:`recurrent.LSTMGates`, each
    ``[..., H]``. No :class:`recurrent.FastPath`: the projection is a matmul after the
    gate math, outside the shape that path promises, so gradients are plain autodiff of
    ``lax.scan``.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.projection_lstm(8, 3)
    >>> params = cell.init(jax.random.key(0), 5)
    >>> params.w_hh.shape, params.w_hr.shape
    ((3, 32), (8, 3))
    >>> carry, h = cell.step(params, cell.initial_carry((2,)), jnp.ones((2, 5)))
    >>> h.shape, carry.h.shape, carry.c.shape
    ((2, 3), (2, 3), (2, 8))
    >>> _, ys = recurrent.stack(cell, recurrent.init_layers(cell, jax.random.key(1), 5, 2,
    ...                         bidirectional=True), jnp.ones((2, 7, 5)))
    >>> ys.shape
    (2, 7, 6)
  """
  hs, ps = _checks.size("hidden_size", hidden_size), _checks.size("proj_size", proj_size)

  def init(key, input_size: int) -> ProjectionLSTMParams:
    k_ih, k_hh, k_hr = jax.random.split(key, 3)
    b = jnp.zeros((4 * hs,), param_dtype).at[hs : 2 * hs].set(forget_bias)
    return ProjectionLSTMParams(
      w_ih=kernel_init(k_ih, (input_size, 4 * hs), param_dtype),
      w_hh=_blocks(recurrent_init, k_hh, ps, hs, 4, param_dtype),
      b=b,
      w_hr=_blocks(projection_init, k_hr, hs, ps, 1, param_dtype),
    )

  def initial_carry(batch_shape=(), dtype=None) -> LSTMState:
    dtype = dtype or param_dtype
    (h,), (c,) = (_cell.zeros_carry(1, n, batch_shape, dtype) for n in (ps, hs))
    return LSTMState(h, c)

  def project(params: ProjectionLSTMParams, x, mask=None) -> tuple:
    return _cell.project_gates(x, params.w_ih, mask, 4, dtype)

  def recur(params: ProjectionLSTMParams, carry: LSTMState, xp, mask=None):
    hh = _cell.masked_gate_dot(carry.h, params.w_hh, mask, 4, dtype)
    i, f, g, o = (_cell.add_bias(x + r, bg) for x, r, bg in zip(xp, hh, jnp.split(params.b, 4)))
    gates = LSTMGates(jax.nn.sigmoid(i), jax.nn.sigmoid(f), jnp.tanh(g), jax.nn.sigmoid(o))
    c = gates.f * carry.c + gates.i * gates.g
    h = _cell.dot(gates.o * jnp.tanh(c), params.w_hr, dtype, result_dtype=c.dtype)
    out = h if dtype is None else h.astype(dtype)
    return LSTMState(h, c), out, gates

  return _cell.Cell(
    init,
    initial_carry,
    project,
    recur,
    _cell.step_of(project, recur),
    ps,
    4,
    input_size=lambda params: params.w_ih.shape[0],
    name="projection_lstm",
    fast=None,
    dtype=dtype,
  )
