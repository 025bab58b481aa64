"""recurrent.train.sampling.sample: drawing tokens from a language model.

Reference: greedy (argmax) decoding written out step by step in the test with
``model.apply``, feeding each token back with the carry: at a temperature near 0 the
sampled tokens must be exactly these. At temperature 1 the draws must follow the
model's distribution, checked against the first step's softmax.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.train import sampling
from recurrent.train.models import SequenceModel

V = 11


@pytest.fixture(scope="module")
def model_and_params():
  model = SequenceModel(
    num_outputs=V, vocab_size=V, embed_size=8, hidden_size=16, num_layers=2, dropout=0.5
  )
  tokens = jnp.zeros((1, 4), jnp.int32)
  variables = model.init(jax.random.key(2), tokens, example_ids=jnp.zeros((1,), jnp.int32))
  # Larger weights than the default init, so the argmax is not a near-tie.
  params = jax.tree.map(lambda x: 3.0 * x, variables["params"])
  return model, params


def greedy(model, params, prompt, length):
  ids = jnp.zeros((1,), jnp.int32)
  apply = jax.jit(
    lambda tokens, carry: model.apply(
      {"params": params}, tokens, example_ids=ids, initial_carry=carry
    )
  )
  logits, carry = apply(jnp.asarray(prompt, jnp.int32)[None], None)
  tokens = []
  for _ in range(length):
    token = int(np.argmax(logits[0, -1]))
    tokens.append(token)
    logits, carry = apply(jnp.array([[token]], jnp.int32), carry)
  return np.array(tokens)


def test_low_temperature_is_greedy_decoding(model_and_params):
  model, params = model_and_params
  prompt = np.array([3, 0, 5], np.int32)
  tokens = sampling.sample(model, params, prompt, 12, jax.random.key(5), temperature=1e-6)
  assert tokens.shape == (12,) and tokens.dtype == jnp.int32
  expected = greedy(model, params, prompt, 12)
  assert len(set(expected.tolist())) > 2  # a non-trivial sequence (not a fixed point)
  np.testing.assert_array_equal(np.asarray(tokens), expected)


def test_first_token_follows_the_model_distribution(model_and_params):
  model, params = model_and_params
  prompt = np.array([2], np.int32)
  logits, _ = model.apply(
    {"params": params}, jnp.asarray(prompt)[None], example_ids=jnp.zeros((1,), jnp.int32)
  )
  probs = np.asarray(jax.nn.softmax(logits[0, -1])).astype(np.float64)
  draws = 2000
  keys = jax.random.split(jax.random.key(9), draws)
  first = jax.vmap(lambda k: sampling.sample(model, params, prompt, 1, k)[0])(keys)
  counts = np.bincount(np.asarray(first), minlength=V)
  # Every class within 4 standard deviations of its binomial count.
  sd = np.sqrt(draws * probs * (1 - probs)) + 1.0
  assert np.all(np.abs(counts - draws * probs) < 4 * sd), (counts, draws * probs)


def test_deterministic_under_the_same_key(model_and_params):
  model, params = model_and_params
  a = sampling.sample(model, params, [1, 2], 6, jax.random.key(1))
  b = sampling.sample(model, params, [1, 2], 6, jax.random.key(1))
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("prompt", [np.zeros((0,), np.int32), np.zeros((1, 2), np.int32)])
def test_bad_prompt(model_and_params, prompt):
  model, params = model_and_params
  with pytest.raises(ValueError, match="prompt must be a non-empty 1-d token array"):
    sampling.sample(model, params, prompt, 3, jax.random.key(0))


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_temperature_must_be_positive(model_and_params, temperature):
  model, params = model_and_params
  with pytest.raises(ValueError, match=rf"temperature must be > 0, got {temperature}"):
    sampling.sample(model, params, [1], 3, jax.random.key(0), temperature=temperature)
