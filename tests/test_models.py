"""recurrent.train.models.SequenceModel: where its dropout masks go and what they depend on.

References, named in each test: the activations entering and leaving each sub-module,
observed with ``flax.linen.intercept_methods``, divided elementwise to expose the masks
(Gal & Ghahramani 2016: one mask per sequence, the same at every step; whole word types
dropped from the embedding; Zaremba et al. 2014's naive dropout: a new mask per step);
the same example id alone and inside a differently laid-out batch (a per-sequence key
depends on the id alone); the model's own deterministic path; U[-s, s]'s range and
standard deviation s / sqrt(3).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.train.models import SequenceModel

V, E, H, B, T = 20, 8, 8, 6, 9


def make(**kwargs):
  fields = dict(num_outputs=V, vocab_size=V, embed_size=E, hidden_size=H)
  return SequenceModel(**{**fields, **kwargs})


def tokens_and_ids(batch=B, steps=T, types=V, seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, types, size=(batch, steps)).astype(np.int32)
  return jnp.asarray(tokens), jnp.arange(100, 100 + batch, dtype=jnp.int32)


def init(model, tokens, ids):
  return model.init(jax.random.key(0), tokens, example_ids=ids, deterministic=True)


@pytest.fixture(scope="module")
def variables():
  """Params of every one-layer model ``make(...)`` builds (rates do not change them)."""
  return init(make(), *tokens_and_ids())


def apply_observed(model, variables, tokens, ids, key):
  """Runs the model with dropout on, returning each named sub-module's first call's
  positional args and output (recorded while tracing, returned from the jitted call)."""

  @jax.jit
  def run(variables, tokens, ids, key):
    seen = {}

    def interceptor(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.method_name == "__call__" and context.module.name is not None:
        seen.setdefault(context.module.name, (args, out))
      return out

    with nn.intercept_methods(interceptor):
      outputs, carries = model.apply(
        variables, tokens, example_ids=ids, deterministic=False, rngs={"dropout": key}
      )
    return outputs, carries, seen

  return run(variables, tokens, ids, key)


def ratio(after, before):
  """The mask ``after / before``, elementwise (``before`` is never exactly 0 here)."""
  before = np.asarray(before, np.float64)
  assert np.all(before != 0)
  return np.asarray(after, np.float64) / before


def assert_inverted_dropout_values(mask, rate):
  kept = np.isclose(mask, 1 / (1 - rate), rtol=1e-5)
  dropped = mask == 0
  assert np.all(kept | dropped), "mask values must be 0 or 1 / (1 - rate)"
  assert 0.2 < dropped.mean() < 0.8  # rate 0.5 over a few hundred units


def masks_of(model, variables, key=jax.random.key(1)):
  tokens, ids = tokens_and_ids()
  _, _, seen = apply_observed(model, variables, tokens, ids, key)
  embedded = seen["Embed_0"][1]
  rnn_in, rnn_out = seen["rnn_0"][0][0], seen["rnn_0"][1][1]
  readout_in = seen["readout"][0][0]
  return tokens, ratio(rnn_in, embedded), ratio(readout_in, rnn_out)


def test_variational_masks_are_constant_over_time_and_differ_between_sequences(variables):
  _, input_mask, output_mask = masks_of(make(dropout=0.5, output_dropout=0.5), variables)
  for mask in (input_mask, output_mask):  # [B, T, F]
    assert_inverted_dropout_values(mask, 0.5)
    np.testing.assert_array_equal(mask, np.broadcast_to(mask[:, :1], mask.shape))
    assert len({m.tobytes() for m in mask[:, 0]}) == B  # each sequence has its own
  assert not np.array_equal(input_mask[:, 0, :H], output_mask[:, 0])  # separate streams


def test_naive_masks_change_from_step_to_step(variables):
  model = make(dropout_kind="naive", dropout=0.5, output_dropout=0.5)
  _, input_mask, output_mask = masks_of(model, variables)
  for mask in (input_mask, output_mask):
    assert_inverted_dropout_values(mask, 0.5)
    changes = np.any(mask[:, 1:] != mask[:, :1], axis=(1, 2))
    assert np.all(changes), "every sequence's mask should change over its 9 steps"


def test_embed_dropout_drops_whole_word_types_per_sequence(variables):
  model = make(embed_dropout=0.5)
  tokens, ids = tokens_and_ids(batch=16, steps=12, types=5)  # every type repeats
  _, _, seen = apply_observed(model, variables, tokens, ids, jax.random.key(3))
  mask = ratio(seen["rnn_0"][0][0], seen["Embed_0"][1])  # [B, T, E]
  # A whole embedding vector is kept (scaled) or dropped: one value per (sequence, step).
  np.testing.assert_allclose(mask, np.broadcast_to(mask[..., :1], mask.shape), rtol=1e-6)
  word_mask = mask[..., 0]
  assert_inverted_dropout_values(word_mask, 0.5)
  tokens = np.asarray(tokens)
  per_type = {}
  for b in range(tokens.shape[0]):
    for t in range(tokens.shape[1]):
      # The same word in the same sequence always gets the same mask...
      assert per_type.setdefault((b, tokens[b, t]), word_mask[b, t]) == word_mask[b, t]
  # ...while other sequences draw their own: some type is kept in one and dropped in another.
  assert any(
    len({per_type[(b, w)] for b in range(tokens.shape[0]) if (b, w) in per_type}) == 2
    for w in range(5)
  )


def test_embed_dropout_refuses_naive_dropout(variables):
  model = make(dropout_kind="naive", embed_dropout=0.3)
  tokens, ids = tokens_and_ids()
  with pytest.raises(ValueError, match="embed_dropout needs dropout_kind='variational'"):
    model.apply(
      variables, tokens, example_ids=ids, deterministic=False, rngs={"dropout": jax.random.key(0)}
    )


def test_variational_output_depends_on_example_id_not_batch_layout():
  model = make(
    num_layers=2,
    dropout=0.3,
    recurrent_dropout=0.3,
    output_dropout=0.3,
    embed_dropout=0.3,
  )
  batch, _ = tokens_and_ids(batch=5)
  ids = jnp.array([11, 2, 5, 7, 9], jnp.int32)  # example 7 sits at position 3
  alone = batch[3:4]
  variables = init(model, batch, ids)
  key = jax.random.key(42)

  def run(tokens, example_ids, deterministic=False):
    return model.apply(
      variables,
      tokens,
      example_ids=example_ids,
      deterministic=deterministic,
      rngs={"dropout": key},
    )

  in_batch, batch_carries = run(batch, ids)
  by_itself, alone_carries = run(alone, jnp.array([7], jnp.int32))
  np.testing.assert_allclose(by_itself[0], in_batch[3], rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree.leaves(alone_carries), jax.tree.leaves(batch_carries)):
    np.testing.assert_allclose(a[0], b[3], rtol=1e-5, atol=1e-6)
  # The masks are real: another id, or no dropout, changes the output.
  other_id, _ = run(alone, jnp.array([8], jnp.int32))
  no_dropout, _ = run(alone, jnp.array([7], jnp.int32), deterministic=True)
  assert np.abs(np.asarray(other_id - by_itself)).max() > 1e-3
  assert np.abs(np.asarray(no_dropout - by_itself)).max() > 1e-3


def test_deterministic_ignores_the_dropout_rng(variables):
  model = make(dropout=0.5, recurrent_dropout=0.5, output_dropout=0.5, embed_dropout=0.5)
  tokens, ids = tokens_and_ids()
  plain = make()
  expected, _ = plain.apply(variables, tokens, example_ids=ids)
  got, _ = model.apply(variables, tokens, example_ids=ids, deterministic=True)
  np.testing.assert_array_equal(got, expected)


def test_readout_last_is_the_last_step_of_readout_all():
  xs = jax.random.normal(jax.random.key(0), (3, 7, 2))
  ids = jnp.arange(3, dtype=jnp.int32)
  model_all = SequenceModel(num_outputs=1, hidden_size=H)
  variables = model_all.init(jax.random.key(1), xs, example_ids=ids)
  model_last = SequenceModel(num_outputs=1, hidden_size=H, readout="last")
  all_steps, _ = model_all.apply(variables, xs, example_ids=ids)
  last, _ = model_last.apply(variables, xs, example_ids=ids)
  assert all_steps.shape == (3, 7, 1) and last.shape == (3, 1)
  np.testing.assert_allclose(last, all_steps[:, -1], rtol=1e-6, atol=1e-7)


def test_init_scale_draws_every_weight_from_symmetric_uniform():
  scale = 0.1
  model = SequenceModel(
    num_outputs=50, vocab_size=50, embed_size=40, hidden_size=40, num_layers=2, init_scale=scale
  )
  tokens, ids = tokens_and_ids(types=50)
  params = init(model, tokens, ids)["params"]
  weights = {
    "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(leaf)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params)
    if leaf.ndim == 2
  }
  assert len(weights) == 6  # embedding, 2 x (w_ih, w_hh), read-out kernel
  for name, w in weights.items():
    assert np.abs(w).max() <= scale, name
    assert np.abs(w).max() > 0.95 * scale, name
    np.testing.assert_allclose(w.std(), scale / np.sqrt(3), rtol=0.1, err_msg=name)
