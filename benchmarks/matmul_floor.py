"""How fast can XLA:CPU run an RNN's matmuls alone? The floors under any ``lax.scan`` RNN.

Shape legend: B batch, T time, I input size, H hidden size, G gates (4 LSTM, 3 GRU).

For every shape and cell it times, interleaved in one process (float32, medians):

* ``torch``: PyTorch's fused ``nn.LSTM`` / ``nn.GRU`` (``--torch-threads``), forward under
  ``no_grad`` and forward+backward;
* ``torch (no oneDNN)``: the same under ``torch.backends.mkldnn.flags(enabled=False)``.
  PyTorch runs its LSTM (not its GRU) on the CPU with oneDNN's fused RNN primitive, which
  packs the weights once for all steps; without it, PyTorch's own generic step loop;
* ``recurrent``: ``recurrent.scan`` under ``jax.jit`` (forward, and the gradient with
  respect to params and inputs);
* ``flax``: the Flax reference on the same weights, ``nn.RNN(OptimizedLSTMCell)``
  (LSTM) or ``nn.RNN(GRUCell)`` (GRU), jitted the same way;
* ``floor``: a jitted program with only the matmuls a hoisted-projection RNN must do and
  as little else as possible. Forward: the projection ``[T*B, I] @ [I, G*H]`` and a
  ``lax.scan`` whose step is ``z = h @ w_hh [H, G*H]`` and ``h = sum of z's G blocks``
  (so every column is used). Forward+backward adds a reversed ``lax.scan`` whose step is
  ``dh = (tile(dh, G) + dz_t) @ w_hh^T`` and the three large matmuls after it
  (``dW_hh``, ``dW_ih``, ``dx``);
* ``stored``: forward+backward, the floor plus the stores and loads of the residuals a
  backward pass keeps (``stored_floor_program``); forward, the floor plus the reads of
  the projection and the writes of the outputs, in ``recurrent``'s chunks of time steps
  where it runs in chunks (``stored_forward_program``).

A second table gives the temporary buffer of ``recurrent`` and of Flax, forward and
forward+backward, and how much memory each call page-faults in (``temp_faults``).

No gate nonlinearity in either: if ``floor`` (or ``stored``) alone takes longer than
PyTorch's whole fused kernel, or longer than 0.75x Flax's whole program, no ``lax.scan``
implementation on this XLA can reach that target; ``recurrent / stored`` shows what the
gate maths and the bookkeeping cost on top. ``floor``'s forward projects all T steps at
once, so where its projection exceeds ``recurrent.fused.policy.CHUNK_ABOVE`` (32 MiB:
64,200,256,512 among the defaults) it faults that buffer in at every call, while
``recurrent``'s forward runs in chunks and does not: there the forward ``floor`` is no
bound, and the forward ``stored``, which chunks as ``recurrent`` does, is. Both run the
recurrent matmul batch-major, ``h [B, H] @ w_hh``: where ``recurrent``'s forward runs
feature-major (``recurrent.fused.policy.feature_major``: B from 16 to 32 and G*H >= 3072, none
of the default shapes) neither bounds that forward.

A CPU tool (XLA:CPU's kernels); needs jax, flax and torch. Run from the repository root::

    python benchmarks/matmul_floor.py [--shapes 32,100,128,256 ...] [--cells lstm] [--repeats N]
"""

import argparse
import resource
import sys

import jax
import jax.numpy as jnp
import numpy as np
import torch
from _common import DEFAULT_SHAPES, cpu_count, interleaved_ms, load_average, parse_shape
from flax import linen as nn

import recurrent
from recurrent import convert


def floor_programs(num_gates: int, hidden: int):
  """``(forward, forward_backward)``, each ``(w_ih, w_hh, xs [T, B, I], dzs [T, B, G*H])``."""

  def forward(w_ih, w_hh, xs, dzs):
    steps, batch, inputs = xs.shape
    xp = (xs.reshape(-1, inputs) @ w_ih).reshape(steps, batch, -1)

    def step(h, _):
      z = h @ w_hh
      return sum(z[:, g * hidden : (g + 1) * hidden] for g in range(num_gates)), h

    _, hs = jax.lax.scan(step, jnp.zeros((batch, hidden), xs.dtype), None, length=steps)
    return xp, hs

  def forward_backward(w_ih, w_hh, xs, dzs):
    xp, hs = forward(w_ih, w_hh, xs, dzs)
    w_hh_t = w_hh.T

    def step(dh, dz):
      return (jnp.tile(dh, (1, num_gates)) + dz) @ w_hh_t, None

    dh, _ = jax.lax.scan(step, jnp.zeros_like(hs[0]), dzs, reverse=True)
    flat = dzs.reshape(-1, dzs.shape[-1])
    d_w_hh = hs.reshape(-1, hidden).T @ flat
    d_w_ih = xs.reshape(-1, xs.shape[-1]).T @ flat
    d_xs = flat @ w_ih.T
    return xp, dh, d_w_hh, d_w_ih, d_xs

  return forward, forward_backward


def stored_floor_program(num_gates: int, hidden: int):
  """Forward+backward of the floor plus the memory traffic a backward pass needs.

  ``(w_ih, w_hh, xs [T, B, I], dys [T, B, H])``. As ``floor_programs``, but the forward
  step also adds the projection, ``a = x_t + h @ w_hh``, carries a second state ``e``
  (the LSTM's cell state; for the GRU, the candidate's recurrent part), writes ``a`` over
  ``x_t`` in the projection array and stacks ``e``: (G+1)*H floats a step, what any
  backward pass that does not recompute the forward must keep (``recurrent`` keeps the
  same for the LSTM, whose backward rebuilds the stack of ``h`` over that of ``c``, and
  G*H more for the GRU). The backward step reads them back with one multiply each,
  ``dz_t = tile(dh + dy_t) * a_t``, ``dh = dz_t @ w_hh^T + dh * e_t``, and writes
  ``dz_t`` over ``a_t`` for the three large matmuls, ``dW_hh`` taking ``e`` for ``h``
  (the same shape: no rebuilding of ``h`` is timed, so this stays a lower bound). Still no
  nonlinearity: only the stores and loads (and the zero-filled stacks of ``lax.scan``) on
  top of the matmuls. Each step reads its row of the array at the end of the step before,
  after that step's write, as ``recurrent`` does: otherwise XLA copies the whole array at
  every step (``recurrent/fused/``).
  """

  def forward_backward(w_ih, w_hh, xs, dys):
    steps, batch, inputs = xs.shape
    xp = (xs.reshape(-1, inputs) @ w_ih).reshape(steps, batch, -1)

    def step(carry, t):
      h, e, xp, a = carry
      a = a + h @ w_hh
      xp = jax.lax.dynamic_update_index_in_dim(xp, a, t, 0)
      e = e + a[:, :hidden]
      h = e + sum(a[:, g * hidden : (g + 1) * hidden] for g in range(1, num_gates))
      return (h, e, xp, jax.lax.dynamic_index_in_dim(xp, t + 1, 0, False)), e

    zeros = jnp.zeros((batch, hidden), xs.dtype)
    (h, _, stored, _), es = jax.lax.scan(step, (zeros, zeros, xp, xp[0]), jnp.arange(steps))
    w_hh_t = w_hh.T

    def back(carry, inputs):
      dh, dzs = carry
      t, e, dy = inputs
      dz = jnp.tile(dh + dy, (1, num_gates)) * jax.lax.dynamic_index_in_dim(dzs, t, 0, False)
      dzs = jax.lax.dynamic_update_index_in_dim(dzs, dz, t, 0)
      return (dz @ w_hh_t + dh * e, dzs), None

    (dh, dzs), _ = jax.lax.scan(back, (zeros, stored), (jnp.arange(steps), es, dys), reverse=True)
    flat = dzs.reshape(-1, dzs.shape[-1])
    d_w_hh = es.reshape(-1, hidden).T @ flat
    d_w_ih = xs.reshape(-1, inputs).T @ flat
    d_xs = flat @ w_ih.T
    return h, dh, d_w_hh, d_w_ih, d_xs

  return forward_backward


def stored_forward_program(num_gates: int, hidden: int, chunk):
  """The forward floor plus the memory traffic any hoisted-projection forward has.

  ``(w_ih, w_hh, xs [T, B, I]) -> hs [T, B, H]``. As ``floor_programs``' forward, but
  each step reads its projection, ``z = xp_t + h @ w_hh``, and stacks its output; and
  with ``chunk`` (``recurrent.fused.policy.chunk_rule``, not None where the projection
  exceeds 32 MiB) it projects and runs ``chunk`` steps at a time inside an outer loop, as
  ``recurrent``'s forward does, so that its buffer is not faulted in at every call either.
  Still no nonlinearity and no cell state.
  """

  def forward(w_ih, w_hh, xs):
    steps, batch, inputs = xs.shape

    def run(h, x):
      xp = (x.reshape(-1, inputs) @ w_ih).reshape(x.shape[:2] + (-1,))

      def step(h, xp_t):
        z = xp_t + h @ w_hh
        h = sum(z[:, g * hidden : (g + 1) * hidden] for g in range(num_gates))
        return h, h

      return jax.lax.scan(step, h, xp)

    h = jnp.zeros((batch, hidden), xs.dtype)
    if chunk is None:
      return run(h, xs)[1]
    _, hs = jax.lax.scan(run, h, xs.reshape(steps // chunk, chunk, batch, inputs))
    return hs.reshape(steps, batch, hidden)

  return forward


def temp_faults(fn, args, calls: int = 5) -> tuple:
  """``(temp MB, MB page-faulted in per call)`` of ``jax.jit(fn)(*args)``.

  XLA:CPU allocates the executable's temporary buffer afresh on every call; when the second
  number matches the first, every page of it is faulted in (and zeroed by the kernel) again.
  """
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(calls):
    jax.block_until_ready(compiled(*args))
  faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / calls
  temp = compiled.memory_analysis().temp_size_in_bytes
  return temp / 1e6, faults * resource.getpagesize() / 1e6


def bench(shape, cell_name, repeats):
  batch, steps, inputs, hidden = shape
  num_gates = 4 if cell_name == "lstm" else 3
  rng = np.random.default_rng(0)
  cell = getattr(recurrent, cell_name)(hidden)
  params = cell.init(jax.random.key(0), inputs)
  xs = jnp.asarray(rng.standard_normal((batch, steps, inputs)), jnp.float32)
  r = jnp.asarray(rng.standard_normal((batch, steps, hidden)), jnp.float32)
  xs_tm = jnp.moveaxis(xs, 1, 0)
  dzs = jnp.asarray(rng.standard_normal((steps, batch, num_gates * hidden)), jnp.float32)

  def rec_forward(p, x):
    return recurrent.scan(cell, p, x)[1]

  # r is an argument, as in compare.py: a constant r would let XLA fold work into it.
  rec_grad = jax.grad(lambda p, x, r: jnp.sum(rec_forward(p, x) * r), argnums=(0, 1))
  floor_fwd, floor_fwd_bwd = floor_programs(num_gates, hidden)
  floor_args = (params.w_ih, params.w_hh, xs_tm, dzs)
  chunk = recurrent.fused.policy.chunk_rule(steps, batch * num_gates * hidden * 4)
  jitted = {
    ("recurrent", "fwd"): (jax.jit(rec_forward), (params, xs)),
    ("recurrent", "fwd+bwd"): (jax.jit(rec_grad), (params, xs, r)),
    ("floor", "fwd"): (jax.jit(floor_fwd), floor_args),
    ("floor", "fwd+bwd"): (jax.jit(floor_fwd_bwd), floor_args),
    ("stored", "fwd"): (
      jax.jit(stored_forward_program(num_gates, hidden, chunk)),
      (params.w_ih, params.w_hh, xs_tm),
    ),
    ("stored", "fwd+bwd"): (
      jax.jit(stored_floor_program(num_gates, hidden)),
      (params.w_ih, params.w_hh, xs_tm, jnp.moveaxis(r, 1, 0)),
    ),
  }
  flax_cell = nn.OptimizedLSTMCell(hidden) if cell_name == "lstm" else nn.GRUCell(hidden)
  flax_vars = {"params": {"cell": convert.to_flax(params)["params"]}}
  flax_forward = nn.RNN(flax_cell).apply
  flax_grad = jax.grad(lambda v, x, r: jnp.sum(flax_forward(v, x) * r), argnums=(0, 1))
  jitted[("flax", "fwd")] = (jax.jit(flax_forward), (flax_vars, xs))
  jitted[("flax", "fwd+bwd")] = (jax.jit(flax_grad), (flax_vars, xs, r))
  calls = {k: (lambda f=f, a=a: jax.block_until_ready(f(*a))) for k, (f, a) in jitted.items()}

  module = (torch.nn.LSTM if cell_name == "lstm" else torch.nn.GRU)(
    inputs, hidden, batch_first=True
  )
  tx = torch.from_numpy(np.array(xs)).requires_grad_(True)
  tr = torch.from_numpy(np.array(r))

  def torch_fwd():
    with torch.no_grad():
      module(tx)

  def torch_fwd_bwd():
    module.zero_grad()
    tx.grad = None
    (module(tx)[0] * tr).sum().backward()

  def no_onednn(call):
    def run():
      with torch.backends.mkldnn.flags(enabled=False):
        call()

    return run

  calls[("torch", "fwd")] = torch_fwd
  calls[("torch", "fwd+bwd")] = torch_fwd_bwd
  calls[("torch-generic", "fwd")] = no_onednn(torch_fwd)
  calls[("torch-generic", "fwd+bwd")] = no_onednn(torch_fwd_bwd)
  for call in calls.values():
    call()
    call()
  ms = interleaved_ms(calls, repeats)
  memory = {
    "fwd": temp_faults(rec_forward, (params, xs)) + temp_faults(flax_forward, (flax_vars, xs)),
    "fwd+bwd": temp_faults(rec_grad, (params, xs, r)) + temp_faults(flax_grad, (flax_vars, xs, r)),
  }
  return ms, memory


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    "--shapes", nargs="+", type=parse_shape, default=DEFAULT_SHAPES, metavar="B,T,I,H"
  )
  parser.add_argument("--cells", nargs="+", choices=("lstm", "gru"), default=("lstm", "gru"))
  parser.add_argument("--repeats", type=int, default=15, help="interleaved calls per column")
  parser.add_argument(
    "--torch-threads",
    type=int,
    default=cpu_count(),
    help="PyTorch's threads (default: this process's CPUs, %(default)s)",
  )
  args = parser.parse_args(argv)
  torch.set_num_threads(args.torch_threads)
  print(f"jax {jax.__version__}, torch {torch.__version__} ({args.torch_threads} threads); "
        f"float32, median ms of {args.repeats} interleaved calls")  # fmt: skip
  columns = ["B,T,I,H", "cell", "mode", "PyTorch", "PyTorch (no oneDNN)", "Flax", "floor"]
  columns += ["stored", "recurrent", "floor/PyTorch", "floor/Flax", "stored/PyTorch"]
  columns += ["stored/Flax", "rec/stored"]
  print("\n| " + " | ".join(columns) + " |\n|" + " --- |" * len(columns))
  memory = {}
  for shape in args.shapes:
    for cell_name in args.cells:
      ms, memory[(shape, cell_name)] = bench(shape, cell_name, args.repeats)
      for mode in ("fwd", "fwd+bwd"):
        t, tg, fx, f, st, rec = (
          ms[(k, mode)] for k in ("torch", "torch-generic", "flax", "floor", "stored", "recurrent")
        )
        cells = [",".join(map(str, shape)), cell_name.upper(), mode]
        cells += [f"{v:.1f}" for v in (t, tg, fx, f, st, rec)]
        cells += [f"{v:.2f}" for v in (f / t, f / fx, st / t, st / fx, rec / st)]
        print("| " + " | ".join(cells) + " |", flush=True)
  print("\n| B,T,I,H | cell | mode | temp buffer MB: recurrent | Flax "
        "| MB page-faulted in per call: recurrent | Flax |")  # fmt: skip
  print("| --- | --- | --- | --- | --- | --- | --- |")
  for (shape, cell_name), modes in memory.items():
    for mode, (temp, faulted, flax_temp, flax_faulted) in modes.items():
      cells = [",".join(map(str, shape)), cell_name.upper(), mode]
      cells += [f"{v:.1f}" for v in (temp, flax_temp, faulted, flax_faulted)]
      print("| " + " | ".join(cells) + " |")
  print(f"\nLoad average at the end: {load_average():.2f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
