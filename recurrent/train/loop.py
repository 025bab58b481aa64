"""The training loop: optimiser, jitted steps, data parallelism, checkpoints and resuming.

Shape legend: B global batch, T time, N MC-dropout samples.

Data flows one way: config -> task (data, model, loss) -> ``train_step`` -> optax ->
checkpoint. The batch is sharded over a ``Mesh`` of all devices
along its ``'data'`` axis and the params are replicated. The dropout rng of step ``s`` is
``fold_in(dropout_key, s)``; the model turns it into one key per sequence with
``fold_in(rng, example_id)`` (:func:`recurrent.sequence_keys`), so the masks of a run do
not depend on how its batch is laid out or sharded.

A run in a workdir that has checkpoints continues from the newest one that restores; one
that does not (a file missing, truncated or not JSON) is moved aside to
``checkpoints/<step>.corrupt-<n>``, with a warning, and the one before it is tried. Before
anything is written, the config and the data are checked, and the config is compared with
the workdir's ``config.json`` (:func:`check_config`). In a multi-process run only the first
process writes the records (``config.json``, ``metrics.jsonl``, ``curves.png``,
``sample.txt``) and shows progress; orbax writes the checkpoints from all processes.
"""

import json
import pathlib
import time
from typing import Any, Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import struct
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from recurrent.train import config as _config
from recurrent.train import records, sampling, tasks
from recurrent.train.checkpoints import (
  any_process,
  checkpoint_steps,
  checkpointable,
  first_line,
  restore_latest,
  together,
  warn,
)


class TrainState(train_state.TrainState):
  """Flax's TrainState plus the recurrent carry that truncated BPTT hands on."""

  carry: Any = struct.field(default=None)


class TrainResult(NamedTuple):
  """What :func:`train_and_evaluate` returns."""

  state: TrainState
  task: tasks.Task
  metrics: dict  # the last evaluation of each split: {'eval': {...}, 'test': {...}, ...}


def shrink_params(factor: float) -> optax.GradientTransformation:
  """Updates that end at ``(params + updates) * factor``: weight decay applied after the
  optimiser's step and not scaled by the learning rate (Gal & Ghahramani's code)."""

  def update(updates, state, params):
    if params is None:
      raise ValueError("shrink_params needs the params: call update(updates, state, params)")
    return jax.tree.map(lambda u, p: u * factor - (1 - factor) * p, updates, params), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(config, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
  """Clipping, optional weight decay and the optimiser of ``config``.

  ``lr_schedule='step'`` decays the rate per epoch as Zaremba et al. (2014) do, ``lr *
  lr_decay ** max(epoch + 1 - decay_epoch, 0)`` for the 0-based ``epoch``; ``'cosine'``
  decays it to 0 over ``total_steps``. ``weight_decay_kind='shrink'`` multiplies the
  params by ``1 - weight_decay`` after each step; ``'l2'`` adds ``weight_decay * params``
  to the gradient (``adamw``: its decoupled decay).
  """
  lr = config.learning_rate
  if config.lr_schedule == "step":
    lr = optax.exponential_decay(
      config.learning_rate,
      transition_steps=steps_per_epoch,
      decay_rate=config.lr_decay,
      transition_begin=steps_per_epoch * (config.decay_epoch - 1),
      staircase=True,
    )
  elif config.lr_schedule == "cosine":
    lr = optax.cosine_decay_schedule(config.learning_rate, total_steps)
  parts = []
  if config.max_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(config.max_grad_norm))
  if config.optimizer == "adamw":
    parts.append(optax.adamw(lr, weight_decay=config.weight_decay))
  else:
    l2 = config.weight_decay > 0 and config.weight_decay_kind == "l2"
    if l2:
      parts.append(optax.add_decayed_weights(config.weight_decay))
    parts.append(optax.sgd(lr) if config.optimizer == "sgd" else optax.adam(lr))
    if config.weight_decay > 0 and not l2:
      parts.append(shrink_params(1.0 - config.weight_decay))
  return optax.chain(*parts)


def _apply(state, params, batch, carry, key, deterministic, drop_words=True):
  rngs = None if key is None else {"dropout": key}
  return state.apply_fn(
    {"params": params},
    batch["inputs"],
    example_ids=batch["example_ids"],
    initial_carry=carry,
    deterministic=deterministic,
    drop_words=drop_words,
    rngs=rngs,
  )


def make_train_step(task: tasks.Task):
  """``train_step(state, batch, key) -> (state, metrics)`` for ``task`` (not yet jitted)."""

  def train_step(state: TrainState, batch: dict, key):
    def loss_fn(params):
      outputs, carry = _apply(state, params, batch, state.carry, key, False)
      total, count = task.loss(outputs, batch)
      return total / count * task.loss_scale, (total / count, carry, task.extra(outputs, batch))

    (_, (loss, carry, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    state = state.apply_gradients(grads=grads)
    if task.carries:
      state = state.replace(carry=jax.lax.stop_gradient(carry))
    return state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "extra": extra}

  return train_step


def make_eval_step(task: tasks.Task):
  """``eval_step(state, carry, batch) -> (loss_sum, count, extra, carry)``, dropout off;
  ``extra`` is ``task.extra``'s ``{name: (sum, count)}``."""

  def eval_step(state: TrainState, carry, batch: dict):
    outputs, carry = _apply(state, state.params, batch, carry, None, True)
    total, count = task.loss(outputs, batch)
    return total, count, task.extra(outputs, batch), carry if task.carries else None

  return eval_step


def make_mc_step(task: tasks.Task):
  """``mc_step(state, carry, batch, keys) -> (log_prob_sum [B, T], carry)``: MC dropout.

  Runs the model once per key of ``keys [n]`` with dropout on (embedding dropout off, as
  Gal & Ghahramani's code evaluates), each sample with its own carry ``[n, ...]``, and
  returns ``log sum_n p_n(target)`` per token: the samples' probabilities summed, so that
  chunks of samples add up (:func:`mc_evaluate`).
  """

  def mc_step(state: TrainState, carry, batch: dict, keys):
    def one_sample(key, c):
      outputs, c = _apply(state, state.params, batch, c, key, False, drop_words=False)
      log_probs = jax.nn.log_softmax(outputs)
      return jnp.take_along_axis(log_probs, batch["targets"][..., None], axis=-1)[..., 0], c

    log_probs, carry = jax.vmap(one_sample)(keys, carry)
    return jax.nn.logsumexp(log_probs, axis=0), carry if task.carries else None

  return mc_step


class _Sharding(NamedTuple):
  mesh: Mesh
  replicated: NamedSharding
  batch: NamedSharding

  def put_batch(self, batch: dict) -> dict:
    """Places this process's rows of a global numpy batch on its devices."""
    count, index = jax.process_count(), jax.process_index()

    def put(x):
      rows = x.shape[0] // count
      return jax.make_array_from_process_local_data(
        self.batch, x[index * rows : (index + 1) * rows]
      )

    return jax.tree.map(put, batch)

  def state(self, state: TrainState):
    shardings = jax.tree.map(lambda _: self.replicated, state)
    return shardings.replace(carry=jax.tree.map(lambda _: self.batch, state.carry))


def _sharding(devices) -> _Sharding:
  mesh = Mesh(np.asarray(devices), ("data",))
  return _Sharding(
    mesh, NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
  )


def _zeros_like(tree):
  return jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), tree)


def init_state(config, task: tasks.Task, key, total_steps: int) -> TrainState:
  """Initial params, optimiser state and (for language models) zero carries."""
  batch = task.train_batch(0)
  variables = task.model.init(
    {"params": key},
    batch["inputs"],
    example_ids=batch["example_ids"],
    deterministic=True,
  )
  carry = None
  if task.carries:
    _, carry_shapes = jax.eval_shape(
      lambda: task.model.apply(variables, batch["inputs"], example_ids=batch["example_ids"])
    )
    carry = _zeros_like(carry_shapes)
  return TrainState.create(
    apply_fn=task.model.apply,
    params=variables["params"],
    tx=make_optimizer(config, task.steps_per_epoch, total_steps),
    carry=carry,
  )


def evaluate(state, batches: Iterable[dict], task: tasks.Task, sharding, eval_step, carry):
  """Runs ``eval_step`` over ``batches`` in order; returns the task's metrics."""
  total, count, extra = 0.0, 0.0, []
  for batch in batches:
    t, c, e, carry = eval_step(state, carry, sharding.put_batch(batch))
    total, count = total + float(t), count + float(c)
    extra.append(e)
  return {**task.metrics(total / count), **tasks.extra_metrics(extra)}


def mc_evaluate(state, batches, task, sharding, mc_step, key, carry, num_samples, chunk, bar):
  """MC dropout over ``batches()``: the target's probability averaged over ``num_samples``
  passes (Gal & Ghahramani 2016), ``chunk`` passes at a time; returns the task's metrics.

  Sample ``s`` takes the key ``fold_in(key, s)`` for every batch of its pass, and the
  rows of a language model's batches keep their stream index as example id, so each
  sample's masks are fixed for the whole pass. ``carry`` is one sample's zero carry (None
  for tasks without one); ``bar`` a progress bar advanced once per batch and chunk.
  """
  sums, weights = None, []
  for first in range(0, num_samples, chunk):
    n = min(chunk, num_samples - first)
    keys = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(first, first + n))
    c = None
    if carry is not None:
      c = jax.tree.map(lambda x, n=n: jnp.broadcast_to(x, (n, *x.shape)), carry)
      c = jax.device_put(c, NamedSharding(sharding.mesh, PartitionSpec(None, "data")))
    chunk_sums = []
    for batch in batches():
      if task.carries:
        batch = dict(batch, example_ids=np.arange(len(batch["example_ids"]), dtype=np.int32))
      if first == 0:
        weights.append(np.asarray(batch.get("weights", np.ones(batch["targets"].shape))))
      log_sum, c = mc_step(state, c, sharding.put_batch(batch), keys)
      chunk_sums.append(np.asarray(log_sum, np.float64))
      bar.update(1)
    sums = chunk_sums if sums is None else [np.logaddexp(a, b) for a, b in zip(sums, chunk_sums)]
  log_mean = np.concatenate([s.ravel() for s in sums]) - np.log(num_samples)
  w = np.concatenate([x.ravel() for x in weights])
  return task.metrics(float(-(log_mean * w).sum() / w.sum()))


def _optimizer_structure(config):
  """The tree structure of ``config``'s optimiser state (independent of the params' shapes)."""
  tx = make_optimizer(config, 1, 1)
  return jax.tree.structure(jax.eval_shape(tx.init, {"w": jax.ShapeDtypeStruct((1,), jnp.float32)}))


def _value(value) -> str:
  return repr(value) if isinstance(value, str) else str(value)


def _listing(changed) -> str:
  """``name: saved -> new, ...`` of ``[(name, saved, new), ...]``."""
  return ", ".join(f"{name}: {_value(old)} -> {_value(new)}" for name, old, new in changed)


def check_config(workdir, config, total_steps: int, allow_changes: bool = False) -> list:
  """Checks ``config`` against the config a workdir with checkpoints was trained with.

  Reads ``workdir/config.json`` only (it writes nothing). The fields of
  :data:`recurrent.train.config.RUNTIME_FIELDS` (``progress``, ``max_train_minutes``, ...)
  never count; a change of another field is refused unless ``allow_changes``; a change of
  :data:`~recurrent.train.config.FIXED_FIELDS`, or of the optimiser fields that gives the
  optimiser state another structure, is refused even then. A workdir without checkpoints
  has nothing to continue, so any config goes.

  Returns:
    ``[(field, saved, new), ...]``: the changes allowed by ``allow_changes``.

  Raises:
    ConfigChangeError: a refused change; the message lists every changed field as
      ``name: saved -> new``.
    UserError: ``config.json`` is not JSON, or the workdir has a checkpoint past
      ``total_steps``.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "config.json"
  steps = checkpoint_steps(workdir / "checkpoints")
  if not steps or not path.is_file():
    return []
  try:
    saved = json.loads(path.read_text(encoding="utf-8"))
  except ValueError as e:  # not UTF-8, or not JSON
    raise _config.UserError(f"{path} does not read as a config ({first_line(e)})") from None
  changed = _config.changes(saved, config)
  fixed = [name for name, _, _ in changed if name in _config.FIXED_FIELDS]
  optimizer = [name for name, _, _ in changed if name in _config.OPTIMIZER_FIELDS]
  if optimizer and not fixed:
    base = _config.base_config().to_dict()
    old = ml_collections.ConfigDict({**base, **{k: v for k, v in saved.items() if k in base}})
    if _optimizer_structure(old) != _optimizer_structure(config):
      fixed += optimizer
  head = f"workdir {workdir} was trained with another config (its config.json): {_listing(changed)}"
  if fixed:
    raise _config.ConfigChangeError(
      f"{head}; {', '.join(fixed)} cannot change in a workdir (the checkpoint's shapes or"
      " the data would differ): use a new --workdir",
      changed,
      fixed,
    )
  if changed and not allow_changes:
    raise _config.ConfigChangeError(
      f"{head}; to continue the run with the new values pass --allow_changes"
      " (train_and_evaluate(..., allow_changes=True)), or use a new --workdir",
      changed,
      [],
    )
  if steps[-1] > total_steps:
    raise _config.UserError(
      f"workdir {workdir} has a checkpoint at step {steps[-1]}, past this config's"
      f" {total_steps} steps (train_steps, epochs): use a new --workdir or more steps"
    )
  return changed


def _write_config(workdir: pathlib.Path, config) -> None:
  """Creates ``workdir`` and writes ``config.json``; on failure removes the folders it
  created and raises UserError naming the workdir."""
  created = [p for p in (workdir, *workdir.parents) if not p.exists()]
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    content = config.to_json(indent=2).encode()
    records.write_atomically(workdir / "config.json", lambda f: f.write(content))
  except OSError as e:
    for folder in created:  # innermost first; only empty folders go
      try:
        folder.rmdir()
      except OSError:
        break
    reason = e.strerror or first_line(e)
    raise _config.UserError(f"cannot write to the workdir {workdir}: {reason}") from e


def _log_line(record: dict) -> str:
  fields = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()]
  return " ".join(fields)


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir,
  *,
  devices: list | None = None,
  allow_changes: bool = False,
) -> TrainResult:
  """Trains ``config``'s task in ``workdir``, resuming from its last checkpoint if any.

  The config, the data and (in a workdir with checkpoints) the config's changes since the
  workdir's ``config.json`` are checked before anything is written: a run refused leaves
  the workdir as it was (and creates none). A checkpoint that does not restore is moved
  aside and the previous one restores (:func:`recurrent.train.checkpoints.restore_latest`).

  Args:
    config: a config from :mod:`recurrent.train.configs` or a file of your own (see
      :func:`recurrent.train.config.base_config`).
    workdir: folder for checkpoints, ``metrics.jsonl``, ``config.json`` and ``curves.png``.
    devices: the devices to shard the batch over; all of them by default.
    allow_changes: continue a workdir's run with changed fields of its config (the CLI's
      ``--allow_changes``); fields that change the checkpoint's shapes or the data are
      refused even so (:func:`check_config`).

  Returns:
    A :class:`TrainResult` with the final state, the task and the last eval metrics.

  Raises:
    UserError: a bad config value, data file, workdir or config change, named in the
      message (the CLI prints it as one line).
    OSError: a data file or the workdir cannot be read.
  """
  from tqdm import tqdm

  devices = list(devices or jax.devices())
  primary = jax.process_index() == 0
  workdir = pathlib.Path(workdir)

  def check():
    _config.validate(config, len(devices))
    task = tasks.make(config)
    total_steps = config.epochs * task.steps_per_epoch if config.epochs else config.train_steps
    return task, total_steps, check_config(workdir, config, total_steps, allow_changes)

  # In a multi-process run, a refusal in one process stops them all; and every process has
  # read config.json (together's gather is a barrier) before process 0 rewrites it.
  task, total_steps, changed = together(check)
  saved_config = workdir / "config.json"
  previous = saved_config.read_bytes() if primary and saved_config.is_file() else None
  together(lambda: _write_config(workdir, config) if primary else None)
  if changed:
    warn(f"continuing {workdir} with a changed config: {_listing(changed)}")

  sharding = _sharding(devices)
  seed_key = jax.random.key(config.seed)
  init_key, dropout_key, eval_key = jax.random.split(seed_key, 3)
  state = init_state(config, task, init_key, total_steps)
  shardings = sharding.state(state)
  state = jax.device_put(state, shardings)

  try:
    manager, state, start = restore_latest(
      (workdir / "checkpoints").absolute(),
      ocp.CheckpointManagerOptions(max_to_keep=config.keep_checkpoints, create=True),
      state,
      shardings,
    )
  except _config.UserError:  # checkpoints of another model: the workdir stays as it was
    if primary and previous is not None:
      records.write_atomically(saved_config, lambda f: f.write(previous))
    elif primary:
      saved_config.unlink()
    raise
  log = records.MetricsLog(workdir / "metrics.jsonl", resume_step=start, writes=primary)

  train_step = jax.jit(
    make_train_step(task),
    in_shardings=(shardings, sharding.batch, sharding.replicated),
    out_shardings=(shardings, sharding.replicated),
    donate_argnums=0,
  )
  # The eval carry keeps one sharding from window to window, so each eval step compiles once.
  mc_carry = NamedSharding(sharding.mesh, PartitionSpec(None, "data"))
  eval_step = jax.jit(
    make_eval_step(task),
    in_shardings=(shardings, sharding.batch, sharding.batch),
    out_shardings=(sharding.replicated, sharding.replicated, sharding.replicated, sharding.batch),
  )
  mc_step = jax.jit(
    make_mc_step(task),
    in_shardings=(shardings, mc_carry, sharding.batch, sharding.replicated),
    # The sums come back whole to every process (np.asarray of rows on other hosts fails).
    out_shardings=(sharding.replicated, mc_carry),
  )

  def zero_carry():
    if not task.carries:
      return None
    return jax.device_put(_zeros_like(state.carry), sharding.batch)

  def say(line: str) -> None:
    if primary:
      bar.write(line)

  def log_evaluation(step: int, name: str, metrics: dict) -> dict:
    record = {"step": step, "split": name, **metrics}
    log.write(record)
    say(_log_line(record))
    return {name: metrics}

  def run_evaluation(step: int, batches: Callable, name: str) -> dict:
    """Evaluates on ``batches()`` with dropout off; logs it."""
    metrics = evaluate(state, batches(), task, sharding, eval_step, zero_carry())
    return log_evaluation(step, name, metrics)

  def run_mc_evaluation(step: int, batches: Callable, name: str) -> dict:
    """MC dropout on ``batches()`` over ``config.mc_samples`` passes; logs it."""
    n, chunk = config.mc_samples, min(config.mc_chunk, config.mc_samples)
    count = sum(1 for _ in batches()) * -(-n // chunk)
    show = config.progress and primary
    with tqdm(total=count, desc=f"MC {name}", disable=not show, leave=False) as mc_bar:
      metrics = mc_evaluate(
        state, batches, task, sharding, mc_step, eval_key, zero_carry(), n, chunk, mc_bar
      )
    return log_evaluation(step, name + "_mc", {**metrics, "samples": n})

  bar = tqdm(
    total=total_steps,
    initial=start,
    disable=not (config.progress and primary),
    unit="step",
    dynamic_ncols=True,
  )
  pending, started = [], time.perf_counter()
  deadline = time.perf_counter() + 60 * config.max_train_minutes
  paused = False
  for step in range(start, total_steps):
    if task.carries and step % task.steps_per_epoch == 0:
      state = state.replace(carry=jax.device_put(_zeros_like(state.carry), shardings.carry))
    batch = sharding.put_batch(task.train_batch(step))
    state, metrics = train_step(state, batch, jax.random.fold_in(dropout_key, step))
    pending.append(metrics)
    done = step + 1
    bar.update(1)
    # A spent time budget pauses the run: this step is logged, evaluated and saved, and a
    # rerun continues from it; the end-of-run evaluations wait for the last step.
    # (In a multi-process run all processes pause together, when the first one is due.)
    paused = (
      bool(config.max_train_minutes)
      and done < total_steps
      and any_process(time.perf_counter() > deadline)
    )
    last = done == total_steps or paused
    if done % config.log_every == 0 or last:
      loss = float(np.mean([float(m["loss"]) for m in pending]))
      elapsed = time.perf_counter() - started
      record = {"step": done, "split": "train", **task.metrics(loss)}
      record.update(tasks.extra_metrics(m["extra"] for m in pending))
      record["tokens_per_sec"] = len(pending) * task.tokens_per_step / elapsed
      log.write(record)
      bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("step", "split")})
      pending, started = [], time.perf_counter()
    if done % config.eval_every == 0 or last:
      run_evaluation(done, task.eval_batches, "eval")
      started = time.perf_counter()  # tokens per second counts training only
    if done % config.checkpoint_every == 0 or last:
      manager.save(done, args=ocp.args.StandardSave(checkpointable(state)))
    if last:
      break
  bar.close()
  manager.wait_until_finished()
  manager.close()
  if paused:
    if primary:
      records.plot(log.records, workdir / "curves.png", task.metric, config, task.baselines)
    say(
      f"paused at step {int(state.step)} of {total_steps} (max_train_minutes); run the same"
      " command again to continue"
    )
    last_eval = [r for r in log.records if r["split"] == "eval"][-1]
    return TrainResult(
      state, task, {"eval": {k: v for k, v in last_eval.items() if k not in ("step", "split")}}
    )
  # The last evaluations, from the log: a rerun of a finished run evaluates nothing again.
  final = {
    r["split"]: {k: v for k, v in r.items() if k not in ("step", "split")}
    for r in log.records
    if r["step"] == total_steps and r["split"] != "train"
  }
  for name, batches in (("eval", task.eval_batches), ("test", task.test_batches)):
    if batches is not None and name not in final:
      final.update(run_evaluation(total_steps, batches, name))
    if batches is not None and config.mc_samples and name + "_mc" not in final:
      final.update(run_mc_evaluation(total_steps, batches, name))
  if primary:
    records.plot(log.records, workdir / "curves.png", task.metric, config, task.baselines)
  if config.sample_length and task.vocab is not None:
    prompt = task.train_batch(0)["inputs"][0, :1]
    tokens = sampling.sample(task.model, state.params, prompt, config.sample_length, eval_key)
    sampled = task.vocab.decode(np.asarray(tokens))
    if primary:
      records.write_atomically(workdir / "sample.txt", lambda f: f.write(sampled.encode()))
    say(f"sample: {sampled}")
  return TrainResult(state, task, final)
