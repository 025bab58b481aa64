"""Two processes on one machine (``--distributed``, gloo collectives on the CPU), each with
two devices, against one process with four.

References, named in each test: a one-process run of the same config on 4 forced host
devices, whose records and final params the two-process run must repeat (the same global
batch over the same 4 devices); the rule that only process 0 writes the records and prints,
checked on the files and on each process's output; orbax's checkpoints, read back here.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recurrent.train import records

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


def run_two_processes(workdir, logs):
  """``--distributed`` in processes 0 and 1; returns each one's output."""
  address = f"127.0.0.1:{free_port()}"
  procs, outputs = [], []
  for i in range(2):
    outputs.append(open(logs / f"process_{i}.txt", "w"))  # closed below
    procs.append(
      start(
        [*ARGS, "--workdir", str(workdir), "--distributed", "--num_processes=2",
         f"--process_id={i}"],
        env(2, JAX_COORDINATOR_ADDRESS=address),
        outputs[-1],
      )
    )  # fmt: skip
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


def read_metrics(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


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
