"""The forward pass feature-major against batch-major, over a grid of (B, T, I, H).

Shape legend: B batch, T time, I input size, H hidden size.

``recurrent.fused.policy.feature_major(B, G*H)`` decides whether the forward alone (inference,
evaluation: not under ``grad``) runs with ``[H, B]`` carries, the recurrent matmul as
``w_hh^T @ h`` and the projections as ``[H, T, B]``. This script compiles
``recurrent.scan``'s jitted forward twice per shape and cell, with that rule forced on and
off, checks that both give the same outputs, and times them interleaved in one process
(float32, medians of ``--repeats`` calls in random order, ``lstm_cpu.timed_rounds``). It
prints a markdown table: both medians, their ratio (below 1: feature-major is faster), what
the rule picks and both compile times (trace + XLA compile, median of 3 fresh compiles, as
in ``lstm_cpu.py``).

``--per-step`` times the recurrent matmul alone instead: a ``lax.scan`` of T dependent
steps ``h = tanh(sum of the G column blocks of h @ w_hh)``, batch-major, against the same
steps as ``w_hh^T @ h`` on ``[H, B]``; it prints microseconds per step and GFLOP/s.

Run from the repository root::

    python benchmarks/feature_major.py [--shapes 32,100,128,256 ...] [--cells lstm gru]
                                       [--repeats N] [--json PATH] [--per-step]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import recurrent  # noqa: E402
from benchmarks.lstm_cpu import (  # noqa: E402
  compile_timed,
  finish,
  median_ms,
  parse_shape,
  timed_rounds,
)

# Small and large batches at H = 128, 256, 512 and 1024, and the four shapes.
DEFAULT_SHAPES = (
  "8,100,64,128 16,100,64,128 32,100,64,128 256,50,64,128 1,1000,64,128 "
  "16,100,128,256 32,100,128,256 48,100,128,256 64,100,128,256 "
  "8,100,128,512 16,50,128,512 32,50,128,512 48,50,128,512 64,50,256,512 96,20,128,512 "
  "64,200,256,512 16,20,128,1024 32,20,128,1024 64,20,128,1024 128,20,128,1024"
).split()


def compiled_forward(cell, params, xs, feature_major: bool):
  """``(compiled, seconds)``: ``recurrent.scan``'s forward traced and compiled with the
  rule forced, and its median compile time (``lstm_cpu.compile_timed``)."""
  layout = "feature" if feature_major else "batch"
  return compile_timed(lambda p, x: recurrent.scan(cell, p, x, layout=layout)[1], params, xs)


def step_programs(num_gates: int):
  """The recurrent matmul alone, both orientations: ``f(h [B, H], w [H, G*H]) -> h``
  after ``len(xs)`` steps (``xs [T]`` only sets T)."""

  def batch_major(h, w, xs):
    def step(h, _):
      return jnp.tanh(sum(jnp.split(h @ w, num_gates, axis=1))), None

    return jax.lax.scan(step, h, xs)[0]

  def feature_major(h, w, xs):
    w_t = w.T

    def step(h_t, _):
      return jnp.tanh(sum(jnp.split(w_t @ h_t, num_gates, axis=0))), None

    return jax.lax.scan(step, h.T, xs)[0].T

  return {"batch-major": jax.jit(batch_major), "feature-major": jax.jit(feature_major)}


def bench(shape, cell_name, repeats: int, per_step: bool = False) -> dict:
  batch, steps, inputs, hidden = shape
  cell = getattr(recurrent, cell_name)(hidden)
  if per_step:
    h = jax.random.normal(jax.random.key(0), (batch, hidden))
    width = cell.num_gates * hidden  # scaled so that the steps contract: no chaos to diff
    w = jax.random.normal(jax.random.key(1), (hidden, width)) * (0.5 / width**0.5)
    args = (h, w, jnp.zeros(steps))
    calls, compile_s = step_programs(cell.num_gates), None
  else:
    params = cell.init(jax.random.key(0), inputs)
    args = (params, jax.random.normal(jax.random.key(1), (batch, steps, inputs)))
    built = {name: compiled_forward(cell, *args, fm) for name, fm in
             (("batch-major", False), ("feature-major", True))}  # fmt: skip
    calls = {name: c for name, (c, _) in built.items()}
    compile_s = {name: s for name, (_, s) in built.items()}
  outputs = [np.asarray(c(*args)) for c in calls.values()]
  diff = float(np.max(np.abs(outputs[0] - outputs[1])))
  if not diff < 1e-4:
    raise SystemExit(f"MISMATCH {cell_name} {shape}: {diff}")
  samples = timed_rounds(
    {name: (lambda c=c: jax.block_until_ready(c(*args))) for name, c in calls.items()}, repeats
  )
  med = {name: median_ms(s) for name, s in samples.items()}
  flops = 2 * batch * hidden * cell.num_gates * hidden * steps  # the recurrent matmuls
  return {
    "shape": list(shape),
    "cell": cell_name,
    "per_step": per_step,
    "median_ms": med,
    "compile_s": compile_s,
    "us_per_step": {name: 1e3 * m / steps for name, m in med.items()},
    "gflops": {name: flops / m / 1e6 for name, m in med.items()},
    "ratio": med["feature-major"] / med["batch-major"],
    "rule": recurrent.fused.policy.feature_major(batch, cell.num_gates * hidden),
    "max_diff": diff,
    "samples_ms": {name: [1e3 * t for t in s] for name, s in samples.items()},
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None)
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
  parser.add_argument("--repeats", type=int, default=15)
  parser.add_argument("--json", default=None, help="also save every sample here")
  parser.add_argument("--per-step", action="store_true", help="the recurrent matmul alone")
  args = parser.parse_args(argv)
  shapes = args.shapes or [parse_shape(s) for s in DEFAULT_SHAPES]
  rows = []
  what = "recurrent matmul + tanh alone, us per step (GFLOP/s)" if args.per_step else (
    "forward only, median ms")  # fmt: skip
  print(f"jax {jax.__version__}, {jax.default_backend()}, float32, {what} of "
        f"{args.repeats} interleaved calls\n")  # fmt: skip
  print("| B,T,I,H | cell | batch-major | feature-major | fm/bm | rule picks | compile s bm / fm |")
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for shape in shapes:
    for cell_name in args.cells:
      row = bench(shape, cell_name, args.repeats, args.per_step)
      rows.append(row)
      if args.per_step:
        us, gf = row["us_per_step"], row["gflops"]
        cols = [f"{us[n]:.0f} ({gf[n]:.0f})" for n in ("batch-major", "feature-major")]
      else:
        cols = [f"{row['median_ms'][n]:.1f}" for n in ("batch-major", "feature-major")]
      comp = row["compile_s"]
      comp = "–" if comp is None else f"{comp['batch-major']:.2f} / {comp['feature-major']:.2f}"
      print(
        f"| {','.join(map(str, shape))} | {cell_name.upper()} | {cols[0]} | {cols[1]} | "
        f"{row['ratio']:.2f} | {'feature' if row['rule'] else 'batch'} | {comp} |",
        flush=True,
      )
  finish(rows, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
