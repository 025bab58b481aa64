"""recurrent.train.records: metrics as JSON lines, atomic writes and the curves plot.

References, named in each test: the records written here, filtered in the test by their
step (what a resumed run must keep); the file's bytes before a failed write; the PNG
signature and its IHDR chunk (PNG spec, section 5), and matplotlib's own PNG reader.
"""

import json
import struct

import matplotlib.image
import numpy as np
import pytest

from recurrent.train import records

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


@pytest.mark.parametrize("metric", ["loss", "perplexity"])
def test_plot_writes_a_valid_png(tmp_path, metric):
  recs = [dict(r, perplexity=float(np.exp(r["loss"]))) for r in RECORDS]
  recs.append({"step": 20, "split": "eval_mc", "loss": 1.8, "perplexity": 6.0})
  path = tmp_path / "curves.png"
  records.plot(recs, path, metric)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n"
  length, kind = struct.unpack(">I4s", data[8:16])
  assert (length, kind) == (13, b"IHDR")
  width, height = struct.unpack(">II", data[16:24])
  assert (width, height) == (600, 400)  # figsize (6, 4) at 100 dpi
  assert data[-12:] == b"\x00\x00\x00\x00IEND\xaeB`\x82"
  image = matplotlib.image.imread(path)
  assert image.shape[:2] == (400, 600)
  assert image.std() > 0  # something was drawn
  assert [p.name for p in tmp_path.iterdir()] == ["curves.png"]
