"""``python -m recurrent.train [--config FILE] [--config.field=value ...] [--workdir DIR]``.

Parses flags and calls :func:`recurrent.train.train_and_evaluate`; nothing else. Without
``--config`` it trains the default config, an LSTM on the adding problem.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from recurrent.train.loop import train_and_evaluate

_DEFAULT = pathlib.Path(__file__).resolve().parents[2] / "configs" / "adding.py"

config_flag = config_flags.DEFINE_config_file(
  "config", str(_DEFAULT), "A config file in configs/ (default: the adding problem)."
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


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  if distributed_flag.value:
    import jax

    jax.distributed.initialize(
      num_processes=num_processes_flag.value, process_id=process_id_flag.value
    )
  workdir = workdir_flag.value or f"runs/{config_flag.value.task}"
  train_and_evaluate(config_flag.value, workdir)


if __name__ == "__main__":
  app.run(main)
