"""The options of a recurrent run, in one record checked once where it is made.

:func:`recurrent.scan`, :func:`recurrent.stack`, :func:`recurrent.bidirectional_scan` and the
Flax layers take these fields as keyword arguments, build one :class:`Options` (which
checks every field) and pass it down unchanged; nothing below checks them again.

Dropout rates may be Python floats or traced scalars: a rate under ``jit`` or ``vmap``
(a sweep over the rate in one program) draws masks at every rate, 0 included, while a
static ``0.0`` builds the program without masks.
"""

import dataclasses
import numbers
from typing import Any, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Rate = Union[float, jax.Array]
LAYOUTS = ("auto", "batch", "feature", "unbatched")
MERGES = ("concat", "sum", "mean", "mul", "none")


def _is_traced(value) -> bool:
  return isinstance(value, jax.core.Tracer)


def check_rate(name: str, value) -> None:
  """A rate is a float in [0, 1), or a floating scalar array (traced or not)."""
  if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
    if not 0.0 <= value < 1.0:
      raise ValueError(f"{name} must be in [0, 1), got {value}")
    return
  if hasattr(value, "dtype") and hasattr(value, "shape"):
    if np.shape(value) != () or not jnp.issubdtype(value.dtype, jnp.floating):
      raise TypeError(
        f"{name} must be a float in [0, 1) or a floating scalar array, got an array of"
        f" shape {np.shape(value)} and dtype {value.dtype}"
      )
    if not _is_traced(value):
      check_rate(name, float(value))
    return
  raise TypeError(f"{name} must be a float in [0, 1), got {value!r}")


def is_on(rate) -> bool:
  """Whether a rate needs masks: anything but a static zero (a traced rate always does)."""
  return _is_traced(rate) or hasattr(rate, "shape") or rate != 0.0


def check_flag(name: str, value) -> None:
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(
      f"{name} must be a Python bool (a static flag, not a traced value), got {value!r}"
    )


def _check_count(name: str, value, allow_none: bool) -> None:
  if value is None and allow_none:
    return
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or value < 1:
    expected = "None or a positive int" if allow_none else "a positive int"
    raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class Options:
  """How a sequence is run. Made once at the public boundary, where every field is checked.

  Attributes:
    reverse: run from the last step to the first, each sequence within its own length.
    time_major: time is the first axis of the inputs and outputs (``[T, B..., F]``).
    unroll: steps per loop iteration, passed to ``lax.scan``.
    remat_every: None, or k: rematerialise the recurrence in chunks of k steps.
    dropout: rate of time-invariant dropout on each layer's input; for a stack, one rate
      for every layer or a sequence of one per layer.
    recurrent_dropout: rate on the recurrent state where it enters the recurrent matmul;
      one rate, or one per layer.
    per_gate_masks: one mask per gate (Gal & Ghahramani's untied variant).
    deterministic: turn dropout off.
    layout: how the fast path's forward alone lays out its arrays: ``'auto'`` (the
      measured rule of :mod:`recurrent.fused.policy`), ``'batch'`` (``[B, H]`` carries),
      ``'feature'`` (``[H, B]`` carries) or ``'unbatched'`` (a batch of one, ``[H]``
      carries). Gradients always use ``'batch'``.
    projection_chunk: ``'auto'``, None (project all steps at once) or k (a divisor of T):
      how many steps the fast path's forward alone projects at a time.
    merge: how a bidirectional layer joins its two outputs: ``'concat'`` (``[..., 2H]``,
      the default), ``'sum'``, ``'mean'``, ``'mul'`` (Keras' ``merge_mode``), ``'none'``
      (a :class:`recurrent.Bidirectional` pair of outputs, for the top layer only) or a
      function ``merge(forward, backward)`` (Flax's ``merge_fn``).
  """

  reverse: bool = False
  time_major: bool = False
  unroll: int = 1
  remat_every: int | None = None
  dropout: Union[Rate, Sequence[Rate]] = 0.0
  recurrent_dropout: Union[Rate, Sequence[Rate]] = 0.0
  per_gate_masks: bool = False
  deterministic: bool = False
  layout: str = "auto"
  projection_chunk: Any = "auto"
  merge: Any = "concat"

  def __post_init__(self):
    for name in ("reverse", "time_major", "per_gate_masks", "deterministic"):
      check_flag(name, getattr(self, name))
    if not isinstance(self.unroll, (bool, np.bool_)):  # lax.scan takes True: unroll all
      _check_count("unroll", self.unroll, allow_none=False)
    _check_count("remat_every", self.remat_every, allow_none=True)
    for name in ("dropout", "recurrent_dropout"):
      for rate in self.rates(name):
        check_rate(name, rate)
    if self.layout not in LAYOUTS:
      raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
    if not (callable(self.merge) or (isinstance(self.merge, str) and self.merge in MERGES)):
      raise ValueError(
        f"merge must be one of {MERGES} or a function merge(forward, backward), got {self.merge!r}"
      )
    if not (isinstance(self.projection_chunk, str) and self.projection_chunk == "auto"):
      _check_count("projection_chunk", self.projection_chunk, allow_none=True)

  def rates(self, name: str) -> tuple:
    """The rates of ``name`` (``'dropout'`` or ``'recurrent_dropout'``) as a tuple."""
    value = getattr(self, name)
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)

  def per_layer(self, num_layers: int) -> list:
    """One :class:`Options` per layer, each with that layer's two rates."""
    rates = {}
    for name in ("dropout", "recurrent_dropout"):
      value = getattr(self, name)
      if isinstance(value, (tuple, list)):
        if len(value) != num_layers:
          raise ValueError(f"{name} has {len(value)} rates; expected one per layer ({num_layers})")
        rates[name] = tuple(value)
      else:
        rates[name] = (value,) * num_layers
    return [
      dataclasses.replace(self, dropout=d, recurrent_dropout=r)
      for d, r in zip(rates["dropout"], rates["recurrent_dropout"])
    ]

  def one_layer(self, caller: str) -> "Options":
    """These options, which must hold one rate of each kind (not one per layer)."""
    for name in ("dropout", "recurrent_dropout"):
      if isinstance(getattr(self, name), (tuple, list)):
        raise TypeError(
          f"{caller}() takes one {name} rate, got {getattr(self, name)!r}; per-layer rates"
          " are for recurrent.stack"
        )
    return self

  @property
  def dropout_on(self) -> bool:
    """Whether any mask is drawn: not deterministic, and some rate not a static zero."""
    rates = self.rates("dropout") + self.rates("recurrent_dropout")
    return not self.deterministic and any(is_on(r) for r in rates)


FIELDS = tuple(f.name for f in dataclasses.fields(Options))


def make(caller: str, options: "Options | None", kwargs: dict) -> Options:
  """The :class:`Options` of a call: ``options``, or one made from keyword arguments."""
  unknown = sorted(set(kwargs) - set(FIELDS))
  if unknown:
    raise TypeError(f"{caller}() got unexpected arguments {unknown}")
  if options is None:
    return Options(**kwargs)
  if not isinstance(options, Options):
    raise TypeError(f"options must be a recurrent.Options, got {type(options).__name__}")
  return dataclasses.replace(options, **kwargs) if kwargs else options
