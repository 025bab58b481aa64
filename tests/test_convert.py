"""Tests of :mod:`recurrent.convert`, against the two libraries it converts from and to.

References: PyTorch ``nn.LSTM``/``nn.GRU`` (state dicts, and the modules' own outputs) and
Flax linen ``LSTMCell``/``OptimizedLSTMCell``/``GRUCell`` run by ``flax.linen.RNN``.
Exactness is as the module docstring promises: bitwise where nothing is summed, the same
function up to float32 rounding where biases are folded together.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import recurrent
from recurrent import convert

ATOL, RTOL = 1e-5, 1e-5
B, T, IN, H = 3, 6, 5, 4  # batch, time, input size, hidden size


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _torch_module(kind, num_layers=2, bidirectional=True, *, seed=0, **kw):
  torch.manual_seed(seed)
  cls = torch.nn.LSTM if kind == "lstm" else torch.nn.GRU
  return cls(IN, H, num_layers=num_layers, bidirectional=bidirectional, batch_first=True, **kw)


def _cell(kind):
  return recurrent.lstm(H) if kind == "lstm" else recurrent.gru(H)


def _xs(seed=0, shape=(B, T, IN)):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _leaves_equal(actual, expected):
  """Same tree structure and bitwise-equal leaves of the same dtype."""
  actual_leaves, actual_tree = jax.tree_util.tree_flatten_with_path(actual)
  expected_leaves, expected_tree = jax.tree_util.tree_flatten_with_path(expected)
  assert actual_tree == expected_tree
  for (path, a), (_, e) in zip(actual_leaves, expected_leaves):
    a, e = np.asarray(a), np.asarray(e)
    assert a.dtype == e.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(a, e, err_msg=jax.tree_util.keystr(path))


def _torch_outputs(module, xs):
  """PyTorch's outputs and final carries ``[L*D, B, H]`` (``(h_n, c_n)`` or ``(h_n,)``)."""
  with torch.no_grad():
    out, state = module(torch.from_numpy(xs))
  finals = state if isinstance(state, tuple) else (state,)
  return out.numpy(), [f.numpy() for f in finals]


def _our_outputs(kind, params, xs):
  """Our stack's outputs and final carries in PyTorch's ``[L*D, B, H]`` layout."""
  carries, ys = jax.jit(lambda p, x: recurrent.stack(_cell(kind), p, x))(params, jnp.asarray(xs))
  rows = []
  for carry in carries:
    rows.extend(carry if isinstance(carry, recurrent.Bidirectional) else (carry,))
  fields = ("h", "c") if kind == "lstm" else ("h",)
  return np.asarray(ys), [np.stack([getattr(r, f) for r in rows]) for f in fields]


def _assert_same_outputs(ours, reference):
  (ys, finals), (ys_ref, finals_ref) = ours, reference
  np.testing.assert_allclose(ys, ys_ref, rtol=RTOL, atol=ATOL, err_msg="outputs")
  assert len(finals) == len(finals_ref)
  for f, f_ref in zip(finals, finals_ref):
    np.testing.assert_allclose(f, f_ref, rtol=RTOL, atol=ATOL, err_msg="final carries")


def _perturbed(tree, seed, scale=0.5):
  """Adds N(0, scale) noise to every leaf, so no bias is zero (or one) by chance."""
  leaves, treedef = jax.tree.flatten(tree)
  rng = np.random.default_rng(seed)
  noisy = [
    leaf + jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype) for leaf in leaves
  ]
  return jax.tree.unflatten(treedef, noisy)


# --- PyTorch ------------------------------------------------------------------------------


@pytest.mark.parametrize("num_layers, bidirectional", ((1, False), (2, True), (3, False)))
def test_gru_torch_round_trip_is_exact(num_layers, bidirectional):
  """PyTorch ``nn.GRU`` state dict -> ours -> state dict: bitwise, every key; and the layout
  is PyTorch's transposed, gates ``r, z, n``, both biases kept."""
  sd = {
    k: v.numpy() for k, v in _torch_module("gru", num_layers, bidirectional).state_dict().items()
  }
  params = convert.from_torch(sd)
  assert len(params) == num_layers
  first = params[0].forward if bidirectional else params[0]
  assert isinstance(first, recurrent.GRUParams)
  np.testing.assert_array_equal(first.w_ih, sd["weight_ih_l0"].T)
  np.testing.assert_array_equal(first.w_hh, sd["weight_hh_l0"].T)
  np.testing.assert_array_equal(first.b_ih, sd["bias_ih_l0"])
  np.testing.assert_array_equal(first.b_hh, sd["bias_hh_l0"])

  back = convert.to_torch(params)
  assert sorted(back) == sorted(sd)
  _leaves_equal(back, sd)
  _leaves_equal(convert.from_torch(back), params)


def test_gru_from_torch_reads_tensors():
  """PyTorch: a state dict of torch tensors (``module.state_dict()`` as is) converts like
  its NumPy copy, and ``load_state_dict`` of ``to_torch`` restores the module exactly."""
  module = _torch_module("gru")
  sd = module.state_dict()
  params = convert.from_torch(sd)
  _leaves_equal(params, convert.from_torch({k: v.numpy() for k, v in sd.items()}))
  fresh = _torch_module("gru", seed=1)
  fresh.load_state_dict({k: torch.from_numpy(v) for k, v in convert.to_torch(params).items()})
  for k, v in fresh.state_dict().items():
    assert torch.equal(v, sd[k]), k


def test_lstm_from_torch_sums_biases():
  """PyTorch ``nn.LSTM``: weights transposed exactly, ``b = bias_ih + bias_hh``."""
  sd = {k: v.numpy() for k, v in _torch_module("lstm").state_dict().items()}
  params = convert.from_torch(sd)
  for layer, pair in enumerate(params):
    for params_d, suffix in zip(pair, ("", "_reverse")):
      key = f"_l{layer}{suffix}"
      assert isinstance(params_d, recurrent.LSTMParams)
      np.testing.assert_array_equal(params_d.w_ih, sd["weight_ih" + key].T)
      np.testing.assert_array_equal(params_d.w_hh, sd["weight_hh" + key].T)
      np.testing.assert_array_equal(params_d.b, sd["bias_ih" + key] + sd["bias_hh" + key])


@pytest.mark.parametrize("num_layers, bidirectional", ((1, False), (2, True)))
def test_lstm_to_torch_gives_same_function(num_layers, bidirectional):
  """PyTorch ``nn.LSTM`` loaded with ``to_torch(params)`` computes our stack's outputs and
  ``(h_n, c_n)``; ``b`` goes to ``bias_ih`` and ``bias_hh`` is zero, so ``from_torch`` of it
  gives the params back bitwise."""
  cell = recurrent.lstm(H)
  params = recurrent.init_layers(
    cell, jax.random.key(0), IN, num_layers, bidirectional=bidirectional
  )
  params = _perturbed(params, seed=0)
  sd = convert.to_torch(params)
  for name, value in sd.items():
    if name.startswith("bias_hh"):
      np.testing.assert_array_equal(value, 0.0)
  module = _torch_module("lstm", num_layers, bidirectional, seed=1)
  module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})  # strict: all keys
  xs = _xs(1)
  _assert_same_outputs(_our_outputs("lstm", params, xs), _torch_outputs(module, xs))
  _leaves_equal(convert.from_torch(sd), params)


def test_to_torch_single_layer():
  """PyTorch keys ``*_l0``: one layer's params (not in a list) convert as a 1-layer stack."""
  params = recurrent.gru(H).init(jax.random.key(0), IN)
  sd = convert.to_torch(params)
  assert sorted(sd) == ["bias_hh_l0", "bias_ih_l0", "weight_hh_l0", "weight_ih_l0"]
  module = _torch_module("gru", 1, False, seed=1)
  module.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()})
  xs = _xs(2)
  _assert_same_outputs(_our_outputs("gru", [params], xs), _torch_outputs(module, xs))


@pytest.mark.parametrize("kind", ("lstm", "gru"))
def test_torch_without_bias(kind):
  """PyTorch ``bias=False`` modules: zero biases here, and the same outputs and carries."""
  module = _torch_module(kind, 2, True, bias=False)
  assert not any(k.startswith("bias") for k in module.state_dict())
  params = convert.from_torch(module.state_dict())
  for params_d in jax.tree.leaves(params, is_leaf=lambda x: hasattr(x, "w_ih")):
    biases = (params_d.b,) if kind == "lstm" else (params_d.b_ih, params_d.b_hh)
    for b in biases:
      assert b.shape == (params_d.w_hh.shape[1],) and b.dtype == jnp.float32
      np.testing.assert_array_equal(b, 0.0)
  xs = _xs(3)
  _assert_same_outputs(_our_outputs(kind, params, xs), _torch_outputs(module, xs))


def test_from_torch_dtype():
  """PyTorch float32 state dict -> bfloat16 params with ``dtype=``; None keeps float32."""
  sd = _torch_module("lstm").state_dict()
  assert all(
    x.dtype == jnp.bfloat16 for x in jax.tree.leaves(convert.from_torch(sd, dtype=jnp.bfloat16))
  )
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(convert.from_torch(sd)))


def _with_extra_key():
  sd = dict(_torch_module("gru", 1, False).state_dict())
  sd["weight_ih_l0_extra"] = sd["weight_ih_l0"]
  return sd


def _layer_one_only():
  sd = _torch_module("gru", 2, False).state_dict()
  return {k: v for k, v in sd.items() if k.endswith("_l1")}


@pytest.mark.parametrize(
  "make_sd, match",
  (
    (lambda: torch.nn.Linear(IN, H).state_dict(), "unexpected key 'weight'"),
    (_with_extra_key, "unexpected key 'weight_ih_l0_extra'"),
    (lambda: {"module.weight_ih_l0": np.zeros((3 * H, IN), np.float32)}, "unexpected key"),
    (_layer_one_only, r"layers \[1\]"),
    (dict, "layers"),
  ),
  ids=("linear", "extra-key", "prefixed", "missing-layer-0", "empty"),
)
def test_from_torch_rejects_unexpected_state_dicts(make_sd, match):
  """PyTorch state dicts that are not a plain ``nn.LSTM``/``nn.GRU``'s raise ValueError."""
  with pytest.raises(ValueError, match=match):
    convert.from_torch(make_sd())


# --- Flax ---------------------------------------------------------------------------------

FLAX_CELLS = {
  "LSTMCell": (nn.LSTMCell, "lstm"),
  "OptimizedLSTMCell": (nn.OptimizedLSTMCell, "lstm"),
  "GRUCell": (nn.GRUCell, "gru"),
}


def _flax_variables(name, seed=0):
  """A Flax cell's own init, with random (nonzero) biases."""
  cls, _ = FLAX_CELLS[name]
  cell = cls(features=H, bias_init=nn.initializers.normal(1.0))
  carry = cell.initialize_carry(jax.random.key(seed), (B, IN))
  return cell.init(jax.random.key(seed + 1), carry, jnp.zeros((B, IN)))


def _flax_run(name, variables, xs, carry, seq_lengths, reverse):
  """``flax.linen.RNN(cell)`` with the cell's variables; ``keep_order`` aligns a reverse run
  with ours (outputs in input order, padding at the end)."""
  cls, _ = FLAX_CELLS[name]
  rnn = nn.RNN(cls(features=H), return_carry=True)

  def run(variables, xs, carry, seq_lengths):
    return rnn.apply(
      {"params": {"cell": variables["params"]}},
      xs,
      initial_carry=carry,
      seq_lengths=seq_lengths,
      reverse=reverse,
      keep_order=True,
    )

  return jax.jit(run)(variables, xs, carry, seq_lengths)


def _our_run(kind, params, xs, carry, seq_lengths, reverse):
  def run(params, xs, carry, seq_lengths):
    return recurrent.scan(
      _cell(kind), params, xs, initial_carry=carry, seq_lengths=seq_lengths, reverse=reverse
    )

  return jax.jit(run)(params, xs, carry, seq_lengths)


def _initial_carries(kind, seed):
  """The same nonzero initial carry, as Flax's ``(c, h)``/``h`` and our named state."""
  rng = np.random.default_rng(seed)
  h, c = (jnp.asarray(rng.standard_normal((B, H)), jnp.float32) for _ in range(2))
  if kind == "lstm":
    return (c, h), recurrent.LSTMState(h=h, c=c)
  return h, recurrent.GRUState(h=h)


def _assert_same_as_flax(kind, ours, flax_out, seq_lengths):
  """Final carries equal (Flax's LSTM carry is ``(c, h)``, ours ``LSTMState(h, c)``); outputs
  equal at valid steps, and zero past ``seq_lengths`` in ours (Flax leaves them unspecified)."""
  (carry, ys), (flax_carry, flax_ys) = ours, flax_out
  if kind == "lstm":
    flax_c, flax_h = flax_carry
    np.testing.assert_allclose(carry.c, flax_c, rtol=RTOL, atol=ATOL, err_msg="c")
  else:
    flax_h = flax_carry
  np.testing.assert_allclose(carry.h, flax_h, rtol=RTOL, atol=ATOL, err_msg="h")
  ys, flax_ys = np.asarray(ys), np.asarray(flax_ys)
  valid = np.ones((B, T), bool)
  if seq_lengths is not None:
    valid = np.arange(T)[None, :] < np.asarray(seq_lengths)[:, None]
    np.testing.assert_array_equal(ys[~valid], 0.0)
  np.testing.assert_allclose(ys[valid], flax_ys[valid], rtol=RTOL, atol=ATOL, err_msg="outputs")


SEQ_LENGTHS = np.array([T, 2, 4], np.int32)


@pytest.mark.parametrize("reverse", (False, True), ids=("forward", "reverse"))
@pytest.mark.parametrize("lengths", (False, True), ids=("full", "seq_lengths"))
@pytest.mark.parametrize("name", FLAX_CELLS)
def test_from_flax_matches_flax_rnn(name, lengths, reverse):
  """Flax ``nn.RNN(cell)`` on the Flax cell's own params vs ``recurrent.scan`` on
  ``from_flax`` of them, from a nonzero initial carry; with and without ``seq_lengths``,
  forward and reverse (Flax's ``keep_order=True``)."""
  _, kind = FLAX_CELLS[name]
  variables = _flax_variables(name)
  params = convert.from_flax(variables)
  assert isinstance(params, recurrent.LSTMParams if kind == "lstm" else recurrent.GRUParams)
  xs = jnp.asarray(_xs(4))
  seq_lengths = jnp.asarray(SEQ_LENGTHS) if lengths else None
  flax_carry, our_carry = _initial_carries(kind, seed=5)
  flax_out = _flax_run(name, variables, xs, flax_carry, seq_lengths, reverse)
  ours = _our_run(kind, params, xs, our_carry, seq_lengths, reverse)
  _assert_same_as_flax(kind, ours, flax_out, seq_lengths)


@pytest.mark.parametrize("name", ("LSTMCell", "OptimizedLSTMCell", "GRUCell"))
def test_to_flax_of_from_flax_is_exact(name):
  """Flax variables -> ours -> Flax: the same tree, bitwise (for GRU the ``r``/``z`` parts
  of ``b_hh`` that ``from_flax`` creates are zero, so folding them back adds zero);
  ``from_flax`` takes ``variables`` or ``variables['params']`` alike."""
  variables = _flax_variables(name)
  params = convert.from_flax(variables)
  _leaves_equal(convert.from_flax(variables["params"]), params)
  _leaves_equal(convert.to_flax(params), variables)


def test_from_flax_gru_layout():
  """Flax ``GRUCell``: kernels concatenated ``r, z, n``, input biases to ``b_ih``, and
  ``b_hh = [0, 0, hn.bias]`` (Flax has no ``hr``/``hz`` bias)."""
  p = _flax_variables("GRUCell")["params"]
  params = convert.from_flax(p)
  np.testing.assert_array_equal(params.w_ih[:, 2 * H :], p["in"]["kernel"])
  np.testing.assert_array_equal(params.w_hh[:, :H], p["hr"]["kernel"])
  np.testing.assert_array_equal(params.b_ih[H : 2 * H], p["iz"]["bias"])
  np.testing.assert_array_equal(params.b_hh[: 2 * H], 0.0)
  np.testing.assert_array_equal(params.b_hh[2 * H :], p["hn"]["bias"])


@pytest.mark.parametrize("name", FLAX_CELLS)
def test_to_flax_gives_same_function(name):
  """Flax ``nn.RNN(cell)`` with ``to_flax`` of our params (all biases nonzero, for GRU also
  the ``r``/``z`` parts of ``b_hh``, which Flax lacks and ``to_flax`` folds into its input
  biases) vs ``recurrent.scan`` on the params themselves."""
  _, kind = FLAX_CELLS[name]
  params = _perturbed(_cell(kind).init(jax.random.key(6), IN), seed=6)
  if kind == "gru":
    assert np.all(np.asarray(params.b_hh[: 2 * H]) != 0.0)
  xs = jnp.asarray(_xs(7))
  seq_lengths = jnp.asarray(SEQ_LENGTHS)
  flax_carry, our_carry = _initial_carries(kind, seed=8)
  flax_out = _flax_run(name, convert.to_flax(params), xs, flax_carry, seq_lengths, False)
  ours = _our_run(kind, params, xs, our_carry, seq_lengths, False)
  _assert_same_as_flax(kind, ours, flax_out, seq_lengths)


def test_flax_converters_reject_other_params():
  """Flax variables of another module (here ``nn.Dense``) and non-cell params raise."""
  dense = nn.Dense(H).init(jax.random.key(0), jnp.zeros((1, IN)))
  with pytest.raises(ValueError, match="LSTMCell or GRUCell"):
    convert.from_flax(dense)
  with pytest.raises(TypeError, match="LSTMParams or GRUParams"):
    convert.to_flax({"w_ih": jnp.zeros((IN, 4 * H))})


# --- whole models: prefix= --------------------------------------------------------------


class _TorchModel(torch.nn.Module):
  """A model around a recurrent module: ``embed.*`` and ``head.*`` keys besides ``rnn.*``."""

  def __init__(self, kind):
    super().__init__()
    torch.manual_seed(0)
    self.embed = torch.nn.Embedding(10, IN)
    self.rnn = _torch_module(kind, 2, True)
    self.head = torch.nn.Linear(2 * H, 3)


@pytest.mark.parametrize("kind", ("lstm", "gru"))
def test_from_torch_prefix_reads_a_whole_model(kind):
  """PyTorch: a whole model's state dict with ``prefix='rnn.'`` converts as the recurrent
  module's own state dict (the other keys ignored); without the prefix it is refused with a
  message naming the prefix to pass; ``to_torch(prefix='rnn.')`` updates the model's state
  dict, which then loads strictly and round-trips bitwise."""
  model = _TorchModel(kind)
  sd = model.state_dict()
  params = convert.from_torch(sd, prefix="rnn.")
  _leaves_equal(params, convert.from_torch(model.rnn.state_dict()))
  with pytest.raises(
    ValueError, match=r"unexpected key 'embed\.weight'.*prefix= one of \['rnn\.'\]"
  ):
    convert.from_torch(sd)
  with pytest.raises(ValueError, match=r"no keys starting with prefix 'lstm\.'"):
    convert.from_torch(sd, prefix="lstm.")
  with pytest.raises(TypeError, match="prefix must be a str"):
    convert.from_torch(sd, prefix=0)

  back = convert.to_torch(params, prefix="rnn.")
  assert sorted(back) == sorted(k for k in sd if k.startswith("rnn."))
  fresh = _TorchModel(kind)
  fresh.load_state_dict({**fresh.state_dict(), **{k: torch.from_numpy(v) for k, v in back.items()}})
  _leaves_equal(convert.from_torch(fresh.state_dict(), prefix="rnn."), params)


class _FlaxModel(nn.Module):
  """A model whose ``nn.RNN`` wraps a Flax cell, after a Dense layer."""

  cell: type

  @nn.compact
  def __call__(self, xs):
    return nn.RNN(self.cell(features=H, parent=None))(nn.Dense(IN)(xs))  # at RNN_0/cell


@pytest.mark.parametrize("name", FLAX_CELLS)
def test_from_flax_prefix_reads_a_whole_model(name):
  """Flax: a model's variables with ``prefix='RNN_0/cell'`` (the cell's path in the params)
  convert as the cell's own; the model's variables without it are refused with a message
  naming that prefix; ``to_flax(prefix=...)`` nests the params there, and the model runs
  with them, giving our scan's outputs."""
  cls, kind = FLAX_CELLS[name]
  model = _FlaxModel(cls)
  xs = jnp.asarray(_xs(9))
  variables = model.init(jax.random.key(0), xs)
  params = convert.from_flax(variables, prefix="RNN_0/cell")
  _leaves_equal(params, convert.from_flax(variables["params"]["RNN_0"]["cell"]))
  _leaves_equal(convert.from_flax(variables["params"], prefix="/RNN_0/cell/"), params)
  with pytest.raises(ValueError, match=r"a cell's params are at prefix='RNN_0/cell'"):
    convert.from_flax(variables)
  with pytest.raises(ValueError, match=r"no params at prefix 'RNN_0/cel': at 'RNN_0' they have"):
    convert.from_flax(variables, prefix="RNN_0/cel")

  nested = convert.to_flax(params, prefix="RNN_0/cell")
  _leaves_equal(nested["params"]["RNN_0"]["cell"], variables["params"]["RNN_0"]["cell"])
  full = {"params": {**variables["params"], **nested["params"]}}
  embedded = nn.Dense(IN).apply({"params": variables["params"]["Dense_0"]}, xs)
  _, ys = recurrent.scan(_cell(kind), params, embedded)
  np.testing.assert_allclose(model.apply(full, xs), ys, rtol=RTOL, atol=ATOL)


# --- dtypes -------------------------------------------------------------------------------


def test_from_torch_float64_is_kept_or_refused():
  """PyTorch float64 weights: kept as float64 where JAX has it (``jax_enable_x64``), else
  refused (ValueError naming the key and ``dtype=``) rather than rounded to float32 with a
  warning; ``dtype=jnp.float32`` converts them (the LSTM bias summed in float64 first)."""
  module = _torch_module("lstm").double()
  sd = module.state_dict()
  with pytest.raises(ValueError, match=r"weight_ih_l0 is float64.*pass dtype=jnp\.float32"):
    convert.from_torch(sd)
  with jax.enable_x64(True):
    params = convert.from_torch(sd)
    assert all(x.dtype == jnp.float64 for x in jax.tree.leaves(params))
    np.testing.assert_array_equal(params[0].forward.w_hh, sd["weight_hh_l0"].numpy().T)
  with pytest.raises(ValueError, match=r"^dtype=float64 needs jax_enable_x64"):
    convert.from_torch(sd, dtype=np.float64)
  params = convert.from_torch(sd, dtype=jnp.float32)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  b = (sd["bias_ih_l0"] + sd["bias_hh_l0"]).numpy().astype(np.float32)
  np.testing.assert_array_equal(params[0].forward.b, b)
  xs = _xs(10)
  _assert_same_outputs(_our_outputs("lstm", params, xs), _torch_outputs(module.float(), xs))


@pytest.mark.parametrize("name", ("LSTMCell", "GRUCell"))
def test_from_flax_dtype(name):
  """Flax: params keep their dtype (bfloat16 stays bfloat16), ``dtype=`` converts them, and
  float64 arrays (a NumPy checkpoint's) are refused without ``jax_enable_x64``."""
  variables = _flax_variables(name)
  as_bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), variables)
  assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(convert.from_flax(as_bf16)))
  params = convert.from_flax(variables, dtype=jnp.bfloat16)
  _leaves_equal(params, convert.from_flax(as_bf16))
  as_f64 = jax.tree.map(lambda x: np.asarray(x, np.float64), variables)
  with pytest.raises(ValueError, match=r"is float64.*pass dtype=jnp\.float32"):
    convert.from_flax(as_f64)
  _leaves_equal(convert.from_flax(as_f64, dtype=jnp.float32), convert.from_flax(variables))


# --- target cells: cell= ------------------------------------------------------------------

RESET_BEFORE = (
  r"params are GRUParams but the cell '(\w+\()?gru\)?' takes ResetBeforeGRUParams \(what its"
  r" init returns\): GRUParams are reset-after weights"
)


def test_reset_after_weights_refused_for_a_reset_before_gru():
  """PyTorch's and Flax's GRUs are reset-after: their weights (GRUParams) run in
  ``gru(H, reset_after=False)`` (or a wrapper of it) would compute another function. The
  reset-before cell takes ResetBeforeGRUParams, so they are refused where they are used (no
  ``cell=`` needed) and, with ``cell=``, at conversion; the converters back refuse a
  reset-before GRU's params. The reset-after GRU takes them."""
  sd = _torch_module("gru").state_dict()
  flax_vars = _flax_variables("GRUCell")
  before = recurrent.gru(H, reset_after=False)
  xs = jnp.ones((2, 3, IN))
  for cell in (before, recurrent.zoneout(before, h=0.1), recurrent.weight_drop(before, 0.2)):
    with pytest.raises(TypeError, match=RESET_BEFORE):
      convert.from_torch(sd, cell=cell)
    with pytest.raises(TypeError, match=RESET_BEFORE):
      convert.from_flax(flax_vars, cell=cell)
    with pytest.raises(TypeError, match=RESET_BEFORE):
      recurrent.scan(cell, convert.from_torch(sd)[0].forward, xs, deterministic=True)
    with pytest.raises(TypeError, match=RESET_BEFORE):
      recurrent.stack(cell, convert.from_torch(sd), xs, deterministic=True)
    with pytest.raises(TypeError, match=RESET_BEFORE):
      recurrent.scan(cell, convert.from_flax(flax_vars), xs, deterministic=True)
  own = before.init(jax.random.key(0), IN)
  assert type(own) is recurrent.ResetBeforeGRUParams
  with pytest.raises(TypeError, match=r"GRUParams, got ResetBeforeGRUParams \(PyTorch has no"):
    convert.to_torch([own])
  with pytest.raises(TypeError, match=r"GRUParams, got ResetBeforeGRUParams \(Flax has no"):
    convert.to_flax(own)
  params = convert.from_torch(sd, cell=recurrent.gru(H))
  with pytest.raises(TypeError, match=RESET_BEFORE):
    convert.to_torch(params, cell=before)
  with pytest.raises(TypeError, match=RESET_BEFORE):
    convert.to_flax(params[0].forward, cell=before)
  _leaves_equal(convert.to_torch(params, cell=recurrent.gru(H)), convert.to_torch(params))
  convert.from_flax(flax_vars, cell=recurrent.gru(H))
  _leaves_equal(convert.from_torch(sd), params)  # no cell: nothing to check
  recurrent.scan(recurrent.gru(H), params[0].forward, xs)


def test_converted_params_checked_against_the_cell():
  """With ``cell=``, the converted params must be the cell's: GRU weights for an LSTM are
  a TypeError, another hidden size a ValueError (as the drivers raise)."""
  sd = _torch_module("gru").state_dict()
  with pytest.raises(TypeError, match=r"params are GRUParams but the cell 'lstm' takes LSTMParams"):
    convert.from_torch(sd, cell=recurrent.lstm(H))
  with pytest.raises(ValueError, match=r"params\.w_ih has shape \(5, 12\); the cell 'gru'"):
    convert.from_torch(sd, cell=recurrent.gru(H + 1))
  with pytest.raises(TypeError, match=r"params are LSTMParams but the cell 'gru'"):
    convert.from_flax(_flax_variables("LSTMCell"), cell=recurrent.gru(H))
