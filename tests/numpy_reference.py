"""A plain NumPy (float64) reference for the LSTM and GRU, written from the equations in the
docstrings of ``recurrent/lstm.py`` and ``recurrent/gru.py``, not from the library code.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

Params are read by field name only (``w_ih [I, G*H]``, ``w_hh [H, G*H]``, and ``b [4H]``
for the LSTM or ``b_ih, b_hh [3H]`` for the GRU), gate blocks in the documented order
(``i, f, g, o`` and ``r, z, n``). Everything is converted to float64.

Dropout masks follow ``recurrent/cell.py``: an input mask multiplies ``x_t`` before the
input matmul, a recurrent mask multiplies ``h_{t-1}`` only where it enters a recurrent
matmul (never in ``c`` nor in ``z * h``). A mask is one array (shared by the gates) or a
list of G arrays, one per gate, in gate order.
"""

import numpy as np


def _f64(a):
  return np.asarray(a, dtype=np.float64)


def sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _blocks(a, num_gates):
  """``[..., G*H]`` -> list of G ``[..., H]`` (gate order)."""
  return np.split(_f64(a), num_gates, axis=-1)


def _per_gate(mask, num_gates):
  """None, one mask or G masks -> a list of G masks (None meaning no mask)."""
  if isinstance(mask, (list, tuple)):
    assert len(mask) == num_gates, (len(mask), num_gates)
    return [_f64(m) for m in mask]
  return [None if mask is None else _f64(mask)] * num_gates


def _apply(v, m):
  return v if m is None else v * m


def lstm_step(params, h, c, x, in_mask=None, rec_mask=None):
  """One LSTM step on ``x [..., I]``, ``h, c [..., H]``.

  Returns ``(h', c', gates)`` with ``gates = {'i', 'f', 'g', 'o'}``, each ``[..., H]``.
  """
  w_i = _blocks(params.w_ih, 4)  # W_i, W_f, W_g, W_o: each [I, H]
  w_h = _blocks(params.w_hh, 4)  # W_hi, W_hf, W_hg, W_ho: each [H, H]
  b = _blocks(params.b, 4)
  mi, mh = _per_gate(in_mask, 4), _per_gate(rec_mask, 4)
  x, h, c = _f64(x), _f64(h), _f64(c)
  pre = [_apply(x, mi[k]) @ w_i[k] + _apply(h, mh[k]) @ w_h[k] + b[k] for k in range(4)]
  i, f, o = sigmoid(pre[0]), sigmoid(pre[1]), sigmoid(pre[3])
  g = np.tanh(pre[2])
  c_new = f * c + i * g
  h_new = o * np.tanh(c_new)
  return h_new, c_new, {"i": i, "f": f, "g": g, "o": o}


def gru_step(params, h, x, reset_after=True, in_mask=None, rec_mask=None):
  """One GRU step on ``x [..., I]``, ``h [..., H]``.

  Returns ``(h', gates)`` with ``gates = {'r', 'z', 'n'}``, each ``[..., H]``.
  """
  w_ir, w_iz, w_in = _blocks(params.w_ih, 3)
  w_hr, w_hz, w_hn = _blocks(params.w_hh, 3)
  b_ir, b_iz, b_in = _blocks(params.b_ih, 3)
  b_hr, b_hz, b_hn = _blocks(params.b_hh, 3)
  mi, mh = _per_gate(in_mask, 3), _per_gate(rec_mask, 3)
  x, h = _f64(x), _f64(h)
  r = sigmoid(_apply(x, mi[0]) @ w_ir + b_ir + _apply(h, mh[0]) @ w_hr + b_hr)
  z = sigmoid(_apply(x, mi[1]) @ w_iz + b_iz + _apply(h, mh[1]) @ w_hz + b_hz)
  x_n = _apply(x, mi[2]) @ w_in + b_in
  h_n = _apply(h, mh[2])
  if reset_after:
    n = np.tanh(x_n + r * (h_n @ w_hn + b_hn))
  else:
    n = np.tanh(x_n + (r * h_n) @ w_hn + b_hn)
  h_new = (1.0 - z) * n + z * h  # the unmasked h
  return h_new, {"r": r, "z": z, "n": n}


def _row(mask, b):
  """Sequence ``b``'s mask(s) from ``[B, F]`` masks (or a list of them)."""
  if mask is None:
    return None
  if isinstance(mask, (list, tuple)):
    return [_f64(m)[b] for m in mask]
  return _f64(mask)[b]


def run(
  kind,
  params,
  xs,
  *,
  initial_carry=None,
  seq_lengths=None,
  reverse=False,
  reset_after=True,
  in_mask=None,
  rec_mask=None,
):
  """Runs an LSTM (``kind='lstm'``) or GRU (``kind='gru'``) over ``xs [B, T, I]``.

  Args:
    initial_carry: dict ``{'h': [B, H]}`` (and ``'c'`` for the LSTM); zeros if None.
    seq_lengths: ``[B]`` ints; sequence b runs steps ``0..len-1`` (or ``len-1..0`` when
      ``reverse``); steps ``t >= len`` output zeros and leave the carry unchanged.
    reverse: process each sequence backwards within its own length.
    reset_after: GRU form (ignored for the LSTM).
    in_mask: ``[B, I]`` or a list of G of them. rec_mask: ``[B, H]`` or a list of G.

  Returns:
    dict with ``'outputs' [B, T, H]``, ``'final'`` (dict of ``[B, H]`` carries), and the
    per-step trace ``'carries'`` (dict of ``[B, T, H]``: the carry after step t; at a
    padding step, the carry held at that point of the processing order) and ``'gates'``
    (dict of ``[B, T, H]``, zero at padding steps).
  """
  assert kind in ("lstm", "gru"), kind
  xs = _f64(xs)
  num_batch, num_steps, _ = xs.shape
  hidden = _f64(params.w_hh).shape[0]
  fields = ("h", "c") if kind == "lstm" else ("h",)
  gate_names = ("i", "f", "g", "o") if kind == "lstm" else ("r", "z", "n")
  if initial_carry is None:
    initial_carry = {k: np.zeros((num_batch, hidden)) for k in fields}
  lengths = np.full(num_batch, num_steps) if seq_lengths is None else np.asarray(seq_lengths)

  outputs = np.zeros((num_batch, num_steps, hidden))
  final = {k: np.zeros((num_batch, hidden)) for k in fields}
  carries = {k: np.zeros((num_batch, num_steps, hidden)) for k in fields}
  gates = {k: np.zeros((num_batch, num_steps, hidden)) for k in gate_names}

  for b in range(num_batch):
    length = int(lengths[b])
    carry = {k: _f64(initial_carry[k])[b] for k in fields}
    mi, mh = _row(in_mask, b), _row(rec_mask, b)
    order = range(length - 1, -1, -1) if reverse else range(length)
    for t in order:
      if kind == "lstm":
        h, c, g = lstm_step(params, carry["h"], carry["c"], xs[b, t], mi, mh)
        carry = {"h": h, "c": c}
      else:
        h, g = gru_step(params, carry["h"], xs[b, t], reset_after, mi, mh)
        carry = {"h": h}
      outputs[b, t] = carry["h"]
      for k in fields:
        carries[k][b, t] = carry[k]
      for k in gate_names:
        gates[k][b, t] = g[k]
    # Padding steps hold the carry: in a forward run they come after the last valid
    # step (the final carry), in a reverse run before the first one (the initial carry).
    held = {k: _f64(initial_carry[k])[b] for k in fields} if reverse else carry
    for k in fields:
      carries[k][b, length:] = held[k]
      final[k][b] = carry[k]
  return {"outputs": outputs, "final": final, "carries": carries, "gates": gates}
