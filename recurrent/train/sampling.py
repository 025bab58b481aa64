"""Sampling text from a trained language model, one token at a time under ``lax.scan``."""

import jax
import jax.numpy as jnp


def sample(model, params, prompt, length: int, key, *, temperature: float = 1.0):
  """Continues ``prompt`` by ``length`` tokens drawn from ``model``.

  Args:
    model: a :class:`recurrent.train.models.SequenceModel` over tokens.
    params: its params.
    prompt: int ``[P]``, at least one token.
    length: tokens to draw.
    key: PRNG key.
    temperature: logits are divided by it; lower is greedier.

  Returns:
    int32 ``[length]``, the drawn tokens (without the prompt).
  """
  prompt = jnp.asarray(prompt, jnp.int32)
  if prompt.ndim != 1 or prompt.shape[0] < 1:
    raise ValueError(f"prompt must be a non-empty 1-d token array, got shape {prompt.shape}")
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0, got {temperature}")
  ids = jnp.zeros((1,), jnp.int32)

  def apply(tokens, carry):
    return model.apply(
      {"params": params}, tokens[None], example_ids=ids, initial_carry=carry, deterministic=True
    )

  _, carry_shapes = jax.eval_shape(apply, prompt[:1], None)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), carry_shapes)

  @jax.jit
  def run(key):
    logits, carry = apply(prompt, zeros)
    logits = logits[:, -1:]  # [1, 1, V]: the scan's carry keeps one step's logits

    def step(state, key):
      logits, carry = state
      token = jax.random.categorical(key, logits[0, -1] / temperature).astype(jnp.int32)
      return apply(token[None], carry), token

    _, tokens = jax.lax.scan(step, (logits, carry), jax.random.split(key, length))
    return tokens

  return run(key)
