"""recurrent.train.config and the built-in configs: every bad config is refused, naming its
field.

References, named in each test: the field list of ``base_config`` (an added field is
unknown), the types of its defaults, the documented ranges (rates in [0, 1)), the device
count the batch must divide by, and the papers' rules the checks encode (no recurrent
dropout with Zaremba et al.'s naive dropout; the per-epoch 'step' decay needs epochs, which
only language-model tasks have). Every variant a config file documents must validate.
"""

import importlib.util
import pathlib

import ml_collections
import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs

VARIANTS = {
  "adding": ["", "tiny"],
  "copy": ["", "tiny"],
  "chars": ["", "tiny"],
  "ptb": [
    "zaremba_small",
    "zaremba_medium",
    "zaremba_large",
    "gal_medium",
    "gal_large",
    "tiny",
  ],
}


def load_module(path):
  # Loaded by path, as ml_collections' config flag does.
  path = pathlib.Path(path)
  spec = importlib.util.spec_from_file_location(f"_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def valid_config(**fields):
  c = config_lib.base_config()
  c.update(fields)
  return c


@pytest.mark.parametrize(
  "name, variant", [(n, v) for n, variants in VARIANTS.items() for v in variants]
)
def test_every_documented_variant_validates(name, variant):
  c = configs.get_config(name, variant)
  assert c.task == name
  config_lib.validate(c)
  assert set(c.keys()) == set(config_lib.base_config().keys())


def test_default_variants_are_the_documented_ones():
  # adding with no variant is the CLI's default config.
  assert configs.get_config("adding").train_steps == 2000
  assert configs.get_config("ptb").to_dict() == configs.get_config("ptb", "zaremba_small").to_dict()


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_bad_variant_name_is_refused(name):
  with pytest.raises(ValueError, match="no_such_variant"):
    configs.get_config(name, "no_such_variant")


def test_unknown_field_added_by_a_config_file(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text(
    "from recurrent.train.config import base_config\n"
    "def get_config():\n"
    "  c = base_config()\n"
    "  c.hiden_size = 32  # a typo adds a field\n"
    "  return c\n"
  )
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['hiden_size'\]"):
    config_lib.validate(load_module(path).get_config())


@pytest.mark.parametrize(
  "field, value, expected",
  [
    ("hidden_size", "64", "int"),
    ("hidden_size", 64.0, "int"),
    ("hidden_size", True, "int"),  # a bool is not an int here
    ("learning_rate", "1e-3", "float"),
    ("progress", 1, "bool"),
    ("cell", 3, "str"),
  ],
)
def test_wrong_type_names_field_and_type(field, value, expected):
  c = valid_config()
  with c.ignore_type():
    c[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field} must be {expected}, got"):
    config_lib.validate(c)


def test_int_for_float_is_accepted():
  # A ConfigDict built from a plain dict keeps the int (base_config's would cast it).
  c = ml_collections.ConfigDict({**config_lib.base_config().to_dict(), "learning_rate": 1})
  assert type(c.learning_rate) is int
  config_lib.validate(c)


@pytest.mark.parametrize(
  "field", ["dropout", "recurrent_dropout", "output_dropout", "embed_dropout"]
)
@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5])
def test_rate_outside_unit_interval(field, value):
  with pytest.raises(ValueError, match=rf"config\.{field} must be in \[0, 1\), got {value}"):
    config_lib.validate(valid_config(**{field: value}))


@pytest.mark.parametrize(
  "fields, message",
  [
    ({"hidden_size": 0}, r"config\.hidden_size must be > 0, got 0"),
    ({"batch_size": -4}, r"config\.batch_size must be > 0"),
    ({"max_grad_norm": -1.0}, r"config\.max_grad_norm must be >= 0"),
    ({"learning_rate": 0.0}, r"config\.learning_rate must be > 0"),
    ({"learning_rate": float("nan")}, r"config\.learning_rate must be finite"),
    ({"lr_decay": 1.5}, r"config\.lr_decay must be in \(0, 1\]"),
    ({"cell": "rnn"}, r"config\.cell must be one of \('lstm', 'gru'\), got 'rnn'"),
    ({"task": "mnist"}, r"config\.task must be one of"),
    ({"train_steps": 0}, r"config\.train_steps and config\.epochs are both 0"),
    ({"task": "copy", "seq_len": 20, "copy_symbols": 10}, r"config\.seq_len \(20\)"),
    ({"task": "ptb"}, r"config\.data_dir must name the ptb data"),
    ({"loss_sum_over_time": True}, r"config\.loss_sum_over_time is for language-model tasks"),
    ({"max_train_minutes": -1.0}, r"config\.max_train_minutes must be >= 0"),
  ],
)
def test_impossible_values(fields, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(valid_config(**fields))


def test_batch_size_must_divide_by_device_count():
  c = valid_config(batch_size=20)
  config_lib.validate(c, num_devices=4)
  with pytest.raises(ValueError, match=r"config\.batch_size \(20\) .* devices \(8\)"):
    config_lib.validate(c, num_devices=8)


def test_naive_dropout_refuses_recurrent_dropout():
  config_lib.validate(valid_config(dropout_kind="naive", dropout=0.5))
  with pytest.raises(ValueError, match=r"config\.recurrent_dropout must be 0 with dropout_kind"):
    config_lib.validate(valid_config(dropout_kind="naive", recurrent_dropout=0.2))


@pytest.mark.parametrize("task", ["adding", "copy"])
def test_step_schedule_needs_a_language_model_task(task):
  with pytest.raises(ValueError, match=r"config\.lr_schedule='step'.*" + task):
    config_lib.validate(valid_config(task=task, lr_schedule="step"))
  config_lib.validate(valid_config(task="ptb", data_dir="x", lr_schedule="step"))
