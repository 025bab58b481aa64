"""recurrent.train.loop: optimiser, train and eval steps, the loop on every task, devices.

References, named in each test:

- Zaremba et al. 2014's learning-rate rule, ``lr * decay ** max(epoch + 1 - max_epoch, 0)``
  (their ``ptb_word_lm``), read off SGD's update of a unit gradient; clipping by global
  norm: an update of norm ``lr * max_grad_norm`` along the gradient.
- MC dropout (Gal & Ghahramani 2016): the mean of the softmax probabilities over N dropout
  samples, computed here with ``model.apply`` and the keys ``split(key, N)``, each sample
  threading its own carry from window to window; with every rate 0 it is the plain eval.
- The loop on each task's tiny config: the first and last train records of its
  ``metrics.jsonl`` (the loss must fall), and the returned metrics against the log.
- Tracing: a counter in the Python body of the step functions (it runs once per trace) and
  the jitted functions' cache sizes, over an epoch boundary and a resume.
- Devices: the same runs on 1 and on 8 (forced host) devices give the same loss curves,
  dropout included, because masks come from example ids, not from the batch layout; the
  copy task's accuracy too, as its hits and weights are summed over the whole batch.
- Metrics: the copy task's accuracy against NumPy's argmax of the model's logits on the
  weighted steps; its baselines against the task's definition; the unigram perplexity
  against counts made with ``collections.Counter``; the files of a run against the mode
  ``open`` gives, ``0o666 & ~umask``.

optax is not clean under the session's strict dtype promotion (adam's bias correction
raises ``decay ** count`` with an int32 count, the cosine schedule mixes that count with a
float), so whatever runs an optax update runs under ``standard`` promotion, by
:func:`optax_promotion`; the model and the eval steps stay strict.
"""

import collections
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs, loop, tasks, text
from tests.workdirs import read_metrics

ROOT = pathlib.Path(__file__).resolve().parents[1]

# A fake treebank: a small grammar, so that a tiny LSTM learns something in a few steps.
ADJECTIVES = ["big", "small", "red", "old", "new"]
NOUNS = ["cat", "dog", "man", "car", "house", "tree", "<unk>", "N"]
VERBS = ["sees", "likes", "has", "sells", "buys"]


def load_config(name, variant=None, **overrides):
  c = configs.get_config(name, variant)
  c.progress = False
  c.update(overrides)
  return c


def sentences(count, seed):
  rng = np.random.default_rng(seed)
  lines = []
  for _ in range(count):
    adjective, subject, verb, obj = (rng.choice(w) for w in (ADJECTIVES, NOUNS, VERBS, NOUNS))
    lines.append(f" the {adjective} {subject} {verb} a {obj} \n")
  return "".join(lines)


def write_ptb(directory):
  every_word = " the a " + " ".join(ADJECTIVES + NOUNS + VERBS) + " \n"
  splits = {"train": every_word + sentences(200, 0), "valid": sentences(40, 1)}
  splits["test"] = sentences(40, 2)
  for split, content in splits.items():
    (directory / f"ptb.{split}.txt").write_text(content)
  return directory


def optax_promotion():
  return jax.numpy_dtype_promotion("standard")


def train(config, workdir, **kwargs):
  with optax_promotion():
    return loop.train_and_evaluate(config, workdir, **kwargs)


def split_records(records, split):
  return [r for r in records if r["split"] == split]


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory):
  return str(write_ptb(tmp_path_factory.mktemp("ptb")))


# --- optimiser ------------------------------------------------------------------------------


def learning_rates(tx, steps):
  """The rates an optimiser applies at steps 0..steps-1: minus SGD's update of grad 1."""
  params = jnp.zeros((), jnp.float32)
  state = tx.init(params)
  rates = []
  for _ in range(steps):
    with optax_promotion():
      updates, state = tx.update(jnp.ones((), jnp.float32), state, params)
    rates.append(-float(updates))
  return np.array(rates)


@pytest.mark.parametrize("decay_epoch, lr_decay", [(1, 0.5), (4, 0.5), (6, 0.8), (14, 1 / 1.15)])
def test_step_schedule_is_zarembas_rule(decay_epoch, lr_decay):
  c = config_lib.base_config()
  c.update(
    task="ptb", optimizer="sgd", learning_rate=1.0, lr_schedule="step",
    decay_epoch=decay_epoch, lr_decay=lr_decay,
  )  # fmt: skip
  steps_per_epoch, epochs = 3, decay_epoch + 4
  tx = loop.make_optimizer(c, steps_per_epoch, steps_per_epoch * epochs)
  got = learning_rates(tx, steps_per_epoch * epochs)
  epoch = np.arange(steps_per_epoch * epochs) // steps_per_epoch
  expected = 1.0 * lr_decay ** np.maximum(epoch + 1 - decay_epoch, 0)
  np.testing.assert_allclose(got, expected, rtol=1e-6)
  assert got[0] == 1.0 and got[-1] < 1.0  # decays within the run


def test_constant_and_cosine_schedules():
  c = config_lib.base_config()
  c.update(optimizer="sgd", learning_rate=0.3)
  np.testing.assert_allclose(learning_rates(loop.make_optimizer(c, 0, 10), 10), 0.3, rtol=1e-6)
  c.lr_schedule = "cosine"
  got = learning_rates(loop.make_optimizer(c, 0, 10), 10)
  expected = 0.3 * 0.5 * (1 + np.cos(np.pi * np.arange(10) / 10))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_clipping_by_global_norm():
  c = config_lib.base_config()
  c.update(optimizer="sgd", learning_rate=0.1, max_grad_norm=2.0)
  tx = loop.make_optimizer(c, 0, 10)
  params = {"a": jnp.zeros((3,), jnp.float32), "b": jnp.zeros((2, 2), jnp.float32)}
  state = tx.init(params)
  huge = {"a": jnp.array([3e6, -4e6, 1e6], jnp.float32), "b": jnp.full((2, 2), 2e6, jnp.float32)}
  updates, state = tx.update(huge, state, params)
  norm = np.sqrt(sum(float(jnp.sum(u**2)) for u in jax.tree.leaves(huge)))
  np.testing.assert_allclose(float(optax.tree.norm(updates)), 0.1 * 2.0, rtol=1e-5)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(huge)):
    np.testing.assert_allclose(u, -0.1 * 2.0 * np.asarray(g) / norm, rtol=1e-5)
  small = jax.tree.map(lambda g: g * 1e-7, huge)  # global norm 0.69 < 2: untouched
  updates, _ = tx.update(small, state, params)
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(small)):
    np.testing.assert_allclose(u, -0.1 * np.asarray(g), rtol=1e-6)


# --- MC dropout evaluation ------------------------------------------------------------------


def lm_task(**overrides):
  """A language-model task on random tokens (no files: the arrays go in directly)."""
  # init_scale 1: weights large enough that dropout changes the predictions visibly.
  c = load_config("ptb", "tiny", data_dir="unused", init_scale=1.0, **overrides)
  vocab = text.Vocabulary(tuple(f"w{i}" for i in range(13)), separator=" ")
  rng = np.random.default_rng(0)
  train = rng.integers(0, 13, 400).astype(np.int32)
  valid = rng.integers(0, 13, 200).astype(np.int32)
  task = tasks.language_model(c, train, valid, vocab)
  state = loop.init_state(c, task, jax.random.key(0), total_steps=10)
  return task, state


def mc_reference(task, state, batches, key, samples):
  """Gal & Ghahramani's MC test: per token, the softmax probability of the target averaged
  over ``samples`` passes, each pass with its own key for all its windows (masks fixed
  for the pass, row b's example id b) and its own carry, and no embedding dropout.

  Returns the mean of -log(mean probability), and of -mean(log probability) (the
  geometric mean, which is *not* the recipe)."""
  apply = jax.jit(
    lambda batch, carry, key: task.model.apply(
      {"params": state.params},
      batch["inputs"],
      example_ids=jnp.arange(batch["inputs"].shape[0]),
      initial_carry=carry,
      deterministic=False,
      drop_words=False,
      rngs={"dropout": key},
    )
  )
  probs = []  # [samples, tokens]
  for s in range(samples):
    carry, pass_probs = jax.tree.map(jnp.zeros_like, state.carry), []
    for batch in batches:
      logits, carry = apply(batch, carry, jax.random.fold_in(key, s))
      p = np.asarray(jax.nn.softmax(logits), np.float64)
      pass_probs.append(np.take_along_axis(p, batch["targets"][..., None], axis=-1).ravel())
    probs.append(np.concatenate(pass_probs))
  probs = np.array(probs)
  return -np.log(probs.mean(axis=0)).mean(), -np.log(probs).mean()


class _Bar:
  def __init__(self):
    self.count = 0

  def update(self, n):
    self.count += n


def plain_eval(task, state, batches):
  sharding = loop._sharding(jax.devices()[:1])
  zero = jax.tree.map(jnp.zeros_like, state.carry)
  eval_step = jax.jit(loop.make_eval_step(task))
  return loop.evaluate(state, batches, task, sharding, eval_step, zero)["loss"]


def run_mc(task, state, batches, key, samples, chunk):
  sharding = loop._sharding(jax.devices()[:1])
  zero = jax.tree.map(jnp.zeros_like, state.carry)
  bar, mc_step = _Bar(), jax.jit(loop.make_mc_step(task))
  metrics = loop.mc_evaluate(
    state, lambda: iter(batches), task, sharding, mc_step, key, zero, samples, chunk, bar
  )
  assert bar.count == len(batches) * -(-samples // chunk)
  return metrics["loss"]


@pytest.mark.parametrize("chunk", [5, 2])
def test_mc_dropout_eval_averages_probabilities_over_samples(chunk):
  samples = 5
  task, state = lm_task(dropout=0.3, recurrent_dropout=0.3, output_dropout=0.3, embed_dropout=0.2)
  batches = list(task.eval_batches())[:3]  # the carry flows from window to window
  key = jax.random.key(7)
  got = run_mc(task, state, batches, key, samples, chunk)
  arithmetic, geometric = mc_reference(task, state, batches, key, samples)
  assert got == pytest.approx(arithmetic, rel=1e-5)
  assert abs(got - geometric) > 1e-3 * abs(got)  # averaging log-probabilities differs
  plain = plain_eval(task, state, batches)
  assert abs(got - plain) > 1e-3 * abs(plain)  # dropout was on


def test_mc_dropout_without_dropout_is_the_deterministic_eval():
  task, state = lm_task(dropout=0.0, recurrent_dropout=0.0)
  batches = list(task.eval_batches())[:2]
  mc = run_mc(task, state, batches, jax.random.key(1), samples=3, chunk=2)
  assert mc == pytest.approx(plain_eval(task, state, batches), rel=1e-5)


def test_loss_sum_over_time_moves_sgd_seq_len_times_as_far():
  """Zaremba's convention: the differentiated loss is the per-step losses summed over the
  window (the mean times T), so one plain SGD step moves every param T times as far; the
  logged loss stays the per-token mean."""
  moves, losses, norms = {}, {}, {}
  for summed in (False, True):
    task, state = lm_task(
      loss_sum_over_time=summed, max_grad_norm=0.0, lr_schedule="constant", learning_rate=0.01
    )
    assert task.loss_scale == (8.0 if summed else 1.0)  # ptb:tiny's seq_len
    with optax_promotion():
      new, metrics = jax.jit(loop.make_train_step(task))(
        state, task.train_batch(0), jax.random.key(3)
      )
    moves[summed] = jax.tree.map(lambda a, b: np.asarray(a - b), new.params, state.params)
    losses[summed], norms[summed] = float(metrics["loss"]), float(metrics["grad_norm"])
  assert losses[True] == pytest.approx(losses[False], rel=1e-6)
  assert norms[True] == pytest.approx(8.0 * norms[False], rel=1e-5)
  # Params are O(1) (init_scale 1), so their float32 differences carry ~2e-7 of rounding.
  for got, want in zip(jax.tree.leaves(moves[True]), jax.tree.leaves(moves[False])):
    np.testing.assert_allclose(got, 8.0 * want, rtol=1e-4, atol=1e-6)


# --- the loop on each task -----------------------------------------------------------------


def assert_loss_falls(records, metric):
  train = split_records(records, "train")
  assert len(train) >= 3
  first, last = train[0][metric], train[-1][metric]
  # A fall well beyond step-to-step noise (ptb:tiny reaches about the unigram entropy).
  assert np.isfinite(last) and last < 0.97 * first, [r[metric] for r in train]


def assert_result_matches_log(result, records):
  evals = split_records(records, "eval")
  assert evals[-1]["step"] == int(result.state.step)
  last = {k: v for k, v in evals[-1].items() if k not in ("step", "split")}
  assert result.metrics["eval"] == pytest.approx(last, rel=1e-12)


def test_adding_tiny_loss_falls(tmp_path):
  result = train(load_config("adding", "tiny"), tmp_path)
  records = read_metrics(tmp_path)
  assert_loss_falls(records, "mse")
  assert_result_matches_log(result, records)
  for r in records:  # no accuracy for a regression: the metrics are as they were
    assert set(r) == {"step", "split", "mse"} | (
      {"tokens_per_sec"} if r["split"] == "train" else set()
    )
  assert [r["step"] for r in split_records(records, "train")] == [5, 10, 15, 20]
  assert [r["step"] for r in split_records(records, "eval")] == [10, 20]
  assert json.loads((tmp_path / "config.json").read_text())["task"] == "adding"


def test_max_train_minutes_pauses_and_a_rerun_finishes_like_one_run(tmp_path, ptb_dir):
  """A spent time budget pauses training after the step in progress, which is logged,
  evaluated on the validation split and checkpointed; the test split and MC evaluation
  wait for the last step. Rerun without the budget, the run ends where one run ends."""
  overrides = dict(data_dir=ptb_dir, mc_samples=2, train_steps=12, progress=False)
  paused_dir, whole_dir = tmp_path / "paused", tmp_path / "whole"
  result = train(load_config("ptb", "tiny", max_train_minutes=1e-9, **overrides), paused_dir)
  records = read_metrics(paused_dir)
  assert int(result.state.step) == 1
  assert [(r["step"], r["split"]) for r in records] == [(1, "train"), (1, "eval")]
  assert sorted(p.name for p in (paused_dir / "checkpoints").iterdir()) == ["1"]
  resumed = train(load_config("ptb", "tiny", **overrides), paused_dir)
  whole = train(load_config("ptb", "tiny", **overrides), whole_dir)
  assert int(resumed.state.step) == 12
  assert set(resumed.metrics) == {"eval", "eval_mc", "test", "test_mc"}
  for split, metrics in whole.metrics.items():
    assert resumed.metrics[split]["loss"] == pytest.approx(metrics["loss"], rel=1e-5), split


def test_copy_tiny_loss_falls_logs_accuracy_and_writes_files_by_the_umask(tmp_path):
  old = os.umask(0o022)
  try:
    result = train(load_config("copy", "tiny"), tmp_path)
  finally:
    os.umask(old)
  records = read_metrics(tmp_path)
  assert_loss_falls(records, "loss")
  assert_result_matches_log(result, records)
  assert "accuracy" in result.metrics["eval"]
  # Hits over the answer steps only: 3 per sequence, so 5 logged steps of 16 sequences
  # weigh 240 steps and the 64 eval sequences 192 (all 12 steps would make 960 and 768).
  for r in records:
    answers = 5 * 16 * 3 if r["split"] == "train" else 64 * 3
    assert r["accuracy"] * answers == pytest.approx(round(r["accuracy"] * answers), abs=1e-6), r
    assert 0.0 <= r["accuracy"] <= 1.0
  for name in ("config.json", "metrics.jsonl", "curves.png"):
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644, name


# --- metrics: the copy task's accuracy, the baselines ---------------------------------------


def test_accuracy_counts_argmax_hits_on_the_weighted_steps():
  task = tasks.make(load_config("copy", "tiny"))
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(6, 12, 10)).astype(np.float32)
  batch = {
    "targets": rng.integers(0, 10, (6, 12)).astype(np.int32),
    "weights": rng.choice(np.array([0.0, 1.0, 2.0], np.float32), (6, 12)),
  }
  batch["targets"][:, :4] = logits[:, :4].argmax(-1)  # some hits, some with weight 0
  hits = (logits.argmax(-1) == batch["targets"]).astype(np.float64)
  total, count = task.extra(jnp.asarray(logits), batch)["accuracy"]
  assert float(total) == (hits * batch["weights"]).sum()
  assert float(count) == batch["weights"].sum()
  # Several batches or steps: hits and weights added, then divided (not a mean of means).
  assert tasks.extra_metrics([{"accuracy": (3.0, 10.0)}, {"accuracy": (5.0, 6.0)}]) == {
    "accuracy": 0.5
  }
  assert tasks.extra_metrics([{}, {}]) == {}


def numpy_accuracy(task, params, batches):
  hits = weights = 0.0
  for batch in batches:
    logits, _ = task.model.apply(
      {"params": params}, batch["inputs"], example_ids=batch["example_ids"], deterministic=True
    )
    right = np.asarray(logits).argmax(-1) == batch["targets"]
    hits += float((right * batch["weights"]).sum())
    weights += float(batch["weights"].sum())
  return hits / weights


def test_copy_train_and_eval_steps_report_accuracy():
  config = load_config("copy", "tiny", init_scale=1.0)  # large weights: varied predictions
  task = tasks.make(config)
  state = loop.init_state(config, task, jax.random.key(0), total_steps=10)
  sharding = loop._sharding(jax.devices()[:1])
  batches = list(task.eval_batches())
  assert len(batches) == 4
  eval_step = jax.jit(loop.make_eval_step(task))
  metrics = loop.evaluate(state, batches, task, sharding, eval_step, None)
  assert set(metrics) == {"loss", "accuracy"}
  want = numpy_accuracy(task, state.params, batches)
  assert metrics["accuracy"] == pytest.approx(want, abs=1e-12)
  batch = task.train_batch(0)
  with optax_promotion():
    _, train_metrics = jax.jit(loop.make_train_step(task))(state, batch, jax.random.key(1))
  total, count = train_metrics["extra"]["accuracy"]  # before the update; no dropout here
  assert float(count) == 16 * 3
  assert float(total) / float(count) == pytest.approx(
    numpy_accuracy(task, state.params, [batch]), abs=1e-12
  )


def test_tasks_carry_their_baselines():
  adding = tasks.make(load_config("adding", "tiny"))
  assert adding.baselines == {"mse": ("always 1", pytest.approx(1 / 6, rel=1e-15))}
  copy = tasks.make(load_config("copy", "tiny", copy_alphabet=5))
  assert copy.baselines == {
    "loss": ("memoryless", pytest.approx(np.log(5), rel=1e-15)),
    "accuracy": ("memoryless", pytest.approx(1 / 5, rel=1e-15)),
  }
  # A language model: the unigram model of the training words (counts plus one) on valid.
  c = load_config("ptb", "tiny", data_dir="unused")
  vocab = text.Vocabulary(tuple(f"w{i}" for i in range(13)), separator=" ")
  rng = np.random.default_rng(0)
  train_ids, valid_ids = rng.integers(0, 12, 400), rng.integers(0, 13, 200)  # w12 unseen
  counts = collections.Counter(int(i) for i in train_ids)
  total = len(train_ids) + 13
  nll = sum(-np.log((counts[int(i)] + 1) / total) for i in valid_ids) / len(valid_ids)
  lm = tasks.language_model(c, train_ids.astype(np.int32), valid_ids.astype(np.int32), vocab)
  assert lm.baselines["loss"] == ("unigram", pytest.approx(nll, rel=1e-12))
  assert lm.baselines["perplexity"] == ("unigram", pytest.approx(np.exp(nll), rel=1e-12))


def test_chars_tiny_loss_falls_and_samples(tmp_path):
  path = tmp_path / "input.txt"
  path.write_text(sentences(300, 3).replace(" \n", ".\n").replace("<unk>", "thing"))
  workdir = tmp_path / "run"
  result = train(load_config("chars", "tiny", data_dir=str(path)), workdir)
  records = read_metrics(workdir)
  assert_loss_falls(records, "loss")
  assert_result_matches_log(result, records)
  for r in records:
    assert r["perplexity"] == pytest.approx(np.exp(r["loss"]), rel=1e-9)
  sample = (workdir / "sample.txt").read_text()
  assert len(sample) == 20 and set(sample) <= set(path.read_text())


class _Counting:
  """Patches the loop's step factories so each Python trace of a step is counted, and
  ``jax.jit`` so the jitted steps can be asked for their cache sizes."""

  def __init__(self, monkeypatch):
    self.traces = collections.Counter()
    self.jitted = collections.defaultdict(list)
    real_jit = jax.jit
    make_train_step, make_eval_step = loop.make_train_step, loop.make_eval_step
    make_mc_step = loop.make_mc_step

    def counted(name, fn):
      def step(*args):
        self.traces[name] += 1
        return fn(*args)

      step.counted_as = name
      return step

    def jit(fun, *args, **kwargs):
      jitted = real_jit(fun, *args, **kwargs)
      if hasattr(fun, "counted_as"):
        self.jitted[fun.counted_as].append(jitted)
      return jitted

    monkeypatch.setattr(
      loop, "make_train_step", lambda task: counted("train", make_train_step(task))
    )
    monkeypatch.setattr(
      loop,
      "make_eval_step",
      lambda task: counted("eval", make_eval_step(task)),
    )
    monkeypatch.setattr(loop, "make_mc_step", lambda task: counted("mc", make_mc_step(task)))
    monkeypatch.setattr(jax, "jit", jit)

  def reset(self):
    self.traces.clear()
    self.jitted.clear()


@pytest.fixture(scope="module")
def ptb_runs(ptb_dir, tmp_path_factory):
  """ptb:tiny trained past an epoch boundary, then resumed from its checkpoint past another."""
  workdir = tmp_path_factory.mktemp("ptb_run")
  # log_every 1: the first record is the untrained loss (a few steps already reach about
  # the unigram entropy on this corpus, and the loss then wanders around it).
  config = load_config("ptb", "tiny", data_dir=ptb_dir, mc_samples=2, log_every=1)
  steps_per_epoch = tasks.make(config).steps_per_epoch
  assert 20 < steps_per_epoch < 60
  runs = []
  with pytest.MonkeyPatch.context() as monkeypatch:
    counting = _Counting(monkeypatch)
    for train_steps in (steps_per_epoch + 4, 2 * steps_per_epoch + 4):
      config.train_steps = train_steps
      result = train(config, workdir, allow_changes=True)  # the second run: more steps
      runs.append(
        {
          "result": result,
          "records": read_metrics(workdir),
          "traces": dict(counting.traces),
          "cache_sizes": {k: [f._cache_size() for f in v] for k, v in counting.jitted.items()},
        }
      )
      counting.reset()
  return steps_per_epoch, runs


def test_ptb_tiny_loss_falls(ptb_runs):
  _, (first_run, _) = ptb_runs
  assert_loss_falls(first_run["records"], "loss")
  assert_result_matches_log(first_run["result"], first_run["records"])


def test_train_step_compiles_once_across_epochs_and_resume(ptb_runs):
  steps_per_epoch, runs = ptb_runs
  for run in runs:
    # One trace and one executable each, though the carry was reset at an epoch boundary
    # (step steps_per_epoch, then 2 * steps_per_epoch) and the second run's first step
    # takes the state restored from the first run's last checkpoint.
    assert run["traces"] == {"train": 1, "eval": 1, "mc": 1}
    assert run["cache_sizes"] == {"train": [1], "eval": [1], "mc": [1]}
  resumed = runs[1]
  assert int(resumed["result"].state.step) == 2 * steps_per_epoch + 4
  steps = [r["step"] for r in split_records(resumed["records"], "train")]
  assert steps == sorted(set(steps)) and steps[-1] == 2 * steps_per_epoch + 4
  # The resumed run kept the first run's records (and its MC eval is logged too).
  assert resumed["records"][: len(runs[0]["records"])] == runs[0]["records"]
  assert split_records(resumed["records"], "eval_mc")


# --- 1 device vs 8 -------------------------------------------------------------------------

_DEVICES_SCRIPT = """
import json, sys
import jax
from recurrent.train import configs, loop

assert len(jax.devices()) == 8, jax.devices()
for run in json.loads(sys.argv[1]):
  config = configs.get_config(run["name"], run["variant"])
  config.update(run["overrides"])
  loop.train_and_evaluate(config, run["workdir"], devices=jax.devices()[: run["devices"]])
"""


@pytest.fixture(scope="module", autouse=True)
def device_runs(ptb_dir, tmp_path_factory):
  """ptb:tiny and adding:tiny on 1 and on 8 forced host devices, in a subprocess (the
  device count is fixed when jax starts); started with the module, checked at its end."""
  workdir = tmp_path_factory.mktemp("devices")
  ptb = {
    "data_dir": ptb_dir,
    "batch_size": 8,
    "train_steps": 20,
    "embed_dropout": 0.2,
    "mc_samples": 2,
  }  # ptb:tiny keeps its dropout 0.2 and recurrent_dropout 0.2
  adding = {"recurrent_dropout": 0.2, "output_dropout": 0.1}
  runs = [
    {
      "name": name,
      "variant": "tiny",
      "overrides": {"progress": False, **overrides},
      "devices": devices,
      "workdir": str(workdir / f"{name}_{devices}"),
    }
    for name, overrides in (("ptb", ptb), ("adding", adding), ("copy", {"dropout": 0.2}))
    for devices in (1, 8)
  ]
  env = {
    **os.environ,
    "JAX_PLATFORMS": "cpu",
    "JAX_NUMPY_RANK_PROMOTION": "raise",  # dtype promotion cannot be strict: see above
    "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
  }
  with open(workdir / "stderr.txt", "w") as stderr:  # a file: a full pipe would block it
    proc = subprocess.Popen(
      [sys.executable, "-c", _DEVICES_SCRIPT, json.dumps(runs)],
      cwd=ROOT,
      env=env,
      stdout=subprocess.DEVNULL,
      stderr=stderr,
    )
  yield proc, workdir
  if proc.poll() is None:  # a failed test left it running
    proc.kill()
    proc.wait()


def test_one_and_eight_devices_give_the_same_curves(device_runs):
  proc, workdir = device_runs
  proc.wait(timeout=600)
  assert proc.returncode == 0, (workdir / "stderr.txt").read_text()[-3000:]
  for name, metric in (("ptb", "perplexity"), ("adding", "mse"), ("copy", "loss")):
    one = read_metrics(workdir / f"{name}_1")
    eight = read_metrics(workdir / f"{name}_8")
    assert [(r["step"], r["split"]) for r in one] == [(r["step"], r["split"]) for r in eight]
    assert {r["split"] for r in one} >= {"train", "eval"}
    for a, b in zip(one, eight):
      assert b[metric] == pytest.approx(a[metric], rel=1e-4), (name, a, b)
      if name == "copy":  # hits and weights summed over the 8 shards (one hit may flip on
        # a near tie of float32 logits computed in other shapes)
        assert b["accuracy"] == pytest.approx(a["accuracy"], abs=1 / 192 + 1e-9), (a, b)
    assert_loss_falls(one, metric)
  assert {"train", "eval", "eval_mc"} <= {r["split"] for r in read_metrics(workdir / "ptb_1")}
