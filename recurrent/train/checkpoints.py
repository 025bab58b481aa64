"""A workdir's checkpoints: save trees, and restore the newest that restores.

A checkpoint that does not restore (a file missing, truncated or not JSON) is moved aside
to ``checkpoints/<step>.corrupt-<n>`` with a one-line warning, and the one before it is
tried (:func:`restore_latest`). The helpers for multi-process runs (:func:`sync`,
:func:`any_process`, :func:`together`, :func:`warn`) do nothing special in a single process.
"""

import gc
import pathlib
import sys
import time
import traceback

import jax
import numpy as np
import orbax.checkpoint as ocp

from recurrent.train import config as _config


def checkpointable(state) -> dict:
  """The tree of a ``TrainState`` that a checkpoint holds: step, params, optimiser state and
  (for language models) the carry."""
  tree = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
  if state.carry is not None:
    tree["carry"] = state.carry
  return tree


def _restore(manager, step: int, state, shardings):
  target = checkpointable(state)
  abstract = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
    target,
    checkpointable(shardings),
  )
  tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return state.replace(
    step=tree["step"],
    params=tree["params"],
    opt_state=tree["opt_state"],
    carry=tree.get("carry"),
  )


def sync(name: str) -> None:
  """A barrier across the processes of a multi-process run; nothing in a single process."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def processes_where(flag: bool) -> list:
  """The indices of the processes where ``flag`` is true (all processes must call it)."""
  if jax.process_count() == 1:
    return [0] if flag else []
  from jax.experimental import multihost_utils

  flags = multihost_utils.process_allgather(np.asarray(flag))
  return [int(i) for i in np.flatnonzero(flags)]


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true in any process (all processes must call it)."""
  return bool(processes_where(flag))


def together(step):
  """``step()`` in every process, refused in all if a user error stops it in any.

  A :class:`~recurrent.train.config.UserError` or ``OSError`` (a data file missing on one
  host, a workdir it cannot write) in one process would leave the others waiting for it at
  their next collective; here every process learns of it, and each raises: its own error,
  or a :class:`~recurrent.train.config.UserError` naming the processes that failed.
  """
  error, result = None, None
  try:
    result = step()
  except (_config.UserError, OSError) as e:
    error = e
  failed = processes_where(error is not None)
  if error is not None:
    raise error
  if failed:
    raise _config.UserError(
      f"process(es) {', '.join(map(str, failed))} of this run refused it; their output says why"
    )
  return result


def warn(message: str) -> None:
  """Prints ``warning: message`` to stderr, from process 0 only."""
  if jax.process_index() == 0:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def checkpoint_steps(directory) -> list:
  """The steps of the checkpoints in ``directory`` (folders named by their step; not the
  temporaries orbax is still writing, nor the ``<step>.corrupt-<n>`` moved aside), sorted."""
  directory = pathlib.Path(directory)
  return sorted(ocp.utils.checkpoint_steps(directory)) if directory.is_dir() else []


def _shapes(tree) -> list:
  return sorted(tuple(getattr(x, "shape", ())) for x in jax.tree.leaves(tree))


def _incompatible(manager, step: int, target) -> bool:
  """Whether checkpoint ``step``'s metadata reads and describes arrays of other shapes than
  ``target``'s: a checkpoint of another model, not a damaged one."""
  try:
    saved = manager.item_metadata(step)
  except Exception:  # unreadable metadata: damaged
    return False
  return saved is not None and _shapes(saved) != _shapes(target)


def _move_aside(path: pathlib.Path) -> pathlib.Path:
  """Renames ``path`` to ``<name>.corrupt-<n>`` beside it, the first free ``n``."""
  n = 1
  while path.with_name(f"{path.name}.corrupt-{n}").exists():
    n += 1
  aside = path.with_name(f"{path.name}.corrupt-{n}")
  path.rename(aside)
  return aside


def first_line(error: BaseException, limit: int = 300) -> str:
  """``Type: first line`` of ``error``'s root cause (TensorStore's reason, under orbax's)."""
  while error.__cause__ is not None:
    error = error.__cause__
  line = next((x for x in str(error).splitlines() if x.strip()), "")
  line = line if len(line) <= limit else line[: limit - 3] + "..."
  return f"{type(error).__name__}: {line}" if line else type(error).__name__


class _QuietFailedReads:
  """Drops the "Exception ignored" reports that a failed orbax restore leaves behind (its
  other reads, cancelled, raise as they are collected; TensorStore's callbacks find the
  event loop closed) while it is entered; after a failure (``failed = True``) it waits for
  and collects them before it exits. Other reports pass on."""

  failed = False

  def _hook(self, report):
    frames = traceback.extract_tb(report.exc_traceback) if report.exc_traceback else []
    code = getattr(report.object, "cr_code", None)
    leftover = (
      str(report.exc_value) == "Event loop is closed"
      or any("orbax" in pathlib.Path(f.filename).parts for f in frames)
      or (code is not None and "orbax" in pathlib.Path(code.co_filename).parts)
    )
    if not leftover:
      self._previous(report)

  def __enter__(self):
    self._previous, sys.unraisablehook = sys.unraisablehook, self._hook
    return self

  def __exit__(self, *exc_info):
    try:
      if self.failed:
        time.sleep(0.1)  # the cancelled reads' callbacks
        gc.collect()
    finally:
      sys.unraisablehook = self._previous


def restore_latest(directory, options, state, shardings):
  """Opens the ``orbax.checkpoint.CheckpointManager`` of ``directory`` and restores the
  newest checkpoint that restores into ``state``'s shapes and ``shardings``.

  A checkpoint that fails to restore (a data file missing or truncated, metadata that is
  not JSON) is renamed ``<step>.corrupt-<n>`` in ``directory`` (kept, and no longer listed
  by orbax) with a one-line warning on stderr, and the previous one is tried.

  Returns:
    ``(manager, state, step)``: the manager (reopened after any move), the restored state
    and its step; ``state`` itself and step 0 if no checkpoint restores.

  Raises:
    UserError: a checkpoint reads but holds arrays of other shapes than ``state`` (it was
      written for another model or optimiser); nothing is moved.
  """
  directory = pathlib.Path(directory)
  moved = False
  while True:
    manager = ocp.CheckpointManager(directory, options=options)
    step = manager.latest_step()
    if step is None:
      if moved:
        warn("no checkpoint left that restores: training from step 0")
      return manager, state, 0
    reason = None
    with _QuietFailedReads() as quiet:
      try:
        restored = _restore(manager, step, state, shardings)
      except Exception as e:  # orbax and TensorStore raise many types for damaged files
        reason, quiet.failed = first_line(e), True
    if not any_process(reason is not None):
      if moved:
        warn(f"resuming from the checkpoint at step {step}")
      return manager, restored, step
    path = directory / str(step)
    if reason is not None and _incompatible(manager, step, checkpointable(state)):
      manager.close()
      raise _config.UserError(
        f"checkpoint {path} holds arrays of other shapes than this config's model and"
        " optimiser: the workdir was trained with another config; use a new workdir"
      )
    manager.close()
    if jax.process_index() == 0:
      aside = _move_aside(path)
      reason = reason or "it failed in another process"
      warn(f"checkpoint at step {step} ({path}) does not restore ({reason}); moved it to {aside}")
    sync(f"recurrent.train: checkpoint {step} moved aside")
    moved = True
