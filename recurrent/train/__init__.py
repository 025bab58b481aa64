"""Training: loop, tasks and data, checkpoints and the command line.

``python -m recurrent.train`` and the notebooks call :func:`train_and_evaluate`. Its
dependencies are the ``train`` extra: ``pip install 'recurrent[train]'``.
"""

import importlib.util

_MISSING = [
  name
  for name in ("optax", "ml_collections", "orbax", "tqdm", "matplotlib")
  if importlib.util.find_spec(name) is None
]
if _MISSING:
  raise ImportError(
    f"recurrent.train needs {', '.join(_MISSING)}, which the core does not: install the"
    " training extra, pip install 'recurrent[train]'"
  )

from recurrent.train.loop import TrainResult, TrainState, train_and_evaluate  # noqa: E402

__all__ = ["TrainResult", "TrainState", "train_and_evaluate"]
