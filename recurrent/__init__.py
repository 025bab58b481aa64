"""recurrent: functional LSTM and GRU layers for JAX.

Pure cells (:func:`lstm`, :func:`gru`), a ``lax.scan`` driver (:func:`scan`), layers
(:func:`bidirectional`, :func:`stack`), time-invariant dropout (:mod:`recurrent.dropout`)
and weight converters (:mod:`recurrent.convert`).
"""

from recurrent import convert, dropout
from recurrent.cell import Cell
from recurrent.dropout import mc_average, sequence_keys
from recurrent.gru import GRUGates, GRUParams, GRUState, gru
from recurrent.layers import Bidirectional, bidirectional, init_layers, stack
from recurrent.lstm import LSTMGates, LSTMParams, LSTMState, lstm
from recurrent.scan import scan, trace

__version__ = "0.1.0"

__all__ = [
  "Bidirectional",
  "Cell",
  "GRUGates",
  "GRUParams",
  "GRUState",
  "LSTMGates",
  "LSTMParams",
  "LSTMState",
  "bidirectional",
  "convert",
  "dropout",
  "gru",
  "init_layers",
  "lstm",
  "mc_average",
  "scan",
  "sequence_keys",
  "stack",
  "trace",
]
