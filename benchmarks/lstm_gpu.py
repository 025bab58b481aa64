"""GPU speed of recurrent's LSTM and GRU against cuDNN (PyTorch, jax.experimental.rnn) and Flax.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

The GPU counterpart of ``lstm_cpu.py``, on the same shapes, weights, inputs, loss and
checks (its ``bench_inputs``, ``check`` and ``time_rows``). For every shape and cell it
times the forward pass and forward+backward (the gradient of ``sum(outputs * R)`` with
respect to params and inputs) of:

* ``recurrent``, ``rec+dropout`` (``dropout=0.25, recurrent_dropout=0.25``), ``flax`` and
  ``flax-opt`` (``nn.RNN(LSTMCell / OptimizedLSTMCell)``, ``GRUCell``) under ``jax.jit``;
* ``torch``: PyTorch's ``nn.LSTM`` / ``nn.GRU`` on ``cuda``, which run cuDNN's fused RNN
  kernels; each call ends with ``torch.cuda.synchronize()``;
* ``jax-rnn`` (LSTM only: it has no GRU): ``jax.experimental.rnn.lstm``, JAX's own call
  into cuDNN's LSTM, on recurrent's weights packed into cuDNN's flat layout
  (``w_ih^T, w_hh^T, b, 0``); its gradient is unpacked with ``unpack_lstm_weights``.

float32 throughout, without TensorFloat-32: ``jax_default_matmul_precision="highest"``
(recurrent's and Flax's matmuls), ``precision=HIGHEST`` for ``jax.experimental.rnn`` and
``torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False``, so
that every implementation computes the same float32 numbers (checked to ``lstm_cpu``'s
tolerances before any timing; a mismatch stops the run with exit status 1). The peak is a
4096x4096 float32 matmul (``jnp.dot`` at ``HIGHEST``, ``torch.mm``), before and after.

Run from the repository root on a machine with a GPU and the CUDA builds of jax and torch::

    python benchmarks/lstm_gpu.py [--shapes 32,100,128,256 ...] [--repeats N] [--json PATH]
        [--unroll K ...]   # also recurrent with lax.scan's unroll=K, against unroll 1

``--allow-cpu`` runs it where there is no GPU (PyTorch on the CPU, no ``jax-rnn``): a check
of the script itself, not a GPU measurement.
"""

import argparse
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import torch  # noqa: E402
from jax import lax  # noqa: E402

from benchmarks import lstm_cpu  # noqa: E402
from benchmarks.lstm_cpu import (  # noqa: E402
  DEFAULT_SHAPES,
  _jax_impl,
  add_unroll_option,
  bench_inputs,
  checked,
  common_builders,
  grid_rows,
  matmul_peak,
  parse_shape,
  save_run,
  time_rows,
  unroll_ratios,
)


def build_jax_rnn(params, xs, r):
  """``jax.experimental.rnn.lstm`` (cuDNN) on recurrent's LSTM params, and its results in
  recurrent's layout for the check."""
  from jax.experimental import rnn

  batch, steps, inputs = xs.shape
  hidden = params.w_hh.shape[0]
  weights = jnp.concatenate(
    [params.w_ih.T.ravel(), params.w_hh.T.ravel(), params.b, jnp.zeros_like(params.b)]
  )
  lengths = jnp.full((batch,), steps, jnp.int32)
  zeros = jnp.zeros((1, batch, hidden), xs.dtype)

  def forward(w, x):
    args = (x, zeros, zeros, w, lengths, inputs, hidden, 1, 0.0, False, lax.Precision.HIGHEST)
    return rnn.lstm(*args)[0]

  calls, results = _jax_impl(forward, weights, xs, r)
  g_w, g_x = results["fwd+bwd"]
  w_ih, w_hh, b_ih, _ = rnn.unpack_lstm_weights(g_w, inputs, hidden, 1, False)
  results["fwd+bwd"] = (params._replace(w_ih=w_ih[0].T, w_hh=w_hh[0].T, b=b_ih[0]), g_x)
  return calls, results


def bench_cell(shape, cell_name, repeats, row_seconds, log, device, unrolls=()) -> list:
  cell, params, xs, r = bench_inputs(shape, cell_name)
  builders = common_builders(cell, params, xs, r, device, unrolls)
  if cell_name == "lstm" and device == "cuda":
    builders["jax-rnn"] = lambda: build_jax_rnn(params, xs, r)
  calls, results = {}, {}
  for impl, build in builders.items():
    try:
      calls[impl], results[impl] = build()
    except Exception as e:  # noqa: BLE001  an experimental API: report, time the others
      if impl != "jax-rnn":
        raise
      log(f"  {cell_name} {shape}: jax.experimental.rnn left out: {type(e).__name__}: {e}")
  checks = checked(cell, params, xs, results, log, shape)
  del results
  return time_rows(shape, cell, calls, repeats, row_seconds, log, checks=checks)


def table(rows, peak, unrolls=()) -> str:
  impls = ("recurrent", "rec+dropout", "flax", "flax-opt", "torch", "jax-rnn")
  impls += tuple(f"rec-u{k}" for k in unrolls)
  head = ["B,T,I,H", "cell", "mode", "n"]
  head += [f"{i} ms" for i in impls]
  head += ["rec/torch", "rec/flax-opt (GRU: /GRUCell)", "rec/jax-rnn", "dropout/no-dropout"]
  head += [f"rec-u{k}/rec" for k in unrolls]
  compiled = [i.replace("recurrent", "rec").replace("rec+dropout", "drop") for i in impls]
  compiled = " / ".join(c for c in compiled if c != "torch")
  head += ["rec GFLOP/s (% of peak)", f"compile s: {compiled}"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  dash = "–"
  for row in rows:
    med, ratios, comp = row["median_ms"], row["ratios"], row["compile_s"]
    flax_ratio = next(v for k, v in ratios.items() if k.startswith("recurrent/flax"))
    gflops = row["recurrent_gflops"]
    cells = [
      ",".join(map(str, row["shape"])),
      row["cell"].upper(),
      row["mode"],
      str(row["repeats"]),
    ]
    cells += [f"{med[i]:.2f}" if i in med else dash for i in impls]
    cells += [f"{ratios['recurrent/torch']:.2f}", f"{flax_ratio:.2f}"]
    cells += [
      f"{ratios[k]:.2f}" if k in ratios else dash
      for k in ("recurrent/jax-rnn", "dropout/no-dropout")
    ]
    cells += unroll_ratios(med, unrolls)
    cells += [f"{gflops:.0f} ({100 * gflops / peak:.1f}%)"]
    cells += [" / ".join(f"{comp[i]:.2f}" if i in comp else dash for i in impls if i != "torch")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def environment(device) -> dict:
  """``lstm_cpu.environment`` and the GPU's."""
  return {
    **lstm_cpu.environment(keras=False),
    "jax_devices": [str(d) for d in jax.devices()],
    "torch_device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    "cudnn": torch.backends.cudnn.version() if device == "cuda" else None,
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=list(DEFAULT_SHAPES))
  parser.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
  parser.add_argument("--repeats", type=int, default=25, help="timed calls per row (default 25)")
  parser.add_argument(
    "--row-seconds", type=float, default=5.0, help="stop a row's rounds after this (default 5)"
  )
  parser.add_argument(
    "--compile-samples", type=int, default=1, help="compiles timed per program (default 1)"
  )
  parser.add_argument("--json", metavar="PATH", help="also write every sample to this file")
  add_unroll_option(parser)
  parser.add_argument("--allow-cpu", action="store_true", help="run without a GPU (a check)")
  args = parser.parse_args(argv)
  on_gpu = jax.default_backend() == "gpu" and torch.cuda.is_available()
  if not (on_gpu or args.allow_cpu):
    parser.error(
      f"no GPU: jax's backend is {jax.default_backend()!r}, torch.cuda.is_available() is"
      f" {torch.cuda.is_available()}; pass --allow-cpu to check the script anyway"
    )
  device = "cuda" if on_gpu else "cpu"
  jax.config.update("jax_default_matmul_precision", "highest")
  torch.backends.cuda.matmul.allow_tf32 = False
  torch.backends.cudnn.allow_tf32 = False
  lstm_cpu.COMPILE_SAMPLES = args.compile_samples
  started = time.perf_counter()

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  env = environment(device)
  log(f"{env}")
  peak_start = matmul_peak(4096, device=device)
  rows = grid_rows(args, log, functools.partial(bench_cell, device=device, unrolls=args.unroll))
  if rows is None:
    return 1
  peak_end = matmul_peak(4096, device=device)
  elapsed = time.perf_counter() - started
  print(
    f"\nrecurrent {env['recurrent']}: jax {env['jax']}, flax {env['flax']}, torch {env['torch']}"
    f" (cuDNN {env['cudnn']}); {env['torch_device']}; float32 without TF32;"
    f" median of n interleaved calls"
  )
  print(
    "float32 4096x4096 matmul peak (TFLOP/s, before / after the rows):"
    f" jnp.dot {peak_start['jax'] / 1e3:.1f} / {peak_end['jax'] / 1e3:.1f},"
    f" torch.mm {peak_start['torch'] / 1e3:.1f} / {peak_end['torch'] / 1e3:.1f}\n"
  )
  print(table(rows, max(peak_start["jax"], peak_end["jax"]), args.unroll))
  print(f"\nAll implementations matched recurrent (lstm_cpu.check); total {elapsed:.0f} s.")
  if args.json:
    save_run(args, env, (peak_start, peak_end), elapsed, rows)
  return 0


if __name__ == "__main__":
  sys.exit(main())
