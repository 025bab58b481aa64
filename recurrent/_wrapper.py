"""What the linen and NNX wrappers share: the param mapping, the checks of a layer's
structure, the per-sequence keys and the call of the core.

Shape legend: B batch (any leading dims), T time, I input size, H hidden size,
D directions (1, or 2 when bidirectional), L layers.

A layer's params map one-to-one onto the core's::

    {'layer_0': {'w_ih': [I, G*H], 'w_hh': [H, G*H], 'b': [G*H]}, 'layer_1': ...}  # LSTM
    {'layer_0': {'forward': {...}, 'backward': {...}}}                   # bidirectional

Each layer's entry holds the fields of the cell's params (a NamedTuple).
"""

from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent import options as _options
from recurrent.gru import GRUParams, GRUState
from recurrent.layers import Bidirectional, merged_size, stack
from recurrent.lstm import LSTMParams, LSTMState

DIRECTIONS = ("forward", "backward")
BUILT_IN = (LSTMParams, GRUParams)


def params_type(cell, input_size: int = 1):
  """The NamedTuple class of ``cell``'s params."""
  abstract = jax.eval_shape(lambda: cell.init(jax.random.key(0), input_size))
  if not hasattr(abstract, "_fields"):
    raise TypeError(
      f"the Flax wrappers need a cell whose params are a NamedTuple of arrays; {cell.name}'s"
      f" init returns {type(abstract).__name__}"
    )
  return type(abstract)


def cell_params(tree: Mapping, kind=None):
  """``{field: array}`` -> the cell's params: ``kind``, or a built-in type by its fields."""
  kinds = BUILT_IN if kind is None else (kind,)
  for params_cls in kinds:
    if set(tree) == set(params_cls._fields):
      return params_cls(*(tree[f] for f in params_cls._fields))
  expected = " or ".join(f"{list(k._fields)} ({k.__name__})" for k in kinds)
  raise ValueError(f"params have keys {sorted(tree)}; expected {expected}")


def _layer(tree: Mapping, kind):
  if set(tree) == set(DIRECTIONS):
    return Bidirectional(*(cell_params(tree[d], kind) for d in DIRECTIONS))
  return cell_params(tree, kind)


def to_core(params: Mapping, kind=None):
  """A module's params -> the core's: a list of per-layer params, or one cell's."""
  if not isinstance(params, Mapping):
    raise TypeError(f"params must be a dict of module params, got {type(params).__name__}")
  if set(params) == {"params"}:
    params = params["params"]
  if not any(str(k).startswith("layer_") for k in params):
    return cell_params(params, kind)
  names = [f"layer_{i}" for i in range(len(params))]
  if sorted(params) != sorted(names):
    raise ValueError(f"params have keys {sorted(params)}; expected {names}")
  return [_layer(params[name], kind) for name in names]


def tree_of(core) -> dict:
  """One layer's (or one cell's) core params -> ``{field: array}`` (nested for pairs)."""
  if isinstance(core, Bidirectional):
    return {d: tree_of(p) for d, p in zip(DIRECTIONS, core)}
  if hasattr(core, "_asdict"):
    return dict(core._asdict())
  raise TypeError(
    "core params must be a cell's params (a NamedTuple such as LSTMParams) or a"
    f" Bidirectional pair of them, got {type(core).__name__}"
  )


def from_core(core) -> dict:
  """The core's params -> a module's params (the inverse of :func:`to_core`)."""
  if hasattr(core, "_asdict") and not isinstance(core, Bidirectional):
    return tree_of(core)
  if not isinstance(core, (list, tuple)) or isinstance(core, Bidirectional) or not core:
    raise TypeError(
      "core must be a non-empty list of per-layer params (recurrent.init_layers) or one"
      f" cell's params, got {type(core).__name__}"
    )
  return {f"layer_{i}": tree_of(layer) for i, layer in enumerate(core)}


def init_tree(cell, key, input_size: int, bidirectional: bool) -> dict:
  """One new layer's params, drawn by the core's own ``init`` (two keys for a pair)."""
  if bidirectional:
    k_f, k_b = jax.random.split(key)
    return tree_of(Bidirectional(cell.init(k_f, input_size), cell.init(k_b, input_size)))
  return tree_of(cell.init(key, input_size))


def width(cell, bidirectional: bool, merge) -> int:
  """The input size of every layer but the first."""
  return merged_size(cell.hidden_size, merge) if bidirectional else cell.hidden_size


def check_structure(num_layers: int, bidirectional: bool, reverse: bool) -> None:
  if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  if reverse and bidirectional:
    raise ValueError(
      "reverse=True cannot be combined with bidirectional=True: a bidirectional layer"
      " already runs both directions"
    )
  if reverse and num_layers != 1:
    raise ValueError(
      f"reverse=True needs num_layers=1, got num_layers={num_layers} (a stack of reversed"
      " layers undoes itself; use bidirectional=True)"
    )


def check_input_size(name: str, input_size: int, cell, core_layer) -> None:
  """``core_layer`` (a layer of the core or a cell's params) must take ``input_size``."""
  layer = core_layer.forward if isinstance(core_layer, Bidirectional) else core_layer
  expected = cell.input_size(layer)
  if input_size != expected:
    raise ValueError(
      f"{name} has feature size {input_size} but params expect input_size {expected}"
    )


def layer_carries(initial_carry, num_layers: int):
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


def batch_keys(rng, inputs, time_major: bool, example_ids):
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


def options(module, deterministic: bool) -> _options.Options:
  """The :class:`recurrent.Options` of a layer module's attributes (checked here, once)."""
  return _options.Options(
    reverse=module.reverse,
    time_major=module.time_major,
    unroll=module.unroll,
    remat_every=module.remat_every,
    merge=module.merge,
    dropout=module.dropout,
    recurrent_dropout=module.recurrent_dropout,
    per_gate_masks=module.per_gate_masks,
    deterministic=bool(deterministic),
  )


def apply(cell, core, inputs, options, keys, seq_lengths, initial_carry):
  """The shared call of the linen and NNX layers: ``(carries, outputs)`` from
  :func:`recurrent.stack`. ``keys``: the batch's per-sequence keys (:func:`batch_keys`),
  or None without dropout."""
  carries = layer_carries(initial_carry, len(core))
  return stack(
    cell, core, inputs, initial_carry=carries, seq_lengths=seq_lengths, key=keys,
    options=options,
  )  # fmt: skip


# --- the cells for Flax's own nn.RNN / nnx.RNN ----------------------------------------------


class CellMasks(NamedTuple):
  """The dropout masks a Flax-facing cell holds in its carry: drawn at a sequence's first
  step (``drawn`` 0) and reused at every later one, so they are time-invariant.

  Attributes:
    inputs: ``[B..., I]`` input mask.
    hidden: ``[B..., H]`` recurrent mask.
    drawn: ``[B..., 1]``, 1 once the masks are drawn.
  """

  inputs: jax.Array
  hidden: jax.Array
  drawn: jax.Array


def check_activations(owner: str, gate_fn, activation_fn) -> None:
  """Flax's cells take ``gate_fn``/``activation_fn``; these compute sigmoid and tanh only
  (their params, fast path and converters assume them)."""
  for name, given, expected in (
    ("gate_fn", gate_fn, (jax.nn.sigmoid,)),
    ("activation_fn", activation_fn, (jnp.tanh, jax.numpy.tanh)),
  ):
    if given not in expected:
      raise ValueError(
        f"{owner} computes {expected[0].__name__} for {name}, got {given!r}: use Flax's own"
        " cell for other activations, or write a recurrent.Cell"
      )


def flax_carry(state):
  """The core's carry -> Flax's: ``LSTMState(h, c)`` -> ``(c, h)``, ``GRUState(h)`` -> ``h``."""
  if isinstance(state, LSTMState):
    return (state.c, state.h)
  if isinstance(state, GRUState):
    return state.h
  return state


def core_carry(owner: str, carry, template):
  """Flax's carry -> the core's (the inverse of :func:`flax_carry`), refusing the core's own
  ``LSTMState(h, c)``, whose order Flax code would silently swap."""
  if isinstance(template, LSTMState):
    if isinstance(carry, LSTMState) or not (isinstance(carry, tuple) and len(carry) == 2):
      raise TypeError(
        f"{owner} takes Flax's LSTM carry, a tuple (c, h) as initialize_carry returns it,"
        f" got {type(carry).__name__}"
        + (": pass (state.c, state.h)" if isinstance(carry, LSTMState) else "")
      )
    c, h = carry
    return LSTMState(h=h, c=c)
  if isinstance(template, GRUState):
    if isinstance(carry, tuple):
      raise TypeError(f"{owner} takes Flax's GRU carry, the array h, got {type(carry).__name__}")
    return GRUState(carry)
  return carry


def init_carry(cell, carry_init, key, batch_shape, dtype):
  """Flax's carry from ``carry_init``, one key per field (Flax splits its key the same way)."""
  template = cell.initial_carry(batch_shape, dtype)
  keys = jax.random.split(key, len(template))
  fields = [carry_init(k, f.shape, f.dtype) for k, f in zip(keys, template)]
  return flax_carry(type(template)(*fields))


def check_cell_rates(dropout, recurrent_dropout) -> bool:
  """Checks the rates of a Flax-facing cell; whether any dropout is on."""
  _options.check_rate("dropout", dropout)
  _options.check_rate("recurrent_dropout", recurrent_dropout)
  return _options.is_on(dropout) or _options.is_on(recurrent_dropout)


def empty_masks(batch_shape, input_size: int, hidden_size: int, dtype) -> CellMasks:
  return CellMasks(
    jnp.zeros(batch_shape + (input_size,), dtype),
    jnp.zeros(batch_shape + (hidden_size,), dtype),
    jnp.zeros(batch_shape + (1,), dtype),
  )


def hold_masks(masks: CellMasks, rng, dropout, recurrent_dropout) -> CellMasks:
  """The masks of this step: those in the carry once drawn, else new ones, one per sequence
  from ``sequence_keys(rng, arange(B))`` (``fold_in`` streams 0 and 1, as the layers). Once
  every sequence has its masks (after the first step) nothing is drawn."""
  batch_shape = masks.drawn.shape[:-1]

  def draw(masks):
    keys = _dropout.sequence_keys(rng, int(np.prod(batch_shape))).reshape(batch_shape)
    drawn = masks.drawn != 0
    new = []
    for stream, (held, rate) in enumerate(
      ((masks.inputs, dropout), (masks.hidden, recurrent_dropout))
    ):
      (fresh,) = _dropout.masks(_dropout.derive(keys, stream), held.shape[-1], rate, 1, held.dtype)
      new.append(jnp.where(drawn, held, fresh))
    return CellMasks(*new, jnp.ones_like(masks.drawn))

  return jax.lax.cond(jnp.all(masks.drawn != 0), lambda m: m, draw, masks)


def cell_step(owner: str, cell, params, carry, inputs, masks):
  """One step of a Flax-facing cell: ``(carry, h)`` in Flax's carry convention; with
  ``masks`` (a :class:`CellMasks`, or None when deterministic) the carry is
  ``(flax_carry, masks)``."""
  template = jax.eval_shape(lambda: cell.initial_carry(np.shape(inputs)[:-1]))
  state = core_carry(owner, carry, template)
  if masks is None:
    new, h = cell.step(params, state, inputs)
  else:
    xp = cell.project(params, inputs, masks.inputs)
    new, h, _ = cell.recur(params, state, xp, masks.hidden)
  return flax_carry(new), h
