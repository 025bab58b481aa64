"""A short demo: a 2-layer bidirectional LSTM with time-invariant dropout on random data.

Run with ``python -m recurrent.demo``; it prints shapes and compile and step times.
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import recurrent


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--steps", type=int, default=100, help="sequence length T")
  parser.add_argument("--input-size", type=int, default=64)
  parser.add_argument("--hidden-size", type=int, default=128)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args(argv)

  print(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")
  cell = recurrent.lstm(args.hidden_size)
  k_params, k_data, k_drop = jax.random.split(jax.random.key(0), 3)
  params = recurrent.init_layers(cell, k_params, args.input_size, 2, bidirectional=True)
  xs = jax.random.normal(k_data, (args.batch, args.steps, args.input_size))
  lengths = jnp.linspace(args.steps // 2, args.steps, args.batch).astype(jnp.int32)
  keys = recurrent.sequence_keys(k_drop, jnp.arange(args.batch))

  def loss(params, xs, keys):
    _, ys = recurrent.stack(
      cell, params, xs, seq_lengths=lengths, dropout=0.25, recurrent_dropout=0.25, key=keys
    )
    return jnp.mean(ys**2), ys

  step = jax.jit(jax.value_and_grad(loss, has_aux=True))
  start = time.perf_counter()
  (value, ys), grads = jax.block_until_ready(step(params, xs, keys))
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    jax.block_until_ready(step(params, xs, keys))
    times.append(time.perf_counter() - start)
  print(f"inputs xs {xs.shape}, seq_lengths {lengths.shape}, keys {keys.shape}")
  print(f"outputs {ys.shape} (2 directions x {args.hidden_size}), loss {float(value):.5f}")
  print("grad shapes, layer 0 forward:", jax.tree.map(lambda g: g.shape, grads[0].forward))
  print(
    f"first call (trace + compile + run) {compile_s:.2f} s; forward+backward median"
    f" {1e3 * statistics.median(times):.1f} ms over {args.repeats} calls"
  )


if __name__ == "__main__":
  main()
