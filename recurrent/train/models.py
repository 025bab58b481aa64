"""The model every task trains: optional embedding, a stack of recurrent layers, a read-out.

Shape legend: B batch, T time, I input features, V vocabulary, E embedding size, H hidden
size, O outputs.

Dropout sits where Gal & Ghahramani (2016) put it: whole word types dropped from the
embedding (``embed_dropout``), each layer's input (``dropout``), ``h_{t-1}``
(``recurrent_dropout``) and the top layer's output (``output_dropout``). With
``dropout_kind='variational'`` every mask is drawn once per sequence from that sequence's
key, ``fold_in(rng, example_id)``; with ``'naive'`` the non-recurrent masks are drawn
anew at every step as in Zaremba et al. (2014), and there is no recurrent dropout.

``untied_masks`` gives each gate its own masks on a layer's input and on ``h_{t-1}``
(Gal & Ghahramani's "untied weights" variant, :class:`recurrent.Options`'
``per_gate_masks``); otherwise one mask on each is shared by the gates. The training loop
gives every step (one BPTT window) its own rng and every row its own example id, so masks
are drawn per (sequence, window), as in Gal & Ghahramani's code.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from recurrent import dropout as _dropout
from recurrent import linen as _linen


def symmetric_uniform(scale: float):
  """Initialiser drawing uniformly from ``[-scale, scale]`` (Zaremba et al.'s init_scale)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


class SequenceModel(nn.Module):
  """Embedding (for int inputs), ``num_layers`` recurrent layers and a dense read-out.

  Attributes:
    num_outputs: O, the read-out's width (V for a language model, 1 for regression).
    vocab_size: V for int token inputs; 0 for float inputs ``[B, T, I]``.
    embed_size: E (used when ``vocab_size > 0``).
    hidden_size, num_layers, cell: the recurrent stack (``cell`` is "lstm" or "gru").
    readout: "all" gives outputs at every step ``[B, T, O]``; "last" at the last step
      ``[B, O]``.
    dropout_kind, dropout, recurrent_dropout, output_dropout, embed_dropout,
      untied_masks: see the module docstring.
    init_scale: > 0 draws every weight from ``U[-init_scale, init_scale]``.
    forget_bias: LSTM forget-gate bias.
  """

  num_outputs: int
  vocab_size: int = 0
  embed_size: int = 0
  hidden_size: int = 64
  num_layers: int = 1
  cell: str = "lstm"
  readout: str = "all"
  dropout_kind: str = "variational"
  dropout: float = 0.0
  recurrent_dropout: float = 0.0
  output_dropout: float = 0.0
  embed_dropout: float = 0.0
  untied_masks: bool = False
  init_scale: float = 0.0
  forget_bias: float = 1.0

  def _drop(self, xs, rate: float, example_ids, deterministic: bool):
    """Dropout on ``xs [B, T, F]``: one mask per sequence, or one per step if naive."""
    if deterministic or rate == 0.0:
      return xs
    if self.dropout_kind == "naive":
      return nn.Dropout(rate, deterministic=False)(xs)
    keys = _dropout.sequence_keys(self.make_rng("dropout"), example_ids)
    return _dropout.apply(keys, xs, rate)

  def _drop_words(self, tokens, embedded, example_ids, deterministic: bool):
    """Drops whole word types: one keep-mask over the vocabulary per sequence."""
    if deterministic or self.embed_dropout == 0.0:
      return embedded
    if self.dropout_kind == "naive":
      raise ValueError("embed_dropout needs dropout_kind='variational'")
    keys = _dropout.sequence_keys(self.make_rng("dropout"), example_ids)
    (vocab_mask,) = _dropout.masks(keys, self.vocab_size, self.embed_dropout)  # [B, V]
    word_mask = jnp.take_along_axis(vocab_mask, tokens, axis=-1)  # [B, T]
    return embedded * word_mask[..., None].astype(embedded.dtype)

  @nn.compact
  def __call__(
    self,
    inputs,
    *,
    example_ids,
    initial_carry: list | None = None,
    deterministic: bool = True,
    drop_words: bool = True,
  ) -> tuple[Any, list]:
    """Runs the model.

    Args:
      inputs: int tokens ``[B, T]`` if ``vocab_size`` else floats ``[B, T, I]``.
      example_ids: int ``[B]`` global example indices, the source of dropout keys.
      initial_carry: None (zeros) or a list of per-layer carries, as returned.
      deterministic: True turns all dropout off.
      drop_words: False turns the embedding dropout off while the other dropout stays on
        (MC evaluation, as Gal & Ghahramani's code does at test time).

    Returns:
      ``(outputs, carries)``: ``[B, T, O]`` (or ``[B, O]`` for ``readout='last'``) and
      the list of per-layer final carries.
    """
    weight_init = {}
    if self.init_scale > 0:
      uniform = symmetric_uniform(self.init_scale)
      weight_init = dict(kernel_init=uniform, recurrent_kernel_init=uniform)
    if self.vocab_size:
      embed_init = (
        symmetric_uniform(self.init_scale)
        if self.init_scale > 0
        else nn.initializers.normal(stddev=1.0)
      )
      xs = nn.Embed(
        self.vocab_size, self.embed_size or self.hidden_size, embedding_init=embed_init
      )(inputs)
      xs = self._drop_words(inputs, xs, example_ids, deterministic or not drop_words)
    else:
      xs = inputs
    layer_cls = _linen.LSTM if self.cell == "lstm" else _linen.GRU
    if self.cell == "lstm":
      weight_init["forget_bias"] = self.forget_bias
    carries = []
    untied = self.untied_masks and self.dropout_kind == "variational"
    for layer in range(self.num_layers):
      if not untied:  # one mask on the layer's input, shared by the gates
        xs = self._drop(xs, self.dropout, example_ids, deterministic)
      rnn = layer_cls(
        hidden_size=self.hidden_size,
        dropout=self.dropout if untied else 0.0,
        recurrent_dropout=self.recurrent_dropout,
        per_gate_masks=untied,
        return_carry=True,
        name=f"rnn_{layer}",
        **weight_init,
      )
      carry = None if initial_carry is None else [initial_carry[layer]]
      (final,), xs = rnn(
        xs, initial_carry=carry, example_ids=example_ids, deterministic=deterministic
      )
      carries.append(final)
    xs = self._drop(xs, self.output_dropout, example_ids, deterministic)
    if self.readout == "last":
      xs = xs[:, -1]
    dense_init = weight_init.get("kernel_init", nn.initializers.lecun_normal())
    return nn.Dense(self.num_outputs, kernel_init=dense_init, name="readout")(xs), carries
