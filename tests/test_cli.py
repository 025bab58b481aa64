"""``python -m recurrent.train``: runs, errors, resuming after SIGKILL, the default config.

References, named in each test: the files a run must leave (a PNG by its signature, the
config as JSON, orbax step folders); an uninterrupted run of the same command, which a run
killed with SIGKILL and restarted must match bit for bit; the always-1 predictor of the
adding problem, whose MSE (1/6 in expectation) is computed here from the task's held-out
data with NumPy; the model's MSE recomputed here from the checkpointed params.

Every test runs the CLI in a subprocess from the repository root, as a user would. The
default-config run takes minutes, so it starts with the module and is checked last.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recurrent.train import configs, tasks
from tests.workdirs import checkpoint_steps, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "recurrent.train"]


def env():
  # rank promotion stays strict; dtype promotion cannot be (optax's adam is not clean).
  return {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise"}


def run_cli(*args, timeout=300):
  return subprocess.run(
    [*CLI, *args], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout
  )


def start_cli(*args):
  return subprocess.Popen(
    [*CLI, *args],
    cwd=ROOT,
    env=env(),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )


def finish(proc, timeout=400):
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"the CLI ran past {timeout}s: {err[-2000:]}")
  assert proc.returncode == 0, err[-3000:]
  return out


def load_config(name, variant=None):
  return configs.get_config(name, variant)


def restore_params(workdir, step):
  tree = ocp.StandardCheckpointer().restore(
    (workdir / "checkpoints" / str(step) / "default").absolute()
  )
  assert int(tree["step"]) == step
  return tree["params"]


@pytest.fixture(scope="module", autouse=True)
def default_run(tmp_path_factory):
  """The default config (no --config), started first: it trains for a minute or two."""
  workdir = tmp_path_factory.mktemp("default")
  log = workdir.parent / "default_output.txt"
  with open(log, "w") as output:  # a file: a pipe nobody reads for minutes could fill up
    proc = subprocess.Popen(
      [*CLI, "--workdir", str(workdir), "--config.progress=False"],
      cwd=ROOT,
      env=env(),
      stdout=output,
      stderr=subprocess.STDOUT,
    )
  yield proc, workdir, log
  if proc.poll() is None:  # a failed test left it running
    proc.kill()
    proc.wait()


def test_copy_tiny_run_leaves_its_files(tmp_path):
  workdir = tmp_path / "copy"
  finish(start_cli("--config", "copy:tiny", "--workdir", str(workdir), "--config.progress=False"))
  expected = load_config("copy", "tiny")
  expected.progress = False
  assert json.loads((workdir / "config.json").read_text()) == json.loads(expected.to_json())
  records = read_metrics(workdir)
  assert [(r["step"], r["split"]) for r in records] == [
    (5, "train"),
    (10, "train"),
    (10, "eval"),
    (15, "train"),
    (20, "train"),
    (20, "eval"),
  ]
  assert (workdir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert checkpoint_steps(workdir) == [10, 20]
  assert (workdir / "checkpoints" / "20" / "default").is_dir()


def test_positional_argument_is_a_usage_error(tmp_path):
  proc = run_cli("--workdir", str(tmp_path / "w"), "copy")
  assert proc.returncode != 0
  assert "unexpected arguments: ['copy']" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_unknown_field_on_the_command_line(tmp_path):
  proc = run_cli("--config", "adding:tiny", "--workdir", str(tmp_path), "--config.bogus=1")
  assert proc.returncode != 0
  assert "bogus" in proc.stderr
  assert not (tmp_path / "metrics.jsonl").exists()


def test_unknown_field_from_a_config_file(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text(
    "from recurrent.train.config import base_config\n"
    "def get_config():\n"
    "  c = base_config()\n"
    "  c.dropout_rate = 0.5  # not a field: the field is 'dropout'\n"
    "  return c\n"
  )
  proc = run_cli("--config", str(path), "--workdir", str(tmp_path / "w"))
  assert proc.returncode != 0
  assert "config has unknown field(s) ['dropout_rate']" in proc.stderr
  assert not (tmp_path / "w" / "metrics.jsonl").exists()


def test_bad_value_on_the_command_line(tmp_path):
  proc = run_cli(
    "--config",
    "adding:tiny",
    "--workdir",
    str(tmp_path),
    "--config.recurrent_dropout=1.0",
  )
  assert proc.returncode != 0
  assert "config.recurrent_dropout must be in [0, 1), got 1.0" in proc.stderr


def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
  steps, every = 1000, 50
  args = [
    "--config", "adding:tiny",
    f"--config.train_steps={steps}",
    f"--config.checkpoint_every={every}",
    f"--config.eval_every={every}",
    "--config.progress=False",
  ]  # fmt: skip
  killed, whole = tmp_path / "killed", tmp_path / "whole"
  reference = start_cli(*args, "--workdir", str(whole))
  victim = start_cli(*args, "--workdir", str(killed))
  deadline = time.monotonic() + 300
  while not checkpoint_steps(killed):
    assert victim.poll() is None, "the run ended before its first checkpoint"
    assert time.monotonic() < deadline, "no checkpoint within 300s"
    time.sleep(0.05)
  assert victim.poll() is None, "the run must still be training when it is killed"
  os.kill(victim.pid, signal.SIGKILL)
  victim.communicate()
  assert victim.returncode == -signal.SIGKILL
  resumed_from = max(checkpoint_steps(killed))
  assert 0 < resumed_from < steps

  out = finish(start_cli(*args, "--workdir", str(killed)))
  finish(reference)
  # It resumed: its first evaluation is the one after the restored checkpoint.
  eval_steps = [int(line.split()[0][5:]) for line in out.splitlines() if "split=eval" in line]
  assert eval_steps[0] == resumed_from + every

  # One complete record per step and split, in order, as if it had never stopped.
  records, expected = read_metrics(killed), read_metrics(whole)
  log_every = load_config("adding", "tiny").log_every
  assert [r["step"] for r in records if r["split"] == "train"] == list(
    range(log_every, steps + 1, log_every)
  )
  assert [r["step"] for r in records if r["split"] == "eval"] == list(
    range(every, steps + 1, every)
  )
  assert [(r["step"], r["split"]) for r in records] == [(r["step"], r["split"]) for r in expected]
  for got, want in zip(records, expected):
    assert got["mse"] == pytest.approx(want["mse"], rel=1e-6, abs=1e-9), (got, want)

  got, want = restore_params(killed, steps), restore_params(whole, steps)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_default_config_solves_the_adding_problem(default_run):
  proc, workdir, log = default_run
  try:
    proc.wait(timeout=900)
  except subprocess.TimeoutExpired:
    pytest.fail("the default config ran past 900s")
  assert proc.returncode == 0, log.read_text()[-3000:]
  config = load_config("adding")
  evals = [r for r in read_metrics(workdir) if r["split"] == "eval"]
  assert [r["step"] for r in evals] == list(range(500, config.train_steps + 1, 500))
  mse = evals[-1]["mse"]
  assert mse < 0.01

  # The always-1 baseline on the same held-out examples: E[(u1 + u2 - 1)^2] = 1/6.
  task = tasks.make(config)
  batches = list(task.eval_batches())
  targets = np.concatenate([b["targets"] for b in batches]).astype(np.float64)
  baseline = np.mean((targets - 1.0) ** 2)
  assert abs(baseline - 1 / 6) < 0.02
  assert mse < baseline / 15

  # The logged MSE is the model's: recomputed from the last checkpoint's params.
  params = restore_params(workdir, config.train_steps)
  apply = jax.jit(lambda x, ids: task.model.apply({"params": params}, x, example_ids=ids)[0])
  predictions = np.concatenate(
    [np.asarray(apply(b["inputs"], b["example_ids"]))[:, 0] for b in batches]
  )
  np.testing.assert_allclose(np.mean((predictions - targets) ** 2), mse, rtol=1e-4)
