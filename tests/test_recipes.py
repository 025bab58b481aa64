"""The published Penn Treebank recipes: the ``ptb`` config against the papers, and the
pieces of Gal & Ghahramani's recipe in the training package.

References: the hyper-parameters as printed in Zaremba et al. 2014 (arXiv 1409.2329) §4.1
and Gal & Ghahramani 2016 (arXiv 1512.05287) §5.1, and their released code for what the
papers leave out (typed in below, one value at a time, not read from the configs);
Gal's weight decay step ``params <- (params - lr * grad) * (1 - wd)`` in float64 NumPy;
the model's own modules, observed with ``flax.linen.intercept_methods``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs, loop
from recurrent.train.models import SequenceModel

# Shared by every Zaremba et al. model (§4.1): 2 layers, minibatch 20, SGD from lr 1,
# biases at 0, the loss summed over the unrolled steps (their lr and norms assume it).
_ZAREMBA = dict(
  num_layers=2,
  batch_size=20,
  optimizer="sgd",
  learning_rate=1.0,
  lr_schedule="step",
  forget_bias=0.0,
  loss_sum_over_time=True,
  cell="lstm",
)
_SMALL = dict(
  _ZAREMBA,
  hidden_size=200,
  seq_len=20,
  init_scale=0.1,
  max_grad_norm=5.0,
  decay_epoch=4,
  lr_decay=0.5,
  epochs=13,
)
_MEDIUM = dict(
  _ZAREMBA,
  hidden_size=650,
  seq_len=35,
  init_scale=0.05,
  max_grad_norm=5.0,
  decay_epoch=6,
  lr_decay=1 / 1.2,
  epochs=39,
)
_LARGE = dict(
  _ZAREMBA,
  hidden_size=1500,
  seq_len=35,
  init_scale=0.04,
  max_grad_norm=10.0,
  decay_epoch=14,
  lr_decay=1 / 1.15,
  epochs=55,
)
_NO_DROPOUT = dict(dropout=0.0, output_dropout=0.0, recurrent_dropout=0.0, embed_dropout=0.0)
# Gal & Ghahramani: Zaremba's models, dropout tied embedding-with-recurrent and
# input-with-output; their code: untied masks, weight decay 1e-7 as a shrink after the step.
_GAL = dict(untied_masks=True, dropout_kind="variational", weight_decay=1e-7)
_GAL.update(weight_decay_kind="shrink")
PUBLISHED = {
  "zaremba_small": dict(_SMALL, **_NO_DROPOUT, weight_decay=0.0),
  "zaremba_medium": dict(
    _MEDIUM, dropout_kind="naive", dropout=0.5, output_dropout=0.5, recurrent_dropout=0.0
  ),
  "zaremba_large": dict(
    _LARGE, dropout_kind="naive", dropout=0.65, output_dropout=0.65, recurrent_dropout=0.0
  ),
  "gal_medium": dict(
    _MEDIUM, **_GAL, dropout=0.35, output_dropout=0.35, recurrent_dropout=0.2, embed_dropout=0.2
  ),
  "gal_large": dict(
    _LARGE, **_GAL, dropout=0.5, output_dropout=0.5, recurrent_dropout=0.3, embed_dropout=0.3
  ),
}


def ptb_config(variant):
  return configs.get_config("ptb", variant)


@pytest.mark.parametrize("variant", sorted(PUBLISHED))
def test_configs_carry_the_published_hyper_parameters(variant):
  config = ptb_config(variant)
  config_lib.validate(config)
  for field, value in PUBLISHED[variant].items():
    want = pytest.approx(value, rel=1e-12) if isinstance(value, float) else value
    assert config[field] == want, (variant, field)
  assert config.task == "ptb"
  if variant.startswith("gal"):
    assert config.mc_samples == 1000  # the paper's MC test perplexity


@pytest.mark.parametrize("variant", ["small_naive", "small_tied", "small_untied"])
def test_ablation_configs_change_only_the_dropout(variant):
  """The ablation's models are Zaremba's small model: only the dropout fields differ."""
  config, small = ptb_config(variant), ptb_config("zaremba_small")
  config_lib.validate(config)
  dropout_fields = {*_NO_DROPOUT, "dropout_kind", "untied_masks", "mc_samples", "mc_chunk"}
  changed = {k for k in small.keys() if config[k] != small[k]}
  assert changed and changed <= dropout_fields, changed
  assert config.untied_masks == (variant == "small_untied")
  assert (config.dropout_kind == "naive") == (variant == "small_naive")


def test_shrink_weight_decay_is_gals_step():
  """``weight_decay_kind='shrink'``: clip, SGD step, then ``params *= 1 - wd``, not scaled
  by the learning rate; ``'l2'`` adds ``wd * params`` to the gradient."""
  config = config_lib.base_config()
  config.update(optimizer="sgd", learning_rate=0.5, weight_decay=0.01, max_grad_norm=0.0)
  rng = np.random.default_rng(0)
  params = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  grads = {"w": jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)}
  p, g = np.asarray(params["w"], np.float64), np.asarray(grads["w"], np.float64)
  expected = {"shrink": (p - 0.5 * g) * (1 - 0.01), "l2": p - 0.5 * (g + 0.01 * p)}
  for kind, want in expected.items():
    config.weight_decay_kind = kind
    tx = loop.make_optimizer(config, steps_per_epoch=10, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(params["w"] + updates["w"], want, rtol=1e-6, atol=1e-7)
  assert not np.allclose(expected["shrink"], expected["l2"], rtol=1e-4)  # they differ


V, E, H, B, T = 12, 8, 8, 4, 6


def _model(**kwargs):
  return SequenceModel(num_outputs=V, vocab_size=V, embed_size=E, hidden_size=H, **kwargs)


def _observe(model, variables, tokens, ids, key, **kwargs):
  """Runs the model with dropout on; returns its output and, per named sub-module, the
  module and its first call's positional args and output."""
  seen = {}

  def interceptor(next_fun, args, call_kwargs, context):
    out = next_fun(*args, **call_kwargs)
    if context.method_name == "__call__" and context.module.name is not None:
      seen.setdefault(context.module.name, (context.module, args, out))
    return out

  with nn.intercept_methods(interceptor):
    outputs, _ = model.apply(
      variables, tokens, example_ids=ids, deterministic=False, rngs={"dropout": key}, **kwargs
    )
  return outputs, seen


@pytest.fixture(scope="module")
def batch():
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, V, size=(B, T)), jnp.int32)
  return tokens, jnp.arange(B, dtype=jnp.int32)


def test_untied_masks_reach_every_layer_inside_the_cell(batch):
  """``untied_masks``: each layer's input dropout moves into the LSTM layer with one mask
  per gate (the layer's per-gate masks are checked against the gates in
  ``test_dropout.py``); the tied model masks the layer input outside, shared by the gates."""
  tokens, ids = batch
  rates = dict(num_layers=2, dropout=0.3, recurrent_dropout=0.2, output_dropout=0.3)
  untied, tied = _model(untied_masks=True, **rates), _model(**rates)
  variables = untied.init(jax.random.key(0), tokens, example_ids=ids)
  key = jax.random.key(5)
  out_untied, seen_untied = _observe(untied, variables, tokens, ids, key)
  out_tied, seen_tied = _observe(tied, variables, tokens, ids, key)
  embedded = seen_untied["Embed_0"][2]
  for layer in ("rnn_0", "rnn_1"):
    module = seen_untied[layer][0]
    assert (module.per_gate_masks, module.dropout, module.recurrent_dropout) == (True, 0.3, 0.2)
    module = seen_tied[layer][0]
    assert (module.per_gate_masks, module.dropout, module.recurrent_dropout) == (False, 0.0, 0.2)
  np.testing.assert_array_equal(seen_untied["rnn_0"][1][0], embedded)  # no mask outside
  tied_input = np.asarray(seen_tied["rnn_0"][1][0])
  assert np.any(tied_input == 0) and not np.any(np.asarray(embedded) == 0)
  assert np.abs(np.asarray(out_untied - out_tied)).max() > 1e-3


def test_masks_are_drawn_per_window(batch):
  """The loop gives step s the key ``fold_in(dropout_key, s)``: the same window and key
  give the same output, the next window's key other masks (Gal's code: masks per row and
  minibatch)."""
  tokens, ids = batch
  model = _model(untied_masks=True, dropout=0.3, recurrent_dropout=0.3, embed_dropout=0.3)
  variables = model.init(jax.random.key(0), tokens, example_ids=ids)
  key = jax.random.key(9)
  window = [
    _observe(model, variables, tokens, ids, jax.random.fold_in(key, s))[0] for s in (0, 0, 1)
  ]
  np.testing.assert_array_equal(window[0], window[1])
  assert np.abs(np.asarray(window[2] - window[0])).max() > 1e-3


def test_drop_words_false_turns_only_the_embedding_dropout_off(batch):
  """MC evaluation runs with ``drop_words=False``: the same output as the model without
  embedding dropout under the same key (its other masks unchanged), and not the output
  with the word masks on."""
  tokens, ids = batch
  rates = dict(dropout=0.3, recurrent_dropout=0.3, output_dropout=0.3)
  model, without = _model(embed_dropout=0.5, **rates), _model(**rates)
  variables = model.init(jax.random.key(0), tokens, example_ids=ids)
  key = jax.random.key(2)
  got, _ = _observe(model, variables, tokens, ids, key, drop_words=False)
  want, _ = _observe(without, variables, tokens, ids, key)
  dropped, _ = _observe(model, variables, tokens, ids, key)
  np.testing.assert_array_equal(got, want)
  assert np.abs(np.asarray(dropped - got)).max() > 1e-3
