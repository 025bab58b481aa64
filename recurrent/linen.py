"""Flax linen modules over the pure core: ``LSTM``/``GRU`` layers and ``LSTMCell``/``GRUCell``.

Shape legend: B batch (any leading dims), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional), L layers.

The modules only create params (with the core cell's own ``init``), take the ``'dropout'``
rng and call :func:`recurrent.stack` / :func:`recurrent.scan` / ``cell.step``; the math is
the core's. A layer's params map one-to-one onto the core's (:func:`to_core`,
:func:`from_core`)::

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

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent.gru import GRUParams, gru
from recurrent.layers import Bidirectional, _per_layer, stack
from recurrent.lstm import LSTMParams, lstm
from recurrent.scan import scan

Initializer = Callable[..., Any]
_DIRECTIONS = ("forward", "backward")


# --- the param mapping ---------------------------------------------------------------------


def _core_cell_params(tree: Mapping):
  """``{'w_ih', 'w_hh', 'b'}`` -> LSTMParams, ``{'w_ih', 'w_hh', 'b_ih', 'b_hh'}`` -> GRUParams."""
  for params_type in (LSTMParams, GRUParams):
    if set(tree) == set(params_type._fields):
      return params_type(*(tree[f] for f in params_type._fields))
  raise ValueError(
    f"params have keys {sorted(tree)}; expected {list(LSTMParams._fields)} (LSTM) or"
    f" {list(GRUParams._fields)} (GRU)"
  )


def _core_layer(tree: Mapping):
  if set(tree) == set(_DIRECTIONS):
    return Bidirectional(*(_core_cell_params(tree[d]) for d in _DIRECTIONS))
  return _core_cell_params(tree)


def to_core(params: Mapping):
  """A module's params -> the core's params.

  Args:
    params: the ``params`` of an :class:`LSTM`/:class:`GRU` layer,
      ``{'layer_0': ..., 'layer_1': ...}``, or of an :class:`LSTMCell`/:class:`GRUCell`,
      ``{'w_ih': ..., 'w_hh': ..., ...}``; a ``{'params': ...}`` variables dict works too.

  Returns:
    For a layer, the list :func:`recurrent.init_layers` returns (one
    :class:`recurrent.LSTMParams`/:class:`recurrent.GRUParams` per layer, or a
    :class:`recurrent.Bidirectional` pair), ready for :func:`recurrent.stack`; for a cell,
    its :class:`recurrent.LSTMParams`/:class:`recurrent.GRUParams`.

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
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a dict of module params, got {type(params).__name__}")
  if set(params) == {"params"}:
    params = params["params"]
  if not any(str(k).startswith("layer_") for k in params):
    return _core_cell_params(params)
  names = [f"layer_{i}" for i in range(len(params))]
  if sorted(params) != sorted(names):
    raise ValueError(f"params have keys {sorted(params)}; expected {names}")
  return [_core_layer(params[name]) for name in names]


def _tree_of(core) -> dict:
  if isinstance(core, Bidirectional):
    return {d: _tree_of(p) for d, p in zip(_DIRECTIONS, core)}
  if isinstance(core, (LSTMParams, GRUParams)):
    return dict(core._asdict())
  raise TypeError(
    f"core params must be LSTMParams, GRUParams or Bidirectional, got {type(core).__name__}"
  )


def from_core(core) -> dict:
  """The core's params -> a module's ``params`` (the inverse of :func:`to_core`).

  Args:
    core: a list of per-layer params (:func:`recurrent.init_layers`,
      :func:`recurrent.convert.from_torch`) for an :class:`LSTM`/:class:`GRU` layer, or
      one cell's :class:`recurrent.LSTMParams`/:class:`recurrent.GRUParams`
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
  if isinstance(core, (LSTMParams, GRUParams)):
    return _tree_of(core)
  if not isinstance(core, (list, tuple)) or isinstance(core, Bidirectional) or not core:
    raise TypeError(
      "core must be a non-empty list of per-layer params (recurrent.init_layers) or one"
      f" cell's LSTMParams/GRUParams, got {type(core).__name__}"
    )
  return {f"layer_{i}": _tree_of(layer) for i, layer in enumerate(core)}


# --- shared checks -------------------------------------------------------------------------


def _rates(value) -> tuple:
  return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _layer_carries(initial_carry, num_layers: int):
  """A list of per-layer carries (a bare carry is accepted for one layer)."""
  if initial_carry is None:
    return None
  if isinstance(initial_carry, list) or type(initial_carry) is tuple:
    carries = list(initial_carry)
  elif num_layers == 1:
    carries = [initial_carry]
  else:
    raise ValueError(
      f"initial_carry must be a list of {num_layers} per-layer carries (as return_carry"
      f" gives them), got {type(initial_carry).__name__}"
    )
  if len(carries) != num_layers:
    raise ValueError(
      f"initial_carry has {len(carries)} layers; expected one per layer ({num_layers})"
    )
  return carries


def _check_options(module) -> None:
  if module.num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {module.num_layers}")
  if module.reverse and module.bidirectional:
    raise ValueError(
      "reverse=True cannot be combined with bidirectional=True: a bidirectional layer"
      " already runs both directions"
    )
  if module.reverse and module.num_layers != 1:
    raise ValueError(
      f"reverse=True needs num_layers=1, got num_layers={module.num_layers}"
      " (recurrent.stack runs its layers forward)"
    )


def _check_input_size(name: str, input_size: int, params) -> None:
  """``params`` (a core layer or a cell's params) must take ``input_size`` features."""
  layer = params.forward if isinstance(params, Bidirectional) else params
  expected = np.shape(layer.w_ih)[0]
  if input_size != expected:
    raise ValueError(
      f"{name} has feature size {input_size} but params expect input_size {expected}"
    )


def _run_layers(module, cell, core, inputs, keys, deterministic, seq_lengths, initial_carry):
  """The shared call of the linen and NNX layers: ``(carries, outputs)``.

  A reversed (single, unidirectional) layer runs :func:`recurrent.scan` with the keys of
  layer 0 (``derive(keys, 0)``, as :func:`recurrent.stack` derives them); every other
  configuration runs :func:`recurrent.stack`.
  """
  options = dict(
    seq_lengths=seq_lengths,
    time_major=module.time_major,
    unroll=module.unroll,
    remat_every=module.remat_every,
    per_gate_masks=module.per_gate_masks,
    deterministic=deterministic,
  )
  carries = _layer_carries(initial_carry, len(core))
  if not module.reverse:
    return stack(
      cell,
      core,
      inputs,
      initial_carry=carries,
      dropout=module.dropout,
      recurrent_dropout=module.recurrent_dropout,
      key=keys,
      **options,
    )
  (rate,) = _per_layer("dropout", module.dropout, 1)
  (recurrent_rate,) = _per_layer("recurrent_dropout", module.recurrent_dropout, 1)
  final, ys = scan(
    cell,
    core[0],
    inputs,
    initial_carry=None if carries is None else carries[0],
    reverse=True,
    dropout=rate,
    recurrent_dropout=recurrent_rate,
    key=None if keys is None else _dropout.derive(keys, 0),
    **options,
  )
  return [final], ys


def _batch_keys(rng, inputs, time_major: bool, example_ids):
  """One key per sequence: ``sequence_keys(rng, example_ids)``, ids ``arange`` by default."""
  batch_shape = _checks.sequence("inputs", inputs, time_major)[0]
  if example_ids is None:
    example_ids = jnp.arange(int(np.prod(batch_shape))).reshape(batch_shape)
  elif np.shape(example_ids) != tuple(batch_shape):
    raise ValueError(
      f"example_ids has shape {np.shape(example_ids)}; expected the batch shape"
      f" {tuple(batch_shape)} of inputs"
    )
  return _dropout.sequence_keys(rng, example_ids)


def _dropout_on(module) -> bool:
  return any(r > 0.0 for r in _rates(module.dropout) + _rates(module.recurrent_dropout))


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
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = jax.nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal()
  deterministic: bool | None = None

  def _cell(self):
    raise NotImplementedError

  def _layer_params(self, cell, layer: int, input_size: int):
    """Layer ``layer``'s params, created by ``cell.init`` (the core's initialisers)."""
    name = f"layer_{layer}"

    def init(key):
      if self.bidirectional:
        k_f, k_b = jax.random.split(key)
        return _tree_of(Bidirectional(cell.init(k_f, input_size), cell.init(k_b, input_size)))
      return _tree_of(cell.init(key, input_size))

    if self.has_variable("params", name):
      _check_input_size("inputs", input_size, _core_layer(self.get_variable("params", name)))
    return _core_layer(self.param(name, init))

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
    _check_options(self)
    input_size = _checks.sequence("inputs", inputs, self.time_major)[2]
    if _dropout_on(self):
      deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    else:
      deterministic = True  # nothing to drop: the flag is not needed
    cell = self._cell()
    width = self.hidden_size * (2 if self.bidirectional else 1)
    core = [
      self._layer_params(cell, layer, input_size if layer == 0 else width)
      for layer in range(self.num_layers)
    ]
    keys = None
    if _dropout_on(self) and not deterministic:
      if not self.has_rng("dropout"):
        raise ValueError(
          f"{type(self).__name__} has dropout on and deterministic=False but no 'dropout'"
          " rng: pass rngs={'dropout': key} to init/apply, or deterministic=True"
        )
      keys = _batch_keys(self.make_rng("dropout"), inputs, self.time_major, example_ids)
    carries, outputs = _run_layers(
      self, cell, core, inputs, keys, deterministic, seq_lengths, initial_carry
    )
    return (carries, outputs) if self.return_carry else outputs


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
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Initializer = jax.nn.initializers.glorot_uniform()
  recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal()

  def _cell(self):
    raise NotImplementedError

  @nn.compact
  def __call__(self, carry, inputs):
    """One step: ``carry`` (leaves ``[B..., H]``), ``inputs [B..., I]`` ->
    ``(carry, h [B..., H])``, by the core cell's ``step``."""
    cell = self._cell()
    input_size = np.shape(inputs)[-1]
    if self.has_variable("params", "w_ih"):
      stored = _core_cell_params(self.variables["params"])
      _check_input_size("inputs", input_size, stored)
    fields = (LSTMParams if cell.name == "lstm" else GRUParams)._fields
    # Each leaf is drawn by cell.init, the core's initialisers, from its own key.
    params = _core_cell_params(
      {f: self.param(f, lambda key, f=f: getattr(cell.init(key, input_size), f)) for f in fields}
    )
    return cell.step(params, carry, inputs)

  @nn.nowrap
  def initialize_carry(self, rng, input_shape):
    """Zeros, leaves ``[B..., H]`` for ``input_shape = (B..., I)``; ``rng`` is unused."""
    del rng
    return self._cell().initial_carry(tuple(input_shape[:-1]), self.param_dtype)

  @property
  def num_feature_axes(self) -> int:
    return 1


class LSTMCell(_Cell):
  """An LSTM cell for ``flax.linen.RNN``: ``recurrent.lstm``'s ``step`` as a linen cell.

  A drop-in for ``nn.LSTMCell(features)``/``nn.OptimizedLSTMCell(features)`` except for
  the carry, a :class:`recurrent.LSTMState` ``(h, c)`` where Flax's is ``(c, h)``, and
  the initialisers (the core's). Params ``{'w_ih', 'w_hh', 'b'}``; for Flax cell params
  use ``from_core(recurrent.convert.from_flax(variables))``.

  Attributes:
    features: H.
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
  """A GRU cell for ``flax.linen.RNN``: ``recurrent.gru``'s ``step`` as a linen cell.

  Params ``{'w_ih', 'w_hh', 'b_ih', 'b_hh'}``; carry :class:`recurrent.GRUState`.

  Attributes:
    features: H.
    reset_after: as in :func:`recurrent.gru`.
    dtype, param_dtype, kernel_init, recurrent_kernel_init: as in :class:`GRU`.

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


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "from_core", "to_core"]
