"""Zoneout (Krueger et al. 2016, arXiv 1606.01305) for any cell: each unit of the carry
keeps its previous value with probability ``rate`` instead of taking the new one.

Shape legend: B batch (any leading dims, or none), T time, H hidden size.

For a carry field ``s`` (the LSTM's ``h`` and ``c``, the GRU's ``h``) with rate ``p``::

    training:   s_t = d_t * s_{t-1} + (1 - d_t) * s~_t,   d_t ~ Bernoulli(p) per unit
    evaluation: s_t = p * s_{t-1} + (1 - p) * s~_t        (the expected value)

where ``s~_t`` is what the cell computes. The step's output is the zoned-out ``h`` where
the carry has one (as in Krueger et al.'s LSTM), else the cell's own output.

The masks ``d`` come from each sequence's own key (the same per-sequence keys as
dropout, folded with a stream of their own): drawn anew at every step (``per_step=True``,
the paper's form: ``fold_in(key, t)``), or once per sequence and held at every step
(``per_step=False``, the time-invariant form). Either way they do not depend on the batch
layout or the device count. With ``deterministic=True`` (or :meth:`Cell.step`, which has no
keys) the step is the expected value.

Example:
  >>> import jax, jax.numpy as jnp, recurrent
  >>> cell = recurrent.zoneout(recurrent.lstm(8), h=0.05, c=0.5)
  >>> params = cell.init(jax.random.key(0), 3)
  >>> keys = recurrent.sequence_keys(jax.random.key(1), 2)
  >>> carry, ys = recurrent.scan(cell, params, jnp.ones((2, 6, 3)), key=keys)
  >>> ys.shape, carry.c.shape
  ((2, 6, 8), (2, 8))
"""

import jax
import jax.numpy as jnp

from recurrent import cell as _cell
from recurrent import dropout as _dropout
from recurrent import options as _options

# The stream folded into a sequence's key for zoneout masks (dropout uses 0 and 1).
STREAM = 2


def zoneout(cell: _cell.Cell, *, per_step: bool = True, **rates) -> _cell.Cell:
  """``cell`` with zoneout on the carry fields named in ``rates``.

  Args:
    cell: any :class:`recurrent.Cell` whose carry is a NamedTuple.
    per_step: True (default) draws new masks at every step, as Krueger et al. do; False
      draws one mask per sequence and holds it (time-invariant zoneout).
    **rates: the zoneout probability of each carry field, e.g. ``h=0.05, c=0.5`` for an
      LSTM (Krueger et al.'s Penn Treebank setting); fields not named keep rate 0.

  Returns:
    A :class:`recurrent.Cell` with the same params, carry and gates, and no fast path
    (its step is not the fast path's shape).
  """
  carry = jax.eval_shape(lambda: cell.initial_carry((1,)))
  fields = getattr(carry, "_fields", None)
  if fields is None:
    raise TypeError(f"zoneout needs a cell whose carry is a NamedTuple, got {type(carry)}")
  unknown = sorted(set(rates) - set(fields))
  if unknown:
    raise ValueError(f"zoneout rates name {unknown}; the carry's fields are {list(fields)}")
  if not rates:
    raise ValueError(f"zoneout needs a rate for at least one carry field of {list(fields)}")
  _options.check_flag("per_step", per_step)
  for name, rate in rates.items():
    _options.check_rate(name, rate)
  zoned = [(i, name, rates[name]) for i, name in enumerate(fields) if name in rates]

  def draw(params, keys, num_steps):
    if keys is None:
      return params, None  # deterministic: recur takes the expected value
    batch_shape = keys.shape
    sizes = jax.eval_shape(lambda: cell.initial_carry(batch_shape))
    noise = {}
    for i, name, rate in zoned:
      size = getattr(sizes, name).shape[-1]
      field_keys = _dropout.derive(keys, STREAM, i)  # [B...]

      def mask(k, rate=rate, size=size):
        if per_step:
          per_t = jax.vmap(lambda t: jax.random.fold_in(k, t))(jnp.arange(num_steps))
          return jax.vmap(lambda kt: jax.random.bernoulli(kt, rate, (size,)))(per_t)
        return jnp.broadcast_to(jax.random.bernoulli(k, rate, (size,)), (num_steps, size))

      flat = jax.vmap(mask)(field_keys.reshape(-1))  # [B, T, size]
      noise[name] = jnp.moveaxis(flat, 1, 0).reshape((num_steps,) + batch_shape + (size,))
    return params, noise

  def zone(old, new, noise):
    updates = {}
    for _, name, rate in zoned:
      s_old, s_new = getattr(old, name), getattr(new, name)
      if noise is None:
        updates[name] = rate * s_old + (1.0 - rate) * s_new
      else:
        updates[name] = jnp.where(noise[name], s_old, s_new)
    return new._replace(**updates)

  def recur(params, carry, xp_t, mask=None):
    noise = None
    if isinstance(xp_t, _cell.Noisy):
      xp_t, noise = xp_t.xp, xp_t.noise
    new, h, gates = cell.recur(params, carry, xp_t, mask)
    new = zone(carry, new, noise)
    if "h" in rates:
      h = new.h.astype(h.dtype)
    return new, h, gates

  return cell._replace(
    recur=recur,
    step=_cell.step_of(cell.project, recur),
    name=f"zoneout({cell.name})",
    fast=None,
    draw=_chain(cell.draw, draw),
  )


def _chain(inner, outer):
  """The cell's own ``draw`` (if any) and zoneout's, one after the other."""
  if inner is None:
    return outer

  def draw(params, keys, num_steps):
    params, noise = inner(params, keys, num_steps)
    if noise is not None:
      raise ValueError("zoneout cannot wrap a cell that draws per-step noise of its own")
    return outer(params, keys, num_steps)

  return draw
