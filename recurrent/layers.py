"""Layers of cells: bidirectional pairs and stacks, with dropout between layers.

Shape legend: B batch (any leading dims, or none), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional).

A stack's params are a list with one entry per layer: the cell's params, or a
:class:`Bidirectional` pair of them. Its carries have the same structure. Dropout keys
for layer ``l`` and direction ``d`` are ``fold_in(fold_in(key, l), d)`` of each
sequence's key, so every layer and direction draws its own masks.
"""

from typing import Any, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent.scan import scan


class Bidirectional(NamedTuple):
  """A forward and a backward value: params, carries or keys of a bidirectional layer."""

  forward: Any
  backward: Any


def init_layers(
  cell, key, input_size: int, num_layers: int = 1, *, bidirectional: bool = False
) -> list:
  """Params of a stack: layer 0 takes I inputs, the others D*H.

  Example:
    >>> import jax, recurrent
    >>> params = recurrent.init_layers(recurrent.gru(8), jax.random.key(0), 3, 2,
    ...                                bidirectional=True)
    >>> params[1].forward.w_ih.shape
    (16, 24)
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  layers = []
  for layer, k in enumerate(jax.random.split(key, num_layers)):
    size = input_size if layer == 0 else cell.hidden_size * (2 if bidirectional else 1)
    if bidirectional:
      k_f, k_b = jax.random.split(k)
      layers.append(Bidirectional(cell.init(k_f, size), cell.init(k_b, size)))
    else:
      layers.append(cell.init(k, size))
  return layers


def _dropout_on(deterministic, dropout: tuple, recurrent_dropout: tuple) -> bool:
  """Checks the flag and every rate, then says whether any dropout is on."""
  _checks.flag("deterministic", deterministic)
  for name, rates in (("dropout", dropout), ("recurrent_dropout", recurrent_dropout)):
    for rate in rates:
      _checks.rate(name, rate)
  return not deterministic and any(r > 0.0 for r in dropout + recurrent_dropout)


def bidirectional(
  cell,
  params: Bidirectional,
  xs,
  *,
  initial_carry=None,
  key=None,
  time_major: bool = False,
  **kwargs,
):
  """A forward and a backward :func:`recurrent.scan` with outputs concatenated.

  Takes the keyword arguments of :func:`recurrent.scan` except ``reverse``. With
  ``seq_lengths`` the backward half reverses each sequence within its own length, so both
  halves line up on a padded batch.

  Returns:
    ``(Bidirectional(forward_carry, backward_carry), outputs [B..., T, 2H])``.
  """
  if "reverse" in kwargs:
    raise TypeError("bidirectional() runs both directions; it takes no reverse argument")
  for name, value in (("params", params), ("initial_carry", initial_carry)):
    if value is not None and not isinstance(value, Bidirectional):
      raise ValueError(
        f"{name} of a bidirectional layer must be a recurrent.Bidirectional(forward,"
        f" backward) pair, got {type(value).__name__}"
      )
  carries = initial_carry if initial_carry is not None else Bidirectional(None, None)
  keys = Bidirectional(None, None)
  if _dropout_on(
    kwargs.get("deterministic", False),
    (kwargs.get("dropout", 0.0),),
    (kwargs.get("recurrent_dropout", 0.0),),
  ):
    batch_shape = _checks.sequence("xs", xs, time_major)[0]
    k = _checks.keys(key, "key", batch_shape)
    keys = Bidirectional(_dropout.derive(k, 0), _dropout.derive(k, 1))
  finals, outputs = zip(
    *(
      scan(cell, p, xs, initial_carry=c, key=k, time_major=time_major, reverse=r, **kwargs)
      for p, c, k, r in zip(params, carries, keys, (False, True))
    )
  )
  return Bidirectional(*finals), jnp.concatenate(outputs, axis=-1)


def _per_layer(name: str, value, num_layers: int) -> tuple:
  values = tuple(value) if isinstance(value, (tuple, list)) else (value,) * num_layers
  if len(values) != num_layers:
    raise ValueError(f"{name} has {len(values)} rates; expected one per layer ({num_layers})")
  return values


def stack(
  cell,
  params: Sequence,
  xs,
  *,
  initial_carry=None,
  seq_lengths=None,
  time_major: bool = False,
  unroll: int = 1,
  remat_every: int | None = None,
  dropout: Union[float, Sequence[float]] = 0.0,
  recurrent_dropout: Union[float, Sequence[float]] = 0.0,
  per_gate_masks: bool = False,
  key=None,
  deterministic: bool = False,
):
  """Runs a stack of layers (each uni- or bidirectional) over ``xs``.

  Args:
    cell: the cell of every layer.
    params: list of per-layer params (:func:`init_layers`); a :class:`Bidirectional`
      entry makes that layer bidirectional.
    xs: ``[B..., T, I]`` (``[T, B..., I]`` if ``time_major``).
    initial_carry: None, or a list of per-layer carries shaped like ``params``.
    seq_lengths: int ``[B...]``; see :func:`recurrent.scan`.
    time_major, unroll, remat_every, per_gate_masks, deterministic: as in
      :func:`recurrent.scan`.
    dropout: time-invariant dropout on each layer's input; a float for every layer, or
      one rate per layer. ``dropout=(0.0, p, p)`` drops only between layers, where
      PyTorch's ``nn.LSTM(dropout=p)`` does (but with one mask per sequence).
    recurrent_dropout: rate on ``h_{t-1}``, a float or one per layer.
    key: PRNG keys ``[B...]``, one per sequence (:func:`recurrent.sequence_keys`).

  Returns:
    ``(final_carries, outputs)``: a list of per-layer final carries and the top layer's
    outputs ``[B..., T, D*H]``.

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
  num_layers = len(params)
  if num_layers < 1:
    raise ValueError("params must hold at least one layer, got an empty list")
  dropouts = _per_layer("dropout", dropout, num_layers)
  recurrent_dropouts = _per_layer("recurrent_dropout", recurrent_dropout, num_layers)
  carries = [None] * num_layers if initial_carry is None else list(initial_carry)
  if len(carries) != num_layers:
    raise ValueError(
      f"initial_carry has {len(carries)} layers; expected one per layer ({num_layers})"
    )
  if _dropout_on(deterministic, dropouts, recurrent_dropouts):
    key = _checks.keys(key, "key", _checks.sequence("xs", xs, time_major)[0])
  else:
    key = None

  finals = []
  for layer, layer_params in enumerate(params):
    options = dict(
      seq_lengths=seq_lengths,
      time_major=time_major,
      unroll=unroll,
      remat_every=remat_every,
      dropout=dropouts[layer],
      recurrent_dropout=recurrent_dropouts[layer],
      per_gate_masks=per_gate_masks,
      deterministic=deterministic,
      initial_carry=carries[layer],
    )
    layer_key = None if key is None else _dropout.derive(key, layer)
    if isinstance(layer_params, Bidirectional):
      final, xs = bidirectional(cell, layer_params, xs, key=layer_key, **options)
    else:
      final, xs = scan(cell, layer_params, xs, key=layer_key, **options)
    finals.append(final)
  return finals, xs
