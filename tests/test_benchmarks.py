"""The two benchmark scripts still run: each on one small shape, as a subprocess.

What they check is their own business (``compare.py`` stops with status 1 when an
implementation's outputs or gradients differ from ``recurrent``'s); here they must finish,
pass those checks and print their tables. Timings are not asserted: the numbers of a
loaded test machine mean nothing.
"""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run(*args):
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  proc = subprocess.run(
    [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  return proc


def test_compare_smoke_checks_every_implementation_and_writes_json(tmp_path):
  out = tmp_path / "run.json"
  proc = run(
    "benchmarks/compare.py", "--smoke", "--no-keras", "--remat", "4", "--out", str(out)
  )  # fmt: skip
  assert "Checks passed: every implementation matched recurrent" in proc.stdout
  payload = json.loads(out.read_text())
  rows = payload["rows"]
  assert [(r["cell"], r["mode"]) for r in rows] == [
    ("lstm", "fwd"),
    ("lstm", "fwd+bwd"),
    ("gru", "fwd"),
    ("gru", "fwd+bwd"),
  ]
  for row in rows:
    assert {"recurrent", "rec+dropout", "flax", "torch", "rec-r4"} <= set(row["median_ms"])
    assert row["temp_mib"]["recurrent"] > 0
    assert "rec-r4" in row["checks"]  # the remat variant was checked against recurrent too


def test_matmul_floor_runs_one_shape():
  proc = run(
    "benchmarks/matmul_floor.py", "--shapes", "4,10,8,16", "--cells", "lstm", "--repeats", "3"
  )
  for mode in ("fwd", "fwd+bwd"):  # a data row per mode, in both tables
    assert proc.stdout.count(f"| 4,10,8,16 | LSTM | {mode} |") == 2, proc.stdout
