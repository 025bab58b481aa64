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

Dtypes: the converters from PyTorch and Flax keep the weights' dtype unless ``dtype=``
asks for another. float64 weights stay float64 where JAX has it (``jax_enable_x64``);
without it they are refused rather than silently rounded: pass ``dtype=jnp.float32``.

Whole models: ``prefix=`` picks the recurrent module out of a larger model's state dict
(``prefix='rnn.'`` for ``model.rnn``'s keys ``rnn.weight_ih_l0``, ...) or, for Flax, the
cell's params out of a model's (``prefix='RNN_0/cell'``, the ``/``-joined path of
``flax.traverse_util.flatten_dict(params, sep='/')``). The converters back take it too,
to make a dict that merges into the model's.

Target cells: PyTorch's and Flax's GRUs are reset-after, and give :class:`GRUParams`,
which ``recurrent.scan``, ``stack`` and ``trace`` refuse for a
``recurrent.gru(H, reset_after=False)`` (whose params are :class:`ResetBeforeGRUParams`);
the converters back refuse ``ResetBeforeGRUParams``. Pass ``cell=`` (the cell the params
are for) to check the params' type and shapes against the cell's at conversion.
"""

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from recurrent import _checks
from recurrent.gru import GRUParams, ResetBeforeGRUParams
from recurrent.layers import Bidirectional
from recurrent.lstm import LSTMParams
from recurrent.projection_lstm import ProjectionLSTMParams

_TORCH_KEY = re.compile(r"^(weight|bias)_(ih|hh|hr)_l(\d+)(_reverse)?$")


def _numpy(t) -> np.ndarray:
  if hasattr(t, "detach"):
    t = t.detach().cpu().numpy()
  return np.asarray(t)


def _converter(dtype, arrays: dict, source: str):
  """``as_jnp(a)``: ``a`` as a JAX array of ``dtype``, or of its own dtype if None. With
  None, float64 among ``arrays`` (``{name: array}``) is refused unless JAX has
  ``jax_enable_x64``: it would round it to float32."""
  if dtype is None and not jax.config.jax_enable_x64:
    for name, a in arrays.items():
      if np.dtype(a.dtype) == np.float64:
        raise ValueError(
          f"{source} {name} is float64, which JAX holds only with jax_enable_x64: pass"
          " dtype=jnp.float32 to convert the weights (or enable x64 to keep float64)"
        )
  if dtype is not None and np.dtype(dtype) == np.float64 and not jax.config.jax_enable_x64:
    raise ValueError("dtype=float64 needs jax_enable_x64: without it JAX holds float32 at most")
  return lambda a: jnp.asarray(a if dtype is None else a.astype(dtype))


def _check_cell(cell, params) -> None:
  """``params`` (one layer's, a :class:`Bidirectional` pair, or a list of layers) suit
  ``cell``: what ``cell.init`` makes (type and shapes). A reset-before GRU takes
  :class:`recurrent.ResetBeforeGRUParams`, so another library's (reset-after) GRU weights
  are refused for it."""
  if cell is None:
    return
  layers = params if isinstance(params, list) else [params]
  flat = [p for layer in layers for p in (layer if isinstance(layer, Bidirectional) else (layer,))]
  for p in flat:
    _checks.params(cell, p)


def _refuse(params, kinds: str, library: str):
  """The TypeError for params no converter takes: a reset-before GRU's are named as such."""
  why = f" ({library} has no reset-before GRU)" if isinstance(params, ResetBeforeGRUParams) else ""
  raise TypeError(f"params must be {kinds}, got {type(params).__name__}{why}")


def _check_prefix(prefix) -> None:
  if not isinstance(prefix, str):
    raise TypeError(f"prefix must be a str, got {prefix!r}")


def _torch_layer(sd: dict, suffix: str, as_jnp):
  w_ih, w_hh = sd["weight_ih" + suffix], sd["weight_hh" + suffix]  # NumPy already
  w_hr = sd.get("weight_hr" + suffix)
  hidden = w_hh.shape[1] if w_hr is None else w_hr.shape[1]  # weight_hr is [P, H]
  gates = w_hh.shape[0] // hidden
  zeros = np.zeros(w_hh.shape[0], w_hh.dtype)
  b_ih = sd.get("bias_ih" + suffix, zeros)
  b_hh = sd.get("bias_hh" + suffix, zeros)
  if w_hr is not None:  # nn.LSTM(proj_size=P): weight_hr [P, H], weight_hh [4H, P]
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


def _unexpected_key(name: str, state_dict) -> str:
  """The message for a key that is not the module's, with the prefixes of the keys that
  would be (a whole model's state dict)."""
  message = f"state_dict has unexpected key {name!r}; expected PyTorch nn.LSTM/nn.GRU keys"
  heads = sorted(
    {
      head + "."
      for head, _, tail in (k.rpartition(".") for k in state_dict)
      if head and _TORCH_KEY.match(tail)
    }
  )
  if heads:
    message += f"; for a whole model's state dict pass prefix= one of {heads}"
  return message


def from_torch(state_dict, *, prefix: str = "", dtype=None, cell=None) -> list:
  """PyTorch ``nn.LSTM``/``nn.GRU`` state dict -> stack params for :func:`recurrent.stack`.

  Args:
    state_dict: ``module.state_dict()`` (torch tensors or NumPy arrays), all layers and
      both directions; LSTM or GRU is read off the shapes. ``bias=False`` modules load
      with zero biases.
    prefix: for a whole model's state dict, the recurrent module's key prefix (e.g.
      ``'rnn.'`` for ``model.rnn``: keys ``rnn.weight_ih_l0``, ...); keys without it are
      the rest of the model's, and ignored. Empty (the default): every key must be the
      module's.
    dtype: dtype of the result; None keeps the tensors' dtype (float64 only with
      ``jax_enable_x64``, else a ValueError: pass ``dtype=jnp.float32``).
    cell: None, or the cell the params are for, which is then checked: a reset-before GRU
      is refused (PyTorch's GRU is reset-after), and the params must be the cell's type
      and shapes.

  Returns:
    A list with one entry per layer: :class:`LSTMParams`/:class:`GRUParams` (or
    :class:`ProjectionLSTMParams` for ``proj_size > 0``), or a
    :class:`recurrent.Bidirectional` pair of them. Use with ``recurrent.lstm(H)``,
    ``recurrent.gru(H)`` (reset-after, PyTorch's form) or ``projection_lstm(H, P)``;
    ``forget_bias`` is irrelevant.

  Example:
    >>> import numpy as np, recurrent
    >>> H, I = 4, 3
    >>> model_sd = {"embed.weight": np.zeros((10, I), np.float32),
    ...             "rnn.weight_ih_l0": np.zeros((3 * H, I), np.float32),
    ...             "rnn.weight_hh_l0": np.zeros((3 * H, H), np.float32)}
    >>> params = recurrent.convert.from_torch(model_sd, prefix="rnn.", cell=recurrent.gru(H))
    >>> type(params[0]).__name__, params[0].w_hh.shape
    ('GRUParams', (4, 12))
  """
  _check_prefix(prefix)
  if prefix:
    module_sd = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
    if not module_sd:
      raise ValueError(
        f"state_dict has no keys starting with prefix {prefix!r}; its keys are"
        f" {sorted(state_dict)[:8]}{' ...' if len(state_dict) > 8 else ''}"
      )
    state_dict = module_sd
  layers = {}
  for name in state_dict:
    match = _TORCH_KEY.match(name)
    if match is None:
      raise ValueError(_unexpected_key(name, state_dict))
    layers.setdefault(int(match.group(3)), set()).add(bool(match.group(4)))
  if sorted(layers) != list(range(len(layers))) or not layers:
    raise ValueError(f"state_dict has layers {sorted(layers)}; expected 0..L-1")
  arrays = {name: _numpy(value) for name, value in state_dict.items()}
  as_jnp = _converter(dtype, {prefix + k: v for k, v in arrays.items()}, "state_dict's")
  result = []
  for layer in range(len(layers)):
    forward = _torch_layer(arrays, f"_l{layer}", as_jnp)
    if True in layers[layer]:
      result.append(Bidirectional(forward, _torch_layer(arrays, f"_l{layer}_reverse", as_jnp)))
    else:
      result.append(forward)
  _check_cell(cell, result)
  return result


def to_torch(layers, *, prefix: str = "", cell=None) -> dict:
  """Stack params -> a PyTorch ``nn.LSTM``/``nn.GRU`` state dict of NumPy arrays (with
  ``weight_hr_l*`` for :class:`ProjectionLSTMParams`, an ``nn.LSTM(proj_size=P)``'s).

  Args:
    layers: a list of per-layer params (or one layer's params), entries possibly
      :class:`recurrent.Bidirectional`.
    prefix: put before every key (e.g. ``'rnn.'``), to update a whole model's state dict.
    cell: None, or the cell the params are for: a reset-before GRU is refused (PyTorch's
      GRU is reset-after), and the params must be the cell's type and shapes.
  """
  _check_prefix(prefix)
  if not isinstance(layers, list):
    layers = [layers]
  _check_cell(cell, layers)
  sd = {}
  for layer, params in enumerate(layers):
    directions = params if isinstance(params, Bidirectional) else (params,)
    for params_d, suffix in zip(directions, ("", "_reverse")):
      if not isinstance(params_d, (LSTMParams, ProjectionLSTMParams, GRUParams)):
        _refuse(params_d, "LSTMParams, ProjectionLSTMParams or GRUParams", "PyTorch")
      key = f"_l{layer}{suffix}"
      sd["weight_ih" + key] = np.asarray(params_d.w_ih).T.copy()
      sd["weight_hh" + key] = np.asarray(params_d.w_hh).T.copy()
      if isinstance(params_d, GRUParams):
        sd["bias_ih" + key] = np.asarray(params_d.b_ih).copy()
        sd["bias_hh" + key] = np.asarray(params_d.b_hh).copy()
      else:
        sd["bias_ih" + key] = np.asarray(params_d.b).copy()
        sd["bias_hh" + key] = np.zeros_like(sd["bias_ih" + key])
        if isinstance(params_d, ProjectionLSTMParams):
          sd["weight_hr" + key] = np.asarray(params_d.w_hr).T.copy()
  return {prefix + name: value for name, value in sd.items()}


_LSTM_GATES, _GRU_GATES = "ifgo", "rzn"


def _is_cell(p) -> bool:
  """Whether ``p`` holds a Flax LSTM or GRU cell's params."""
  return isinstance(p, Mapping) and any(
    all(f"i{g}" in p and f"h{g}" in p for g in gates) for gates in (_LSTM_GATES, _GRU_GATES)
  )


def _cell_paths(p, path=()) -> list:
  """The ``/``-joined paths of the cells' params nested in ``p``."""
  if _is_cell(p):
    return ["/".join(path)]
  if not isinstance(p, Mapping):
    return []
  return [found for k, v in p.items() for found in _cell_paths(v, path + (str(k),))]


def from_flax(variables, *, prefix: str = "", dtype=None, cell=None):
  """Flax linen ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` params -> core params.

  Args:
    variables: ``cell.init(...)`` output, or its ``['params']``; with ``prefix``, a whole
      model's.
    prefix: the path of the cell's params in a model's, ``/``-joined (as
      ``flax.traverse_util.flatten_dict(params, sep='/')`` names them), e.g.
      ``'RNN_0/cell'`` for a model whose ``nn.RNN`` wraps the cell.
    dtype: dtype of the result; None keeps the params' dtype (float64 only with
      ``jax_enable_x64``, else a ValueError: pass ``dtype=jnp.float32``).
    cell: None, or the cell the params are for, which is then checked: a reset-before GRU
      is refused (Flax's ``GRUCell`` is reset-after), and the params must be the cell's
      type and shapes.

  Returns:
    :class:`LSTMParams` or :class:`GRUParams` (for ``recurrent.gru(H)``, reset-after).
  """
  _check_prefix(prefix)
  p = variables.get("params", variables)
  walked = []
  for name in filter(None, prefix.split("/")):
    if not isinstance(p, Mapping) or name not in p:
      keys = sorted(p) if isinstance(p, Mapping) else type(p).__name__
      where = repr("/".join(walked)) if walked else "the top"
      raise ValueError(
        f"variables have no params at prefix {prefix!r}: at {where} they have {keys}"
      )
    p, walked = p[name], walked + [name]
  if not _is_cell(p):
    found = _cell_paths(p) if isinstance(p, Mapping) else []
    hint = f"; a cell's params are at prefix={found[0]!r}" if found else ""
    keys = sorted(p) if isinstance(p, Mapping) else type(p).__name__
    raise ValueError(f"variables have params {keys}; expected a Flax LSTMCell or GRUCell{hint}")
  leaves = {"/".join([*walked, k, leaf]): v for k, d in p.items() for leaf, v in d.items()}
  as_jnp = _converter(dtype, leaves, "variables'")
  cat = lambda names, leaf: jnp.concatenate([as_jnp(p[n][leaf]) for n in names], -1)  # noqa: E731
  if all(f"i{g}" in p and f"h{g}" in p for g in _LSTM_GATES):
    params = LSTMParams(
      cat(["i" + g for g in _LSTM_GATES], "kernel"),
      cat(["h" + g for g in _LSTM_GATES], "kernel"),
      cat(["h" + g for g in _LSTM_GATES], "bias"),
    )
  else:
    hn = as_jnp(p["hn"]["bias"])
    zeros = jnp.zeros_like(hn)
    params = GRUParams(
      cat(["i" + g for g in _GRU_GATES], "kernel"),
      cat(["h" + g for g in _GRU_GATES], "kernel"),
      cat(["i" + g for g in _GRU_GATES], "bias"),
      jnp.concatenate([zeros, zeros, hn]),
    )
  _check_cell(cell, params)
  return params


def to_flax(params, *, prefix: str = "", cell=None) -> dict:
  """Core params -> ``{'params': ...}`` for Flax ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell``.

  Args:
    params: :class:`LSTMParams` or :class:`GRUParams`.
    prefix: the ``/``-joined path to nest the cell's params under (e.g. ``'RNN_0/cell'``),
      to update a whole model's params.
    cell: None, or the cell the params are for: a reset-before GRU is refused (Flax's
      ``GRUCell`` is reset-after), and the params must be the cell's type and shapes.
  """
  _check_prefix(prefix)
  _check_cell(cell, params)
  if isinstance(params, LSTMParams):
    ws_i = jnp.split(params.w_ih, 4, -1)
    ws_h, bs = jnp.split(params.w_hh, 4, -1), jnp.split(params.b, 4)
    out = {f"i{g}": {"kernel": w} for g, w in zip(_LSTM_GATES, ws_i)}
    out.update({f"h{g}": {"kernel": w, "bias": b} for g, w, b in zip(_LSTM_GATES, ws_h, bs)})
  elif isinstance(params, GRUParams):
    ws_i, ws_h = jnp.split(params.w_ih, 3, -1), jnp.split(params.w_hh, 3, -1)
    b_ih, b_hh = jnp.split(params.b_ih, 3), jnp.split(params.b_hh, 3)
    biases = (b_ih[0] + b_hh[0], b_ih[1] + b_hh[1], b_ih[2])
    out = {f"i{g}": {"kernel": w, "bias": b} for g, w, b in zip(_GRU_GATES, ws_i, biases)}
    out.update({f"h{g}": {"kernel": w} for g, w in zip(_GRU_GATES, ws_h)})
    out["hn"]["bias"] = b_hh[2]
  else:
    _refuse(params, "LSTMParams or GRUParams", "Flax")
  for name in reversed([n for n in prefix.split("/") if n]):
    out = {name: out}
  return {"params": out}
