"""Training: loop, tasks and data, checkpoints and the command line.

``python -m recurrent.train`` and the notebooks call :func:`train_and_evaluate`.
"""

from recurrent.train.loop import TrainResult, TrainState, train_and_evaluate

__all__ = ["TrainResult", "TrainState", "train_and_evaluate"]
