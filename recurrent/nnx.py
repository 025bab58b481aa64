"""Flax NNX modules over the pure core: ``RNN`` (any cell), ``LSTM``/``GRU`` layers and
``LSTMCell``/``GRUCell`` for ``nnx.RNN``.

Shape legend: B batch (any leading dims), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional), L layers.

The NNX twins of :mod:`recurrent.linen`: the weights are ``nnx.Param`` leaves holding the
core's params, drawn by the core's own ``init``; the call runs :func:`recurrent.stack` or
the cell's step, through the wrapper core :mod:`recurrent.linen` shares. The param state
has the layout of the linen modules (``nnx.state(model, nnx.Param)`` is
``{'layer_0': {'w_ih': ..., ...}, ...}``), so :func:`to_core`, :func:`from_core` and
:func:`load_core` map it onto the core's params. Dropout draws its key from the
``'dropout'`` stream of the ``rngs`` given to the constructor, as ``nnx.Dropout`` does;
``model.eval()`` / ``model.train()`` set the ``deterministic`` attribute.

Example, one training step:

  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from recurrent import nnx as rnnx
  >>> class Tagger(nnx.Module):
  ...   def __init__(self, rngs):
  ...     self.embed = nnx.Embed(100, 16, rngs=rngs)
  ...     self.lstm = rnnx.LSTM(16, 32, num_layers=2, bidirectional=True,
  ...                           dropout=(0.0, 0.25), recurrent_dropout=0.25, rngs=rngs)
  ...     self.out = nnx.Linear(64, 5, rngs=rngs)
  ...   def __call__(self, tokens, lengths):
  ...     return self.out(self.lstm(self.embed(tokens), seq_lengths=lengths))
  >>> model = Tagger(nnx.Rngs(params=0, dropout=1))
  >>> optimizer = nnx.Optimizer(model, optax.sgd(1e-2), wrt=nnx.Param)
  >>> @nnx.jit
  ... def train_step(model, optimizer, tokens, lengths, labels):
  ...   def loss_fn(model):
  ...     logits = model(tokens, lengths)
  ...     return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
  ...   loss, grads = nnx.value_and_grad(loss_fn)(model)
  ...   optimizer.update(model, grads)
  ...   return loss
  >>> tokens, labels = jnp.ones((4, 7), jnp.int32), jnp.zeros((4, 7), jnp.int32)
  >>> loss = train_step(model, optimizer, tokens, jnp.array([7, 5, 2, 1]), labels)
  >>> model.eval()  # dropout off
  >>> model(tokens, jnp.array([7, 5, 2, 1])).shape
  (4, 7, 5)
"""

from typing import Any, Callable, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from recurrent import _checks, _wrapper
from recurrent.gru import gru
from recurrent.lstm import lstm
from recurrent.scan import needs_keys

Initializer = Callable[..., Any]


def from_core(core) -> dict:
  """The core's params -> a module's param tree (see :func:`recurrent.linen.from_core`);
  :func:`load_core` sets a module's params from the core's."""
  return _wrapper.from_core(core)


def _values(tree) -> dict:
  """An ``nnx.Dict`` of ``nnx.Param`` (possibly nested) -> a dict of arrays."""
  return {k: _values(v) if isinstance(v, nnx.Dict) else v.get_value() for k, v in tree.items()}


def _params(tree) -> nnx.Dict:
  """A dict of arrays (possibly nested) -> an ``nnx.Dict`` of ``nnx.Param``."""
  return nnx.Dict({k: _params(v) if isinstance(v, dict) else nnx.Param(v) for k, v in tree.items()})


def to_core(model, kind=None):
  """A module's params -> the core's params (see :func:`recurrent.linen.to_core`).

  Args:
    model: an :class:`LSTM`/:class:`GRU` (-> the list :func:`recurrent.init_layers`
      returns) or an :class:`LSTMCell`/:class:`GRUCell` (-> its
      :class:`recurrent.LSTMParams`/:class:`recurrent.GRUParams`); or its param state,
      ``nnx.state(model, nnx.Param)``, or ``nnx.to_pure_dict`` of that state.
    kind: the params' NamedTuple class for a cell of your own; None recognises the
      LSTM's and the (reset-after) GRU's by their fields (an :class:`RNN` or a layer knows
      its cell's).

  Example:
    >>> import jax.numpy as jnp, recurrent
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> model = rnnx.LSTM(4, 8, bidirectional=True, rngs=nnx.Rngs(0))
    >>> core = rnnx.to_core(model)
    >>> core[0].backward.w_ih.shape
    (4, 32)
    >>> xs = jnp.ones((2, 3, 4))
    >>> bool(jnp.allclose(model(xs), recurrent.stack(recurrent.lstm(8), core, xs)[1]))
    True
  """
  if isinstance(model, _Layers) and kind is None:
    kind = _wrapper.params_type(model._cell())
  if isinstance(model, nnx.Module):
    model = nnx.state(model, nnx.Param)
  if isinstance(model, nnx.State):
    model = nnx.to_pure_dict(model)
  return _wrapper.to_core(model, kind)


def load_core(model, core) -> None:
  """Sets a module's params to ``core`` (a list of per-layer params, or one cell's params).

  ``from_torch``/``from_flax`` output (:mod:`recurrent.convert`) loads so. The module must
  have the same layout (layers, directions, sizes); its dtype is kept.

  Example:
    >>> import jax, recurrent
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> core = recurrent.init_layers(recurrent.gru(8), jax.random.key(3), 4, 2)
    >>> model = rnnx.GRU(4, 8, num_layers=2, rngs=nnx.Rngs(0))
    >>> rnnx.load_core(model, core)
    >>> bool((rnnx.to_core(model)[1].w_hh == core[1].w_hh).all())
    True
  """
  given = from_core(core)
  expected = jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  got = jax.tree.map(np.shape, given)
  if got != expected:
    raise ValueError(f"core params have shapes {got}; the module expects {expected}")

  def assign(node, values):
    for name, value in values.items():
      target = node[name] if isinstance(node, nnx.Dict) else getattr(node, name)
      if isinstance(value, dict):
        assign(target, value)
      else:
        target.set_value(jnp.asarray(value, target.get_value().dtype))

  assign(model, given)


def _dropout_stream(rngs, on: bool):
  """The forked ``'dropout'`` stream, as ``nnx.Dropout`` keeps it (None without dropout)."""
  if not on:
    return nnx.data(None)
  if isinstance(rngs, nnx.Rngs):
    try:
      return rngs["dropout"].fork()
    except KeyError:
      raise ValueError(
        "dropout is on but rngs has neither a 'dropout' nor a 'default' stream: pass"
        " nnx.Rngs(params=..., dropout=...) (or nnx.Rngs(seed))"
      ) from None
  if isinstance(rngs, nnx.RngStream):
    return rngs.fork()
  raise TypeError(f"rngs must be an nnx.Rngs or nnx.RngStream, got {type(rngs).__name__}")


class _Layers(nnx.Module):
  """The implementation shared by :class:`LSTM` and :class:`GRU`."""

  def __init__(
    self,
    in_features: int,
    hidden_size: int,
    *,
    num_layers: int = 1,
    bidirectional: bool = False,
    dropout: Union[float, Sequence[float]] = 0.0,
    recurrent_dropout: Union[float, Sequence[float]] = 0.0,
    per_gate_masks: bool = False,
    reverse: bool = False,
    time_major: bool = False,
    return_carry: bool = False,
    unroll: int = 1,
    remat_every: int | None = None,
    merge: Any = "concat",
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    kernel_init: Initializer = jax.nn.initializers.glorot_uniform(),
    recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal(),
    deterministic: bool = False,
    rngs: nnx.Rngs,
    **cell_options,
  ):
    self.in_features = in_features
    self.hidden_size = hidden_size
    self.num_layers = num_layers
    self.bidirectional = bidirectional
    self.dropout = tuple(dropout) if isinstance(dropout, (tuple, list)) else dropout
    self.recurrent_dropout = (
      tuple(recurrent_dropout)
      if isinstance(recurrent_dropout, (tuple, list))
      else recurrent_dropout
    )
    self.per_gate_masks = per_gate_masks
    self.reverse = reverse
    self.time_major = time_major
    self.return_carry = return_carry
    self.unroll = unroll
    self.remat_every = remat_every
    self.merge = nnx.static(merge)
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.kernel_init = kernel_init
    self.recurrent_kernel_init = recurrent_kernel_init
    self.cell_options = cell_options
    self.deterministic = deterministic
    _wrapper.check_structure(num_layers, bidirectional, reverse)
    cell = self._cell()
    on = needs_keys(cell, _wrapper.options(self, deterministic=False))  # checks every option
    width = _wrapper.width(cell, bidirectional, merge)
    for layer in range(num_layers):
      size = in_features if layer == 0 else width
      tree = _wrapper.init_tree(cell, rngs.params(), size, bidirectional)
      setattr(self, f"layer_{layer}", _params(tree))
    self.rngs = _dropout_stream(rngs, on)

  def _cell(self):
    raise NotImplementedError

  def set_view(self, deterministic: bool | None = None):
    """For ``nnx.view(model, deterministic=...)``."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(
    self,
    inputs,
    *,
    seq_lengths=None,
    initial_carry=None,
    example_ids=None,
    deterministic: bool | None = None,
    rngs=None,
  ):
    """Runs the layers over ``inputs``.

    Args:
      inputs: ``[B..., T, I]`` floating (``[T, B..., I]`` if ``time_major``).
      seq_lengths: int ``[B...]``; see :func:`recurrent.scan`.
      initial_carry: a list of per-layer carries as ``return_carry`` returns them; zeros
        if None.
      example_ids: int ``[B...]``, global example indices for
        :func:`recurrent.sequence_keys` (``arange`` over the batch by default); with them
        an example's masks do not depend on the batch layout or the device count.
      deterministic: overrides the attribute (which ``eval()``/``train()`` set).
      rngs: overrides the stored ``'dropout'`` stream: an ``nnx.Rngs``, an
        ``nnx.RngStream`` or a key.

    Returns:
      outputs ``[B..., T, D*H]`` (``[T, B..., D*H]`` if ``time_major``), or
      ``(carries, outputs)`` if ``return_carry``, with one final carry per layer.
    """
    input_size = _checks.sequence("inputs", inputs, self.time_major)[2]
    if input_size != self.in_features:
      raise ValueError(
        f"inputs has feature size {input_size} but params expect input_size {self.in_features}"
      )
    deterministic = self.deterministic if deterministic is None else deterministic
    options = _wrapper.options(self, deterministic)
    cell = self._cell()
    keys = None
    if needs_keys(cell, options):
      key = self._dropout_key(rngs)
      keys = _wrapper.batch_keys(key, inputs, self.time_major, example_ids)
    core = _wrapper.to_core(
      {f"layer_{i}": _values(getattr(self, f"layer_{i}")) for i in range(self.num_layers)},
      _wrapper.params_type(cell),
    )
    carries, outputs = _wrapper.apply(cell, core, inputs, options, keys, seq_lengths, initial_carry)
    return (carries, outputs) if self.return_carry else outputs

  def _dropout_key(self, rngs):
    rngs = self.rngs if rngs is None else rngs
    if isinstance(rngs, nnx.Rngs):
      return rngs["dropout"]()
    if isinstance(rngs, nnx.RngStream):
      return rngs()
    if rngs is None:
      raise ValueError(
        f"{type(self).__name__} has dropout on and deterministic=False but no 'dropout'"
        " rng stream: pass rngs=nnx.Rngs(dropout=...) to the call, or deterministic=True"
        " (model.eval())"
      )
    return rngs


class RNN(_Layers):
  """Stacked, optionally bidirectional layers of any :class:`recurrent.Cell` (NNX), with
  time-invariant dropout: your own cell gets the options of :class:`LSTM`.

  Args:
    in_features: I.
    cell: a :class:`recurrent.Cell` whose params are a NamedTuple (``recurrent.lstm(H)``
      or your own); the hidden size is the cell's.
    the others: as in :class:`LSTM` (the initialisers are the cell's own).

  Example:
    >>> import jax.numpy as jnp, recurrent
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> model = rnnx.RNN(4, cell=recurrent.gru(8, reset_after=False), rngs=nnx.Rngs(0))
    >>> model(jnp.ones((3, 5, 4))).shape
    (3, 5, 8)
  """

  def __init__(self, in_features: int, *, cell, **kwargs):
    if cell is None or not hasattr(cell, "step"):
      raise TypeError(f"RNN needs cell=a recurrent.Cell, got {cell!r}")
    self.cell = nnx.static(cell)
    super().__init__(in_features, cell.hidden_size, **kwargs)

  def _cell(self):
    return self.cell


class LSTM(_Layers):
  """Stacked, optionally bidirectional LSTM layers with time-invariant dropout (NNX).

  Args:
    in_features: I.
    hidden_size: H.
    num_layers, bidirectional, dropout, recurrent_dropout, per_gate_masks, reverse,
      time_major, return_carry, unroll, remat_every, merge, dtype, param_dtype, kernel_init,
      recurrent_kernel_init: as the attributes of :class:`recurrent.linen.LSTM`
      (``dropout=(0.0, p, p)`` drops only between layers, like PyTorch).
    deterministic: False (default, like ``nnx.Dropout``) applies dropout when a rate is
      non-zero; ``model.eval()`` sets it to True and ``model.train()`` back to False.
    rngs: ``nnx.Rngs``; its ``params`` stream draws the weights (with the core's
      ``init``); its ``dropout`` stream (or the default one) is forked and kept for the
      masks.
    forget_bias: initial forget-gate bias (1.0; 0.0 matches PyTorch and Flax).

  Example:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> model = rnnx.LSTM(4, 8, num_layers=2, recurrent_dropout=0.25, return_carry=True,
    ...                   rngs=nnx.Rngs(params=0, dropout=1))
    >>> carries, ys = model(jnp.ones((3, 5, 4)), example_ids=jnp.array([7, 8, 9]))
    >>> ys.shape, carries[1].h.shape
    ((3, 5, 8), (3, 8))
  """

  def __init__(self, in_features: int, hidden_size: int, *, forget_bias: float = 1.0, **kwargs):
    super().__init__(in_features, hidden_size, forget_bias=forget_bias, **kwargs)

  def _cell(self):
    return lstm(
      self.hidden_size,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      **self.cell_options,
    )


class GRU(_Layers):
  """Stacked, optionally bidirectional GRU layers with time-invariant dropout (NNX).

  Args:
    in_features, hidden_size, ..., rngs: as in :class:`LSTM`.
    reset_after: True (PyTorch's, cuDNN's and Flax's form) or False (Cho et al. 2014).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> model = rnnx.GRU(4, 8, bidirectional=True, rngs=nnx.Rngs(0))
    >>> model(jnp.ones((3, 5, 4)), seq_lengths=jnp.array([5, 1, 3])).shape
    (3, 5, 16)
  """

  def __init__(self, in_features: int, hidden_size: int, *, reset_after: bool = True, **kwargs):
    super().__init__(in_features, hidden_size, reset_after=reset_after, **kwargs)

  def _cell(self):
    return gru(
      self.hidden_size,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      **self.cell_options,
    )


class _Cell(nnx.RNNCellBase):
  """The implementation shared by :class:`LSTMCell` and :class:`GRUCell`."""

  def __init__(
    self,
    in_features: int,
    hidden_features: int,
    *,
    gate_fn: Callable = jax.nn.sigmoid,
    activation_fn: Callable = jnp.tanh,
    dtype: Any = None,
    param_dtype: Any = jnp.float32,
    kernel_init: Initializer = jax.nn.initializers.glorot_uniform(),
    recurrent_kernel_init: Initializer = jax.nn.initializers.orthogonal(),
    carry_init: Initializer | None = None,
    dropout: float = 0.0,
    recurrent_dropout: float = 0.0,
    deterministic: bool = False,
    rngs: nnx.Rngs,
    **cell_options,
  ):
    _wrapper.check_activations(type(self).__name__, gate_fn, activation_fn)
    self.in_features = in_features
    self.hidden_features = hidden_features
    self.dtype = dtype
    self.param_dtype = param_dtype
    self.kernel_init = kernel_init
    self.recurrent_kernel_init = recurrent_kernel_init
    self.carry_init = carry_init
    self.dropout = dropout
    self.recurrent_dropout = recurrent_dropout
    self.deterministic = deterministic
    self.cell_options = cell_options
    for name, value in from_core(self._cell().init(rngs.params(), in_features)).items():
      setattr(self, name, nnx.Param(value))
    on = _wrapper.check_cell_rates(dropout, recurrent_dropout)
    self.rngs = _dropout_stream(rngs, on)

  def _cell(self):
    raise NotImplementedError

  def set_view(self, deterministic: bool | None = None):
    """For ``nnx.view(model, deterministic=...)``, ``eval()`` and ``train()``."""
    if deterministic is not None:
      self.deterministic = deterministic

  def __call__(self, carry, inputs):
    """One step: ``carry`` (Flax's: ``(c, h)`` for the LSTM, ``h`` for the GRU; with
    dropout, ``(that, masks)``), ``inputs [B..., I]`` -> ``(carry, h [B..., H])``."""
    owner = type(self).__name__
    if np.shape(inputs)[-1] != self.in_features:
      raise ValueError(
        f"inputs has feature size {np.shape(inputs)[-1]} but params expect input_size"
        f" {self.in_features}"
      )
    cell = self._cell()
    kind = _wrapper.params_type(cell)
    params = kind(*(getattr(self, f).get_value() for f in kind._fields))
    if not _wrapper.check_cell_rates(self.dropout, self.recurrent_dropout):
      return _wrapper.cell_step(owner, cell, params, carry, inputs, None)
    if not (isinstance(carry, tuple) and len(carry) == 2):
      raise TypeError(
        f"{owner} has dropout on: its carry is (carry, masks), as initialize_carry makes it"
      )
    carry, masks = carry
    if not self.deterministic:
      masks = _wrapper.hold_masks(masks, self.rngs(), self.dropout, self.recurrent_dropout)
    new, h = _wrapper.cell_step(
      owner, cell, params, carry, inputs, None if self.deterministic else masks
    )
    return (new, masks), h

  def initialize_carry(self, input_shape, rngs=None, carry_init=None):
    """Flax's carry for ``input_shape = (B..., I)``: each field from ``carry_init`` (the
    argument, else the constructor's, else zeros) with a key from ``rngs`` (its ``carry``
    stream); with dropout on, ``(carry, masks)``."""
    init = carry_init or self.carry_init or nnx.initializers.zeros_init()
    if isinstance(rngs, nnx.Rngs):
      rngs = rngs.carry
    key = rngs() if rngs is not None else jax.random.key(0)
    batch_shape = tuple(input_shape[:-1])
    cell = self._cell()
    carry = _wrapper.init_carry(cell, init, key, batch_shape, self.param_dtype)
    if _wrapper.check_cell_rates(self.dropout, self.recurrent_dropout):
      masks = _wrapper.empty_masks(batch_shape, input_shape[-1], cell.hidden_size, self.param_dtype)
      return carry, masks
    return carry

  @property
  def num_feature_axes(self) -> int:
    return 1


class LSTMCell(_Cell):
  """An LSTM cell for ``nnx.RNN``: ``recurrent.lstm``'s step, params ``w_ih, w_hh, b``, and
  Flax's conventions as :class:`recurrent.linen.LSTMCell` has them: carry ``(c, h)``,
  ``initialize_carry(input_shape, rngs=None, carry_init=None)``, ``gate_fn`` and
  ``activation_fn`` (sigmoid and tanh only), time-invariant ``dropout`` and
  ``recurrent_dropout`` held in the carry (``((c, h), masks)``; drawn from the
  ``'dropout'`` stream of ``rngs``, off after ``eval()``).

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> layer = nnx.RNN(rnnx.LSTMCell(4, 8, rngs=nnx.Rngs(0)))
    >>> layer(jnp.ones((3, 5, 4))).shape
    (3, 5, 8)
  """

  def __init__(self, in_features: int, hidden_features: int, *, forget_bias=1.0, **kwargs):
    super().__init__(in_features, hidden_features, forget_bias=forget_bias, **kwargs)

  def _cell(self):
    return lstm(
      self.hidden_features,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      **self.cell_options,
    )


class GRUCell(_Cell):
  """A GRU cell for ``nnx.RNN``: ``recurrent.gru``'s step, params
  ``w_ih, w_hh, b_ih, b_hh``, Flax's carry (the array ``h``), and the options of
  :class:`LSTMCell`.

  Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from recurrent import nnx as rnnx
    >>> cell = rnnx.GRUCell(4, 8, rngs=nnx.Rngs(0))
    >>> carry, h = cell(cell.initialize_carry((3, 4)), jnp.ones((3, 4)))
    >>> h.shape
    (3, 8)
  """

  def __init__(self, in_features: int, hidden_features: int, *, reset_after=True, **kwargs):
    super().__init__(in_features, hidden_features, reset_after=reset_after, **kwargs)

  def _cell(self):
    return gru(
      self.hidden_features,
      kernel_init=self.kernel_init,
      recurrent_init=self.recurrent_kernel_init,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      **self.cell_options,
    )


__all__ = ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "from_core", "load_core", "to_core"]
