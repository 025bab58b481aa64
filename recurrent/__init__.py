"""recurrent: functional LSTM and GRU layers for JAX.

Pure cells (:func:`lstm`, :func:`gru`), a ``lax.scan`` driver (:func:`scan`), layers
(:func:`bidirectional`, :func:`stack`), time-invariant dropout (:mod:`recurrent.dropout`)
and weight converters (:mod:`recurrent.convert`). Flax modules over them live in
:mod:`recurrent.linen` and :mod:`recurrent.nnx`, imported on first use so that
``import recurrent`` does not import Flax.
"""

import importlib

from recurrent import convert, dropout
from recurrent.cell import Cell, FastPath
from recurrent.dropout import mc_average, sequence_keys
from recurrent.gru import GRUGates, GRUParams, GRUState, gru
from recurrent.layers import Bidirectional, bidirectional, init_layers, stack
from recurrent.lstm import LSTMGates, LSTMParams, LSTMState, lstm
from recurrent.options import Options
from recurrent.scan import scan, trace
from recurrent.weight_drop import weight_drop
from recurrent.zoneout import zoneout

__version__ = "0.1.0"
_LAZY_SUBMODULES = ("linen", "nnx")


def __getattr__(name: str):
  if name in _LAZY_SUBMODULES:
    return importlib.import_module(f"recurrent.{name}")
  raise AttributeError(f"module 'recurrent' has no attribute {name!r}")


__all__ = [
  "Bidirectional",
  "Cell",
  "FastPath",
  "GRUGates",
  "GRUParams",
  "GRUState",
  "LSTMGates",
  "LSTMParams",
  "LSTMState",
  "Options",
  "bidirectional",
  "convert",
  "dropout",
  "gru",
  "init_layers",
  "linen",
  "lstm",
  "mc_average",
  "nnx",
  "scan",
  "sequence_keys",
  "stack",
  "trace",
  "weight_drop",
  "zoneout",
]
