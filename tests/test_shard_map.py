"""The drivers inside ``jax.shard_map`` with ``check_vma=True`` (its default).

Shape legend: B batch, T time, I input size, H hidden size.

Inside ``shard_map`` every value's type records the mesh axes it varies over. The batch
sharded over a ``'data'`` axis varies over it; a zero initial carry made inside the
function does not, while the carry the loop body returns does, so ``lax.scan`` refused
the loop ("carry input and carry output must have equal types"). The driver now casts the
carry (and, before the hand-written backward pass, the weights) to the axes its inputs
vary over. Reference: the same function on the whole batch without ``shard_map``; the
values and the gradients (the fused backward pass's, summed over the devices by
``psum``) must agree.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp

import recurrent

REPO = pathlib.Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
  """
  import jax
  jax.config.update("jax_numpy_dtype_promotion", "strict")
  jax.config.update("jax_numpy_rank_promotion", "raise")
  import jax.numpy as jnp
  import numpy as np
  from jax.sharding import Mesh, PartitionSpec as P
  import recurrent

  assert jax.device_count() == 8, jax.devices()
  FAST = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}
  mesh = Mesh(np.array(jax.devices()), ("data",))
  B, T, IN, H = 16, 6, 3, 4
  rng = np.random.default_rng(0)
  XS = jnp.asarray(rng.standard_normal((B, T, IN)), jnp.float32)
  KEYS = recurrent.sequence_keys(jax.random.key(2), B)
  LENGTHS = jnp.asarray(np.arange(B) % (T + 1), jnp.int32)
  DROP = {"dropout": 0.3, "recurrent_dropout": 0.3}
  CASES = {
    "lstm": (recurrent.lstm(H), {}),
    "lstm-dropout": (recurrent.lstm(H), DROP),
    "gru": (recurrent.gru(H), {}),
    "gru-dropout": (recurrent.gru(H), DROP),
    "lstm-time-major-lengths-reverse": (
      recurrent.lstm(H), {"time_major": True, "lengths": True, "reverse": True, **DROP}
    ),
    "gru-projection-chunks": (recurrent.gru(H), {"projection_chunk": 2}),
    "gru-feature-major": (recurrent.gru(H), {"layout": "feature"}),
    "lstm-remat": (recurrent.lstm(H), {"remat_every": 4, **DROP}),
    "layer-norm-lstm-dropout": (recurrent.layer_norm_lstm(H), DROP),
    "zoneout-lstm": (recurrent.zoneout(recurrent.lstm(H), h=0.1, c=0.2), {}),
    "weight-drop-lstm-dropout": (recurrent.weight_drop(recurrent.lstm(H), 0.5), DROP),
    "stack-bidirectional-dropout": (recurrent.lstm(H), {"stack": True, **DROP}),
  }

  def close(got, want, what):
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=what)

  for name, (cell, options) in CASES.items():
    options = dict(options)
    stack, lengths = options.pop("stack", False), options.pop("lengths", False)
    time_major = options.get("time_major", False)
    if stack:
      params = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True)
    else:
      params = cell.init(jax.random.key(0), IN)
    xs = jnp.swapaxes(XS, 0, 1) if time_major else XS
    spec = P(None, "data") if time_major else P("data")

    def run(params, xs, keys, seq_lengths):
      driver = recurrent.stack if stack else recurrent.scan
      final, ys = driver(
        cell, params, xs, key=keys, seq_lengths=seq_lengths if lengths else None, **options
      )
      return final, ys

    def loss(params, xs, keys, seq_lengths):
      final, ys = run(params, xs, keys, seq_lengths)
      return jnp.sum(ys**2) + sum(jnp.sum(jnp.sin(f)) for f in jax.tree.leaves(final))

    def sharded_loss(*args):
      return jax.lax.psum(loss(*args), "data")

    specs = (P(), spec, P("data"), P("data"))
    sharded = jax.shard_map(run, mesh=mesh, in_specs=specs, out_specs=(P("data"), spec))
    args = (params, xs, KEYS, LENGTHS)
    close(jax.jit(sharded, compiler_options=FAST)(*args), jax.jit(run)(*args), name + ": forward")
    grad = jax.shard_map(
      jax.grad(sharded_loss, argnums=(0, 1)), mesh=mesh, in_specs=specs, out_specs=(P(), spec)
    )
    close(
      jax.jit(grad, compiler_options=FAST)(*args),
      jax.jit(jax.grad(loss, argnums=(0, 1)))(*args),
      name + ": gradient",
    )
    print("ok", name, flush=True)
  """
)


def test_scan_in_shard_map_with_check_vma():
  """8 forced host devices, a batch of 16 sharded along ``'data'``, ``shard_map`` with
  ``check_vma=True``: final carries, outputs and gradients (params and inputs) equal the
  unsharded run, for the LSTM and the GRU (fast path, hand-written backward pass) with and
  without dropout; time-major with ``seq_lengths`` and ``reverse``; the forward's projection
  in chunks and feature-major; ``remat_every``; plain autodiff (layer-norm LSTM, zoneout);
  weight-drop, whose one mask per call must come from the whole batch's keys (a ``psum``
  over the devices), not from each device's share; a bidirectional stack."""
  env = dict(os.environ)
  flags = env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
  env.update(XLA_FLAGS=flags.strip(), JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
  proc = subprocess.run(
    [sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
  assert proc.stdout.count("ok ") == 12, proc.stdout


def test_no_casts_outside_shard_map():
  """Outside ``shard_map`` nothing varies over a mesh axis: the jitted scan and its
  gradient hold no cast (``pvary``/``pcast``) and no effects."""
  cell = recurrent.lstm(4)
  params = cell.init(jax.random.key(0), 3)
  xs = jnp.ones((2, 5, 3))

  def loss(params, xs):
    return jnp.sum(recurrent.scan(cell, params, xs)[1])

  for f in (loss, jax.grad(loss)):
    jaxpr = jax.make_jaxpr(jax.jit(f))(params, xs)
    assert "pvary" not in str(jaxpr) and "pcast" not in str(jaxpr)
    assert not jaxpr.effects
