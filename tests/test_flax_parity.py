"""Parity with Flax's own cells: ``flax.linen.LSTMCell``, ``OptimizedLSTMCell`` and
``GRUCell`` run by ``flax.linen.RNN`` / ``flax.linen.Bidirectional``, against
``recurrent.scan`` / ``recurrent.bidirectional`` with the params converted by
``recurrent.convert.from_flax``.

Shape legend: B batch, T time, IN input size (I in the docstrings), H hidden size.

How Flax's RNN differs, read from flax/linen/recurrent.py (flax 0.12.8), and what the
tests compare because of it:

* Flax keeps stepping past a sequence's length (its outputs there are whatever the cell
  computes on the padding), so outputs are compared at valid steps only.
* ``return_carry=True`` with ``seq_lengths`` returns the carry at step ``len - 1``
  (``_select_last_carry``); for ``len == 0`` that index is -1, the carry after the whole
  padded sequence, where we return the initial carry. The lengths here are >= 1.
* ``reverse=True, keep_order=True`` flips each sequence within its length
  (``flip_sequences``), runs, and flips the outputs back: the semantics of our
  ``reverse=True`` with ``seq_lengths``. ``nn.Bidirectional`` runs its backward RNN so.
* Flax's LSTM carry is ``(c, h)``; ours is ``LSTMState(h, c)``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import recurrent
from recurrent import convert

B, T, IN, H = 4, 6, 3, 5
# Ragged lengths >= 1 (see the module docstring), one of them full.
LENGTHS = np.array([T, 2, 3, 1])
TOL = 1e-5

FLAX_CELLS = {
  "LSTMCell": (nn.LSTMCell, recurrent.lstm),
  "OptimizedLSTMCell": (nn.OptimizedLSTMCell, recurrent.lstm),
  "GRUCell": (nn.GRUCell, recurrent.gru),
}


def random_like(tree, seed, scale=0.5):
  """``tree`` with every leaf replaced by NumPy normals: biases that Flax starts at zero
  become non-zero, so a dropped or misplaced bias shows up."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
    lambda leaf: jnp.asarray(scale * rng.standard_normal(leaf.shape), leaf.dtype), tree
  )


def flax_cell_variables(flax_cell, seed):
  """Random variables of a bare Flax cell, ``{'params': {'ii': ..., ...}}`` (shapes from
  ``jax.eval_shape`` of its ``init``, so no initialiser is compiled)."""
  carry = flax_cell.initialize_carry(jax.random.key(0), (B, IN))
  shapes = jax.eval_shape(flax_cell.init, jax.random.key(0), carry, jnp.zeros((B, IN)))
  return random_like(shapes, seed)


def to_flax_carry(carry):
  """Our carry -> Flax's: ``(c, h)`` for an LSTM, ``h`` for a GRU."""
  if isinstance(carry, recurrent.LSTMState):
    return (carry.c, carry.h)
  return carry.h


def assert_carry_equal_flax(ours, flax_carry, what=""):
  if isinstance(ours, recurrent.LSTMState):
    c, h = flax_carry
    np.testing.assert_allclose(ours.c, c, rtol=TOL, atol=TOL, err_msg=f"{what} c")
  else:
    h = flax_carry
  np.testing.assert_allclose(ours.h, h, rtol=TOL, atol=TOL, err_msg=f"{what} h")


def assert_valid_steps_close(ours, theirs, lengths, what="outputs"):
  """Outputs ``[B, T, F]`` equal at steps ``t < len``; ours are zeros past it."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  valid = np.arange(T)[None, :] < (np.full(B, T) if lengths is None else lengths)[:, None]
  np.testing.assert_allclose(ours[valid], theirs[valid], rtol=TOL, atol=TOL, err_msg=what)
  assert np.all(ours[~valid] == 0.0), f"{what}: ours must be zero past seq_lengths"


@pytest.mark.parametrize("cell_name", list(FLAX_CELLS))
def test_step_matches_flax_cell(cell_name):
  """cell.step on x [2, 3, I] vs the Flax cell's __call__ on the same carry and input."""
  flax_cls, factory = FLAX_CELLS[cell_name]
  flax_cell, cell = flax_cls(H), factory(H)
  variables = flax_cell_variables(flax_cell, 0)
  params = convert.from_flax(variables)
  carry = random_like(cell.initial_carry((2, 3)), 1, scale=1.0)
  x = random_like(jnp.zeros((2, 3, IN)), 2, scale=1.0)
  flax_carry, flax_h = flax_cell.apply(variables, to_flax_carry(carry), x)
  new_carry, h = cell.step(params, carry, x)
  np.testing.assert_allclose(h, flax_h, rtol=TOL, atol=TOL)
  assert_carry_equal_flax(new_carry, flax_carry)


@pytest.mark.parametrize("lengths", [None, "ragged"], ids=["full", "ragged"])
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("cell_name", list(FLAX_CELLS))
def test_scan_matches_flax_rnn(cell_name, reverse, lengths):
  """recurrent.scan vs flax.linen.RNN(cell, return_carry=True) (with reverse=True,
  keep_order=True when reversed), from the same random initial carry: outputs at valid
  steps and final carries."""
  flax_cls, factory = FLAX_CELLS[cell_name]
  flax_cell, cell = flax_cls(H), factory(H)
  variables = flax_cell_variables(flax_cell, 0)
  params = convert.from_flax(variables)
  carry = random_like(cell.initial_carry((B,)), 1, scale=1.0)
  xs = random_like(jnp.zeros((B, T, IN)), 2, scale=1.0)
  seq_lengths = None if lengths is None else jnp.asarray(LENGTHS, jnp.int32)

  rnn = nn.RNN(flax_cell, return_carry=True, reverse=reverse, keep_order=True)
  flax_carry, flax_ys = rnn.apply(
    {"params": {"cell": variables["params"]}},
    xs,
    initial_carry=to_flax_carry(carry),
    seq_lengths=seq_lengths,
  )
  final, ys = recurrent.scan(
    cell, params, xs, initial_carry=carry, seq_lengths=seq_lengths, reverse=reverse
  )
  assert_valid_steps_close(ys, flax_ys, None if lengths is None else LENGTHS)
  assert_carry_equal_flax(final, flax_carry, "final carry")


@pytest.mark.parametrize("cell_name", ["OptimizedLSTMCell", "GRUCell"])
def test_bidirectional_matches_flax(cell_name):
  """recurrent.bidirectional vs flax.linen.Bidirectional(RNN(cell), RNN(cell)) with
  seq_lengths and return_carry=True: concatenated outputs at valid steps, and both final
  carries."""
  flax_cls, factory = FLAX_CELLS[cell_name]
  flax_cell, cell = flax_cls(H), factory(H)
  forward, backward = flax_cell_variables(flax_cell, 0), flax_cell_variables(flax_cell, 1)
  xs = random_like(jnp.zeros((B, T, IN)), 2, scale=1.0)
  seq_lengths = jnp.asarray(LENGTHS, jnp.int32)

  flax_bi = nn.Bidirectional(nn.RNN(flax_cls(H)), nn.RNN(flax_cls(H)), return_carry=True)
  variables = {
    "params": {
      "forward_rnn": {"cell": forward["params"]},
      "backward_rnn": {"cell": backward["params"]},
    }
  }
  (flax_fwd, flax_bwd), flax_ys = flax_bi.apply(variables, xs, seq_lengths=seq_lengths)
  params = recurrent.Bidirectional(convert.from_flax(forward), convert.from_flax(backward))
  finals, ys = recurrent.bidirectional_scan(cell, params, xs, seq_lengths=seq_lengths)
  assert ys.shape == flax_ys.shape == (B, T, 2 * H)
  assert_valid_steps_close(ys, flax_ys, LENGTHS)
  assert_carry_equal_flax(finals.forward, flax_fwd, "forward carry")
  assert_carry_equal_flax(finals.backward, flax_bwd, "backward carry")
