"""Two processes on one machine (``--distributed``, gloo collectives on the CPU), each with
two devices, against one process with four.

References, named in each test: a one-process run of the same config on 4 forced host
devices, whose records and final params the two-process run must repeat (the same global
batch over the same 4 devices); the rule that only process 0 writes the records and prints,
checked on the files and on each process's output; orbax's checkpoints, read back here.
Two configs: ``adding:tiny`` (no carry, no dropout) and ``ptb:tiny`` on a small generated
corpus (carries between windows, time-invariant dropout, MC dropout evaluation and text
sampling at the end), the latter killed with SIGKILL mid-run in both processes and resumed.
"""

import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recurrent.train import records
from tests.workdirs import checkpoint_steps, read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARGS = ["--config", "adding:tiny", "--config.progress=False"]


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def env(devices, **extra):
  return {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_NUMPY_RANK_PROMOTION": "raise",
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
    **extra,
  }


def start(args, environment, output):
  return subprocess.Popen(
    [sys.executable, "-m", "recurrent.train", *args],
    cwd=ROOT,
    env=environment,
    stdout=output,
    stderr=subprocess.STDOUT,
  )


def start_two_processes(workdir, logs, args=ARGS, extra=((), ())):
  """``--distributed`` in processes 0 and 1 (each also given its ``extra`` args); returns
  them and their open output files."""
  address = f"127.0.0.1:{free_port()}"
  procs, outputs = [], []
  for i in range(2):
    outputs.append(open(logs / f"process_{i}.txt", "w"))  # closed by the caller
    procs.append(
      start(
        [*args, *extra[i], "--workdir", str(workdir), "--distributed", "--num_processes=2",
         f"--process_id={i}"],
        env(2, JAX_COORDINATOR_ADDRESS=address),
        outputs[-1],
      )
    )  # fmt: skip
  return procs, outputs


def run_two_processes(workdir, logs, args=ARGS):
  """``--distributed`` in processes 0 and 1 to the end; returns each one's output."""
  procs, outputs = start_two_processes(workdir, logs, args)
  try:
    for proc in procs:
      proc.wait(timeout=300)
  finally:
    for proc, output in zip(procs, outputs):
      if proc.poll() is None:  # one failed and the other waits for it
        proc.kill()
        proc.wait()
      output.close()
  texts = [(logs / f"process_{i}.txt").read_text() for i in range(2)]
  for proc, text in zip(procs, texts):
    assert proc.returncode == 0, text[-3000:]
  return texts


def params(workdir, step):
  """The checkpointed params, restored onto this process's one device."""
  path = workdir / "checkpoints" / str(step) / "default"
  checkpointer = ocp.StandardCheckpointer()
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    checkpointer.metadata(path).item_metadata,
  )
  return checkpointer.restore(path, target)["params"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """adding:tiny by two processes of 2 devices, and by one process of 4 (started first)."""
  root = tmp_path_factory.mktemp("multiprocess")
  with open(root / "one_process.txt", "w") as output:
    one = start([*ARGS, "--workdir", str(root / "one")], env(4), output)
    try:
      texts = run_two_processes(root / "two", root)
    finally:
      one.wait(timeout=300)
  assert one.returncode == 0, (root / "one_process.txt").read_text()[-3000:]
  return root, texts


def test_two_processes_write_each_record_once_as_one_process_on_four_devices(runs):
  root, (first, second) = runs
  got, want = read_metrics(root / "two"), read_metrics(root / "one")
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  assert len({(r["step"], r["split"]) for r in got}) == len(got) == 6
  for a, b in zip(got, want):
    assert a["mse"] == pytest.approx(b["mse"], rel=1e-6), (a, b)
  assert sorted(p.name for p in (root / "two").iterdir()) == [
    "checkpoints",
    "config.json",
    "curves.png",
    "metrics.jsonl",
  ]
  # Only process 0 prints the evaluations.
  assert "step=20 split=eval" in first and "split=eval" not in second
  for a, b in zip(
    jax.tree.leaves(params(root / "two", 20)), jax.tree.leaves(params(root / "one", 20))
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_two_processes_fall_back_from_a_damaged_checkpoint_together(runs, tmp_path):
  root, _ = runs
  workdir = tmp_path / "two"
  shutil.copytree(root / "two", workdir)
  (workdir / "checkpoints" / "20" / "default" / "_METADATA").write_bytes(b"")
  first, second = run_two_processes(workdir, tmp_path)
  assert "warning: checkpoint at step 20" in first and "warning" not in second
  assert "warning: resuming from the checkpoint at step 10" in first
  assert (workdir / "checkpoints" / "20.corrupt-1").is_dir()
  got, want = read_metrics(workdir), read_metrics(root / "one")
  assert [(r["step"], r["split"]) for r in got] == [(r["step"], r["split"]) for r in want]
  assert got[-1]["mse"] == pytest.approx(want[-1]["mse"], rel=1e-6)


def test_a_log_that_does_not_write_keeps_its_records_in_memory(tmp_path):
  path = tmp_path / "metrics.jsonl"
  path.write_text('{"step": 5, "split": "train", "mse": 1.0}\n{"step": 10, "split": "eval"')
  log = records.MetricsLog(path, resume_step=5, writes=False)
  log.write({"step": 10, "split": "train", "mse": 0.5})
  assert log.records == [
    {"step": 5, "split": "train", "mse": 1.0},
    {"step": 10, "split": "train", "mse": 0.5},
  ]
  assert path.read_text().endswith('"split": "eval"')  # the primary's file, untouched


def write_corpus(folder):
  """A Penn Treebank-like folder: lines of words from a 40-word vocabulary, every word of the
  validation and test sets also in the training set."""
  rng = np.random.default_rng(0)
  words = [f"w{i}" for i in range(40)]
  folder.mkdir()
  for name, lines in (("train", 60), ("valid", 8), ("test", 8)):
    text = "".join(" ".join(rng.choice(words, size=12)) + "\n" for _ in range(lines))
    (folder / f"ptb.{name}.txt").write_text(text)
  (folder / "ptb.train.txt").write_text((folder / "ptb.train.txt").read_text() + " ".join(words))


def test_a_language_model_killed_in_both_processes_resumes_as_one_process_on_four_devices(
  tmp_path,
):
  """``ptb:tiny`` with dropout, MC evaluation (2 samples) and a sample at the end: both
  processes are killed with SIGKILL after the first checkpoint and rerun; every record is
  written once, by process 0, and equals the one-process run's; so do the final params,
  the MC perplexities and the sampled text."""
  write_corpus(tmp_path / "data")
  steps, every = 200, 25
  args = [
    "--config", "ptb:tiny",
    f"--config.data_dir={tmp_path / 'data'}",
    f"--config.train_steps={steps}",
    f"--config.checkpoint_every={every}",
    f"--config.eval_every={every}",
    "--config.mc_samples=2",
    "--config.sample_length=5",
    "--config.progress=False",
  ]  # fmt: skip
  two, one = tmp_path / "two", tmp_path / "one"
  with open(tmp_path / "one_process.txt", "w") as output:
    reference = start([*args, "--workdir", str(one)], env(4), output)
    try:
      procs, outputs = start_two_processes(two, tmp_path, args)
      try:
        deadline = time.monotonic() + 300
        while not checkpoint_steps(two):
          assert all(p.poll() is None for p in procs), "a process ended before a checkpoint"
          assert time.monotonic() < deadline, "no checkpoint within 300 s"
          time.sleep(0.05)
        assert all(p.poll() is None for p in procs), "both must still train when killed"
        for proc in procs:
          proc.send_signal(signal.SIGKILL)
      finally:
        for proc, out in zip(procs, outputs):
          proc.wait()
          out.close()
      assert [p.returncode for p in procs] == [-signal.SIGKILL] * 2
      assert 0 < max(checkpoint_steps(two)) < steps
      first, second = run_two_processes(two, tmp_path, args)
    finally:
      reference.wait(timeout=300)
  assert reference.returncode == 0, (tmp_path / "one_process.txt").read_text()[-3000:]

  got, want = read_metrics(two), read_metrics(one)
  keys = [(r["step"], r["split"]) for r in got]
  assert keys == [(r["step"], r["split"]) for r in want]
  assert len(set(keys)) == len(keys)
  assert {"eval_mc", "test_mc"} <= {split for _, split in keys}
  for a, b in zip(got, want):
    assert a.keys() == b.keys()
    for k in a.keys() - {"tokens_per_sec"}:  # a measured speed
      same = a[k] == b[k] if isinstance(a[k], str) else a[k] == pytest.approx(b[k], rel=1e-5)
      assert same, (k, a, b)
  for a, b in zip(jax.tree.leaves(params(two, steps)), jax.tree.leaves(params(one, steps))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  assert (two / "sample.txt").read_text() == (one / "sample.txt").read_text()
  assert "sample: " in first and "sample: " not in second
  assert "split=test_mc" in first and "split=" not in second


def test_a_refusal_in_one_process_stops_both_at_once(tmp_path):
  """Process 1 has no data where process 0 has (a data file missing on one host): process
  1 names its error, process 0 names process 1, both exit with status 2 within a minute
  (none waits for the other at a collective), and the workdir is not created."""
  write_corpus(tmp_path / "data")
  args = ["--config", "ptb:tiny", "--config.progress=False"]
  extra = ([f"--config.data_dir={tmp_path / 'data'}"], [f"--config.data_dir={tmp_path / 'none'}"])
  started = time.monotonic()
  procs, outputs = start_two_processes(tmp_path / "run", tmp_path, args, extra)
  try:
    for proc in procs:
      proc.wait(timeout=120)
  finally:
    for proc, out in zip(procs, outputs):
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      out.close()
  first, second = [(tmp_path / f"process_{i}.txt").read_text() for i in range(2)]
  assert [p.returncode for p in procs] == [2, 2], (first[-2000:], second[-2000:])
  assert time.monotonic() - started < 120
  assert str(tmp_path / "none") in second and "error: " in second
  assert "error: process(es) 1 of this run refused it" in first
  assert not (tmp_path / "run").exists()
