"""Reading a training workdir in the tests, independently of ``recurrent.train``'s own
readers: its files, its ``metrics.jsonl`` and its finished checkpoints."""

import json
import pathlib


def files(folder):
  """``{relative path: bytes}`` of every file under ``folder``."""
  folder = pathlib.Path(folder)
  return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def read_metrics(workdir):
  """``metrics.jsonl``'s records, every line of which must be a complete JSON record."""
  lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines]


def checkpoint_steps(workdir):
  """Finished orbax checkpoints: folders named by their step (temporaries are not)."""
  folder = pathlib.Path(workdir) / "checkpoints"
  return (
    sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit()) if folder.exists() else []
  )
