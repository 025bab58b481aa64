"""Bad inputs raise the library's own errors, in Python, before anything is traced.

Shape legend: B batch, T time, I input size, H hidden size.

Property checked throughout (CONVENTIONS.md, "Small things"): an error names the argument,
what it got and what was expected. Every case runs twice, eagerly and inside ``jax.jit``
(its arrays passed as traced arguments, so only their static shape and dtype are known):
both must raise the same exception type with the same message, and the innermost frame
of the traceback must be a ``raise`` statement in ``recurrent/`` (a Python check), not a
JAX or XLA error surfacing from inside a computation.
"""

import linecache
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent

LIBRARY_DIR = pathlib.Path(recurrent.__file__).resolve().parent

B, T, IN, H = 2, 5, 3, 4

LSTM = recurrent.lstm(H)
GRU = recurrent.gru(H)


def zero_params(init):
  """Zero params shaped like ``init(key)``: only shapes matter here, and this avoids
  compiling the initialisers."""
  return jax.tree.map(
    lambda s: jnp.zeros(s.shape, s.dtype), jax.eval_shape(init, jax.random.key(0))
  )


P_LSTM = zero_params(lambda k: LSTM.init(k, IN))
P_GRU = zero_params(lambda k: GRU.init(k, IN))
P_BI = recurrent.Bidirectional(P_LSTM, P_LSTM)
P_STACK = zero_params(lambda k: recurrent.init_layers(LSTM, k, IN, 2))
P_STACK_BI = zero_params(lambda k: recurrent.init_layers(LSTM, k, IN, 2, bidirectional=True))

XS = jnp.ones((B, T, IN), jnp.float32)
KEYS = recurrent.sequence_keys(jax.random.key(5), B)
CARRY = LSTM.initial_carry((B,))


def _innermost_frame(excinfo):
  tb = excinfo.tb
  while tb.tb_next is not None:
    tb = tb.tb_next
  filename = tb.tb_frame.f_code.co_filename
  return pathlib.Path(filename).resolve(), linecache.getline(filename, tb.tb_lineno).strip()


def assert_library_raise(excinfo):
  """The exception comes from a ``raise`` statement in recurrent/ (a Python check)."""
  path, line = _innermost_frame(excinfo)
  assert path.parent == LIBRARY_DIR and line.startswith("raise"), (
    f"{excinfo.type.__name__} was not raised by a check in recurrent/: innermost frame"
    f" {path}: {line!r}; message: {excinfo.value}"
  )


def raises(exc, match):
  """``pytest.raises`` matching ``match`` against the message line by line (``(?m)``): under
  jit JAX appends a note about filtered frames after the message, which ``match`` sees."""
  return pytest.raises(exc, match="(?m)" + match)


def check_raises(call, arrays, exc, match, same_message=True):
  """``call(**arrays)`` raises ``exc`` matching ``match``, eagerly and under ``jax.jit``
  with ``arrays`` traced; same type, same message (unless it quotes the value got, which
  is a tracer under jit), raised by the library."""
  with raises(exc, match) as eager:
    call(**arrays)
  assert_library_raise(eager)
  with raises(exc, match) as jitted:
    jax.jit(lambda a: call(**a))(arrays)
  assert_library_raise(jitted)
  assert jitted.type is eager.type
  if same_message:
    assert str(jitted.value) == str(eager.value)


def scan_call(cell=LSTM, params=P_LSTM, **kwargs):
  return lambda xs, **arrays: recurrent.scan(cell, params, xs, **kwargs, **arrays)


# ----------------------------------------------------------------------------- xs


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("cell,params", [(LSTM, P_LSTM), (GRU, P_GRU)], ids=["lstm", "gru"])
def test_xs_wrong_feature_size(cell, params, time_major):
  """xs [B, T, 7] against params for I=3: ValueError naming xs, 7 and input_size 3."""
  xs = jnp.ones((T, B, 7) if time_major else (B, T, 7))
  check_raises(
    scan_call(cell, params, time_major=time_major),
    {"xs": xs},
    ValueError,
    r"^xs has feature size 7 but params expect input_size 3$",
  )


@pytest.mark.parametrize(
  "run",
  [
    lambda xs: recurrent.bidirectional_scan(LSTM, P_BI, xs),
    lambda xs: recurrent.stack(LSTM, P_STACK_BI, xs),
    lambda xs: recurrent.trace(LSTM, P_LSTM, xs),
  ],
  ids=["bidirectional", "stack", "trace"],
)
def test_xs_wrong_feature_size_in_layers(run):
  """The layers and trace check xs's feature size as scan does."""
  check_raises(
    run,
    {"xs": jnp.ones((B, T, 6))},
    ValueError,
    r"^xs has feature size 6 but params expect input_size 3$",
  )


@pytest.mark.parametrize("shape", [(IN,), ()])
def test_xs_too_few_dims(shape):
  """xs needs at least [T, I]: ValueError naming xs, the layout and the shape got."""
  check_raises(
    scan_call(),
    {"xs": jnp.ones(shape)},
    ValueError,
    r"^xs must have shape \[B\.\.\., T, I\] \(at least \[T, I\]\), got shape "
    + re.escape(str(shape)),
  )


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.bool_, jnp.uint8])
def test_xs_not_floating(dtype):
  """Integer (token) xs: TypeError naming xs, its dtype and the floating dtypes expected."""
  check_raises(
    scan_call(),
    {"xs": jnp.ones((B, T, IN), dtype)},
    TypeError,
    rf"^xs has dtype {jnp.dtype(dtype).name}; expected a floating dtype",
  )


def test_xs_not_an_array():
  """A nested list is not an array: TypeError naming xs (eager only: jit needs arrays)."""
  with raises(TypeError, r"^xs must be an array, got list$") as e:
    recurrent.scan(LSTM, P_LSTM, [[[1.0] * IN] * T] * B)
  assert_library_raise(e)


# --------------------------------------------------------------------------- params

P_LN = zero_params(lambda k: recurrent.layer_norm_lstm(H).init(k, IN))
P_LSTM_7 = zero_params(lambda k: recurrent.lstm(7).init(k, IN))


@pytest.mark.parametrize(
  "cell,params,got,expected",
  [
    (LSTM, P_GRU, "GRUParams", "LSTMParams"),
    (GRU, P_LSTM, "LSTMParams", "GRUParams"),
    (LSTM, P_LN, "LayerNormLSTMParams", "LSTMParams"),
    (recurrent.zoneout(GRU, h=0.1), P_LSTM, "LSTMParams", "GRUParams"),
  ],
  ids=["gru-to-lstm", "lstm-to-gru", "layer-norm-to-lstm", "lstm-to-zoneout-gru"],
)
def test_params_of_another_cell(cell, params, got, expected):
  """Another cell's params (an LSTM given a GRU's): TypeError naming params, their type and
  the type the cell's init returns, before tracing (not an AttributeError on ``.b``)."""
  check_raises(
    lambda xs, params: recurrent.scan(cell, params, xs),
    {"xs": XS, "params": params},
    TypeError,
    rf"^params are {got} but the cell '[a-z()]+' takes {expected} \(what its init returns\)",
  )


def test_params_as_a_dict():
  """A dict of the right arrays is not the cell's NamedTuple: TypeError showing both."""
  check_raises(
    lambda xs, params: recurrent.scan(LSTM, params, xs),
    {"xs": XS, "params": dict(P_LSTM._asdict())},
    TypeError,
    r"^params are PyTreeDef\(\{'b': \*, 'w_hh': \*, 'w_ih': \*\}\) but the cell 'lstm' takes"
    r" LSTMParams",
  )


@pytest.mark.parametrize(
  "run",
  [
    lambda xs, params: recurrent.scan(recurrent.lstm(6), params, xs),
    lambda xs, params: recurrent.trace(recurrent.lstm(6), params, xs),
    lambda xs, params: recurrent.bidirectional_scan(
      recurrent.lstm(6), recurrent.Bidirectional(params, params), xs
    ),
    lambda xs, params: recurrent.stack(recurrent.lstm(6), [params], xs),
  ],
  ids=["scan", "trace", "bidirectional", "stack"],
)
def test_params_of_another_hidden_size(run):
  """Params of hidden size 7 for ``lstm(6)``: ValueError naming the field, its shape and
  the shape the cell's init gives, in every driver (not a dot_general shape error)."""
  check_raises(
    run,
    {"xs": XS, "params": P_LSTM_7},
    ValueError,
    r"^params\.w_ih has shape \(3, 28\); the cell 'lstm' \(hidden size 6\) expects \(3, 24\)"
    r" for input_size 3: params of another hidden size\?$",
  )


def test_params_of_another_projection_size():
  """Generic over cells: a projection LSTM's params of another projection size raise the
  same ValueError, naming the first field that differs."""
  cell = recurrent.projection_lstm(H, 2)
  params = zero_params(lambda k: recurrent.projection_lstm(H, 3).init(k, IN))
  check_raises(
    lambda xs, params: recurrent.scan(cell, params, xs),
    {"xs": XS, "params": params},
    ValueError,
    r"^params\.w_hh has shape \(3, 16\); the cell 'projection_lstm' \(hidden size 2\) expects"
    r" \(2, 16\)",
  )


# -------------------------------------------------------------------- initial_carry


@pytest.mark.parametrize(
  "carry,expected",
  [
    (recurrent.LSTMState(jnp.zeros((3, H)), jnp.zeros((3, H))), r"\(3, 4\); expected \(2, 4\)"),
    (recurrent.LSTMState(jnp.zeros((B, 5)), jnp.zeros((B, 5))), r"\(2, 5\); expected \(2, 4\)"),
    (recurrent.LSTMState(jnp.zeros((H,)), jnp.zeros((H,))), r"\(4,\); expected \(2, 4\)"),
  ],
  ids=["batch", "hidden", "unbatched"],
)
def test_initial_carry_wrong_shape(carry, expected):
  """A carry whose leaves are not [B, H]: ValueError naming initial_carry and both shapes."""
  check_raises(
    lambda xs, initial_carry: recurrent.scan(LSTM, P_LSTM, xs, initial_carry=initial_carry),
    {"xs": XS, "initial_carry": carry},
    ValueError,
    r"^initial_carry has leaves of shape " + expected,
  )


@pytest.mark.parametrize(
  "carry",
  [
    (jnp.zeros((B, H)), jnp.zeros((B, H))),  # a plain (h, c) tuple
    recurrent.GRUState(jnp.zeros((B, H))),  # another cell's carry
    jnp.zeros((B, H)),  # a bare array
    [CARRY],  # wrapped in a list
  ],
  ids=["tuple", "gru_state", "array", "list"],
)
def test_initial_carry_wrong_structure(carry):
  """An LSTM needs an LSTMState: ValueError naming initial_carry and both structures."""
  check_raises(
    lambda xs, initial_carry: recurrent.scan(LSTM, P_LSTM, xs, initial_carry=initial_carry),
    {"xs": XS, "initial_carry": carry},
    ValueError,
    r"^initial_carry has structure .*; expected .*LSTMState",
  )


def test_initial_carry_integer():
  """An integer carry: TypeError naming initial_carry and its dtype."""
  carry = recurrent.LSTMState(jnp.zeros((B, H), jnp.int32), jnp.zeros((B, H), jnp.int32))
  check_raises(
    lambda xs, initial_carry: recurrent.scan(LSTM, P_LSTM, xs, initial_carry=initial_carry),
    {"xs": XS, "initial_carry": carry},
    TypeError,
    r"^initial_carry has dtype int32; expected a floating dtype",
  )


@pytest.mark.parametrize(
  "carry",
  [CARRY, (CARRY, CARRY)],
  ids=["cell_carry", "plain_tuple"],
)
def test_bidirectional_initial_carry_not_a_pair(carry):
  """bidirectional_scan() needs Bidirectional(forward, backward) carries; anything else is a
  ValueError or TypeError naming initial_carry (not an AttributeError on ``.forward``)."""
  check_raises(
    lambda xs, initial_carry: recurrent.bidirectional_scan(
      LSTM, P_BI, xs, initial_carry=initial_carry
    ),
    {"xs": XS, "initial_carry": carry},
    (ValueError, TypeError),
    r"initial_carry",
  )


def test_stack_bidirectional_layer_carry_not_a_pair():
  """In a stack, a bidirectional layer's carry must be a Bidirectional pair; a cell carry
  there is a ValueError or TypeError naming initial_carry."""
  carries = [recurrent.Bidirectional(CARRY, CARRY), CARRY]
  check_raises(
    lambda xs, initial_carry: recurrent.stack(LSTM, P_STACK_BI, xs, initial_carry=initial_carry),
    {"xs": XS, "initial_carry": carries},
    (ValueError, TypeError),
    r"initial_carry",
  )


@pytest.mark.parametrize("num", [1, 3])
def test_stack_initial_carry_wrong_length(num):
  """One carry per layer: ValueError naming initial_carry, the count got and expected."""
  check_raises(
    lambda xs, initial_carry: recurrent.stack(LSTM, P_STACK, xs, initial_carry=initial_carry),
    {"xs": XS, "initial_carry": [CARRY] * num},
    ValueError,
    rf"^initial_carry has {num} layers; expected one per layer \(2\)$",
  )


# ---------------------------------------------------------------------- seq_lengths


@pytest.mark.parametrize("shape", [(3,), (), (B, 1)])
def test_seq_lengths_wrong_shape(shape):
  """seq_lengths must have the batch shape of xs: ValueError naming both shapes."""
  check_raises(
    lambda xs, seq_lengths: recurrent.scan(LSTM, P_LSTM, xs, seq_lengths=seq_lengths),
    {"xs": XS, "seq_lengths": jnp.full(shape, 2, jnp.int32)},
    ValueError,
    r"^seq_lengths has shape " + re.escape(str(shape)) + r"; expected the batch shape \(2,\)",
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bool_])
def test_seq_lengths_not_integer(dtype):
  """Float (or bool) seq_lengths: TypeError naming seq_lengths and its dtype."""
  check_raises(
    lambda xs, seq_lengths: recurrent.scan(LSTM, P_LSTM, xs, seq_lengths=seq_lengths),
    {"xs": XS, "seq_lengths": jnp.array([1, 2], dtype)},
    TypeError,
    rf"^seq_lengths must be integers, got dtype {jnp.dtype(dtype).name}$",
  )


@pytest.mark.parametrize("lengths", [[-1, 3], [2, 6], [0, 100]])
def test_seq_lengths_out_of_range(lengths):
  """Lengths outside [0, T]: ValueError giving the range and the values got. Inside jit the
  lengths are a concrete (closed-over) array, so the check still runs at trace time."""
  lengths = np.array(lengths, np.int32)
  check_raises(
    lambda xs: recurrent.scan(LSTM, P_LSTM, xs, seq_lengths=lengths),
    {"xs": XS},
    ValueError,
    rf"^seq_lengths must be in \[0, 5\] \(the number of time steps\), got values from"
    rf" {lengths.min()} to {lengths.max()}$",
  )


def test_seq_lengths_list_out_of_range():
  """A Python list of lengths is checked like an array."""
  with raises(ValueError, r"^seq_lengths must be in \[0, 5\]") as e:
    recurrent.scan(LSTM, P_LSTM, XS, seq_lengths=[1, 9])
  assert_library_raise(e)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell,params", [(LSTM, P_LSTM), (GRU, P_GRU)], ids=["lstm", "gru"])
def test_traced_seq_lengths_out_of_range_act_as_clamped(cell, params, reverse):
  """Traced lengths cannot be checked (a ``checkify.check`` would fail every jitted caller
  not under ``checkify.checkify``); as scan's docstring says, they act as clamped to
  [0, T]: above T runs all T steps, negative runs none (the initial carry, zero outputs),
  forward and reverse, on the fast path (LSTM, GRU) and on plain autodiff."""
  params = jax.tree.map(lambda p: p + 0.1, params)
  xs = jnp.asarray(np.random.default_rng(0).standard_normal((3, T, IN)), jnp.float32)
  carry = jax.tree.map(lambda c: c + 0.5, cell.initial_carry((3,)))
  for c in (cell, cell._replace(fast=None)):
    run = jax.jit(
      lambda xs, lengths, c=c: recurrent.scan(
        c, params, xs, seq_lengths=lengths, initial_carry=carry, reverse=reverse
      )
    )
    got = run(xs, jnp.array([-3, T + 4, 2], jnp.int32))
    want = run(xs, jnp.array([0, T, 2], jnp.int32))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_array_equal(g, w)
    final, ys = got
    np.testing.assert_array_equal(ys[0], 0.0)
    for f, c0 in zip(jax.tree.leaves(final), jax.tree.leaves(carry)):
      np.testing.assert_array_equal(f[0], c0[0])


# ---------------------------------------------------------------------------- rates

BAD_RATES = [-0.1, 1.0, 1.5]
DRIVERS = {
  "scan": lambda xs, **kw: recurrent.scan(LSTM, P_LSTM, xs, **kw),
  "bidirectional": lambda xs, **kw: recurrent.bidirectional_scan(LSTM, P_BI, xs, **kw),
  "stack": lambda xs, **kw: recurrent.stack(LSTM, P_STACK_BI, xs, **kw),
}


@pytest.mark.parametrize("rate", BAD_RATES)
@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_rate_out_of_range(driver, name, rate):
  """A rate outside [0, 1) (with valid keys): ValueError naming the argument and value."""
  run = DRIVERS[driver]
  check_raises(
    lambda xs, key: run(xs, key=key, **{name: rate}),
    {"xs": XS, "key": KEYS},
    ValueError,
    rf"^{name} must be in \[0, 1\), got {rate}$",
  )


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_rate_out_of_range_without_key(driver, name):
  """An invalid rate is reported as such even when no key is given: the rate is checked
  before the keys it would need, by every driver alike."""
  run = DRIVERS[driver]
  check_raises(
    lambda xs: run(xs, **{name: 1.5}),
    {"xs": XS},
    ValueError,
    rf"^{name} must be in \[0, 1\), got 1.5$",
  )


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_rate_traced(driver, name):
  """A rate passed through jit as an array is accepted (a sweep over rates in one
  program) and gives what the same static rate gives."""
  run = DRIVERS[driver]
  got = jax.jit(lambda xs, key, r: run(xs, key=key, **{name: r}))(XS, KEYS, jnp.float32(0.5))
  want = run(XS, key=KEYS, **{name: 0.5})
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_rate_array_not_a_scalar(driver, name):
  """A rate array must be a floating scalar: TypeError naming the argument, its shape and
  dtype (not a JAX broadcasting error)."""
  run = DRIVERS[driver]
  check_raises(
    lambda xs, key: run(xs, key=key, **{name: jnp.full((2,), 0.5)}),
    {"xs": XS, "key": KEYS},
    TypeError,
    rf"^{name} must be a float in \[0, 1\) or a floating scalar array, got an array of"
    r" shape \(2,\) and dtype float32$",
  )


@pytest.mark.parametrize("rates", [(0.1,), (0.1, 0.1, 0.1)])
@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
def test_stack_wrong_number_of_rates(name, rates):
  """Per-layer rates need one per layer: ValueError naming the argument and both counts."""
  check_raises(
    lambda xs, key: recurrent.stack(LSTM, P_STACK, xs, key=key, **{name: rates}),
    {"xs": XS, "key": KEYS},
    ValueError,
    rf"^{name} has {len(rates)} rates; expected one per layer \(2\)$",
  )


@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
def test_stack_per_layer_rate_out_of_range(name):
  """Each per-layer rate is range-checked."""
  check_raises(
    lambda xs, key: recurrent.stack(LSTM, P_STACK, xs, key=key, **{name: (0.1, 1.0)}),
    {"xs": XS, "key": KEYS},
    ValueError,
    rf"^{name} must be in \[0, 1\), got 1.0$",
  )


def test_dropout_apply_rate_out_of_range():
  """dropout.apply checks its rate like the drivers."""
  check_raises(
    lambda xs, keys: recurrent.dropout.apply(keys, xs, 1.0),
    {"xs": XS, "keys": KEYS},
    ValueError,
    r"^rate must be in \[0, 1\), got 1.0$",
  )


# ----------------------------------------------------------------------------- keys


@pytest.mark.parametrize("driver", list(DRIVERS))
@pytest.mark.parametrize("name", ["dropout", "recurrent_dropout"])
def test_dropout_without_key(driver, name):
  """Dropout on but no key: ValueError that mentions the key and how to make one."""
  run = DRIVERS[driver]
  check_raises(
    lambda xs: run(xs, **{name: 0.25}),
    {"xs": XS},
    ValueError,
    r"^dropout is on but key is None: pass one PRNG key per sequence"
    r" \(recurrent\.sequence_keys\(key, example_ids\)\), or deterministic=True$",
  )


def test_dropout_apply_without_key():
  """dropout.apply with a non-zero rate and no keys: ValueError mentioning keys."""
  check_raises(
    lambda xs: recurrent.dropout.apply(None, xs, 0.5),
    {"xs": XS},
    ValueError,
    r"^dropout is on but keys is None",
  )


SINGLE_KEYS = {
  "typed": jax.random.key(0),
  "raw": jax.random.PRNGKey(0),
}


@pytest.mark.parametrize("kind", list(SINGLE_KEYS))
@pytest.mark.parametrize("driver", list(DRIVERS))
def test_single_key_for_a_batch(driver, kind):
  """One key for a batch of 4: ValueError giving both shapes and suggesting sequence_keys."""
  run = DRIVERS[driver]
  check_raises(
    lambda xs, key: run(xs, key=key, dropout=0.25),
    {"xs": jnp.ones((4, T, IN)), "key": SINGLE_KEYS[kind]},
    ValueError,
    r"^key has shape \(\); expected one key per sequence, shape \(4,\)\. Make them with"
    r" recurrent\.sequence_keys\(key, example_ids\)",
  )


def test_keys_for_another_batch_size():
  """Keys made for 3 sequences with xs of 4: ValueError giving both shapes."""
  check_raises(
    lambda xs, key: recurrent.scan(LSTM, P_LSTM, xs, key=key, recurrent_dropout=0.25),
    {"xs": jnp.ones((4, T, IN)), "key": recurrent.sequence_keys(jax.random.key(0), 3)},
    ValueError,
    r"^key has shape \(3,\); expected one key per sequence, shape \(4,\)",
  )


def test_dropout_apply_wrong_key_shape():
  """dropout.apply with one key for a batch: ValueError naming keys, suggesting
  sequence_keys."""
  check_raises(
    lambda xs, keys: recurrent.dropout.apply(keys, xs, 0.5),
    {"xs": XS, "keys": jax.random.key(0)},
    ValueError,
    r"^keys has shape \(\); expected one key per sequence, shape \(2,\)\. Make them with"
    r" recurrent\.sequence_keys",
  )


@pytest.mark.parametrize(
  "key",
  [jnp.zeros((B, 2), jnp.float32), jnp.zeros((B, 3), jnp.uint32)],
  ids=["float", "raw_wrong_width"],
)
def test_key_not_a_key(key):
  """Something that is not key data: TypeError naming key."""
  check_raises(
    lambda xs, key: recurrent.scan(LSTM, P_LSTM, xs, key=key, dropout=0.25),
    {"xs": XS, "key": key},
    TypeError,
    r"^key must be a PRNG key array, got ",
    same_message=False,
  )


@pytest.mark.parametrize("driver", list(DRIVERS))
def test_deterministic_traced(driver):
  """``deterministic`` passed through jit as an array: a TypeError or ValueError naming
  deterministic (it must be a Python bool), not a JAX tracer-conversion error."""
  run = DRIVERS[driver]
  with raises((TypeError, ValueError), "deterministic") as e:
    jax.jit(lambda xs, key, d: run(xs, key=key, dropout=0.25, deterministic=d))(
      XS, KEYS, jnp.bool_(True)
    )
  assert_library_raise(e)


# ------------------------------------------------------------- layers and utilities


def test_bidirectional_reverse():
  """bidirectional_scan() runs both directions: reverse= is a TypeError saying so."""
  for reverse in (True, False):
    check_raises(
      lambda xs, reverse=reverse: recurrent.bidirectional_scan(LSTM, P_BI, xs, reverse=reverse),
      {"xs": XS},
      TypeError,
      r"^bidirectional_scan\(\) runs both directions; it takes no reverse argument$",
    )


def test_trace_unknown_argument():
  """trace() takes scan's arguments only: TypeError listing the unknown ones."""
  check_raises(
    lambda xs: recurrent.trace(LSTM, P_LSTM, xs, revrese=True),
    {"xs": XS},
    TypeError,
    r"^trace\(\) got unexpected arguments \['revrese'\]$",
  )


@pytest.mark.parametrize("num_layers", [0, -1])
def test_init_layers_no_layers(num_layers):
  """init_layers needs at least one layer: ValueError naming num_layers and the value."""
  check_raises(
    lambda key: recurrent.init_layers(LSTM, key, IN, num_layers),
    {"key": jax.random.key(0)},
    ValueError,
    rf"^num_layers must be >= 1, got {num_layers}$",
  )


def test_stack_no_layers():
  """stack with an empty params list: ValueError naming params."""
  check_raises(
    lambda xs: recurrent.stack(LSTM, [], xs),
    {"xs": XS},
    ValueError,
    r"^params must hold at least one layer, got an empty list$",
  )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bool_])
def test_sequence_keys_non_integer_ids(dtype):
  """sequence_keys with float ids: TypeError naming example_ids and the dtype."""
  check_raises(
    lambda key, ids: recurrent.sequence_keys(key, ids),
    {"key": jax.random.key(0), "ids": jnp.array([0, 1], dtype)},
    TypeError,
    rf"^example_ids must be integers, got dtype {jnp.dtype(dtype).name}$",
  )


def test_sequence_keys_float_python_ids():
  """A Python list of floats as ids: TypeError naming example_ids (eager only)."""
  with raises(TypeError, r"^example_ids must be integers, got dtype float") as e:
    recurrent.sequence_keys(jax.random.key(0), [0.0, 1.0])
  assert_library_raise(e)


@pytest.mark.parametrize(
  "key",
  [recurrent.sequence_keys(jax.random.key(0), 3), jax.random.split(jax.random.PRNGKey(0), 3)],
  ids=["typed", "raw"],
)
def test_sequence_keys_needs_one_key(key):
  """sequence_keys takes a single key: ValueError giving the shape got."""
  check_raises(
    lambda key: recurrent.sequence_keys(key, jnp.arange(4)),
    {"key": key},
    ValueError,
    r"^key must be a single key, got a key array of shape \(3,\)$",
  )


# ------------------------------------------------------------- cells' constructors

CONSTRUCTORS = {
  "lstm": lambda size: recurrent.lstm(size),
  "gru": lambda size: recurrent.gru(size),
  "layer_norm_lstm": lambda size: recurrent.layer_norm_lstm(size),
  "projection_lstm": lambda size: recurrent.projection_lstm(size, 2),
}


@pytest.mark.parametrize("size", [0, -3])
@pytest.mark.parametrize("make", list(CONSTRUCTORS))
def test_hidden_size_not_positive(make, size):
  """``lstm(0)``, ``gru(-3)``, ...: ValueError naming hidden_size and the value got, when
  the cell is made (not a ZeroDivisionError or an XLA shape error later)."""
  with raises(ValueError, rf"^hidden_size must be a positive int, got {size}$") as e:
    CONSTRUCTORS[make](size)
  assert_library_raise(e)


@pytest.mark.parametrize("size", [6.5, 4.0, True, "4", None, jnp.array(4)])
@pytest.mark.parametrize("make", list(CONSTRUCTORS))
def test_hidden_size_not_an_int(make, size):
  """A float, bool, string or array hidden size: TypeError naming hidden_size, the value and
  its type."""
  with raises(
    TypeError, rf"^hidden_size must be a positive int, got {re.escape(repr(size))} \(\w+\)$"
  ) as e:
    CONSTRUCTORS[make](size)
  assert_library_raise(e)


def test_hidden_size_numpy_int():
  """A NumPy int is an int: the cell is made, with a Python int hidden size."""
  cell = recurrent.lstm(np.int64(H))
  assert cell.hidden_size == H and type(cell.hidden_size) is int


@pytest.mark.parametrize("size, exc", [(0, ValueError), (2.5, TypeError), (False, TypeError)])
def test_projection_size_not_a_positive_int(size, exc):
  """projection_lstm checks proj_size as hidden_size."""
  with raises(exc, rf"^proj_size must be a positive int, got {size!r}") as e:
    recurrent.projection_lstm(H, size)
  assert_library_raise(e)


@pytest.mark.parametrize("value", ["no", 1, None, np.array(True)])
def test_gru_reset_after_not_a_bool(value):
  """``gru(4, reset_after='no')`` is not silently truthy: TypeError naming reset_after and
  the value got."""
  with raises(
    TypeError, rf"^reset_after must be a Python bool .*, got {re.escape(repr(value))}$"
  ) as e:
    recurrent.gru(H, reset_after=value)
  assert_library_raise(e)


def test_init_layers_bidirectional_not_a_bool():
  """init_layers(bidirectional='yes'): TypeError naming bidirectional."""
  with raises(TypeError, r"^bidirectional must be a Python bool .*, got 'yes'$") as e:
    recurrent.init_layers(LSTM, jax.random.key(0), IN, 2, bidirectional="yes")
  assert_library_raise(e)


@pytest.mark.parametrize("num_layers", [2.5, True, "2"])
def test_init_layers_num_layers_not_an_int(num_layers):
  """init_layers(num_layers=2.5): TypeError naming num_layers and the value got."""
  with raises(
    TypeError, rf"^num_layers must be an int >= 1, got {re.escape(repr(num_layers))}$"
  ) as e:
    recurrent.init_layers(LSTM, jax.random.key(0), IN, num_layers)
  assert_library_raise(e)


@pytest.mark.parametrize(
  "num_samples, exc", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_mc_average_num_samples_not_a_positive_int(num_samples, exc):
  """mc_average with 0 samples (NaN before) or -1 (an MLIR error before): ValueError; a
  float or bool count: TypeError; both name num_samples and the value got."""
  with raises(exc, rf"^num_samples must be a positive int, got {num_samples!r}") as e:
    recurrent.mc_average(lambda k: jnp.ones(2), jax.random.key(0), num_samples)
  assert_library_raise(e)


def test_valid_calls_pass():
  """Control: the valid versions of the calls above raise nothing when traced (where every
  check above runs), so the errors above are caused by the bad argument alone."""

  def run(xs, keys, lengths, carry):
    recurrent.scan(
      LSTM, P_LSTM, xs, seq_lengths=lengths, initial_carry=carry, dropout=0.1, key=keys
    )
    recurrent.bidirectional_scan(
      LSTM,
      P_BI,
      xs,
      seq_lengths=lengths,
      recurrent_dropout=0.1,
      key=keys,
      initial_carry=recurrent.Bidirectional(carry, carry),
    )
    _, ys = recurrent.stack(
      LSTM,
      P_STACK,
      xs,
      seq_lengths=lengths,
      dropout=(0.0, 0.5),
      initial_carry=[carry, carry],
      recurrent_dropout=0.0,
      key=keys,
    )
    return ys

  args = (XS, KEYS, jnp.array([0, T], jnp.int32), CARRY)
  assert jax.eval_shape(run, *args).shape == (B, T, H)
  raw_keys = jax.random.key_data(KEYS)
  assert jax.eval_shape(run, XS, raw_keys, np.array([1, 2]), CARRY).shape == (B, T, H)
