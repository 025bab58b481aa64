"""A batch of one sequence: the loop over ``[H]`` carries against the loop over ``[1, H]``.

Shape legend: B batch (here 1), T time, I input size, H hidden size.

``recurrent.fused.policy.unbatched(batch_shape)`` decides whether the forward alone (inference,
evaluation: not under ``grad``) drops the batch dims of a batch of one. This script
compiles ``recurrent.scan``'s jitted forward on ``xs [1, T, I]`` twice per shape and cell,
with that rule forced on and off, checks that both give the same outputs, and times them
interleaved in one process (float32, medians of ``--repeats`` calls in random order,
``lstm_cpu.timed_rounds``). Under ``grad`` the rule never applies; the second pair of
columns shows why: the gradient of ``scan`` on ``xs [1, T, I]`` against the same on
``xs[0]``, ``[T, I]`` (unbatched). Ratios below 1: unbatched is faster. "rule picks" is
what the forward alone runs by default. Compile times are medians of 3 fresh compiles
(trace + XLA compile), as in ``lstm_cpu.py``.

Run from the repository root::

    python benchmarks/batch_of_one.py [--shapes 1,1000,64,128 ...] [--cells lstm gru]
                                      [--repeats N] [--json PATH]
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

DEFAULT_SHAPES = ("1,1000,64,128", "1,200,128,256", "1,100,256,512")


def programs(cell, params, xs, weights) -> dict:
  """``{name: (compiled, compile_s)}`` of the four programs, all on ``(params, xs [1, T, I],
  weights [1, T, H])``."""

  def forward(layout):
    return lambda p, x, w: recurrent.scan(cell, p, x, layout=layout)[1]

  def grad(unbatched: bool):
    def loss(p, x, w):
      ys = recurrent.scan(cell, p, x[0] if unbatched else x)[1]
      return jnp.sum(ys * (w[0] if unbatched else w))

    return jax.grad(loss, argnums=(0, 1))

  args = (params, xs, weights)
  return {
    "[1, H]": compile_timed(forward("batch"), *args),
    "[H]": compile_timed(forward("unbatched"), *args),
    "grad [1, H]": compile_timed(grad(False), *args),
    "grad [H]": compile_timed(grad(True), *args),
  }


def _max_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
             zip(jax.tree.leaves(a), jax.tree.leaves(b)))  # fmt: skip


def bench(shape, cell_name, repeats: int) -> dict:
  batch, steps, inputs, hidden = shape
  if batch != 1:
    raise SystemExit(f"--shapes: B must be 1, got {shape}")
  cell = getattr(recurrent, cell_name)(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
  weights = jax.random.normal(jax.random.key(2), (batch, steps, hidden))
  args = (params, xs, weights)
  built = programs(cell, *args)
  out = {name: c(*args) for name, (c, _) in built.items()}
  diffs = {"forward": _max_diff(out["[1, H]"], out["[H]"]),
           "grad": _max_diff(out["grad [1, H]"], out["grad [H]"])}  # fmt: skip
  if not max(diffs.values()) < 1e-4:
    raise SystemExit(f"MISMATCH {cell_name} {shape}: {diffs}")
  samples = timed_rounds(
    {name: (lambda c=c: jax.block_until_ready(c(*args))) for name, (c, _) in built.items()},
    repeats,
  )
  med = {name: median_ms(s) for name, s in samples.items()}
  return {
    "shape": list(shape),
    "cell": cell_name,
    "median_ms": med,
    "compile_s": {name: s for name, (_, s) in built.items()},
    "ratio_forward": med["[H]"] / med["[1, H]"],
    "ratio_grad": med["grad [H]"] / med["grad [1, H]"],
    "rule": recurrent.fused.policy.unbatched((batch,)),
    "max_diff": diffs,
    "samples_ms": {name: [1e3 * t for t in s] for name, s in samples.items()},
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=None)
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
  parser.add_argument("--repeats", type=int, default=31)
  parser.add_argument("--json", default=None, help="also save every sample here")
  args = parser.parse_args(argv)
  shapes = args.shapes or [parse_shape(s) for s in DEFAULT_SHAPES]
  print(f"jax {jax.__version__}, {jax.default_backend()}, float32, median ms of "
        f"{args.repeats} interleaved calls\n")  # fmt: skip
  print("| B,T,I,H | cell | fwd [1, H] | fwd [H] | [H] / [1, H] | fwd+bwd [1, H] | fwd+bwd [H] "
        "| [H] / [1, H] | rule picks | compile s fwd [1, H] / [H] |")  # fmt: skip
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  rows = []
  for shape in shapes:
    for cell_name in args.cells:
      row = bench(shape, cell_name, args.repeats)
      rows.append(row)
      med, comp = row["median_ms"], row["compile_s"]
      print(
        f"| {','.join(map(str, shape))} | {cell_name.upper()} | {med['[1, H]']:.2f} | "
        f"{med['[H]']:.2f} | {row['ratio_forward']:.3f} | {med['grad [1, H]']:.2f} | "
        f"{med['grad [H]']:.2f} | {row['ratio_grad']:.3f} | "
        f"{'[H]' if row['rule'] else '[1, H]'} | {comp['[1, H]']:.2f} / {comp['[H]']:.2f} |",
        flush=True,
      )
  finish(rows, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
