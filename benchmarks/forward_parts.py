"""Where the forward pass's time goes: its three parts, each timed alone, next to Flax's.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

For every shape and cell it times, interleaved in one process (float32, medians):

* ``recurrent``: ``recurrent.scan``'s jitted forward (whatever layout it picks);
* ``flax``: ``nn.RNN(OptimizedLSTMCell)`` (LSTM) or ``nn.RNN(GRUCell)`` (GRU) on the same
  weights, the issue's reference;
* ``projection``: the hoisted input projection alone, ``[T*B, I] @ [I, G*H]``, in
  ``recurrent``'s chunks of time steps where its forward chunks;
* ``recurrent matmul``: T dependent steps ``h = tanh(sum of the G column blocks of
  h @ w_hh)``, batch-major (``benchmarks/feature_major.py --per-step``);
* ``gate maths``: T steps of the cell's own pointwise maths (``cell.fast.pointwise``) on the
  stored per-gate projections, with no matmul: the projection stands in for ``h @ w_hh``.

A forward has to do all three, one after the other within a step (the gate maths needs
the step's matmul, the next matmul needs its ``h``), so the sum is roughly what a
``lax.scan`` forward on this XLA costs. It is not a strict bound: each part alone also
pays a few things the whole forward shares or avoids (the tanh of the matmul's step, the
gate program's output stack). ``sum/Flax`` against 0.75 says how far the issue's forward
target is from what XLA:CPU runs these parts at.

Run from the repository root::

    python benchmarks/forward_parts.py [--shapes 256,50,64,128 ...] [--cells lstm gru]
                                       [--repeats N]
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import linen as nn  # noqa: E402

import recurrent  # noqa: E402
from benchmarks.feature_major import step_programs  # noqa: E402
from benchmarks.lstm_cpu import DEFAULT_SHAPES, build_flax, interleaved_ms, parse_shape  # noqa: E402

PARTS = ("projection", "recurrent matmul", "gate maths")


def projection_program(steps: int, batch: int, width: int):
  """``(w_ih, xs [T, B, I])``: ``xs @ w_ih``, in ``recurrent``'s chunks of time steps
  where its forward chunks (``recurrent.fused.policy.chunk_rule``), each chunk's result
  overwriting the last's, so that no buffer is faulted in at every call that
  ``recurrent``'s forward does not fault in."""
  chunk = recurrent.fused.policy.chunk_rule(steps, batch * width * 4)

  def project(w, xs):
    if chunk is None:
      return xs.reshape(-1, xs.shape[-1]) @ w
    chunks = xs.reshape((steps // chunk, chunk * batch, -1))
    last = jnp.zeros((chunk * batch, width), xs.dtype)
    return jax.lax.scan(lambda _, x: (x @ w, None), last, chunks)[0]

  return project


def gate_program(cell):
  """``(extra, xp, carry) -> (carry, hs)``: ``cell.fast.pointwise`` over T steps, no matmul."""

  def run(extra, xp, carry):
    def step(carry, xp_t):
      new, h, _ = cell.fast.pointwise(extra, carry, xp_t, xp_t)
      return new, h

    return jax.lax.scan(step, carry, xp)

  return jax.jit(run)


def bench(shape, cell_name, repeats: int) -> dict:
  batch, steps, inputs, hidden = shape
  cell = getattr(recurrent, cell_name)(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jax.random.normal(jax.random.key(1), (batch, steps, inputs))
  xs_tm = jnp.moveaxis(xs, 1, 0)
  programs = {
    "recurrent": (jax.jit(lambda p, x: recurrent.scan(cell, p, x)[1]), (params, xs)),
    "projection": (
      jax.jit(projection_program(steps, batch, cell.num_gates * hidden)),
      (params.w_ih, xs_tm),
    ),  # fmt: skip
    "recurrent matmul": (
      step_programs(cell.num_gates)["batch-major"],
      (jnp.zeros((batch, hidden)), params.w_hh, jnp.zeros(steps)),
    ),
    "gate maths": (
      gate_program(cell),
      (
        cell.fast.pointwise_params(params),
        cell.project(params, xs_tm),
        cell.initial_carry((batch,)),
      ),
    ),
  }
  calls = {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, a) in programs.items()}
  flax_cell = nn.OptimizedLSTMCell(hidden) if cell_name == "lstm" else nn.GRUCell(hidden)
  flax_calls, _ = build_flax(flax_cell, params, xs, jnp.zeros((batch, steps, hidden)))
  calls["flax"] = flax_calls["fwd"][0]
  for call in calls.values():
    call()
  return {"shape": list(shape), "cell": cell_name, "median_ms": interleaved_ms(calls, repeats)}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=list(DEFAULT_SHAPES))
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
  parser.add_argument("--repeats", type=int, default=15)
  args = parser.parse_args(argv)
  print(f"jax {jax.__version__}, {jax.default_backend()}, float32, forward only, median ms "
        f"of {args.repeats} interleaved calls; in brackets, the part over Flax\n")  # fmt: skip
  print("| B,T,I,H | cell | recurrent | Flax | " + " | ".join(PARTS) + " | sum/Flax | rec/Flax |")
  print("| --- " * (len(PARTS) + 6) + "|")
  for shape in args.shapes:
    for cell_name in args.cells:
      med = bench(shape, cell_name, args.repeats)["median_ms"]
      flax = med["flax"]
      parts = " | ".join(f"{med[p]:.1f} ({med[p] / flax:.2f})" for p in PARTS)
      total = sum(med[p] for p in PARTS)
      print(
        f"| {','.join(map(str, shape))} | {cell_name.upper()} | {med['recurrent']:.1f} | "
        f"{flax:.1f} | {parts} | {total / flax:.2f} | {med['recurrent'] / flax:.2f} |",
        flush=True,
      )
  print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
