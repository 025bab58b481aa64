"""Weight converters to and from PyTorch ``nn.LSTM``/``nn.GRU`` and Flax linen cells.

Shape legend: I input size, H hidden size, G gates (4 LSTM, 3 GRU).

Exactness:

* PyTorch GRU <-> :class:`recurrent.GRUParams`: exact both ways (same gate order r, z, n,
  weights transposed, both biases kept).
* PyTorch LSTM -> :class:`recurrent.LSTMParams`: the two biases are summed into ``b``;
  the function computed is the same, up to the float rounding of that sum. Back to
  PyTorch, ``b`` goes to ``bias_ih`` and ``bias_hh`` is zero: the same function, not the
  same two tensors.
* Flax ``LSTMCell``/``OptimizedLSTMCell`` <-> :class:`recurrent.LSTMParams`: exact both
  ways (Flax has only the hidden bias). Flax's carry is ``(c, h)``, ours
  ``LSTMState(h, c)``.
* Flax ``GRUCell`` -> :class:`recurrent.GRUParams`: exact. Back to Flax, the ``r`` and
  ``z`` parts of ``b_hh`` are added into Flax's input biases (Flax has no ``hr``/``hz``
  bias): the same function up to rounding of that sum.
* PyTorch LSTM with ``proj_size > 0`` <-> :class:`ProjectionLSTMParams`: as the LSTM
  (biases summed into ``b``), and ``w_hr = weight_hr.T`` exactly.
* Not possible: any reset-before GRU (neither PyTorch nor Flax computes that form), and
  projection LSTMs to or from Flax (Flax has none).

PyTorch tensors are read with ``.detach().cpu().numpy()`` and written back as NumPy
arrays, so this module never imports torch; load them with
``module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})``.
"""

import re

import jax.numpy as jnp
import numpy as np

from recurrent.gru import GRUParams
from recurrent.layers import Bidirectional
from recurrent.lstm import LSTMParams
from recurrent.projection_lstm import ProjectionLSTMParams

_TORCH_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def _numpy(t) -> np.ndarray:
  if hasattr(t, "detach"):
    t = t.detach().cpu().numpy()
  return np.asarray(t)


def _torch_layer(sd: dict, suffix: str, dtype):
  w_ih, w_hh = _numpy(sd["weight_ih" + suffix]), _numpy(sd["weight_hh" + suffix])
  w_hr = sd.get("weight_hr" + suffix)
  hidden = w_hh.shape[1] if w_hr is None else w_hr.shape[1]  # weight_hr is [P, H]
  gates = w_hh.shape[0] // hidden
  zeros = np.zeros(w_hh.shape[0], w_hh.dtype)
  b_ih = _numpy(sd.get("bias_ih" + suffix, zeros))
  b_hh = _numpy(sd.get("bias_hh" + suffix, zeros))
  as_jnp = lambda a: jnp.asarray(a, dtype or a.dtype)  # noqa: E731
  if w_hr is not None:  # nn.LSTM(proj_size=P): weight_hr [P, H], weight_hh [4H, P]
    w_hr = _numpy(w_hr)
    if w_hh.shape != (4 * hidden, w_hr.shape[0]):
      raise ValueError(
        f"weight_hh{suffix} has shape {w_hh.shape} and weight_hr{suffix} {w_hr.shape};"
        " expected [4H, P] and [P, H]"
      )
    b = as_jnp(b_ih + b_hh)
    return ProjectionLSTMParams(as_jnp(w_ih.T), as_jnp(w_hh.T), b, as_jnp(w_hr.T))
  if gates == 4:
    return LSTMParams(as_jnp(w_ih.T), as_jnp(w_hh.T), as_jnp(b_ih + b_hh))
  if gates == 3:
    return GRUParams(as_jnp(w_ih.T), as_jnp(w_hh.T), as_jnp(b_ih), as_jnp(b_hh))
  raise ValueError(
    f"weight_hh{suffix} has shape {w_hh.shape}; expected [4H, H] (LSTM) or [3H, H] (GRU)"
  )


def from_torch(state_dict, *, dtype=None) -> list:
  """PyTorch ``nn.LSTM``/``nn.GRU`` state dict -> stack params for :func:`recurrent.stack`.

  Args:
    state_dict: ``module.state_dict()`` (torch tensors or NumPy arrays), all layers and
      both directions; LSTM or GRU is read off the shapes. ``bias=False`` modules load
      with zero biases.
    dtype: dtype of the result; None keeps the tensors' dtype.

  Returns:
    A list with one entry per layer: :class:`LSTMParams`/:class:`GRUParams` (or
    :class:`ProjectionLSTMParams` for ``proj_size > 0``), or a
    :class:`recurrent.Bidirectional` pair of them. Use with ``recurrent.lstm(H)``,
    ``recurrent.gru(H)`` (reset-after, PyTorch's form) or ``projection_lstm(H, P)``;
    ``forget_bias`` is irrelevant.
  """
  layers = {}
  for name in state_dict:
    match = _TORCH_KEY.match(name)
    if match is None:
      raise ValueError(
        f"state_dict has unexpected key {name!r}; expected PyTorch nn.LSTM/nn.GRU keys"
      )
    layers.setdefault(int(match.group(3)), set()).add(bool(match.group(4)))
  if sorted(layers) != list(range(len(layers))) or not layers:
    raise ValueError(f"state_dict has layers {sorted(layers)}; expected 0..L-1")
  result = []
  for layer in range(len(layers)):
    forward = _torch_layer(state_dict, f"_l{layer}", dtype)
    if True in layers[layer]:
      result.append(Bidirectional(forward, _torch_layer(state_dict, f"_l{layer}_reverse", dtype)))
    else:
      result.append(forward)
  return result


def to_torch(layers) -> dict:
  """Stack params -> a PyTorch ``nn.LSTM``/``nn.GRU`` state dict of NumPy arrays (with
  ``weight_hr_l*`` for :class:`ProjectionLSTMParams`, an ``nn.LSTM(proj_size=P)``'s).

  Args:
    layers: a list of per-layer params (or one layer's params), entries possibly
      :class:`recurrent.Bidirectional`.
  """
  if not isinstance(layers, list):
    layers = [layers]
  sd = {}
  for layer, params in enumerate(layers):
    directions = params if isinstance(params, Bidirectional) else (params,)
    for params_d, suffix in zip(directions, ("", "_reverse")):
      key = f"_l{layer}{suffix}"
      sd["weight_ih" + key] = np.asarray(params_d.w_ih).T.copy()
      sd["weight_hh" + key] = np.asarray(params_d.w_hh).T.copy()
      if isinstance(params_d, (LSTMParams, ProjectionLSTMParams)):
        sd["bias_ih" + key] = np.asarray(params_d.b).copy()
        sd["bias_hh" + key] = np.zeros_like(sd["bias_ih" + key])
        if isinstance(params_d, ProjectionLSTMParams):
          sd["weight_hr" + key] = np.asarray(params_d.w_hr).T.copy()
      else:
        sd["bias_ih" + key] = np.asarray(params_d.b_ih).copy()
        sd["bias_hh" + key] = np.asarray(params_d.b_hh).copy()
  return sd


_LSTM_GATES, _GRU_GATES = "ifgo", "rzn"


def from_flax(variables):
  """Flax linen ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` params -> core params.

  Args:
    variables: ``cell.init(...)`` output, or its ``['params']``.

  Returns:
    :class:`LSTMParams` or :class:`GRUParams` (for ``recurrent.gru(H)``, reset-after).
  """
  p = variables.get("params", variables)
  cat = lambda names, leaf: jnp.concatenate([p[n][leaf] for n in names], -1)  # noqa: E731
  if all(f"i{g}" in p and f"h{g}" in p for g in _LSTM_GATES):
    return LSTMParams(
      cat(["i" + g for g in _LSTM_GATES], "kernel"),
      cat(["h" + g for g in _LSTM_GATES], "kernel"),
      cat(["h" + g for g in _LSTM_GATES], "bias"),
    )
  if all(f"i{g}" in p and f"h{g}" in p for g in _GRU_GATES):
    zeros = jnp.zeros_like(p["hn"]["bias"])
    return GRUParams(
      cat(["i" + g for g in _GRU_GATES], "kernel"),
      cat(["h" + g for g in _GRU_GATES], "kernel"),
      cat(["i" + g for g in _GRU_GATES], "bias"),
      jnp.concatenate([zeros, zeros, p["hn"]["bias"]]),
    )
  raise ValueError(f"variables have params {sorted(p)}; expected a Flax LSTMCell or GRUCell")


def to_flax(params) -> dict:
  """Core params -> ``{'params': ...}`` for Flax ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell``."""
  if isinstance(params, LSTMParams):
    ws_i = jnp.split(params.w_ih, 4, -1)
    ws_h, bs = jnp.split(params.w_hh, 4, -1), jnp.split(params.b, 4)
    out = {f"i{g}": {"kernel": w} for g, w in zip(_LSTM_GATES, ws_i)}
    out.update({f"h{g}": {"kernel": w, "bias": b} for g, w, b in zip(_LSTM_GATES, ws_h, bs)})
    return {"params": out}
  if isinstance(params, GRUParams):
    ws_i, ws_h = jnp.split(params.w_ih, 3, -1), jnp.split(params.w_hh, 3, -1)
    b_ih, b_hh = jnp.split(params.b_ih, 3), jnp.split(params.b_hh, 3)
    biases = (b_ih[0] + b_hh[0], b_ih[1] + b_hh[1], b_ih[2])
    out = {f"i{g}": {"kernel": w, "bias": b} for g, w, b in zip(_GRU_GATES, ws_i, biases)}
    out.update({f"h{g}": {"kernel": w} for g, w in zip(_GRU_GATES, ws_h)})
    out["hn"]["bias"] = b_hh[2]
    return {"params": out}
  raise TypeError(f"params must be LSTMParams or GRUParams, got {type(params).__name__}")
