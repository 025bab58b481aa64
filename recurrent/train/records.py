"""What a run leaves in its workdir besides checkpoints: metrics as JSON lines and a plot.

Every file is replaced atomically (written to a temporary file in the same folder, then
``os.replace``), so a run killed at any moment leaves either the old file or the new one.
Files get the mode ``open`` gives a new file, ``0o666`` less the umask.
"""

import json
import math
import os
import pathlib
import secrets
import textwrap
from typing import Callable, Iterable, Mapping

import ml_collections


def _temporary_file(path: pathlib.Path) -> tuple:
  """``(fd, name)`` of a new file beside ``path``, created as ``open`` creates files: mode
  ``0o666`` less the umask (``tempfile.mkstemp`` gives 0o600 whatever the umask)."""
  flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
  for _ in range(100):
    tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
      return os.open(tmp, flags, 0o666), tmp
    except FileExistsError:
      continue
  raise FileExistsError(f"no free temporary name beside {path}")


def write_atomically(path: pathlib.Path, write: Callable) -> None:
  """Calls ``write(file)`` on a temporary file beside ``path``, then renames it to ``path``."""
  path = pathlib.Path(path)
  fd, tmp = _temporary_file(path)
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

  Attributes:
    path: the file.
    records: the records kept on opening and those written since, in order.
    writes: whether this process writes the file. In a multi-process run only the primary
      process does; the others keep the same ``records`` in memory (the file's records up
      to ``resume_step`` are the same before and after the primary rewrites it).
  """

  def __init__(self, path: pathlib.Path, resume_step: int = 0, *, writes: bool = True):
    self.path, self.writes = pathlib.Path(path), writes
    self.records = [r for r in self.read(self.path) if r["step"] <= resume_step]
    if writes:
      text = "".join(json.dumps(r) + "\n" for r in self.records).encode()
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
    """Appends ``record`` to ``records`` (as the file would read back) and, if this
    process ``writes``, to the file."""
    self.records.append(json.loads(json.dumps(record)))
    if self.writes:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")


_SPLITS = {  # how each split is drawn: train thin and light, evaluations solid or dashed
  "train": {"label": "train", "color": "tab:blue", "linewidth": 1.0, "alpha": 0.45},
  "eval": {"label": "eval", "color": "tab:blue", "linewidth": 2.0, "marker": "o"},
  "eval_mc": {
    "label": "eval, MC dropout",
    "color": "tab:purple",
    "linewidth": 1.5,
    "linestyle": "--",
    "marker": "s",
  },
  "test": {"label": "test", "color": "tab:red", "linestyle": "", "marker": "D"},
  "test_mc": {"label": "test, MC dropout", "color": "tab:red", "linestyle": "", "marker": "s"},
}
_LOG_METRICS = ("mse", "perplexity")  # errors that fall over decades: log axes
_LABELS = {"mse": "MSE", "loss": "cross-entropy (nats)"}


def _number(value: float) -> str:
  return f"{value:.4g}"


def title(config: ml_collections.ConfigDict) -> str:
  """Two lines naming the run: task and model, then the key hyper-parameters."""
  c = config
  task = {
    "adding": f"adding problem, T={c.seq_len}",
    "copy": f"copy task, T={c.seq_len}, S={c.copy_symbols}, A={c.copy_alphabet}",
  }.get(c.task, f"{c.task.upper() if c.task == 'ptb' else c.task}, BPTT {c.seq_len}")
  model = f"{c.cell.upper()} {c.num_layers} x {c.hidden_size}"
  optimiser = f"{c.optimizer} lr {_number(c.learning_rate)}"
  if c.lr_schedule == "step":
    optimiser += f", x{_number(c.lr_decay)} per epoch after {c.decay_epoch}"
  elif c.lr_schedule != "constant":
    optimiser += f" ({c.lr_schedule})"
  parts = [optimiser, f"batch {c.batch_size}"]
  if c.max_grad_norm:
    parts.append(f"clip {_number(c.max_grad_norm)}")
  if c.weight_decay:
    parts.append(f"wd {_number(c.weight_decay)} ({c.weight_decay_kind})")
  rates = [
    (name, c[field])
    for name, field in (
      ("in", "dropout"),
      ("rec", "recurrent_dropout"),
      ("out", "output_dropout"),
      ("emb", "embed_dropout"),
    )
    if c[field]
  ]
  if rates:
    kind = c.dropout_kind + (", untied" if c.untied_masks else "")
    parts.append(f"dropout {' '.join(f'{n} {_number(r)}' for n, r in rates)} ({kind})")
  else:
    parts.append("no dropout")
  return f"{task}: {model}\n{', '.join(parts)}"


def _log_axis(ax, values) -> None:
  """A log y axis for ``values`` (all > 0), its ticks plain numbers (0.05, 200, not
  ``10^x``), denser the fewer decades the values span: at 1, 2, ..., 9 times a power of
  ten within a decade, then 1-2-3-5, 1-2-5, and powers of ten beyond 4 decades."""
  from matplotlib import ticker

  ax.set_yscale("log")
  decades = math.log10(max(values) / min(values))
  if decades <= 1:
    subs = tuple(range(1, 10))
  elif decades <= 2:
    subs = (1, 2, 3, 5)
  elif decades <= 4:
    subs = (1, 2, 5)
  else:
    subs = (1,)
  ax.yaxis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
  ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
  ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _panel(ax, records: list, metric: str, baseline) -> None:
  values = []
  for split, style in _SPLITS.items():
    points = [(r["step"], r[metric]) for r in records if r["split"] == split and metric in r]
    if not points:
      continue
    label = style["label"]
    if split != "train":
      label += f" (last {_number(points[-1][1])})"
    ax.plot(*zip(*points), **{**style, "label": label})
    values += [v for _, v in points]
  if baseline is not None:
    name, value = baseline
    ax.axhline(
      value, color="0.35", linestyle=":", linewidth=1.5, label=f"{name} = {_number(value)}"
    )
    values.append(value)
  ax.set_xlabel("step")
  label = _LABELS.get(metric, metric)
  if metric in _LOG_METRICS and values and min(values) > 0:
    _log_axis(ax, values)
    label += " (log scale)"
  ax.set_ylabel(label)
  if metric == "accuracy":
    ax.set_ylim(0.0, 1.02)
  ax.grid(alpha=0.3)
  ax.grid(alpha=0.12, which="minor")
  ax.legend(fontsize=8)


def figure(
  records: Iterable[dict],
  metric: str,
  config: ml_collections.ConfigDict | None = None,
  baselines: Mapping[str, tuple] | None = None,
):
  """The curves of ``metric`` (and of the accuracy, where the records have it, in a second
  panel) for every split against the step, as a matplotlib ``Figure``.

  Args:
    records: the metrics records, as :meth:`MetricsLog.read` gives them.
    metric: the metric of the first panel.
    config: the run's config, for the title (:func:`title`); None: no title.
    baselines: ``{metric: (label, value)}``, drawn as labelled horizontal lines.
  """
  # A bare Figure with the Agg canvas: no pyplot, so a notebook's backend is left alone.
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  records, baselines = list(records), baselines or {}
  metrics = [metric]
  if metric != "accuracy" and any("accuracy" in r for r in records):
    metrics.append("accuracy")
  fig = Figure(figsize=(6.4 * len(metrics), 4.4), layout="constrained")
  FigureCanvasAgg(fig)
  for ax, name in zip(fig.subplots(1, len(metrics), squeeze=False)[0], metrics):
    _panel(ax, records, name, baselines.get(name))
  if config is not None:
    width = int(fig.get_figwidth() * 12)  # characters that fit at fontsize 10
    lines = [part for line in title(config).splitlines() for part in textwrap.wrap(line, width)]
    fig.suptitle("\n".join(lines), fontsize=10)
  return fig


def plot(
  records: Iterable[dict],
  path: pathlib.Path,
  metric: str,
  config: ml_collections.ConfigDict | None = None,
  baselines: Mapping[str, tuple] | None = None,
):
  """Saves :func:`figure` as a PNG at ``path`` (atomically) and returns the figure."""
  fig = figure(records, metric, config, baselines)
  write_atomically(path, lambda f: fig.savefig(f, format="png", dpi=100))
  return fig
