"""oneDNN's fused LSTM and GRU forward called from JAX, against ``recurrent`` and Flax.

Shape legend: B batch, T time, I input size, H hidden size.

PyTorch's ``nn.LSTM`` on the CPU is oneDNN's fused RNN kernel (PyTorch has none for the GRU
there). This measures what oneDNN's kernels give a JAX program as an XLA FFI custom call
(``onednn_ffi/rnn_forward.cc``: the LSTM and the reset-after GRU, oneDNN's ``lbr_gru``,
forward for inference only, zero initial carry): it builds the custom call with ``g++``
against the oneDNN found under ``--onednn`` (``include/`` and ``lib/libdnnl.so``), checks
that its outputs match ``recurrent.scan``'s on the same weights (within 1e-4), then times
``recurrent``'s jitted forward, the custom call (oneDNN's own weights layout, reordered at
every call, and the given ``ldigo`` one) and Flax's ``nn.RNN(OptimizedLSTMCell)`` (LSTM)
or ``nn.RNN(GRUCell)`` (GRU) in one process (float32, medians of rounds in a fresh random
order each), twice: ``apart``, the two JAX programs interleaved with each other and then
the two custom calls with each other, and ``mixed``, all four interleaved. PyTorch is
left out: two OpenMP runtimes in one process slow each other.

oneDNN's OpenMP threads spin for a while after each parallel region (libgomp's default
``OMP_WAIT_POLICY``): that keeps them ready for the RNN's next step, and takes the cores
from the XLA programs that run right after, which the ``mixed`` times show.
``OMP_WAIT_POLICY=PASSIVE`` shows the other side.

Needs a C++17 compiler, jax, flax and a oneDNN v3 CPU build with its headers. The GNU
OpenMP build on PyPI installs both into the environment's prefix, this script's default::

    pip install onednn-cpu-gomp==2023.2.0 onednn-devel-cpu-gomp==2023.2.0
    python benchmarks/onednn_rnn.py [--shapes 256,50,64,128 ...] [--cells lstm gru]
                                    [--repeats N]
"""

import argparse
import ctypes
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import linen as nn  # noqa: E402

import recurrent  # noqa: E402
from benchmarks.lstm_cpu import (  # noqa: E402
  DEFAULT_SHAPES,
  _swap_rz,
  bench_inputs,
  interleaved_ms,
  parse_shape,
)
from recurrent import convert  # noqa: E402

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "onednn_ffi", "rnn_forward.cc")
TARGET = "onednn_rnn_forward"


class _Version(ctypes.Structure):
  _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
              ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint),
              ("gpu_runtime", ctypes.c_uint)]  # fmt: skip


def build(prefix: str, out_dir: str) -> str:
  """Compiles the custom call against ``prefix``'s oneDNN; returns the library's path."""
  header = os.path.join(prefix, "include", "oneapi", "dnnl", "dnnl.hpp")
  if not os.path.exists(header):
    raise SystemExit(f"--onednn {prefix!r}: no {header}; see this script's docstring")
  lib_dir = os.path.join(prefix, "lib")
  path = os.path.join(out_dir, "librnn_forward.so")
  command = [
    "g++", "-O2", "-std=c++17", "-shared", "-fPIC", "-w",  # -w: jaxlib's FFI headers warn
    SOURCE, f"-I{jax.ffi.include_dir()}", f"-I{os.path.join(prefix, 'include')}",
    f"-L{lib_dir}", "-ldnnl", f"-Wl,-rpath,{lib_dir}", "-o", path,
  ]  # fmt: skip
  try:
    subprocess.run(command, check=True)
  except FileNotFoundError:
    raise SystemExit("building the custom call needs g++ (a C++17 compiler) on PATH") from None
  return path


def register(path: str) -> str:
  """Registers the custom call; returns oneDNN's version and CPU runtime."""
  library = ctypes.cdll.LoadLibrary(path)
  jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(library.RnnForward), platform="cpu")
  dnnl = ctypes.cdll.LoadLibrary("libdnnl.so.3")  # loaded by now, found through the rpath
  dnnl.dnnl_version.restype = ctypes.POINTER(_Version)
  v = dnnl.dnnl_version().contents
  return f"oneDNN v{v.major}.{v.minor}.{v.patch}, CPU runtime {v.cpu_runtime:#x}"


def onednn_params(params) -> tuple:
  """``(w_ih, w_hh, b)`` in oneDNN's gate order: an LSTM's as they are; a GRU's with r and
  z swapped (oneDNN's ``z, r, n`` is Keras's order) and ``b = (b_z, b_r, b_in, b_hn)``,
  the r and z biases summed."""
  if isinstance(params, recurrent.LSTMParams):
    return params.w_ih, params.w_hh, params.b
  (b_ir, b_iz, b_in), (b_hr, b_hz, b_hn) = (jnp.split(b, 3) for b in (params.b_ih, params.b_hh))
  b = jnp.concatenate([b_iz + b_hz, b_ir + b_hr, b_in, b_hn])
  return _swap_rz(params.w_ih), _swap_rz(params.w_hh), b


def onednn_forward(params, xs, any_weights: bool = True):
  """``xs [B, T, I]`` -> ``ys [B, T, H]`` through the custom call."""
  batch, steps, _ = xs.shape
  out = jax.ShapeDtypeStruct((batch, steps, params.w_hh.shape[0]), jnp.float32)
  call = jax.ffi.ffi_call(TARGET, out)
  return call(xs, *onednn_params(params), any_weights=np.int64(any_weights))


def bench(shape, cell_name: str, repeats: int) -> dict:
  cell, params, xs, _ = bench_inputs(shape, cell_name)  # lstm_cpu.py's, biases drawn
  hidden = cell.hidden_size
  rnn = nn.RNN(nn.OptimizedLSTMCell(hidden) if cell_name == "lstm" else nn.GRUCell(hidden))
  variables = {"params": {"cell": convert.to_flax(params)["params"]}}
  programs = {
    "recurrent": (jax.jit(lambda p, x: recurrent.scan(cell, p, x)[1]), params),
    "oneDNN": (jax.jit(onednn_forward), params),
    "oneDNN ldigo": (jax.jit(lambda p, x: onednn_forward(p, x, False)), params),
    "flax": (jax.jit(rnn.apply), variables),
  }
  reference = programs["recurrent"][0](params, xs)
  for name, (f, p) in programs.items():
    diff = float(jnp.max(jnp.abs(f(p, xs) - reference)))
    if diff > 1e-4:
      raise SystemExit(
        f"MISMATCH: {name} differs from recurrent.scan by {diff:.3g} ({cell_name}, {shape})"
      )
  calls = {k: (lambda f=f, p=p: jax.block_until_ready(f(p, xs))) for k, (f, p) in programs.items()}
  jax_only = {k: calls[k] for k in ("recurrent", "flax")}
  onednn_only = {k: calls[k] for k in ("oneDNN", "oneDNN ldigo")}
  return {
    "apart": {**interleaved_ms(jax_only, repeats), **interleaved_ms(onednn_only, repeats)},
    "mixed": interleaved_ms(calls, repeats),
  }


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--shapes", nargs="+", type=parse_shape, default=list(DEFAULT_SHAPES))
  parser.add_argument("--cells", nargs="+", default=["lstm", "gru"], choices=["lstm", "gru"])
  parser.add_argument("--onednn", default=sys.prefix, help="prefix with include/ and lib/")
  parser.add_argument("--repeats", type=int, default=31)
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as out_dir:
    version = register(build(args.onednn, out_dir))
  policy = os.environ.get("OMP_WAIT_POLICY", "unset")
  print(f"jax {jax.__version__}, {version}, OMP_WAIT_POLICY {policy}, float32, forward, "
        f"median ms of {args.repeats} interleaved calls\n")  # fmt: skip
  names = ("recurrent", "oneDNN", "oneDNN ldigo", "flax")
  columns = [f"{n} {how}" for how in ("apart", "mixed") for n in names]
  ratios = ("oneDNN/rec", "oneDNN/Flax", "rec/Flax")
  print("| B,T,I,H | cell | " + " | ".join(columns + [f"{r} apart" for r in ratios]) + " |")
  print("| --- " * (len(columns) + len(ratios) + 2) + "|")
  for shape in args.shapes:
    for cell_name in args.cells:
      med = bench(shape, cell_name, args.repeats)
      cells = " | ".join(f"{med[how][n]:.2f}" for how in ("apart", "mixed") for n in names)
      rec, one, flax = (med["apart"][n] for n in ("recurrent", "oneDNN", "flax"))
      print(f"| {','.join(map(str, shape))} | {cell_name.upper()} | {cells} | {one / rec:.2f} | "
            f"{one / flax:.2f} | {rec / flax:.2f} |", flush=True)  # fmt: skip
  print(f"\nLoad average at the end: {os.getloadavg()[0]:.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
