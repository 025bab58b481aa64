"""The cell protocol shared by every recurrent cell, and the numerics cells share.

Shape legend: B batch (any number of leading dims, or none), T time, I input size,
H hidden size, G number of gates (4 for LSTM, 3 for GRU).

A cell is a :class:`Cell`: a bundle of pure functions whose hyper-parameters live in the
closure of its factory (``recurrent.lstm(hidden_size)``, ``recurrent.gru(hidden_size)``).
A step is split in two so a driver can hoist the input half out of the time loop:

* ``project(params, x, mask=None)``: the input half for any number of steps at once,
  ``x [..., I] -> xp`` (for the built-in cells a tuple of G arrays ``[..., H]``);
* ``recur(params, carry, xp_t, mask=None)``: the rest of one step, ``-> (carry, h, gates)``.

``step(params, carry, x)`` composes the two, with the ``lax.scan`` signature
``-> (carry, h)``. That is all a cell must provide: :func:`recurrent.scan` differentiates
any such cell with plain autodiff of ``lax.scan``. A cell may also declare a
:class:`FastPath`, a promise about the shape of its maths that lets the driver run the
hand-written backward pass of :mod:`recurrent.fused` instead; the driver never infers
that shape from names or by tracing, so a cell that declares nothing is always right.
"""

import functools
from typing import Any, Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero

Array = jax.Array
# A dropout mask for a cell: one array shared by all gates, or a tuple of G arrays (untied).
Mask = Union[None, Array, Sequence[Array]]


class FastPath(NamedTuple):
  """What a cell promises so that the driver may use :mod:`recurrent.fused`.

  Declaring it states, for every ``params``, carry and mask (one array, not one per gate):

  * the carry is a NamedTuple whose field ``h [..., H]`` is the state that feeds the
    recurrent matmul;
  * ``project(params, x, mask) == gate_split((x * mask) @ input_weights(params), G)``: a
    plain matmul, no bias, no normalisation (the fast path computes it itself, from
    ``input_weights``, and differentiates it as a matmul);
  * ``recur(params, carry, xp_t, mask) == pointwise(pointwise_params(params), carry, xp_t,
    hh)`` with ``hh = gate_split((carry.h * mask) @ recurrent_weights(params), G)``.

  Attributes:
    pointwise: ``pointwise(extra, carry, xp_t, hh) -> (carry, h, gates)``, the step after
      both matmuls, elementwise over the batch.
    pointwise_params: ``pointwise_params(params) -> extra``, the params ``pointwise``
      reads (the biases).
    input_weights: ``input_weights(params) -> w_ih [I, G*H]``.
    recurrent_weights: ``recurrent_weights(params) -> w_hh [H, G*H]``.
    sums_only: ``pointwise`` uses each gate's ``xp_t`` and ``hh`` only as their sum
      ``xp_t + hh`` (every LSTM gate; not the reset-after GRU's candidate). The gradient
      then keeps one ``[T, B..., G*H]`` array instead of two.
    h_host: None, or the name of a carry field of ``h``'s shape and dtype when
      ``pointwise`` never reads ``carry.h`` (the LSTM's reads only ``c``): the backward
      pass then rebuilds ``h`` in that field's stack instead of the forward keeping one.

  A wrong declaration gives wrong gradients; ``tests/test_fused.py`` checks the built-in
  cells' against plain autodiff (``cell._replace(fast=None)``).
  """

  pointwise: Callable[..., Any]
  pointwise_params: Callable[..., Any]
  input_weights: Callable[..., Any]
  recurrent_weights: Callable[..., Any]
  sums_only: bool = False
  h_host: str | None = None


class Cell(NamedTuple):
  """A recurrent cell as pure functions (see the module docstring).

  Attributes:
    init: ``init(key, input_size) -> params``, a pytree.
    initial_carry: ``initial_carry(batch_shape=(), dtype=None) -> carry``, zeros.
    project: ``project(params, x, mask=None) -> xp``, the input half of a step for any
      number of steps, ``x [..., I]``; ``mask`` multiplies ``x`` (broadcast to it), or is
      a tuple of G masks, one per gate.
    recur: ``recur(params, carry, xp_t, mask=None) -> (carry, h, gates)``, the rest of the
      step; ``mask`` multiplies the recurrent state where it feeds the recurrent matmul
      (one array or G of them).
    step: ``step(params, carry, x) -> (carry, h)``, ``x [..., I]``, ``h [..., H]``.
    hidden_size: H, the size of the outputs ``h`` and of the state the recurrent mask
      multiplies.
    num_gates: G, how many masks ``per_gate_masks`` draws for each input.
    input_size: ``input_size(params) -> I``, the feature size the params take.
    name: a label for messages and tables; nothing dispatches on it.
    fast: a :class:`FastPath`, or None: plain autodiff of ``lax.scan``.
    dtype: the matmul operand dtype the cell was made with (None: the params' dtype).
    draw: None, or ``draw(params, keys, num_steps) -> (params, noise)`` for a cell with
      randomness of its own (zoneout, weight-drop). The driver calls it once per layer and
      direction, before the loop, with that layer's per-sequence keys ``[B...]`` (None when
      ``deterministic``), and runs the returned ``params``. ``noise``: None, or a pytree of
      per-step arrays ``[T, B..., ...]`` (time-major), handed to ``recur`` as
      ``xp_t = Noisy(xp_t, noise_t)``; ``recur`` called without it (as ``step`` does) must
      compute the deterministic (expected) step.
  """

  init: Callable[..., Any]
  initial_carry: Callable[..., Any]
  project: Callable[..., Any]
  recur: Callable[..., Any]
  step: Callable[..., Any]
  hidden_size: int
  num_gates: int
  input_size: Callable[..., Any]
  name: str = "cell"
  fast: FastPath | None = None
  dtype: Any = None
  draw: Callable[..., Any] | None = None


class Noisy(NamedTuple):
  """A step's input half with the step's noise (see ``Cell.draw``)."""

  xp: Any
  noise: Any


def step_of(project, recur):
  """``step(params, carry, x) -> (carry, h)``: ``recur`` after ``project``, one step."""

  def step(params, carry, x):
    carry, h, _ = recur(params, carry, project(params, x))
    return carry, h

  return step


def carry_dtype(params):
  """The dtype of a cell's carry for ``params``: that of the params' first leaf."""
  return jax.tree.leaves(params)[0].dtype


def dot(x: Array, w: Array, dtype, result_dtype=None) -> Array:
  """``x @ w`` with operands cast to ``dtype`` and the result in ``result_dtype``
  (default: ``w``'s dtype, the weight's).

  With ``dtype=jnp.bfloat16`` and float32 params this is a bf16 matmul accumulating in
  float32, so the gate math and the cell state stay in float32.
  """
  result_dtype = w.dtype if result_dtype is None else result_dtype
  dtype = result_dtype if dtype is None else dtype
  return jnp.matmul(x.astype(dtype), w.astype(dtype), preferred_element_type=result_dtype)


def add_bias(y: Array, b: Array) -> Array:
  """``y [..., N] + b [N]`` with explicit broadcasting (works under strict rank promotion)."""
  return y + jnp.reshape(b, (1,) * (y.ndim - 1) + (-1,))


def gate_split(y: Array, num_gates: int) -> tuple:
  """``[..., G*H] -> tuple of G arrays [..., H]``."""
  return tuple(jnp.split(y, num_gates, axis=-1))


def gate_columns(w: Array, num_gates: int) -> tuple:
  """``[N, G*H] -> tuple of G arrays [N, H]`` (the columns of each gate)."""
  return tuple(jnp.split(w, num_gates, axis=-1))


def masked_gate_dot(x: Array, w: Array, mask: Mask, num_gates: int, dtype) -> tuple:
  """Per-gate pre-activations ``(x * mask) @ w`` as a tuple of G arrays ``[..., H]``.

  A single mask (or none) gives one fused matmul; a tuple of G masks gives one matmul per
  gate, each with its own mask (Gal & Ghahramani's untied variant).
  """
  if mask is None:
    return gate_split(dot(x, w, dtype), num_gates)
  if isinstance(mask, (tuple, list)):
    return tuple(
      dot(x * m.astype(x.dtype), wg, dtype) for m, wg in zip(mask, gate_columns(w, num_gates))
    )
  return gate_split(dot(x * mask.astype(x.dtype), w, dtype), num_gates)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def gate_dots(x: Array, w: Array, num_gates: int, dtype) -> tuple:
  """``x [..., N] @ w [N, G*H]`` as G arrays ``[..., H]``, one matmul per gate.

  The tangent rule is one matmul over the whole ``w``, so reverse mode (its transpose)
  gets each gradient from one large matmul on the gates' concatenated cotangents
  ``dy [M, G*H]`` (M the flattened leading dims): ``dw = x^T dy`` and ``dx = dy w^T``,
  instead of G smaller ones plus a sum.
  """
  return tuple(dot(x, wg, dtype) for wg in gate_columns(w, num_gates))


@functools.partial(gate_dots.defjvp, symbolic_zeros=True)
def _gate_dots_jvp(num_gates, dtype, primals, tangents):
  x, w = primals
  dx, dw = tangents
  out = gate_dots(x, w, num_gates, dtype)
  flat = lambda a: a.reshape(-1, a.shape[-1])  # noqa: E731  2-D: no transposed copies
  terms = [] if isinstance(dx, SymbolicZero) else [dot(flat(dx), w, dtype)]
  if not isinstance(dw, SymbolicZero):
    terms.append(dot(flat(x), dw, dtype))
  if not terms:
    return out, tuple(jnp.zeros_like(y) for y in out)
  dy = sum(terms[1:], terms[0])
  return out, gate_split(dy.reshape(x.shape[:-1] + dy.shape[-1:]), num_gates)


def project_gates(x: Array, w: Array, mask: Mask, num_gates: int, dtype) -> tuple:
  """The hoisted input projection ``(x * mask) @ w`` as G matmuls, one per gate.

  One ``[T, B, H]`` array per gate, not one ``[T, B, G*H]`` array split afterwards: on
  XLA:CPU the split of the big array gets fused into the scan body's gate math, which
  then runs several times slower. No bias: the cells add theirs
  in the step's gate math, which reads these arrays anyway, rather than in one more pass
  over them. The gradients are one matmul each (:func:`gate_dots`), unless every gate
  has a mask of its own.
  """
  if not isinstance(mask, (tuple, list)):
    return gate_dots(x if mask is None else x * mask.astype(x.dtype), w, num_gates, dtype)
  return tuple(
    dot(x * m.astype(x.dtype), wg, dtype) for m, wg in zip(mask, gate_columns(w, num_gates))
  )


def orthogonal_blocks(init, key, hidden_size: int, num_gates: int, dtype) -> Array:
  """``[H, G*H]``: each gate's ``[H, H]`` block drawn on its own from ``init``."""
  # Drawn in (at least) float32: LAPACK's QR, behind the orthogonal initialiser, has no bf16.
  draw_dtype = dtype if jnp.finfo(dtype).bits >= 32 else jnp.float32
  keys = jax.random.split(key, num_gates)
  blocks = [init(k, (hidden_size, hidden_size), draw_dtype) for k in keys]
  return jnp.concatenate(blocks, axis=1).astype(dtype)


def zeros_carry(fields: int, hidden_size: int, batch_shape, dtype) -> tuple:
  batch_shape = (batch_shape,) if isinstance(batch_shape, int) else tuple(batch_shape)
  return tuple(jnp.zeros(batch_shape + (hidden_size,), dtype) for _ in range(fields))
