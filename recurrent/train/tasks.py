"""Tasks: each ties its data to a model, a loss and the metrics it reports.

Shape legend: B batch, T time, V vocabulary.

A :class:`Task` gives the global batch of any training step (so a resumed run restarts at
that step exactly), the evaluation batches, and a loss that returns a sum and a count, so
that averages over sharded batches and several windows are exact; other statistics (the
copy task's accuracy) come as sums and counts too, from the ``extra`` of a :class:`Task`.
"""

import math
import pathlib
from typing import Callable, Iterable, Mapping, NamedTuple

import jax.numpy as jnp
import numpy as np
import optax

from recurrent.train import batching, download, models, synthetic, text
from recurrent.train import config as _config


def _no_extra(outputs, batch) -> dict:
  return {}


class Task(NamedTuple):
  """What the loop needs of a task.

  Attributes:
    model: the :class:`recurrent.train.models.SequenceModel` to train.
    train_batch: ``step -> batch``, a dict of numpy arrays with ``inputs``, ``targets``
      and ``example_ids [B]`` (global example indices, the source of dropout keys).
    eval_batches: ``() -> iterable of batches`` of the evaluation split, in order.
    loss: ``(outputs, batch) -> (sum, count)``.
    metrics: ``mean_loss -> dict`` of the metrics to report (e.g. perplexity).
    metric: the name of the metric to plot.
    extra: ``(outputs, batch) -> {name: (sum, count)}``, statistics reported besides the
      loss's metrics, as ``sum / count`` with sums and counts added over the batches and
      the logged steps (:func:`extra_metrics`); ``{}`` for most tasks, the accuracy on the
      weighted steps for the copy task.
    baselines: ``{metric: (label, value)}``, what a trivial model scores (the adding
      problem's always-1 answer, the copy task's memoryless guess, the unigram model of a
      corpus), drawn on the plot.
    carries: whether the carry flows from one batch to the next (truncated BPTT).
    steps_per_epoch: windows per epoch for language models, else 0.
    tokens_per_step: tokens (time steps) in one global batch.
    vocab: the :class:`recurrent.train.text.Vocabulary` of text tasks, else None.
    loss_scale: the training loss is the mean loss times this (``T`` to sum over time).
    test_batches: like ``eval_batches``, for a test split evaluated once at the end;
      None if the task has none.
  """

  model: models.SequenceModel
  train_batch: Callable[[int], dict]
  eval_batches: Callable[[], Iterable[dict]]
  loss: Callable
  metrics: Callable[[float], dict]
  metric: str
  carries: bool
  steps_per_epoch: int
  tokens_per_step: int
  vocab: object = None
  test_batches: Callable[[], Iterable[dict]] | None = None
  loss_scale: float = 1.0
  extra: Callable[..., dict] = _no_extra
  baselines: Mapping[str, tuple] = {}


def extra_metrics(sums: Iterable[dict]) -> dict:
  """``{name: sum / count}`` from the ``{name: (sum, count)}`` of :class:`Task`'s ``extra`` for
  several batches or steps, the sums and the counts added first."""
  totals = {}
  for stats in sums:
    for name, (total, count) in stats.items():
      previous = totals.get(name, (0.0, 0.0))
      totals[name] = (previous[0] + float(total), previous[1] + float(count))
  return {name: total / count for name, (total, count) in totals.items()}


def _model(config, num_outputs: int, vocab_size: int = 0, readout: str = "all"):
  return models.SequenceModel(
    num_outputs=num_outputs,
    vocab_size=vocab_size,
    embed_size=config.embed_size or config.hidden_size,
    hidden_size=config.hidden_size,
    num_layers=config.num_layers,
    cell=config.cell,
    readout=readout,
    dropout_kind=config.dropout_kind,
    dropout=config.dropout,
    recurrent_dropout=config.recurrent_dropout,
    output_dropout=config.output_dropout,
    embed_dropout=config.embed_dropout,
    untied_masks=config.untied_masks,
    init_scale=config.init_scale,
    forget_bias=config.forget_bias,
  )


def _weighted_sum(values, batch):
  """``(sum, count)`` of per-token ``values [B, T]``, weighted by ``batch['weights']`` if
  the batch has them."""
  weights = batch.get("weights")
  if weights is None:
    return values.sum(), jnp.asarray(values.size, values.dtype)
  return (values * weights).sum(), weights.sum().astype(values.dtype)


def _cross_entropy(logits, batch):
  """Summed token cross-entropy ``[B, T, V]`` vs ``[B, T]``, weighted if the batch says."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
  return _weighted_sum(losses, batch)


def _accuracy(logits, batch) -> dict:
  """``{'accuracy': (sum, count)}``: the argmax's hits, weighted as the loss is."""
  hits = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(logits.dtype)
  return {"accuracy": _weighted_sum(hits, batch)}


def _squared_error(outputs, batch):
  errors = jnp.square(outputs[:, 0] - batch["targets"])
  return errors.sum(), jnp.asarray(errors.size, errors.dtype)


def _perplexity(loss: float) -> dict:
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


def unigram_loss(train: np.ndarray, valid: np.ndarray, vocab_size: int) -> float:
  """The cross-entropy on ``valid`` of the unigram model of ``train``, word counts plus
  one (so that a word never seen in training costs a finite loss)."""
  counts = np.bincount(np.asarray(train).ravel(), minlength=vocab_size) + 1.0
  log_probs = np.log(counts) - np.log(counts.sum())
  return float(-log_probs[np.asarray(valid).ravel()].mean())


def language_model(config, train: np.ndarray, valid: np.ndarray, vocab, test=None) -> Task:
  """Truncated-BPTT language model over B streams of ``train``; evaluated on ``valid``
  during training and on ``test`` (if given) at the end."""
  train_windows = batching.lm_batches(train, config.batch_size, config.seq_len)
  valid_windows = batching.lm_batches(valid, config.batch_size, config.seq_len)
  test_windows = (
    None if test is None else batching.lm_batches(test, config.batch_size, config.seq_len)
  )
  unigram = unigram_loss(train, valid, len(vocab))
  return Task(
    model=_model(config, len(vocab), len(vocab)),
    train_batch=lambda step: train_windows.batch(step % len(train_windows)),
    eval_batches=lambda: iter(valid_windows),
    loss=_cross_entropy,
    metrics=_perplexity,
    metric="perplexity",
    carries=True,
    steps_per_epoch=len(train_windows),
    tokens_per_step=config.batch_size * config.seq_len,
    vocab=vocab,
    test_batches=None if test_windows is None else lambda: iter(test_windows),
    loss_scale=float(config.seq_len) if config.loss_sum_over_time else 1.0,
    baselines={"loss": ("unigram", unigram), "perplexity": ("unigram", math.exp(unigram))},
  )


def _synthetic(config, make_batch, model, loss, metric, **fields) -> Task:
  eval_batches = config.eval_examples // config.batch_size or 1

  def eval_iter():
    # Held-out examples: a seed the training batches never use.
    for i in range(eval_batches):
      yield make_batch(config.seed + 1, i, config.batch_size)

  return Task(
    model=model,
    train_batch=lambda step: make_batch(config.seed, step, config.batch_size),
    eval_batches=eval_iter,
    loss=loss,
    metrics=lambda value: {metric: value},
    metric=metric,
    carries=False,
    steps_per_epoch=0,
    tokens_per_step=config.batch_size * config.seq_len,
    **fields,
  )


def _check_windows(config, splits: dict, unit: str) -> None:
  """Raises UserError if a split of ``{description: ids}`` is too short for one window."""
  need = config.batch_size * (config.seq_len + 1)
  for where, ids in splits.items():
    if len(ids) < need:
      raise _config.UserError(
        f"{where} has {len(ids)} {unit}, too few for one window of batch_size"
        f" {config.batch_size} x (seq_len {config.seq_len} + 1) = {need}; give more text or"
        " a smaller batch_size or seq_len"
      )


def make(config) -> Task:
  """The task ``config.task`` names, with its data loaded (a language model's checked first)
  and its model built.

  Raises:
    OSError: a data file is missing or cannot be read (the message names it).
    UserError: a data file is empty, not UTF-8, or too short for one window of
      ``batch_size`` streams of ``seq_len + 1`` tokens (the message names it and the split).
  """
  if config.task == "ptb":
    if config.download:
      download.fetch_ptb(config.data_dir)
    corpus = text.ptb(config.data_dir)
    directory = pathlib.Path(config.data_dir).expanduser()
    splits = {directory / f"ptb.{split}.txt": getattr(corpus, split) for split in text.PTB_SPLITS}
    _check_windows(config, splits, "words")
    return language_model(config, corpus.train, corpus.valid, corpus.vocab, corpus.test)
  if config.task == "chars":
    path = pathlib.Path(config.data_dir).expanduser()
    corpus = text.char_corpus(path)
    splits = {
      f"{path} (its training split, the first 90%)": corpus.train,
      f"{path} (its validation split, the last 10%)": corpus.valid,
    }
    _check_windows(config, splits, "characters")
    return language_model(config, corpus.train, corpus.valid, corpus.vocab)
  if config.task == "adding":
    data = {
      seed: synthetic.AddingProblem(config.seq_len, seed) for seed in (config.seed, config.seed + 1)
    }
    model, loss, metric = _model(config, 1, readout="last"), _squared_error, "mse"
    fields = {"baselines": {"mse": ("always 1", data[config.seed].baseline_mse)}}
  else:
    data = {
      seed: synthetic.CopyTask(config.seq_len, seed, config.copy_symbols, config.copy_alphabet)
      for seed in (config.seed, config.seed + 1)
    }
    vocab_size = data[config.seed].vocab_size
    model, loss, metric = _model(config, vocab_size, vocab_size), _cross_entropy, "loss"
    memoryless = data[config.seed].memoryless_baseline
    fields = {
      "extra": _accuracy,
      "baselines": {name: ("memoryless", value) for name, value in memoryless.items()},
    }
  return _synthetic(
    config, lambda seed, step, size: data[seed].batch(step, size), model, loss, metric, **fields
  )
