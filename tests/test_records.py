"""recurrent.train.records: metrics as JSON lines, atomic writes and the curves plot.

References, named in each test: the records written here, filtered in the test by their
step (what a resumed run must keep); the file's bytes before a failed write; the mode
``open`` gives a new file, ``0o666 & ~umask`` (POSIX ``open(2)``); the PNG signature and
its IHDR chunk (PNG spec, section 5), and matplotlib's own PNG reader; the figure's
artists (title, lines, axis scales, drawn tick labels) as matplotlib reports them.
"""

import json
import math
import os
import stat
import struct

import matplotlib.image
import numpy as np
import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs, records

RECORDS = [
  {"step": 5, "split": "train", "loss": 2.5},
  {"step": 10, "split": "train", "loss": 2.0},
  {"step": 10, "split": "eval", "loss": 2.2},
  {"step": 15, "split": "train", "loss": 1.7},
  {"step": 20, "split": "train", "loss": 1.5},
  {"step": 20, "split": "eval", "loss": 1.9},
]


def write_lines(path, recs, torn=""):
  path.write_text("".join(json.dumps(r) + "\n" for r in recs) + torn)


def test_read_drops_a_torn_last_line(tmp_path):
  path = tmp_path / "metrics.jsonl"
  write_lines(path, RECORDS, torn='{"step": 25, "split": "tra')
  assert records.MetricsLog.read(path) == RECORDS
  assert records.MetricsLog.read(tmp_path / "missing.jsonl") == []


@pytest.mark.parametrize("resume_step", [0, 10, 15, 20])
def test_resume_truncates_after_the_resume_step(tmp_path, resume_step):
  path = tmp_path / "metrics.jsonl"
  write_lines(path, RECORDS, torn='{"step": 25, "spl')
  log = records.MetricsLog(path, resume_step=resume_step)
  kept = [r for r in RECORDS if r["step"] <= resume_step]
  # The file itself is rewritten: complete lines only, none past the resume step.
  assert path.read_text() == "".join(json.dumps(r) + "\n" for r in kept)
  new = {"step": resume_step + 5, "split": "train", "loss": 1.0}
  log.write(new)
  assert records.MetricsLog.read(path) == [*kept, new]


def test_write_atomically_replaces_the_file(tmp_path):
  path = tmp_path / "config.json"
  path.write_bytes(b"old")
  records.write_atomically(path, lambda f: f.write(b"new contents"))
  assert path.read_bytes() == b"new contents"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_write_atomically_keeps_the_old_file_if_the_writer_raises(tmp_path):
  path = tmp_path / "config.json"
  path.write_bytes(b"old contents")

  def writer(f):
    f.write(b"half of the new")
    raise RuntimeError("disk on fire")

  with pytest.raises(RuntimeError, match="disk on fire"):
    records.write_atomically(path, writer)
  assert path.read_bytes() == b"old contents"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]  # no temp file left


def test_write_atomically_creates_nothing_if_the_writer_raises(tmp_path):
  with pytest.raises(KeyboardInterrupt):
    records.write_atomically(
      tmp_path / "new.txt", lambda f: (_ for _ in ()).throw(KeyboardInterrupt)
    )
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_written_files_respect_the_umask(tmp_path, umask):
  old = os.umask(umask)
  try:
    records.write_atomically(tmp_path / "config.json", lambda f: f.write(b"{}"))
    records.MetricsLog(tmp_path / "metrics.jsonl").write(RECORDS[0])
    records.plot(RECORDS, tmp_path / "curves.png", "loss")
    records.write_atomically(tmp_path / "config.json", lambda f: f.write(b"{ }"))  # replaced
  finally:
    os.umask(old)
  want = 0o666 & ~umask  # 0o644 for umask 022
  for name in ("config.json", "metrics.jsonl", "curves.png"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    "config.json",
    "curves.png",
    "metrics.jsonl",
  ]


def png_size(path):
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  length, kind = struct.unpack(">I4s", data[8:16])
  assert (length, kind) == (13, b"IHDR")
  assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
  return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("metric", ["loss", "perplexity"])
def test_plot_writes_a_valid_png(tmp_path, metric):
  recs = [dict(r, perplexity=float(np.exp(r["loss"]))) for r in RECORDS]
  recs.append({"step": 20, "split": "eval_mc", "loss": 1.8, "perplexity": 6.0})
  path = tmp_path / "curves.png"
  records.plot(recs, path, metric)
  assert png_size(path) == (640, 440)  # figsize (6.4, 4.4) at 100 dpi
  image = matplotlib.image.imread(path)
  assert image.shape[:2] == (440, 640)
  assert image.std() > 0  # something was drawn
  assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]


def run_config(**fields):
  c = config_lib.base_config()
  c.update(fields)
  return c


def drawn_tick_labels(fig, ax):
  fig.canvas.draw()
  return [t.get_text() for t in ax.get_yticklabels() if t.get_text()]


def lines_by_label(ax):
  return {line.get_label().split(" (")[0]: line for line in ax.get_lines()}


def test_plot_of_the_adding_problem(tmp_path):
  recs = [
    {"step": s, "split": split, "mse": mse}
    for s, split, mse in [
      (50, "train", 0.4),
      (100, "train", 0.17),
      (100, "eval", 0.16),
      (150, "train", 0.02),
      (200, "train", 0.004),
      (200, "eval", 0.003),
    ]
  ]
  config = run_config(task="adding", seq_len=50, hidden_size=64, learning_rate=3e-3, dropout=0.25)
  path = tmp_path / "curves.png"
  fig = records.plot(recs, path, "mse", config, {"mse": ("always 1", 1 / 6)})
  assert png_size(path) == (640, 440)
  title = fig.get_suptitle()
  for part in ("adding problem, T=50", "LSTM 1 x 64", "adam lr 0.003", "dropout in 0.25"):
    assert part in title, title
  (ax,) = fig.axes
  assert ax.get_yscale() == "log" and ax.get_xlabel() == "step"
  assert ax.get_ylabel() == "MSE (log scale)"
  lines = lines_by_label(ax)
  assert set(lines) == {"train", "eval", "always 1 = 0.1667"}
  baseline = lines["always 1 = 0.1667"]
  np.testing.assert_allclose(baseline.get_ydata(), [1 / 6, 1 / 6])
  np.testing.assert_array_equal(baseline.get_xdata(), [0, 1])  # axhline: the whole width
  assert baseline.get_linestyle() == ":"
  # Train thin and light, without markers; eval solid with markers, its last value named.
  train, evaluation = lines["train"], lines["eval"]
  assert train.get_alpha() < 1 and train.get_marker() in ("None", None, "")
  assert train.get_linewidth() < evaluation.get_linewidth()
  assert evaluation.get_marker() == "o" and evaluation.get_linestyle() == "-"
  assert evaluation.get_label() == "eval (last 0.003)"
  assert evaluation.get_color() == train.get_color()
  # Plain numbers at 1-2-5 steps over these 2.1 decades, no 10^x mathtext.
  labels = drawn_tick_labels(fig, ax)
  assert labels and not any("$" in t or "10^" in t for t in labels), labels
  assert {"0.01", "0.1"} <= set(labels), labels
  legend = [t.get_text() for t in ax.get_legend().get_texts()]
  assert legend == ["train", "eval (last 0.003)", "always 1 = 0.1667"]


def test_plot_of_a_language_model_reads_perplexity_in_plain_numbers():
  recs = []
  for step, ppl in ((100, 900.0), (200, 400.0), (300, 250.0)):
    recs += [
      {"step": step, "split": "train", "loss": math.log(ppl), "perplexity": ppl},
      {"step": step, "split": "eval", "loss": math.log(ppl * 1.1), "perplexity": ppl * 1.1},
    ]
  recs += [
    {"step": 300, "split": "eval_mc", "loss": 5.5, "perplexity": 270.0, "samples": 10},
    {"step": 300, "split": "test", "loss": 5.4, "perplexity": 260.0},
  ]
  config = configs.get_config("ptb", "zaremba_small")  # 2 x 200, BPTT 20, sgd from lr 1
  config.update(dict(dropout=0.5, output_dropout=0.5, dropout_kind="naive"))
  fig = records.figure(recs, "perplexity", config, {"perplexity": ("unigram", 700.0)})
  title = " ".join(fig.get_suptitle().split())  # as read, whatever the wrapping
  for part in ("PTB, BPTT 20", "LSTM 2 x 200", "sgd lr 1", "dropout in 0.5 out 0.5 (naive)"):
    assert part in title, title
  (ax,) = fig.axes
  assert ax.get_yscale() == "log"
  labels = drawn_tick_labels(fig, ax)
  # 250 to 990 is less than a decade: ticks at every hundred, written as plain numbers.
  assert {"300", "400", "500", "700"} <= set(labels), labels
  assert not any("$" in t or "times" in t for t in labels), labels
  lines = lines_by_label(ax)
  assert lines["eval, MC dropout"].get_linestyle() == "--"
  assert lines["test"].get_marker() == "D"
  np.testing.assert_allclose(lines["unigram = 700"].get_ydata(), [700.0, 700.0])


def test_plot_of_the_copy_task_has_an_accuracy_panel():
  recs = [
    {"step": 10, "split": "train", "loss": 2.3, "accuracy": 0.1},
    {"step": 20, "split": "train", "loss": 1.0, "accuracy": 0.6},
    {"step": 20, "split": "eval", "loss": 0.9, "accuracy": 0.7},
  ]
  baselines = {"loss": ("memoryless", math.log(8)), "accuracy": ("memoryless", 1 / 8)}
  config = run_config(task="copy", seq_len=40, copy_symbols=10, hidden_size=128)
  fig = records.figure(recs, "loss", config, baselines)
  assert "copy task, T=40, S=10, A=8: LSTM 1 x 128" in fig.get_suptitle()
  loss_ax, accuracy_ax = fig.axes
  assert loss_ax.get_yscale() == "linear" and loss_ax.get_ylabel() == "cross-entropy (nats)"
  assert accuracy_ax.get_ylabel() == "accuracy" and accuracy_ax.get_ylim() == (0.0, 1.02)
  np.testing.assert_allclose(
    lines_by_label(loss_ax)["memoryless = 2.079"].get_ydata(), 2 * [math.log(8)]
  )
  np.testing.assert_allclose(
    lines_by_label(accuracy_ax)["memoryless = 0.125"].get_ydata(), [0.125] * 2
  )
  np.testing.assert_allclose(lines_by_label(accuracy_ax)["eval"].get_ydata(), [0.7])
  assert fig.get_size_inches() == pytest.approx((12.8, 4.4))
  # Without accuracy in the records, one panel; without a config, no title.
  bare = records.figure([{k: v for k, v in r.items() if k != "accuracy"} for r in recs], "loss")
  assert len(bare.axes) == 1 and bare.get_suptitle() == ""
