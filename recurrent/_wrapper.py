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

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import _checks
from recurrent import dropout as _dropout
from recurrent import options as _options
from recurrent.gru import GRUParams
from recurrent.layers import Bidirectional, stack
from recurrent.lstm import LSTMParams

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
