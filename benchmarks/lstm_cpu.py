"""CPU speed of recurrent's LSTM and GRU against Flax, PyTorch and Keras, float32, one process.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

For every shape (B, T, I, H) and cell it times the forward pass (outputs ``[B, T, H]``) and
forward+backward (the gradient of ``sum(outputs * R)``, R a fixed random ``[B, T, H]``,
with respect to params AND inputs) of:

* ``recurrent``: ``recurrent.scan(recurrent.lstm(H), params, xs)`` under ``jax.jit``;
* ``rec+dropout``: the same with ``dropout=0.25, recurrent_dropout=0.25`` and one key per
  sequence from ``recurrent.sequence_keys``;
* ``flax`` / ``flax-opt``: ``nn.RNN(nn.LSTMCell(H))`` / ``nn.RNN(nn.OptimizedLSTMCell(H))``
  under ``jax.jit`` (``nn.GRUCell`` for the GRU, which has no optimised variant);
* ``torch``: ``nn.LSTM(I, H, batch_first=True)`` / ``nn.GRU`` with 2 threads; forward under
  ``torch.no_grad()``, forward+backward with ``.backward()`` and an input that requires grad;
* ``keras``: Keras 3 on the JAX backend (``KERAS_BACKEND=jax``, set before the lazy import),
  ``keras.layers.LSTM(H, return_sequences=True)`` / ``GRU`` (``reset_after=True``, the
  default) built on ``[B, T, I]``, called through ``layer.stateless_call(trainable,
  non_trainable, xs)`` under ``jax.jit`` and differentiated with ``jax.grad``. Its defaults
  are kept (``use_cudnn="auto"``, ``unroll=False``): on the CPU Keras's cuDNN LSTM is never
  taken (it needs a GPU backend), the LSTM runs ``keras.backend.rnn``'s ``lax.scan`` over the
  cell (implementation 2, the input matmul inside the step) and the GRU ``keras.backend.gru``'s
  ``lax.scan`` with the input projection hoisted; the ``unroll`` of every ``lax.scan`` in the
  traced forward pass is recorded. ``--skip-keras`` leaves Keras out;
* ``keras+dropout``: the Keras LSTM / GRU with its own ``dropout=0.25, recurrent_dropout=0.25`` and
  ``training=True`` (its SeedGenerator state is a non-trainable variable; the masks differ
  from recurrent's, so only the output shape and a difference from Keras without dropout are
  checked). ``recurrent_dropout`` switches Keras's LSTM to its generic loop with
  implementation 1 (four input and four recurrent matmuls per step).

All use the same weights (``recurrent.convert.to_flax`` / ``to_torch``, and ``from_torch``
must give them back; Keras's LSTM kernels have recurrent's gate order, its GRU's the order
z, r, h, so the r and z blocks are swapped). Before any timing the outputs and all gradients are
compared with ``recurrent``'s; a mismatch stops the run with a non-zero exit status.

Timing: trace+compile is timed once (``jax.jit(f).lower(...).compile()``), every
implementation is called twice to warm up (once for the check), then the implementations of one
(shape, cell, mode) run in rounds, each in a fresh random order (seeded), ``--repeats``
times each (fewer, but at least ``MIN_REPEATS``, once a row has used ``--row-seconds``, so
that a loaded machine cannot stretch the run without bound); each call ends with
``block_until_ready``. (Until run 11 of 2026-11-26 the rounds ran one order rotated by one,
in which every call but a round's first follows the same other: Keras's calls followed
PyTorch's, whose OpenMP threads still spin for some ms after a call; see ``timed_rounds``.)
Reported: median milliseconds and n, the number of calls it is the median of. The
machine's float32 matmul peak (a 2048x2048 ``jnp.dot`` and ``torch.mm``) is measured
before and after the rows; recurrent's GFLOP/s (forward ``2*B*T*(I+H)*G*H`` flops, 3x that
for forward+backward) is given as a share of the higher ``jnp.dot`` figure, and next to it
the GFLOP/s at which ``recurrent`` would meet both speed targets of the row (1.0x PyTorch's
time and 0.75x Flax's): above 100% of the peak no implementation could meet both. A large
gap between the two peak figures means the load changed during the run.

Run from the repository root::

    python benchmarks/lstm_cpu.py [--shapes 32,100,128,256 ...] [--repeats N] [--json PATH]
        [--skip-keras]

Other processes on the machine (test runs) slow everything down, PyTorch's OpenMP threads
most of all: compare implementations within one row, and check the load average printed
at the end.
"""

import argparse
import functools
import gc
import importlib.metadata
import json
import os
import platform
import random
import statistics
import sys
import time

# Benchmark the checkout this file lives in, not whatever copy happens to be installed.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import recurrent  # noqa: E402
from benchmarks.target_status import TARGET_VS_FLAX, TARGET_VS_TORCH  # noqa: E402
from recurrent import convert  # noqa: E402

DEFAULT_SHAPES = ((32, 100, 128, 256), (64, 200, 256, 512), (256, 50, 64, 128), (1, 1000, 64, 128))
DROPOUT = 0.25
TORCH_THREADS = 2
MIN_REPEATS = 3
COMPILE_SAMPLES = 3  # compile times are medians of this many
# Outputs must agree to this absolute difference; gradients to this difference relative
# to the largest entry of the reference gradient (at least 1), since weight gradients sum
# B*T terms and grow with them.
OUTPUT_ATOL = 1e-4
GRAD_RTOL = 1e-4

IMPLS = ("recurrent", "rec+dropout", "flax", "flax-opt", "torch", "keras", "keras+dropout")
KERAS_INSTALL = "pip install -e '.[bench]'"
MODES = ("fwd", "fwd+bwd")


class MismatchError(AssertionError):
  pass


def parse_shape(text: str) -> tuple:
  parts = tuple(int(p) for p in text.replace("x", ",").split(","))
  if len(parts) != 4 or min(parts) < 1:
    raise argparse.ArgumentTypeError(f"a shape is B,T,I,H (four positive ints), got {text!r}")
  return parts


def add_unroll_option(parser) -> None:
  """``--unroll K [K ...]``: also time recurrent with ``lax.scan``'s ``unroll=K``."""

  def positive(text):
    if not text.isdigit() or int(text) < 1:
      raise argparse.ArgumentTypeError(f"K is a positive int, got {text!r}")
    return int(text)

  parser.add_argument(
    "--unroll",
    nargs="+",
    type=positive,
    default=[],
    metavar="K",
    help="also time recurrent with lax.scan's unroll=K (columns rec-uK; default none)",
  )


def unroll_ratios(med: dict, unrolls) -> list:
  """The ``rec-uK/rec`` table cells: recurrent's time with ``unroll=K`` over unroll 1's."""
  return [f"{med[f'rec-u{k}'] / med['recurrent']:.2f}" for k in unrolls]


def median_ms(seconds) -> float:
  return 1e3 * statistics.median(seconds)


def timed_rounds(calls: dict, repeats: int, seconds: float | None = None) -> dict:
  """Seconds of each ``calls[k]()``, as lists: ``repeats`` rounds (fewer, but at least
  ``MIN_REPEATS``, once ``seconds`` have passed), each calling them all in a fresh random
  order (seeded), so that no call always follows the same other.

  PyTorch's OpenMP threads spin for some ms after a call before they sleep (libgomp's
  GOMP_SPINCOUNT) and slow whatever runs next: recurrent's GRU forward at 32,100,128,256
  took 19.7 ms right after a PyTorch call and 15.0 ms after 10 ms of idling (2026-11-26,
  Zen 4 host, a one-off script). Idling before every call instead of shuffling slowed the
  short calls more, PyTorch's most: its LSTM forward at 1,1000,64,128 went from 4.3 to 12.0 ms
  (``results/lstm_cpu_2026-11-26_run12_pause.json``)."""
  rng = random.Random(0)
  samples = {k: [] for k in calls}
  started = time.perf_counter()
  for rep in range(repeats):
    for k in rng.sample(list(calls), len(calls)):
      start = time.perf_counter()
      calls[k]()
      samples[k].append(time.perf_counter() - start)
    if seconds is not None and rep + 1 >= MIN_REPEATS and time.perf_counter() - started > seconds:
      break
  return samples


def interleaved_ms(calls: dict, repeats: int) -> dict:
  """Median ms of each ``calls[k]()`` over ``repeats`` rounds of :func:`timed_rounds`."""
  return {k: median_ms(v) for k, v in timed_rounds(calls, repeats).items()}


# ---------------------------------------------------------------------------------------
# Matmul peak


def _torch_sync(device: str):
  """What ends a timed PyTorch call on ``device``: ``torch.cuda.synchronize`` on a GPU."""
  return torch.cuda.synchronize if device != "cpu" else (lambda: None)


def matmul_peak(n: int = 2048, repeats: int = 10, device: str = "cpu") -> dict:
  """Median float32 GFLOP/s of an ``[n, n] @ [n, n]`` matmul in JAX and in PyTorch (on
  ``device``: ``"cuda"`` synchronises after each product), at JAX's default precision."""
  flops = 2.0 * n**3
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  dot = jax.jit(jnp.dot).lower(a, b).compile()
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  ta, tb = torch.from_numpy(a).to(device), torch.from_numpy(b).to(device)
  sync = _torch_sync(device)
  fns = {
    "jax": lambda: dot(ja, jb).block_until_ready(),
    "torch": lambda: (torch.mm(ta, tb), sync()),
  }
  for fn in fns.values():
    fn()
    fn()
  times = {k: [] for k in fns}
  for _ in range(repeats):
    for k, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[k].append(time.perf_counter() - start)
  return {k: flops / statistics.median(t) / 1e9 for k, t in times.items()}


# ---------------------------------------------------------------------------------------
# Implementations. Each builder returns {mode: (callable, compile seconds or None)} and,
# for the check, {mode: outputs / gradients as NumPy in recurrent's layout}.


def save_json(path: str, payload: dict, **dump_options) -> None:
  """Writes ``payload`` to ``path`` through a ``.tmp`` file renamed over it, so that an
  interrupted run leaves no half-written file."""
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, **dump_options)
  os.replace(path + ".tmp", path)


def save_run(args, env, peaks, elapsed, rows, **extra) -> None:
  """Saves a grid run (``lstm_cpu.py``, ``lstm_gpu.py``) to ``args.json``: environment,
  settings, the matmul peaks ``(start, end)`` in GFLOP/s, total seconds and every row."""
  payload = {
    "environment": env,
    "repeats": args.repeats,
    "row_seconds": args.row_seconds,
    "matmul_peak_gflops": dict(zip(("start", "end"), peaks)),
    "total_s": elapsed,
    "rows": rows,
    **extra,
  }
  save_json(args.json, payload, indent=1)


def finish(rows: list, json_path: str | None) -> None:
  """The end of a grid script (``feature_major.py``, ``batch_of_one.py``): prints the load
  average and, given ``json_path``, saves ``{"jax": version, "rows": rows}`` there."""
  print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}")
  if json_path:
    save_json(json_path, {"jax": jax.__version__, "rows": rows})


def compile_timed(fn, *args):
  """``(jax.jit(fn) compiled, seconds)``: the median trace+compile time of
  COMPILE_SAMPLES more compiles, each of a fresh function (so that JAX's trace cache is not
  hit), after a first one that pays the process's one-time warm-ups."""
  compiled = jax.jit(fn).lower(*args).compile()
  seconds = []
  for _ in range(COMPILE_SAMPLES):
    start = time.perf_counter()
    jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    seconds.append(time.perf_counter() - start)
  return compiled, statistics.median(seconds)


def _jax_impl(forward, variables, xs, r, extra=()):
  """``forward(variables, xs, *extra) -> ys [B, T, H]`` jitted, and its loss gradient."""

  def loss(v, x, r, *extra):
    return jnp.sum(forward(v, x, *extra) * r)

  grad = jax.grad(loss, argnums=(0, 1))
  fwd_c, fwd_s = compile_timed(forward, variables, xs, *extra)
  grad_c, grad_s = compile_timed(grad, variables, xs, r, *extra)
  calls = {
    "fwd": (lambda: jax.block_until_ready(fwd_c(variables, xs, *extra)), fwd_s),
    "fwd+bwd": (lambda: jax.block_until_ready(grad_c(variables, xs, r, *extra)), grad_s),
  }
  results = {"fwd": fwd_c(variables, xs, *extra), "fwd+bwd": grad_c(variables, xs, r, *extra)}
  return calls, results


def build_recurrent(cell, params, xs, r, unroll=1):
  def forward(p, x):
    return recurrent.scan(cell, p, x, unroll=unroll)[1]

  return _jax_impl(forward, params, xs, r)


def build_dropout(cell, params, xs, r):
  keys = recurrent.sequence_keys(jax.random.key(7), xs.shape[0])

  def forward(p, x, k):
    return recurrent.scan(cell, p, x, dropout=DROPOUT, recurrent_dropout=DROPOUT, key=k)[1]

  return _jax_impl(forward, params, xs, r, extra=(keys,))


def build_flax(flax_cell, params, xs, r):
  rnn = nn.RNN(flax_cell)
  variables = {"params": {"cell": convert.to_flax(params)["params"]}}
  calls, results = _jax_impl(rnn.apply, variables, xs, r)
  g_vars, g_x = results["fwd+bwd"]
  results["fwd+bwd"] = (convert.from_flax(g_vars["params"]["cell"]), g_x)
  return calls, results


def build_torch(cell_name, params, xs, r, device="cpu"):
  """PyTorch's ``nn.LSTM`` / ``nn.GRU`` on ``device`` (on ``"cuda"``, cuDNN's kernels); each
  call ends with ``torch.cuda.synchronize()`` there."""
  batch, steps, inputs = xs.shape
  hidden = params.w_hh.shape[0]
  module = (torch.nn.LSTM if cell_name == "lstm" else torch.nn.GRU)(
    inputs, hidden, batch_first=True
  )
  state_dict = convert.to_torch([params])
  module.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})
  back = convert.from_torch(module.state_dict())[0]
  for name, a, b in zip(params._fields, params, back):
    if not np.array_equal(np.asarray(a), np.asarray(b)):
      raise MismatchError(f"convert.from_torch(to_torch(params)).{name} differs from params")
  module.to(device)
  sync = _torch_sync(device)

  x_t = torch.from_numpy(np.array(xs)).to(device)
  x_g = x_t.clone().requires_grad_(True)
  r_t = torch.from_numpy(np.array(r)).to(device)

  def fwd():
    with torch.no_grad():
      ys = module(x_t)[0]
    sync()
    return ys

  def fwd_bwd():
    module.zero_grad(set_to_none=True)
    x_g.grad = None
    (module(x_g)[0] * r_t).sum().backward()
    sync()

  ys = fwd().cpu().numpy()
  fwd_bwd()
  grads = {k: p.grad.cpu().numpy().T.copy() for k, p in module.named_parameters()}
  g_x = x_g.grad.cpu().numpy()
  calls = {"fwd": (fwd, None), "fwd+bwd": (fwd_bwd, None)}
  return calls, {"fwd": ys, "fwd+bwd": (grads, g_x)}


def import_keras():
  """Keras 3 on the JAX backend, imported on first use (only the Keras rows need it)."""
  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
  try:
    import keras
  except ImportError as e:
    raise SystemExit(
      f"the Keras rows need keras 3 ({e}): {KERAS_INSTALL}, or pass --skip-keras"
    ) from None
  if keras.backend.backend() != "jax":
    raise SystemExit(f"keras runs on the {keras.backend.backend()!r} backend, not 'jax'")
  return keras


def _swap_rz(a):
  """recurrent's GRU gate blocks ``r, z, n`` <-> Keras's ``z, r, h`` (its own inverse)."""
  r_gate, z_gate, n_gate = jnp.split(jnp.asarray(a), 3, axis=-1)
  return jnp.concatenate([z_gate, r_gate, n_gate], axis=-1)


def to_keras(cell_name, params) -> dict:
  """recurrent's params as Keras's ``{kernel, recurrent_kernel, bias}``."""
  if cell_name == "lstm":  # Keras's i, f, c, o is recurrent's i, f, g, o.
    return {"kernel": params.w_ih, "recurrent_kernel": params.w_hh, "bias": params.b}
  return {
    "kernel": _swap_rz(params.w_ih),
    "recurrent_kernel": _swap_rz(params.w_hh),
    # reset_after=True: row 0 the input bias, row 1 the recurrent bias.
    "bias": jnp.stack([_swap_rz(params.b_ih), _swap_rz(params.b_hh)]),
  }


def from_keras(cell_name, weights, like):
  """The inverse of ``to_keras``, as the params type of ``like``."""
  if cell_name == "lstm":
    return like._replace(
      w_ih=weights["kernel"], w_hh=weights["recurrent_kernel"], b=weights["bias"]
    )
  return like._replace(
    w_ih=_swap_rz(weights["kernel"]),
    w_hh=_swap_rz(weights["recurrent_kernel"]),
    b_ih=_swap_rz(weights["bias"][0]),
    b_hh=_swap_rz(weights["bias"][1]),
  )


def _scan_unrolls(jaxpr) -> list:
  """The ``unroll`` of every ``lax.scan`` in a (closed) jaxpr, nested ones included."""
  found = []
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      found.append(int(eqn.params["unroll"]))
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          found += _scan_unrolls(inner)
  return found


def build_keras(cell_name, params, xs, r, dropout=False):
  keras = import_keras()
  hidden = params.w_hh.shape[0]
  layer_cls = keras.layers.LSTM if cell_name == "lstm" else keras.layers.GRU
  rates = {"dropout": DROPOUT, "recurrent_dropout": DROPOUT, "seed": 7} if dropout else {}
  layer = layer_cls(hidden, return_sequences=True, **rates)
  layer.build(xs.shape)
  names = [v.name for v in layer.trainable_variables]
  weights = to_keras(cell_name, params)
  if sorted(names) != sorted(weights):
    raise MismatchError(f"Keras {cell_name} has trainable variables {names}")
  for v in layer.trainable_variables:
    if tuple(v.shape) != weights[v.name].shape:
      raise MismatchError(f"Keras {v.name} has shape {v.shape}, not {weights[v.name].shape}")
  trainable = [jnp.asarray(weights[n], jnp.float32) for n in names]
  # With dropout this holds the SeedGenerator state: every call uses the same masks.
  non_trainable = [jnp.asarray(v.value) for v in layer.non_trainable_variables]

  def forward(tv, x, ntv):
    return layer.stateless_call(tv, ntv, x, training=dropout)[0]

  calls, results = _jax_impl(forward, trainable, xs, r, extra=(non_trainable,))
  g_tv, g_x = results["fwd+bwd"]
  results["fwd+bwd"] = (from_keras(cell_name, dict(zip(names, g_tv)), params), g_x)
  results["scan_unroll"] = _scan_unrolls(
    jax.make_jaxpr(forward)(trainable, xs, non_trainable).jaxpr
  )
  return calls, results


# ---------------------------------------------------------------------------------------
# Checks


def _max_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def _grad_pairs(cell_name, impl, ref_params, got_params, hidden):
  """Pairs (name, reference, other) of parameter gradients that must agree."""
  if impl == "torch":
    t = got_params
    if cell_name == "lstm":
      # b = bias_ih + bias_hh, so each torch bias has the gradient of b.
      return [
        ("w_ih", ref_params.w_ih, t["weight_ih_l0"]),
        ("w_hh", ref_params.w_hh, t["weight_hh_l0"]),
        ("b (torch bias_ih)", ref_params.b, t["bias_ih_l0"]),
        ("b (torch bias_hh)", ref_params.b, t["bias_hh_l0"]),
      ]
    return [
      ("w_ih", ref_params.w_ih, t["weight_ih_l0"]),
      ("w_hh", ref_params.w_hh, t["weight_hh_l0"]),
      ("b_ih", ref_params.b_ih, t["bias_ih_l0"]),
      ("b_hh", ref_params.b_hh, t["bias_hh_l0"]),
    ]
  pairs = [(f, a, b) for f, a, b in zip(ref_params._fields, ref_params, got_params)]
  if cell_name == "gru" and impl.startswith("flax"):
    # Flax's GRUCell has no h_r/h_z bias: to_flax folded them into its input biases, whose
    # gradient is the same. Only the h_n part of b_hh exists in Flax.
    pairs = [p for p in pairs if p[0] != "b_hh"]
    pairs.append(("b_hh[n]", ref_params.b_hh[2 * hidden :], got_params.b_hh[2 * hidden :]))
  return pairs


def check(cell_name, hidden, results, ys_no_dropout_det) -> dict:
  """Compare every implementation's outputs and gradients with recurrent's."""
  ref_ys = np.asarray(results["recurrent"]["fwd"])
  ref_gp, ref_gx = results["recurrent"]["fwd+bwd"]
  report = {}
  failures = []
  for impl, res in results.items():
    if impl in ("recurrent", "rec+dropout", "keras+dropout"):
      continue
    diffs = {"outputs": _max_diff(res["fwd"], ref_ys)}
    if diffs["outputs"] >= OUTPUT_ATOL:
      failures.append(f"{impl} outputs: max abs diff {diffs['outputs']:.3g} >= {OUTPUT_ATOL}")
    got_gp, got_gx = res["fwd+bwd"]
    pairs = [("d xs", ref_gx, got_gx)] + _grad_pairs(cell_name, impl, ref_gp, got_gp, hidden)
    for name, a, b in pairs:
      scale = max(1.0, float(np.max(np.abs(np.asarray(a)))))
      rel = _max_diff(a, b) / scale
      diffs[name] = rel
      if rel >= GRAD_RTOL:
        failures.append(
          f"{impl} gradient {name}: max abs diff / max(1, max |ref|) {rel:.3g} >= {GRAD_RTOL}"
        )
    report[impl] = diffs
  if "rec+dropout" in results:
    ys_drop = np.asarray(results["rec+dropout"]["fwd"])
    det = _max_diff(ys_no_dropout_det, ref_ys)
    report["rec+dropout"] = {"deterministic=True vs no dropout": det}
    if det != 0.0:
      failures.append(f"dropout with deterministic=True differs from no dropout by {det:.3g}")
    if not np.all(np.isfinite(ys_drop)) or _max_diff(ys_drop, ref_ys) == 0.0:
      failures.append("dropout outputs are not finite or equal the outputs without dropout")
  if "keras+dropout" in results:
    # Keras draws its own masks: only the shape and that dropout did something are checked.
    ys_drop = np.asarray(results["keras+dropout"]["fwd"])
    ys_keras = np.asarray(results["keras"]["fwd"])
    report["keras+dropout"] = {
      "max abs diff to keras without dropout": _max_diff(ys_drop, ys_keras)
    }
    if ys_drop.shape != ref_ys.shape:
      failures.append(f"keras+dropout outputs have shape {ys_drop.shape}, not {ref_ys.shape}")
    elif not np.all(np.isfinite(ys_drop)) or _max_diff(ys_drop, ys_keras) == 0.0:
      failures.append("keras+dropout outputs are not finite or equal Keras's without dropout")
  if failures:
    raise MismatchError("implementations disagree:\n  " + "\n  ".join(failures))
  return report


# ---------------------------------------------------------------------------------------
# One shape and cell


def bench_inputs(shape, cell_name):
  """``(cell, params, xs [B, T, I], r [B, T, H])`` of one row, the same in every run."""
  batch, steps, inputs, hidden = shape
  k_params, k_bias, k_x, k_r = jax.random.split(jax.random.key(0), 4)
  cell = recurrent.lstm(hidden) if cell_name == "lstm" else recurrent.gru(hidden)
  params = cell.init(k_params, inputs)
  # Non-zero biases, so that the converters' handling of them is exercised too.
  bias = {
    f: 0.1 * jax.random.normal(jax.random.fold_in(k_bias, i), getattr(params, f).shape)
    for i, f in enumerate(params._fields)
    if f.startswith("b")
  }
  params = params._replace(**bias)
  xs = jax.random.normal(k_x, (batch, steps, inputs), jnp.float32)
  r = jax.random.normal(k_r, (batch, steps, hidden), jnp.float32)
  return cell, params, xs, r


def checked(cell, params, xs, results, log, shape) -> dict:
  """:func:`check` of every builder's results against ``recurrent``'s, logged."""
  cell_name = cell.name
  ys_det = recurrent.scan(
    cell, params, xs, dropout=DROPOUT, recurrent_dropout=DROPOUT, deterministic=True
  )[1]
  checks = check(cell_name, cell.hidden_size, results, np.asarray(ys_det))
  worst = max(v for i, d in checks.items() if i != "keras+dropout" for v in d.values())
  log(f"  {cell_name} {shape}: checks passed (worst difference {worst:.2g})")
  return checks


def row_ratios(med: dict) -> dict:
  """recurrent's time over each reference's in ``med`` (ms by implementation), and each
  dropout variant's over its own without dropout."""
  flax_ref = "flax-opt" if "flax-opt" in med else "flax"
  ratios = {f"recurrent/{ref}": med["recurrent"] / med[ref] for ref in ("torch", flax_ref)}
  for ref in ("keras", "jax-rnn"):
    if ref in med:
      ratios[f"recurrent/{ref}"] = med["recurrent"] / med[ref]
  if "rec+dropout" in med:
    ratios["dropout/no-dropout"] = med["rec+dropout"] / med["recurrent"]
  if "keras+dropout" in med:
    ratios["keras dropout/no-dropout"] = med["keras+dropout"] / med["keras"]
  return ratios


def time_rows(shape, cell, calls, repeats, row_seconds, log, **extra) -> list:
  """One row per mode: every implementation of ``calls`` ({impl: {mode: (callable,
  compile seconds or None)}}) timed in :func:`timed_rounds`; ``extra`` goes into each row."""
  batch, steps, inputs, hidden = shape
  flops_fwd = 2.0 * batch * steps * (inputs + hidden) * cell.num_gates * hidden
  rows = []
  for mode in MODES:
    fns = {impl: c[mode][0] for impl, c in calls.items()}
    for fn in fns.values():  # a second call (the check made the first): allocations, caches
      fn()
    gc.collect()
    gc.disable()
    try:
      samples = timed_rounds(fns, repeats, row_seconds)
    finally:
      gc.enable()
    flops = flops_fwd * (1 if mode == "fwd" else 3)
    med = {impl: median_ms(s) for impl, s in samples.items()}
    rows.append(
      {
        "shape": list(shape),
        "cell": cell.name,
        "mode": mode,
        "repeats": len(samples["recurrent"]),
        "median_ms": med,
        "samples_ms": {impl: [1e3 * t for t in s] for impl, s in samples.items()},
        "compile_s": {impl: c[mode][1] for impl, c in calls.items() if c[mode][1] is not None},
        "flops": flops,
        "ratios": row_ratios(med),
        "recurrent_gflops": flops / (med["recurrent"] * 1e-3) / 1e9,
        **extra,
      }
    )
    log(
      f"  {cell.name} {shape} {mode} (median of {len(samples['recurrent'])}): "
      + ", ".join(f"{k} {v:.1f} ms" for k, v in med.items())
    )
  return rows


def grid_rows(args, log, bench) -> list | None:
  """Every row of ``args.shapes`` x ``args.cells``, ``bench(shape, cell_name, repeats,
  row_seconds, log)`` each; None (logged) when implementations disagree."""
  rows = []
  try:
    for shape in args.shapes:
      for cell_name in args.cells:
        rows += bench(tuple(shape), cell_name, args.repeats, args.row_seconds, log)
  except MismatchError as e:
    log(f"\nMISMATCH: {e}")
    return None
  return rows


def common_builders(cell, params, xs, r, device="cpu", unrolls=()) -> dict:
  """``{impl: build()}`` of the implementations both grid scripts time: recurrent (also
  with both dropouts and with each ``unroll`` K, ``rec-uK``), Flax and PyTorch on ``device``."""
  hidden = cell.hidden_size
  builders = {
    "recurrent": lambda: build_recurrent(cell, params, xs, r),
    "rec+dropout": lambda: build_dropout(cell, params, xs, r),
  }
  for k in unrolls:
    builders[f"rec-u{k}"] = functools.partial(build_recurrent, cell, params, xs, r, unroll=k)
  if cell.name == "lstm":
    builders["flax"] = lambda: build_flax(nn.LSTMCell(hidden), params, xs, r)
    builders["flax-opt"] = lambda: build_flax(nn.OptimizedLSTMCell(hidden), params, xs, r)
  else:
    builders["flax"] = lambda: build_flax(nn.GRUCell(hidden), params, xs, r)
  builders["torch"] = lambda: build_torch(cell.name, params, xs, r, device)
  return builders


def bench_cell(shape, cell_name, repeats, row_seconds, log, keras=True, unrolls=()) -> list:
  cell, params, xs, r = bench_inputs(shape, cell_name)
  builders = common_builders(cell, params, xs, r, unrolls=unrolls)
  if keras:
    builders["keras"] = lambda: build_keras(cell_name, params, xs, r)
    builders["keras+dropout"] = lambda: build_keras(cell_name, params, xs, r, dropout=True)

  calls, results = {}, {}
  for impl, build in builders.items():
    calls[impl], results[impl] = build()
  keras_scans = {i: res.pop("scan_unroll") for i, res in results.items() if "scan_unroll" in res}
  checks = checked(cell, params, xs, results, log, shape)
  if keras_scans:
    log(f"  {cell_name} {shape}: Keras lax.scan unroll per traced scan: {keras_scans}")
  del results
  return time_rows(
    shape, cell, calls, repeats, row_seconds, log, checks=checks, keras_scan_unroll=keras_scans
  )


# ---------------------------------------------------------------------------------------
# Output


def target_gflops(row) -> float:
  """The GFLOP/s at which ``recurrent`` would meet both speed targets of the row:
  ``TARGET_VS_TORCH`` x PyTorch's time and ``TARGET_VS_FLAX`` x Flax's (OptimizedLSTMCell
  for the LSTM). All implementations do the row's flops; above the machine's matmul peak,
  no implementation could meet both."""
  med = row["median_ms"]
  flax = med.get("flax-opt", med["flax"])
  return row["flops"] / (min(TARGET_VS_TORCH * med["torch"], TARGET_VS_FLAX * flax) * 1e-3) / 1e9


def table(rows, peak, unrolls=()) -> str:
  head = [
    "B,T,I,H",
    "cell",
    "mode",
    "n",
    "recurrent ms",
    "rec+dropout ms",
    "Flax LSTMCell/GRUCell ms",
    "Flax OptimizedLSTMCell ms",
    "PyTorch ms",
    "Keras ms",
    "Keras+dropout ms",
    "rec/torch",
    "rec/flax-opt (GRU: /GRUCell)",
    "rec/Keras",
    "dropout/no-dropout",
    "Keras dropout/no-dropout",
    "rec GFLOP/s (% of jnp.dot peak)",
    "GFLOP/s the targets need (% of peak)",
    "compile s: rec / drop / flax / flax-opt / Keras / Keras+drop",
  ]
  head += [f"rec-u{k} ms" for k in unrolls] + [f"rec-u{k}/rec" for k in unrolls]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  dash = "–"
  for row in rows:
    med, ratios, comp = row["median_ms"], row["ratios"], row["compile_s"]

    def ms(impl, med=med):
      return f"{med[impl]:.1f}" if impl in med else dash

    flax_ratio = next(v for k, v in ratios.items() if k.startswith("recurrent/flax"))
    gflops, need = row["recurrent_gflops"], target_gflops(row)
    compile_text = " / ".join(
      f"{comp[i]:.2f}" if i in comp else dash
      for i in ("recurrent", "rec+dropout", "flax", "flax-opt", "keras", "keras+dropout")
    )

    def ratio(name, ratios=ratios):
      return f"{ratios[name]:.2f}" if name in ratios else dash

    cells = [
      ",".join(map(str, row["shape"])),
      row["cell"].upper(),
      row["mode"],
      str(row["repeats"]),
      ms("recurrent"),
      ms("rec+dropout"),
      ms("flax"),
      ms("flax-opt"),
      ms("torch"),
      ms("keras"),
      ms("keras+dropout"),
      ratio("recurrent/torch"),
      f"{flax_ratio:.2f}",
      ratio("recurrent/keras"),
      ratio("dropout/no-dropout"),
      ratio("keras dropout/no-dropout"),
      f"{gflops:.0f} ({100 * gflops / peak:.0f}%)",
      f"{need:.0f} ({100 * need / peak:.0f}%)",
      compile_text,
    ]
    cells += [ms(f"rec-u{k}") for k in unrolls] + unroll_ratios(med, unrolls)
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def environment(keras=True) -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": importlib.metadata.version("jaxlib"),
    "flax": flax.__version__,
    "torch": torch.__version__,
    "keras": import_keras().__version__ if keras else None,
    "recurrent": recurrent.__version__,
    "jax_backend": jax.default_backend(),
    "cpu": cpu,
    "cpu_count": os.cpu_count(),
    "torch_threads": torch.get_num_threads(),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument(
    "--shapes",
    nargs="+",
    type=parse_shape,
    default=list(DEFAULT_SHAPES),
    metavar="B,T,I,H",
    help="shapes to run (default: %(default)s); e.g. 8,50,32,64",
  )
  parser.add_argument(
    "--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"], help="cells to run"
  )
  parser.add_argument(
    "--repeats",
    type=int,
    default=25,
    help="timed calls per implementation and row (default %(default)s)",
  )
  parser.add_argument(
    "--row-seconds",
    type=float,
    default=10.0,
    help=f"stop repeating a row after this many seconds, once it has {MIN_REPEATS} calls per"
    " implementation (default %(default)s), so that a loaded machine cannot stretch the run"
    " without bound",
  )
  parser.add_argument("--json", metavar="PATH", help="also write every sample to this file")
  add_unroll_option(parser)
  parser.add_argument(
    "--skip-keras",
    action="store_true",
    help=f"leave out the Keras 3 (JAX backend) rows; they need keras: {KERAS_INSTALL}",
  )
  args = parser.parse_args(argv)
  if args.repeats < 1:
    parser.error(f"--repeats must be >= 1, got {args.repeats}")

  started = time.perf_counter()
  jax.config.update("jax_platforms", "cpu")
  torch.set_num_threads(TORCH_THREADS)

  def log(msg):
    print(msg, file=sys.stderr, flush=True)

  keras = not args.skip_keras
  env = environment(keras)  # imports keras first (a clear message if it is missing)
  load_start = os.getloadavg()
  log(
    f"jax {env['jax']} ({env['jax_backend']}), flax {env['flax']}, torch {env['torch']}"
    f" ({env['torch_threads']} threads), keras {env['keras'] or '(skipped)'},"
    f" {env['cpu_count']} x {env['cpu']};"
    f" load average {load_start[0]:.2f}"
  )
  if load_start[0] > 0.5:
    log(
      f"warning: load average {load_start[0]:.2f} on {env['cpu_count']} cores: other processes"
      " are running, absolute times will be slow and noisy (ratios of interleaved runs less so)"
    )
  peak_start = matmul_peak()
  log(
    f"float32 2048x2048 matmul peak: jnp.dot {peak_start['jax']:.0f} GFLOP/s,"
    f" torch.mm {peak_start['torch']:.0f} GFLOP/s"
  )

  rows = grid_rows(args, log, functools.partial(bench_cell, keras=keras, unrolls=args.unroll))
  if rows is None:
    return 1
  peak_end = matmul_peak()
  peak = {k: max(peak_start[k], peak_end[k]) for k in peak_start}
  elapsed = time.perf_counter() - started
  keras_text = f"keras {env['keras']} (JAX backend)" if keras else "Keras skipped"
  load_end = os.getloadavg()

  print(
    f"\nrecurrent {env['recurrent']}: jax {env['jax']}, flax {env['flax']}, torch"
    f" {env['torch']} ({env['torch_threads']} threads), {keras_text};"
    f" {env['cpu_count']} x {env['cpu']};"
    f" float32; median of n interleaved calls"
  )
  print(
    f"float32 2048x2048 matmul peak (GFLOP/s, median of 10, before / after the rows):"
    f" jnp.dot {peak_start['jax']:.0f} / {peak_end['jax']:.0f},"
    f" torch.mm {peak_start['torch']:.0f} / {peak_end['torch']:.0f}\n"
  )
  print(table(rows, peak["jax"], args.unroll))
  print(
    f"\nAll implementations matched recurrent (outputs < {OUTPUT_ATOL} abs; gradients w.r.t."
    f" params and inputs < {GRAD_RTOL} relative to max(1, max |grad|))."
    f" Load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end;"
    f" total {elapsed:.0f} s."
  )
  if keras:
    unrolls = sorted({u for row in rows for us in row["keras_scan_unroll"].values() for u in us})
    print(
      f"Keras ({env['jax_backend']}, so no cuDNN path): the traced forward passes run"
      f" lax.scan with unroll={' / '.join(map(str, unrolls)) or '(no scan found)'}"
      " (1: not unrolled)."
    )
  if args.json:
    load = {"start": load_start, "end": load_end}
    save_run(args, env, (peak_start, peak_end), elapsed, rows, load_average=load)
  return 0


if __name__ == "__main__":
  sys.exit(main())
