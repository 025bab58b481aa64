"""Training throughput of the PTB configs, and the share of their step spent in the read-out
with its softmax cross-entropy and in the LSTM stack (each timed alone, forward + backward).

    python results/ptb/throughput.py PTB_DIR [VARIANT ...]   # default: zaremba_small gal_medium

Medians of timed jitted calls; run it with the machine otherwise idle.
"""

import sys
import time

import jax
import numpy as np
import optax

import recurrent
from recurrent.train import loop, tasks
from recurrent.train.configs import ptb


def median_seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def measure(variant: str, data_dir: str) -> str:
  config = ptb.get_config(variant)
  config.data_dir = data_dir
  task = tasks.make(config)
  state = loop.init_state(config, task, jax.random.key(0), total_steps=100)
  batch, key = task.train_batch(0), jax.random.key(1)
  repeats = 40 if config.hidden_size < 500 else 8
  train_step = jax.jit(loop.make_train_step(task))
  step = median_seconds(lambda s, b, k: train_step(s, b, k)[1]["loss"], state, batch, key,
                        repeats=repeats)  # fmt: skip
  b, t, h = config.batch_size, config.seq_len, config.hidden_size
  hs = jax.random.normal(jax.random.key(2), (b, t, h))
  readout, targets = state.params["readout"], batch["targets"]

  def softmax_loss(kernel, bias, hs):
    logits = hs @ kernel + bias
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum()

  softmax = median_seconds(
    jax.jit(jax.grad(softmax_loss, argnums=(0, 1, 2))), readout["kernel"], readout["bias"], hs,
    repeats=repeats,
  )  # fmt: skip
  cell = recurrent.lstm(h)
  params = recurrent.init_layers(cell, jax.random.key(3), h, num_layers=config.num_layers)
  options = {}
  if config.dropout_kind == "variational" and config.dropout:
    options = dict(dropout=config.dropout, recurrent_dropout=config.recurrent_dropout,
                   per_gate_masks=config.untied_masks)  # fmt: skip
  keys = recurrent.sequence_keys(key, b) if options else None

  def stack_loss(params, hs):
    return recurrent.stack(cell, params, hs, key=keys, **options)[1].sum()

  lstm = median_seconds(jax.jit(jax.grad(stack_loss, argnums=(0, 1))), params, hs, repeats=repeats)
  return (
    f"{variant}: step {step * 1e3:.1f} ms = {b * t / step:,.0f} tokens/s; read-out + softmax"
    f" cross-entropy {softmax * 1e3:.1f} ms ({softmax / step:.0%}); LSTM stack"
    f" {lstm * 1e3:.1f} ms ({lstm / step:.0%})"
  )


if __name__ == "__main__":
  if len(sys.argv) < 2:
    sys.exit(__doc__)
  for variant in sys.argv[2:] or ["zaremba_small", "gal_medium"]:
    print(measure(variant, sys.argv[1]), flush=True)
