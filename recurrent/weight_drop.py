"""Weight-drop (DropConnect on the recurrent weights; Merity et al. 2017, AWD-LSTM,
arXiv 1708.02182) for any cell: units of ``w_hh`` are dropped, one mask per call.

Shape legend: B batch (any leading dims, or none), H hidden size, G gates.

At each call (one layer and direction of one training step) one mask ``[H, G*H]`` is
drawn, with inverted scaling (kept weights are divided by ``1 - rate``), and the whole
batch runs with ``w_hh * mask``: every sequence and every step sees the same dropped
weights, as in AWD-LSTM. The mask's key combines the per-sequence keys of the call (the
sum of their key data, folded with a stream of its own): with keys from
``recurrent.sequence_keys(step_key, example_ids)`` it is a function of the step's key and
the set of examples in the batch, not of their order or of the devices the batch is
sharded over (inside ``jax.shard_map`` the sum runs over every device's share of the batch:
a ``psum`` over the mesh axes the keys vary over, which ``check_vma=True``, the default,
records). With ``deterministic=True`` the weights are used as they are.

The masked matrix is still a plain matrix, so the cell keeps its fast path.

Example:
  >>> import jax, jax.numpy as jnp, recurrent
  >>> cell = recurrent.weight_drop(recurrent.lstm(8), 0.5)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> keys = recurrent.sequence_keys(jax.random.key(1), 2)
  >>> carry, ys = recurrent.scan(cell, params, jnp.ones((2, 6, 3)), key=keys)
  >>> ys.shape
  (2, 6, 8)
"""

import jax
import jax.numpy as jnp

from recurrent import cell as _cell
from recurrent import dropout as _dropout
from recurrent import options as _options
from recurrent.fused import loops as _loops

# The stream folded into the call's key for the weight mask (dropout: 0, 1; zoneout: 2).
STREAM = 3


def call_key(keys):
  """One key for a call from its per-sequence keys ``[B...]``: the sum of their key data
  (so the order of the sequences and the sharding of the batch do not matter), folded with
  :data:`STREAM`."""
  data = jax.random.key_data(keys)
  summed = jnp.sum(data.reshape((-1,) + data.shape[keys.ndim :]), axis=0, dtype=data.dtype)
  axes = _loops.varying_axes(keys)
  if axes:  # inside shard_map the batch is split over these mesh axes: add up every device's
    summed = jax.lax.psum(summed, tuple(sorted(axes)))
  key = jax.random.wrap_key_data(summed, impl=jax.random.key_impl(keys))
  return jax.random.fold_in(key, STREAM)


def weight_drop(cell: _cell.Cell, rate: float, *, field: str = "w_hh") -> _cell.Cell:
  """``cell`` with DropConnect on its params' ``field`` (the recurrent weights).

  Args:
    cell: any :class:`recurrent.Cell` whose params are a NamedTuple with ``field``.
    rate: the probability of dropping each weight, in ``[0, 1)``.
    field: the params field to drop (``'w_hh'``; a projection LSTM's ``'w_hr'`` too).

  Returns:
    A :class:`recurrent.Cell` with the same params, carry, gates and fast path.
  """
  _options.check_rate("rate", rate)
  params = jax.eval_shape(lambda: cell.init(jax.random.key(0), 1))
  if field not in getattr(params, "_fields", ()):
    raise ValueError(
      f"weight_drop field {field!r} is not in {cell.name}'s params"
      f" {list(getattr(params, '_fields', ()))}"
    )

  def draw(params, keys, num_steps):
    params, noise = (params, None) if cell.draw is None else cell.draw(params, keys, num_steps)
    if keys is None or not _options.is_on(rate):
      return params, noise
    w = getattr(params, field)
    (mask,) = _dropout.masks(call_key(keys)[None], w.size, rate, dtype=w.dtype)
    return params._replace(**{field: w * mask.reshape(w.shape)}), noise

  return cell._replace(name=f"weight_drop({cell.name})", draw=draw)
