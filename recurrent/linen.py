"""Flax linen modules over the pure core: ``RNN`` (any cell), ``LSTM``/``GRU`` layers and
``LSTMCell``/``GRUCell`` for Flax's own ``nn.RNN``.

Shape legend: B batch (any leading dims), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional), L layers.

The modules only create params (with the core cell's own ``init``), take the ``'dropout'``
rng and call :func:`recurrent.stack` or the cell's step, through the wrapper core that
:mod:`recurrent.nnx` shares; the math is the core's. A layer's params map one-to-one onto
the core's (:func:`to_core`, :func:`from_core`)::

    {'layer_0': {'w_ih': [I, G*H], 'w_hh': [H, G*H], 'b': [G*H]}, 'layer_1': ...}  # LSTM
    {'layer_0': {'w_ih', 'w_hh', 'b_ih', 'b_hh'}}                                     # GRU
    {'layer_0': {'forward': {...}, 'backward': {...}}}                   # bidirectional

Example, a classifier whose LSTM drops inputs between layers and the recurrent state:

  >>> import jax, jax.numpy as jnp, flax.linen as nn
  >>> import recurrent.linen as rnn
  >>> class Classifier(nn.Module):
  ...   @nn.compact
  ...   def __call__(self, tokens, lengths, deterministic):
  ...     xs = nn.Embed(100, 16)(tokens)
  ...     ys = rnn.LSTM(32, num_layers=2, bidirectional=True, dropout=(0.0, 0.25),
  ...                   recurrent_dropout=0.25)(xs, seq_lengths=lengths,
  ...                                           deterministic=deterministic)
  ...     return nn.Dense(2)(ys[:, 0])
  >>> model, tokens = Classifier(), jnp.ones((4, 7), jnp.int32)
  >>> lengths = jnp.array([7, 5, 2, 1])
  >>> variables = model.init(jax.random.key(0), tokens, lengths, True)
  >>> logits = model.apply(variables, tokens, lengths, False,
  ...                      rngs={'dropout': jax.random.key(1)})
  >>> logits.shape
  (4, 2)
"""

from collections.abc import Mapping
from typing import Any, Callable, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from recurrent import _checks, _wrapper
from recurrent.gru import gru
from recurrent.lstm import lstm
from recurrent.scan import needs_keys

Initializer = Callable[..., Any]


def to_core(params: Mapping, kind=None):
  """A module's params -> the core's params.

  Args:
    params: the ``params`` of a layer (:class:`LSTM`, :class:`GRU`, :class:`RNN`),
      ``{'layer_0': ..., 'layer_1': ...}``, or of an :class:`LSTMCell`/:class:`GRUCell`,
      ``{'w_ih': ..., 'w_hh': ..., ...}``; a ``{'params': ...}`` variables dict works too.
    kind: the params' NamedTuple class for a cell of your own (e.g.
      ``type(cell.init(key, I))``, or :class:`recurrent.ResetBeforeGRUParams` for a
      reset-before GRU's); None recognises the LSTM's and the (reset-after) GRU's by their
      fields.

  Returns:
    For a layer, the list :func:`recurrent.init_layers` returns (one cell's params per
    layer, or a :class:`recurrent.Bidirectional` pair), ready for :func:`recurrent.stack`;
    for a cell, its params.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent, recurrent.linen as rnn
    >>> model = rnn.GRU(8, num_layers=2)
    >>> xs = jnp.ones((3, 5, 4))
    >>> params = model.init(jax.random.key(0), xs)['params']
    >>> core = rnn.to_core(params)
    >>> [p.w_ih.shape for p in core]
    [(4, 24), (8, 24)]
    >>> _, ys = recurrent.stack(recurrent.gru(8), core, xs)
    >>> bool(jnp.allclose(ys, model.apply({'params': params}, xs)))
    True
  """
  return _wrapper.to_core(params, kind)


def from_core(core) -> dict:
  """The core's params -> a module's ``params`` (the inverse of :func:`to_core`).

  Args:
    core: a list of per-layer params (:func:`recurrent.init_layers`,
      :func:`recurrent.convert.from_torch`) for a layer, or one cell's params
      (:func:`recurrent.convert.from_flax`) for an :class:`LSTMCell`/:class:`GRUCell`.

  Returns:
    ``{'layer_0': ..., ...}`` or ``{'w_ih': ..., ...}``: pass it as
    ``module.apply({'params': from_core(core)}, ...)``.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent, recurrent.linen as rnn
    >>> core = recurrent.init_layers(recurrent.lstm(8), jax.random.key(0), 4,
    ...                              bidirectional=True)
    >>> params = rnn.from_core(core)
    >>> params['layer_0']['backward']['w_hh'].shape
    (8, 32)
    >>> rnn.LSTM(8, bidirectional=True).apply({'params': params}, jnp.ones((2, 3, 4))).shape
    (2, 3, 16)
  """
  return _wrapper.from_core(core)


# --- sequence layers -----------------------------------------------------------------------


class _Layers(nn.Module):
  """The implementation shared by :class:`LSTM` and :class:`GRU`."""

  hidden_size: int
  num_layers: int = 1
  bidirectional: bool = False
  dropout: Union[float, Sequence[float]] = 0.0
  recurrent_dropout: Union[float, Sequence[float]] = 0.0
  per_gate_masks: bool = False
  reverse: bool = False
  time_major: bool = False
  return_carry: bool = False
  unroll: int = 1
  remat_every: int | None = None
  merge: Any = "concat"
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = jax.nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal()
  deterministic: bool | None = None

  def _cell(self):
    raise NotImplementedError

  @nn.compact
  def __call__(
    self, inputs, *, seq_lengths=None, initial_carry=None, example_ids=None, deterministic=None
  ):
    """Runs the layers over ``inputs``.

    Args:
      inputs: ``[B..., T, I]`` floating (``[T, B..., I]`` if ``time_major``).
      seq_lengths: int ``[B...]``: steps at or past a sequence's length keep its carry
        and output zeros (see :func:`recurrent.scan`).
      initial_carry: a list of per-layer carries as ``return_carry`` returns them (for
        truncated backpropagation through time); zeros if None.
      example_ids: int ``[B...]``, each sequence's global index in the data set; defaults
        to ``arange`` over the batch. Dropout masks are drawn from
        ``recurrent.sequence_keys(self.make_rng('dropout'), example_ids)``: with global
        indices an example's masks do not depend on its place in the batch, the batch
        size or the number of devices.
      deterministic: True turns dropout off; merged with the attribute as ``nn.Dropout``
        does (``nn.merge_param``). Needed only when a dropout rate is non-zero.

    Returns:
      outputs ``[B..., T, D*H]`` (``[T, B..., D*H]`` if ``time_major``), or
      ``(carries, outputs)`` if ``return_carry``, ``carries`` a list with each layer's
      final carry (a :class:`recurrent.Bidirectional` pair for bidirectional layers).
    """
    _wrapper.check_structure(self.num_layers, self.bidirectional, self.reverse)
    input_size = _checks.sequence("inputs", inputs, self.time_major)[2]
    cell = self._cell()
    if needs_keys(cell, _wrapper.options(self, deterministic=False)):
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    else:
      deterministic = True  # nothing random: the flag is not needed
    options = _wrapper.options(self, deterministic)
    kind = _wrapper.params_type(cell)
    if self.has_variable("params", "layer_0"):
      stored = _wrapper.to_core({"layer_0": self.get_variable("params", "layer_0")}, kind)
      _wrapper.check_input_size("inputs", input_size, cell, stored[0])
    width = _wrapper.width(cell, self.bidirectional, self.merge)

    def layer(index):
      size = input_size if index == 0 else width
      return self.param(
        f"layer_{index}", lambda key: _wrapper.init_tree(cell, key, size, self.bidirectional)
      )

    core = _wrapper.to_core({f"layer_{i}": layer(i) for i in range(self.num_layers)}, kind)
    keys = None
    if needs_keys(cell, options):
      if not self.has_rng("dropout"):
        raise ValueError(
          f"{type(self).__name__} has dropout on and deterministic=False but no 'dropout'"
          " rng: pass rngs={'dropout': key} to init/apply, or deterministic=True"
        )
      keys = _wrapper.batch_keys(self.make_rng("dropout"), inputs, self.time_major, example_ids)
    carries, outputs = _wrapper.apply(cell, core, inputs, options, keys, seq_lengths, initial_carry)
    return (carries, outputs) if self.return_carry else outputs


class RNN(_Layers):
  """Stacked, optionally bidirectional layers of any :class:`recurrent.Cell`, with
  time-invariant dropout: your own cell gets the options of :class:`LSTM`.

  Attributes:
    cell: a :class:`recurrent.Cell` whose params are a NamedTuple (``recurrent.lstm(H)``,
      or your own); ``hidden_size`` is taken from it.
    the others: as in :class:`LSTM` (the initialisers are the cell's own).

  Example:
    >>> import jax, jax.numpy as jnp, recurrent, recurrent.linen as rnn
    >>> model = rnn.RNN(cell=recurrent.gru(8, reset_after=False), num_layers=2)
    >>> xs = jnp.ones((3, 5, 4))
    >>> model.apply(model.init(jax.random.key(0), xs), xs).shape
    (3, 5, 8)
  """

  cell: Any = None
  hidden_size: int | None = None

  def _cell(self):
    if self.cell is None or not hasattr(self.cell, "step"):
      raise TypeError(f"RNN needs cell=a recurrent.Cell, got {self.cell!r}")
    return self.cell


class LSTM(_Layers):
  """Stacked, optionally bidirectional LSTM layers with time-invariant dropout.

  Runs :func:`recurrent.stack` with the cell ``recurrent.lstm(hidden_size, ...)``; see
  :func:`recurrent.lstm` for the equations.

  Attributes:
    hidden_size: H.
    num_layers: L.
    bidirectional: run every layer both ways; outputs ``[..., 2H]``.
    dropout: time-invariant dropout on each layer's input, a float for every layer or
      one rate per layer. ``dropout=(0.0, p, p)`` drops only between layers, like
      PyTorch's ``nn.LSTM(num_layers=3, dropout=p)``.
    recurrent_dropout: rate on ``h_{t-1}`` (a float or one per layer).
    per_gate_masks: one dropout mask per gate (Gal & Ghahramani's untied variant).
    reverse: run from the last step to the first (within each sequence's length); for
      one unidirectional layer only.
    time_major: inputs and outputs are ``[T, B..., F]``.
    return_carry: return ``(carries, outputs)`` rather than ``outputs``.
    unroll, remat_every: as in :func:`recurrent.scan`.
    merge: how bidirectional layers join their outputs: ``'concat'`` (default), ``'sum'``,
      ``'mean'``, ``'mul'``, ``'none'`` or a function (see :class:`recurrent.Options`).
    dtype: the matmul operand dtype (e.g. ``jnp.bfloat16``); None: ``param_dtype``.
    param_dtype: dtype of the params and the carry.
    kernel_init: initialiser of ``w_ih``; Glorot uniform.
    recurrent_kernel_init: initialiser of each gate's block of ``w_hh``; orthogonal.
    forget_bias: initial forget-gate bias (1.0; 0.0 matches PyTorch and Flax).
    deterministic: default of the ``__call__`` argument.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent.linen as rnn
    >>> model = rnn.LSTM(8, num_layers=2, dropout=0.25, recurrent_dropout=0.25,
    ...                  return_carry=True)
    >>> xs = jnp.ones((3, 5, 4))
    >>> variables = model.init(jax.random.key(0), xs, deterministic=True)
    >>> carries, ys = model.apply(variables, xs, deterministic=False,
    ...                           example_ids=jnp.array([10, 11, 12]),
    ...                           rngs={'dropout': jax.random.key(1)})
    >>> ys.shape, len(carries), carries[1].c.shape
    ((3, 5, 8), 2, (3, 8))
  """

  forget_bias: float = 1.0

  def _cell(self):
    return lstm(
      self.hidden_size,
      forget_bias=self.forget_bias,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


class GRU(_Layers):
  """Stacked, optionally bidirectional GRU layers with time-invariant dropout.

  Takes the attributes of :class:`LSTM`, with ``reset_after`` (True: the form of
  PyTorch, cuDNN and Flax; False: Cho et al. 2014) instead of ``forget_bias``; see
  :func:`recurrent.gru`.

  Example:
    >>> import jax, jax.numpy as jnp, recurrent.linen as rnn
    >>> model = rnn.GRU(8, bidirectional=True, time_major=True)
    >>> xs = jnp.ones((5, 3, 4))  # [T, B, I]
    >>> variables = model.init(jax.random.key(0), xs)
    >>> model.apply(variables, xs, seq_lengths=jnp.array([5, 2, 3])).shape
    (5, 3, 16)
  """

  reset_after: bool = True

  def _cell(self):
    return gru(
      self.hidden_size,
      reset_after=self.reset_after,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


# --- cells, for flax.linen.RNN -------------------------------------------------------------


class _Cell(nn.RNNCellBase):
  """The implementation shared by :class:`LSTMCell` and :class:`GRUCell`."""

  features: int
  gate_fn: Callable = jax.nn.sigmoid
  activation_fn: Callable = jnp.tanh
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = jax.nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal()
  carry_init: Initializer = nn.initializers.zeros_init()
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  deterministic: bool | None = None

  def _cell(self):
    raise NotImplementedError

  @nn.compact
  def __call__(self, carry, inputs):
    """One step: ``carry`` (Flax's: ``(c, h)`` for the LSTM, ``h`` for the GRU; with
    dropout, ``(that, masks)``), ``inputs [B..., I]`` -> ``(carry, h [B..., H])``."""
    owner = type(self).__name__
    _wrapper.check_activations(owner, self.gate_fn, self.activation_fn)
    cell = self._cell()
    kind = _wrapper.params_type(cell)
    input_size = np.shape(inputs)[-1]
    if self.has_variable("params", kind._fields[0]):
      stored = _wrapper.cell_params(self.variables["params"], kind)
      _wrapper.check_input_size("inputs", input_size, cell, stored)
    # Each leaf is drawn by cell.init, the core's initialisers, from its own key.
    params = kind(
      *(
        self.param(f, lambda key, f=f: getattr(cell.init(key, input_size), f)) for f in kind._fields
      )
    )
    masks = None
    if _wrapper.check_cell_rates(self.dropout, self.recurrent_dropout):
      if not (
        isinstance(carry, tuple) and len(carry) == 2 and isinstance(carry[1], _wrapper.CellMasks)
      ):
        raise TypeError(
          f"{owner} has dropout on: its carry is (carry, masks), as initialize_carry makes it"
        )
      carry, masks = carry
      deterministic = nn.merge_param("deterministic", self.deterministic, None)
      if not deterministic:
        masks = _wrapper.hold_masks(
          masks, self.make_rng("dropout"), self.dropout, self.recurrent_dropout
        )
      new, h = _wrapper.cell_step(
        owner, cell, params, carry, inputs, None if deterministic else masks
      )
      return (new, masks), h
    return _wrapper.cell_step(owner, cell, params, carry, inputs, None)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Flax's carry for ``input_shape = (B..., I)``, each field from ``carry_init``
    (zeros by default) with its own key; with dropout on, ``(carry, masks)``."""
    batch_shape = tuple(input_shape[:-1])
    cell = self._cell()
    carry = _wrapper.init_carry(cell, self.carry_init, rng, batch_shape, self.param_dtype)
    if _wrapper.check_cell_rates(self.dropout, self.recurrent_dropout):
      masks = _wrapper.empty_masks(batch_shape, input_shape[-1], cell.hidden_size, self.param_dtype)
      return carry, masks
    return carry

  @property
  def num_feature_axes(self) -> int:
    return 1


class LSTMCell(_Cell):
  """An LSTM cell for ``flax.linen.RNN``: ``recurrent.lstm``'s step as a linen cell.

  A drop-in for ``nn.LSTMCell(features)``/``nn.OptimizedLSTMCell(features)``: Flax's
  carry ``(c, h)`` (a :class:`recurrent.LSTMState`, ``(h, c)``, is refused rather than
  silently swapped), ``initialize_carry(rng, input_shape)`` with ``carry_init``, and
  ``gate_fn``/``activation_fn`` (sigmoid and tanh only: other functions raise). It differs
  in its params, ``{'w_ih', 'w_hh', 'b'}`` (gates fused; for Flax cell params use
  ``from_core(recurrent.convert.from_flax(variables))``), and in its initialisers (the
  core's, with ``forget_bias=1``).

  With ``dropout``/``recurrent_dropout`` the masks are time-invariant: drawn from the
  ``'dropout'`` rng at a sequence's first step, one per sequence (by its place in the
  batch), and held in the carry, which is then ``((c, h), masks)``. ``deterministic`` (an
  attribute, as ``nn.RNN`` calls the cell without keywords) turns them off. ``nn.RNN``
  hands its cell a ``'dropout'`` rng only when told to:
  ``nn.RNN(cell, split_rngs={'params': False, 'dropout': True})``. For masks that do not
  depend on the batch layout, use :class:`LSTM` with ``example_ids``.

  Attributes:
    features: H.
    gate_fn, activation_fn: Flax's; only ``jax.nn.sigmoid`` and ``jnp.tanh`` are taken.
    carry_init: initialiser of each carry field (zeros).
    dropout, recurrent_dropout, deterministic: time-invariant dropout, as above.
    dtype, param_dtype, kernel_init, recurrent_kernel_init, forget_bias: as in
      :class:`LSTM`.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, recurrent.linen as rnn
    >>> rnn_layer = nn.RNN(rnn.LSTMCell(8))
    >>> xs = jnp.ones((3, 5, 4))
    >>> variables = rnn_layer.init(jax.random.key(0), xs)
    >>> rnn_layer.apply(variables, xs).shape
    (3, 5, 8)
  """

  forget_bias: float = 1.0

  def _cell(self):
    return lstm(
      self.features,
      forget_bias=self.forget_bias,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


class GRUCell(_Cell):
  """A GRU cell for ``flax.linen.RNN``: ``recurrent.gru``'s step as a linen cell.

  A drop-in for ``nn.GRUCell(features)`` as :class:`LSTMCell` is for Flax's LSTM cells:
  Flax's carry, the array ``h``; params ``{'w_ih', 'w_hh', 'b_ih', 'b_hh'}``; dropout as
  in :class:`LSTMCell` (carry ``(h, masks)``).

  Attributes:
    features: H.
    reset_after: as in :func:`recurrent.gru`.
    the others: as in :class:`LSTMCell`.

  Example:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, recurrent.linen as rnn
    >>> cell = rnn.GRUCell(8)
    >>> carry = cell.initialize_carry(jax.random.key(0), (3, 4))
    >>> variables = cell.init(jax.random.key(1), carry, jnp.ones((3, 4)))
    >>> carry, h = cell.apply(variables, carry, jnp.ones((3, 4)))
    >>> h.shape, sorted(variables['params'])
    ((3, 8), ['b_hh', 'b_ih', 'w_hh', 'w_ih'])
  """

  reset_after: bool = True

  def _cell(self):
    return gru(
      self.features,
      reset_after=self.reset_after,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
    )


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "from_core", "to_core"]
