"""What a run leaves in its workdir besides checkpoints: metrics as JSON lines and a plot.

Every file is replaced atomically (written to a temporary file in the same folder, then
``os.replace``), so a run killed at any moment leaves either the old file or the new one.
"""

import json
import os
import pathlib
import tempfile
from typing import Callable, Iterable


def write_atomically(path: pathlib.Path, write: Callable) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it to ``path``."""
  path = pathlib.Path(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      write(f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


class MetricsLog:
  """Metrics as JSON lines, one ``{"step": ..., "split": ..., ...}`` object a line.

  Opening the log of a resumed run keeps only the complete lines up to the resumed step
  (a killed run may have logged past its last checkpoint, or died mid-line), so the
  finished log reads as if the run had never stopped.
  """

  def __init__(self, path: pathlib.Path, resume_step: int = 0):
    self.path = pathlib.Path(path)
    kept = [r for r in self.read(self.path) if r["step"] <= resume_step]
    text = "".join(json.dumps(r) + "\n" for r in kept).encode()
    write_atomically(self.path, lambda f: f.write(text))

  @staticmethod
  def read(path: pathlib.Path) -> list:
    """The complete records of a metrics file; a torn last line is dropped."""
    path = pathlib.Path(path)
    if not path.exists():
      return []
    records = []
    for line in path.read_text().splitlines():
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        break
    return records

  def write(self, record: dict) -> None:
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def plot(records: Iterable[dict], path: pathlib.Path, metric: str) -> None:
  """Saves a PNG of ``metric`` for the train and eval records against the step."""
  # A bare Figure with the Agg canvas: no pyplot, so a notebook's backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(6, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  records = list(records)
  for split in ("train", "eval", "eval_mc"):
    points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
    if points:
      ax.plot(*zip(*points), label=split, marker="o" if split != "train" else None)
  ax.set_xlabel("step")
  ax.set_ylabel(metric)
  if metric == "perplexity":
    ax.set_yscale("log")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
