"""The hand-written backward pass (recurrent/fused.py) against JAX's own autodiff.

Reference: the same cell with ``pointwise=None``, which makes the driver differentiate a
plain ``lax.scan`` over ``cell.recur``; values and gradients must agree.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import cell as cell_lib
from recurrent.fused import loops

B, T, IN, H = 3, 6, 4, 5
LENGTHS = np.array([6, 0, 3])


def _data(dtype=jnp.float32):
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((B, T, IN)), dtype)
  weights = jnp.asarray(rng.standard_normal((B, T, H)), jnp.float32)
  return xs, weights


def _loss(cell, **options):
  xs, weights = _data()

  def loss(params, carry, xs):
    final, ys = recurrent.scan(cell, params, xs, initial_carry=carry, **options)
    return jnp.sum(ys.astype(jnp.float32) * weights) + sum(
      jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final)
    )

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
  "options",
  [
    {},
    {"reverse": True, "seq_lengths": LENGTHS},
    {"seq_lengths": LENGTHS, "recurrent_dropout": 0.4, "dropout": 0.3},
    {"reverse": True, "recurrent_dropout": 0.4, "per_gate_masks": True, "dropout": 0.3},
  ],
  ids=["plain", "reverse-lengths", "lengths-dropout", "reverse-dropout-untied-inputs"],
)
@pytest.mark.parametrize("unroll", [1, 4])
def test_fused_gradients_equal_autodiff(kind, options, unroll):
  """Values and gradients (params, initial carry, inputs) of the fused path equal plain
  autodiff of lax.scan, float32, for LSTM and reset-after GRU; also with four steps to a
  loop iteration (T = 6: one iteration of four, one of two), where the loops keep their
  arrays differently (``fused._steps_apart``)."""
  cell = getattr(recurrent, kind)(H)
  assert cell.fast is not None
  params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.key(0), IN))
  carry = jax.tree.map(lambda c: c + 0.2, cell.initial_carry((B,)))
  if "dropout" in options:
    options = dict(options, key=recurrent.sequence_keys(jax.random.key(3), B))
  if options.get("per_gate_masks"):
    # One recurrent mask per gate takes the plain path itself; keep the inputs untied only.
    options = dict(options, recurrent_dropout=0.0)
  xs, _ = _data()
  fused = _loss(cell, unroll=unroll, **options)(params, carry, xs)
  plain = _loss(cell._replace(fast=None), **options)(params, carry, xs)
  for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_fused_bfloat16_and_time_major():
  """bf16 matmuls, time-major, two batch dims: the fused path equals autodiff within bf16
  rounding."""
  cell = recurrent.lstm(H, dtype=jnp.bfloat16)
  params = cell.init(jax.random.key(0), IN)
  xs = jnp.asarray(np.random.default_rng(1).standard_normal((T, 2, 2, IN)), jnp.float32)

  def grads(c):
    return jax.jit(
      jax.grad(
        lambda p, x: jnp.sum(recurrent.scan(c, p, x, time_major=True)[1].astype(jnp.float32)),
        argnums=(0, 1),
      )
    )(params, xs)

  for got, want in zip(
    jax.tree.leaves(grads(cell)), jax.tree.leaves(grads(cell._replace(fast=None)))
  ):
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2)


def test_fused_second_order_and_vmap():
  """Grad of grad goes through the hand-written backward pass, and vmap of the gradient
  over sequences equals the batched gradient summed (both against plain autodiff)."""
  cell = recurrent.gru(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()

  def hvp(c):
    f = lambda p: jnp.sum(recurrent.scan(c, p, xs)[1] ** 2)  # noqa: E731
    g = lambda p: jax.grad(f)(p).w_hh.sum()  # noqa: E731
    return jax.jit(jax.grad(g))(params)

  for got, want in zip(jax.tree.leaves(hvp(cell)), jax.tree.leaves(hvp(cell._replace(fast=None)))):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)

  per_seq = jax.vmap(jax.grad(lambda p, x: jnp.sum(recurrent.scan(cell, p, x)[1])), (None, 0))
  batched = jax.grad(lambda p: jnp.sum(recurrent.scan(cell, p, xs)[1]))(params)
  summed = jax.tree.map(lambda g: g.sum(0), jax.jit(per_seq)(params, xs))
  for got, want in zip(jax.tree.leaves(summed), jax.tree.leaves(batched)):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("dropout", [False, True], ids=["no-dropout", "dropout"])
@pytest.mark.parametrize("time_major", [False, True], ids=["batch-major", "time-major"])
@pytest.mark.parametrize("driver", ["scan", "stack"])
def test_gradient_of_no_steps(kind, dropout, time_major, driver):
  """T = 0: the gradient (it raised an IndexError in the backward pass) is zero for the
  params, an empty array for the inputs, and for the initial carry the final carry's
  gradient (the final carry is the initial one); through scan and a bidirectional stack,
  with and without dropout, batch- and time-major; equal to plain autodiff."""
  cell = getattr(recurrent, kind)(H)
  xs = jnp.ones((0, B, IN) if time_major else (B, 0, IN))
  options = {"time_major": time_major}
  if dropout:
    options.update(dropout=0.3, recurrent_dropout=0.3)
    options["key"] = recurrent.sequence_keys(jax.random.key(1), B)
  if driver == "scan":
    params = cell.init(jax.random.key(0), IN)
    carry = jax.tree.map(lambda c: c + 0.2, cell.initial_carry((B,)))
  else:
    params = recurrent.init_layers(cell, jax.random.key(0), IN, 2, bidirectional=True)
    one = jax.tree.map(lambda c: c + 0.2, cell.initial_carry((B,)))
    carry = [recurrent.Bidirectional(one, one)] * 2

  def grads(c):
    run = recurrent.scan if driver == "scan" else recurrent.stack

    def loss(params, carry, xs):
      final, ys = run(c, params, xs, initial_carry=carry, **options)
      return jnp.sum(ys) + sum(jnp.sum(jnp.sin(leaf)) for leaf in jax.tree.leaves(final))

    return jax.grad(loss, argnums=(0, 1, 2))(params, carry, xs)

  d_params, d_carry, d_xs = grads(cell)
  assert jax.tree.structure(d_params) == jax.tree.structure(params)
  for g, p in zip(jax.tree.leaves(d_params), jax.tree.leaves(params)):
    assert g.shape == p.shape and g.dtype == p.dtype
    np.testing.assert_array_equal(g, 0.0)
  assert d_xs.shape == xs.shape
  for g, c in zip(jax.tree.leaves(d_carry), jax.tree.leaves(carry)):
    np.testing.assert_allclose(g, jnp.cos(c), rtol=1e-6)
  plain = grads(cell._replace(fast=None))
  for got, want in zip(jax.tree.leaves((d_params, d_carry, d_xs)), jax.tree.leaves(plain)):
    np.testing.assert_array_equal(got, want)


def _plain_gate_dots(x, w, num_gates):
  """The reference: one plain matmul per gate, differentiated by JAX."""
  hidden = w.shape[-1] // num_gates
  return tuple(x @ w[:, g * hidden : (g + 1) * hidden] for g in range(num_gates))


@pytest.mark.parametrize("argnums", [(0,), (1,), (0, 1)])
def test_gate_dots_derivatives_equal_plain_matmuls(argnums):
  """``cell.gate_dots`` (one matmul in its tangent rule) has the values, gradients and
  forward-mode derivatives of G plain per-gate matmuls, for any subset of (x, w)."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((T, B, IN)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((IN, 4 * H)), jnp.float32)
  weights = [jnp.asarray(rng.standard_normal((T, B, H)), jnp.float32) for _ in range(4)]

  def loss(fn):
    return lambda *a: sum(jnp.sum(jnp.tanh(y) * r) for y, r in zip(fn(*a, 4), weights))

  got = jax.grad(loss(lambda x, w, g: cell_lib.gate_dots(x, w, g, None)), argnums)(x, w)
  want = jax.grad(loss(_plain_gate_dots), argnums)(x, w)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
  tangents = tuple(jnp.ones_like(a) if i in argnums else jnp.zeros_like(a) for i, a in
                   enumerate((x, w)))  # fmt: skip
  got = jax.jvp(lambda *a: cell_lib.gate_dots(*a, 4, None), (x, w), tangents)
  want = jax.jvp(lambda *a: _plain_gate_dots(*a, 4), (x, w), tangents)
  for g, r in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)


def test_forward_mode_through_the_plain_path():
  """With ``pointwise=None`` the driver supports forward mode: jacfwd equals jacrev."""
  cell = recurrent.lstm(H)._replace(fast=None)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  f = lambda x: recurrent.scan(cell, params, x)[1].sum(axis=(0, 1))  # noqa: E731
  np.testing.assert_allclose(jax.jacfwd(f)(xs), jax.jacrev(f)(xs), rtol=1e-5, atol=1e-5)


def _scans(jaxpr):
  """Every scan equation in ``jaxpr``, nested ones included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "scan":
      yield eqn
    for param in eqn.params.values():
      inner = getattr(param, "jaxpr", param)  # a ClosedJaxpr's Jaxpr, or a Jaxpr
      if hasattr(inner, "eqns"):
        yield from _scans(inner)


@pytest.mark.parametrize("kind, sums", [("lstm", True), ("gru", False)])
def test_gradient_keeps_one_row_array_per_kind_of_pre_activation(kind, sums):
  """Under ``grad`` the forward loop writes each step's ``x + r`` over the projection
  ``[T, B, G*H]`` where the cell only sums them (the LSTM) and stacks nothing that wide;
  the GRU, whose candidate gate needs ``r`` apart, stacks ``r [T, B, G*H]`` once. The
  backward loop writes the gradients over those same arrays and stacks nothing."""
  cell = getattr(recurrent, kind)(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  jaxpr = jax.make_jaxpr(jax.grad(lambda p: jnp.sum(recurrent.scan(cell, p, xs)[1])))(params)
  scans = list(_scans(jaxpr.jaxpr))
  assert [e.params["reverse"] for e in scans] == [False, True]
  wide = (T, B, cell.num_gates * H)
  # Without sums the forward loop leaves the projection as it is: JAX passes it in as a
  # constant, not a carry.
  carried_wide = (1, 1) if sums else (0, 2)  # forward loop, backward loop
  stacked_wide = (0, 0) if sums else (1, 0)
  for scan, carried_n, stacked_n in zip(scans, carried_wide, stacked_wide):
    num_carry = scan.params["num_carry"]
    carried = [v.aval.shape for v in scan.outvars[:num_carry]]
    stacked = [v.aval.shape for v in scan.outvars[num_carry:]]
    assert carried.count(wide) == carried_n
    assert stacked.count(wide) == stacked_n
  assert not scans[1].outvars[scans[1].params["num_carry"] :]


def _loop_bodies(hlo: str) -> list:
  """The text of every while loop body in XLA's optimised HLO."""
  bodies = set(re.findall(r"while\([^)]*\), condition=%[\w.\-]+, body=%([\w.\-]+)", hlo))
  comps = re.findall(r"^%([\w.\-]+) .*?\{\n(.*?)\n\}", hlo, re.S | re.M)
  found = [text for name, text in comps if name in bodies]
  assert len(found) == len(bodies) > 0
  return found


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("rate", [0.0, 0.3])
@pytest.mark.parametrize("batch, hidden", [(16, 64), (4, 32), (8, 16)])
@pytest.mark.parametrize("unroll", [1, 3])
def test_gradient_loops_copy_no_whole_array(kind, rate, batch, hidden, unroll):
  """XLA copies a loop-carried ``[T, ...]`` array at every step when a step writes into it
  while another of the step's reads of it need not come first (the GRU's recurrent-dropout
  backward did: 13% of its forward + backward at (32, 100, 128, 256), in a one-off A/B; at
  H <= 32 the GRU's backward without dropout did, twice a step: 11x Flax's time at
  (32, 1000, 16, 32)), and with ``unroll`` > 1 the LSTM's and GRU's backward did, and the
  LSTM's forward (1.2-2.6x the gradient's time on an H200). No loop may copy an array with
  T rows."""
  cell = getattr(recurrent, kind)(hidden)
  params = cell.init(jax.random.key(0), 8)
  xs = jax.ShapeDtypeStruct((batch, 50, 8), jnp.float32)
  keys = recurrent.sequence_keys(jax.random.key(1), batch)

  def loss(p, x, k):
    return jnp.sum(recurrent.scan(cell, p, x, recurrent_dropout=rate, key=k, unroll=unroll)[1])

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs, keys).compile().as_text()
  bodies = _loop_bodies(hlo)
  assert len(bodies) >= 2  # the forward and the backward loop (and the masks' PRNG)
  rows = [int(r) for body in bodies for r in re.findall(r"= \w+\[(\d+)[^\]]*\]\S* copy\(", body)]
  assert all(r < 50 for r in rows), rows


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_batch_major_gradient_keeps_no_transposed_output_gradient(kind):
  """The backward loop reads the output gradient ``[B, T, H]`` where it lies: batch-major
  costs XLA no transposed copy of it, only one of the (smaller) inputs ``[B, T, I]``, in
  temporary memory over time-major."""
  cell = getattr(recurrent, kind)(32)
  params = cell.init(jax.random.key(0), 4)
  rng = np.random.default_rng(0)
  xs = jnp.asarray(rng.standard_normal((8, 16, 4)), jnp.float32)
  weights = jnp.asarray(rng.standard_normal((8, 16, 32)), jnp.float32)

  def temp_bytes(time_major):
    def loss(p, x, w):
      return jnp.sum(recurrent.scan(cell, p, x, time_major=time_major)[1] * w)

    args = (params, xs, weights)
    if time_major:
      args = (params, jnp.swapaxes(xs, 0, 1), jnp.swapaxes(weights, 0, 1))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  assert temp_bytes(time_major=False) - temp_bytes(time_major=True) <= xs.nbytes


def _check_chunks_of_two(cell, params, xs, **options):
  """With ``projection_chunk=2`` this forward of T=6 steps runs in chunks of 2 (an outer
  loop of 3): checks that it does."""
  jaxpr = jax.make_jaxpr(lambda x: recurrent.scan(cell, params, x, **options))(xs)
  assert sorted(e.params["length"] for e in _scans(jaxpr.jaxpr)) == [2, T // 2]


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
  "options",
  [
    {},
    {"reverse": True, "seq_lengths": LENGTHS},
    {"seq_lengths": LENGTHS, "recurrent_dropout": 0.4, "dropout": 0.3},
    {"time_major": True, "reverse": True},
  ],
  ids=["plain", "reverse-lengths", "lengths-dropout", "time-major-reverse"],
)
def test_chunked_forward_equals_plain_scan(kind, options):
  """With ``projection_chunk=2``, T=6 runs in chunks of 2 steps (inside an outer loop,
  projection included): outputs and final carry equal the plain lax.scan path;
  gradients still equal it (the backward never chunks)."""
  cell = getattr(recurrent, kind)(H)
  params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.key(0), IN))
  carry = jax.tree.map(lambda c: c + 0.2, cell.initial_carry((B,)))
  if "dropout" in options:
    options = dict(options, key=recurrent.sequence_keys(jax.random.key(3), B))
  options = dict(options, projection_chunk=2)
  xs, _ = _data()
  if options.get("time_major"):
    xs = jnp.swapaxes(xs, 0, 1)

  def run(c):
    forward = jax.jit(lambda p, h, x: recurrent.scan(c, p, x, initial_carry=h, **options))
    return forward(params, carry, xs)

  _check_chunks_of_two(cell, params, xs, **options)
  chunked = run(cell)
  for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(run(cell._replace(fast=None)))):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if not options.get("time_major"):
    fused = _loss(cell, **options)(params, carry, xs)
    plain = _loss(cell._replace(fast=None), **options)(params, carry, xs)
    for got, want in zip(jax.tree.leaves(fused), jax.tree.leaves(plain)):
      np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


def test_chunked_bfloat16_forward():
  """bf16 matmuls (float32 params and carries, bf16 outputs) in chunks of 2 steps: the
  outputs keep their dtype and equal the plain lax.scan path's within bf16 rounding."""
  cell = recurrent.lstm(H, dtype=jnp.bfloat16)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  _check_chunks_of_two(cell, params, xs, projection_chunk=2)
  got = jax.jit(lambda p, x: recurrent.scan(cell, p, x, projection_chunk=2))(params, xs)
  want = jax.jit(lambda p, x: recurrent.scan(cell._replace(fast=None), p, x))(params, xs)
  assert got[1].dtype == want[1].dtype == jnp.bfloat16
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=2e-2)


def test_projection_chunk_sizes():
  """Chunks only above CHUNK_ABOVE bytes of projection, as the largest divisor of T under
  CHUNK_BYTES a chunk, and not at all when T has no divisor near that size."""
  chunk = recurrent.fused.policy.chunk_rule
  mib = 2**20
  assert chunk(100, 128 * 1024) is None  # 12.5 MiB in all
  assert chunk(200, 512 * 1024) == 10  # 100 MiB: at most 16 steps a chunk, 10 divides 200
  assert chunk(200, 3 * 128 * 1024) == 20  # at most 21 steps
  assert chunk(211, 512 * 1024) is None  # prime T: chunks of 1 step only
  assert chunk(64, 8 * mib) == 1  # one step fills a chunk


def test_chunked_forward_needs_less_temporary_memory():
  """At (B, T, H) = (64, 200, 512) the LSTM forward's projection is 105 MB; in chunks of 10
  steps XLA's temporary buffer (its own memory analysis) is less than half as large."""
  cell = recurrent.lstm(512)
  params = cell.init(jax.random.key(0), 8)
  xs = jax.ShapeDtypeStruct((64, 200, 8), jnp.float32)

  def temp_bytes(chunk):
    forward = jax.jit(lambda p, x: recurrent.scan(cell, p, x, projection_chunk=chunk)[1])
    return forward.lower(params, xs).compile().memory_analysis().temp_size_in_bytes

  assert recurrent.fused.policy.chunk_rule(200, 64 * 4 * 512 * 4) == 10
  chunked = temp_bytes("auto")
  whole = temp_bytes(None)
  assert 2 * chunked < whole, (chunked, whole)


GRAD_STATES = 50 * 16 * 64 * 4  # one [T, B, H] float32 array of _grad_temp_bytes


def _grad_temp_bytes(cell, rate):
  """XLA's temporary buffer of the gradient of ``cell`` (hidden size 64) over inputs
  ``[16, 50, 8]``, with recurrent dropout at ``rate``."""
  params = cell.init(jax.random.key(0), 8)
  xs = jax.ShapeDtypeStruct((16, 50, 8), jnp.float32)
  keys = recurrent.sequence_keys(jax.random.key(1), 16)

  def loss(p, x, k):
    return jnp.sum(recurrent.scan(cell, p, x, recurrent_dropout=rate, key=k)[1])

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  return grad.lower(params, xs, keys).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_recurrent_dropout_gradient_needs_no_extra_buffer(kind):
  """The weight gradient with a recurrent mask, ``(h * m)^T dz``, adds at most the masks
  to XLA's temporary buffer, not a masked ``[T, B, H]`` copy of the stored states: the
  backward loop writes each ``h * m`` over ``h`` (at (32, 100, 128, 256) that copy took the
  LSTM's buffer over glibc's mmap threshold)."""
  cell = getattr(recurrent, kind)(64)
  plain, dropped = _grad_temp_bytes(cell, 0.0), _grad_temp_bytes(cell, 0.3)
  assert dropped - plain < GRAD_STATES // 2, (plain, dropped, GRAD_STATES)


@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_lstm_gradient_rebuilds_h_over_the_cell_states(rate):
  """The LSTM's pointwise maths reads ``c`` but not ``h``, and it declares ``h_host='c'``:
  its forward under ``grad`` stacks the carries' ``c`` alone, and the backward writes each
  recomputed ``h_t`` (times the mask) over the ``c`` row it has read. That is one
  ``[T, B, H]`` array fewer in XLA's temporary buffer than stacking ``h`` as well; the GRU,
  whose maths reads ``h``, declares no host."""
  assert recurrent.lstm(64).fast.h_host == "c" and recurrent.gru(64).fast.h_host is None
  cell = recurrent.lstm(64)
  rebuilt = _grad_temp_bytes(cell, rate)
  stacked = _grad_temp_bytes(cell._replace(fast=cell.fast._replace(h_host=None)), rate)
  assert stacked - rebuilt >= GRAD_STATES * 9 // 10, (stacked, rebuilt, GRAD_STATES)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("feature_major", [False, True])
def test_forward_writes_outputs_over_the_projection(kind, feature_major):
  """Not under grad, the loop carries the first gate's projection ``[T, B, H]`` (``[H, T,
  B]`` feature-major) and writes each output over it: no stacked output (and no
  zero-filled stack) of its own."""
  layout = "feature" if feature_major else "batch"
  cell = getattr(recurrent, kind)(H)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  jaxpr = jax.make_jaxpr(lambda p: recurrent.scan(cell, p, xs, seq_lengths=LENGTHS, layout=layout))(
    params
  )
  (loop,) = _scans(jaxpr.jaxpr)
  num_carry = loop.params["num_carry"]
  assert [v.aval.shape for v in loop.outvars[num_carry:]] == []
  carried = [v.aval.shape for v in loop.outvars[:num_carry]]
  assert ((H, T, B) if feature_major else (T, B, H)) in carried
  assert ((H, B) if feature_major else (B, H)) in carried  # the hidden state


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("batch_shape", [(1,), (1, 1)])
def test_batch_of_one_forward_loops_over_unbatched_carries(kind, batch_shape):
  """A batch of one sequence: the forward alone carries ``[H]`` and the projection
  ``[T, H]``, no batch dims; under ``grad`` the loops keep them (they ran slower
  without). Results against the plain path: test_forward_layouts_equal_plain_scan."""
  cell = getattr(recurrent, kind)(H)
  params = cell.init(jax.random.key(0), IN)
  xs = _data()[0][:1].reshape(batch_shape + (T, IN))
  lengths = LENGTHS[2:].reshape(batch_shape)
  forward = jax.make_jaxpr(lambda p, x: recurrent.scan(cell, p, x, seq_lengths=lengths))
  (loop,) = _scans(forward(params, xs).jaxpr)
  carried = [v.aval.shape for v in loop.outvars[: loop.params["num_carry"]]]
  assert (H,) in carried and (T, H) in carried
  assert batch_shape + (H,) not in carried and (T,) + batch_shape + (H,) not in carried
  grad = jax.make_jaxpr(jax.grad(lambda p, x: jnp.sum(recurrent.scan(cell, p, x)[1]), (0, 1)))
  loops = list(_scans(grad(params, xs).jaxpr))
  assert len(loops) == 2  # forward and backward
  for loop in loops:
    assert batch_shape + (H,) in [v.aval.shape for v in loop.outvars]


def test_unbatched_rule():
  """Unbatched: at least one batch dim, all of them 1 (the tests run on the CPU)."""
  rule = recurrent.fused.policy.unbatched
  assert rule((1,)) and rule((1, 1))
  assert not rule(()) and not rule((2,)) and not rule((1, 2)) and not rule((0,))


def test_feature_major_rule():
  """Feature-major only where it was measured faster on both hosts: a batch of 16 to 32
  sequences and a recurrent matmul G*H at least 3072 wide (the tests run on the CPU)."""
  rule = recurrent.fused.policy.feature_major
  assert rule(16, 4 * 1024) and rule(32, 3 * 1024) and rule(24, 4 * 768)
  assert not rule(8, 4 * 1024) and not rule(48, 4 * 1024)  # outside B=16-32
  assert not rule(32, 4 * 512) and not rule(32, 4 * 256)  # narrower than 3072
  assert not rule(64, 4 * 512) and not rule(256, 4 * 128) and not rule(1, 4 * 1024)


@pytest.mark.parametrize("layout", ["feature-major", "batch-of-one"])
@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize(
  "options",
  [
    {},
    {"reverse": True, "seq_lengths": LENGTHS},
    {"seq_lengths": LENGTHS, "recurrent_dropout": 0.4, "dropout": 0.3},
    {"dropout": 0.3, "per_gate_masks": True},
    {"time_major": True, "reverse": True},
    {"batch_dims": 2},
    {"chunks": True, "reverse": True, "seq_lengths": LENGTHS, "dropout": 0.3},
  ],
  ids=["plain", "reverse-lengths", "dropout", "untied-inputs", "time-major", "2-batch-dims",
       "chunked"],
)  # fmt: skip
def test_forward_layouts_equal_plain_scan(layout, kind, options):
  """The forward alone feature-major (forced: the test's H is small) and for a batch of one
  sequence (carries without batch dims): outputs and final carry equal the plain lax.scan
  path's, with lengths, reverse, dropout masks (shared or one per gate on the inputs),
  time-major, two batch dims and in chunks of 2 steps."""
  options = dict(options)
  cell = getattr(recurrent, kind)(H)
  params = jax.tree.map(lambda p: p + 0.1, cell.init(jax.random.key(0), IN))
  xs, _ = _data()
  if layout == "feature-major":
    options["layout"] = "feature"
  else:  # the sequence with held steps at the end, or (reversed) at the start
    xs = xs[2:]
    if "seq_lengths" in options:
      options["seq_lengths"] = LENGTHS[2:]
  batch_shape = xs.shape[:1]
  if options.pop("batch_dims", 1) == 2:
    xs = jnp.stack([xs, 0.5 * xs[::-1]])[: 1 if layout == "batch-of-one" else 2]
    batch_shape = xs.shape[:2]
  carry = jax.tree.map(lambda c: c + 0.2, cell.initial_carry(batch_shape))
  if "dropout" in options:
    ids = np.arange(np.prod(batch_shape)).reshape(batch_shape)
    options["key"] = recurrent.sequence_keys(jax.random.key(3), ids)
  if options.get("time_major"):
    xs = jnp.moveaxis(xs, -2, 0)
  if options.pop("chunks", False):
    options["projection_chunk"] = 2
    _check_chunks_of_two(cell, params, xs, **options)

  def run(c):
    forward = jax.jit(lambda p, h, x: recurrent.scan(c, p, x, initial_carry=h, **options))
    return forward(params, carry, xs)

  assert layout == "feature-major" or recurrent.fused.policy.unbatched(batch_shape)
  got, want = run(cell), run(cell._replace(fast=None))
  assert jax.tree.map(jnp.shape, got) == jax.tree.map(jnp.shape, want)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_feature_major_bfloat16_forward():
  """bf16 matmuls feature-major: outputs keep bf16 and equal the plain lax.scan path's
  within bf16 rounding."""
  cell = recurrent.gru(H, dtype=jnp.bfloat16)
  params = cell.init(jax.random.key(0), IN)
  xs, _ = _data()
  got = jax.jit(lambda p, x: recurrent.scan(cell, p, x, layout="feature"))(params, xs)
  want = jax.jit(lambda p, x: recurrent.scan(cell._replace(fast=None), p, x))(params, xs)
  assert got[1].dtype == want[1].dtype == jnp.bfloat16
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(w, np.float32), atol=2e-2)


def test_recurrent_mask_as_keep_and_scale_equals_the_product():
  """The fused loops apply the recurrent mask as ``where(keep, h, 0) * scale`` (a bool
  array reads a quarter of the bytes); for masks as ``recurrent.dropout.masks`` draws
  them, all-dropped ones included, that equals ``h * mask`` exactly."""
  h = jax.random.normal(jax.random.key(0), (64, 32))
  keys = recurrent.sequence_keys(jax.random.key(1), 64)
  for rate in (0.25, 0.9):
    (mask,) = recurrent.dropout.masks(keys, 32, rate)
    assert 0 < float(jnp.mean(mask == 0)) < 1
    got = loops.masked_h(h, loops.as_mask(mask))
    np.testing.assert_array_equal(got, h * mask)
  none = jnp.zeros((64, 32))
  np.testing.assert_array_equal(loops.masked_h(h, loops.as_mask(none)), 0)
