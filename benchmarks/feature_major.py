"""The forward pass feature-major against batch-major, over a grid of (B, T, I, H).

Shape legend: B batch, T time, I input size, H hidden size.

``recurrent.fused.feature_major(B, G*H)`` decides whether the forward alone (inference,
evaluation: not under ``grad``) runs with ``[H, B]`` carries, the recurrent matmul as
``w_hh^T @ h`` and the projections as ``[H, T, B]``. This script compiles
``recurrent.scan``'s jitted forward twice per shape and cell, with that rule forced on and
off, checks that both give the same outputs, and times them interleaved in one process
(float32, medians of ``--repeats`` calls). It prints a markdown table: both medians, their
ratio (below 1: feature-major is faster) and what the rule picks.

Run from the repository root::

    python benchmarks/feature_major.py [--shapes 32,100,128,256 ...] [--cells lstm gru]
                                       [--repeats N] [--json PATH]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import recurrent  # noqa: E402
from benchmarks.lstm_cpu import parse_shape  # noqa: E402

# Small and large batches at H = 128, 256, 512 and 1024, and the four shapes.
DEFAULT_SHAPES = (
  "8,100,64,128 16,100,64,128 32,100,64,128 256,50,64,128 1,1000,64,128 "
  "16,100,128,256 32,100,128,256 48,100,128,256 64,100,128,256 "
  "8,100,128,512 16,50,128,512 32,50,128,512 48,50,128,512 64,50,256,512 96,20,128,512 "
  "64,200,256,512 16,20,128,1024 32,20,128,1024 64,20,128,1024 128,20,128,1024"
).split()


def compiled_forward(cell, params, xs, feature_major: bool):
  """``recurrent.scan``'s forward, traced and compiled with the rule forced."""
  rule = recurrent.fused.feature_major
  recurrent.fused.feature_major = lambda batch, hidden: feature_major
  try:
    fn = jax.jit(lambda p, x: recurrent.scan(cell, p, x)[1])
    return fn.lower(params, xs).compile()
  finally:
    recurrent.fused.feature_major = rule


def bench(shape, cell_name, repeats: int) -> dict:
  batch, steps, inputs, hidden = shape
  cell = getattr(recurrent, cell_name)(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
  calls = {name: compiled_forward(cell, params, xs, fm) for name, fm in
           (("batch-major", False), ("feature-major", True))}  # fmt: skip
  outputs = [np.asarray(c(params, xs)) for c in calls.values()]
  diff = float(np.max(np.abs(outputs[0] - outputs[1])))
  if not diff < 1e-4:
    raise SystemExit(f"MISMATCH {cell_name} {shape}: {diff}")
  samples = {name: [] for name in calls}
  for rep in range(repeats):
    names = list(calls)[rep % 2 :] + list(calls)[: rep % 2]
    for name in names:
      start = time.perf_counter()
      jax.block_until_ready(calls[name](params, xs))
      samples[name].append(time.perf_counter() - start)
  med = {name: 1e3 * statistics.median(s) for name, s in samples.items()}
  return {
    "shape": list(shape),
    "cell": cell_name,
    "median_ms": med,
    "ratio": med["feature-major"] / med["batch-major"],
    "rule": recurrent.fused.feature_major(batch, cell.num_gates * hidden),
    "max_diff": diff,
    "samples_ms": {name: [1e3 * t for t in s] for name, s in samples.items()},
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None)
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--json", default=None, help="also save every sample here")
  args = parser.parse_args(argv)
  shapes = args.shapes or [parse_shape(s) for s in DEFAULT_SHAPES]
  rows = []
  print(f"jax {jax.__version__}, {jax.default_backend()}, float32, forward only, "
        f"median ms of {args.repeats} interleaved calls\n")  # fmt: skip
  print("| B,T,I,H | cell | batch-major | feature-major | fm/bm | rule picks |")
  print("| --- | --- | --- | --- | --- | --- |")
  for shape in shapes:
    for cell_name in args.cells:
      row = bench(shape, cell_name, args.repeats)
      rows.append(row)
      med = row["median_ms"]
      print(
        f"| {','.join(map(str, shape))} | {cell_name.upper()} | {med['batch-major']:.1f} | "
        f"{med['feature-major']:.1f} | {row['ratio']:.2f} | "
        f"{'feature' if row['rule'] else 'batch'} |",
        flush=True,
      )
  print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}")
  if args.json:
    with open(args.json + ".tmp", "w") as f:
      json.dump({"jax": jax.__version__, "rows": rows}, f)
    os.replace(args.json + ".tmp", args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
