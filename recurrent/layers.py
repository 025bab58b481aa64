"""Layers of cells: bidirectional pairs and stacks, with dropout between layers.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional).

A stack's params are a list with one entry per layer: the cell's params, or a
:class:`Bidirectional` pair of them. Its carries have the same structure. Dropout keys
for layer ``l`` and direction ``d`` are ``fold_in(fold_in(key, l), d)`` of each
sequence's key, so every layer and direction draws its own masks.
"""

import dataclasses
import numbers
import warnings
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent import options as _options
from recurrent.scan import needs_keys, run


class Bidirectional(NamedTuple):
  """A forward and a backward value: params, carries or keys of a bidirectional layer."""

  forward: Any
  backward: Any


def merged_size(hidden_size: int, merge="concat") -> int:
  """The feature size of a bidirectional layer's outputs under ``merge`` (see
  :class:`recurrent.Options`): 2H for ``'concat'``, H for the others; a function's is
  found by evaluating its shapes."""
  if merge == "concat":
    return 2 * hidden_size
  if isinstance(merge, str):
    return hidden_size
  half = jax.ShapeDtypeStruct((1, hidden_size), jnp.float32)
  return jax.eval_shape(merge, half, half).shape[-1]


def merge_outputs(merge, forward, backward):
  """A bidirectional layer's two outputs joined by ``merge``."""
  if callable(merge):
    return merge(forward, backward)
  return {
    "concat": lambda: jnp.concatenate([forward, backward], axis=-1),
    "sum": lambda: forward + backward,
    "mean": lambda: (forward + backward) / 2,
    "mul": lambda: forward * backward,
    "none": lambda: Bidirectional(forward, backward),
  }[merge]()


def init_layers(
  cell, key, input_size: int, num_layers: int = 1, *, bidirectional: bool = False,
  merge="concat",
) -> list:  # fmt: skip
  """Params of a stack: layer 0 takes I inputs, the others D*H (or, bidirectional, the
  size ``merge`` gives: H for ``'sum'``, ``'mean'`` and ``'mul'``).

  Example:
    >>> import jax, recurrent
    >>> params = recurrent.init_layers(recurrent.gru(8), jax.random.key(0), 3, 2,
    ...                                bidirectional=True)
    >>> params[1].forward.w_ih.shape
    (16, 24)
  """
  if isinstance(num_layers, (bool, np.bool_)) or not isinstance(num_layers, numbers.Integral):
    raise TypeError(f"num_layers must be an int >= 1, got {num_layers!r}")
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  _options.check_flag("bidirectional", bidirectional)
  layers = []
  for layer, k in enumerate(jax.random.split(key, num_layers)):
    width = merged_size(cell.hidden_size, merge) if bidirectional else cell.hidden_size
    size = input_size if layer == 0 else width
    if bidirectional:
      k_f, k_b = jax.random.split(k)
      layers.append(Bidirectional(cell.init(k_f, size), cell.init(k_b, size)))
    else:
      layers.append(cell.init(k, size))
  return layers


def layer_keys(keys, layer: int, direction: int | None = None):
  """The per-sequence keys ``[B...]`` of layer ``layer`` (and ``direction``, 0 forward,
  1 backward, for a bidirectional layer): the one place keys are derived for layers."""
  if keys is None:
    return None
  path = (layer,) if direction is None else (layer, direction)
  return _dropout.derive(keys, *path)


def _layer(cell, params, xs, options, initial_carry, seq_lengths, keys):
  """One layer of a stack, uni- or bidirectional; ``keys`` already the layer's."""
  if not isinstance(params, Bidirectional):
    if isinstance(initial_carry, Bidirectional):
      raise ValueError(
        "initial_carry of a unidirectional layer must be one carry, got a recurrent."
        "Bidirectional pair"
      )
    return run(cell, params, xs, options, initial_carry, seq_lengths, keys)
  carries = initial_carry if initial_carry is not None else Bidirectional(None, None)
  if not isinstance(carries, Bidirectional):
    raise ValueError(
      "initial_carry of a bidirectional layer must be a recurrent.Bidirectional(forward,"
      f" backward) pair, got {type(carries).__name__}"
    )
  finals, outputs = [], []
  for direction, (p, c) in enumerate(zip(params, carries)):
    k = None if keys is None else _dropout.derive(keys, direction)
    opts = dataclasses.replace(options, reverse=bool(direction))
    final, ys = run(cell, p, xs, opts, c, seq_lengths, k)
    finals.append(final)
    outputs.append(ys)
  return Bidirectional(*finals), merge_outputs(options.merge, *outputs)


def _checked_keys(cell, options, key, xs):
  if not needs_keys(cell, options):
    return None
  return _checks.keys(key, "key", _checks.sequence("xs", xs, options.time_major)[0])


def bidirectional_scan(
  cell,
  params: Bidirectional,
  xs,
  *,
  initial_carry=None,
  seq_lengths=None,
  key=None,
  options=None,
  **kwargs,
):
  """A forward and a backward :func:`recurrent.scan` with outputs concatenated.

  Takes the keyword arguments of :func:`recurrent.scan` except ``reverse``. With
  ``seq_lengths`` the backward half reverses each sequence within its own length, so both
  halves line up on a padded batch. The directions draw their masks from
  ``fold_in(key, 0)`` and ``fold_in(key, 1)`` of each sequence's key.

  Returns:
    ``(Bidirectional(forward_carry, backward_carry), outputs)``: ``[B..., T, 2H]``, or as
    ``merge`` joins them (see :class:`recurrent.Options`).
  """
  if "reverse" in kwargs:
    raise TypeError("bidirectional_scan() runs both directions; it takes no reverse argument")
  options = _options.make("bidirectional_scan", options, kwargs).one_layer("bidirectional_scan")
  if not isinstance(params, Bidirectional):
    raise ValueError(
      "params of a bidirectional layer must be a recurrent.Bidirectional(forward,"
      f" backward) pair, got {type(params).__name__}"
    )
  keys = _checked_keys(cell, options, key, xs)
  return _layer(cell, params, xs, options, initial_carry, seq_lengths, keys)


def stack(
  cell,
  params: Sequence,
  xs,
  *,
  initial_carry=None,
  seq_lengths=None,
  key=None,
  options=None,
  **kwargs,
):
  """Runs a stack of layers (each uni- or bidirectional) over ``xs``.

  Args:
    cell: the cell of every layer.
    params: list of per-layer params (:func:`init_layers`); a :class:`Bidirectional`
      entry makes that layer bidirectional.
    xs: ``[B..., T, I]`` (``[T, B..., I]`` if ``time_major``).
    initial_carry: None, or a list of per-layer carries shaped like ``params``.
    seq_lengths: int ``[B...]``; see :func:`recurrent.scan`.
    key: PRNG keys ``[B...]``, one per sequence (:func:`recurrent.sequence_keys`).
    options: a :class:`recurrent.Options`; keyword arguments override its fields, which
      are those of :func:`recurrent.scan` (``reverse`` runs every layer backwards), with:
    dropout: time-invariant dropout on each layer's input; a rate for every layer, or
      one rate per layer. ``dropout=(0.0, p, p)`` drops only between layers, where
      PyTorch's ``nn.LSTM(dropout=p)`` does (but with one mask per sequence).
    recurrent_dropout: rate on ``h_{t-1}``, one rate or one per layer.

  Returns:
    ``(final_carries, outputs)``: a list of per-layer final carries and the top layer's
    outputs ``[B..., T, D*H]`` (bidirectional: as ``merge`` joins them).

  Example:
    >>> import jax, jax.numpy as jnp, recurrent
    >>> cell = recurrent.lstm(8)
    >>> params = recurrent.init_layers(cell, jax.random.key(0), 3, 2, bidirectional=True)
    >>> keys = recurrent.sequence_keys(jax.random.key(1), 4)
    >>> carries, ys = recurrent.stack(cell, params, jnp.ones((4, 6, 3)), dropout=0.2,
    ...                               recurrent_dropout=0.2, key=keys)
    >>> ys.shape, len(carries), carries[1].backward.h.shape
    ((4, 6, 16), 2, (4, 8))
  """
  options = _options.make("stack", options, kwargs)
  if not isinstance(params, (list, tuple)) or hasattr(params, "_fields"):
    raise TypeError(
      "params of a stack must be a list with one entry per layer (recurrent.init_layers),"
      f" got {type(params).__name__}"
    )
  num_layers = len(params)
  if num_layers < 1:
    raise ValueError("params must hold at least one layer, got an empty list")
  per_layer = options.per_layer(num_layers)
  carries = [None] * num_layers if initial_carry is None else list(initial_carry)
  if len(carries) != num_layers:
    raise ValueError(
      f"initial_carry has {len(carries)} layers; expected one per layer ({num_layers})"
    )
  keys = _checked_keys(cell, options, key, xs)
  if options.merge == "none" and any(isinstance(p, Bidirectional) for p in params[:-1]):
    raise ValueError(
      "merge='none' returns a pair of outputs, which no next layer takes: use it with a"
      " bidirectional top layer only, or another merge"
    )
  finals = []
  for layer, (layer_params, layer_options) in enumerate(zip(params, per_layer)):
    final, xs = _layer(
      cell, layer_params, xs, layer_options, carries[layer], seq_lengths,
      layer_keys(keys, layer),
    )  # fmt: skip
    finals.append(final)
  return finals, xs


def bidirectional(*args, **kwargs):
  """The former name of :func:`bidirectional_scan`, which it calls after a
  ``DeprecationWarning``: it shared its name with the ``bidirectional=`` flag."""
  warnings.warn(
    "recurrent.bidirectional is now recurrent.bidirectional_scan", DeprecationWarning, stacklevel=2
  )
  return bidirectional_scan(*args, **kwargs)
