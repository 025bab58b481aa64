"""recurrent's LSTM and GRU against Flax, PyTorch, Keras 3 and jax.experimental.rnn, timed.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

Runs on JAX's default backend, the CPU or a GPU (``JAX_PLATFORMS=cpu`` forces the CPU). For
every shape (B, T, I, H) and cell, float32, it times the forward pass (outputs ``[B, T, H]``)
and forward+backward (the gradient of ``sum(outputs * R)``, R a fixed random ``[B, T, H]``,
with respect to params AND inputs) of:

* ``recurrent``: ``recurrent.scan(recurrent.lstm(H), params, xs)`` under ``jax.jit`` (with
  ``--unroll K``, also ``rec-uK``: the same with ``lax.scan``'s ``unroll=K``, and with
  ``--remat K``, ``rec-rK``: the same with ``remat_every=K``);
* ``rec+dropout``: the same with ``dropout=0.25, recurrent_dropout=0.25`` and one key per
  sequence from ``recurrent.sequence_keys``;
* ``flax`` / ``flax-opt``: ``nn.RNN(nn.LSTMCell(H))`` / ``nn.RNN(nn.OptimizedLSTMCell(H))``
  under ``jax.jit`` (``nn.GRUCell`` for the GRU, which has no optimised variant);
* ``torch``, where ``import torch`` works: ``nn.LSTM(I, H, batch_first=True)`` / ``nn.GRU``,
  on the CPU with ``--torch-threads`` threads, or on ``cuda`` on a GPU backend (cuDNN's fused
  kernels; every call ends with ``torch.cuda.synchronize()``); forward under
  ``torch.no_grad()``, forward+backward with ``.backward()`` and an input that requires grad;
* ``keras`` and ``keras+dropout``, where Keras 3 imports (on the JAX backend: the script sets
  ``KERAS_BACKEND=jax``): ``keras.layers.LSTM(H, return_sequences=True)`` / ``GRU`` with its
  defaults, called through ``layer.stateless_call`` under ``jax.jit`` and differentiated with
  ``jax.grad``; ``keras+dropout`` with its own ``dropout=0.25, recurrent_dropout=0.25`` and
  ``training=True`` (which switches Keras's LSTM to its generic per-gate loop);
* ``jax-rnn`` (the LSTM, on a GPU only): ``jax.experimental.rnn.lstm``, JAX's own call into
  cuDNN's LSTM, on recurrent's weights packed into cuDNN's flat layout.

All use the same weights (``recurrent.convert.to_flax`` / ``to_torch``, and ``from_torch``
must give them back; Keras's GRU orders its gates z, r, h, so the r and z blocks are swapped).
Before any timing every implementation's outputs and gradients are compared with
``recurrent``'s: outputs to 1e-4 absolute, gradients to 1e-4 relative to max(1, max |reference
gradient|). Keras draws its own dropout masks, so for ``keras+dropout`` only the shape and a
difference from Keras without dropout are checked. A mismatch stops the run with exit status 1.
On a GPU everything runs in float32 without TensorFloat-32 (``jax_default_matmul_precision``
``"highest"``, PyTorch's ``allow_tf32`` flags off), so that all compute the same numbers.

Timing, in one process: trace + compile of each JAX program is timed (the median of
``--compile-samples`` fresh compiles after a first one), every call runs twice to warm up, then
the implementations of one (shape, cell, mode) run in rounds, each in a fresh random order, at
most ``--repeats`` rounds and no more once ``--row-seconds`` have passed and every call has run
3 times; each call blocks until its result is ready. Reported: the median ms of each, recurrent's
time over each reference's (below 1: recurrent is faster), and recurrent's GFLOP/s (forward
``2*B*T*(I+H)*G*H`` flops, 3x that for forward+backward) as a share of the float32 matmul peak
(``jnp.dot`` of two square matrices, and ``torch.mm``) measured before and after the rows, next
to the GFLOP/s at which recurrent would meet both speed targets of the row (1.0x PyTorch's time
and 0.75x Flax's): above 100% of the peak no implementation could meet both.

Run from the repository root, with ``recurrent`` installed from it (``pip install -e '.[bench]'``)::

    python benchmarks/compare.py                      # the default grid (minutes)
    python benchmarks/compare.py --smoke              # seconds: a check of the script
    python benchmarks/compare.py --shapes 8,50,32,64 --cells lstm --repeats 15 --out run.json

Other processes on the machine slow everything down, PyTorch's threads most of all: compare
implementations within one row, and check the load average printed at the end.
"""

import argparse
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from _common import (
  DEFAULT_SHAPES,
  MIN_REPEATS,
  cpu_count,
  load_average,
  median_ms,
  parse_shape,
  timed_rounds,
)
from jax import lax

import recurrent
from recurrent import convert

try:
  import torch
except ImportError:  # PyTorch's columns are left out
  torch = None

HERE = os.path.dirname(os.path.abspath(__file__))
DROPOUT = 0.25
# Outputs must agree to this absolute difference; gradients to this difference relative to the
# largest entry of the reference gradient (at least 1), since weight gradients sum B*T terms.
OUTPUT_ATOL = 1e-4
GRAD_RTOL = 1e-4
# The speed targets: recurrent's time at most this share of PyTorch's and of Flax's.
TARGET_VS_TORCH = 1.0
TARGET_VS_FLAX = 0.75
MODES = ("fwd", "fwd+bwd")
IMPLS = (
  "recurrent",
  "rec+dropout",
  "flax",
  "flax-opt",
  "torch",
  "keras",
  "keras+dropout",
  "jax-rnn",
)
REFERENCES = ("torch", "flax", "keras", "jax-rnn")
# Variants of recurrent, named by an option and its value: rec-uK (unroll), rec-rK (remat_every).
VARIANTS = ("rec-u", "rec-r")
# Settings of a full run and of --smoke (each overridden by its flag).
FULL = {"shapes": DEFAULT_SHAPES, "repeats": 25, "row_seconds": 10.0, "compile_samples": 3}
SMOKE = {"shapes": ((4, 10, 8, 16),), "repeats": 3, "row_seconds": 1.0, "compile_samples": 0}


class MismatchError(AssertionError):
  pass


@dataclasses.dataclass
class Setup:
  """What one run compares, and how."""

  backend: str
  torch_device: str | None  # None: PyTorch left out
  keras: object  # the keras module, or None
  compile_samples: int
  unrolls: tuple = ()
  remats: tuple = ()

  def torch_sync(self):
    if self.torch_device == "cuda":
      torch.cuda.synchronize()


def log(msg: str) -> None:
  print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Matmul peak and compile times


def matmul_peak(n: int, repeats: int, setup: Setup) -> dict:
  """Median float32 GFLOP/s of an ``[n, n] @ [n, n]`` matmul: ``jnp.dot`` (at the run's
  matmul precision) and ``torch.mm`` where PyTorch is compared."""
  flops = 2.0 * n**3
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a), jnp.asarray(b)
  dot = jax.jit(jnp.dot).lower(ja, jb).compile()
  fns = {"jnp.dot": lambda: dot(ja, jb).block_until_ready()}
  if setup.torch_device:
    ta, tb = (torch.from_numpy(m).to(setup.torch_device) for m in (a, b))
    fns["torch.mm"] = lambda: (torch.mm(ta, tb), setup.torch_sync())
  for fn in fns.values():
    fn()
    fn()
  return {k: flops / statistics.median(t) / 1e9 for k, t in timed_rounds(fns, repeats).items()}


def compile_timed(fn, args, samples: int):
  """``(jax.jit(fn) compiled, seconds)``: the median trace + compile time of ``samples`` more
  compiles, each of a fresh function (so that JAX's trace cache is not hit), after a first one
  that pays the process's one-time warm-ups; with ``samples=0``, that first one's."""
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  first = time.perf_counter() - start
  seconds = []
  for _ in range(samples):
    start = time.perf_counter()
    jax.jit(lambda *a: fn(*a)).lower(*args).compile()
    seconds.append(time.perf_counter() - start)
  return compiled, statistics.median(seconds) if seconds else first


def temp_mib(compiled) -> float | None:
  """The temporary buffer XLA allocates for one call of a compiled program, in MiB (None where
  the backend does not say)."""
  analysis = compiled.memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes / 2**20


# ---------------------------------------------------------------------------------------
# Implementations. Each builder returns ({mode: (callable, compile seconds or None, temporary
# MiB or None)},
# {mode: outputs, or (param gradients, input gradients), in recurrent's layout}).


def _jax_impl(forward, variables, xs, r, setup, extra=()):
  """``forward(variables, xs, *extra) -> ys [B, T, H]`` jitted, and its loss gradient."""

  def loss(v, x, r, *extra):
    return jnp.sum(forward(v, x, *extra) * r)

  grad = jax.grad(loss, argnums=(0, 1))
  fwd_c, fwd_s = compile_timed(forward, (variables, xs, *extra), setup.compile_samples)
  grad_c, grad_s = compile_timed(grad, (variables, xs, r, *extra), setup.compile_samples)
  calls = {
    "fwd": (lambda: jax.block_until_ready(fwd_c(variables, xs, *extra)), fwd_s, temp_mib(fwd_c)),
    "fwd+bwd": (
      lambda: jax.block_until_ready(grad_c(variables, xs, r, *extra)),
      grad_s,
      temp_mib(grad_c),
    ),
  }
  results = {"fwd": fwd_c(variables, xs, *extra), "fwd+bwd": grad_c(variables, xs, r, *extra)}
  return calls, results


def build_recurrent(cell, params, xs, r, setup, unroll=1, remat_every=None):
  def forward(p, x):
    return recurrent.scan(cell, p, x, unroll=unroll, remat_every=remat_every)[1]

  return _jax_impl(forward, params, xs, r, setup)


def build_dropout(cell, params, xs, r, setup):
  keys = recurrent.sequence_keys(jax.random.key(7), xs.shape[0])

  def forward(p, x, k):
    return recurrent.scan(cell, p, x, dropout=DROPOUT, recurrent_dropout=DROPOUT, key=k)[1]

  return _jax_impl(forward, params, xs, r, setup, extra=(keys,))


def build_flax(flax_cell, params, xs, r, setup):
  variables = {"params": {"cell": convert.to_flax(params)["params"]}}
  calls, results = _jax_impl(nn.RNN(flax_cell).apply, variables, xs, r, setup)
  g_vars, g_x = results["fwd+bwd"]
  results["fwd+bwd"] = (convert.from_flax(g_vars["params"]["cell"]), g_x)
  return calls, results


def build_torch(cell_name, params, xs, r, setup):
  _, _, inputs = xs.shape
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
  device = setup.torch_device
  module.to(device)
  x_t = torch.from_numpy(np.array(xs)).to(device)
  x_g = x_t.clone().requires_grad_(True)
  r_t = torch.from_numpy(np.array(r)).to(device)

  def fwd():
    with torch.no_grad():
      ys = module(x_t)[0]
    setup.torch_sync()
    return ys

  def fwd_bwd():
    module.zero_grad(set_to_none=True)
    x_g.grad = None
    (module(x_g)[0] * r_t).sum().backward()
    setup.torch_sync()

  ys = fwd().cpu().numpy()
  fwd_bwd()
  grads = {k: p.grad.cpu().numpy().T.copy() for k, p in module.named_parameters()}
  calls = {"fwd": (fwd, None, None), "fwd+bwd": (fwd_bwd, None, None)}
  return calls, {"fwd": ys, "fwd+bwd": (grads, x_g.grad.cpu().numpy())}


def import_keras():
  """``(keras, None)``, Keras 3 on the JAX backend, or ``(None, why not)``."""
  if importlib.util.find_spec("keras") is None:
    return None, "not installed (pip install -e '.[bench]')"
  if "keras" not in sys.modules:
    os.environ["KERAS_BACKEND"] = "jax"
  try:
    import keras
  except Exception as e:  # noqa: BLE001  any failure only leaves Keras out
    return None, f"import failed: {type(e).__name__}: {e}"
  if not keras.__version__.startswith("3") or keras.backend.backend() != "jax":
    return None, f"keras {keras.__version__} on {keras.backend.backend()!r}, not Keras 3 on JAX"
  return keras, None


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


def build_keras(cell_name, params, xs, r, setup, dropout=False):
  keras = setup.keras
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

  calls, results = _jax_impl(forward, trainable, xs, r, setup, extra=(non_trainable,))
  g_tv, g_x = results["fwd+bwd"]
  results["fwd+bwd"] = (from_keras(cell_name, dict(zip(names, g_tv)), params), g_x)
  results["scan_unroll"] = _scan_unrolls(
    jax.make_jaxpr(forward)(trainable, xs, non_trainable).jaxpr
  )
  return calls, results


def build_jax_rnn(params, xs, r, setup):
  """``jax.experimental.rnn.lstm`` (cuDNN) on recurrent's LSTM params."""
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

  calls, results = _jax_impl(forward, weights, xs, r, setup)
  g_w, g_x = results["fwd+bwd"]
  w_ih, w_hh, b_ih, _ = rnn.unpack_lstm_weights(g_w, inputs, hidden, 1, False)
  results["fwd+bwd"] = (params._replace(w_ih=w_ih[0].T, w_hh=w_hh[0].T, b=b_ih[0]), g_x)
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


def check(cell, params, xs, results) -> dict:
  """Compares every implementation's outputs and gradients with recurrent's; raises
  :class:`MismatchError` on a difference above the tolerances."""
  cell_name, hidden = cell.name, cell.hidden_size
  ref_ys = np.asarray(results["recurrent"]["fwd"])
  ref_gp, ref_gx = results["recurrent"]["fwd+bwd"]
  report, failures = {}, []
  for impl, res in results.items():
    if impl in ("recurrent", "rec+dropout", "keras+dropout"):
      continue
    diffs = {"outputs": _max_diff(res["fwd"], ref_ys)}
    if diffs["outputs"] >= OUTPUT_ATOL:
      failures.append(f"{impl} outputs: max abs diff {diffs['outputs']:.3g} >= {OUTPUT_ATOL}")
    got_gp, got_gx = res["fwd+bwd"]
    pairs = [("d xs", ref_gx, got_gx)] + _grad_pairs(cell_name, impl, ref_gp, got_gp, hidden)
    for name, a, b in pairs:
      rel = _max_diff(a, b) / max(1.0, float(np.max(np.abs(np.asarray(a)))))
      diffs[f"grad {name}"] = rel
      if rel >= GRAD_RTOL:
        failures.append(f"{impl} gradient {name}: relative diff {rel:.3g} >= {GRAD_RTOL}")
    report[impl] = diffs
  if "rec+dropout" in results:
    ys_det = recurrent.scan(
      cell, params, xs, dropout=DROPOUT, recurrent_dropout=DROPOUT, deterministic=True
    )[1]
    ys_drop = np.asarray(results["rec+dropout"]["fwd"])
    det = _max_diff(ys_det, ref_ys)
    report["rec+dropout"] = {"deterministic=True vs no dropout": det}
    if det != 0.0:
      failures.append(f"dropout with deterministic=True differs from no dropout by {det:.3g}")
    if not np.all(np.isfinite(ys_drop)) or _max_diff(ys_drop, ref_ys) == 0.0:
      failures.append("dropout outputs are not finite or equal the outputs without dropout")
  if "keras+dropout" in results:
    # Keras draws its own masks: only the shape and that dropout did something are checked.
    ys_drop = np.asarray(results["keras+dropout"]["fwd"])
    ys_keras = np.asarray(results["keras"]["fwd"])
    report["keras+dropout"] = {"max abs diff to keras": _max_diff(ys_drop, ys_keras)}
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


def builders(cell, params, xs, r, setup) -> dict:
  """``{impl: build}`` of every implementation this run compares at this row."""
  hidden, name = cell.hidden_size, cell.name
  found = {
    "recurrent": lambda: build_recurrent(cell, params, xs, r, setup),
    "rec+dropout": lambda: build_dropout(cell, params, xs, r, setup),
  }
  for k in setup.unrolls:
    found[f"rec-u{k}"] = lambda k=k: build_recurrent(cell, params, xs, r, setup, unroll=k)
  for k in setup.remats:
    found[f"rec-r{k}"] = lambda k=k: build_recurrent(cell, params, xs, r, setup, remat_every=k)
  if name == "lstm":
    found["flax"] = lambda: build_flax(nn.LSTMCell(hidden), params, xs, r, setup)
    found["flax-opt"] = lambda: build_flax(nn.OptimizedLSTMCell(hidden), params, xs, r, setup)
  else:
    found["flax"] = lambda: build_flax(nn.GRUCell(hidden), params, xs, r, setup)
  if setup.torch_device:
    found["torch"] = lambda: build_torch(name, params, xs, r, setup)
  if setup.keras is not None:
    found["keras"] = lambda: build_keras(name, params, xs, r, setup)
    found["keras+dropout"] = lambda: build_keras(name, params, xs, r, setup, dropout=True)
  if name == "lstm" and setup.backend == "gpu":
    found["jax-rnn"] = lambda: build_jax_rnn(params, xs, r, setup)
  return found


def row_ratios(med: dict) -> dict:
  """recurrent's time over each reference's in ``med`` (ms by implementation; Flax's
  reference is OptimizedLSTMCell for the LSTM), and each dropout variant's over its own
  without dropout."""
  flax_ref = "flax-opt" if "flax-opt" in med else "flax"
  refs = {"torch": "torch", "flax": flax_ref, "keras": "keras", "jax-rnn": "jax-rnn"}
  ratios = {f"recurrent/{k}": med["recurrent"] / med[v] for k, v in refs.items() if v in med}
  if "rec+dropout" in med:
    ratios["dropout/no-dropout"] = med["rec+dropout"] / med["recurrent"]
  if "keras+dropout" in med:
    ratios["keras dropout/no-dropout"] = med["keras+dropout"] / med["keras"]
  for impl in med:
    if impl.startswith(VARIANTS):
      ratios[f"{impl}/recurrent"] = med[impl] / med["recurrent"]
  return ratios


def target_gflops(row) -> float | None:
  """The GFLOP/s at which recurrent would meet both speed targets of the row, None without
  PyTorch's time."""
  med = row["median_ms"]
  if "torch" not in med:
    return None
  flax_ms = med.get("flax-opt", med["flax"])
  best = min(TARGET_VS_TORCH * med["torch"], TARGET_VS_FLAX * flax_ms)
  return row["flops"] / (best * 1e-3) / 1e9


def bench_row(shape, cell_name, args, setup) -> list:
  """Builds, checks and times every implementation at one shape and cell: one row a mode."""
  cell, params, xs, r = bench_inputs(shape, cell_name)
  calls, results = {}, {}
  for impl, build in builders(cell, params, xs, r, setup).items():
    try:
      calls[impl], results[impl] = build()
    except Exception as e:  # noqa: BLE001  an experimental API: report it, time the others
      if impl != "jax-rnn":
        raise
      log(f"  {cell_name} {shape}: jax.experimental.rnn left out: {type(e).__name__}: {e}")
  keras_scans = {i: res.pop("scan_unroll") for i, res in results.items() if "scan_unroll" in res}
  checks = check(cell, params, xs, results)
  del results
  worst = max((v for d in checks.values() for k, v in d.items() if k.startswith("grad")), default=0)
  others = sorted(i for i in checks if i not in ("rec+dropout", "keras+dropout"))
  log(f"  {cell_name} {shape}: checks passed for {', '.join(others)} (worst gradient {worst:.2g})")

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
      samples = timed_rounds(fns, args.repeats, args.row_seconds)
    finally:
      gc.enable()
    med = {impl: median_ms(s) for impl, s in samples.items()}
    flops = flops_fwd * (1 if mode == "fwd" else 3)
    rows.append(
      {
        "shape": list(shape),
        "cell": cell_name,
        "mode": mode,
        "repeats": len(samples["recurrent"]),
        "median_ms": med,
        "samples_ms": {impl: [1e3 * t for t in s] for impl, s in samples.items()},
        "compile_s": {impl: c[mode][1] for impl, c in calls.items() if c[mode][1] is not None},
        "temp_mib": {impl: c[mode][2] for impl, c in calls.items() if c[mode][2] is not None},
        "flops": flops,
        "ratios": row_ratios(med),
        "recurrent_gflops": flops / (med["recurrent"] * 1e-3) / 1e9,
        "checks": checks,
        "keras_scan_unroll": keras_scans,
      }
    )
    log(
      f"  {cell_name} {shape} {mode} (median of {len(samples['recurrent'])}): "
      + ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
    )
  return rows


# ---------------------------------------------------------------------------------------
# Output


def _ms(value: float) -> str:
  return f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def table(rows, peak) -> str:
  """A markdown table: one line per row, columns for what the run has."""
  present = {impl for row in rows for impl in row["median_ms"]}
  impls = [i for i in IMPLS if i in present] + sorted(i for i in present if i.startswith(VARIANTS))
  ratios = [
    k for k in ("recurrent/" + r for r in REFERENCES) if any(k in w["ratios"] for w in rows)
  ]
  ratios += [
    k
    for k in ("dropout/no-dropout", "keras dropout/no-dropout")
    + tuple(f"{i}/recurrent" for i in impls if i.startswith(VARIANTS))
    if any(k in w["ratios"] for w in rows)
  ]
  compiled = [i for i in impls if i != "torch"]
  need = any(target_gflops(row) is not None for row in rows)
  head = ["B,T,I,H", "cell", "mode", "n"] + [f"{i} ms" for i in impls]
  head += [k.replace("recurrent", "rec").replace("rec/flax", "rec/flax*") for k in ratios]
  head += ["rec GFLOP/s (% of peak)"] + ["targets need (% of peak)"] * need
  head += ["compile s: " + " / ".join(compiled), "temp MiB: " + " / ".join(compiled)]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  dash = "–"
  for row in rows:
    med, rat, comp = row["median_ms"], row["ratios"], row["compile_s"]
    cells = [
      ",".join(map(str, row["shape"])),
      row["cell"].upper(),
      row["mode"],
      str(row["repeats"]),
    ]
    cells += [_ms(med[i]) if i in med else dash for i in impls]
    cells += [f"{rat[k]:.2f}" if k in rat else dash for k in ratios]
    gflops = row["recurrent_gflops"]
    cells.append(f"{gflops:.0f} ({100 * gflops / peak:.0f}%)")
    if need:
      t = target_gflops(row)
      cells.append(dash if t is None else f"{t:.0f} ({100 * t / peak:.0f}%)")
    cells.append(" / ".join(f"{comp[i]:.2f}" if i in comp else dash for i in compiled))
    temp = row["temp_mib"]
    cells.append(" / ".join(f"{temp[i]:.1f}" if i in temp else dash for i in compiled))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def environment(setup: Setup) -> dict:
  cpu = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  cuda = setup.torch_device == "cuda"
  return {
    "python": platform.python_version(),
    "jax": jax.__version__,
    "jaxlib": importlib.metadata.version("jaxlib"),
    "flax": flax.__version__,
    "torch": torch.__version__ if torch is not None else None,
    "keras": setup.keras.__version__ if setup.keras is not None else None,
    "recurrent": recurrent.__version__,
    "recurrent_path": os.path.dirname(recurrent.__file__),
    "jax_backend": setup.backend,
    "jax_devices": [str(d) for d in jax.devices()],
    "jax_device_kind": jax.devices()[0].device_kind,
    "cpu": cpu,
    "cpu_count": cpu_count(),
    "torch_device": (torch.cuda.get_device_name(0) if cuda else setup.torch_device),
    "torch_threads": torch.get_num_threads() if setup.torch_device else None,
    "cudnn": torch.backends.cudnn.version() if cuda else None,
    "matmul_precision": str(jax.config.jax_default_matmul_precision),
  }


def save_json(path: str, payload: dict) -> None:
  """Writes ``payload`` through a ``.tmp`` file renamed over ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(payload, f, indent=1)
  os.replace(path + ".tmp", path)


def parse_args(argv):
  parser = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  shapes = ", ".join(",".join(map(str, s)) for s in FULL["shapes"])
  parser.add_argument(
    "--shapes", nargs="+", type=parse_shape, metavar="B,T,I,H", help=f"default: {shapes}"
  )
  parser.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=["lstm", "gru"])
  parser.add_argument(
    "--repeats",
    type=int,
    help=f"timed calls per implementation and row (default {FULL['repeats']})",
  )
  parser.add_argument(
    "--row-seconds",
    type=float,
    help=f"stop a row's rounds after this many seconds once it has {MIN_REPEATS} calls each"
    f" (default {FULL['row_seconds']:g})",
  )
  parser.add_argument(
    "--compile-samples",
    type=int,
    help="fresh compiles timed per JAX program, after a first (default 3; 0: the first)",
  )
  parser.add_argument(
    "--unroll",
    nargs="+",
    type=int,
    default=[],
    metavar="K",
    help="also time recurrent with lax.scan's unroll=K (columns rec-uK)",
  )
  parser.add_argument(
    "--remat",
    nargs="+",
    type=int,
    default=[],
    metavar="K",
    help="also time recurrent with remat_every=K (columns rec-rK)",
  )
  parser.add_argument("--peak-size", type=int, help="n of the n x n matmul peak (2048; GPU 4096)")
  parser.add_argument(
    "--torch-threads",
    type=int,
    default=cpu_count(),
    help="PyTorch's CPU threads (default: this process's CPUs, %(default)s)",
  )
  parser.add_argument("--no-torch", action="store_true", help="leave PyTorch out")
  parser.add_argument("--no-keras", action="store_true", help="leave Keras out")
  parser.add_argument(
    "--out",
    metavar="PATH",
    help="JSON with every sample (default benchmarks/results/compare_<backend>_<time>.json)",
  )
  parser.add_argument(
    "--smoke",
    action="store_true",
    help="a seconds-long check of the script: shape 4,10,8,16, 3 repeats, no compile samples",
  )
  args = parser.parse_args(argv)
  for key, value in (SMOKE if args.smoke else FULL).items():
    if getattr(args, key) is None:
      setattr(args, key, value)
  if args.repeats < 1 or args.compile_samples < 0 or min(args.unroll + args.remat, default=1) < 1:
    parser.error("--repeats, --unroll and --remat need positive ints, --compile-samples >= 0")
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  started = time.perf_counter()
  backend = jax.default_backend()
  if backend != "cpu":  # float32 without TensorFloat-32, so that all compute the same numbers
    jax.config.update("jax_default_matmul_precision", "highest")
  left_out = {}
  torch_device = None
  if torch is None or args.no_torch:
    left_out["torch"] = "not installed" if torch is None else "--no-torch"
  elif backend == "cpu":
    torch_device = "cpu"
    torch.set_num_threads(args.torch_threads)
  elif backend == "gpu" and torch.cuda.is_available():
    torch_device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
  else:
    left_out["torch"] = f"no CUDA device for PyTorch to match JAX's {backend!r} backend"
  keras, why = (None, "--no-keras") if args.no_keras else import_keras()
  if keras is None:
    left_out["keras"] = why
  setup = Setup(
    backend, torch_device, keras, args.compile_samples, tuple(args.unroll), tuple(args.remat)
  )
  env = environment(setup)
  if not os.path.abspath(env["recurrent_path"]).startswith(os.path.dirname(HERE) + os.sep):
    log(f"warning: recurrent comes from {env['recurrent_path']}, not this checkout")
  load_start = load_average()
  log(
    f"recurrent {env['recurrent']}, jax {env['jax']} ({backend}: {env['jax_devices'][0]}),"
    f" flax {env['flax']}, torch {env['torch']} ({torch_device or 'left out'}),"
    f" keras {env['keras'] or 'left out'}; {env['cpu_count']} x {env['cpu']};"
    f" load average {load_start:.2f}"
  )
  for impl, reason in left_out.items():
    log(f"{impl} left out: {reason}")
  if backend == "cpu" and load_start > 0.5 * env["cpu_count"]:
    log("warning: the machine is loaded: absolute times will be slow and noisy")
  peak_n = args.peak_size or (256 if args.smoke else 2048 if backend == "cpu" else 4096)
  peak_repeats = 3 if args.smoke else 10
  peak_start = matmul_peak(peak_n, peak_repeats, setup)

  rows = []
  try:
    for shape in args.shapes:
      for cell_name in args.cells:
        rows += bench_row(tuple(shape), cell_name, args, setup)
  except MismatchError as e:
    log(f"\nMISMATCH: {e}")
    return 1
  peak_end = matmul_peak(peak_n, peak_repeats, setup)
  peak = max(peak_start["jnp.dot"], peak_end["jnp.dot"])
  elapsed = time.perf_counter() - started
  load_end = load_average()

  precision = "float32" + (" without TF32" if backend != "cpu" else "")
  device = f"{env['cpu_count']} x {env['cpu']}" if backend == "cpu" else env["jax_device_kind"]
  peaks = ", ".join(
    f"{k} {peak_start[k]:.0f} / {peak_end[k]:.0f}" for k in peak_start if k in peak_end
  )
  worst_out = max(d.get("outputs", 0.0) for row in rows for d in row["checks"].values())
  worst_grad = max(
    (v for row in rows for d in row["checks"].values() for k, v in d.items() if "grad" in k),
    default=0.0,
  )
  text = "\n".join(
    [
      f"recurrent {env['recurrent']} on {backend} ({device}): jax {env['jax']}, flax"
      f" {env['flax']}, torch {env['torch'] if torch_device else '(left out)'}"
      + (f" ({env['torch_threads']} threads)" if torch_device == "cpu" else "")
      + f", keras {env['keras'] or '(left out)'}; {precision}; median ms of n interleaved calls",
      f"float32 {peak_n}x{peak_n} matmul peak, GFLOP/s before / after the rows: {peaks}",
      "",
      table(rows, peak),
      "",
      "rec/X: recurrent's time over X's (below 1: recurrent is faster); *flax: Flax's"
      " OptimizedLSTMCell for the LSTM, GRUCell for the GRU. Peak: the higher jnp.dot figure.",
      f"Checks passed: every implementation matched recurrent, outputs within {worst_out:.2g}"
      f" (tolerance {OUTPUT_ATOL:g}), gradients w.r.t. params and inputs within {worst_grad:.2g}"
      f" relative (tolerance {GRAD_RTOL:g}).",
      f"Load average {load_start:.2f} at the start, {load_end:.2f} at the end;"
      f" total {elapsed:.0f} s.",
    ]
  )
  scans = sorted({u for row in rows for us in row["keras_scan_unroll"].values() for u in us})
  if scans:
    text += f"\nKeras's traced forward passes run lax.scan with unroll={scans} (1: not unrolled)."
  print("\n" + text)
  out = args.out or os.path.join(
    HERE, "results", f"compare_{backend}_{time.strftime('%Y-%m-%d_%H%M%S')}.json"
  )
  settings = {k: v for k, v in vars(args).items() if k != "out"}
  payload = {
    "environment": env,
    "settings": settings,
    "left_out": left_out,
    "matmul_peak_gflops": {"n": peak_n, "start": peak_start, "end": peak_end},
    "load_average": {"start": load_start, "end": load_end},
    "total_s": elapsed,
    "table": text,
    "rows": rows,
  }
  save_json(out, payload)
  print(f"Wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
