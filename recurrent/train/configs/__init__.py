"""The built-in configs, one module per task, each with ``get_config(variant)``.

``python -m recurrent.train --config NAME[:VARIANT]`` trains one of them (``adding``,
``copy``, ``chars``, ``ptb``; no variant: the module's default), and
``--config FILE[:VARIANT]`` a config file of your own, a module with ``get_config`` that
starts from :func:`recurrent.train.config.base_config` as these do.

Example:
  >>> from recurrent.train import configs
  >>> configs.get_config("adding", "tiny").train_steps
  20
  >>> configs.resolve("ptb:gal_medium").endswith("configs/ptb.py:gal_medium")
  True
"""

import importlib
import pathlib

NAMES = ("adding", "copy", "chars", "ptb")
_DIR = pathlib.Path(__file__).resolve().parent


def get_config(name: str, variant: str | None = None):
  """The built-in config ``name``'s ``get_config(variant)``; no variant: its default one."""
  if name not in NAMES:
    raise ValueError(f"no built-in config {name!r}; the built-in configs: {', '.join(NAMES)}")
  module = importlib.import_module(f"{__name__}.{name}")
  return module.get_config() if variant is None else module.get_config(variant)


def resolve(argument: str) -> str:
  """``--config``'s value as the ``FILE[:VARIANT]`` that ml_collections loads.

  ``NAME[:VARIANT]`` names a built-in config; anything else must be a file.

  Raises:
    ValueError: ``argument`` is neither, with the built-in names.
  """
  file, colon, variant = argument.partition(":")
  if file in NAMES:
    return f"{_DIR / file}.py{colon}{variant}"
  if pathlib.Path(file).is_file():
    return argument
  raise ValueError(
    f"{file!r} is neither a built-in config nor a file; the built-in configs:"
    f" {', '.join(NAMES)} (NAME or NAME:VARIANT), or give a file, path/to/config.py[:VARIANT]"
  )
