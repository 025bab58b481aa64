"""Continuing a run in its workdir: damaged checkpoints, and configs changed between runs.

References, named in each test: an uninterrupted run of the same config in a workdir of its
own (the module's ``whole`` run), whose final params a run resumed from an older checkpoint
must match bit for bit and whose records it must repeat; the bytes of a workdir before a
refused run, which must be the bytes after it; the shapes of the train state that
:func:`recurrent.train.loop.init_state` builds, which no change allowed by
``allow_changes`` may alter.
"""

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs, loop, tasks
from tests.workdirs import files, read_metrics

STEPS = 20  # adding:tiny, checkpoints every 5 steps, all kept


def make_config(**overrides):
  c = configs.get_config("adding", "tiny")
  c.update(progress=False, checkpoint_every=5, keep_checkpoints=10)
  c.update(overrides)
  return c


def train(config, workdir, **kwargs):
  # optax is not clean under the session's strict dtype promotion (see tests/test_loop.py).
  with jax.numpy_dtype_promotion("standard"):
    return loop.train_and_evaluate(config, workdir, **kwargs)


def without_speed(records):
  return [{k: v for k, v in r.items() if k != "tokens_per_sec"} for r in records]


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """adding:tiny trained to the end in one run, checkpoints at 5, 10, 15 and 20."""
  workdir = tmp_path_factory.mktemp("whole") / "run"
  result = train(make_config(), workdir)
  assert loop.checkpoint_steps(workdir / "checkpoints") == [5, 10, 15, 20]
  return workdir, result


@pytest.fixture
def copy(whole, tmp_path):
  """A copy of the whole run's workdir, to damage or continue."""
  shutil.copytree(whole[0], tmp_path / "run")
  return tmp_path / "run"


def largest_data_file(step_dir):
  return max((step_dir / "default").rglob("d/*"), key=lambda p: p.stat().st_size)


def truncate_data(step_dir):
  path = largest_data_file(step_dir)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def delete_data(step_dir):
  largest_data_file(step_dir).unlink()


def empty_metadata(step_dir):
  (step_dir / "default" / "_METADATA").write_bytes(b"")


def warnings_of(capsys):
  return [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]


def assert_same_params(got, want):
  leaves, expected = jax.tree.leaves(got), jax.tree.leaves(want)
  assert len(leaves) == len(expected)
  for a, b in zip(leaves, expected):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def orbax_steps(directory):
  manager = ocp.CheckpointManager(directory.absolute())
  try:
    return list(manager.all_steps())
  finally:
    manager.close()


# --- damaged checkpoints -------------------------------------------------------------------


@pytest.mark.parametrize("damage", [truncate_data, delete_data, empty_metadata])
def test_a_damaged_latest_checkpoint_is_moved_aside_and_the_previous_one_restores(
  whole, copy, damage, capsys
):
  folder, (_, reference) = copy / "checkpoints", whole
  damage(folder / "20")
  damaged = files(folder / "20")
  capsys.readouterr()
  result = train(make_config(), copy)
  warnings = warnings_of(capsys)
  assert len(warnings) == 2, warnings
  head = f"warning: checkpoint at step 20 ({folder / '20'}) does not restore ("
  assert warnings[0].startswith(head), warnings[0]
  assert warnings[0].endswith(f"; moved it to {folder / '20.corrupt-1'}")
  assert warnings[1] == "warning: resuming from the checkpoint at step 15"
  # Kept aside as it was; orbax lists the new checkpoint 20, not the one aside.
  assert files(folder / "20.corrupt-1") == damaged
  assert orbax_steps(folder) == [5, 10, 15, 20]
  # Steps 16 to 20 trained again: the same params and records as the uninterrupted run.
  assert int(result.state.step) == STEPS
  assert_same_params(result.state.params, reference.state.params)
  assert result.metrics == reference.metrics
  assert without_speed(read_metrics(copy)) == without_speed(read_metrics(whole[0]))


def test_with_every_checkpoint_damaged_the_run_starts_again_and_keeps_them_all(whole, copy, capsys):
  folder = copy / "checkpoints"
  (folder / "20.corrupt-1").mkdir()  # one moved aside by an earlier run: not overwritten
  for step in (5, 10, 15, 20):
    empty_metadata(folder / str(step))
  capsys.readouterr()
  result = train(make_config(), copy)
  warnings = warnings_of(capsys)
  assert [w.split(" (")[0] for w in warnings[:4]] == [
    f"warning: checkpoint at step {step}" for step in (20, 15, 10, 5)
  ]
  assert warnings[0].endswith("20.corrupt-2") and warnings[3].endswith("5.corrupt-1")
  assert warnings[4:] == ["warning: no checkpoint left that restores: training from step 0"]
  assert sorted(p.name for p in folder.iterdir() if not p.name.isdigit()) == [
    "10.corrupt-1",
    "15.corrupt-1",
    "20.corrupt-1",
    "20.corrupt-2",
    "5.corrupt-1",
  ]
  assert_same_params(result.state.params, whole[1].state.params)
  assert without_speed(read_metrics(copy)) == without_speed(read_metrics(whole[0]))


def test_a_checkpoint_of_another_model_is_refused_and_left_in_place(copy):
  (copy / "config.json").unlink()  # no record of the old config: the checkpoint says it
  before = files(copy)
  with pytest.raises(config_lib.UserError, match=r"checkpoints/20 holds arrays of other shapes"):
    train(make_config(hidden_size=8), copy)
  assert files(copy) == before  # no config.json of the refused config left behind either


# --- configs changed between runs ----------------------------------------------------------


def test_runtime_fields_are_no_change(whole):
  config = make_config(
    progress=True, max_train_minutes=5.0, mc_chunk=3, checkpoint_every=7, keep_checkpoints=2
  )
  assert loop.check_config(whole[0], config, STEPS) == []


def test_a_changed_learning_rate_is_refused_unless_allowed(copy):
  before = files(copy)
  config = make_config(learning_rate=0.01, train_steps=25)
  with pytest.raises(config_lib.ConfigChangeError) as refused:
    train(config, copy)
  message = str(refused.value)
  assert "learning_rate: 0.003 -> 0.01, train_steps: 20 -> 25;" in message
  assert "--allow_changes" in message and "\n" not in message
  assert refused.value.fixed == []
  assert files(copy) == before  # config.json, records and checkpoints untouched

  result = train(config, copy, allow_changes=True)
  assert int(result.state.step) == 25
  saved = json.loads((copy / "config.json").read_text())
  assert (saved["learning_rate"], saved["train_steps"]) == (0.01, 25)
  assert [r["step"] for r in read_metrics(copy) if r["split"] == "eval"] == [10, 20, 25]


@pytest.mark.parametrize(
  "field, value",
  [
    ("hidden_size", 32),
    ("cell", "gru"),
    ("seq_len", 12),
    ("batch_size", 8),
    ("seed", 1),
    ("optimizer", "sgd"),  # adam's moments would be dropped
    ("lr_schedule", "constant"),  # cosine counts steps in the optimiser state
    ("max_grad_norm", 0.0),  # no clipping: one state fewer in the chain
  ],
)
def test_a_change_of_shapes_or_data_is_refused_even_when_allowed(whole, field, value):
  with pytest.raises(config_lib.ConfigChangeError, match=f"{field} cannot change") as refused:
    loop.check_config(whole[0], make_config(**{field: value}), STEPS, allow_changes=True)
  assert refused.value.fixed == [field]


def test_a_refused_shape_change_writes_nothing(copy):
  before = files(copy)
  listing = "hidden_size: 16 -> 32, learning_rate: 0.003 -> 0.01; hidden_size cannot change"
  with pytest.raises(config_lib.ConfigChangeError, match=listing):
    train(make_config(hidden_size=32, learning_rate=0.01), copy, allow_changes=True)
  assert files(copy) == before


def test_optimizer_fields_that_keep_the_state_may_change(whole):
  config = make_config(max_grad_norm=0.5, learning_rate=0.01)
  assert loop.check_config(whole[0], config, STEPS, allow_changes=True) == [
    ("learning_rate", 0.003, 0.01),
    ("max_grad_norm", 1.0, 0.5),
  ]


def test_fewer_steps_than_the_checkpoint_are_refused(whole):
  with pytest.raises(config_lib.UserError, match="checkpoint at step 20, past this config's 10"):
    loop.check_config(whole[0], make_config(train_steps=10), 10, allow_changes=True)


def test_the_changes_allowed_keep_the_train_state_shapes():
  """Every field that ``allow_changes`` lets change (all but the fixed, optimiser and
  runtime ones) leaves the shapes of params, optimiser state and carry as they were."""
  ruled = {*config_lib.FIXED_FIELDS, *config_lib.OPTIMIZER_FIELDS, *config_lib.RUNTIME_FIELDS}
  allowed = [name for name in config_lib.fields() if name not in ruled]
  assert {"learning_rate", "dropout", "train_steps", "eval_every", "mc_samples"} <= set(allowed)
  base = configs.get_config("copy", "tiny")  # a model with an embedding and a read-out

  batch = tasks.make(base).train_batch(0)  # data are no field's business here

  def shapes(config):
    task = tasks.make(config)._replace(train_batch=lambda step: batch)
    state = jax.eval_shape(lambda: loop.init_state(config, task, jax.random.key(0), 10))
    tree = loop.checkpointable(state)
    return jax.tree.structure(tree), [x.shape for x in jax.tree.leaves(tree)]

  want = shapes(base)
  for name in allowed:
    value = base[name]
    if isinstance(value, bool):
      value = not value
    elif isinstance(value, (int, float)):
      value = value / 2 + 0.25 if isinstance(value, float) else value + 1
    else:  # dropout_kind
      value = "naive" if value == "variational" else "variational"
    changed = configs.get_config("copy", "tiny")
    changed[name] = value
    assert shapes(changed) == want, name
