"""recurrent: functional LSTM and GRU layers for JAX.

Pure cells (:func:`lstm`, :func:`gru`, :func:`layer_norm_lstm`, :func:`projection_lstm`)
and regularisers that wrap any cell (:func:`zoneout`, :func:`weight_drop`), a ``lax.scan``
driver (:func:`scan`) with one :class:`Options` record, layers (:func:`bidirectional_scan`,
:func:`stack`), time-invariant dropout (:mod:`recurrent.dropout`) and weight converters
(:mod:`recurrent.convert`). Flax modules over them live in
:mod:`recurrent.linen` and :mod:`recurrent.nnx`, imported on first use so that
``import recurrent`` does not import Flax.
"""

import importlib

from recurrent import convert, dropout
from recurrent.cell import Cell, FastPath
from recurrent.dropout import mc_average, sequence_keys
from recurrent.gru import GRUGates, GRUParams, GRUState, ResetBeforeGRUParams, gru
from recurrent.layer_norm_lstm import LayerNormLSTMParams, layer_norm_lstm
from recurrent.layers import Bidirectional, bidirectional, bidirectional_scan, init_layers, stack
from recurrent.lstm import LSTMGates, LSTMParams, LSTMState, lstm
from recurrent.options import Options
from recurrent.projection_lstm import ProjectionLSTMParams, projection_lstm
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
  "LayerNormLSTMParams",
  "LSTMState",
  "Options",
  "ProjectionLSTMParams",
  "ResetBeforeGRUParams",
  "bidirectional",
  "bidirectional_scan",
  "convert",
  "dropout",
  "gru",
  "init_layers",
  "layer_norm_lstm",
  "linen",
  "lstm",
  "mc_average",
  "nnx",
  "projection_lstm",
  "scan",
  "sequence_keys",
  "stack",
  "trace",
  "weight_drop",
  "zoneout",
]
