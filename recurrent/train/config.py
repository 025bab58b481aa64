"""The training config: every field with its default, and the checks run before training.

The configs in :mod:`recurrent.train.configs` start from :func:`base_config` and change what
their task needs; :func:`validate` refuses a config with a field that is not here, a value of
the wrong type, or an impossible value, naming the field. :func:`fields` lists the fields
with their defaults and meanings (``python -m recurrent.train --help`` prints them).

A run continued in a workdir compares its config with the workdir's ``config.json``
(:func:`changes`): the fields of :data:`RUNTIME_FIELDS` may change freely, those of
:data:`FIXED_FIELDS` never, and the others only when asked (``--allow_changes``).
"""

import math

import ml_collections


class UserError(ValueError):
  """A mistake in what the user gave (a config value, a data file, a workdir): the CLI
  prints its message, one line naming the field or file, instead of a traceback."""


class ConfigChangeError(UserError):
  """A run continued in a workdir with a config other than the one it was trained with.

  Attributes:
    changes: ``[(field, saved, new), ...]``, every field that differs (runtime knobs apart).
    fixed: the fields among them that no run may change in a workdir.
  """

  def __init__(self, message: str, changes: list, fixed: list):
    super().__init__(message)
    self.changes, self.fixed = changes, fixed


TASKS = ("adding", "copy", "ptb", "chars")
CELLS = ("lstm", "gru")
OPTIMIZERS = ("sgd", "adam", "adamw")
DROPOUT_KINDS = ("variational", "naive")
WEIGHT_DECAY_KINDS = ("l2", "shrink")
LR_SCHEDULES = ("constant", "step", "cosine")


def base_config() -> ml_collections.ConfigDict:
  """All fields, with defaults for a small adding-problem LSTM."""
  c = ml_collections.ConfigDict()
  c.task = "adding"  # one of TASKS
  c.data_dir = ""  # ptb: folder of ptb.{train,valid,test}.txt; chars: a text file
  c.download = False  # ptb: fetch the files into data_dir first (checked by sha256)
  c.seed = 0  # params, data order and dropout keys all derive from it

  # Task sizes.
  c.seq_len = 50  # T: adding/copy sequence length, LM truncated-BPTT window
  c.copy_symbols = 10  # copy task: how many symbols to remember
  c.copy_alphabet = 8  # copy task: alphabet size

  # Model.
  c.cell = "lstm"  # one of CELLS
  c.hidden_size = 64  # units per recurrent layer
  c.num_layers = 1  # stacked recurrent layers
  c.embed_size = 0  # LM/copy embedding width; 0 means hidden_size
  c.init_scale = 0.0  # > 0: every weight uniform in [-init_scale, init_scale] (Zaremba)
  c.forget_bias = 1.0  # LSTM forget-gate bias at init (Jozefowicz et al. 2015)

  # Dropout: rates are drop probabilities.
  c.dropout_kind = "variational"  # DROPOUT_KINDS; "naive": a new mask per step (Zaremba et al.)
  c.dropout = 0.0  # on every layer's input (embeddings, between layers)
  c.recurrent_dropout = 0.0  # on h_{t-1}; variational only
  c.output_dropout = 0.0  # on the top layer's outputs, before the read-out
  c.embed_dropout = 0.0  # drops whole word types per sequence (Gal & Ghahramani 2016)
  c.untied_masks = False  # variational: each gate its own masks on x and h ("untied")

  # Optimisation.
  c.optimizer = "adam"  # one of OPTIMIZERS
  c.learning_rate = 1e-3  # the initial rate, which lr_schedule may decay
  c.lr_schedule = "constant"  # one of LR_SCHEDULES
  c.lr_decay = 0.5  # "step": lr * lr_decay ** max(epoch + 1 - decay_epoch, 0) (Zaremba)
  c.decay_epoch = 1  # "step": epochs at the full rate
  c.weight_decay = 0.0  # wd, applied as weight_decay_kind says
  # "l2": wd * params joins the gradient (scaled by the lr; adamw: decoupled, its own);
  # "shrink": params *= 1 - wd after every step, as Gal & Ghahramani's code does.
  c.weight_decay_kind = "l2"  # "l2": wd * params in the gradient; "shrink": params *= 1 - wd
  c.max_grad_norm = 0.0  # > 0: clip gradients by global norm
  # Language models: differentiate the per-step losses summed over the window (and averaged
  # over the batch), as Zaremba et al. and Gal & Ghahramani do; their lr and clipping norm
  # assume it. False differentiates the mean over tokens. Metrics are per token either way.
  c.loss_sum_over_time = False  # LMs: the loss summed over the window, not the token mean
  c.batch_size = 64  # global batch, split over devices
  c.train_steps = 1000  # total optimiser steps; LM tasks: epochs * windows per epoch
  c.epochs = 0  # LM tasks: > 0 overrides train_steps with whole epochs
  c.max_train_minutes = 0.0  # > 0: pause (evaluate, checkpoint) after this much wall time

  # Evaluation, logging, checkpoints.
  c.eval_every = 200  # steps between evaluations
  c.eval_examples = 1024  # synthetic tasks: held-out examples
  c.mc_samples = 0  # > 0: the final evaluations also with MC dropout over this many samples
  c.mc_chunk = 10  # MC samples run at once (memory grows with it)
  c.log_every = 50  # steps between metric lines
  c.checkpoint_every = 500  # steps between checkpoints
  c.keep_checkpoints = 3  # how many of the newest checkpoints are kept
  c.progress = True  # a progress bar on stderr
  c.sample_length = 0  # chars task: characters sampled at the end
  return c


def fields() -> dict:
  """Every field of :func:`base_config`: ``{name: (default, meaning)}``, in its order.

  The meaning is the comment beside the field in ``base_config``, read from its source, with
  the names of the choice tuples (``TASKS``, ...) spelled out.

  Example:
    >>> fields()["task"]
    ('adding', 'one of adding | copy | ptb | chars')
  """
  import inspect
  import re

  defaults = base_config()
  out = {}
  for line in inspect.getsource(base_config).splitlines():
    match = re.fullmatch(r"\s*c\.(\w+) = [^#]*?(?:\s+# (.*))?", line)
    if match:
      meaning = re.sub(
        r"\b[A-Z][A-Z_]+\b",
        lambda m: " | ".join(globals()[m[0]]) if isinstance(globals().get(m[0]), tuple) else m[0],
        match[2] or "",
      )
      out[match[1]] = (defaults[match[1]], meaning)
  return out


_POSITIVE = (
  "seq_len",
  "copy_symbols",
  "copy_alphabet",
  "hidden_size",
  "num_layers",
  "batch_size",
  "eval_every",
  "eval_examples",
  "log_every",
  "checkpoint_every",
  "keep_checkpoints",
  "mc_chunk",
  "decay_epoch",
)
_NON_NEGATIVE = (
  "embed_size",
  "init_scale",
  "weight_decay",
  "max_grad_norm",
  "max_train_minutes",
  "train_steps",
  "epochs",
  "mc_samples",
  "sample_length",
)
_RATES = ("dropout", "recurrent_dropout", "output_dropout", "embed_dropout")
_CHOICES = {
  "task": TASKS,
  "cell": CELLS,
  "optimizer": OPTIMIZERS,
  "dropout_kind": DROPOUT_KINDS,
  "weight_decay_kind": WEIGHT_DECAY_KINDS,
  "lr_schedule": LR_SCHEDULES,
}


# How the fields may change between the runs of one workdir (see :func:`changes`).
# Runtime knobs: how a run goes, not what it computes; never counted as changes.
RUNTIME_FIELDS = (
  "download",
  "progress",
  "max_train_minutes",
  "mc_chunk",
  "checkpoint_every",
  "keep_checkpoints",
)
# Never changed in a workdir, even with --allow_changes: they change the shapes of the
# checkpointed params or carry (cell, sizes, vocabulary, batch) or the data the run trains
# and evaluates on (task, files, seed, lengths, held-out examples), so the checkpoint or the
# metrics before the change would not belong to the run after it.
FIXED_FIELDS = (
  "task",
  "data_dir",
  "seed",
  "seq_len",
  "copy_symbols",
  "copy_alphabet",
  "cell",
  "hidden_size",
  "num_layers",
  "embed_size",
  "batch_size",
  "eval_examples",
)
# Changed with --allow_changes only if the optimiser state keeps its structure (adam to
# sgd, clipping or weight decay switched on or off, a constant rate to a schedule do not).
OPTIMIZER_FIELDS = (
  "optimizer",
  "max_grad_norm",
  "weight_decay",
  "weight_decay_kind",
  "lr_schedule",
)


def changes(saved: dict, config: ml_collections.ConfigDict) -> list:
  """``[(field, saved_value, new_value), ...]``: the fields of ``config`` that differ from
  ``saved`` (a workdir's ``config.json``), in :func:`base_config`'s order, the fields of
  :data:`RUNTIME_FIELDS` apart. A field missing from ``saved`` counts as its default.

  Example:
    >>> saved = base_config().to_dict()
    >>> c = base_config()
    >>> c.learning_rate, c.progress = 0.01, False
    >>> changes(saved, c)
    [('learning_rate', 0.001, 0.01)]
  """
  defaults = base_config()
  out = []
  for name in defaults.keys():
    if name in RUNTIME_FIELDS:
      continue
    old, new = saved.get(name, defaults[name]), config[name]
    if old != new:
      out.append((name, old, new))
  return out


def _type_name(value) -> str:
  return type(value).__name__


def validate(config: ml_collections.ConfigDict, num_devices: int = 1) -> None:
  """Raises :class:`UserError` (a ValueError) naming the first bad field of ``config``.

  Args:
    config: a config built from :func:`base_config`.
    num_devices: devices the batch is split over; ``batch_size`` must divide by it.

  Example:
    >>> c = base_config()
    >>> c.dropout = 1.5
    >>> validate(c)
    Traceback (most recent call last):
    ...
    recurrent.train.config.UserError: config.dropout must be in [0, 1), got 1.5
  """
  base = base_config()
  unknown = sorted(set(config.keys()) - set(base.keys()))
  if unknown:
    raise UserError(f"config has unknown field(s) {unknown}; known fields: {sorted(base.keys())}")
  for name, default in base.items():
    value = config[name]
    ok = isinstance(value, type(default)) and not (
      isinstance(value, bool) and not isinstance(default, bool)
    )
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
      ok = True  # an int where a float is expected is fine (lr = 1)
    if not ok:
      raise UserError(
        f"config.{name} must be {_type_name(default)}, got {value!r} ({_type_name(value)})"
      )
    if isinstance(value, float) and not math.isfinite(value):
      raise UserError(f"config.{name} must be finite, got {value}")
  for name, choices in _CHOICES.items():
    if config[name] not in choices:
      raise UserError(f"config.{name} must be one of {choices}, got {config[name]!r}")
  for name in _POSITIVE:
    if config[name] <= 0:
      raise UserError(f"config.{name} must be > 0, got {config[name]}")
  for name in _NON_NEGATIVE:
    if config[name] < 0:
      raise UserError(f"config.{name} must be >= 0, got {config[name]}")
  for name in _RATES:
    if not 0.0 <= config[name] < 1.0:
      raise UserError(f"config.{name} must be in [0, 1), got {config[name]}")
  if config.learning_rate <= 0:
    raise UserError(f"config.learning_rate must be > 0, got {config.learning_rate}")
  if not 0.0 < config.lr_decay <= 1.0:
    raise UserError(f"config.lr_decay must be in (0, 1], got {config.lr_decay}")
  if config.lr_schedule == "step" and config.task not in ("ptb", "chars"):
    raise UserError(
      f"config.lr_schedule='step' decays per epoch, which only language-model tasks have;"
      f" got task {config.task!r} (use 'cosine' or 'constant')"
    )
  if config.train_steps == 0 and config.epochs == 0:
    raise UserError("config.train_steps and config.epochs are both 0; set one of them")
  if config.batch_size % num_devices:
    raise UserError(
      f"config.batch_size ({config.batch_size}) must be divisible by the number of"
      f" devices ({num_devices})"
    )
  if config.dropout_kind == "naive" and config.recurrent_dropout > 0:
    raise UserError(
      "config.recurrent_dropout must be 0 with dropout_kind='naive' (a new mask per step"
      f" on h_t is what Gal & Ghahramani show fails), got {config.recurrent_dropout}"
    )
  if config.untied_masks and config.dropout_kind != "variational":
    raise UserError(
      f"config.untied_masks needs dropout_kind='variational', got {config.dropout_kind!r}"
    )
  if config.weight_decay_kind == "shrink" and config.optimizer == "adamw":
    raise UserError(
      "config.weight_decay_kind='shrink' with optimizer='adamw' would decay twice; use"
      " 'adam' or weight_decay_kind='l2'"
    )
  if config.mc_samples and config.task == "adding":
    raise UserError(
      "config.mc_samples averages softmax probabilities; task 'adding' is a regression"
      f" (got mc_samples={config.mc_samples})"
    )
  if config.loss_sum_over_time and config.task not in ("ptb", "chars"):
    raise UserError(
      f"config.loss_sum_over_time is for language-model tasks, got task {config.task!r}"
    )
  if config.task in ("ptb", "chars") and not config.data_dir:
    raise UserError(f"config.data_dir must name the {config.task} data, got ''")
  if config.task == "copy" and config.seq_len <= 2 * config.copy_symbols:
    raise UserError(
      f"config.seq_len ({config.seq_len}) must exceed 2 * copy_symbols"
      f" ({2 * config.copy_symbols}) for the copy task"
    )
