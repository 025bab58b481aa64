"""``python -m recurrent.train [--config CONFIG] [--config.FIELD=VALUE ...] [--workdir DIR]``.

Parses flags and calls :func:`recurrent.train.train_and_evaluate`; nothing else.
CONFIG is a built-in config, NAME or NAME:VARIANT (adding, copy, chars, ptb: ``--config
ptb:zaremba_small``), or a config file of your own, FILE or FILE:VARIANT (``--config
path/to/mine.py:tiny``); without it, it trains the default config, an LSTM on the adding
problem.

A user error (a config value out of its range, a missing or unreadable data file, a workdir
that cannot be written, a config changed in a workdir) prints one line, ``error: ...``,
naming the field or the file, and exits with status 2; ``--debug`` shows the traceback
instead. A flag that does not parse (``--config.hidden_size=abc``, an unknown ``--config``)
is absl's ``FATAL Flags parsing error: ...``, status 1.
"""

import pathlib
import sys
import textwrap

from absl import app, flags, logging
from ml_collections.config_flags import config_flags as _ml_config_flags

from recurrent.train import configs
from recurrent.train.config import FIXED_FIELDS, RUNTIME_FIELDS, UserError, fields
from recurrent.train.loop import train_and_evaluate
from recurrent.train.records import MetricsLog


def _fields_help(width: int = 100) -> str:
  """The config fields, their defaults and meanings, for ``--help``."""
  lines = [
    "config fields: override any with --config.FIELD=VALUE. The defaults are base_config's;",
    "the --config you choose changes some (a run writes its values to WORKDIR/config.json).",
    "",
  ]
  rows = [(name, repr(default), meaning) for name, (default, meaning) in fields().items()]
  name_width = max(len(name) for name, _, _ in rows)
  value_width = max(len(value) for _, value, _ in rows)
  for name, value, meaning in rows:
    head = f"  {name:<{name_width}}  {value:<{value_width}}  "
    lines += textwrap.wrap(
      meaning, width, initial_indent=head, subsequent_indent=" " * len(head)
    ) or [head.rstrip()]
  return "\n".join(lines)


# absl prints the main module's docstring first under --help (a '%' would be a format field).
__doc__ += "\n" + _fields_help().replace("%", "%%") + "\n"


class _ConfigParser(_ml_config_flags.ConfigFileFlagParser):
  """``--config``'s parser: a built-in name or a file, each with an optional ``:VARIANT``."""

  def parse(self, argument):
    return super().parse(configs.resolve(argument))


# DEFINE_config_file with this parser: ml_collections has no public hook for one.
config_flag = flags.DEFINE_flag(
  _ml_config_flags._ConfigFlag(
    parser=_ConfigParser("config"),
    serializer=flags.ArgumentSerializer(),
    name="config",
    default="adding",
    help_string=f"A built-in config, NAME or NAME:VARIANT ({', '.join(configs.NAMES)}), or a"
    " config file, FILE or FILE:VARIANT.",
  )
)
workdir_flag = flags.DEFINE_string(
  "workdir", None, "Folder for checkpoints, metrics.jsonl and curves.png; resumes if present."
)

distributed_flag = flags.DEFINE_bool(
  "distributed",
  False,
  "Multi-host: call jax.distributed.initialize() first. Cloud TPU pods, SLURM and Open MPI"
  " need nothing more; elsewhere set JAX_COORDINATOR_ADDRESS=host:port and pass"
  " --num_processes and --process_id.",
)
num_processes_flag = flags.DEFINE_integer("num_processes", None, "With --distributed.")
process_id_flag = flags.DEFINE_integer("process_id", None, "With --distributed.")
allow_changes_flag = flags.DEFINE_bool(
  "allow_changes",
  False,
  "Continue the run in --workdir with a config that differs from its config.json (say, a"
  " new learning_rate or more train_steps). Fields that change the checkpoint's shapes or"
  f" the data ({', '.join(FIXED_FIELDS)}) cannot change even so;"
  f" {', '.join(RUNTIME_FIELDS)} may change without it.",
)
debug_flag = flags.DEFINE_bool(
  "debug", False, "On a user error, show the traceback instead of the one-line message."
)


def _error_line(error: BaseException) -> str:
  """One line for a user error: its message, or an OSError's reason and file."""
  if isinstance(error, OSError) and error.strerror:
    files = [f for f in (error.filename, error.filename2) if f is not None]
    return f"{error.strerror}: {' -> '.join(str(f) for f in files)}" if files else error.strerror
  return " ".join(str(error).split("\n")).strip() or type(error).__name__


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    _main()
  except (UserError, OSError) as e:  # what the user gave: config, data files, workdir
    if debug_flag.value:
      raise
    print(f"error: {_error_line(e)}", file=sys.stderr)
    sys.exit(2)


def _main():
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  import jax

  if distributed_flag.value:
    jax.distributed.initialize(
      num_processes=num_processes_flag.value, process_id=process_id_flag.value
    )
  workdir = pathlib.Path(workdir_flag.value or f"runs/{config_flag.value.task}")
  log = workdir / "metrics.jsonl"
  before = MetricsLog.read(log)
  result = train_and_evaluate(config_flag.value, workdir, allow_changes=allow_changes_flag.value)
  if jax.process_index() != 0:
    return
  if before and MetricsLog.read(log) == before:  # nothing trained or evaluated: it was done
    print(f"already finished at step {int(result.state.step)}: nothing to do in {workdir}")
    print(f"results: {log}, {workdir / 'curves.png'}; the last evaluations:")
    for split, metrics in result.metrics.items():
      values = (f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())
      print(f"  {split}: {' '.join(values)}")


if __name__ == "__main__":
  app.run(main)
