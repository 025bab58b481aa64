"""``python -m recurrent.train``'s ``--config`` (built-in names and files), ``--help`` and the
rerun of a finished run.

References, named in each test: the files of ``recurrent/train/configs/`` (what a built-in
name must resolve to), :func:`recurrent.train.config.base_config` and the comments beside
its fields (what ``--help`` must list), the ``config.json`` a run writes against the config
loaded here, and a finished run's ``metrics.jsonl``, which a rerun must leave as it was.

The CLI runs in a subprocess from a temporary folder, as a user's would; apart from the
two tiny training runs, each stops at flag parsing, in seconds.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from recurrent.train import config as config_lib
from recurrent.train import configs

CONFIG_DIR = pathlib.Path(configs.__file__).resolve().parent


def run_cli(*args, cwd, timeout=300):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUMPY_RANK_PROMOTION": "raise"}
  return subprocess.run(
    [sys.executable, "-m", "recurrent.train", *args],
    cwd=cwd,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


# --- name resolution, in process -------------------------------------------------------------


def test_the_built_in_configs_are_the_package_files():
  assert sorted(configs.NAMES) == sorted(
    p.stem for p in CONFIG_DIR.glob("*.py") if p.stem != "__init__"
  )
  assert not (CONFIG_DIR.parents[2] / "configs").exists()  # no second copy at the top


@pytest.mark.parametrize(
  "argument, expected",
  [
    ("adding", "adding.py"),
    ("adding:tiny", "adding.py:tiny"),
    ("ptb:zaremba_small", "ptb.py:zaremba_small"),
    ("copy", "copy.py"),
  ],
)
def test_a_name_resolves_to_its_file(argument, expected):
  assert configs.resolve(argument) == f"{CONFIG_DIR}/{expected}"


def test_a_file_is_kept_as_given(tmp_path):
  path = tmp_path / "mine.py"
  path.write_text("")
  assert configs.resolve(f"{path}:small") == f"{path}:small"
  assert configs.resolve(str(path)) == str(path)


@pytest.mark.parametrize("argument", ["bogus", "bogus:tiny", "configs/adding.py", "ptb.py"])
def test_neither_name_nor_file_lists_the_names(argument):
  with pytest.raises(ValueError) as error:
    configs.resolve(argument)
  message = str(error.value)
  assert f"{argument.split(':')[0]!r} is neither a built-in config nor a file" in message
  assert "adding, copy, chars, ptb" in message


def test_get_config_by_name():
  assert configs.get_config("adding", "tiny").train_steps == 20
  with pytest.raises(ValueError, match="the built-in configs: adding, copy, chars, ptb"):
    configs.get_config("mnist")


# --- the command line ------------------------------------------------------------------------


def test_help_lists_every_config_field_with_its_default_and_meaning(tmp_path):
  proc = run_cli("--help", cwd=tmp_path)
  out = proc.stdout
  assert "--config: A built-in config, NAME or NAME:VARIANT (adding, copy, chars, ptb)" in out
  assert "(default: 'adding')" in out
  assert "config fields: override any with --config.FIELD=VALUE" in out
  lines = out.splitlines()
  base = config_lib.base_config()
  for name in base.keys():
    row = [line for line in lines if re.match(rf"  {name} +{re.escape(repr(base[name]))}  ", line)]
    assert len(row) == 1, (name, out)
  # The meanings are base_config's comments, choice tuples spelled out; one row in full.
  assert re.search(r"^  task +'adding' +one of adding \| copy \| ptb \| chars$", out, re.M)
  assert re.search(
    r"^  seed +0 +params, data order and dropout keys all derive from it$", out, re.M
  )


def test_fields_have_a_meaning_from_the_source():
  fields, base = config_lib.fields(), config_lib.base_config()
  assert sorted(fields) == sorted(base.keys())
  for name, (_, meaning) in fields.items():
    assert meaning and "\n" not in meaning, name
  # The meanings are read from base_config's source: the comment beside each field.
  assert fields["seed"][1] == "params, data order and dropout keys all derive from it"
  assert fields["batch_size"][1] == "global batch, split over devices"


def test_a_bad_name_is_a_flag_error_listing_the_built_in_names(tmp_path):
  proc = run_cli("--config", "addding:tiny", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
  assert proc.returncode != 0
  assert "'addding' is neither a built-in config nor a file" in proc.stderr
  assert "the built-in configs: adding, copy, chars, ptb" in proc.stderr
  assert not (tmp_path / "w").exists()


def test_a_relative_file_gets_its_variant(tmp_path):
  (tmp_path / "mine.py").write_text(
    "def get_config(variant):\n  raise ValueError(f'mine.py was asked for {variant!r}')\n"
  )
  proc = run_cli("--config", "mine.py:small", "--workdir", str(tmp_path / "w"), cwd=tmp_path)
  assert proc.returncode != 0
  assert "mine.py was asked for 'small'" in proc.stderr


def test_name_variant_then_its_file_rerun_says_it_is_finished(tmp_path):
  workdir = tmp_path / "run"
  args = ["--workdir", str(workdir), "--config.progress=False"]
  first = run_cli("--config", "adding:tiny", *args, cwd=tmp_path)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "already finished" not in first.stdout
  expected = configs.get_config("adding", "tiny")
  expected.progress = False
  assert json.loads((workdir / "config.json").read_text()) == json.loads(expected.to_json())
  log = (workdir / "metrics.jsonl").read_text()
  final = [
    r for r in map(json.loads, log.splitlines()) if r["step"] == 20 and r["split"] != "train"
  ]
  assert [r["split"] for r in final][:1] == ["eval"]

  # The same config by its file's path: the run is done, so nothing is trained or logged.
  second = run_cli("--config", f"{CONFIG_DIR / 'adding.py'}:tiny", *args, cwd=tmp_path)
  assert second.returncode == 0, second.stderr[-3000:]
  assert (workdir / "metrics.jsonl").read_text() == log
  assert second.stdout.splitlines() == [
    f"already finished at step 20: nothing to do in {workdir}",
    f"results: {workdir / 'metrics.jsonl'}, {workdir / 'curves.png'}; the last evaluations:",
  ] + [f"  {r['split']}: " + " ".join(values(r)) for r in final]


def values(record):
  return [
    f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
    for k, v in record.items()
    if k not in ("step", "split")
  ]
